"""Latency tables and latency budgets (hfprune.latency, hfprune.budget, target_latency).

Planning is tested on synthetic tables (exact numbers, so exact plans); measurement is tested for its structure and
bookkeeping only, never for speed (speed belongs in benchmarks/latency_aware.py).
"""

import itertools
import json

import pytest
import timm
import torch

import hfprune.models  # noqa: F401 - registers the CIFAR ResNets with timm
from hfprune import ConfigError, PruningConfig
from hfprune.budget import encoder_latency_table, latency_counts, latency_kept_fraction, latency_table_for
from hfprune.channels import (
    channel_classes,
    channel_groups,
    channel_latency_table,
    channel_table_key,
    eagleeye_search,
    latency_table_for_channels,
    plan_channels,
)
from hfprune.compaction import compact_
from hfprune.latency import (
    LatencyCurve,
    LatencyTable,
    LatencyTableMismatchError,
    cache_path,
    curves_from_savings,
    table_key,
)
from hfprune.structured import plan_structured
from hfprune.structures import Channels

from .models import bert_batch, tiny_bert


X32 = torch.zeros(2, 3, 32, 32)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HFPRUNE_CACHE", str(tmp_path / "cache"))


def curve(widths, saved, blocks):
    return LatencyCurve(widths=list(widths), saved_ms=list(saved), blocks=list(blocks), measured_ms=list(saved))


def encoder_table(model, shape=(1, 128), head_saves=None, neuron_saves=None, dense_ms=10.0):
    """A table for tiny_bert (2 layers, 4 heads, 37 neurons): per-block savings given per width."""
    head_saves = head_saves or {0: 2.0, 1: 1.5, 2: 1.0, 3: 0.5}
    neuron_saves = neuron_saves or {0: 2.0, 8: 1.6, 16: 1.2, 24: 0.8, 32: 0.4}
    layers = ["0", "1"]
    return LatencyTable(
        key=table_key(model, list(shape)),
        dense_ms=dense_ms,
        curves={"heads": curve([*head_saves, 4], [*head_saves.values(), 0.0], layers),
                "neurons": curve([*neuron_saves, 37], [*neuron_saves.values(), 0.0], layers)},
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the table
def test_curve_interpolates_and_keeps_widths_the_hardware_likes():
    flat = curve([0, 8, 16, 24, 32], [4.0, 2.0, 2.0, 1.0, 0.0], ["0"])
    assert flat.saving(4) == pytest.approx(3.0)
    assert flat.saving(12) == pytest.approx(2.0)
    assert flat.saving(40) == 0.0
    # 8 saves no more than 16 does (a flat step): 16 is the width to choose, 8 is not worth its lost units.
    assert flat.friendly_widths(tolerance_ms=0.01) == [0, 16, 24, 32]
    assert flat.friendly_widths(tolerance_ms=0.01, multiple=16) == [0, 16, 32]


def test_measured_savings_are_fitted_monotone_but_kept_as_measured():
    saved = {("neurons", 0): 3.0, ("neurons", 8): 1.0, ("neurons", 16): 1.4}  # 16 measured faster than 8
    made = curves_from_savings(saved, {"neurons": 24}, {"neurons": ["0"]})["neurons"]
    assert made.widths == [0, 8, 16, 24]
    assert made.saved_ms == pytest.approx([3.0, 1.2, 1.2, 0.0])  # the least-squares fit, not the luckier 1.4
    assert made.measured_ms == [3.0, 1.0, 1.4, 0.0]
    assert made.friendly_widths(0.01) == [0, 16, 24]


def test_table_round_trips_and_refuses_what_it_was_not_measured_for(tmp_path):
    model = tiny_bert()
    table = encoder_table(model, shape=(4, 16))
    path = table.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    assert again.to_dict() == table.to_dict()
    again.check_key(table_key(model, [4, 16]), str(path))
    with pytest.raises(LatencyTableMismatchError, match=r"shape: table \[4, 16\], needed \[1, 16\]"):
        again.check_key(table_key(model, [1, 16]), str(path))
    other = dict(table.key, device="cuda: H100", torch="1.0")
    with pytest.raises(LatencyTableMismatchError, match="device.*torch.*hfprune latency-table"):
        again.check_key(other, str(path))
    wider = tiny_bert(intermediate_size=64)
    with pytest.raises(LatencyTableMismatchError, match="model"):
        again.check_key(table_key(wider, [4, 16]), str(path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"heads": 1}))
    with pytest.raises(ConfigError, match="Not a latency table"):
        LatencyTable.load(tmp_path / "other.json")


