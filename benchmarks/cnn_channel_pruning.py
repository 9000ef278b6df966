#!/usr/bin/env python
"""CNN channel pruning benchmark: the pretrained CIFAR ResNet-56 pruned to half its FLOPs, three ways, on CPU.

In one run, on the fixed split of the 10,000 CIFAR-10 test JPEGs (benchmarks/splits: fine-tune and search on the
8,000 ``cifar10_train_8000`` images, evaluate on the 2,000 ``cifar10_eval_2000`` images, never the other way round):

* ``dense``: the pretrained ResNet-56 (option-A shortcuts, ../shared/data/weights/resnet56-4bfd9763.th).
* ``uniform_l1``: ``hfprune.channels.plan_channels`` (L1 group importance, ``target_flops=0.5``, the same ratio in
  every prunable group) + ``apply_channel_plan_``.
* ``eagleeye``: ``hfprune.channels.eagleeye_search`` (random per-group ratios meeting the FLOPs target, each candidate
  scored by top-1 after adaptive BN on batches of the train split) + ``apply_channel_plan_``.
* ``torch_pruning``: Torch-Pruning's ``MetaPruner`` with ``GroupMagnitudeImportance(p=1)``, stem conv and classifier
  ignored, the uniform ``pruning_ratio`` bisected so the measured FLOPs are ~half the dense FLOPs.

Each pruned model gets the same short distillation fine-tune from the dense model (``PruningTrainer``), top-1 is
reported before and after. CPU latency at batch 64 and batch 1 (32x32) in interleaved rounds after warming up every
model with the full-size batch; speedups are medians of per-round paired ratios dense / pruned.

Also timm ``resnet50`` and ``mobilenetv2_100`` (random init, 224x224) pruned to half their FLOPs with
``plan_channels``: FLOPs ratio, planning time and paired latency ratio at batch 1 and 8.

    python benchmarks/cnn_channel_pruning.py                       # full run
    python benchmarks/cnn_channel_pruning.py --train-limit 128 --eval-limit 128 --num-candidates 2 \\
        --max-steps 2 --skip-imagenet-models                       # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/cards.py
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CIFAR_INPUT = (1, 3, 32, 32)
IMAGENET_INPUT = (1, 3, 224, 224)
VARIANTS = ("uniform_l1", "eagleeye", "torch_pruning")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ data
def read_indices(path: Path, limit: int | None, seed: int) -> list[int]:
    """The split's indices; with ``limit``, a seeded random subset (the files are in class order, so the first N
    would all be airplanes)."""
    import random

    indices = [int(token) for token in path.read_text().split()]
    if limit is None or limit >= len(indices):
        return indices
    return sorted(random.Random(seed).sample(indices, limit))


def train_transform(eval_tf: Any) -> Any:
    """Random crop (padding 4) + horizontal flip on the PIL image, then the model's eval transform."""
    from torchvision import transforms

    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), eval_tf])


def search_batches(dataset: Any, batch_size: int, num_bn: int, num_score: int, seed: int) -> tuple[list, list, int]:
    """``num_bn`` then ``num_score`` disjoint (images, labels) batches from a seeded shuffle of ``dataset``.

    If the dataset has fewer than ``(num_bn + num_score) * batch_size`` images (smoke runs), a new shuffled pass
    starts; the number of passes is returned.
    """
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=False)
    batches: list = []
    passes = 0
    while len(batches) < num_bn + num_score:
        passes += 1
        for batch in loader:
            batches.append(batch)
            if len(batches) == num_bn + num_score:
                break
    return batches[:num_bn], batches[num_bn:], passes


