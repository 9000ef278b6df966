"""Lottery ticket search: rounds, rewinding, resume, and the controls (random and re-initialized tickets)."""

import pytest
import torch

from hfprune import ConfigError, LotteryConfig, find_lottery_ticket
from hfprune.lottery import (
    apply_ticket_,
    load_ticket,
    parameter_state,
    random_ticket,
    reinitialize_,
    rewind_,
    rewind_callback,
)
from hfprune.masks import find_mask

from .models import MLP


MODULES = ["fc1", "fc2", "head"]


def trainer(steps=5, log=None, crash_at=None):
    """A train(model, round, after_step) that takes ``steps`` SGD steps on fixed random data; ``log`` records each
    round's starting weights and the state after each step."""

    def train(model, round_index, after_step):
        if crash_at is not None and round_index == crash_at:
            raise KeyboardInterrupt("stopped")
        if log is not None:
            log.setdefault("starts", {})[round_index] = parameter_state(model)
        generator = torch.Generator().manual_seed(round_index)
        x, y = torch.randn(32, 16, generator=generator), torch.randint(0, 4, (32,), generator=generator)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(1, steps + 1):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if log is not None:
                log.setdefault("steps", {})[(round_index, step)] = parameter_state(model)
            after_step(step)
        return {"loss": float(loss), "calls": 1}

    return train