def test_encoder_table_measures_every_head_count_and_a_neuron_grid():
    model = tiny_bert()
    table = encoder_latency_table(model, batch_size=2, seq_len=16, neuron_step=8, rounds=1, warmup=0, min_seconds=0)
    assert table.curves["heads"].widths == [0, 1, 2, 3, 4]
    assert table.curves["neurons"].widths == [0, 8, 16, 24, 32, 37]
    assert table.curves["heads"].blocks == ["0", "1"]
    assert table.key["shape"] == [2, 16] and table.key["dtype"] == "float32"
    assert table.key["device"].startswith("cpu: ") and table.dense_ms > 0
    assert table.protocol["allocator"].startswith(("steady", "default"))
    for item in table.curves.values():
        assert item.saved_ms[-1] == 0.0
        assert all(a >= b for a, b in itertools.pairwise(item.saved_ms))  # monotone


def test_tables_are_cached_by_key_and_rebuilt_when_asked(monkeypatch):
    import hfprune.budget as budget

    model = tiny_bert()
    calls = []

    def fake(model, batch_size, seq_len):
        calls.append((batch_size, seq_len))
        return encoder_table(model, shape=(batch_size, seq_len))

    monkeypatch.setattr(budget, "encoder_latency_table", fake)
    config = PruningConfig(structure="heads_and_neurons", target_latency=0.5, latency_shape=[2, 16])
    first = latency_table_for(model, config)
    assert cache_path(first.key).is_file()
    assert latency_table_for(model, config).to_dict() == first.to_dict() and calls == [(2, 16)]
    latency_table_for(model, PruningConfig(structure="heads", target_latency=0.5, latency_shape=[1, 16]))
    assert calls == [(2, 16), (1, 16)]  # another shape is another table
    latency_table_for(model, config, rebuild=True)
    assert len(calls) == 3
    cache_path(first.key).write_text("{damaged")
    latency_table_for(model, config)
    assert len(calls) == 4  # a damaged cache entry is measured again, not trusted


def test_a_shape_the_model_cannot_take_is_refused_before_measuring():
    model = tiny_bert()  # 64 positions
    config = PruningConfig(structure="heads_and_neurons", target_latency=0.5, latency_shape=[1, 128])
    with pytest.raises(ConfigError, match="longer than this model takes \\(64 positions\\)"):
        latency_table_for(model, config)


# ------------------------------------------------------------------------------------------------ the search
def _brute_force(scores, table, target, kinds):
    best = None
    options = {k: table.curve(k).friendly_widths(table.tolerance_ms) if k in kinds else [table.curve(k).full_width]
               for k in ("heads", "neurons")}  # fmt: skip
    for choice in itertools.product(*(options[k] for k in ("heads", "neurons") for _ in range(2))):
        widths = {"heads": list(choice[:2]), "neurons": list(choice[2:])}
        if table.predict_ms(widths) > target * table.dense_ms + 1e-9:
            continue
        value = sum(float(torch.sort(scores[k][layer], descending=True).values[:w].sum())
                    for k in widths for layer, w in enumerate(widths[k]))  # fmt: skip
        if best is None or value > best[0] + 1e-12:
            best = (value, widths)
    return best


@pytest.mark.parametrize("target", [0.45, 0.6, 0.75, 0.9])
def test_latency_search_finds_the_best_counts_within_the_budget(target):
    model = tiny_bert()
    table = encoder_table(model)
    generator = torch.Generator().manual_seed(3)
    scores = {"heads": torch.rand(2, 4, generator=generator), "neurons": torch.rand(2, 37, generator=generator) / 8}
    counts = latency_counts(scores, table, target, ("heads", "neurons"), uniform=False, additive=True)
    assert table.predict_ms(counts) <= target * table.dense_ms + 1e-9
    value, best = _brute_force(scores, table, target, ("heads", "neurons"))
    found = sum(float(torch.sort(scores[k][layer], descending=True).values[:w].sum())
                for k in counts for layer, w in enumerate(counts[k]))  # fmt: skip
    assert found == pytest.approx(value, rel=1e-6)


