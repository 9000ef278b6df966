"""GLUE task lookup, loading of the original GLUE TSVs (real files from shared/data/glue) and the offline metric."""

import math
from pathlib import Path

import datasets
import numpy as np
import pytest

from hfprune.errors import ConfigError, HfPruneWarning, MissingDataError
from hfprune.glue import (
    GLUE_METRIC_PATH,
    GLUE_TASKS,
    GlueTask,
    compute_glue_metrics,
    get_task,
    glue_metric,
    load_glue,
)


GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue_data = pytest.mark.skipif(
    not GLUE_DIR.is_dir(), reason=f"the original GLUE TSVs are not at {GLUE_DIR} (see shared/data/SOURCES.md)"
)

# Row counts and label counts from shared/data/SOURCES.md (section 1), columns as in nyu-mll/glue.
EXPECTED = {
    "sst2": {"train": 67349, "validation": 872, "columns": ["sentence", "label", "idx"]},
    "cola": {"train": 8551, "validation": 1043, "columns": ["sentence", "label", "idx"]},
    "mrpc": {"train": 3668, "validation": 408, "columns": ["sentence1", "sentence2", "label", "idx"]},
    "rte": {"train": 2490, "validation": 277, "columns": ["sentence1", "sentence2", "label", "idx"]},
    "stsb": {"train": 5749, "validation": 1500, "columns": ["sentence1", "sentence2", "label", "idx"]},
}


