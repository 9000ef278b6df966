#!/usr/bin/env python
"""Polarization vs network slimming vs EagleEye on the pretrained CIFAR ResNet-56 at half its FLOPs, one budget.

Same model, data split and distillation fine-tune as benchmarks/cnn_channel_pruning.py. Every variant gets
--sparsity-epochs + --finetune-epochs epochs of training on the 8,000-image split:

* ``l1_slimming`` (Liu et al. 2017): --sparsity-epochs of training with ``BatchNormL1(--l1)``, then the channels
  below one global BN-scale threshold go (``bn_scale``, ``scope="global"``, ``target_flops=0.5``), then a
  distillation fine-tune from the dense model for --finetune-epochs.
* ``polarization`` (Zhuang et al. 2020): the same with ``Polarization(--polarization, t=--t)`` (scales clamped to
  [0, 1]); the report adds where `polarization_threshold` finds the gap and how many scales sit below it.
* ``eagleeye``: EagleEye's search at ``target_flops=0.5`` from the dense model, then the distillation fine-tune for
  all --sparsity-epochs + --finetune-epochs epochs.

The papers train for 160-200 epochs on 50,000 images; here the penalties get a few hundred steps, so their weights
are far larger than the papers' (set here, recorded in the output). Top-1 on the 2,000 evaluation images after the
penalty training, after pruning and after the fine-tune.

    python benchmarks/polarization_cifar.py                    # full run
    python benchmarks/polarization_cifar.py --train-limit 128 --eval-limit 128 --max-steps 2 --num-candidates 2
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from cnn_channel_pruning import (  # noqa: E402 - benchmarks/ is not a package
    REPO,
    SHARED,
    evaluate,
    finetune,
    log,
    machine,
    read_indices,
    search_batches,
    train_transform,
)


SPLITS = REPO / "benchmarks" / "splits"


def penalty_training(args: argparse.Namespace, model: torch.nn.Module, train_set: Any, regularizer: Any) -> dict:
    """--sparsity-epochs of cross-entropy training with ``regularizer`` on the BN scales (in place)."""
    from transformers import TrainingArguments

    from hfprune import PruningTrainer
    from hfprune.vision import ImageClassifier

    model.requires_grad_(True)
    with tempfile.TemporaryDirectory(prefix="hfprune-polarization-") as output_dir:
        training = TrainingArguments(
            output_dir=output_dir, use_cpu=True, per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.sparsity_epochs, max_steps=args.max_steps, learning_rate=args.learning_rate,
            optim="sgd", optim_args="momentum=0.9", weight_decay=0.0, lr_scheduler_type="constant",
            save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=50, seed=args.seed,
        )  # fmt: skip
        trainer = PruningTrainer(model=ImageClassifier(model), args=training, train_dataset=train_set,
                                 regularizers=[regularizer])  # fmt: skip
        start = time.perf_counter()
        output = trainer.train()
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
    model.eval()
    return {"train_loss": output.training_loss, "steps": trainer.state.global_step, "log_history": history,
            "wall_s": time.perf_counter() - start}  # fmt: skip


def bn_scales(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach().abs().flatten() for m in model.modules()
                      if isinstance(m, torch.nn.BatchNorm2d)])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHARED / "weights" / "resnet56-4bfd9763.th")
    parser.add_argument("--images", type=Path, default=SHARED / "cifar10" / "cifar10_test_jpg_yoongikim.zip")
    parser.add_argument("--labels", type=Path, default=SHARED / "cifar10" / "cifar10_test_jpg_yoongikim_labels.csv")
    parser.add_argument("--train-indices", type=Path, default=SPLITS / "cifar10_train_8000.txt")
    parser.add_argument("--eval-indices", type=Path, default=SPLITS / "cifar10_eval_2000.txt")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "polarization_cifar.json")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--sparsity-epochs", type=float, default=1.0)
    parser.add_argument("--finetune-epochs", type=float, default=2.0)
    parser.add_argument("--l1", type=float, default=5e-3, help="BatchNormL1 weight.")
    parser.add_argument("--polarization", type=float, default=5e-3, help="Polarization weight (lambda).")
    parser.add_argument("--t", type=float, default=1.2)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--sgd-momentum", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-candidates", type=int, default=30)
    parser.add_argument("--max-ratio", type=float, default=0.8)
    parser.add_argument("--bn-batches", type=int, default=20)
    parser.add_argument("--score-batches", type=int, default=10)
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument("--kd-alpha", type=float, default=0.9)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=-1, help="Overrides the epochs when > 0 (smoke tests).")
    parser.add_argument("--variants", default="l1_slimming,polarization,eagleeye")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # cnn_channel_pruning.finetune reads these names.
    args.epochs, args.logging_steps = args.finetune_epochs, 50
    torch.manual_seed(args.seed)

    import timm
    from torch.utils.data import Subset

    import hfprune.models  # noqa: F401 - registers cifar_resnet56 with timm
    from hfprune import PruningConfig
    from hfprune.channels import apply_channel_plan_, count_flops, eagleeye_search, plan_channels
    from hfprune.regularizers import BatchNormL1, Polarization, polarization_threshold
    from hfprune.vision import LabelledImages, eval_transform

    dense = timm.create_model("cifar_resnet56", checkpoint_path=str(args.checkpoint)).eval()
    example = torch.zeros(1, 3, 32, 32)
    eval_tf = eval_transform(dense)
    train_idx = read_indices(args.train_indices, args.train_limit, args.seed)
    eval_idx = read_indices(args.eval_indices, args.eval_limit, args.seed)
    images = LabelledImages(args.images, args.labels, transform=eval_tf, num_classes=10)
    eval_set = Subset(images, eval_idx)
    train_set = Subset(LabelledImages(args.images, args.labels, transform=train_transform(eval_tf), num_classes=10,
                                      as_dict=True), train_idx)  # fmt: skip
    dense_flops = count_flops(dense, example)
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict[str, Any] = {"command": shlex.join(["python", *sys.argv]), "machine": machine(),
                               "args": arguments, "train_images": len(train_idx), "eval_images": len(eval_idx),
                               "variants": {}}  # fmt: skip
    started = time.perf_counter()
    # Key names as cnn_channel_pruning.json's, which `hfprune plot` reads.
    results["variants"]["dense"] = {"eval": evaluate(dense, eval_set, args.batch_size), "flops_ratio": 1.0}
    log(f"dense top-1 {results['variants']['dense']['eval']['top1']:.4f}")
    for variant in args.variants.split(","):
        model = copy.deepcopy(dense)
        record: dict[str, Any] = {}
        if variant == "eagleeye":
            bn_batches, score_batches, _ = search_batches(Subset(images, train_idx), args.batch_size, args.bn_batches,
                                                          args.score_batches, args.seed)  # fmt: skip
            config = PruningConfig(importance="l1", structure="channels", target_flops=args.target_flops)
            plan, _ = eagleeye_search(model, config, example, bn_batches, score_batches, seed=args.seed,
                                      num_candidates=args.num_candidates, max_ratio=args.max_ratio)  # fmt: skip
            args.epochs = args.sparsity_epochs + args.finetune_epochs  # the same total budget
        else:
            regularizer = (BatchNormL1(args.l1) if variant == "l1_slimming"
                           else Polarization(args.polarization, t=args.t))  # fmt: skip
            log(f"{variant}: {args.sparsity_epochs} epochs with {regularizer}")
            record["penalty_training"] = penalty_training(args, model, train_set, regularizer)
            scales = bn_scales(model)
            threshold = polarization_threshold(scales)
            record["bn_scales"] = {"threshold_in_gap": threshold, "share_below_gap": float((scales < threshold).float()
                                   .mean()) if threshold else 0.0, "share_below_0.05": float((scales < 0.05).float()
                                   .mean()), "quantiles": torch.quantile(scales, torch.tensor([0.1, 0.25, 0.5, 0.75,
                                   0.9])).tolist()}  # fmt: skip
            record["top1_after_penalty"] = evaluate(model, eval_set, args.batch_size)["top1"]
            config = PruningConfig(importance="bn_scale", structure="channels", target_flops=args.target_flops,
                                   scope="global")  # fmt: skip
            plan = plan_channels(model, config, example, max_ratio=args.max_ratio)
            args.epochs = args.finetune_epochs
        apply_channel_plan_(model, plan, example)
        model.eval()
        record["flops_ratio"] = count_flops(model, example) / dense_flops
        record["kept"] = {name: len(kept) for name, kept in plan.kept.items()}
        record["top1_pruned"] = evaluate(model, eval_set, args.batch_size)["top1"]
        log(f"{variant}: pruned to {record['flops_ratio']:.3f} FLOPs, top-1 {record['top1_pruned']:.4f}")
        record["finetune"] = finetune(args, model, dense, train_set, variant)
        record["top1_finetuned"] = evaluate(model, eval_set, args.batch_size)["top1"]
        log(f"{variant}: after fine-tune top-1 {record['top1_finetuned']:.4f}")
        results["variants"][variant] = record
        args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    results["wall_s"] = time.perf_counter() - started
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