def test_uniform_and_same_share_searches_keep_one_width_per_layer():
    model = tiny_bert()
    table = encoder_table(model)
    scores = {"heads": torch.rand(2, 4), "neurons": torch.rand(2, 37)}
    for additive in (True, False):
        counts = latency_counts(scores, table, 0.6, ("heads", "neurons"), uniform=True, additive=additive)
        assert len(set(counts["heads"])) == 1 and len(set(counts["neurons"])) == 1
        assert counts["heads"][0] >= 1
        assert table.predict_ms(counts) <= 0.6 * table.dense_ms + 1e-9
    heads_only = latency_counts(scores, table, 0.8, ("heads",), uniform=False, additive=True)
    assert heads_only["neurons"] == [37, 37]


def test_an_unreachable_latency_target_names_the_smallest_reachable():
    model = tiny_bert()
    table = encoder_table(model)
    scores = {"heads": torch.rand(2, 4), "neurons": torch.rand(2, 37)}
    # Smallest: every block at width 0 saves 2 ms, 4 blocks -> 10 - 8 = 2 ms = 0.2 of dense.
    with pytest.raises(ConfigError, match=r"target_latency=0.1 cannot be met.* 0\.200 of the dense"):
        latency_counts(scores, table, 0.1, ("heads", "neurons"), uniform=False, additive=True)
    with pytest.raises(ConfigError, match="cannot be met"):
        latency_counts(scores, table, 0.5, ("heads",), uniform=False, additive=True)  # heads alone: 0.6 at best


def test_plan_structured_spends_a_latency_budget_from_the_given_table(tmp_path):
    model = tiny_bert()
    table = encoder_table(model, shape=(2, 16))
    path = table.save(tmp_path / "table.json")
    batches = [bert_batch(seq_len=12) for _ in range(2)]
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_latency=0.6,
                           latency_shape=[2, 16], latency_table=str(path))  # fmt: skip
    plan = plan_structured(model, config, batches)
    assert plan.extra["latency_attempts"][0]["predicted"] <= 0.6 + 1e-9  # the first plan is aimed at the target
    assert plan.extra["latency_shape"] == [2, 16]
    widths = {"heads": [len(k) for k in plan.heads], "neurons": [len(k) for k in plan.neurons]}
    assert table.predict_ms(widths) / table.dense_ms == pytest.approx(plan.extra["predicted_latency_fraction"])
    friendly = table.curves["neurons"].friendly_widths(table.tolerance_ms)
    assert all(width in friendly for width in widths["neurons"])
    compact_(model, plan)
    model(**bert_batch(seq_len=12, labels=False))
    # The same table refused for another shape: never silently reused.
    other = PruningConfig(importance="fisher", structure="heads_and_neurons", target_latency=0.6,
                          latency_shape=[1, 16], latency_table=str(path))  # fmt: skip
    with pytest.raises(LatencyTableMismatchError, match="shape"):
        plan_structured(tiny_bert(), other, batches)


def test_pruning_during_training_aims_at_a_latency_target(monkeypatch):
    import hfprune.budget as budget
    from hfprune.budget import encoder_dims
    from hfprune.pruner import Pruner

    model = tiny_bert()
    monkeypatch.setattr(budget, "encoder_latency_table", lambda m, b, s: encoder_table(m, shape=(b, s)))
    config = PruningConfig(importance="magnitude", structure="heads_and_neurons", target_latency=0.6,
                           latency_shape=[1, 16])  # fmt: skip
    share = latency_kept_fraction(config, encoder_dims(model))
    table = latency_table_for(model, config)
    widths = {"heads": [4 * share] * 2, "neurons": [37 * share] * 2}
    assert table.predict_ms(widths) == pytest.approx(0.6 * table.dense_ms, rel=1e-6)
    pruner = Pruner(model, config)
    assert pruner.final_sparsity == pytest.approx(1.0 - share)


# ------------------------------------------------------------------------------------------------ config
def test_latency_config_round_trips_and_bad_values_are_refused():
    config = PruningConfig(structure="channels", target_latency=0.5, latency_shape=[64, 3, 32, 32],
                           latency_table="t.json")  # fmt: skip
    assert PruningConfig.from_dict(json.loads(config.to_json_string())) == config
    with pytest.raises(ConfigError, match="target_latency needs a structured kind"):
        PruningConfig(target_latency=0.5)
    with pytest.raises(ConfigError, match="one target: target_latency or target_flops"):
        PruningConfig(structure="heads", target_latency=0.5, target_flops=0.5)
    with pytest.raises(ConfigError, match=r"target_latency .* must be in \(0, 1\]"):
        PruningConfig(structure="heads", target_latency=1.5)
    with pytest.raises(ConfigError, match="latency_shape must be"):
        PruningConfig(structure="heads", target_latency=0.5, latency_shape=[32])
    with pytest.raises(ConfigError, match="latency_shape must be"):
        PruningConfig(structure="heads", target_latency=0.5, latency_shape=[0, 128])