def write_tsv(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# --- task lookup ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["sst2", "SST-2", "sst-2", "Sst_2", " sst2 "])
def test_get_task_accepts_common_spellings(spelling):
    assert get_task(spelling) is GLUE_TASKS["sst2"]


def test_get_task_folder_style_names_and_instances():
    assert get_task("STS-B").name == "stsb"
    assert get_task("CoLA").name == "cola"
    assert get_task("MNLI").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task(GLUE_TASKS["rte"]) is GLUE_TASKS["rte"]


def test_get_task_unknown_name_lists_tasks_and_suggests():
    with pytest.raises(ConfigError) as info:
        get_task("sst")
    message = str(info.value)
    assert "Unknown GLUE task 'sst'" in message
    assert "cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb" in message
    assert "Did you mean 'sst2'?" in message
    assert isinstance(info.value, ValueError)


def test_get_task_rejects_non_strings():
    with pytest.raises(ConfigError, match="must be a string"):
        get_task(2)


def test_task_table_is_consistent():
    assert sorted(GLUE_TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
    for name, task in GLUE_TASKS.items():
        assert task.name == name
        assert len(task.text_keys) in (1, 2)
        assert len(task.label_names) == (0 if task.is_regression else task.num_labels)
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    # HF glue's ClassLabel order: entailment is 0 for the NLI tasks.
    assert GLUE_TASKS["rte"].label_names.index("entailment") == 0
    assert GLUE_TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")


def test_glue_task_validates_its_fields():
    with pytest.raises(ConfigError, match="1 or 2 text columns"):
        GlueTask("x", ("a", "b", "c"), 2, ("n", "p"), ("accuracy",))
    with pytest.raises(ConfigError, match="one name per class"):
        GlueTask("x", ("a",), 3, ("n", "p"), ("accuracy",))


# --- loading the real GLUE files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glue_local():
    """Each local task loaded once for the module; SST-2 train alone is 67k rows."""
    cache: dict[str, datasets.DatasetDict] = {}

    def load(task: str) -> datasets.DatasetDict:
        if task not in cache:
            cache[task] = load_glue(task, data_dir=GLUE_DIR)
        return cache[task]

    return load


@needs_glue_data
@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_load_local_row_counts_columns_and_features(glue_local, task):
    raw = glue_local(task)
    expected = EXPECTED[task]
    assert sorted(raw) == ["train", "validation"]
    for split in ("train", "validation"):
        dataset = raw[split]
        assert dataset.num_rows == expected[split]
        assert dataset.column_names == expected["columns"]
        assert dataset.features["idx"] == datasets.Value("int32")
        assert dataset["idx"][:3] == [0, 1, 2]
        assert all(isinstance(text, str) and text for key in GLUE_TASKS[task].text_keys for text in dataset[key][:50])
    label = raw["train"].features["label"]
    if task == "stsb":
        assert label == datasets.Value("float32")
        scores = np.asarray(raw["train"]["label"])
        assert scores.min() >= 0.0 and scores.max() <= 5.0
    else:
        assert isinstance(label, datasets.ClassLabel)
        assert label.names == list(GLUE_TASKS[task].label_names)
        assert set(raw["train"]["label"]) == {0, 1}


@needs_glue_data
def test_sst2_labels_and_stripped_sentences(glue_local):
    raw = glue_local("sst2")
    # SOURCES.md: train 37569 positive / 29780 negative, dev 444 / 428.
    assert np.bincount(raw["train"]["label"]).tolist() == [29780, 37569]
    assert np.bincount(raw["validation"]["label"]).tolist() == [428, 444]
    # The TSV has "hide new secretions from the parental units \t0": the space before the tab is stripped.
    assert raw["train"][0] == {"sentence": "hide new secretions from the parental units", "label": 0, "idx": 0}
    assert not any(s != s.strip() for s in raw["validation"]["sentence"])


@needs_glue_data
def test_cola_headerless_first_row_is_data(glue_local):
    raw = glue_local("cola")
    assert raw["train"][0] == {
        "sentence": "Our friends won't buy this analysis, let alone the next one we propose.",
        "label": 1,
        "idx": 0,
    }
    assert raw["validation"][0]["sentence"] == "The sailors rode the breeze clear of the rocks."
    # dev.tsv has no final newline; its last row must still be read.
    assert raw["validation"][-1]["idx"] == 1042


@needs_glue_data
def test_mrpc_bom_and_bare_quotes(glue_local):
    raw = glue_local("mrpc")
    assert all("\ufeff" not in name for name in raw["train"].column_names)
    first = raw["train"][0]
    # Bare '"' characters are text: with CSV quoting they would swallow the tab and merge columns.
    assert first["sentence1"] == (
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .'
    )
    assert first["sentence2"] == (
        'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
        "evidence ."
    )
    assert first["label"] == 1
    assert (
        raw["validation"][0]["sentence2"]
        == '" The foodservice pie business does not fit our long-term growth strategy .'
    )
    assert "\ufeff" not in raw["validation"][0]["sentence1"]


@needs_glue_data
def test_rte_string_labels_map_to_hf_ids(glue_local):
    validation = glue_local("rte")["validation"]
    # dev.tsv rows 0 and 1 are not_entailment and entailment; HF glue has entailment=0, not_entailment=1.
    assert validation["label"][:2] == [1, 0]
    assert validation[1]["sentence2"] == "Bacteria is winning the war against antibiotics."


@needs_glue_data
def test_stsb_score_is_last_column_float(glue_local):
    raw = glue_local("stsb")
    assert raw["train"][0] == {
        "sentence1": "A plane is taking off.",
        "sentence2": "An air plane is taking off.",
        "label": 5.0,
        "idx": 0,
    }
    assert raw["train"][1]["label"] == pytest.approx(3.8)


@needs_glue_data
def test_max_samples_keeps_the_first_rows_and_task_folder_works_as_data_dir():
    small = load_glue("SST-2", data_dir=GLUE_DIR / "SST-2", max_samples=5)
    assert small.num_rows == {"train": 5, "validation": 5}
    again = load_glue("sst2", data_dir=GLUE_DIR, splits="validation", max_samples=5)
    assert list(again) == ["validation"]
    assert again["validation"].to_dict() == small["validation"].to_dict()


@needs_glue_data
def test_another_tasks_folder_is_rejected():
    with pytest.raises(MissingDataError, match="folder of GLUE task 'cola', but task 'sst2'"):
        load_glue("sst2", data_dir=GLUE_DIR / "CoLA")


# --- layouts not in shared/data (MNLI, QQP, QNLI) and error paths, on small files written here -------------


def test_mnli_labels_and_two_validation_splits(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    write_tsv(
        tmp_path / "MNLI" / "train.tsv", [header, "0\t1\t1e\tfiction\tA man.\tA person.\tentailment\tentailment"]
    )
    for name, label in (("dev_matched.tsv", "neutral"), ("dev_mismatched.tsv", "contradiction")):
        write_tsv(tmp_path / "MNLI" / name, [header, f"0\t2\t2n\tslate\tP.\tH.\t{label}\t{label}"])
    raw = load_glue("mnli", data_dir=tmp_path)
    assert list(raw) == ["train", "validation_matched", "validation_mismatched"]
    assert raw["train"].column_names == ["premise", "hypothesis", "label", "idx"]
    assert raw["train"][0] == {"premise": "A man.", "hypothesis": "A person.", "label": 0, "idx": 0}
    assert raw["validation_matched"]["label"] == [1]
    assert raw["validation_mismatched"]["label"] == [2]


def test_qnli_and_qqp_columns(tmp_path):
    write_tsv(tmp_path / "QNLI" / "dev.tsv", ["index\tquestion\tsentence\tlabel", "0\tWho?\tHim.\tnot_entailment"])
    qnli = load_glue("qnli", data_dir=tmp_path, splits="validation")["validation"]
    assert qnli[0] == {"question": "Who?", "sentence": "Him.", "label": 1, "idx": 0}

    qqp_header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    write_tsv(
        tmp_path / "QQP" / "dev.tsv",
        [qqp_header, "7\t1\t2\tWhy?\tHow come?\t1", "8\t3\t4\ttruncated", "9\t5\t6\tA?\tB?\t0"],
    )
    with pytest.warns(HfPruneWarning, match="Skipped 1 row"):
        qqp = load_glue("qqp", data_dir=tmp_path, splits=["validation"])["validation"]
    assert qqp.column_names == ["question1", "question2", "label", "idx"]
    # The short row is dropped, but idx keeps counting file rows, as in nyu-mll/glue.
    assert qqp["idx"] == [0, 2]
    assert qqp["label"] == [1, 0]


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingDataError, match=r"does not exist.*SST-2/train.tsv"):
        load_glue("sst2", data_dir=missing)


def test_missing_task_folder_names_expected_layout(tmp_path):
    (tmp_path / "CoLA").mkdir()
    with pytest.raises(MissingDataError) as info:
        load_glue("rte", data_dir=tmp_path)
    message = str(info.value)
    assert f"No RTE/ folder for GLUE task 'rte' in {tmp_path}" in message
    assert str(tmp_path / "RTE" / "train.tsv") in message and str(tmp_path / "RTE" / "dev.tsv") in message
    assert "['CoLA']" in message


def test_missing_split_file_names_the_file(tmp_path):
    write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "good \t1"])
    with pytest.raises(MissingDataError) as info:
        load_glue("sst2", data_dir=tmp_path)
    message = str(info.value)
    assert f"Missing {tmp_path / 'SST-2' / 'dev.tsv'} for split 'validation'" in message
    assert "['train.tsv']" in message
    assert load_glue("sst2", data_dir=tmp_path, splits="train")["train"]["sentence"] == ["good"]


