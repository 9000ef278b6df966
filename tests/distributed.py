"""Running the sharded workers (tests/sharded_pruning_worker.py, tests/sharded_trainer_worker.py) and comparing what
a sharded run wrote with an unsharded run's."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from .conftest import free_port


def run_worker(worker: Path, *args: str, ranks: int = 1, succeeds: bool = True) -> str:
    """Run ``worker`` in one process, or under torchrun on ``ranks`` CPU processes; its stdout and stderr."""
    command = [sys.executable, str(worker), *args]
    if ranks > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
                        str(free_port())]  # fmt: skip
    # DS_ACCELERATOR: DeepSpeed's CPU accelerator (gloo), where it would otherwise look for a GPU.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert (result.returncode == 0) == succeeds, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def assert_same_masks_and_state(single: Path, sharded: Path, learned: bool) -> None:
    """Both ranks' masks (``masks_rank{r}.pt``) equal the unsharded run's, and rank 0's pruner state
    (``state_rank0.pt``: learned scores, gradient statistics) matches it."""
    reference = torch.load(single / "masks_rank0.pt")
    rank0, rank1 = (torch.load(sharded / f"masks_rank{r}.pt") for r in (0, 1))
    assert set(rank0) == set(reference) and len(reference) > 0
    for name, mask in reference.items():
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
        assert torch.equal(rank0[name], mask), f"{name}: the sharded run's mask differs from the unsharded run's"
    kept = torch.cat([mask.flatten() for mask in reference.values()]).float().mean()
    assert 0.3 < float(kept) < 0.7  # the schedule reached its 50 %: the comparison is not between all-ones masks

    state, expected = torch.load(sharded / "state_rank0.pt"), torch.load(single / "state_rank0.pt")
    assert state["global_step"] == expected["global_step"] == 6
    assert bool(expected["scores"]) == learned
    for name, scores in expected["scores"].items():
        torch.testing.assert_close(state["scores"][name], scores, rtol=1e-4, atol=1e-6)
    for name, statistics in expected["importance_state"].items():
        for key, value in statistics.items():
            torch.testing.assert_close(state["importance_state"][name][key], value, rtol=1e-4, atol=1e-6)
