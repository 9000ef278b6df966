"""One-shot structured pruning of a sentence-embedding model without labels (`prune_embedding_model`).

Fisher scores from the label-free `hfprune.embeddings.EmbeddingObjective`, Kwon et al.'s mask search under a FLOPs
or parameter target, compaction, least-squares reconstruction against the dense model's residual streams, then
evaluation (agreement with the dense model; STS Spearman when pairs are given), measured latency at two batch
sizes, and a folder that sentence-transformers loads.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..compaction import compact_
from ..config import PruningConfig
from ..embeddings import (
    EmbeddingObjective,
    agreement,
    embedding_agreement,
    encode_pairs,
    encoder_of,
    load_sentence_transformer,
    read_sentences,
    save_sentence_transformer,
    sentence_batches,
    sentence_embedding,
    spearman_of,
)
from ..pruner import prune_
from ..reporting import PruningReport, device_description, paired_latency_ms, report
from ..retraining_free import reconstruct_
from ..structured import encoder_dims, plan_structured
from ..structures import EncoderUnits


def default_embedding_config(encoder: nn.Module) -> PruningConfig:
    """What `hfprune prune` does to an embedding model when no pruning options are given: half the encoder FLOPs,
    heads and FFN neurons competing for the budget (Kwon et al. 2022), FFN widths in multiples of 64 where the FFN
    is a multiple of 64 wide (on all-MiniLM-L6-v2: 1.85x instead of 1.75x faster at batch 32, same STS-B; see
    benchmarks/results/embedding_pruning.json)."""
    width = encoder_dims(encoder).intermediate_size
    round_to = 64 if width % 64 == 0 and width >= 256 else 1
    return PruningConfig(importance="fisher", structure={"type": "heads_and_neurons", "round_to": round_to},
                         target_flops=0.5)  # fmt: skip
#: Latency shapes reported: a serving batch and a single query, 128 tokens each.
LATENCY_SHAPES = ((32, 128), (1, 128))


@dataclass
class EmbeddingPruningResult:
    """What `prune_embedding_model` measured; ``reports`` are after/before pairs at each latency shape."""

    output: Path
    seconds: float
    reports: dict[str, tuple[PruningReport, PruningReport]]
    agreement: float
    sts: tuple[float, float] | None = None
    plan: Any = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A markdown before/after table: size, FLOPs and measured latency per shape, then quality."""
        first = next(iter(self.reports.values()))
        after, before = first
        rows = [("parameters (total)", f"{before.total_params:,}", f"{after.total_params:,}",
                 f"{after.total_params / before.total_params:.3f}x")]  # fmt: skip
        for shape, (after, before) in self.reports.items():
            if before.flops and after.flops:
                rows.append((f"GFLOPs at {shape}", f"{before.flops / 1e9:.3f}", f"{after.flops / 1e9:.3f}",
                             f"{after.flops / before.flops:.3f}x"))  # fmt: skip
            if before.latency_ms and after.latency_ms:
                rows.append((f"latency ms at {shape} (median)", f"{before.latency_ms:.2f}", f"{after.latency_ms:.2f}",
                             f"{before.latency_ms / after.latency_ms:.2f}x faster"))  # fmt: skip
        rows.append(("embedding agreement (mean cosine)", "1.0000", f"{self.agreement:.4f}", ""))
        if self.sts is not None:
            rows.append(("STS Spearman x100", f"{self.sts[0]:.2f}", f"{self.sts[1]:.2f}",
                         f"{self.sts[1] - self.sts[0]:+.2f}"))  # fmt: skip
        lines = ["| metric | before | after | after/before |", "|---|---:|---:|---:|"]
        return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows]) + "\n"


