"""Movement pruning as the paper defines it, and what hfprune adds for short runs: schedules in shares of the run,
a magnitude-prior score init, soft movement aimed at a sparsity, its score learning rate tied to the ramp, and
score gradients clipped apart from the weights'."""

import warnings

import pytest
import torch

from hfprune import ConfigError, CubicSchedule, Pruner, PruningConfig
from hfprune.errors import HfPruneWarning
from hfprune.trainer import PruningTrainer, default_score_learning_rate

from .models import tiny_bert
from .test_trainer import _args, _dataset, _student


def test_a_schedule_in_shares_of_the_run_resolves_to_its_steps():
    schedule = CubicSchedule(start_step=0.1, end_step=0.7, every=10)
    assert schedule.relative and schedule(0, final=0.9) == 0.0  # before the first step, any length: warm-up
    steps = schedule.resolved(1000)
    assert (steps.start_step, steps.end_step, steps.every) == (100, 700, 10)
    assert steps(700, final=0.9) == pytest.approx(0.9) and steps(100, final=0.9) == 0.0
    assert CubicSchedule(start_step=100, end_step=0.5).resolved(1000).end_step == 500  # steps and shares mix
    assert PruningConfig.from_dict(PruningConfig(schedule=schedule).to_dict()).schedule == schedule  # round trip
    with pytest.raises(ConfigError, match=r"shares of the run, which needs the run's length"):
        schedule.resolved(None)
    with pytest.raises(ConfigError, match=r"shares of the run, which needs the run.s length"):
        schedule(5, final=0.9)
    with pytest.raises(ConfigError, match=r"end_step=2.5: give a step \(a whole number"):
        CubicSchedule(end_step=2.5)
    with pytest.raises(ConfigError, match=r"start_step < end_step; got the shares 0.7 and 0.2"):
        CubicSchedule(start_step=0.7, end_step=0.2)
    with pytest.raises(ConfigError, match=r"For a run of 10 steps, start_step=0.1 and end_step=0.14 give the steps"):
        CubicSchedule(start_step=0.1, end_step=0.14).resolved(10)


def test_pruning_trainer_resolves_the_shares_with_its_max_steps(tmp_path):
    config = PruningConfig(sparsity=0.6, schedule=CubicSchedule(start_step=0.25, end_step=0.75, every=1))
    trainer = PruningTrainer(model=_student(), args=_args(tmp_path, max_steps=12), train_dataset=_dataset(),
                             pruning_config=config)  # fmt: skip
    trainer.train()
    assert (trainer.pruner.schedule.start_step, trainer.pruner.schedule.end_step) == (3, 9)
    sparsity = {entry["step"]: entry["pruning/sparsity"] for entry in trainer.state.log_history if "loss" in entry}
    assert sparsity[4] < 0.6 and sparsity[12] == pytest.approx(0.6, abs=1e-3)  # ramping at 4, held from 9 on
    assert trainer.pruner.state_dict()["total_steps"] == 12
    pruner = Pruner(_student(), config)
    with pytest.raises(ConfigError, match="with Pruner, pass total_steps"):
        pruner.step(1)


def test_magnitude_init_starts_scores_at_relative_weight_size():
    model = tiny_bert()
    pruner = Pruner(model, PruningConfig(importance={"type": "movement", "init": "magnitude"}, sparsity=0.5))
    pruner.attach_()
    for name, scores in pruner.named_score_parameters().items():
        weight = pruner.modules[name].parametrizations.weight.original.detach().abs().reshape(-1)
        torch.testing.assert_close(scores.detach(), weight / weight.mean())
    # The first top-k, before scores learn anything, is magnitude pruning.
    pruner.apply_sparsity_(0.5)
    for module in pruner.modules.values():
        weight = module.parametrizations.weight.original.detach().abs().reshape(-1)
        kept = module.parametrizations.weight[0].mask.reshape(-1)
        assert float(weight[kept].min()) >= float(weight[~kept].max())
    constant = Pruner(tiny_bert(), PruningConfig(importance="movement", sparsity=0.5))
    constant.attach_()
    assert all(bool((s == 0).all()) for s in constant.score_parameters())
    with pytest.raises(ConfigError, match="init"):
        PruningConfig(importance={"type": "movement", "init": "size"})


def test_constant_init_with_a_short_ramp_warns_and_magnitude_init_does_not(tmp_path):
    def optimizer(init):
        config = PruningConfig(importance={"type": "movement", "init": init}, sparsity=0.9,
                               schedule=CubicSchedule(start_step=0.1, end_step=0.7))  # fmt: skip
        trainer = PruningTrainer(model=_student(), args=_args(tmp_path, max_steps=1000), train_dataset=_dataset(),
                                 pruning_config=config)  # fmt: skip
        trainer.state.max_steps = 1000
        trainer.create_optimizer()
        return trainer

    with pytest.warns(HfPruneWarning, match=r"final sparsity at step 700.*'init': 'magnitude'"):
        optimizer("constant")
    with warnings.catch_warnings():
        warnings.simplefilter("error", HfPruneWarning)
        optimizer("magnitude")