def test_wrong_header_and_bad_label_are_reported(tmp_path):
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["text\tlabel", "good\t1"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['sentence'\]"):
        load_glue("sst2", data_dir=tmp_path, splits="validation")
    write_tsv(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tmaybe"])
    with pytest.raises(ValueError, match=r"dev.tsv, line 2: label 'maybe' is neither"):
        load_glue("rte", data_dir=tmp_path, splits="validation")


def test_bad_splits_and_max_samples():
    with pytest.raises(ConfigError, match="GLUE test files have no labels"):
        load_glue("sst2", data_dir="unused", splits="test")
    with pytest.raises(ConfigError, match="Unknown split 'dev'"):
        load_glue("sst2", data_dir="unused", splits=["dev"])
    with pytest.raises(ConfigError, match="max_samples must be a positive int"):
        load_glue("sst2", data_dir="unused", max_samples=0)


# --- Hub path (datasets.load_dataset replaced: tests never use the network) ----------------------------------


def test_hub_path_selects_splits_and_truncates(monkeypatch):
    calls = []
    fake = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"premise": ["p"] * 4, "hypothesis": ["h"] * 4, "label": [0, 1, 2, 0]})
            for split in ("train", "validation_matched", "validation_mismatched", "test_matched")
        }
    )

    def load_dataset(path, name):
        calls.append((path, name))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    raw = load_glue("MNLI", splits=("validation", "test_matched"), max_samples=2)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert list(raw) == ["validation_matched", "validation_mismatched", "test_matched"]
    assert raw["validation_matched"]["label"] == [0, 1]
    with pytest.raises(ConfigError, match=r"has no split\(s\) \['test'\]"):
        load_glue("mnli", splits="test")


