#!/usr/bin/env python
"""Lottery tickets with rewinding and pruning at initialization on CIFAR ResNet-20 trained from scratch.

Data: the offline CIFAR-10 test JPEGs (../shared/data/cifar10), the committed split of the CNN benchmark
(benchmarks/splits: train on 8,000, evaluate on 2,000). Every network trains from scratch for --epochs epochs of
batch 128 (SGD, momentum 0.9, lr 0.1 with cosine decay, weight decay 1e-4, random crop and flip), far shorter than
the papers' 160+ epochs on 50,000 images: accuracies are lower than theirs and the claims are tested at this scale.

Part ``rewind`` (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis"): iterative
magnitude pruning of every convolution, 20 % of the remaining weights per round, global, until about 20 % remain,
with survivors rewound to initialization (``rewind_init``) or to their values after --rewind-steps steps
(``rewind_early``); the 2020 claim is that deeper networks need the latter.

Part ``init`` (Tanaka et al. 2020): SynFlow, magnitude, SNIP (one batch of 128) and random at 90 / 99 / 99.9 %
sparsity at initialization, then the same training.

Points merge into --output (``points`` of ``{task, method, remaining, seed, dev_accuracy}``, the task named with the
epochs, ``cifar10-resnet20-10ep``, so that runs of other lengths keep their own dense point); parts and seeds can run
separately:

    python benchmarks/lottery_cifar.py --part rewind --seeds 0
    python benchmarks/lottery_cifar.py --part rewind --seeds 0 --methods rewind_early   # one arm per process
    python benchmarks/lottery_cifar.py --part init --seeds 0
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


sys.path.insert(0, str(Path(__file__).resolve().parent))
from lottery_mnist import merge_points  # noqa: E402 - benchmarks/ is not a package


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "cifar10"
SPLITS = REPO / "benchmarks" / "splits"
TASK = "cifar10-resnet20"


def new_model(seed: int) -> nn.Module:
    import timm

    from hfprune.models import cifar_resnet  # noqa: F401 - registers the CIFAR ResNets with timm

    torch.manual_seed(seed)
    return timm.create_model("cifar_resnet20", num_classes=10)


def load_data(cache: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """All 10,000 images as normalized tensors (cached), split by the committed index files."""
    if not cache.is_file():
        from hfprune.vision import LabelledImages, eval_transform

        archive, labels = SHARED / "cifar10_test_jpg_yoongikim.zip", SHARED / "cifar10_test_jpg_yoongikim_labels.csv"
        images = LabelledImages(archive, labels, eval_transform(new_model(0)))
        pairs = [images[i] for i in range(len(images))]
        torch.save({"x": torch.stack([p[0] for p in pairs]), "y": torch.tensor([p[1] for p in pairs])}, cache)
    data = torch.load(cache)
    split = {name: torch.tensor([int(v) for v in (SPLITS / f"cifar10_{name}.txt").read_text().split()])
             for name in ("train_8000", "eval_2000")}  # fmt: skip
    return ((data["x"][split["train_8000"]], data["y"][split["train_8000"]]),
            (data["x"][split["eval_2000"]], data["y"][split["eval_2000"]]))  # fmt: skip


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    padded = nn.functional.pad(images, (4, 4, 4, 4))
    out = torch.empty_like(images)
    offsets = torch.randint(0, 9, (len(images), 2), generator=generator)
    flips = torch.rand(len(images), generator=generator) < 0.5
    for index, (top, left) in enumerate(offsets.tolist()):
        crop = padded[index, :, top : top + 32, left : left + 32]
        out[index] = crop.flip(-1) if flips[index] else crop
    return out


@torch.no_grad()
def evaluate(model: nn.Module, data) -> float:
    model.eval()
    correct = sum(int((model(data[0][i : i + 500]).argmax(-1) == data[1][i : i + 500]).sum())
                  for i in range(0, len(data[1]), 500))  # fmt: skip
    model.train()
    return correct / len(data[1])


def make_train(args, train_data, eval_data, seed: int):
    def train(model: nn.Module, round_index: int, after_step) -> dict:
        steps_per_epoch = len(train_data[1]) // args.batch_size
        total = steps_per_epoch * args.epochs
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        other = [p for n, p in model.named_parameters() if p.ndim <= 1]
        optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": other, "weight_decay": 0}],
                                    lr=args.lr, momentum=0.9)  # fmt: skip
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        generator = torch.Generator().manual_seed(seed)
        model.train()
        started, step = time.perf_counter(), 0
        for _ in range(args.epochs):
            order = torch.randperm(len(train_data[1]), generator=generator)
            for start in range(0, steps_per_epoch * args.batch_size, args.batch_size):
                batch = order[start : start + args.batch_size]
                loss = nn.functional.cross_entropy(
                    model(augment(train_data[0][batch], generator)), train_data[1][batch]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                after_step(step)
        return {"dev_accuracy": evaluate(model, eval_data), "wall_s": round(time.perf_counter() - started, 1)}

    return train


def conv_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def rewind_part(args, train_data, eval_data, seed: int, save) -> None:
    from hfprune import LotteryConfig, find_lottery_ticket

    methods = args.methods.split(",")
    for method, rewind_step in (("rewind_init", 0), ("rewind_early", args.rewind_steps)):
        if method not in methods:
            continue
        model = new_model(seed)
        config = LotteryConfig(rounds=args.rounds, prune_rate=0.2, rewind_step=rewind_step,
                               pruning={"target_modules": conv_names(model), "scope": "global"})  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="lottery-cifar-") as folder:
            for record in find_lottery_ticket(model, config, make_train(args, train_data, eval_data, seed), folder):
                if record["round"] == 0 and rewind_step and "rewind_init" in methods:
                    continue  # the same dense run as rewind_init's round 0 (same seed, same batches)
                name = method if record["round"] else "dense"
                save(dict(method=name, remaining=round(record["remaining"], 4), round=record["round"],
                          rewind_step=rewind_step, **record["metrics"]))  # fmt: skip


def init_part(args, train_data, eval_data, seed: int, save) -> None:
    from hfprune import PruningConfig, prune_
    from hfprune.lottery import apply_ticket_

    snip_batch = [(train_data[0][:128], train_data[1][:128])]
    for sparsity in (float(value) for value in args.sparsities.split(",")):
        for method in args.methods.split(","):
            model = new_model(seed)
            names = conv_names(model)
            importance = {"type": "synflow", "iterations": 100, "input_shape": [3, 32, 32]} if method == "synflow" \
                else method  # fmt: skip
            prune_(model, PruningConfig(sparsity=sparsity, scope="global", target_modules=names, importance=importance,
                                        seed=seed), snip_batch if method == "snip" else None)  # fmt: skip
            masks = {name: model.get_submodule(name).weight != 0 for name in names}
            empty = [name for name, mask in masks.items() if not mask.any()]
            apply_ticket_(model, masks)
            metrics = make_train(args, train_data, eval_data, seed)(model, 0, lambda step: None)
            save(dict(method=f"{method}_at_init", remaining=round(1 - sparsity, 4), empty_layers=empty, **metrics))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["rewind", "init"], required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=7, help="Pruning rounds (0.8 ** 7: 21 %% remaining).")
    parser.add_argument("--rewind-steps", type=int, default=62, help="rewind_early's step (one epoch by default).")
    parser.add_argument(
        "--methods",
        default=None,
        help="Part rewind: rewind_init,rewind_early (default both); part init: synflow,magnitude,snip,"
        "random (default all). Separate processes can run separate methods.",
    )
    parser.add_argument("--sparsities", default="0.9,0.99,0.999", help="Part init's sparsities.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cifar10_test_tensors.pt")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "lottery_cifar.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.methods is None:
        args.methods = "rewind_init,rewind_early" if args.part == "rewind" else "synflow,magnitude,snip,random"
    train_data, eval_data = load_data(args.cache)
    command = "python " + " ".join(sys.argv)
    task = f"{TASK}-{args.epochs}ep"  # runs of other lengths are other tasks, each with its own dense point
    for seed in (int(s) for s in args.seeds.split(",")):

        def save(point: dict, seed: int = seed) -> None:
            """Merge each point as it comes: part init's after each training, part rewind's when its search ends
            (the search's rounds are in a temporary folder, so a stopped rewind run keeps nothing)."""
            point = dict(task=task, seed=seed, epochs=args.epochs, **point)
            print(json.dumps(point), flush=True)
            with open(Path(tempfile.gettempdir()) / "lottery_cifar.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                merge_points(args.output, [point], command, " ".join(__doc__.split("\n\n")[1].split()),
                             lambda p: p["method"] == "dense" and p["task"] == task, [task])  # fmt: skip

        (rewind_part if args.part == "rewind" else init_part)(args, train_data, eval_data, seed, save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
