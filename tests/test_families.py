"""The invariant table: every registered encoder family x every structured kind goes through every path.

The cases come from the registries (`structured_model_types`, the structures registered as unit structures), not
from a hand list, so a new adapter or structure is covered the moment it is registered; `FAMILY_CASES` must hold
a tiny model for each registered family (checked below).
"""

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from hfprune import PlanMismatchError, Pruner, PruningConfig, PruningPlan, compact_, load_pruned
from hfprune.adapters import get_encoder_adapter
from hfprune.adapters.base import structured_model_types
from hfprune.errors import ConfigError, UnsupportedArchitectureError
from hfprune.export import export_remote_code
from hfprune.hub import save_pruned
from hfprune.importance import UNIT_STRUCTURES
from hfprune.retraining_free import reconstruct_
from hfprune.structured import apply_plan_masks_, encoder_dims, plan_flops, plan_structured

from .models import FAMILY_CASES, MLP, family_batch, family_model


CASES = list(FAMILY_CASES)
TABLE = [(case, structure) for case in CASES for structure in UNIT_STRUCTURES]


def _logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_every_registered_family_has_a_tiny_model():
    covered = {model_type for model_type, _ in FAMILY_CASES.values()}
    assert set(structured_model_types()) <= covered, set(structured_model_types()) - covered


@pytest.mark.parametrize("case,structure", TABLE)
def test_target_reached_and_compacted_equals_masked(case, structure):
    model = family_model(case)
    batches = [family_batch(model, seed=s) for s in range(2)]
    dims = encoder_dims(model)
    # Aim at 60% of what the pruned kinds cost, on top of what the kinds left alone cost.
    seq_len = 16
    cost = {"heads": dims.num_layers * dims.num_heads * dims.head_flops(seq_len),
            "neurons": dims.num_layers * dims.intermediate_size * dims.neuron_flops(seq_len)}  # fmt: skip
    fixed = sum(value for kind, value in cost.items() if kind not in structure) / sum(cost.values())
    target = fixed + 0.6 * (1 - fixed)
    config = PruningConfig(importance="taylor", structure=structure, target_flops=target, flops_seq_len=seq_len)
    plan = plan_structured(model, config, batches)
    fraction = plan_flops(plan, dims, seq_len) / dims.total_flops(seq_len)
    assert target - 0.2 < fraction <= target
    assert plan.extra["encoder_flops_fraction"] == pytest.approx(fraction)
    masked = copy.deepcopy(model)
    apply_plan_masks_(masked, plan)
    compacted = copy.deepcopy(model)
    compact_(compacted, plan)
    batch = batches[0]
    torch.testing.assert_close(_logits(compacted, batch), _logits(masked, batch), rtol=1e-4, atol=1e-5)
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in compacted.parameters())
    assert removed > 0


NEURON_STRUCTURES = [structure for structure in UNIT_STRUCTURES if "neurons" in structure]


@pytest.mark.parametrize("case,structure", [(c, s) for c in CASES for s in NEURON_STRUCTURES])
def test_round_to_wider_than_the_ffn_is_refused_with_both_numbers(case, structure):
    model = family_model(case)
    width = encoder_dims(model).intermediate_size
    batches = [family_batch(model)]
    for target in ({"sparsity": 0.5}, {"target_flops": 0.6}):
        config = PruningConfig(importance="taylor", structure={"type": structure, "round_to": width + 1}, **target)
        with pytest.raises(ConfigError, match=rf"round_to={width + 1} is wider than .*\({width} neurons\)"):
            plan_structured(model, config, batches)
    config = PruningConfig(importance="movement", structure={"type": structure, "round_to": 64}, sparsity=0.5)
    with pytest.raises(ConfigError, match=rf"round_to=64 is wider than the FFN of .*\({width} neurons\)"):
        Pruner(model, config)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("importance", ["fisher", "taylor"])
def test_round_to_never_takes_a_plan_past_its_target(case, importance):
    # Rounding kept neurons to the nearest multiple used to overshoot (0.5 FLOPs -> 0.65 with round_to=32 on 37-wide
    # layers); rounded plans stay within the target and keep multiples (or the whole layer).
    model = family_model(case)
    dims = encoder_dims(model)
    batches = [family_batch(model, seed=s) for s in range(2)]
    for round_to in (8, 16, 32):
        config = PruningConfig(importance=importance, target_flops=0.5,
                               structure={"type": "heads_and_neurons", "round_to": round_to})  # fmt: skip
        plan = plan_structured(model, config, batches)
        assert plan.extra["encoder_flops_fraction"] <= 0.5
        assert all(len(kept) % round_to == 0 or len(kept) == dims.intermediate_size for kept in plan.neurons)


