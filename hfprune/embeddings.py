"""Sentence-embedding models (sentence-transformers folders): pruning without labels, evaluation, saving.

A sentence-transformers model is a transformers encoder followed by pooling (and often normalization) modules.
hfprune prunes the encoder (``model[0].auto_model``) like any other, with two label-free pieces:

- `EmbeddingObjective`, the calibration loss for gradient criteria (Fisher, Taylor). Self-distillation, the
  mean squared error between the pruned model's embeddings and the dense model's, is zero with a zero gradient at
  the dense model, so its gradients carry no importance. Its curvature does: the Gauss-Newton (Fisher) matrix of
  that loss is ``J^T J`` (``J``: the Jacobian of the embedding), and with a random Gaussian vector ``r`` per sentence
  ``E[(r^T J)^2] = diag(J^T J)``. The objective is therefore ``r . embedding``, and squared per-example gradients of
  it are unbiased estimates of the self-distillation Fisher that Kwon et al.'s mask search needs.
- Least-squares reconstruction (`hfprune.retraining_free.reconstruct_`) matches the dense model's residual streams
  and needs no labels at all.

Evaluation: `sts_spearman` (STS-B style: Spearman correlation, x100, of cosine similarities with gold scores,
zero-shot) and `embedding_agreement` (mean cosine between dense and pruned embeddings of the same sentences).
`save_sentence_transformer` writes a folder that ``SentenceTransformer(folder, trust_remote_code=True)`` loads
(pooling and normalization kept; the shrunk encoder comes with hfprune's remote code).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError, MissingDataError


#: hfprune's own calibration text: sentences written for the project (Apache-2.0, like the code), so that the main
#: job runs with nothing but the installed package.
DEFAULT_SENTENCES = Path(__file__).parent / "corpus" / "sentences.txt"


def is_sentence_transformer(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sentence-transformers folder or Hub repository (it has ``modules.json``); for a Hub
    id only that file is fetched (or read from the cache when offline)."""
    if (Path(path) / "modules.json").is_file():
        return True
    if Path(path).exists() or str(path).count("/") != 1:
        return False
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(str(path), "modules.json")
    except Exception:  # noqa: BLE001 - no such repo or file, or offline without a cached copy: not one we can load
        return False
    return True