# ------------------------------------------------------------------------------------------------ CNNs
def _resnet20():
    torch.manual_seed(0)
    return timm.create_model("cifar_resnet20").eval()


def test_channel_groups_of_a_stage_share_one_curve():
    model = _resnet20()
    _, groups = channel_groups(model, X32, Channels())
    classes = channel_classes(model, X32, list(groups))
    assert sum(map(len, classes.values())) == len(groups) == 9
    sizes = sorted(len(members) for members in classes.values())
    assert sizes == [1, 1, 2, 2, 3]  # stage 1: 3 blocks; stages 2, 3: a strided first block and two more


def channel_table(model, inputs, dense_ms=10.0, per_channel=0.01):
    """A synthetic table: each removed channel saves ``per_channel`` ms, in steps of 1/8 of the width."""
    _, groups = channel_groups(model, inputs, Channels())
    classes = channel_classes(model, inputs, list(groups))
    curves = {}
    for name, members in classes.items():
        full = model.get_submodule(members[0]).out_channels
        widths = list(range(full // 8, full, full // 8))
        curves[name] = curve([*widths, full], [per_channel * (full - w) for w in widths] + [0.0], members)
    return LatencyTable(key=channel_table_key(model, list(inputs.shape), list(groups)), dense_ms=dense_ms,
                        curves=curves)  # fmt: skip


def test_channel_plans_meet_a_latency_target_on_friendly_widths(tmp_path):
    model = _resnet20()
    table = channel_table(model, X32)
    config = PruningConfig(structure="channels", target_latency=0.8, latency_table=str(table.save(tmp_path / "t")))
    plan = plan_channels(model, config, X32)
    first = plan.extra["latency_attempts"][0]
    assert 0.7 < first["predicted"] <= 0.8 + 1e-9  # aimed at the target, the budget spent
    closest = min(plan.extra["latency_attempts"], key=lambda attempt: abs(attempt["measured"] - 0.8))
    assert plan.extra["measured_latency_fraction"] == closest["measured"]
    for name, kept in plan.kept.items():
        assert len(kept) % (plan.num_channels[name] // 8) == 0
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator))]
    best, candidates = eagleeye_search(model, config, X32, batches, batches, num_candidates=3, seed=1)
    assert all(c["predicted_latency_fraction"] <= 0.8 + 1e-9 for c in candidates)
    assert best.extra["adaptive_bn_top1"] == max(c["top1"] for c in candidates)
    with pytest.raises(ConfigError, match="target_latency=0.05 cannot be met"):
        plan_channels(model, PruningConfig(structure="channels", target_latency=0.05,
                                           latency_table=config.latency_table), X32)  # fmt: skip
    wider = PruningConfig(structure="channels", target_latency=0.8, latency_table=config.latency_table,
                          latency_shape=[8, 3, 32, 32])  # fmt: skip
    with pytest.raises(LatencyTableMismatchError, match="shape"):
        plan_channels(model, wider, X32)