# ------------------------------------------------------------------------------------------------------ metrics
def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """``[in, out]`` channels/features of every Conv2d and Linear."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = [module.in_channels, module.out_channels]
        elif isinstance(module, nn.Linear):
            widths[name] = [module.in_features, module.out_features]
    return widths


def block_widths(model: nn.Module) -> dict[str, Any]:
    """CIFAR ResNet: the inner width (conv1 out) of each basic block, and the residual width of each stage."""
    return {
        "block_inner_widths": [block.conv1.out_channels for stage in (model.layer1, model.layer2, model.layer3)
                               for block in stage],
        "stage_residual_widths": [stage[-1].conv2.out_channels for stage in (model.layer1, model.layer2, model.layer3)],
        "stem_out": model.conv1.out_channels,
        "classifier_in": model.linear.in_features,
    }  # fmt: skip


def changed_layers(dense: dict[str, list[int]], pruned: dict[str, list[int]]) -> dict[str, dict[str, list[int]]]:
    return {name: {"dense": dense[name], "pruned": pruned[name]} for name in dense if dense[name] != pruned.get(name)}


def evaluate(model: nn.Module, dataset: Any, batch_size: int) -> dict[str, Any]:
    from hfprune.vision import evaluate_images

    start = time.perf_counter()
    result = evaluate_images(model, dataset, batch_size=batch_size)
    return {**result, "eval_s": time.perf_counter() - start}


def paired_latency(models: dict[str, nn.Module], inputs: torch.Tensor, warmup_inputs: torch.Tensor, rounds: int,
                   warmup: int) -> dict[str, Any]:  # fmt: skip
    """Interleaved rounds (each model once per round): medians, all timings and per-round paired ratios vs dense.

    Every model is warmed up ``warmup`` times with ``warmup_inputs`` (the full-size batch, so the allocator has
    grown to the largest activations first) and ``warmup`` times with ``inputs``. Same loop as
    `hfprune.reporting.paired_latency_ms`, which returns only the medians.
    """
    timings: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()
            for _ in range(warmup):
                model(warmup_inputs)
            if inputs is not warmup_inputs:
                for _ in range(warmup):
                    model(inputs)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(inputs)
                timings[name].append((time.perf_counter() - start) * 1000.0)
    result: dict[str, Any] = {
        "batch_size": int(inputs.shape[0]),
        "input_shape": list(inputs.shape),
        "rounds": rounds,
        "warmup": warmup,
        "median_ms": {name: statistics.median(t) for name, t in timings.items()},
        "all_ms": timings,
        "paired_speedup_vs_dense": {},
        "paired_ratios_vs_dense": {},
    }
    for name in models:
        if name != "dense":
            ratios = [d / p for d, p in zip(timings["dense"], timings[name], strict=True)]
            result["paired_ratios_vs_dense"][name] = ratios
            result["paired_speedup_vs_dense"][name] = statistics.median(ratios)
    return result


# ------------------------------------------------------------------------------------------------------ pruning
def torch_pruning_prune(dense: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[model.conv1, model.linear])  # fmt: skip
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def torch_pruning_bisect(dense: nn.Module, example: torch.Tensor, dense_flops: int, target: float,
                         steps: int) -> tuple[nn.Module, float, float, list[dict]]:  # fmt: skip
    """Bisect the uniform ratio on measured FLOPs; return the model whose FLOPs fraction is closest to ``target``."""
    from hfprune.channels import count_flops

    low, high = 0.0, 0.95
    trials: list[dict] = []
    best: tuple[float, float, nn.Module, float] | None = None
    for ratio in [0.5] + [None] * steps:  # start at the nominal 0.5, then bisect
        ratio = (low + high) / 2 if ratio is None else ratio
        model = torch_pruning_prune(dense, ratio, example)
        fraction = count_flops(model, example) / dense_flops
        trials.append({"pruning_ratio": ratio, "flops_fraction": fraction})
        if best is None or abs(fraction - target) < best[0]:
            best = (abs(fraction - target), ratio, model, fraction)
        low, high = (ratio, high) if fraction > target else (low, ratio)
    assert best is not None
    return best[2], best[1], best[3], trials


def torch_pruning_groups(dense: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """What Torch-Pruning's dependency graph makes of the option-A shortcut (zero-padding + subsampling)."""
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {module: name for name, module in model.named_modules()}
    stem_group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0])
    stem_modules = sorted({names[dep.target.module] for dep, _ in stem_group if dep.target.module in names})
    groups = list(graph.get_all_groups(ignored_layers=[model.conv1, model.linear], root_module_types=[nn.Conv2d]))
    return {
        "num_groups_pruned": len(groups),
        "group_roots": [names[g[0].dep.target.module] for g in groups],
        "stem_group_num_dependencies": len(stem_group),
        "stem_group_modules": stem_modules,
        "stem_group_spans_all_stages": any(n.startswith("layer3.") for n in stem_modules),
    }


def finetune(args: argparse.Namespace, pruned: nn.Module, dense: nn.Module, train_set: Any,
             name: str) -> dict[str, Any]:  # fmt: skip
    """The same short distillation fine-tune for every variant (in place)."""
    from transformers import TrainingArguments

    from hfprune import DistillationConfig, PruningTrainer
    from hfprune.vision import ImageClassifier

    pruned.requires_grad_(True)
    teacher = copy.deepcopy(dense)
    optim_args = f"momentum={args.sgd_momentum}" if args.sgd_momentum else None
    with tempfile.TemporaryDirectory(prefix=f"hfprune-cnn-{name}-") as output_dir:
        training = TrainingArguments(
            output_dir=output_dir, use_cpu=True, per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.learning_rate, optim="sgd",
            optim_args=optim_args, weight_decay=5e-4, warmup_steps=0, lr_scheduler_type="cosine",
            save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=args.logging_steps, seed=args.seed,
        )  # fmt: skip
        trainer = PruningTrainer(
            model=ImageClassifier(pruned), args=training, train_dataset=train_set, teacher_model=ImageClassifier(teacher),
            distillation_config=DistillationConfig(temperature=args.kd_temperature, alpha=args.kd_alpha),
        )  # fmt: skip
        start = time.perf_counter()
        output = trainer.train()
        wall_s = time.perf_counter() - start
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        steps = trainer.state.global_step
    pruned.eval()
    pruned.zero_grad(set_to_none=True)
    return {"train_loss": output.training_loss, "steps": steps, "train_images": len(train_set),
            "log_history": history, "wall_s": wall_s, "s_per_step": wall_s / max(steps, 1)}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ ImageNet CNNs