def load_sentence_transformer(path: str | os.PathLike) -> Any:
    """A ``SentenceTransformer`` on the CPU, in eval mode. Folders written by hfprune carry their own modeling
    code (a shrunk encoder), which is trusted only when ``modeling_hfprune.py`` is there."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ConfigError(
            f"{path} is a sentence-transformers model; install sentence-transformers (`pip install "
            "'hfprune[embeddings]'`) to prune it as one."
        ) from err
    trust = (Path(path) / "modeling_hfprune.py").is_file()  # a Hub id is never trusted with remote code
    return SentenceTransformer(str(path), device="cpu", trust_remote_code=trust).eval()


def encoder_of(model: Any) -> nn.Module:
    """The transformers model inside a ``SentenceTransformer`` (its first module's ``auto_model``)."""
    encoder = getattr(model[0], "auto_model", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(
            f"The first module of this SentenceTransformer is a {type(model[0]).__name__}, not a transformers "
            "encoder; hfprune prunes models whose first module is sentence_transformers' Transformer."
        )
    return encoder


def read_sentences(path: str | os.PathLike | None = None) -> list[str]:
    """Sentences of a text file, one per line (blank lines skipped); hfprune's own sentences by default."""
    file = Path(path) if path is not None else DEFAULT_SENTENCES
    if not file.is_file():
        raise MissingDataError(f"Calibration text {file} does not exist (or is a folder); pass a text file with one "
                               "sentence per line.")  # fmt: skip
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise MissingDataError(f"Calibration text {file} is not UTF-8 text ({err}). Save it as UTF-8.") from err
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise MissingDataError(f"Calibration text {file} holds no sentences; it needs one sentence per line.")
    return sentences


def sentence_batches(
    model: Any, sentences: Sequence[str], batch_size: int = 32, max_seq_length: int = 128
) -> list[dict[str, Tensor]]:
    """``sentences`` tokenized as the model tokenizes them, in padded batches of encoder inputs (no labels)."""
    length = min(max_seq_length, int(model.max_seq_length or max_seq_length))
    batches = []
    for start in range(0, len(sentences), batch_size):
        encoded = model.tokenizer(list(sentences[start : start + batch_size]), padding=True, truncation=True,
                                  max_length=length, return_tensors="pt")  # fmt: skip
        batches.append({key: value for key, value in encoded.items() if isinstance(value, Tensor)})
    return batches


def sentence_embedding(model: Any, encoder: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Embeddings of a tokenized ``batch``: ``encoder`` (the model's own, or a copy being pruned) followed by the
    model's pooling and normalization modules, differentiable (``model.encode`` is not)."""
    features: dict[str, Any] = dict(batch)
    features["token_embeddings"] = encoder(**batch).last_hidden_state
    for module in list(model.children())[1:]:
        features = module(features)
    return features["sentence_embedding"]


class EmbeddingObjective:
    """Label-free calibration loss of an embedding model: ``mean_i r_i . embedding_i`` with a fresh Gaussian
    ``r_i`` per sentence (see the module docstring for why this estimates the self-distillation Fisher).

    Called as ``objective(encoder, batch)`` by hfprune's calibration loop (the ``loss_fn`` of `plan_structured`,
    `prune_` and `hfprune.structured.score_units` for dict batches): the encoder runs on the batch and the model's
    own pooling and normalization modules turn its output into embeddings.

    Args:
        model (`SentenceTransformer`): The model whose encoder is pruned.
        seed (`int`, defaults to 0): Seeds the random directions, so scores are reproducible.
    """

    def __init__(self, model: Any, seed: int = 0) -> None:
        self.model = model
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, encoder: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        embedding = sentence_embedding(self.model, encoder, batch)
        direction = torch.randn(embedding.shape, generator=self.generator).to(embedding)
        return (embedding * direction).sum(-1).mean()


@torch.inference_mode()
def encode(model: Any, sentences: Sequence[str], batch_size: int = 64) -> Tensor:
    """Embeddings of ``sentences`` (float32, as the model's own modules make them)."""
    return model.encode(list(sentences), batch_size=batch_size, convert_to_tensor=True,
                        show_progress_bar=False).float().cpu()  # fmt: skip


def agreement(dense: Tensor, pruned: Tensor) -> float:
    """Mean cosine similarity between dense and pruned embeddings of the same sentences (1.0: the same
    directions; retrieval with cosine similarity ranks by direction only)."""
    return float(nn.functional.cosine_similarity(dense, pruned).mean())


def embedding_agreement(dense: Any, pruned: Any, sentences: Sequence[str]) -> float:
    """`agreement` of two models on ``sentences``."""
    return agreement(encode(dense, sentences), encode(pruned, sentences))


def encode_pairs(model: Any, pairs: Sequence[tuple[str, str]]) -> Tensor:
    """Embeddings of both sentences of every pair, ``[2, pairs, dim]``, in one pass."""
    embeddings = encode(model, [a for a, _ in pairs] + [b for _, b in pairs])
    return embeddings.reshape(2, len(pairs), -1)


def spearman_of(pair_embeddings: Tensor, scores: Sequence[float]) -> float:
    """Spearman correlation x 100 between gold similarity ``scores`` and the cosine similarity of each pair's
    embeddings (`encode_pairs`): zero-shot STS, as sentence-transformers reports it."""
    from scipy.stats import spearmanr

    cosine = nn.functional.cosine_similarity(pair_embeddings[0], pair_embeddings[1]).numpy()
    return float(spearmanr(cosine, list(scores)).statistic * 100)


def sts_spearman(model: Any, pairs: Sequence[tuple[str, str]], scores: Sequence[float]) -> float:
    """`spearman_of` the model's embeddings of ``pairs``."""
    return spearman_of(encode_pairs(model, pairs), scores)


def read_sts(path: str | os.PathLike) -> tuple[list[tuple[str, str]], list[float]]:
    """Sentence pairs and gold scores: a GLUE data folder (``STS-B/dev.tsv``), an ``STS-B`` folder (``dev.tsv``),
    or a TSV/CSV file with ``sentence1``, ``sentence2`` and ``score`` (or ``label``) columns."""
    file = Path(path)
    for candidate in (file / "STS-B" / "dev.tsv", file / "dev.tsv"):
        if file.is_dir() and candidate.is_file():
            file = candidate
            break
    if not file.is_file():
        raise MissingDataError(
            f"--eval-data {path}: no STS file there. Pass a GLUE data folder (with STS-B/dev.tsv), the STS-B folder "
            "or a TSV/CSV file with sentence1, sentence2 and score columns."
        )
    delimiter = "\t" if file.suffix.lower() in (".tsv", ".txt") else ","
    with file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t"
                                   else csv.QUOTE_MINIMAL))  # fmt: skip
    if not rows:
        raise MissingDataError(f"{file} holds no rows; it needs a header and sentence1, sentence2, score columns.")
    score_column = "score" if "score" in rows[0] else "label"
    missing = [column for column in ("sentence1", "sentence2", score_column) if column not in rows[0]]
    if missing:
        raise MissingDataError(f"{file} has no column {missing}; its columns are {sorted(rows[0])}.")
    pairs, scores = [], []
    for number, row in enumerate(rows, start=2):
        try:
            scores.append(float(row[score_column]))
        except (TypeError, ValueError):
            raise MissingDataError(f"{file}:{number}: {score_column} {row[score_column]!r} is not a number.") from None
        pairs.append((row["sentence1"], row["sentence2"]))
    return pairs, scores


def save_sentence_transformer(
    model: Any, directory: str | os.PathLike, *, plan: Any = None, overwrite: bool = False, **card: Any
) -> Path:
    """Write a pruned ``SentenceTransformer`` atomically: its modules (pooling, normalization, tokenizer) as
    sentence-transformers writes them, the pruned encoder, ``pruning_config.json``, ``report.json`` and a card.

    With a ``plan`` (a compacted encoder) the folder also holds ``pruning_plan.json`` and hfprune's remote code, so
    it loads with ``SentenceTransformer(folder, trust_remote_code=True)``, with plain transformers
    (``AutoModel.from_pretrained(folder, trust_remote_code=True)``) and with `hfprune.load_pruned` (the encoder).
    ``card`` holds `hfprune.hub.write_model_card`'s keywords (``pruning_config``, ``report``, ``base_report``,
    ``evaluation``, ``method_notes``, ``base_model``).
    """
    from .export import write_remote_code
    from .hub import atomic_directory, write_model_card
    from .targets import require_real_weights

    encoder = encoder_of(model)
    source = str(getattr(encoder.config, "_name_or_path", "") or "")
    base_model = card.pop("base_model", None) or source or "unknown"
    pruning_config, report = card.pop("pruning_config", None), card.get("report")
    require_real_weights(encoder, "save_sentence_transformer")
    if any(name.endswith(".original") for name, _ in encoder.named_parameters()):
        raise ConfigError("The encoder still has pruning masks attached; make them permanent first "
                          "(Pruner.make_permanent_ or hfprune.compact_).")  # fmt: skip
    with atomic_directory(directory, overwrite=overwrite, inputs=(source, base_model)) as staging:
        model.save(str(staging))
        if plan is not None:
            write_remote_code(encoder, plan, staging)
        if pruning_config is not None:
            pruning_config.save_pretrained(staging)
        if report is not None:
            report.save(staging / "report.json")
        write_model_card(staging, encoder, base_model, pruning_config, plan=plan, library="sentence-transformers",
                         model_name=Path(directory).name, **card)  # fmt: skip
    return Path(directory)
