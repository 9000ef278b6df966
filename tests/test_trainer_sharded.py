"""`PruningTrainer` under accelerate's FSDP2 and DeepSpeed ZeRO-2 on 2 CPU ranks (gloo), against an unsharded run on
the same global batches: identical masks on every rank and equal to the unsharded run's, learned scores and
gradient statistics gathered, a sharded KD teacher, resume in a new process group, and the (compacted) model saved
from rank 0. The worker is tests/sharded_trainer_worker.py; the one check of accelerate's it bypasses on CPU is in
tests/cpu_sharding.py."""

import json
from pathlib import Path

import pytest
import torch

from hfprune.hub import load_pruned

from . import distributed
from .distributed import assert_same_masks_and_state


WORKER = Path(__file__).resolve().parent / "sharded_trainer_worker.py"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


def run_worker(*args: str, ranks: int = 1, succeeds: bool = True) -> str:
    return distributed.run_worker(WORKER, *args, ranks=ranks, succeeds=succeeds)


@pytest.mark.parametrize(
    ("strategy", "importance", "structure", "state_dict_type", "model_files"),
    [
        # A torch.distributed.checkpoint folder written by both ranks, or the whole model written by rank 0.
        ("full_shard", "movement", "heads_and_neurons", "SHARDED_STATE_DICT", ["pytorch_model_fsdp_0/.metadata"]),
        ("shard_grad_op", "taylor", "unstructured", "FULL_STATE_DICT", ["model.safetensors", "optimizer.bin"]),
        ("full_shard", "movement", "nm", "SHARDED_STATE_DICT", ["pytorch_model_fsdp_0/.metadata"]),
    ],
    ids=["full-shard-learned-heads", "shard-grad-op-gradient-statistics", "full-shard-learned-2-4"],
)
def test_pruning_trainer_under_fsdp2_matches_unsharded_and_resumes(tmp_path, strategy, importance, structure,
                                                                   state_dict_type, model_files):  # fmt: skip
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_worker("single", str(single), importance, structure)
    options = (str(sharded), importance, structure, "--state-dict-type", state_dict_type)
    run_worker(strategy, *options, "--stop-at", "3", ranks=2)
    checkpoint = sharded / "run" / "checkpoint-3"
    assert all((checkpoint / name).is_file() for name in model_files), sorted(p.name for p in checkpoint.iterdir())
    assert (checkpoint / "hfprune_pruner.pt").is_file() and not (sharded / "masks_rank0.pt").exists()
    run_worker(strategy, *options, "--resume", ranks=2)  # a new process group

    for rank in (0, 1):
        student_sharded, units, teacher_sharded, dtype = (sharded / f"sharded_rank{rank}.txt").read_text().split()
        assert student_sharded == "True"  # accelerate really sharded it: the test is not of DDP
        # Each BertLayer is an FSDP unit as configured (a DistilBERT teacher must not change the student's wrapping),
        # and the teacher, of another family, is sharded too.
        assert int(units) >= 1 + 2 and teacher_sharded == "True"
        assert dtype == "torch.float32"  # no mixed precision asked

    assert_same_run(single, sharded, importance, structure)


def test_pruning_trainer_under_fsdp2_in_bf16(tmp_path):
    # FSDP2's mixed precision (bf16 compute, fp32 parameters): there is no unsharded run to equal (autocast rounds
    # elsewhere), so the ranks must agree with each other, reach the target, and save an fp32 compacted model.
    sharded = tmp_path / "sharded"
    run_worker("full_shard", str(sharded), "movement", "heads_and_neurons", "--bf16", ranks=2)
    rank0, rank1 = (torch.load(sharded / f"masks_rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    kept = torch.cat([mask.flatten() for mask in rank0.values()]).float().mean()
    assert 0.4 < float(kept) < 0.6
    assert (sharded / "sharded_rank0.txt").read_text().split()[-1] == "torch.bfloat16"  # as the layers computed
    model = load_pruned(sharded / "pruned")
    assert next(model.parameters()).dtype == torch.float32
    assert model.bert.encoder.layer[0].intermediate.dense.out_features < 128


def assert_same_run(single: Path, sharded: Path, importance: str, structure: str) -> None:
    """The sharded run's masks, pruner state, logged losses and saved model are the unsharded run's."""
    # Saving again to the same folder: rank 0 refuses it, and every rank stops with its error (none waits forever).
    for rank in (0, 1):
        assert (sharded / f"refused_rank{rank}.txt").read_text() == "OutputDirectoryError"
    # The logged loss terms are averages over both ranks: the unsharded run's numbers. They are logged rounded to 6
    # decimals, so two equal values either side of a rounding boundary differ by one unit there.
    logged, expected_logs = (json.loads((run / "log_history.json").read_text()) for run in (sharded, single))
    for ours, theirs in zip(logged, expected_logs, strict=True):
        for key in ("loss", "task_loss", "kd_loss"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=2e-6), (key, ours, theirs)

    assert_same_masks_and_state(single, sharded, learned=importance == "movement")

    # save_pruned_model on every rank: rank 0 wrote the unsharded run's model (compacted for heads/neurons).
    ours, theirs = load_pruned(sharded / "pruned").eval(), load_pruned(single / "pruned").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    if structure == "heads_and_neurons":
        assert ours.bert.encoder.layer[0].intermediate.dense.out_features < 128
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("importance", "structure"),
    [("movement", "heads_and_neurons"), ("taylor", "unstructured")],
    ids=["learned-heads", "gradient-statistics"],
)
def test_pruning_trainer_under_deepspeed_zero2_matches_unsharded_and_resumes(tmp_path, importance, structure):
    pytest.importorskip("deepspeed")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    # DeepSpeed clips all gradients in one norm, scores included; PruningTrainer clips scores apart. Unclipped,
    # the two runs must agree. Taylor's gradients are read from DeepSpeed's partitions just before its step.
    options = (importance, structure, "--max-grad-norm", "0")
    run_worker("single", str(single), *options)
    run_worker("zero2", str(sharded), *options, "--stop-at", "3", ranks=2)
    checkpoint = sharded / "run" / "checkpoint-3"
    # DeepSpeed's engine really ran: its checkpoint folder, beside the weights and the whole pruner state.
    assert (checkpoint / "global_step3").is_dir() and (checkpoint / "latest").is_file()
    assert (checkpoint / "hfprune_pruner.pt").is_file() and (checkpoint / "model.safetensors").is_file()
    run_worker("zero2", str(sharded), *options, "--resume", ranks=2)
    assert_same_run(single, sharded, importance, structure)


def test_gradient_criteria_under_deepspeed_fp16_are_refused(tmp_path):
    # DeepSpeed's partitions hold loss-scaled fp16 gradients, and overflow steps would put inf into the statistics.
    pytest.importorskip("deepspeed")
    out = run_worker("zero2", str(tmp_path), "taylor", "unstructured", "--deepspeed-fp16", ranks=2, succeeds=False)
    assert "does not score with 'taylor' under DeepSpeed fp16" in out and "Train in bf16 or fp32" in out