def test_channel_table_measures_each_class_and_caches_it():
    model = _resnet20()
    config = PruningConfig(structure="channels", target_latency=0.8)
    table = channel_latency_table(model, X32, rounds=1, warmup=0, min_seconds=0)
    assert len(table.curves) == 5
    stage_one = next(c for name, c in table.curves.items() if name.startswith("conv 16->16"))
    assert stage_one.widths == [2, 4, 6, 8, 10, 12, 14, 16]
    assert table.key["shape"] == [2, 3, 32, 32] and "groups" in table.key
    table.save(cache_path(table.key))
    assert latency_table_for_channels(model, config, X32).to_dict() == table.to_dict()


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_latency_table_and_a_latency_target(tmp_path, capsys, tiny_sst2_classifier):
    from hfprune.cli import main

    table_file = tmp_path / "table.json"
    args = ["latency-table", "--model", str(tiny_sst2_classifier), "--batch-size", "2", "--seq-len", "16"]
    assert main([*args, "--output", str(table_file)]) == 0
    printed = capsys.readouterr().out
    assert "**heads**" in printed and "**neurons**" in printed and "dense:" in printed
    table = LatencyTable.load(table_file)
    assert table.key["shape"] == [2, 16] and cache_path(table.key).is_file()
    # Planning from a tiny model's measured table would depend on timing noise: plan from exact savings instead
    # (each block saves its share of 20% of the dense latency, linearly in the units it drops).
    for item in table.curves.values():
        item.saved_ms = [0.2 * table.dense_ms * (item.full_width - w) / item.full_width for w in item.widths]
    table.save(table_file)
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_sst2_classifier), "--method", "l2", "--structure", "heads_and_neurons",
                 "--target-latency", "0.7", "--batch-size", "2", "--seq-len", "16", "--latency-runs", "2",
                 "--latency-table", str(table_file), "--output", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Latency at 2x16 on cpu: " in printed and "predicted 0." in printed and "measured " in printed
    plan = json.loads((out / "pruning_plan.json").read_text())
    assert plan["extra"]["latency_attempts"][0]["predicted"] <= 0.7 + 1e-9
    assert "predicted 0." in (out / "README.md").read_text()
    # The table is for 2x16: asking for 1x16 with it is refused, naming the mismatch.
    code = main(["prune", "--model", str(tiny_sst2_classifier), "--method", "l2", "--structure", "heads_and_neurons",
                 "--target-latency", "0.7", "--batch-size", "1", "--seq-len", "16", "--latency-table",
                 str(table_file), "--output", str(tmp_path / "other")])  # fmt: skip
    assert code == 2
    assert "measured for something else" in capsys.readouterr().err


def test_a_latency_shape_the_cnn_cannot_take_is_refused():
    config = PruningConfig(structure="channels", target_latency=0.8, latency_shape=[1, 1, 32, 32])
    message = r"cannot take inputs of latency_shape \[1, 1, 32, 32\].*\[batch, 3, 32, 32\]"
    with pytest.raises(ConfigError, match=message):
        plan_channels(_resnet20(), config, X32)


def test_a_channel_plan_that_measures_slower_than_predicted_is_re_aimed(tmp_path, monkeypatch):
    import hfprune.channels as channels

    model = _resnet20()
    table = channel_table(model, X32)
    # This machine runs every plan 10% slower than the table predicts (the table over-promises).
    monkeypatch.setattr(channels, "measured_latency_fraction", lambda dense, pruned, inputs: 1.1 * predicted[-1])
    predicted = []
    real = channels._record_latency

    def record(plan, table, counts):
        real(plan, table, counts)
        predicted.append(plan.extra["predicted_latency_fraction"])

    monkeypatch.setattr(channels, "_record_latency", record)
    config = PruningConfig(structure="channels", target_latency=0.8, latency_table=str(table.save(tmp_path / "t")))
    plan = plan_channels(model, config, X32)
    attempts = plan.extra["latency_attempts"]
    assert len(attempts) >= 2 and attempts[1]["aim"] < attempts[0]["aim"]  # aimed lower after the miss
    assert abs(plan.extra["measured_latency_fraction"] - 0.8) <= abs(attempts[0]["measured"] - 0.8)


def test_an_encoder_plan_that_measures_slower_than_predicted_is_re_aimed(tmp_path, monkeypatch):
    import hfprune.structured as structured

    model = tiny_bert()
    table = encoder_table(model, shape=(2, 16))
    # Every plan runs 10% slower than the table predicts; the re-aimed plan is predicted faster.
    monkeypatch.setattr(structured, "measured_latency_fraction",
                        lambda dense, pruned, inputs: 1.1 * structured.predicted_latency_fraction(
                            structured.PruningPlan.from_config(pruned.config), table))  # fmt: skip
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_latency=0.6,
                           latency_shape=[2, 16], latency_table=str(table.save(tmp_path / "t.json")))  # fmt: skip
    plan = plan_structured(model, config, [bert_batch(seq_len=12)])
    attempts = plan.extra["latency_attempts"]
    assert len(attempts) >= 2 and attempts[1]["aim"] < attempts[0]["aim"]
    assert abs(plan.extra["measured_latency_fraction"] - 0.6) == min(abs(a["measured"] - 0.6) for a in attempts)