def test_rounds_remove_the_rate_of_what_is_left_and_rewind_survivors_to_init(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    initial = parameter_state(model)
    log = {}
    config = LotteryConfig(rounds=3, pruning={"target_modules": MODULES})
    records = find_lottery_ticket(model, config, trainer(log=log), tmp_path)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for record in records:
        assert record["remaining"] == pytest.approx(0.8 ** record["round"], abs=1e-3)
    # Every round after the first starts from the initial values of every parameter (biases too), masks on top.
    for round_index in (1, 2, 3):
        start = log["starts"][round_index]
        assert set(start) == set(initial)
        for name in initial:
            torch.testing.assert_close(start[name], initial[name], rtol=0, atol=0)
    # Masks only shrink, and the model ends with the last round's masks and trained weights.
    masks = [load_ticket(tmp_path, r)[0] for r in range(4)]
    for earlier, later in zip(masks, masks[1:], strict=False):
        for name in MODULES:
            assert not (later[name] & ~earlier[name]).any()
    for name in MODULES:
        assert torch.equal(find_mask(getattr(model, name)).mask, masks[3][name])
    assert not torch.equal(model.fc1.parametrizations.weight.original, initial["fc1.weight"])


def test_rewinding_to_an_early_iteration_restores_that_iterate(tmp_path):
    torch.manual_seed(0)
    log = {}
    config = LotteryConfig(rounds=2, rewind_step=3, pruning={"target_modules": MODULES})
    find_lottery_ticket(MLP(), config, trainer(steps=6, log=log), tmp_path)
    at_step_3 = log["steps"][(0, 3)]
    for round_index in (1, 2):
        for name, value in log["starts"][round_index].items():
            torch.testing.assert_close(value, at_step_3[name], rtol=0, atol=0)


def test_a_round_zero_that_never_reaches_the_rewind_step_is_an_error(tmp_path):
    config = LotteryConfig(rounds=1, rewind_step=50, pruning={"target_modules": MODULES})
    with pytest.raises(ConfigError, match="rewind_step=50"):
        find_lottery_ticket(MLP(), config, trainer(steps=5), tmp_path)


def test_local_scope_and_a_per_module_rate(tmp_path):
    torch.manual_seed(0)
    config = LotteryConfig(rounds=2, pruning={"target_modules": MODULES, "scope": "local"},
                           rate_overrides={"head": 0.1})  # fmt: skip
    records = find_lottery_ticket(MLP(), config, trainer(), tmp_path)
    kept, sizes = records[2]["kept"], records[2]["sizes"]
    assert kept["fc1"] == round(sizes["fc1"] * 0.64) and kept["fc2"] == round(sizes["fc2"] * 0.64)
    assert kept["head"] == pytest.approx(sizes["head"] * 0.81, abs=1)


def test_a_stopped_search_resumes_at_the_first_unfinished_round_with_the_same_result(tmp_path):
    torch.manual_seed(0)
    config = LotteryConfig(rounds=3, pruning={"target_modules": MODULES})
    reference = MLP()
    start = parameter_state(reference)
    find_lottery_ticket(reference, config, trainer(), tmp_path / "whole")

    stopped = MLP()
    rewind_(stopped, start)
    with pytest.raises(KeyboardInterrupt):
        find_lottery_ticket(stopped, config, trainer(crash_at=2), tmp_path / "split")
    assert not (tmp_path / "split" / "round_02").exists() and (tmp_path / "split" / "round_01" / "round.json").exists()
    calls = []

    def counting(model, round_index, after_step):
        calls.append(round_index)
        return trainer()(model, round_index, after_step)

    resumed = MLP()  # a fresh process: the weights come from the folder
    records = find_lottery_ticket(resumed, config, counting, tmp_path / "split")
    assert calls == [2, 3] and [r["round"] for r in records] == [0, 1, 2, 3]
    for name in MODULES:
        assert torch.equal(find_mask(getattr(resumed, name)).mask, find_mask(getattr(reference, name)).mask)
    for name, value in parameter_state(reference).items():
        torch.testing.assert_close(parameter_state(resumed)[name], value)
    with pytest.raises(ConfigError, match="another config"):
        find_lottery_ticket(MLP(), LotteryConfig(rounds=4, pruning={"target_modules": MODULES}), trainer(),
                            tmp_path / "split")  # fmt: skip


def test_random_ticket_keeps_each_layers_count_and_reinit_keeps_the_masks(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    find_lottery_ticket(model, LotteryConfig(rounds=2, pruning={"target_modules": MODULES}), trainer(), tmp_path)
    ticket, _ = load_ticket(tmp_path, 2)
    shuffled = random_ticket(ticket, seed=1)
    for name in MODULES:
        assert int(shuffled[name].sum()) == int(ticket[name].sum()) and not torch.equal(shuffled[name], ticket[name])
    assert all(torch.equal(a, b) for a, b in zip(random_ticket(ticket, 1).values(), shuffled.values(), strict=True))

    control = apply_ticket_(MLP(), ticket)
    before = parameter_state(control)
    reinitialize_(control, seed=7)
    after = parameter_state(control)
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    for name in MODULES:
        assert torch.equal(find_mask(getattr(control, name)).mask, ticket[name])
        assert bool((getattr(control, name).weight[~ticket[name]] == 0).all())
    with pytest.raises(ConfigError, match="fc9"):
        apply_ticket_(MLP(), {"fc9": ticket["fc1"]})


def test_rewind_refuses_a_state_from_another_model():
    with pytest.raises(ConfigError, match="does not fit"):
        rewind_(MLP(), {"fc1.weight": torch.zeros(64, 16)})


def test_config_round_trips_and_refuses_what_it_cannot_run():
    config = LotteryConfig(rounds="15", prune_rate="2e-1", rewind_step=100,
                           pruning={"target_modules": MODULES}, rate_overrides={"head": 0.1})  # fmt: skip
    assert config.rounds == 15 and config.prune_rate == 0.2
    assert LotteryConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert config.pruning.importance.registered_name == "magnitude" and config.pruning.scope == "global"
    with pytest.raises(ConfigError, match="prune_rate"):
        LotteryConfig(rounds=3, prune_rate=1.0)
    with pytest.raises(ConfigError, match="movement"):
        LotteryConfig(rounds=3, pruning={"importance": "movement"})
    with pytest.raises(ConfigError, match="unstructured"):
        LotteryConfig(rounds=3, pruning={"structure": "heads"})


def test_trainer_callback_calls_after_step_with_the_global_step():
    seen = []
    callback = rewind_callback(seen.append)

    class State:
        global_step = 12

    callback.on_step_end(None, State(), None)
    assert seen == [12]


def test_an_image_recipe_with_a_lottery_section_searches_and_resumes(tmp_path, capsys):
    from hfprune.recipes import ImageRecipe, train_image

    from .test_image_labels import CLASSES, _tree

    root = _tree(tmp_path / "images", CLASSES, per_class=2)
    training = {"output_dir": str(tmp_path / "unused"), "max_steps": 2, "per_device_train_batch_size": 4,
                "use_cpu": True, "report_to": [], "learning_rate": 0.01, "seed": 3}  # fmt: skip
    recipe = ImageRecipe(model="cifar_resnet20", num_classes=5, output_dir=str(tmp_path / "search"),
                         train_data=str(root), eval_data=str(root), batch_size=4, training=training,
                         lottery={"rounds": 2, "rewind_step": 1, "pruning": {"scope": "local"}})  # fmt: skip
    summary = train_image(recipe)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["rounds"][2]["remaining"] == pytest.approx(0.64, abs=0.01)
    assert "top1" in summary["rounds"][2]["metrics"] and "conv1" in summary["rounds"][0]["kept"]
    assert (tmp_path / "search" / "rewind.safetensors").is_file()
    assert "hfprune lottery round 2" in capsys.readouterr().out
    again = train_image(recipe)  # every round is on disk: nothing is trained again
    assert again["rounds"] == summary["rounds"] and "hfprune lottery round" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="remove the pruning"):
        ImageRecipe(model="cifar_resnet20", num_classes=5, output_dir=str(tmp_path / "x"), train_data=str(root),
                    training=training, lottery={"rounds": 1}, pruning={"structure": "channels"})  # fmt: skip
    with pytest.raises(ConfigError, match="rounds"):
        train_image(ImageRecipe(model="cifar_resnet20", num_classes=5, output_dir=str(tmp_path / "y"),
                                train_data=str(root), training=training, lottery={"round": 1}))  # fmt: skip
