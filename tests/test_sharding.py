"""Pruning under FSDP2 (``fully_shard``) on 2 CPU ranks (gloo): masks computed from whole weights, identical on
every rank and equal to an unsharded run's; learned scores and gradient statistics gathered; a sharded KD teacher;
resume from a sharded checkpoint; a compacted model saved from rank 0.
The worker is tests/sharded_pruning_worker.py."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hfprune.hub import load_pruned
from hfprune.sharding import copy_whole_, full_tensor, is_sharded

from . import distributed
from .conftest import free_port
from .distributed import assert_same_masks_and_state


WORKER = Path(__file__).resolve().parent / "sharded_pruning_worker.py"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


def run_worker(*args: str, ranks: int = 1) -> None:
    distributed.run_worker(WORKER, *args, ranks=ranks)


@pytest.mark.parametrize(
    ("importance", "structure"),
    [("movement", "heads_and_neurons"), ("taylor", "unstructured")],
    ids=["learned-scores-heads", "gradient-statistics-global"],
)
def test_fsdp2_pruning_matches_unsharded_and_resumes(tmp_path, importance, structure):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_worker("single", str(single), importance, structure)
    # Stops after step 3 with a sharded checkpoint; a new process group resumes it.
    run_worker("sharded", str(sharded), importance, structure, "--resume-at", "3", ranks=2)

    assert_same_masks_and_state(single, sharded, learned=importance == "movement")

    # Rank 0's compacted model is the unsharded run's.
    ours, theirs = load_pruned(sharded / "compacted").eval(), load_pruned(single / "compacted").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    if structure == "heads_and_neurons":
        assert ours.config.intermediate_size == 128  # widths stay in the plan; the layers shrank
        assert ours.bert.encoder.layer[0].intermediate.dense.out_features < 128
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_whole_grad_asks_deepspeed_first(monkeypatch):
    # With bf16 and fp32 accumulation, DeepSpeed leaves each rank's own unreduced gradient in ``param.grad`` and the
    # reduced one in its partitions: a parameter it holds (``_hp_mapping``) must be read through DeepSpeed.
    deepspeed_utils = pytest.importorskip("deepspeed.utils")
    from hfprune.sharding import whole_grad

    reduced = torch.full((2, 2), 7.0)
    monkeypatch.setattr(deepspeed_utils, "safe_get_full_grad", lambda param: reduced)
    held = torch.nn.Parameter(torch.zeros(2, 2))
    held.grad = torch.ones(2, 2)  # this rank's own gradient
    held._hp_mapping = object()
    assert whole_grad(held) is reduced
    plain = torch.nn.Parameter(torch.zeros(2, 2))
    assert whole_grad(plain) is None
    plain.grad = torch.ones(2, 2)
    assert whole_grad(plain) is plain.grad


def test_sharding_helpers_pass_plain_tensors_through():
    tensor = torch.arange(6.0).reshape(2, 3)
    assert not is_sharded(tensor) and full_tensor(tensor) is tensor
    target = torch.zeros(2, 3)
    copy_whole_(target, tensor.double())
    assert torch.equal(target, tensor) and target.dtype == torch.float32


@pytest.mark.parametrize(("importance", "reads"), [("movement", 0), ("taylor", 2 * 4)])
def test_accumulate_reads_weights_and_gradients_only_for_gradient_criteria(monkeypatch, importance, reads):
    # Under FSDP2 each read is a gather of a whole weight or gradient: learned scores, which the optimizer trains,
    # must not pay it every step. Taylor reads each of the 4 pruned weights and its gradient.
    import hfprune.masks
    import hfprune.pruner
    from hfprune import Pruner, PruningConfig

    from .models import bert_batch, tiny_bert

    model = tiny_bert()
    pruner = Pruner(model, PruningConfig(importance=importance, sparsity=0.5, target_modules=["query", "value"]))
    pruner.attach_()
    model(**bert_batch()).loss.backward()
    calls = []

    def counting(tensor):
        calls.append(tuple(tensor.shape))
        return tensor

    monkeypatch.setattr(hfprune.pruner, "whole_grad", lambda param: counting(param.grad))
    monkeypatch.setattr(hfprune.masks, "is_sharded", lambda tensor: True)  # read weights as if sharded
    monkeypatch.setattr(hfprune.masks, "full_tensor", counting)
    pruner.accumulate()
    assert len(calls) == reads


def test_on_one_sharded_rank_refusals_and_a_state_loaded_after_sharding(tmp_path):
    # One gloo rank in a fresh interpreter: enough for fully_shard to make DTensors.
    script = tmp_path / "one_rank.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from torch.distributed.fsdp import fully_shard\n"
        "from hfprune import ConfigError, Pruner, PruningConfig\n"
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
        "config = PruningConfig(sparsity=0.5, importance='movement', target_modules=['0', '2'])\n"
        "pruner = Pruner(model, config)\n"
        "pruner.attach_()\n"
        "pruner.apply_sparsity_(0.5)\n"
        "saved = pruner.state_dict()\n"
        "fully_shard(model)\n"
        "for attempt in (lambda: Pruner(model, config), pruner.make_permanent_):\n"
        "    try:\n"
        "        attempt()\n"
        "    except ConfigError as err:\n"
        "        print('REFUSED', err)\n"
        "print('SHAPE', tuple(model[0].weight.shape), type(model[0].weight).__name__)\n"
        "with torch.no_grad():\n"
        "    for param in pruner.score_parameters():\n"
        "        param.zero_()\n"
        "pruner.load_state_dict(saved)  # scores written back into their shards\n"
        "again = pruner.state_dict()\n"
        "same = all(torch.equal(again['scores'][k], v) for k, v in saved['scores'].items())\n"
        "same = same and all(torch.equal(again['masks'][k], v) for k, v in saved['masks'].items())\n"
        "print('RELOADED', same, pruner.overall_sparsity())\n"
        "dist.destroy_process_group()\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert out.count("REFUSED") == 2, out + result.stderr[-3000:]
    assert "before fully_shard" in out and "cannot run on an FSDP2-sharded model" in out
    assert "SHAPE (8, 8) DTensor" in out  # a masked weight read outside the forward pass: sharded, whole shape
    assert "RELOADED True 0.5" in out
