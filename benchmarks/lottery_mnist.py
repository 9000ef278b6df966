#!/usr/bin/env python
"""Lottery tickets and pruning at initialization on LeNet-300-100 / MNIST, with hfprune's own methods.

The offline MNIST is the 10,000-image test set (../shared/data/mnist); it is split once into 8,000 training and
2,000 evaluation images (benchmarks/splits/mnist_*.txt, written by this script with seed 0 if missing). Every
network is trained with Adam (lr 1.2e-3, batch 60, the paper's settings) for --iterations iterations, evaluated
on the 2,000 images every --eval-every iterations; a run reports the accuracy at the end, the iteration of the
lowest evaluation loss (Frankle & Carbin's early-stopping iteration) and the accuracy there.

Part ``lottery`` (Frankle & Carbin 2019, Figure 3): iterative magnitude pruning with `hfprune.find_lottery_ticket`,
20 % of the remaining hidden-layer weights per round and 10 % of the output layer's, survivors rewound to their
initial values (``winning_ticket``); for every round's mask, the same mask with fresh weights
(``reinitialized``) and a random mask with the ticket's per-layer counts and the original initial weights
(``random_ticket``).

Part ``init`` (Tanaka et al. 2020): one-shot pruning at initialization to 90 / 99 / 99.9 % sparsity with SynFlow
(data-free, 100 iterations), magnitude, SNIP (gradient x weight on one batch of 100 training images) and random,
then the same training.

Points go into --output as ``points`` (``{task, method, remaining, seed, dev_accuracy, ...}``) that merge with
earlier runs, so parts and seeds can run separately:

    python benchmarks/lottery_mnist.py --part lottery --seeds 0,1,2
    python benchmarks/lottery_mnist.py --part init --seeds 0,1,2
    hfprune plot benchmarks/results/lottery_mnist.json --x weights --output docs/images/lottery_mnist.png
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
SPLITS = REPO / "benchmarks" / "splits"
MODULES = ["fc1", "fc2", "fc3"]


class LeNet300100(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998), the fully connected network of the lottery ticket paper."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist_split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    images = (images - 0.1307) / 0.3081
    train_file, eval_file = SPLITS / "mnist_train_8000.txt", SPLITS / "mnist_eval_2000.txt"
    if not train_file.is_file():
        order = np.random.default_rng(0).permutation(len(labels))
        train_file.write_text("".join(f"{i}\n" for i in sorted(order[:8000])))
        eval_file.write_text("".join(f"{i}\n" for i in sorted(order[8000:])))
    train = np.array([int(line) for line in train_file.read_text().split()])
    held = np.array([int(line) for line in eval_file.read_text().split()])
    assert not set(train) & set(held)
    as_tensors = lambda idx: (torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))  # noqa: E731
    return as_tensors(train), as_tensors(held)


@torch.no_grad()
def evaluate(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    model.eval()
    logits = model(data[0])
    model.train()
    loss = float(nn.functional.cross_entropy(logits, data[1]))
    return loss, float((logits.argmax(-1) == data[1]).float().mean())


def make_train(args: argparse.Namespace, train_data, eval_data, seed: int):
    """train(model, round_index, after_step) for `find_lottery_ticket` (and the controls): Adam, fixed order."""

    def train(model: nn.Module, round_index: int, after_step) -> dict:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        generator = torch.Generator().manual_seed(seed)  # the same batches in every round and every variant
        images, labels = train_data
        best = (float("inf"), 0, 0.0)
        step, started = 0, time.perf_counter()
        model.train()
        while step < args.iterations:
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
                batch = order[start : start + args.batch_size]
                loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                after_step(step)
                if step % args.eval_every == 0:
                    eval_loss, accuracy = evaluate(model, eval_data)
                    if eval_loss < best[0]:
                        best = (eval_loss, step, accuracy)
                if step >= args.iterations:
                    break
        _, final = evaluate(model, eval_data)
        return {"dev_accuracy": final, "early_stop_iteration": best[1], "early_stop_accuracy": best[2],
                "wall_s": round(time.perf_counter() - started, 2)}  # fmt: skip

    return train


def lottery_part(args, train_data, eval_data, seed: int) -> list[dict]:
    from hfprune import LotteryConfig, find_lottery_ticket
    from hfprune.lottery import apply_ticket_, load_ticket, random_ticket, reinitialize_

    torch.manual_seed(seed)
    model = LeNet300100()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # The paper prunes each layer by its own rate (local), the output layer at half the rate.
    config = LotteryConfig(rounds=args.rounds, prune_rate=0.2, rate_overrides={"fc3": 0.1},
                           pruning={"target_modules": MODULES, "scope": "local"})  # fmt: skip
    train = make_train(args, train_data, eval_data, seed)
    with tempfile.TemporaryDirectory(prefix="lottery-") as folder:
        records = find_lottery_ticket(model, config, train, folder)
        points = [dict(method="winning_ticket", remaining=round(r["remaining"], 4), round=r["round"], **r["metrics"])
                  for r in records]  # fmt: skip
        for round_index in range(1, args.rounds + 1):
            if round_index % args.control_every and round_index != args.rounds:
                continue
            masks, record = load_ticket(folder, round_index)
            reinit = apply_ticket_(LeNet300100(), masks)
            reinitialize_(reinit, seed=10_000 + seed)
            shuffled = LeNet300100()
            shuffled.load_state_dict(initial)
            apply_ticket_(shuffled, random_ticket(masks, seed=20_000 + seed + round_index))
            for method, control in (("reinitialized", reinit), ("random_ticket", shuffled)):
                metrics = train(control, round_index, lambda step: None)
                points.append(
                    dict(method=method, remaining=round(record["remaining"], 4), round=round_index, **metrics)
                )
    return points


def init_part(args, train_data, eval_data, seed: int) -> list[dict]:
    from hfprune import PruningConfig, prune_
    from hfprune.lottery import apply_ticket_

    points = []
    images, labels = train_data
    snip_batch = [(images[:100], labels[:100])]
    for sparsity in (0.9, 0.99, 0.999):
        for method in ("synflow", "magnitude", "snip", "random"):
            torch.manual_seed(seed)
            model = LeNet300100()
            importance = {"type": "synflow", "iterations": 100, "input_shape": [1, 28, 28]} if method == "synflow" \
                else method  # fmt: skip
            config = PruningConfig(sparsity=sparsity, scope="global", target_modules=MODULES, importance=importance,
                                   seed=seed)  # fmt: skip
            prune_(model, config, snip_batch if method == "snip" else None)
            kept = {name: int((getattr(model, name).weight != 0).sum()) for name in MODULES}
            total = sum(getattr(model, name).weight.numel() for name in MODULES)
            # Train with the zeros held: masks on the pruned weights.
            apply_ticket_(model, {name: getattr(model, name).weight != 0 for name in MODULES})
            metrics = make_train(args, train_data, eval_data, seed)(model, 0, lambda step: None)
            points.append(dict(method=f"{method}_at_init", remaining=round(1 - sparsity, 4),
                               reached_remaining=sum(kept.values()) / total, kept=kept, **metrics))  # fmt: skip
    return points


def merge_points(
    output: Path, new_points: list[dict], command: str, protocol: str, is_dense: Callable[[dict], bool],
    dense_tasks: list[str],
) -> None:  # fmt: skip
    """Add ``new_points`` to ``output`` (replacing earlier runs of the same task, method, remaining and seed); the
    mean of the points ``is_dense`` picks is the dense reference of every task in ``dense_tasks``. Shared with
    benchmarks/lottery_cifar.py."""
    results = json.loads(output.read_text()) if output.is_file() else {}
    key = ("task", "method", "remaining", "seed")
    fresh = {tuple(p[k] for k in key) for p in new_points}
    points = [p for p in results.get("points", []) if tuple(p[k] for k in key) not in fresh] + new_points
    results["points"] = sorted(points, key=lambda p: (p["task"], p["method"], -p["remaining"], p["seed"]))
    dense = [p["dev_accuracy"] for p in results["points"] if is_dense(p)]
    if dense:
        reference = {"dev_accuracy": sum(dense) / len(dense), "seeds": len(dense)}
        results["dense"] = {**results.get("dense", {}), **{task: reference for task in dense_tasks}}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    results["protocol"] = protocol
    results.setdefault("commands", [])
    if command not in results["commands"]:
        results["commands"].append(command)
    partial = output.with_suffix(f".json.{os.getpid()}.partial")
    partial.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(partial, output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["lottery", "init"], required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1.2e-3)
    parser.add_argument("--rounds", type=int, default=15, help="Pruning rounds (0.8 ** 15: 3.5 %% remaining).")
    parser.add_argument("--control-every", type=int, default=1, help="Train the controls every N rounds.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "lottery_mnist.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_data, eval_data = mnist_split()
    command = "python " + " ".join(sys.argv)
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        part = lottery_part if args.part == "lottery" else init_part
        task = "mnist-lenet" if args.part == "lottery" else "mnist-lenet-at-init"  # one plot panel each
        points = [dict(task=task, seed=seed, iterations=args.iterations, **point)
                  for point in part(args, train_data, eval_data, seed)]  # fmt: skip
        with open(Path(tempfile.gettempdir()) / "lottery_mnist.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # The dense round of the lottery part is the reference of both parts.
            merge_points(args.output, points, command, " ".join(__doc__.split("\n\n")[1].split()),
                         lambda p: p["method"] == "winning_ticket" and p.get("round") == 0,
                         ["mnist-lenet", "mnist-lenet-at-init"])  # fmt: skip
        print(f"seed {seed}: {len(points)} points in {time.perf_counter() - started:.0f} s", flush=True)
        for point in points:
            print(json.dumps({k: point[k] for k in ("method", "remaining", "dev_accuracy", "early_stop_iteration")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
