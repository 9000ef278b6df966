"""Sentence-embedding models pruned without labels: objective, evaluation, CLI, and folders that load back."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hfprune import PruningConfig
from hfprune.cli import main
from hfprune.embeddings import (
    DEFAULT_SENTENCES,
    EmbeddingObjective,
    encoder_of,
    load_sentence_transformer,
    read_sentences,
    read_sts,
    sentence_batches,
    sentence_embedding,
    sts_spearman,
)
from hfprune.errors import MissingDataError
from hfprune.structured import plan_structured

from .conftest import SHARED_DATA


sentence_transformers = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory, minilm_path):
    """A 2-layer BERT with the real MiniLM tokenizer, mean pooling and normalization, saved as sentence-transformers
    saves models (random weights: these tests check mechanics, not quality)."""
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("tiny-embedder-base")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    transformer = Transformer(str(base), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    folder = tmp_path_factory.mktemp("tiny-embedder")
    model.save(str(folder))
    return folder


def _sts_file(tmp_path):
    rows = [("A man is playing a guitar.", "A man plays the guitar.", 4.8),
            ("A woman is slicing an onion.", "A dog runs in the park.", 0.2),
            ("Two kids are playing football.", "Children play soccer outside.", 3.9),
            ("The market fell sharply today.", "Stocks dropped steeply on Monday.", 3.5),
            ("A cat sleeps on the sofa.", "The airplane is landing.", 0.0)]  # fmt: skip
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    return path


def test_the_shipped_sentences_are_there_and_varied():
    sentences = read_sentences()
    assert len(sentences) == 600 and len(set(sentences)) == 600
    assert DEFAULT_SENTENCES.is_file()


def test_the_objective_estimates_the_self_distillation_fisher(tiny_embedder):
    # E_r[(r . J g)^2] = |J g|^2: averaged over many random directions, the squared gradient of the objective with
    # respect to an input equals the squared norm of the embedding's Jacobian along it (Gauss-Newton of the MSE).
    model = load_sentence_transformer(tiny_embedder)
    encoder = encoder_of(model)
    batch = sentence_batches(model, ["A small test sentence."])[0]
    objective = EmbeddingObjective(model, seed=0)
    weight = encoder.encoder.layer[0].output.dense.weight
    squared = torch.zeros_like(weight)
    draws = 400
    for _ in range(draws):
        encoder.zero_grad()
        objective(encoder, batch).backward()
        squared += weight.grad.pow(2)
    estimate = squared / draws
    jacobian = torch.autograd.functional.jacobian(
        lambda w: torch.func.functional_call(encoder, {"encoder.layer.0.output.dense.weight": w}, kwargs=batch)
        .last_hidden_state.mean(1), weight.detach()
    )  # fmt: skip
    embedding = sentence_embedding(model, encoder, batch).detach()
    hidden = encoder(**batch).last_hidden_state.mean(1).detach()
    # Through normalization: d(h/|h|) = (I - e e^T) dh / |h|.
    projector = (torch.eye(32) - embedding[0, :, None] * embedding[0, None, :]) / hidden.norm()
    exact = torch.einsum("ij,jkl->ikl", projector, jacobian[0]).pow(2).sum(0)
    assert torch.corrcoef(torch.stack([estimate.flatten(), exact.flatten()]))[0, 1] > 0.95


def test_fisher_plans_an_embedding_model_without_labels(tiny_embedder):
    model = load_sentence_transformer(tiny_embedder)
    encoder = encoder_of(model)
    batches = sentence_batches(model, read_sentences()[:32], batch_size=8)
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=0.6)
    plan = plan_structured(encoder, config, batches, loss_fn=EmbeddingObjective(model))
    assert 0.5 < plan.extra["encoder_flops_fraction"] <= 0.6


def test_cli_prunes_an_embedding_model_that_sentence_transformers_loads(tiny_embedder, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_embedder), "--output", str(out), "--num-calibration", "48",
                 "--eval-data", str(_sts_file(tmp_path)), "--latency-runs", "2", "--batch-size", "2"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| GFLOPs at 32x128 |" in printed and "latency ms at 1x128 (median)" in printed
    assert "latency ms at 2x128 (median)" in printed  # --batch-size is measured too
    assert "embedding agreement (mean cosine)" in printed and "STS Spearman x100" in printed
    config = json.loads((out / "pruning_config.json").read_text())
    assert config["target_flops"] == 0.5 and config["structure"]["type"] == "heads_and_neurons"
    card = (out / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "trust_remote_code=True" in card
    assert "spearman_cosine" in card

    sentences = ["A man plays the guitar.", "Stocks dropped steeply."]
    expected = load_sentence_transformer(out).encode(sentences, convert_to_tensor=True)
    torch.save(expected, tmp_path / "expected.pt")
    # A fresh interpreter in which importing hfprune fails: sentence-transformers and the folder's own code only.
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hfprune"] = None
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer({str(out)!r}, trust_remote_code=True, device="cpu")
        out = model.encode({sentences!r}, convert_to_tensor=True)
        torch.testing.assert_close(out, torch.load({str(tmp_path / "expected.pt")!r}))
        assert abs(float(out.norm(dim=-1).mean()) - 1.0) < 1e-5  # normalization kept
        print("ok", type(model[0].auto_model).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok HfprunedBertModel" in result.stdout

    from hfprune import load_pruned

    encoder = load_pruned(out)
    assert sum(p.numel() for p in encoder.parameters()) < sum(
        p.numel() for p in encoder_of(load_sentence_transformer(tiny_embedder)).parameters()
    )


def test_embedding_pruning_refuses_what_it_cannot_use(tiny_embedder, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [
        (["--calibration-text", str(empty)], "holds no sentences"),
        (["--calibration-text", str(tmp_path / "missing.txt")], "does not exist"),
        (["--eval-data", str(tmp_path)], "no STS file there"),
        (["--eval"], "pass --eval-data (STS pairs)"),
        (["--method", "magnitude", "--calibration-text", str(empty)], "belongs to heads/neurons pruning"),
    ]
    for flags, message in cases:
        assert main(["prune", "--model", str(tiny_embedder), "--output", str(tmp_path / "o"), *flags]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def test_an_embedding_model_calibrates_on_your_own_file(tiny_embedder, tmp_path, capsys):
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"body": f"Note number {i} about topic {i % 7}."}) + "\n"
                                                  for i in range(40)))  # fmt: skip
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_embedder), "--output", str(out), "--dataset",
                 str(tmp_path / "notes.jsonl"), "--text-columns", "body", "--num-calibration", "24", "--no-latency",
                 "--target-flops", "0.7", "--structure", "heads_and_neurons", "--method", "fisher"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "24 calibration sentences" in (out / "README.md").read_text()
    assert json.loads((out / "pruning_config.json").read_text())["target_flops"] == 0.7


def test_recovery_distillation_runs_after_pruning(tiny_embedder, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_embedder), "--output", str(out), "--num-calibration", "32",
                 "--distill-steps", "3", "--no-latency"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "Then 3 steps of cosine distillation from the dense model" in (out / "README.md").read_text()
    assert main(["prune", "--model", str(tiny_embedder), "--output", str(tmp_path / "o"), "--method", "magnitude",
                 "--distill-steps", "3"]) == 2  # fmt: skip
    assert "--distill-steps belongs to heads/neurons pruning" in capsys.readouterr().err


def test_the_default_keeps_hardware_friendly_ffn_widths_where_the_ffn_allows(minilm_path, tiny_embedder):
    from hfprune.workflows.embedding import default_embedding_config

    minilm = default_embedding_config(encoder_of(load_sentence_transformer(minilm_path)))
    assert minilm.structure.round_to == 64 and minilm.target_flops == 0.5
    assert default_embedding_config(encoder_of(load_sentence_transformer(tiny_embedder))).structure.round_to == 1


def test_sts_files_are_read_with_clear_errors(tmp_path):
    pairs, scores = read_sts(_sts_file(tmp_path))
    assert len(pairs) == 5 and scores[0] == 4.8
    bad = tmp_path / "bad.csv"
    bad.write_text("text_a,text_b,score\nx,y,1\n")
    with pytest.raises(MissingDataError, match=r"has no column \['sentence1', 'sentence2'\]"):
        read_sts(bad)
    bad.write_text("sentence1,sentence2,score\nx,y,high\n")
    with pytest.raises(MissingDataError, match=r"bad.csv:2: score 'high' is not a number"):
        read_sts(bad)


@pytest.mark.skipif(not (SHARED_DATA / "glue" / "STS-B").is_dir(), reason="needs ../shared/data/glue/STS-B")
def test_dense_minilm_scores_its_published_sts_b_figure(minilm_path):
    # sentence-transformers reports 86.72 for all-MiniLM-L6-v2 on STS-B dev (cosine Spearman).
    pairs, scores = read_sts(SHARED_DATA / "glue")
    assert len(pairs) == 1500
    assert sts_spearman(load_sentence_transformer(minilm_path), pairs, scores) == pytest.approx(86.72, abs=0.01)


def test_a_cached_hub_id_of_an_embedding_model_is_pruned_as_one(tiny_embedder, tmp_path):
    # A Hub cache laid out as huggingface_hub writes it, read with the Hub switched off: the CLI must recognise the
    # id as a sentence-transformers repository (from its modules.json) and load it by id.
    revision = "0" * 40
    snapshot = tmp_path / "hub" / "models--someone--tiny-embedder" / "snapshots" / revision
    shutil.copytree(tiny_embedder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "hfprune.cli", "prune", "--model", "someone/tiny-embedder", "--output",
               str(tmp_path / "out"), "--num-calibration", "16", "--no-latency"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedding agreement (mean cosine)" in result.stdout
    assert (tmp_path / "out" / "modules.json").is_file()