@pytest.mark.parametrize("case", CASES)
def test_every_attention_implementation_matches_after_compaction(case):
    implementations = ["eager"]
    if getattr(family_model(case), "_supports_sdpa", False):
        implementations.append("sdpa")
    for implementation in implementations:
        model = family_model(case, attn_implementation=implementation)
        plan = PruningPlan.dense(model)
        plan.heads = [[1, 3]] + [[] if i == 1 else [0, 2] for i in range(1, plan.num_layers)]
        plan.neurons = [list(range(0, plan.intermediate_size, 3)) for _ in range(plan.num_layers)]
        plan = PruningPlan.from_dict(plan.to_dict())
        masked = copy.deepcopy(model)
        apply_plan_masks_(masked, plan)
        compact_(model, plan)
        batch = family_batch(model)
        torch.testing.assert_close(_logits(model, batch), _logits(masked, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_save_load_and_remote_code_give_the_same_logits(case, tmp_path):
    model = family_model(case)
    plan = PruningPlan.dense(model)
    plan.heads = [[0, 3]] + [[] for _ in range(1, plan.num_layers)]
    plan.neurons = [[1, 2, 5]] + [list(range(20)) for _ in range(1, plan.num_layers)]
    plan = PruningPlan.from_dict(plan.to_dict())
    compact_(model, plan)
    batch = family_batch(model, labels=False)
    expected = _logits(model, batch)
    save_pruned(model, tmp_path / "saved", pruning_config=PruningConfig(structure="heads_and_neurons"), plan=plan)
    torch.testing.assert_close(_logits(load_pruned(tmp_path / "saved"), batch), expected)

    export_remote_code(model, plan, tmp_path / "export")
    torch.save(batch, tmp_path / "inputs.pt")
    torch.save(expected, tmp_path / "expected.pt")
    task = "ImageClassification" if model.config.model_type == "vit" else "SequenceClassification"
    auto = f"AutoModelFor{task}"
    # A fresh interpreter in which importing hfprune fails: only transformers and the folder's own code are used.
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hfprune"] = None
        import transformers
        model = transformers.{auto}.from_pretrained({str(tmp_path / "export")!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
        torch.testing.assert_close(out, torch.load({str(tmp_path / "expected.pt")!r}))
        print("ok", type(model).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ok Hfpruned{type(model).__name__}" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_transformers_save_pretrained_loads_back(case, tmp_path):
    # What the README promises: a compacted model saved the transformers way (which converts keys to the family's
    # checkpoint layout, e.g. ViT's attention.attention.query) reloads with load_pruned from config.json alone.
    model = family_model(case)
    plan = PruningPlan.dense(model)
    plan.heads = [[1]] + [[0, 2, 3] for _ in range(1, plan.num_layers)]
    plan.neurons = [[4, 7]] + [list(range(11)) for _ in range(1, plan.num_layers)]
    compact_(model, PruningPlan.from_dict(plan.to_dict()))
    batch = family_batch(model, labels=False)
    model.save_pretrained(tmp_path)
    reloaded = load_pruned(tmp_path)
    assert type(reloaded) is type(model)
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model.eval(), batch))
    assert reloaded.config.hfprune_plan == model.config.hfprune_plan


@pytest.mark.parametrize("case", CASES)
def test_gradient_reaches_every_kept_parameter(case):
    model = family_model(case)
    plan = PruningPlan.dense(model)
    plan.heads = [[0, 2] for _ in range(plan.num_layers)]
    plan.neurons = [list(range(0, plan.intermediate_size, 2)) for _ in range(plan.num_layers)]
    compact_(model, PruningPlan.from_dict(plan.to_dict()))
    model.train()
    model(**family_batch(model)).loss.backward()
    layers = get_encoder_adapter(model).layers(model)
    for name, param in layers.named_parameters():
        assert param.grad is not None and bool(param.grad.ne(0).any()), name


@pytest.mark.parametrize("case,structure", TABLE)
def test_group_movement_resumes_with_the_same_masks(case, structure):
    model = family_model(case)
    config = PruningConfig(importance="movement", structure=structure, sparsity=0.5)
    pruner = Pruner(model, config)
    pruner.attach_()
    optimizer = torch.optim.SGD(list(model.parameters()), lr=0.1)
    for step in range(1, 3):
        model(**family_batch(model, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step(step)
    state = pruner.state_dict()
    resumed = Pruner(copy.deepcopy(model), config)
    resumed.load_state_dict(state)
    for name, mask in pruner.masks().items():
        assert torch.equal(resumed.masks()[name], mask), name
    assert resumed.global_step == pruner.global_step
    # The plan read off the masks compacts to a model computing what the masked one does.
    plan = pruner.plan()
    assert 0 < sum(map(len, plan.heads if "heads" in structure else plan.neurons))
    masked_logits = _logits(model, family_batch(model))
    pruner.make_permanent_()
    compact_(model, plan)
    torch.testing.assert_close(_logits(model, family_batch(model)), masked_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_retraining_free_reconstruction_lowers_the_error(case):
    model = family_model(case)
    batches = [family_batch(model, seed=s) for s in range(3)]
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=0.5)
    plan = plan_structured(model, config, batches)
    dense = copy.deepcopy(model)
    compact_(model, plan)
    errors = reconstruct_(model, dense, batches)
    assert errors["before"] and len(errors["before"]) == len(errors["after"])
    assert sum(errors["after"]) <= sum(errors["before"])
    assert any(after < before for before, after in zip(errors["before"], errors["after"], strict=True))


# ------------------------------------------------------------------------------------------------ bad input
def test_structure_the_family_does_not_have():
    with pytest.raises(UnsupportedArchitectureError, match="no adapter"):
        plan_structured(MLP(), PruningConfig(importance="magnitude", structure="heads", sparsity=0.5))


def test_fused_layer_whose_index_map_does_not_divide_evenly():
    model = family_model("modernbert")
    # A fused query/key/value projection with one row too many: its three parts are not whole heads.
    model.model.layers[0].attn.Wqkv = torch.nn.Linear(32, 97, bias=False)
    plan = PruningPlan.dense(model)
    plan.heads[0] = [0, 1]
    with pytest.raises(PlanMismatchError, match="does not divide this layer evenly"):
        compact_(model, PruningPlan.from_dict(plan.to_dict()))


def test_plan_written_for_another_family():
    bert_plan = PruningPlan.dense(family_model("bert"))
    with pytest.raises(PlanMismatchError, match="plan is for a bert"):
        compact_(family_model("modernbert"), bert_plan)


@pytest.mark.parametrize("case", CASES)
def test_report_counts_fewer_flops_after_compaction(case):
    from hfprune import report

    model = family_model(case)
    before = report(model, measure_latency=False)
    plan = PruningPlan.dense(model)
    plan.heads = [[0] for _ in range(plan.num_layers)]
    plan.neurons = [list(range(5)) for _ in range(plan.num_layers)]
    compact_(model, PruningPlan.from_dict(plan.to_dict()))
    after = report(model, measure_latency=False)
    assert before.flops and after.flops and after.flops < before.flops
    assert after.total_params < before.total_params
    assert after.prunable_params < before.prunable_params  # the adapter's default targets follow the shrunk layers


@pytest.mark.parametrize("case", CASES)
def test_unstructured_defaults_target_every_encoder_linear(case):
    from hfprune import prune_

    model = family_model(case)
    layers = get_encoder_adapter(model).layers(model)
    linears = [m for m in layers.modules() if isinstance(m, torch.nn.Linear)]
    prune_(model, PruningConfig(sparsity=0.5))
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    assert zeros == pytest.approx(0.5 * sum(m.weight.numel() for m in linears), abs=len(linears))


def _training_set(model, size: int = 24):
    from datasets import Dataset

    batch = family_batch(model, batch_size=size, seed=7)
    return Dataset.from_dict({key: value.tolist() for key, value in batch.items()}).with_format("torch")


@pytest.mark.parametrize("case", CASES)
def test_trainer_with_group_movement_and_distillation_resumes_with_the_same_masks(case, tmp_path):
    """PruningTrainer (group movement on heads and neurons, KD from the dense model), interrupted after a checkpoint
    and resumed, ends with the masks, scores and plan of an uninterrupted run."""
    from transformers import TrainingArguments

    from hfprune import CubicSchedule, PruningTrainer
    from hfprune.importance import MovementImportance

    from .test_trainer import _InterruptAt

    def student():
        model = family_model(case)
        model.config.hidden_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model

    def args(folder, **extra):
        settings = dict(output_dir=str(tmp_path / folder), per_device_train_batch_size=4, max_steps=6, use_cpu=True,
                        report_to=[], seed=0, disable_tqdm=True, logging_steps=3, save_strategy="no")  # fmt: skip
        return TrainingArguments(**{**settings, **extra})

    config = PruningConfig(importance=MovementImportance(update_every=1), structure="heads_and_neurons",
                           sparsity=0.5, schedule=CubicSchedule(end_step=6, every=1))  # fmt: skip
    teacher = family_model(case)
    data = _training_set(teacher)
    full = PruningTrainer(model=student(), args=args("full"), train_dataset=data, pruning_config=config,
                          teacher_model=teacher)  # fmt: skip
    full.train()
    cut = args("cut", save_strategy="steps", save_steps=3)
    PruningTrainer(model=student(), args=cut, train_dataset=data, pruning_config=config, teacher_model=teacher,
                   callbacks=[_InterruptAt(3)]).train()  # fmt: skip
    resumed = PruningTrainer(model=student(), args=cut, train_dataset=data, pruning_config=config,
                             teacher_model=teacher)  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))
    assert resumed.pruner.plan().heads == full.pruner.plan().heads
    assert resumed.pruner.plan().neurons == full.pruner.plan().neurons
    for name, mask in full.pruner.masks().items():
        assert torch.equal(resumed.pruner.masks()[name], mask), name
    for name, scores in full.pruner.named_score_parameters().items():
        torch.testing.assert_close(resumed.pruner.named_score_parameters()[name], scores)
    assert "kd_loss" in [entry for entry in full.state.log_history if "loss" in entry][-1]