def prune_embedding_model(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    config: PruningConfig | None = None,
    *,
    calibration_text: str | os.PathLike | None = None,
    sentences: Sequence[str] | None = None,
    num_sentences: int = 512,
    max_seq_length: int = 128,
    reconstruct: bool = True,
    eval_pairs: tuple[Sequence[tuple[str, str]], Sequence[float]] | None = None,
    agreement_sentences: Sequence[str] | None = None,
    measure_latency: bool = True,
    latency_rounds: int = 10,
    latency_shapes: Sequence[tuple[int, int]] = LATENCY_SHAPES,
    distill_steps: int = 0,
    distill_sentences: Sequence[str] | None = None,
    distill_learning_rate: float = 3e-4,
    base_model: str | None = None,
    overwrite: bool = False,
) -> EmbeddingPruningResult:
    """Prune the encoder of the sentence-transformers model at ``model_path`` without labels and save it.

    Args:
        config (`PruningConfig`, *optional*): Defaults to `default_embedding_config` (Fisher heads and neurons at
            half the encoder FLOPs). Gradient criteria calibrate on the label-free objective; data-free ones
            (``magnitude``) need no text.
        calibration_text: A text file, one sentence per line (default: hfprune's own sentences).
        sentences: The calibration sentences themselves (e.g. `hfprune.data.TextData.texts`), instead of a file.
        num_sentences (`int`): How many sentences calibrate (the first ones); distillation reads all of them.
        reconstruct (`bool`): Least-squares reconstruction after compaction (Fisher only).
        eval_pairs: ``(pairs, gold scores)`` for STS Spearman before and after (`hfprune.embeddings.read_sts`).
        agreement_sentences: Sentences on which dense and pruned embeddings are compared (default: the STS
            sentences when given, else the calibration sentences).
        latency_shapes: ``(batch, sequence)`` inputs at which FLOPs and latency are reported (the first goes on
            the card); default batch 32 and batch 1 at 128 tokens.
        distill_steps (`int`): Recovery after pruning: steps of cosine distillation from the dense model
            (`distill_embeddings_`, batch 32) on ``distill_sentences`` (default: every calibration sentence).
    """
    model = load_sentence_transformer(model_path)
    encoder = encoder_of(model)
    config = config or default_embedding_config(encoder)
    dense = copy.deepcopy(model)
    text = list(sentences if sentences is not None else read_sentences(calibration_text))
    sentences = text[:num_sentences]
    batches = sentence_batches(model, sentences, max_seq_length=max_seq_length)
    objective = EmbeddingObjective(model, seed=config.seed)
    start = time.perf_counter()
    plan = None
    if isinstance(config.structure, EncoderUnits):
        plan = plan_structured(encoder, config, batches, loss_fn=objective)
        compact_(encoder, plan)
        if reconstruct and config.importance.additive_unit_scores:  # type: ignore[union-attr]
            reconstruct_(encoder, encoder_of(dense), batches)
    else:
        prune_(encoder, config, batches if config.importance.needs_data else None, loss_fn=objective)  # type: ignore
    seconds = time.perf_counter() - start
    if distill_steps > 0:
        import tempfile

        texts = distill_sentences if distill_sentences is not None else text
        with tempfile.TemporaryDirectory() as checkpoints:
            distill_embeddings_(model, dense, texts, checkpoints, max_steps=distill_steps,
                                learning_rate=distill_learning_rate, max_seq_length=max_seq_length)  # fmt: skip

    sts = None
    if eval_pairs is not None:
        # Each model embeds the STS sentences once; agreement defaults to those (held-out) sentences.
        dense_pairs, pruned_pairs = encode_pairs(dense, eval_pairs[0]), encode_pairs(model, eval_pairs[0])
        sts = (spearman_of(dense_pairs, eval_pairs[1]), spearman_of(pruned_pairs, eval_pairs[1]))
    if agreement_sentences is not None or eval_pairs is None:
        agreement_value = embedding_agreement(dense, model, agreement_sentences or sentences)
    else:
        agreement_value = agreement(dense_pairs.flatten(0, 1), pruned_pairs.flatten(0, 1))
    reports = {}
    for batch_size, seq_len in latency_shapes:
        example = _example(encoder, batch_size, seq_len)
        after, before = (report(m, example, measure_latency=False) for m in (encoder, encoder_of(dense)))
        if measure_latency:
            before.latency_ms, after.latency_ms = paired_latency_ms([encoder_of(dense), encoder], example,
                                                                    rounds=latency_rounds)  # fmt: skip
            for item in (before, after):
                item.latency_runs, item.device = latency_rounds, device_description()
        reports[f"{batch_size}x{seq_len}"] = (after, before)
    reconstructed = plan is not None and reconstruct and config.importance.additive_unit_scores  # type: ignore
    notes = [f"Pruned in one shot in {seconds:.1f} s without labels: {len(sentences)} calibration sentences, "
             f"{config.importance.registered_name} scores of a random-projection self-distillation objective"  # type: ignore
             + (", least-squares reconstruction" if reconstructed else "")]  # fmt: skip
    if distill_steps > 0:
        notes.append(f"Then {distill_steps} steps of cosine distillation from the dense model (batch 32, learning "
                     f"rate {distill_learning_rate}) on {len(texts)} unlabeled sentences")
    notes.append(f"Mean cosine between dense and pruned embeddings: {agreement_value:.4f}")
    evaluation = None
    if sts is not None:
        from ..hub import CardEvaluation

        evaluation = CardEvaluation(task_type="sentence-similarity", dataset_type="mteb/stsbenchmark-sts",
                                    dataset_name="STS-B dev", metrics={"spearman_cosine": sts[1] / 100},
                                    base_metrics={"spearman_cosine": sts[0] / 100})  # fmt: skip
    after, before = next(iter(reports.values()))
    saved = save_sentence_transformer(model, output, plan=plan, overwrite=overwrite, pruning_config=config,
                                      report=after, base_report=before, evaluation=evaluation, method_notes=notes,
                                      base_model=base_model)  # fmt: skip
    return EmbeddingPruningResult(output=saved, seconds=seconds, reports=reports, agreement=agreement_value, sts=sts,
                                  plan=plan, notes=notes)  # fmt: skip