def test_soft_movement_score_learning_rate_follows_the_ramp():
    def rate(importance, start, end):
        schedule = CubicSchedule(start_step=start, end_step=end)
        pruner = Pruner(tiny_bert(), PruningConfig(importance=importance, sparsity=0.9, schedule=schedule))
        return default_score_learning_rate(pruner)

    assert rate("soft_movement", 100, 700) == pytest.approx(0.05)  # 30 / 600 ramp steps
    assert rate("soft_movement", 1000, 40000) == 1e-2  # long ramps keep the paper's rate
    assert rate("movement", 100, 700) == 1e-2
    assert rate({"type": "soft_movement", "use_sparsity": True}, 100, 700) == 1e-2
    # The magnitude prior: movement at three times the weights' own pace (3 x weight lr / mean |W|).
    pruner = Pruner(tiny_bert(), PruningConfig(importance={"type": "movement", "init": "magnitude"}, sparsity=0.9))
    weights = torch.cat([m.weight.detach().abs().reshape(-1) for m in pruner.modules.values()])
    expected = 3 * 5e-5 / float(weights.mean())
    assert default_score_learning_rate(pruner, 5e-5) == pytest.approx(expected, rel=1e-5)
    assert default_score_learning_rate(pruner) == 1e-2  # no weight learning rate known: the paper's


def test_soft_movement_can_aim_at_a_sparsity(tmp_path):
    importance = {"type": "soft_movement", "use_sparsity": True, "final_lambda": 1.0}
    config = PruningConfig(importance=importance, sparsity=0.8, scope="global",
                           schedule=CubicSchedule(start_step=2, end_step=10, every=2))  # fmt: skip
    trainer = PruningTrainer(model=_student(), args=_args(tmp_path, max_steps=14, learning_rate=1e-3),
                             train_dataset=_dataset(), pruning_config=config)  # fmt: skip
    trainer.train()
    assert trainer.pruner.mask_sparsity() == pytest.approx(0.8, abs=2e-3)  # what was asked, not what lambda gave
    per_module = trainer.pruner.sparsity().values()
    assert max(per_module) - min(per_module) > 0.05  # one global threshold: layers end at different sparsities
    assert max(per_module) <= 0.995  # min_density still holds
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert last["regularization_loss"] > 0 and "pruning/threshold" not in last


def test_score_gradients_are_clipped_apart_from_the_weights(tmp_path):
    config = PruningConfig(importance="movement", sparsity=0.5, schedule=CubicSchedule(end_step=100))
    trainer = PruningTrainer(model=_student(), args=_args(tmp_path, max_grad_norm=1.0), train_dataset=_dataset(),
                             pruning_config=config)  # fmt: skip
    model = trainer.model
    scores = {id(p) for p in trainer.pruner.score_parameters()}
    weights = [p for p in model.parameters() if id(p) not in scores]
    for param in weights:
        param.grad = torch.full_like(param, 1e-5)
    for param in trainer.pruner.score_parameters():
        param.grad = torch.full_like(param, 1e3)  # a huge score gradient must not shrink the weight update
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in weights]))
    norm = trainer._clip_grad_norm(model)
    assert float(norm) == pytest.approx(float(before), rel=1e-5)
    assert all(torch.equal(p.grad, torch.full_like(p, 1e-5)) for p in weights)
    score_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.pruner.score_parameters()]))
    assert float(score_norm) == pytest.approx(1.0, rel=1e-4)


def test_hybrid_block_movement_compacts_emptied_heads_and_neurons(tmp_path):
    from hfprune import load_pruned

    from .models import bert_batch

    config = PruningConfig(importance={"type": "movement", "init": "magnitude"},
                           structure={"type": "hybrid", "rows": 8, "cols": 8}, sparsity=0.5,
                           schedule=CubicSchedule(start_step=0.2, end_step=0.6, every=2))  # fmt: skip
    trainer = PruningTrainer(model=_student(), args=_args(tmp_path, max_steps=10, learning_rate=1e-3),
                             train_dataset=_dataset(), pruning_config=config, score_learning_rate=0.1)  # fmt: skip
    pruner = trainer.pruner
    layer = "bert.encoder.layer.0"
    blocked = {f"{layer}.attention.self.{p}" for p in ("query", "key", "value")} | {f"{layer}.attention.output.dense"}
    assert blocked <= set(pruner.modules) and pruner.units[f"{layer}.output.dense"] == ("neurons", 0)
    trainer.train()
    masks = pruner.masks()
    query = masks[f"{layer}.attention.self.query"].reshape(4, 8, 4, 8)  # 32x32 as 4x4 blocks of 8x8
    assert bool((query.all(dim=(1, 3)) | ~query.any(dim=(1, 3))).all())  # every block is whole or empty
    assert 0.45 < pruner.mask_sparsity() < 0.55
    # Empty the columns of head 1 in layer 0's output projection: the head is what compaction must remove.
    output = masks[f"{layer}.attention.output.dense"].clone()
    output[:, 8:16] = False
    pruner.set_masks_({**masks, f"{layer}.attention.output.dense": output})
    plan = pruner.plan()
    assert 1 not in plan.heads[0] and len(plan.neurons[0]) < 37
    batch = bert_batch(labels=False)
    trainer.model.eval()
    with torch.no_grad():
        masked = trainer.model(**batch).logits
    out = trainer.save_pruned_model(tmp_path / "final")
    reloaded = load_pruned(out)
    attention = reloaded.bert.encoder.layer[0].attention
    assert attention.self.query.out_features == 8 * len(plan.heads[0]) < 32
    torch.testing.assert_close(reloaded(**batch).logits, masked)
    with pytest.raises(ConfigError, match="hybrid structure .* learned during fine-pruning"):
        from hfprune.structured import plan_structured

        plan_structured(tiny_bert(), config)
    with pytest.raises(ConfigError, match="hybrid structure takes sparsity"):
        Pruner(tiny_bert(), PruningConfig(importance="movement", structure="hybrid", target_flops=0.5))
