import json
import sys
from pathlib import Path

import pytest

from hfprune.cli import main
from hfprune.errors import ConfigError
from hfprune.plotting import load_operating_points, plot_kept_structure, plot_tradeoff


pytest.importorskip("matplotlib", reason='plotting needs the extra: pip install "hfprune[plot]"')
Image = pytest.importorskip("PIL.Image")

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
RESULT_FILES = [
    "glue_fine_pruning.json",
    "structured_retraining_free.json",
    "structured_retraining_free_steady_alloc.json",
    "structured_fine_pruning.json",
    "cnn_channel_pruning.json",
    "cnn_channel_pruning_momentum_3ep.json",
    "latency_aware_cnn.json",
    "latency_aware.json",
    "latency_aware_fixed_rounds.json",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, size: tuple[int, int]) -> None:
    """A complete PNG of exactly ``size`` pixels, and no temporary file left beside it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()  # decodes every chunk: a truncated file fails here
        assert image.size == size
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name", RESULT_FILES)
def test_committed_results_load_with_sensible_values(name):
    points = load_operating_points(RESULTS / name)
    dense = [point for point in points if point.dense]
    assert len(dense) == 1 and dense[0] is points[0]
    assert dense[0].flops_fraction == 1.0
    assert len(points) >= 3
    for point in points:
        assert point.benchmark == Path(name).stem and point.source == RESULTS / name
        assert 0 < point.accuracy <= 100 and point.method and point.metric
        # The benchmarks store fractions: anything below 1 % would mean the conversion to percent was skipped.
        assert point.accuracy > 1
        assert point.flops_fraction is None or 0 < point.flops_fraction <= 1
        assert all(size >= 1 and 0 < ratio <= 2 for size, ratio in point.latency_ratios.items())
        if point.dense:
            assert set(point.latency_ratios.values()) <= {1.0}
        else:
            assert point.accuracy <= dense[0].accuracy + 1


def test_known_values_are_read_from_the_right_keys():
    # Expected values come from the raw JSON (benchmarks are re-run), read here independently of plotting.py.
    raw = json.loads((RESULTS / "structured_retraining_free_steady_alloc.json").read_text())["variants"]
    steady = {p.key: p for p in load_operating_points(RESULTS / "structured_retraining_free_steady_alloc.json")}
    assert steady["dense"].accuracy == pytest.approx(100 * raw["dense"]["dev_accuracy"])
    assert steady["dense"].metric == "SST-2 dev accuracy"
    rf = steady["retraining_free"]
    assert rf.flops_fraction == pytest.approx(raw["retraining_free"]["flops_ratio"])
    assert sorted(rf.latency_ratios) == [1, 32]
    assert rf.latency_ratio(32) == pytest.approx(1 / raw["retraining_free"]["batch32_paired_speedup"])
    assert rf.latency_ratio() == rf.latency_ratio(32)  # default: the largest batch
    # The KD variant was not timed: it has FLOPs but no latency, and is skipped on that axis only.
    kd = steady["retraining_free_kd"]
    assert kd.latency_ratios == {} and kd.method == "retraining-free + KD"

    assert "retraining_free_uniform" in steady  # every variant of the file becomes a point

    cnn = {p.key: p for p in load_operating_points(RESULTS / "cnn_channel_pruning.json")}
    assert set(cnn) == {"dense", "eagleeye", "torch_pruning", "uniform_l1"}  # imagenet_models have no accuracy
    assert cnn["eagleeye"].accuracy == pytest.approx(74.65)  # after fine-tuning, not the 39.85 right after pruning
    assert sorted(cnn["uniform_l1"].latency_ratios) == [1, 64]

    glue = {p.key: p for p in load_operating_points(RESULTS / "glue_fine_pruning.json")}
    assert glue["magnitude"].flops_fraction is None and glue["magnitude"].latency_ratios == {}
    assert glue["magnitude"].weights_fraction == pytest.approx(0.1, abs=1e-4)


def test_folder_loads_every_result_file():
    points = load_operating_points(RESULTS)
    # The sweep's points are one benchmark per task ("fine_pruning_sweep (sst2)").
    stems = {point.benchmark.split(" (")[0] for point in points}
    # Every committed accuracy result loads (a file added later need not be listed to be read, only to be checked).
    assert {Path(name).stem for name in RESULT_FILES} | {"fine_pruning_sweep"} <= stems
    assert stems <= {path.stem for path in RESULTS.glob("*.json")}
    # Memory and step-time results in the same folder have no accuracy points: skipped there, refused by name.
    with pytest.raises(ConfigError, match="unknown benchmark result format"):
        load_operating_points(RESULTS / "retraining_free_memory.json")


def test_unknown_format_names_the_file_and_the_expected_keys(tmp_path):
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"results": {"dense": {"acc": 0.9}}}))
    with pytest.raises(ConfigError, match=r"odd\.json: unknown benchmark result format.*`variants`.*`dev_accuracy`"):
        load_operating_points([odd])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json is not a JSON benchmark result"):
        load_operating_points([broken])
    with pytest.raises(ConfigError, match="does not exist"):
        load_operating_points([tmp_path / "missing.json"])


def test_plot_tradeoff_writes_png_for_both_axes(tmp_path):
    points = load_operating_points(
        [RESULTS / "structured_retraining_free_steady_alloc.json", RESULTS / "cnn_channel_pruning.json"]
    )
    target = tmp_path / "figs" / "flops.png"
    assert plot_tradeoff(points, target, title="test") == target
    # Two benchmarks side by side: 2 x 4.6 in wide at 110 dpi.
    assert_png(target, (1012, 451))
    target.write_bytes(b"stale")  # an existing file is replaced whole
    plot_tradeoff(points, target, x="latency", latency_batch_size=1)
    assert_png(target, (1012, 418))  # no title: 0.3 in shorter


def test_plot_tradeoff_errors(tmp_path):
    glue = load_operating_points(RESULTS / "glue_fine_pruning.json")
    with pytest.raises(ConfigError, match="No pruned operating point has a FLOPs fraction"):
        plot_tradeoff(glue, tmp_path / "out.png")
    with pytest.raises(ConfigError, match="x must be one of"):
        plot_tradeoff(glue, tmp_path / "out.png", x="params")
    with pytest.raises(ConfigError, match=r"should end in \.png"):
        plot_tradeoff(glue, tmp_path / "out.svg")
    assert list(tmp_path.iterdir()) == []


def test_plot_kept_structure(tmp_path):
    rows = [("heads", f"layer {i}", kept, 12) for i, kept in enumerate([11, 10, 8, 6, 2, 7])]
    rows += [("neurons", f"layer {i}", kept, 1536) for i, kept in enumerate([1451, 1309, 835, 299, 96, 20])]
    rows += [("channels", f"layer{i // 9 + 1}.{i % 9}.conv1", 8, 16) for i in range(27)]
    target = tmp_path / "kept_structure.png"
    assert plot_kept_structure(rows, target, title="Kept per layer") == target
    assert_png(target, (600, 300))  # 6 x 3 inches at 100 dpi: model-card size
    with pytest.raises(ConfigError, match="kept must be between 0 and total"):
        plot_kept_structure([("heads", "layer 0", 13, 12)], tmp_path / "bad.png")
    with pytest.raises(ConfigError, match="at least one"):
        plot_kept_structure([], tmp_path / "bad.png")


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ConfigError, match=r'pip install "hfprune\[plot\]"'):
        plot_kept_structure([("heads", "layer 0", 6, 12)], tmp_path / "k.png")


def test_cli_plot(tmp_path, capsys):
    out = tmp_path / "tradeoff.png"
    steady = str(RESULTS / "structured_retraining_free_steady_alloc.json")
    assert main(["plot", steady, "--output", str(out)]) == 0
    assert_png(out, (506, 418))
    assert main(["plot", steady, str(RESULTS / "cnn_channel_pruning.json"), "--output", str(out), "--x", "both"]) == 0
    printed = capsys.readouterr().out
    for axis in ("flops", "latency"):
        written = tmp_path / f"tradeoff_{axis}.png"
        assert f"Wrote {written}" in printed
        assert_png(written, (1012, 418))

    odd = tmp_path / "odd.json"
    odd.write_text("{}")
    assert main(["plot", str(odd), "--output", str(tmp_path / "x.png")]) == 2
    assert "odd.json: unknown benchmark result format" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def _sweep_file(tmp_path):
    points = [{"task": "sst2", "method": method, "remaining": remaining, "seed": seed, "steps": 1000,
               "dev_accuracy": accuracy, "reached_remaining": remaining}
              for method, remaining, seed, accuracy in [
                  ("magnitude", 0.1, 42, 0.78), ("magnitude", 0.1, 43, 0.76), ("magnitude", 0.03, 42, 0.70),
                  ("movement", 0.1, 42, 0.80), ("movement", 0.03, 42, 0.74),
                ("magnitude", 0.5, 42, 0.86)]]  # fmt: skip
    points.append({**points[0], "task": "mrpc", "dev_accuracy": 0.70})
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"points": points, "dense": {"sst2": {"dev_accuracy": 0.88}}}))
    return path


def test_sweep_points_average_seeds_per_task_and_plot_against_remaining_weights(tmp_path):
    points = load_operating_points(_sweep_file(tmp_path))
    sst2 = {(p.key, p.weights_fraction): p for p in points if p.benchmark == "sweep (sst2)"}
    assert sst2[("dense", 1.0)].dense and sst2[("dense", 1.0)].accuracy == pytest.approx(88.0)
    magnitude = sst2[("magnitude", 0.1)]
    assert magnitude.accuracy == pytest.approx(77.0) and magnitude.accuracy_range == pytest.approx((76.0, 78.0))
    assert magnitude.seeds == 2 and sst2[("movement", 0.1)].accuracy_range is None
    mrpc = [p for p in points if p.benchmark == "sweep (mrpc)"]
    assert [p.accuracy for p in mrpc] == pytest.approx([70.0]) and not mrpc[0].dense  # no dense entry for it
    target = tmp_path / "weights.png"
    assert plot_tradeoff(points, target, x="weights") == target
    assert_png(target, (1012, 418))
    with pytest.raises(ConfigError, match="No pruned operating point has a FLOPs fraction"):
        plot_tradeoff(points, tmp_path / "flops.png")