def _example(encoder: Any, batch_size: int, seq_len: int) -> Any:
    from ..adapters import get_adapter

    return get_adapter(encoder).example_inputs(encoder, batch_size, seq_len)  # type: ignore[union-attr]


class EmbeddingDistillation(nn.Module):
    """A pruned embedding model and its frozen dense teacher as one module whose loss is ``1 - cos`` between their
    embeddings of the same (unlabeled) sentences, so `hfprune.PruningTrainer` (or any ``transformers.Trainer``)
    trains the student's encoder on text alone."""

    def __init__(self, student: Any, teacher: Any) -> None:
        super().__init__()
        self.student_encoder = encoder_of(student)
        self.teacher_encoder = encoder_of(teacher).requires_grad_(False).eval()
        self._models = (student, teacher)  # their pooling and normalization modules

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                **_: Any) -> dict[str, Tensor]:  # fmt: skip
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        student = sentence_embedding(self._models[0], self.student_encoder, batch)
        with torch.no_grad():
            teacher = sentence_embedding(self._models[1], self.teacher_encoder.eval(), batch)
        loss = (1 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()
        return {"loss": loss, "logits": student}


def distill_embeddings_(
    student: Any,
    teacher: Any,
    sentences: Sequence[str],
    output_dir: str | os.PathLike,
    *,
    max_steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    max_seq_length: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Recover a pruned embedding model in place: ``max_steps`` of cosine distillation from ``teacher`` on unlabeled
    ``sentences`` with `hfprune.PruningTrainer` (checkpoints in ``output_dir``). Returns the training metrics."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, TrainingArguments

    from ..trainer import PruningTrainer

    length = min(max_seq_length, int(student.max_seq_length or max_seq_length))
    encoded = student.tokenizer(list(sentences), truncation=True, max_length=length)
    dataset = Dataset.from_dict(dict(encoded))
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=batch_size,
                             learning_rate=learning_rate, warmup_steps=0.1, weight_decay=0.01, save_strategy="no",
                             logging_steps=max(1, max_steps // 10), report_to=[], use_cpu=True, seed=seed,
                             disable_tqdm=True)  # fmt: skip
    model = EmbeddingDistillation(student, teacher)
    trainer = PruningTrainer(model=model, args=args, train_dataset=dataset,
                             data_collator=DataCollatorWithPadding(student.tokenizer))  # fmt: skip
    result = trainer.train()
    student.eval()
    return dict(result.metrics)
