#!/usr/bin/env python
"""Structured, retraining-free pruning benchmark: a fine-tuned MiniLM SST-2 classifier pruned to 50% encoder FLOPs.

In one run, on the SST-2 dev set and on CPU:

* ``dense``: the unpruned classifier.
* ``retraining_free``: hfprune's Fisher mask search over heads and FFN neurons (``target_flops=0.5``),
  ``compact_``, then ``reconstruct_`` (least-squares rescaling of the kept units, Kwon et al. 2022). The accuracy of
  the compacted model before reconstruction (``compacted_only``) is reported too.
* ``retraining_free_kd``: the same pruned model after a short distillation fine-tune from the dense model
  (``PruningTrainer`` without a pruning config).
* ``torch_pruning``: Torch-Pruning's magnitude baseline, uniform 50% of the heads (whole heads) and of the FFN
  neurons in every layer, hidden size kept; no calibration and no retraining.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` under eager attention at batch 1 x 128 tokens.
Latency is measured with sdpa attention in interleaved rounds (every model runs once per round), after warming up
every model with the full-size input; speedups are medians of per-round paired ratios dense / pruned.

    python benchmarks/structured_retraining_free.py --model runs/bench/minilm-sst2-dense/final
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/cards.py


REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 128
# The goal for the compacted models: latency speedup times FLOPs ratio (pruned / dense).
GOALS = {"batch32": 0.95, "batch1": 0.85}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ data
def dev_batches(tokenizer: Any, data_dir: Path, limit: int | None, batch_size: int = 64) -> list[dict]:
    from transformers import DataCollatorWithPadding

    from hfprune.glue import load_glue

    dev = load_glue("sst2", data_dir, splits="validation", max_samples=limit)["validation"]
    encoded = tokenizer(list(dev["sentence"]), truncation=True, max_length=SEQ_LEN)
    collator = DataCollatorWithPadding(tokenizer)
    labels = list(dev["label"])
    batches = []
    for start in range(0, len(labels), batch_size):
        features = [
            {**{key: encoded[key][i] for key in encoded}, "labels": labels[i]}
            for i in range(start, min(start + batch_size, len(labels)))
        ]
        batches.append(dict(collator(features)))
    return batches


def kd_train_dataset(tokenizer: Any, data_dir: Path, rows: int) -> Any:
    from hfprune.glue import load_glue

    train = load_glue("sst2", data_dir, splits="train", max_samples=rows)["train"]
    train = train.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=SEQ_LEN), batched=True)
    train = train.rename_column("label", "labels")
    return train.select_columns(["input_ids", "attention_mask", "labels"])


# ------------------------------------------------------------------------------------------------------ metrics
def accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for batch in batches:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    return correct / total


def measured_flops(model: torch.nn.Module) -> int:
    """Forward FLOPs at batch 1 x 128 tokens, FlopCounterMode under eager attention (hfprune.reporting.count_flops)."""
    from hfprune.adapters.base import text_example_inputs
    from hfprune.reporting import count_flops

    model.eval()
    return count_flops(model, text_example_inputs(model, 1, SEQ_LEN))


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def heads_and_neurons(model: torch.nn.Module) -> dict[str, list[int]]:
    layers = model.bert.encoder.layer  # type: ignore[attr-defined]
    return {
        "heads": [layer.attention.self.query.out_features // layer.attention.self.attention_head_size
                  for layer in layers],
        "neurons": [layer.intermediate.dense.out_features for layer in layers],
    }  # fmt: skip


def paired_latency(models: dict[str, torch.nn.Module], inputs: dict, rounds: int, warmup: int,
                   warmup_inputs: dict) -> dict[str, Any]:  # fmt: skip
    """Interleaved rounds (each model once per round); medians per model, and per-round paired ratios vs dense.

    Every model is first warmed up with ``warmup_inputs`` (the full-size batch 32 x 128 input, so glibc's allocator
    has grown to the largest activations) and then with ``inputs``. Same loop as
    `hfprune.reporting.paired_latency_ms`, which returns only the medians.
    """
    timings: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()
            for _ in range(warmup):
                model(**warmup_inputs)
            if inputs is not warmup_inputs:
                for _ in range(warmup):
                    model(**inputs)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                timings[name].append((time.perf_counter() - start) * 1000.0)
    result: dict[str, Any] = {
        "rounds": rounds,
        "warmup": warmup,
        "median_ms": {name: statistics.median(t) for name, t in timings.items()},
        "all_ms": timings,
        "paired_speedup_vs_dense": {},
    }
    for name in models:
        if name != "dense":
            ratios = [d / p for d, p in zip(timings["dense"], timings[name], strict=True)]
            result["paired_speedup_vs_dense"][name] = statistics.median(ratios)
    return result


# ------------------------------------------------------------------------------------------------------ variants
def hfprune_retraining_free(args: argparse.Namespace, model: torch.nn.Module, tokenizer: Any,
                            dev: list[dict], uniform: bool = False) -> tuple[torch.nn.Module, torch.nn.Module, dict]:  # fmt: skip
    """(a): Fisher plan to 50% encoder FLOPs, compact_, reconstruct_. ``model`` is pruned in place.

    ``uniform``: the same number of heads and neurons in every layer (``HeadsAndNeurons(uniform=True)``).
    """
    from hfprune import PruningConfig, compact_, plan_structured
    from hfprune.recipes import glue_calibration_batches
    from hfprune.retraining_free import reconstruct_

    config = PruningConfig(importance="fisher", structure={"type": "heads_and_neurons", "uniform": uniform},
                           target_flops=args.target_flops, flops_seq_len=SEQ_LEN)  # fmt: skip
    start = time.perf_counter()
    batches = glue_calibration_batches("sst2", args.data_dir, tokenizer, num_examples=args.num_calibration,
                                       batch_size=32, max_seq_length=SEQ_LEN)  # fmt: skip
    calibration_s = time.perf_counter() - start
    dense = copy.deepcopy(model)

    start = time.perf_counter()
    plan = plan_structured(model, config, batches)
    plan_s = time.perf_counter() - start
    start = time.perf_counter()
    compact_(model, plan)
    compact_s = time.perf_counter() - start
    compacted_only = copy.deepcopy(model)  # (not timed) the model before reconstruction
    start = time.perf_counter()
    errors = reconstruct_(model, dense, batches)
    reconstruct_s = time.perf_counter() - start
    model.zero_grad(set_to_none=True)

    compacted_only_accuracy = accuracy(compacted_only, dev)
    result = {
        "plan": plan,  # popped by main (the model card's kept-structure table); not JSON
        "pruning_config": config.to_dict(),
        "num_calibration": args.num_calibration,
        "calibration_batches": len(batches),
        "plan_encoder_flops_fraction": plan.extra.get("encoder_flops_fraction"),
        "kept_heads_per_layer": [len(h) for h in plan.heads],
        "kept_neurons_per_layer": [len(n) for n in plan.neurons],
        "wall_s": {
            "load_calibration_data": calibration_s,
            "plan_structured": plan_s,
            "compact": compact_s,
            "reconstruct": reconstruct_s,
            "total_plan_compact_reconstruct": plan_s + compact_s + reconstruct_s,
        },
        "reconstruction_error": {
            "before_mean": statistics.fmean(errors["before"]),
            "after_mean": statistics.fmean(errors["after"]),
            "per_sublayer_before": errors["before"],
            "per_sublayer_after": errors["after"],
        },
        "compacted_only_dev_accuracy": compacted_only_accuracy,
    }
    return dense, compacted_only, result


def kd_finetune(args: argparse.Namespace, student: torch.nn.Module, teacher: torch.nn.Module,
                tokenizer: Any) -> dict:  # fmt: skip
    """(b): short distillation fine-tune of the pruned model (in place), no pruning config."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    from hfprune import DistillationConfig, PruningTrainer

    train = kd_train_dataset(tokenizer, args.data_dir, args.kd_steps * 32)
    with tempfile.TemporaryDirectory(prefix="hfprune-kd-") as output_dir:
        training = TrainingArguments(output_dir=output_dir, use_cpu=True, max_steps=args.kd_steps,
                                     per_device_train_batch_size=32, learning_rate=2e-5, report_to=[],
                                     save_strategy="no", disable_tqdm=True, seed=args.seed,
                                     logging_steps=max(1, args.kd_steps // 4))  # fmt: skip
        trainer = PruningTrainer(model=student, args=training, train_dataset=train,
                                 data_collator=DataCollatorWithPadding(tokenizer), teacher_model=teacher,
                                 distillation_config=DistillationConfig(temperature=2.0, alpha=0.9))  # fmt: skip
        start = time.perf_counter()
        output = trainer.train()
        wall_s = time.perf_counter() - start
    student.eval()
    return {
        "kd_steps": args.kd_steps,
        "train_rows": len(train),
        "train_loss": output.training_loss,
        "distillation": {"temperature": 2.0, "alpha": 0.9},
        "learning_rate": 2e-5,
        "wall_s": {"finetune": wall_s},
    }


def torch_pruning_baseline(model: torch.nn.Module, head_ratio: float, neuron_ratio: float) -> dict:
    """(c): Torch-Pruning magnitude pruning of whole heads and FFN neurons of a BERT classifier (in place)."""
    return torch_pruning_bert(model, model.bert, head_ratio, neuron_ratio,  # type: ignore[attr-defined]
                              extra_ignored=[model.classifier], output=lambda out: out.logits)  # fmt: skip


def torch_pruning_bert(
    model: torch.nn.Module,
    bert: torch.nn.Module,
    head_ratio: float,
    neuron_ratio: float,
    extra_ignored: list[torch.nn.Module],
    output: Any,
) -> dict:
    """Torch-Pruning magnitude pruning of whole heads and FFN neurons, hidden size kept (in place), of ``model``
    whose BERT encoder is ``bert`` (``model`` itself for an embedding model); ``output`` picks the tensor traced.

    Follows Torch-Pruning's examples/transformers/prune_hf_bert.py: q/k/v grouped by head with ``num_heads``,
    ``prune_num_heads=True, prune_head_dims=False``, then the BertSelfAttention attributes are fixed. The residual
    width is kept by ignoring the embeddings, pooler, ``extra_ignored`` (a classifier) and every layer whose output
    channels are the hidden size (attention.output.dense, output.dense), so the only group roots left are q/k/v
    (heads) and intermediate.dense (neurons).
    """
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    from hfprune.adapters.base import text_example_inputs

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # trace the plain matmul attention
    model.eval()
    num_heads = {}
    for module in model.modules():
        if isinstance(module, BertSelfAttention):
            for linear in (module.query, module.key, module.value):
                num_heads[linear] = module.num_attention_heads
    ignored = [bert.embeddings, *([bert.pooler] if bert.pooler is not None else []), *extra_ignored]
    for layer in bert.encoder.layer:
        ignored += [layer.attention.output.dense, layer.output.dense]
    example = text_example_inputs(model, 1, 16)
    start = time.perf_counter()
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False,  # uniform: the same ratio in every layer
        pruning_ratio=neuron_ratio,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=head_ratio,
        ignored_layers=ignored,
        output_transform=lambda out: output(out).sum(),
    )
    pruner.step()
    for module in model.modules():
        if isinstance(module, BertSelfAttention):
            module.num_attention_heads = pruner.num_heads[module.query]
            module.attention_head_size = module.query.out_features // module.num_attention_heads
            module.all_head_size = module.query.out_features
    wall_s = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    model.set_attn_implementation(previous)
    return {
        "torch_pruning_version": tp.__version__,
        "importance": "MagnitudeImportance(p=2, group_reduction='mean')",
        "head_pruning_ratio": head_ratio,
        "neuron_pruning_ratio": neuron_ratio,
        "global_pruning": False,
        "heads": [layer.attention.self.num_attention_heads for layer in bert.encoder.layer],
        "neurons": [layer.intermediate.dense.out_features for layer in bert.encoder.layer],
        "wall_s": {"prune": wall_s},
    }


# ------------------------------------------------------------------------------------------------------ main
def headline_card(args: argparse.Namespace, base: torch.nn.Module, model: torch.nn.Module, plan: Any,
                  variants: dict, latency: dict) -> Path:  # fmt: skip
    """model_cards/minilm-sst2-fisher-50.md: variant (a), what `hfprune prune --method fisher` gives."""
    from cards import write_card

    from hfprune import PruningConfig
    from hfprune.adapters.base import text_example_inputs
    from hfprune.hub import CardEvaluation
    from hfprune.reporting import device_description, report

    example = text_example_inputs(base, 32, SEQ_LEN)
    after, before = (report(m, example, measure_latency=False) for m in (model, base))
    for item, name in ((after, "retraining_free"), (before, "dense")):
        item.latency_ms = latency["batch32"]["median_ms"][name]
        item.latency_runs, item.device = args.rounds_b32, device_description()
    variant = variants["retraining_free"]
    evaluation = CardEvaluation(task_type="text-classification", dataset_type="nyu-mll/glue",
                                dataset_name="GLUE SST-2", dataset_config="sst2", dataset_split="validation",
                                metrics={"accuracy": variant["dev_accuracy"]},
                                base_metrics={"accuracy": variants["dense"]["dev_accuracy"]},
                                base_label="the dense fine-tuned model")  # fmt: skip
    notes = [f"Retraining-free (Kwon et al. 2022): Fisher mask search, mask rearrangement and least-squares "
             f"reconstruction on {args.num_calibration} SST-2 training sentences, "
             f"{variant['wall_s']['total_plan_compact_reconstruct']:.0f} s on 2 CPU cores, no training",
             "Latency: batch 32 x 128 tokens, medians of interleaved dense/pruned rounds, "
             + ("steady allocator" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "default glibc allocator")]
    return write_card("minilm-sst2-fisher-50", model, command="python " + " ".join(sys.argv),
                      variant="variant (a): Fisher search + rearrangement + least squares",
                      base_model=str(args.model),
                      pruning_config=PruningConfig.from_dict(variant["pruning_config"]), report=after,
                      base_report=before, plan=plan, evaluation=evaluation, method_notes=notes)  # fmt: skip


def machine() -> dict[str, Any]:
    return {
        "platform_machine": platform.machine(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "env": {
            k: os.environ[k]
            for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
            if k in os.environ
        },  # fmt: skip
    }


def markdown(results: dict) -> str:
    variants = results["variants"]
    latency = results["latency"]
    lines = [
        f"### Structured retraining-free pruning, MiniLM SST-2 ({results['dev_rows']} dev rows, "
        f"{results['machine']['torch_num_threads']} threads, MALLOC env: {results['machine']['env'] or 'unset'})",
        "",
        "| variant | dev acc | FLOPs ratio (1x128) | params (M) | b32 ms | b32 speedup | b32 speedup x FLOPs | "
        "b1 ms | b1 speedup | b1 speedup x FLOPs | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, data in variants.items():
        cells = [name, f"{data['dev_accuracy']:.4f}", f"{data['flops_ratio']:.3f}", f"{data['params'] / 1e6:.2f}"]
        for key in ("batch32", "batch1"):
            lat = latency.get(key)
            measured = lat is not None and name in lat["median_ms"]
            cells.append(f"{lat['median_ms'][name]:.1f}" if measured else "-")
            speedup = lat["paired_speedup_vs_dense"].get(name) if measured else None
            cells.append(f"{speedup:.2f}" if speedup else ("1.00" if measured and name == "dense" else "-"))
            product = data.get(f"{key}_speedup_x_flops_ratio")
            cells.append(f"{product:.2f} (goal {GOALS[key]})" if product is not None else "-")
        wall = {k: v for k, v in data.get("wall_s", {}).items() if k in WALL_KEYS}
        cells.append(" + ".join(f"{WALL_KEYS[k]} {v:.1f}" for k, v in wall.items()) if wall else "-")
        lines.append("| " + " | ".join(cells) + " |")
        if "compacted_only_dev_accuracy" in data:
            lines.append(
                f"| {name}, compacted only (no reconstruct_) | {data['compacted_only_dev_accuracy']:.4f} | "
                f"{data['flops_ratio']:.3f} | {data['params'] / 1e6:.2f} | | | | | | | |"
            )
    return "\n".join(lines) + "\n"


WALL_KEYS = {
    "plan_structured": "plan",
    "compact": "compact",
    "reconstruct": "reconstruct",
    "finetune": "KD",
    "prune": "prune",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "bench" / "minilm-sst2-dense" / "final",
                        help="Fine-tuned BertForSequenceClassification (SST-2) with its tokenizer.")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "structured_retraining_free.json"
    )
    parser.add_argument("--target-flops", type=float, default=0.5, help="Fraction of encoder FLOPs to keep.")
    parser.add_argument("--num-calibration", type=int, default=1024, help="SST-2 train rows for Fisher/reconstruct.")
    parser.add_argument("--eval-limit", type=int, default=None, help="Use only the first N dev rows (default all).")
    parser.add_argument("--kd-steps", type=int, default=200, help="Distillation steps of variant (b); 0 skips it.")
    parser.add_argument("--tp-head-ratio", type=float, default=0.5, help="Torch-Pruning head pruning ratio.")
    parser.add_argument("--tp-neuron-ratio", type=float, default=0.5, help="Torch-Pruning FFN neuron pruning ratio.")
    parser.add_argument("--rounds-b1", type=int, default=10)
    parser.add_argument("--rounds-b32", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--card", action=argparse.BooleanOptionalAction, default=True,
                        help="Render variant (a)'s card into model_cards/minilm-sst2-fisher-50.md (default on).")
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfprune.adapters.base import text_example_inputs

    torch.manual_seed(args.seed)
    run_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForSequenceClassification.from_pretrained(args.model)
    base.set_attn_implementation("sdpa")
    base.eval()
    dev = dev_batches(tokenizer, args.data_dir, args.eval_limit)
    dev_rows = sum(len(b["labels"]) for b in dev)
    notes: list[str] = []

    results: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "model": str(args.model),
        "data": f"GLUE SST-2 from {args.data_dir}: dev ({dev_rows} rows), train (first rows for calibration / KD)",
        "dev_rows": dev_rows,
        "seq_len": SEQ_LEN,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "flops_method": "torch.utils.flop_counter.FlopCounterMode, eager attention, batch 1 x 128 random tokens",
        "latency_method": ("CPU, sdpa attention, torch.inference_mode, time.perf_counter; random token ids; "
                           f"every model warmed up {args.warmup}x with batch 32 x 128 (and {args.warmup}x with the "
                           "measured shape), then interleaved rounds; speedup = median over rounds of dense/pruned"),
        "goals": {"batch32_speedup_x_flops_ratio": GOALS["batch32"], "batch1_speedup_x_flops_ratio": GOALS["batch1"]},
    }  # fmt: skip
    variants: dict[str, dict[str, Any]] = {}

    log("dense: evaluating")
    start = time.perf_counter()
    dense_flops = measured_flops(base)
    variants["dense"] = {
        "dev_accuracy": accuracy(base, dev),
        "flops": dense_flops,
        "flops_ratio": 1.0,
        "params": num_params(base),
        "shape": heads_and_neurons(base),
        "eval_s": time.perf_counter() - start,
    }
    log(f"dense: acc {variants['dense']['dev_accuracy']:.4f}")

    # (a) hfprune retraining-free, uneven layers (Kwon et al.'s global search) and uniform layers; (b) + KD
    rf_models, plans = {}, {}
    for suffix, uniform in (("", False), ("_uniform", True)):
        name = f"retraining_free{suffix}"
        log(f"(a{suffix}) hfprune retraining-free: plan_structured + compact_ + reconstruct_")
        rf_model = copy.deepcopy(base)
        dense_reference, compacted_only, info = hfprune_retraining_free(args, rf_model, tokenizer, dev, uniform)
        plans[name] = info.pop("plan")
        rf_model.set_attn_implementation("sdpa")
        flops = measured_flops(rf_model)
        variants[name] = {
            **info,
            "dev_accuracy": accuracy(rf_model, dev),
            "flops": flops,
            "flops_ratio": flops / dense_flops,
            "params": num_params(rf_model),
            "shape": heads_and_neurons(rf_model),
        }
        rf_models[name] = rf_model
        del compacted_only
        log(f"(a{suffix}): acc {variants[name]['dev_accuracy']:.4f} (compacted only "
            f"{info['compacted_only_dev_accuracy']:.4f}), FLOPs ratio {flops / dense_flops:.3f}, "
            f"wall {info['wall_s']}")  # fmt: skip
        if args.kd_steps > 0:
            log(f"(b{suffix}) distillation fine-tune, {args.kd_steps} steps")
            kd_model = copy.deepcopy(rf_model)
            kd_model.requires_grad_(True)
            info = kd_finetune(args, kd_model, dense_reference, tokenizer)
            kd_model.set_attn_implementation("sdpa")
            flops = measured_flops(kd_model)
            variants[f"{name}_kd"] = {
                **info,
                "dev_accuracy": accuracy(kd_model, dev),
                "flops": flops,
                "flops_ratio": flops / dense_flops,
                "params": num_params(kd_model),
                "wall_s": {**variants[name]["wall_s"], **info["wall_s"]},
            }
            log(f"(b{suffix}): acc {variants[f'{name}_kd']['dev_accuracy']:.4f}, finetune {info['wall_s']}")
            del kd_model
    del dense_reference

    # (c) Torch-Pruning magnitude baseline
    log("(c) Torch-Pruning magnitude baseline")
    head_ratio, neuron_ratio = args.tp_head_ratio, args.tp_neuron_ratio
    for attempt in range(3):
        tp_model = copy.deepcopy(base)
        info = torch_pruning_baseline(tp_model, head_ratio, neuron_ratio)
        flops = measured_flops(tp_model)
        ratio = flops / dense_flops
        if abs(ratio - args.target_flops) <= 0.05 or attempt == 2:
            break
        # Uniform ratios give ~the target; if not, rescale both by the FLOPs miss and retry.
        scale = (1 - args.target_flops) / max(1 - ratio, 1e-6)
        new_heads, new_neurons = min(head_ratio * scale, 0.95), min(neuron_ratio * scale, 0.95)
        notes.append(f"Torch-Pruning FLOPs ratio {ratio:.3f} with head/neuron ratios {head_ratio}/{neuron_ratio} "
                     f"was far from {args.target_flops}; retried with {new_heads:.3f}/{new_neurons:.3f}.")  # fmt: skip
        head_ratio, neuron_ratio = new_heads, new_neurons
    variants["torch_pruning"] = {
        **info,
        "dev_accuracy": accuracy(tp_model, dev),
        "flops": flops,
        "flops_ratio": ratio,
        "params": num_params(tp_model),
        "shape": heads_and_neurons(tp_model),
    }
    notes.append(f"Torch-Pruning FLOPs ratio (FlopCounterMode, eager, 1x128) = {ratio:.4f} with head ratio "
                 f"{head_ratio} and neuron ratio {neuron_ratio} (uniform per layer, hidden size kept).")  # fmt: skip
    log(f"(c): acc {variants['torch_pruning']['dev_accuracy']:.4f}, FLOPs ratio {ratio:.3f}")

    # Latency of the compacted models, sdpa attention
    models = {"dense": base, **rf_models, "torch_pruning": tp_model}
    for model in models.values():
        model.set_attn_implementation("sdpa")
        model.eval()
    full = text_example_inputs(base, 32, SEQ_LEN)
    latency = {}
    for key, batch, rounds in (("batch32", 32, args.rounds_b32), ("batch1", 1, args.rounds_b1)):
        log(f"latency {key}: {rounds} interleaved rounds")
        inputs = full if batch == 32 else text_example_inputs(base, batch, SEQ_LEN)
        latency[key] = {"batch_size": batch, "seq_len": SEQ_LEN,
                        **paired_latency(models, inputs, rounds, args.warmup, full)}  # fmt: skip
        for name in (*rf_models, "torch_pruning"):
            speedup = latency[key]["paired_speedup_vs_dense"][name]
            variants[name][f"{key}_latency_median_ms"] = latency[key]["median_ms"][name]
            variants[name][f"{key}_paired_speedup"] = speedup
            variants[name][f"{key}_speedup_x_flops_ratio"] = speedup * variants[name]["flops_ratio"]
            variants[name][f"{key}_meets_goal"] = speedup * variants[name]["flops_ratio"] >= GOALS[key]
        variants["dense"][f"{key}_latency_median_ms"] = latency[key]["median_ms"]["dense"]
    results["variants"] = variants
    results["latency"] = latency
    if args.card:
        card = headline_card(args, base, rf_models["retraining_free"], plans["retraining_free"], variants, latency)
        log(f"wrote {card}")
    results["notes"] = notes
    results["total_wall_s"] = time.perf_counter() - run_start

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.output}")
    print(markdown(results))
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