def test_hub_unreachable_raises_missing_data(monkeypatch):
    def offline(path, name):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MissingDataError, match=r"pass data_dir=.*SST-2/train.tsv"):
        load_glue("sst2")


# --- metric ------------------------------------------------------------------------------------------------------

# Confusion counts used below, for predictions P and references R (positive class 1):
#   P = [1, 1, 0, 0, 1, 0], R = [1, 0, 0, 0, 1, 1]: TP=2 FP=1 TN=2 FN=1
#   MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
#   P = [1, 1, 1, 0, 1, 0], R = [1, 0, 0, 0, 1, 1]: TP=2 FP=2 TN=1 FN=1
#   accuracy = 3/6 = 0.5, F1 = 2TP / (2TP + FP + FN) = 4/7


def test_cola_matthews_correlation_by_hand():
    result = compute_glue_metrics("cola", [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1])
    assert result == {"matthews_correlation": pytest.approx(1 / 3)}


def test_mrpc_and_qqp_accuracy_and_f1_by_hand():
    for task in ("mrpc", "QQP"):
        result = compute_glue_metrics(task, [1, 1, 1, 0, 1, 0], [1, 0, 0, 0, 1, 1])
        assert result == {"accuracy": pytest.approx(0.5), "f1": pytest.approx(4 / 7)}


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "mnli"])
def test_accuracy_tasks(task):
    predictions = [0, 1, 1, 0] if task != "mnli" else [0, 1, 2, 2]
    references = [0, 1, 0, 0] if task != "mnli" else [0, 1, 2, 1]
    assert compute_glue_metrics(task, predictions, references) == {"accuracy": 0.75}


def test_stsb_pearson_and_spearman():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    linear = compute_glue_metrics("stsb", 2 * x + 1, x)
    assert linear == {"pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}
    # Monotone but not linear: ranks agree exactly, values do not.
    cubic = compute_glue_metrics("STS-B", x**3, x)
    assert cubic["spearmanr"] == pytest.approx(1.0)
    assert cubic["pearson"] < 0.95
    # A regression head's (n, 1) output is accepted; reversed order gives -1.
    assert compute_glue_metrics("stsb", (4 - x)[:, None], x)["pearson"] == pytest.approx(-1.0)


def test_compute_glue_metrics_rejects_logits_and_length_mismatch():
    with pytest.raises(ValueError, match=r"shape \(2, 2\)\. Take logits.argmax\(-1\) first"):
        compute_glue_metrics("sst2", [[0.1, 0.9], [0.8, 0.2]], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        compute_glue_metrics("sst2", [1, 0, 1], [1, 0])


def test_glue_metric_is_an_evaluate_module_loaded_from_the_local_script(tmp_path):
    import evaluate

    metric = glue_metric("sst-2", cache_dir=str(tmp_path))
    assert isinstance(metric, evaluate.EvaluationModule)
    assert metric.name == "glue_metric" and metric.config_name == "sst2"
    metric.add_batch(predictions=[1, 0], references=[1, 1])
    metric.add_batch(predictions=[0, 0], references=[0, 0])
    assert metric.compute() == {"accuracy": 0.75}

    # The script also loads by path with evaluate itself, including the Hub metric's mnli_* config names.
    direct = evaluate.load(str(GLUE_METRIC_PATH), config_name="mnli_mismatched", keep_in_memory=True)
    assert direct.compute(predictions=[0, 1, 2], references=[0, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="Unknown GLUE metric config_name 'wnli'"):
        evaluate.load(str(GLUE_METRIC_PATH), config_name="wnli")


def test_metric_keys_match_task_table():
    rng = np.random.default_rng(0)
    for name, task in GLUE_TASKS.items():
        if task.is_regression:
            predictions, references = rng.random(8), rng.random(8)
        else:
            predictions, references = rng.integers(0, task.num_labels, 8), rng.integers(0, task.num_labels, 8)
        result = compute_glue_metrics(name, predictions, references)
        assert tuple(result) == task.metric_names
        assert all(isinstance(value, float) and not math.isnan(value) for value in result.values())