def residual_skip_diagnosis(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Which channel groups keep_residual_width=True skips, and whether a real residual addition is the reason.

    hfprune skips a group when more than one conv/linear *output* is in it. A depthwise conv's output channels
    follow its input channels, so an expansion group (conv_pw -> conv_dw -> conv_pwl) also has two conv outputs
    without any addition; this counts those separately.
    """
    from hfprune.channels import channel_groups
    from hfprune.structures import Channels

    _, groups = channel_groups(model, example, Channels(keep_residual_width=False))
    kept, residual, depthwise_only = [], [], []
    for root, group in groups.items():
        outs = [dep.target.module for dep, _ in group if isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
                and getattr(dep.handler, "__name__", "") == "prune_out_channels"]  # fmt: skip
        dense_outs = [m for m in outs if not (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels)]
        if len(outs) <= 1:
            kept.append(root)
        elif len(dense_outs) <= 1:
            depthwise_only.append(root)
        else:
            residual.append(root)
    return {"groups_total": len(groups), "groups_kept_with_keep_residual_width": kept,
            "skipped_residual_groups": residual, "skipped_depthwise_only_groups": depthwise_only}  # fmt: skip


def imagenet_model(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Random-init timm model pruned to half FLOPs with plan_channels (keep_residual_width=True, else False)."""
    import timm

    from hfprune import ConfigError, PruningConfig
    from hfprune.channels import count_flops, plan_channels
    from hfprune.structures import Channels

    torch.manual_seed(args.seed)
    dense = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    example = torch.zeros(*IMAGENET_INPUT)
    dense_flops = count_flops(dense, example)
    result: dict[str, Any] = {"init": "random (timm.create_model, pretrained=False)", "input": list(IMAGENET_INPUT),
                              "dense_flops": dense_flops, "dense_params": num_params(dense), "attempts": []}  # fmt: skip
    result["keep_residual_width_diagnosis"] = residual_skip_diagnosis(dense, example)
    if args.target_latency is not None:
        return imagenet_latency_plan(args, name, dense, example, result)
    plan = None
    for keep_residual_width in (True, False):
        requested = args.target_flops
        for _ in range(1 + args.imagenet_retarget):
            config = PruningConfig(structure=Channels(keep_residual_width=keep_residual_width), target_flops=requested)
            log(f"{name}: plan_channels (keep_residual_width={keep_residual_width}, target_flops={requested:.4f})")
            start = time.perf_counter()
            try:
                candidate = plan_channels(dense, config, example)
            except ConfigError as err:
                wall = time.perf_counter() - start
                result["attempts"].append({"keep_residual_width": keep_residual_width, "target_flops": requested,
                                           "error": str(err), "plan_channels_s": wall})  # fmt: skip
                log(f"{name}: keep_residual_width={keep_residual_width} failed after {wall:.1f}s: {err}")
                break
            wall = time.perf_counter() - start
            fraction = candidate.extra["flops_fraction"]
            result["attempts"].append({"keep_residual_width": keep_residual_width, "target_flops": requested,
                                       "plan_channels_s": wall, "plan_flops_fraction": fraction})  # fmt: skip
            log(f"{name}: plan_channels took {wall:.1f}s, measured FLOPs fraction {fraction:.4f}")
            miss = abs(fraction - args.target_flops)
            if plan is None or miss < abs(plan.extra["flops_fraction"] - args.target_flops):
                plan = candidate
                result.update({"keep_residual_width": keep_residual_width, "pruning_config": config.to_dict(),
                               "num_groups": len(candidate.kept)})  # fmt: skip
            if miss <= args.imagenet_tolerance:
                break
            # plan_channels' linear FLOPs model missed: ask again with the target scaled by the miss.
            requested = min(1.0, max(0.05, requested * args.target_flops / fraction))
        if plan is not None:
            break
    if plan is None:
        result["error"] = "plan_channels could not reach the FLOPs target with either keep_residual_width."
        return result
    first = next(a for a in result["attempts"] if "plan_flops_fraction" in a)
    result["plan_channels_s"] = first["plan_channels_s"]  # one call at the requested target
    result["plan_channels_total_s"] = sum(a["plan_channels_s"] for a in result["attempts"])
    result["first_plan_flops_fraction"] = first["plan_flops_fraction"]
    return imagenet_measure(args, name, dense, example, plan, result)


def imagenet_latency_plan(args: argparse.Namespace, name: str, dense: nn.Module, example: torch.Tensor,
                          result: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """plan_channels at --target-latency, batch 1 (keep_residual_width=True, else False), then measured."""
    from hfprune import ConfigError, PruningConfig
    from hfprune.channels import plan_channels
    from hfprune.structures import Channels

    plan = None
    for keep_residual_width in (True, False):
        config = PruningConfig(structure=Channels(keep_residual_width=keep_residual_width),
                               target_latency=args.target_latency, latency_shape=list(IMAGENET_INPUT))  # fmt: skip
        log(f"{name}: plan_channels (keep_residual_width={keep_residual_width}, target_latency={args.target_latency})")
        start = time.perf_counter()
        try:
            record = latency_table_record(dense, config, example)
            table_s = time.perf_counter() - start
            plan = plan_channels(dense, config, example)
        except ConfigError as err:
            result["attempts"].append({"keep_residual_width": keep_residual_width, "error": str(err)})
            log(f"{name}: keep_residual_width={keep_residual_width} failed: {err}")
            continue
        result["attempts"].append({"keep_residual_width": keep_residual_width, "table_s": table_s,
                                   "plan_channels_s": time.perf_counter() - start - table_s})  # fmt: skip
        result.update({"keep_residual_width": keep_residual_width, "pruning_config": config.to_dict(),
                       "num_groups": len(plan.kept), "latency_table": record,
                       "predicted_latency_fraction": plan.extra["predicted_latency_fraction"],
                       "plan_channels_s": result["attempts"][-1]["plan_channels_s"],
                       "plan_channels_total_s": result["attempts"][-1]["plan_channels_s"]})  # fmt: skip
        break
    if plan is None:
        result["error"] = "plan_channels could not reach the latency target with either keep_residual_width."
        return result
    result = imagenet_measure(args, name, dense, example, plan, result)
    measured = 1.0 / result["batch1_paired_speedup"]
    result["measured_latency_fraction_batch1"] = measured
    result["speedup_error_batch1"] = args.target_latency / measured - 1.0
    return result


def imagenet_measure(args: argparse.Namespace, name: str, dense: nn.Module, example: torch.Tensor, plan: Any,
                     result: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Apply ``plan`` to a copy of ``dense``; FLOPs, parameters and paired latency at batch 1 and the big batch."""
    from hfprune.channels import apply_channel_plan_, count_flops

    dense_flops = result["dense_flops"]
    pruned = copy.deepcopy(dense)
    start = time.perf_counter()
    apply_channel_plan_(pruned, plan, example)
    result["apply_s"] = time.perf_counter() - start
    pruned.eval()
    flops = count_flops(pruned, example)
    result.update({"pruned_flops": flops, "flops_ratio": flops / dense_flops, "pruned_params": num_params(pruned),
                   "params_ratio": num_params(pruned) / num_params(dense),
                   "kept_per_group": {k: [len(v), plan.num_channels[k]] for k, v in plan.kept.items()}})  # fmt: skip
    models = {"dense": dense, "pruned": pruned}
    full = torch.randn(args.imagenet_batch, *IMAGENET_INPUT[1:])
    result["latency"] = {}
    for key, batch, rounds in ((f"batch{args.imagenet_batch}", args.imagenet_batch, args.imagenet_rounds_big),
                               ("batch1", 1, args.imagenet_rounds_b1)):  # fmt: skip
        log(f"{name}: latency {key}, {rounds} rounds")
        inputs = full if batch == args.imagenet_batch else full[:batch].clone()
        result["latency"][key] = paired_latency(models, inputs, full, rounds, args.warmup)
        result[f"{key}_paired_speedup"] = result["latency"][key]["paired_speedup_vs_dense"]["pruned"]
    return result


# ------------------------------------------------------------------------------------------------------ report
def machine() -> dict[str, Any]:
    return {
        "platform_machine": platform.machine(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("MALLOC_") or k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE")
        },  # fmt: skip
    }


def fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def markdown(results: dict[str, Any]) -> str:
    variants = results.get("variants", {})
    latency = results.get("latency", {})
    lines = []
    big = results["args"]["batch_size"]
    if variants:
        lines += [
            f"### CIFAR ResNet-56 to {results['args']['target_flops']} FLOPs ({results['eval_images']} eval images, "
            f"{results['train_images']} train images, {results['machine']['torch_num_threads']} threads, "
            f"MALLOC env: {({k: v for k, v in results['machine']['env'].items() if k.startswith('MALLOC_')}) or 'unset'})",
            "",
            f"| variant | top-1 pruned | top-1 fine-tuned | FLOPs ratio | params (K) | b{big} ms | b{big} speedup | "
            "b1 ms | b1 speedup | prune s | fine-tune s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, data in variants.items():
            cells = [name, fmt(data.get("top1_pruned"), ".4f"), fmt(data.get("top1_finetuned"), ".4f"),
                     fmt(data.get("flops_ratio"), ".3f"), fmt(data.get("params", 0) / 1e3, ".1f")]  # fmt: skip
            for key in (f"batch{big}", "batch1"):
                lat = latency.get(key) or {}
                cells.append(fmt(lat.get("median_ms", {}).get(name), ".2f"))
                speedup = 1.0 if name == "dense" and lat else lat.get("paired_speedup_vs_dense", {}).get(name)
                cells.append(fmt(speedup, ".2f"))
            cells += [fmt(data.get("prune_s"), ".1f"), fmt(data.get("finetune", {}).get("wall_s"), ".1f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    imagenet = results.get("imagenet_models", {})
    if imagenet:
        lines += [
            "### timm ImageNet CNNs (random init, 224x224) to half FLOPs with plan_channels",
            "",
            "| model | keep_residual_width | FLOPs ratio | params ratio | plan_channels s | b1 speedup | "
            f"b{results['args']['imagenet_batch']} speedup |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, data in imagenet.items():
            lines.append("| " + " | ".join([
                name, str(data.get("keep_residual_width", "-")), fmt(data.get("flops_ratio"), ".3f"),
                fmt(data.get("params_ratio"), ".3f"), fmt(data.get("plan_channels_s"), ".1f"),
                fmt(data.get("batch1_paired_speedup"), ".2f"),
                fmt(data.get(f"batch{results['args']['imagenet_batch']}_paired_speedup"), ".2f"),
            ]) + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHARED / "weights" / "resnet56-4bfd9763.th")
    parser.add_argument("--images", type=Path, default=SHARED / "cifar10" / "cifar10_test_jpg_yoongikim.zip")
    parser.add_argument("--labels", type=Path, default=SHARED / "cifar10" / "cifar10_test_jpg_yoongikim_labels.csv")
    parser.add_argument(
        "--train-indices", type=Path, default=REPO / "benchmarks" / "splits" / "cifar10_train_8000.txt"
    )
    parser.add_argument("--eval-indices", type=Path, default=REPO / "benchmarks" / "splits" / "cifar10_eval_2000.txt")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "cnn_channel_pruning.json")
    parser.add_argument("--card", default="resnet56-cifar10-eagleeye-50",
                        help="Render the EagleEye model's card into model_cards/<CARD>.md ('' skips it).")
    parser.add_argument("--target-flops", type=float, default=0.5, help="Fraction of dense FLOPs to keep.")
    parser.add_argument("--target-latency", type=float, default=None,
                        help="Plan uniform L1 and EagleEye (and the ImageNet models) to this fraction of the dense "
                             "latency instead, from latency tables measured here (ResNet-56 at --batch-size, the "
                             "ImageNet models at batch 1); Torch-Pruning still bisects on FLOPs.")  # fmt: skip
    parser.add_argument("--train-limit", type=int, default=None, help="Use a seeded random N of the train split.")
    parser.add_argument("--eval-limit", type=int, default=None, help="Use a seeded random N of the eval split.")
    parser.add_argument("--batch-size", type=int, default=64, help="Fine-tune, search and evaluation batch size.")
    # EagleEye
    parser.add_argument("--num-candidates", type=int, default=30)
    parser.add_argument("--max-ratio", type=float, default=0.8, help="EagleEye's largest per-group pruning ratio.")
    parser.add_argument("--bn-batches", type=int, default=20, help="Train-split batches for adaptive BN.")
    parser.add_argument("--score-batches", type=int, default=10, help="Train-split batches scoring candidates.")
    # Torch-Pruning
    parser.add_argument("--tp-bisect-steps", type=int, default=10)
    # Fine-tune
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="Overrides --epochs when > 0 (smoke tests).")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument(
        "--sgd-momentum",
        type=float,
        default=0.0,
        help="transformers' optim='sgd' has no momentum unless optim_args sets it; 0 keeps that.",
    )
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument("--kd-alpha", type=float, default=0.9)
    parser.add_argument("--logging-steps", type=int, default=50)
    parser.add_argument("--no-augment", action="store_true", help="Fine-tune without random crop + flip.")
    parser.add_argument("--skip-finetune", action="store_true")
    # Latency
    parser.add_argument("--rounds-b64", type=int, default=10)
    parser.add_argument("--rounds-b1", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    # ImageNet CNNs
    parser.add_argument("--skip-cifar", action="store_true", help="Only the timm ImageNet models.")
    parser.add_argument("--skip-imagenet-models", action="store_true")
    parser.add_argument("--imagenet-models", default="resnet50,mobilenetv2_100")
    parser.add_argument("--imagenet-batch", type=int, default=8)
    parser.add_argument("--imagenet-rounds-b1", type=int, default=10)
    parser.add_argument("--imagenet-rounds-big", type=int, default=5)
    parser.add_argument("--imagenet-retarget", type=int, default=2,
                        help="Re-plan up to N times with a rescaled target_flops when the measured FLOPs fraction "
                             "misses the target by more than --imagenet-tolerance.")  # fmt: skip
    parser.add_argument("--imagenet-tolerance", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run_start = time.perf_counter()
    results: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "python_executable": sys.executable,
        "cwd": os.getcwd(),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "flops_method": "hfprune.channels.count_flops (torch.utils.flop_counter.FlopCounterMode), batch 1, zeros",
        "latency_method": ("CPU, torch.inference_mode, time.perf_counter, random inputs; every model warmed up "
                           f"{args.warmup}x with the full-size batch and {args.warmup}x with the measured shape, then "
                           "interleaved rounds (each model once per round); speedup = median over rounds of "
                           "dense_ms / pruned_ms"),
        "notes": [],
    }  # fmt: skip
    notes: list[str] = results["notes"]
    if not args.skip_cifar:
        cifar(args, results, notes)
        write(results, args.output)
    if not args.skip_imagenet_models:
        results["imagenet_models"] = {}
        for name in [n.strip() for n in args.imagenet_models.split(",") if n.strip()]:
            results["imagenet_models"][name] = info = imagenet_model(args, name)
            if info.get("keep_residual_width") is False:
                notes.append(f"{name}: keep_residual_width=True could not reach target_flops={args.target_flops} "
                             f"({info['attempts'][0].get('error')}); planned with "
                             "hfprune.structures.Channels(keep_residual_width=False).")  # fmt: skip
            notes.append(f"{name}: plan_channels took {info.get('plan_channels_s', float('nan')):.1f}s per call "
                         f"({info.get('num_groups')} channel groups; one pruned-copy FLOPs count per group), "
                         f"{info.get('plan_channels_total_s', float('nan')):.1f}s over {len(info['attempts'])} "
                         "calls.")  # fmt: skip
            first = info.get("first_plan_flops_fraction")
            if first is not None and abs(first - args.target_flops) > args.imagenet_tolerance:
                notes.append(f"{name}: plan_channels(target_flops={args.target_flops}) measured {first:.4f} of the "
                             "dense FLOPs (its linear per-group FLOPs model misses when coupled groups shrink both "
                             "sides of a conv); "
                             + (f"re-planned {len(info['attempts']) - 1}x with a rescaled target_flops, final ratio "
                                if len(info["attempts"]) > 1 else "not re-planned (--imagenet-retarget 0), ratio ")
                             + f"{info.get('flops_ratio', float('nan')):.4f}.")  # fmt: skip
            write(results, args.output)
    results["total_wall_s"] = time.perf_counter() - run_start
    write(results, args.output)
    log(f"wrote {args.output}")
    print(markdown(results))
    for note in notes:
        print(f"- {note}")
    return 0


def cifar(args: argparse.Namespace, results: dict[str, Any], notes: list[str]) -> None:
    import timm
    from torch.utils.data import Subset

    import hfprune.models  # noqa: F401 - registers cifar_resnet56 with timm
    from hfprune import PruningConfig
    from hfprune.channels import adaptive_bn_, apply_channel_plan_, count_flops, eagleeye_search, plan_channels
    from hfprune.vision import LabelledImages, eval_transform

    dense = timm.create_model("cifar_resnet56", checkpoint_path=str(args.checkpoint)).eval()
    example = torch.zeros(*CIFAR_INPUT)
    eval_tf = eval_transform(dense)
    train_idx = read_indices(args.train_indices, args.train_limit, args.seed)
    eval_idx = read_indices(args.eval_indices, args.eval_limit, args.seed)
    overlap = set(train_idx) & set(eval_idx)
    if overlap:
        raise SystemExit(f"train and eval splits overlap in {len(overlap)} images, e.g. {sorted(overlap)[:5]}")
    images = LabelledImages(args.images, args.labels, transform=eval_tf, num_classes=10)
    eval_set = Subset(images, eval_idx)
    train_eval_tf = Subset(images, train_idx)  # search / adaptive BN: train split, eval preprocessing
    fit_tf = eval_tf if args.no_augment else train_transform(eval_tf)
    train_set = Subset(LabelledImages(args.images, args.labels, transform=fit_tf, num_classes=10, as_dict=True),
                       train_idx)  # fmt: skip
    results.update({
        "model": "timm cifar_resnet56 (hfprune.models, option-A shortcuts), " + str(args.checkpoint),
        "data": (f"{args.images} + {args.labels}; fine-tune/search on {args.train_indices.name} "
                 f"({len(train_idx)} images), evaluate on {args.eval_indices.name} ({len(eval_idx)} images)"),
        "train_images": len(train_idx),
        "eval_images": len(eval_idx),
        "train_eval_overlap": 0,
        "train_augmentation": None if args.no_augment else "RandomCrop(32, padding=4) + RandomHorizontalFlip, then eval transform",
        "eval_transform": str(eval_tf),
    })  # fmt: skip
    config = PruningConfig.from_dict(variants_config(args))
    if args.target_latency is not None:
        results["latency_table"] = latency_table_record(dense, config, example)
    results["pruning_config"] = config.to_dict()

    log("dense: evaluating")
    dense_flops = count_flops(dense, example)
    dense_widths = layer_widths(dense)
    variants: dict[str, dict[str, Any]] = {}
    dense_eval = evaluate(dense, eval_set, args.batch_size)
    variants["dense"] = {"top1_pruned": dense_eval["top1"], "top1_finetuned": dense_eval["top1"], "eval": dense_eval,
                         "flops": dense_flops, "flops_ratio": 1.0, "params": num_params(dense),
                         "widths": block_widths(dense)}  # fmt: skip
    log(f"dense: top-1 {dense_eval['top1']:.4f}, {dense_flops / 1e6:.1f} MFLOPs, {num_params(dense)} params")

    bn_batches, score_batches, passes = search_batches(train_eval_tf, args.batch_size, args.bn_batches,
                                                       args.score_batches, args.seed)  # fmt: skip
    results["search_batches"] = {"bn_batches": len(bn_batches), "score_batches": len(score_batches),
                                 "batch_size": args.batch_size, "source": "train split, eval transform, seeded shuffle",
                                 "passes_over_train_split": passes}  # fmt: skip
    if passes > 1:
        notes.append(
            f"The train split ({len(train_idx)} images) is smaller than {args.bn_batches}+{args.score_batches} "
            f"batches of {args.batch_size}: EagleEye's BN/score batches repeat images ({passes} passes)."
        )

    pruned: dict[str, nn.Module] = {}
    # (a) uniform L1
    log("(a) uniform L1: plan_channels + apply_channel_plan_")
    start = time.perf_counter()
    plan = plan_channels(dense, config, example)
    plan_s = time.perf_counter() - start
    model = apply_channel_plan_(copy.deepcopy(dense), plan, example).eval()
    pruned["uniform_l1"] = model
    variants["uniform_l1"] = {"plan_s": plan_s, "prune_s": time.perf_counter() - start,
                              "plan_flops_fraction": plan.extra.get("flops_fraction"), "plan": plan.to_dict()}  # fmt: skip

    # (b) EagleEye
    log(f"(b) EagleEye: {args.num_candidates} candidates, {len(bn_batches)} BN + {len(score_batches)} score batches")
    start = time.perf_counter()
    plans: dict[str, Any] = {}
    plan, candidates = eagleeye_search(dense, config, example, bn_batches, score_batches,
                                       num_candidates=args.num_candidates, max_ratio=args.max_ratio, seed=args.seed)  # fmt: skip
    search_s = time.perf_counter() - start
    model = apply_channel_plan_(copy.deepcopy(dense), plan, example).eval()
    pruned["eagleeye"] = model
    plans["eagleeye"] = plan
    variants["eagleeye"] = {"search_s": search_s, "prune_s": time.perf_counter() - start,
                            "num_candidates": args.num_candidates, "max_ratio": args.max_ratio,
                            "chosen_candidate": plan.extra.get("candidate"),
                            "chosen_adaptive_bn_top1_on_score_batches": plan.extra.get("adaptive_bn_top1"),
                            "candidates": candidates, "plan": plan.to_dict()}  # fmt: skip

    # (c) Torch-Pruning
    log("(c) Torch-Pruning MetaPruner, bisecting pruning_ratio on measured FLOPs")
    start = time.perf_counter()
    model, ratio, fraction, trials = torch_pruning_bisect(dense, example, dense_flops, args.target_flops,
                                                          args.tp_bisect_steps)  # fmt: skip
    bisect_s = time.perf_counter() - start
    start = time.perf_counter()
    torch_pruning_prune(dense, ratio, example)  # one prune at the chosen ratio, timed alone
    once_s = time.perf_counter() - start
    import torch_pruning as tp

    pruned["torch_pruning"] = model
    tp_widths = layer_widths(model)
    tp_graph = torch_pruning_groups(dense, example)
    variants["torch_pruning"] = {
        "torch_pruning_version": tp.__version__,
        "call": ("tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=1), "
                 f"pruning_ratio={ratio}, ignored_layers=[model.conv1, model.linear]).step()"),
        "pruning_ratio": ratio,
        "bisection": trials,
        "bisect_s": bisect_s,
        "prune_s": once_s,
        "dependency_graph": tp_graph,
        "layers_changed": changed_layers(dense_widths, tp_widths),
        "layer_widths": tp_widths,
    }  # fmt: skip
    residual_kept = (
        block_widths(model)["stage_residual_widths"] == variants["dense"]["widths"]["stage_residual_widths"]
    )
    notes.append(
        f"Torch-Pruning (v{tp.__version__}) pruned {tp_graph['num_groups_pruned']} groups at pruning_ratio={ratio:.4f} "
        f"(FLOPs fraction {fraction:.4f}); residual widths {'unchanged' if residual_kept else 'CHANGED'}. Its "
        "dependency graph traces the option-A shortcut's channel zero-padding (F.pad) as an element-wise op, so "
        f"the residual streams of all stages form one group of {tp_graph['stem_group_num_dependencies']} "
        f"dependencies rooted at the stem conv1 (spans all stages: {tp_graph['stem_group_spans_all_stages']}); "
        "with conv1 ignored that group is skipped, leaving the block-internal widths (conv1 out / bn1 / conv2 in of "
        "each basic block). Pruning that group would be wrong anyway: its members have 16, 32 and 64 channels."
    )  # fmt: skip

    for name in VARIANTS:
        model = pruned[name]
        data = variants[name]
        flops = count_flops(model, example)
        data.update({"flops": flops, "flops_ratio": flops / dense_flops, "params": num_params(model),
                     "params_ratio": num_params(model) / num_params(dense), "widths": block_widths(model)})  # fmt: skip
        log(f"{name}: evaluating pruned model (FLOPs ratio {flops / dense_flops:.4f})")
        data["eval_pruned"] = evaluate(model, eval_set, args.batch_size)
        data["top1_pruned"] = data["eval_pruned"]["top1"]
        bn_model = adaptive_bn_(copy.deepcopy(model), bn_batches)
        data["top1_pruned_adaptive_bn"] = evaluate(bn_model, eval_set, args.batch_size)["top1"]
        del bn_model
        log(f"{name}: top-1 {data['top1_pruned']:.4f} (after adaptive BN on train batches "
            f"{data['top1_pruned_adaptive_bn']:.4f})")  # fmt: skip
    a, c = pruned["uniform_l1"].state_dict(), pruned["torch_pruning"].state_dict()
    same = a.keys() == c.keys() and all(a[k].shape == c[k].shape and torch.equal(a[k], c[k]) for k in a)
    variants["torch_pruning"]["identical_to_uniform_l1_before_finetune"] = same
    if same:
        notes.append("Before fine-tuning, the Torch-Pruning model is parameter-for-parameter identical to hfprune's "
                     "uniform L1 model (same groups, same group-L1 ranking, same per-group counts).")  # fmt: skip
    results["variants"] = variants
    write(results, args.output)

    if not args.skip_finetune:
        for name in VARIANTS:
            log(f"{name}: distillation fine-tune")
            info = finetune(args, pruned[name], dense, train_set, name)
            variants[name]["finetune"] = info
            variants[name]["eval_finetuned"] = evaluate(pruned[name], eval_set, args.batch_size)
            variants[name]["top1_finetuned"] = variants[name]["eval_finetuned"]["top1"]
            log(f"{name}: top-1 after fine-tune {variants[name]['top1_finetuned']:.4f} ({info['steps']} steps, "
                f"{info['wall_s']:.1f}s)")  # fmt: skip
            write(results, args.output)
        results["finetune_config"] = {
            "trainer": "hfprune.PruningTrainer(model=ImageClassifier(pruned), teacher_model=ImageClassifier(dense))",
            "distillation": {"temperature": args.kd_temperature, "alpha": args.kd_alpha},
            "optim": "sgd", "sgd_momentum": args.sgd_momentum, "learning_rate": args.learning_rate,
            "weight_decay": 5e-4, "lr_scheduler_type": "cosine", "warmup_steps": 0, "batch_size": args.batch_size,
            "epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed,
        }  # fmt: skip
        if not args.sgd_momentum:
            notes.append("transformers' optim='sgd' is torch.optim.SGD without momentum (no optim_args given).")

    models = {"dense": dense, **pruned}
    full = torch.randn(args.batch_size, *CIFAR_INPUT[1:])
    latency = {}
    for key, batch, rounds in ((f"batch{args.batch_size}", args.batch_size, args.rounds_b64),
                               ("batch1", 1, args.rounds_b1)):  # fmt: skip
        log(f"latency {key}: {rounds} interleaved rounds")
        inputs = full if batch == args.batch_size else full[:batch].clone()
        latency[key] = paired_latency(models, inputs, full, rounds, args.warmup)
        for name in VARIANTS:
            variants[name][f"{key}_latency_median_ms"] = latency[key]["median_ms"][name]
            variants[name][f"{key}_paired_speedup"] = latency[key]["paired_speedup_vs_dense"][name]
            variants[name][f"{key}_speedup_x_flops_ratio"] = (latency[key]["paired_speedup_vs_dense"][name]
                                                              * variants[name]["flops_ratio"])  # fmt: skip
        variants["dense"][f"{key}_latency_median_ms"] = latency[key]["median_ms"]["dense"]
    results["latency"] = latency
    if args.card:
        card = eagleeye_card(args, dense, pruned["eagleeye"], plans["eagleeye"], variants, latency, full)
        log(f"wrote {card}")


def variants_config(args: argparse.Namespace) -> dict[str, Any]:
    """The PruningConfig uniform L1 and EagleEye plan with (as a dict)."""
    from hfprune import PruningConfig

    if args.target_latency is None:
        return PruningConfig(importance="l1", structure="channels", target_flops=args.target_flops).to_dict()
    return PruningConfig(importance="l1", structure="channels", target_latency=args.target_latency,
                         latency_shape=[args.batch_size, *CIFAR_INPUT[1:]]).to_dict()  # fmt: skip


def latency_table_record(dense: nn.Module, config: Any, example: torch.Tensor) -> dict[str, Any]:
    """Measure the latency table now (timed; plan_channels and eagleeye_search then read it from the cache)."""
    from hfprune.channels import latency_table_for_channels

    log(f"latency table at {config.latency_shape}")
    start = time.perf_counter()
    table = latency_table_for_channels(dense, config, example, rebuild=True)
    return {"build_s": time.perf_counter() - start, "table": table.to_dict()}


def eagleeye_card(args: argparse.Namespace, dense: nn.Module, model: nn.Module, plan: Any, variants: dict,
                  latency: dict, full: torch.Tensor) -> Path:  # fmt: skip
    """model_cards/<--card>.md: the EagleEye model (after the distillation fine-tune when it ran)."""
    from cards import write_card

    from hfprune import PruningConfig
    from hfprune.hub import CardEvaluation
    from hfprune.reporting import device_description, report

    after, before = (report(m, full, measure_latency=False) for m in (model, dense))
    key = f"batch{args.batch_size}"
    for item, name in ((after, "eagleeye"), (before, "dense")):
        item.latency_ms = latency[key]["median_ms"][name]
        item.latency_runs, item.device = args.rounds_b64, device_description()
    variant = variants["eagleeye"]
    tuned = "top1_finetuned" in variant
    top1 = variant["top1_finetuned"] if tuned else variant["top1_pruned"]
    evaluation = CardEvaluation(task_type="image-classification", dataset_type="cifar10",
                                dataset_name=f"CIFAR-10 test, the {variants['dense']['eval']['num_images']} held-out "
                                "images of benchmarks/splits/cifar10_eval_2000.txt", dataset_split="test",
                                metrics={"top1": top1}, base_metrics={"top1": variants["dense"]["top1_pruned"]},
                                base_label="the dense pretrained model")  # fmt: skip
    notes = [f"EagleEye (Li et al. 2020): {args.num_candidates} random per-group width candidates at "
             f"{args.target_flops:.0%} of the FLOPs, each scored after adaptive BN on training batches"]
    if tuned:
        notes.append(f"Then {variant['finetune']['steps']} steps of distillation from the dense model (T="
                     f"{args.kd_temperature}, alpha={args.kd_alpha}, SGD momentum {args.sgd_momentum}, "
                     f"{args.epochs:g} epochs of the training split)")  # fmt: skip
    return write_card(args.card, model, command=results_command(), variant="variant eagleeye",
                      base_model="cifar_resnet56 (hfprune.models) with the CIFAR ResNet-56 weights of ../shared/data",
                      pruning_config=PruningConfig.from_dict(variants_config(args)), library="timm",
                      report=after, base_report=before, plan=plan, evaluation=evaluation,
                      method_notes=notes)  # fmt: skip


def results_command() -> str:
    return shlex.join(["python", *sys.argv])


if __name__ == "__main__":
    sys.exit(main())
