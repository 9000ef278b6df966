"""Your own data (--dataset): files and folders in every format `datasets` reads, labels checked against the head."""

import json
import re

import pandas as pd
import pytest

from hfprune.cli import main
from hfprune.data import DataError, TextData, encode_labels, labelled_batches


ROWS = [("a wonderful, moving film", 1), ("dull and far too long", 0), ("i loved every minute", 1),
        ("the worst script this year", 0), ("sharp, funny and kind", 1), ("nothing works here", 0)] * 4  # fmt: skip


def _write(path, rows=ROWS, columns=("review", "stars")):
    frame = pd.DataFrame(rows, columns=list(columns))
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    else:
        frame.to_parquet(path)
    return path


class Config:
    num_labels = 2
    label2id = {"negative": 0, "positive": 1}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    data = TextData(str(_write(tmp_path / f"reviews{suffix}")), text_columns=("review",), label_column="stars")
    dataset = data.load()
    assert len(dataset) == len(ROWS) and dataset[0]["review"] == ROWS[0][0]
    assert data.columns(dataset) == (("review",), "stars")


def test_a_folder_is_split_by_file_name(tmp_path):
    _write(tmp_path / "train.jsonl", ROWS[:18])
    data = TextData(str(tmp_path), text_columns=("review",), label_column="stars")
    with pytest.raises(DataError, match=r"no file for the 'validation' split"):  # never the train rows by fallback
        data.load("validation")
    _write(tmp_path / "dev.jsonl", ROWS[18:])
    assert len(data.load("train")) == 18 and len(data.load("validation")) == 6
    with pytest.raises(DataError, match=r"no file for the 'test' split .*found dev.jsonl, train.jsonl"):
        TextData(str(tmp_path), split="test").load()


def test_evaluating_on_the_calibration_file_is_said(tmp_path, recwarn):
    from hfprune.errors import HfPruneWarning
    from hfprune.tasks import check_task_data

    data = TextData(str(_write(tmp_path / "reviews.csv")), text_columns=("review",), label_column="stars")
    check_task_data(data, "text-classification", ["validation"])  # evaluation alone reads nothing twice
    assert not [w for w in recwarn if issubclass(w.category, HfPruneWarning)]
    with pytest.warns(HfPruneWarning, match="one file, so --eval scores rows that calibration may also have read"):
        check_task_data(data, "text-classification", ["train", "validation"])


def test_sentence_pairs_calibrate_as_separate_sentences(tmp_path):
    path = _write(tmp_path / "pairs.csv", [("a cat sleeps", "the cat is asleep", 4.5)] * 3,
                  columns=("sentence1", "sentence2", "score"))  # fmt: skip
    assert TextData(str(path)).texts(limit=4) == ["a cat sleeps", "the cat is asleep"] * 2


def test_labels_are_checked_against_the_head():
    assert encode_labels(["positive", "negative"], Config, "f") == [1, 0]
    assert encode_labels([1, 0.0], Config, "f") == [1, 0]
    with pytest.raises(DataError, match=r"labels \[2, 5\] do not fit the model's head of 2 classes"):
        encode_labels([0, 2, 5], Config, "f")
    with pytest.raises(DataError, match=r"labels \['great'\] are not among the model's label names"):
        encode_labels(["positive", "great"], Config, "f")
    with pytest.raises(DataError, match="labels of mixed types"):
        encode_labels(["positive", 1], Config, "f")

    class Regression:
        num_labels = 1

    assert encode_labels([0.5, 4], Regression, "f") == [0.5, 4.0]
    with pytest.raises(DataError, match="the model is a regression"):
        encode_labels(["high"], Regression, "f")


def test_columns_are_named_or_found(tmp_path):
    path = _write(tmp_path / "r.csv", columns=("sentence", "label"))
    assert TextData(str(path)).columns(TextData(str(path)).load()) == (("sentence",), "label")
    path = _write(tmp_path / "q.csv")
    with pytest.raises(DataError, match=r"has no column named like text \(review, stars\).*--text-columns"):
        TextData(str(path)).columns(TextData(str(path)).load())
    with pytest.raises(DataError, match=r"has no column \['label'\]; its columns are \['review', 'stars'\]"):
        TextData(str(path), text_columns=("review",)).columns(TextData(str(path)).load())


def test_unusable_files_name_the_problem(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv is empty"):
        TextData(str(tmp_path / "empty.csv")).load()
    (tmp_path / "header.csv").write_text("review,stars\n")
    with pytest.raises(DataError, match=r"holds no rows|cannot be read"):
        TextData(str(tmp_path / "header.csv")).load()
    with pytest.raises(DataError, match="does not exist"):
        TextData(str(tmp_path / "missing.csv")).load()


def test_batches_carry_encoded_labels(tmp_path, tiny_sst2_classifier):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_sst2_classifier)
    config = AutoConfig.from_pretrained(tiny_sst2_classifier)
    data = TextData(str(_write(tmp_path / "r.csv")), text_columns=("review",), label_column="stars")
    batches = labelled_batches(data, tokenizer, config, num_examples=10, batch_size=4)
    assert [len(batch["labels"]) for batch in batches] == [4, 4, 2]


def test_cli_prunes_with_calibration_and_evaluation_on_your_own_file(tmp_path, tiny_sst2_classifier, capsys):
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "train.csv")
    _write(tmp_path / "data" / "validation.csv", ROWS[:8])
    out = tmp_path / "out"
    code = main(["prune", "--model", str(tiny_sst2_classifier), "--dataset", str(tmp_path / "data"),
                 "--text-columns", "review", "--label-column", "stars", "--method", "fisher", "--structure",
                 "heads_and_neurons", "--target-flops", "0.6", "--eval", "--output", str(out), "--no-latency",
                 "--num-calibration", "16"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "Dev metrics before: {'accuracy'" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "text-classification" in card and "accuracy" in card
    assert "16 calibration examples of" in card

    code = main(["prune", "--model", str(tiny_sst2_classifier), "--dataset", str(tmp_path / "data"),
                 "--text-columns", "review", "--label-column", "nope", "--method", "fisher", "--structure",
                 "heads", "--output", str(tmp_path / "o2")])  # fmt: skip
    assert code == 2 and "has no column ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    code = main(["prune", "--model", str(tiny_sst2_classifier), "--task", "sst2", "--dataset", "x",
                 "--output", str(tmp_path / "o3")])  # fmt: skip
    assert code == 2 and "either --task (GLUE) or --dataset" in capsys.readouterr().err


def test_a_training_recipe_fine_prunes_on_your_own_data(tmp_path, tiny_sst2_classifier):
    from hfprune.errors import ConfigError
    from hfprune.recipes import GlueRecipe, train_glue

    (tmp_path / "reviews").mkdir()
    named = [(text, "positive" if label else "negative") for text, label in ROWS]
    _write(tmp_path / "reviews" / "train.csv", named, columns=("review", "sentiment"))
    _write(tmp_path / "reviews" / "validation.csv", named[:8], columns=("review", "sentiment"))
    recipe = GlueRecipe(
        model=str(tiny_sst2_classifier), output_dir=str(tmp_path / "final"), teacher=str(tiny_sst2_classifier),
        dataset={"path": str(tmp_path / "reviews"), "text_columns": "review", "label_column": "sentiment"},
        training={"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
                  "use_cpu": True, "report_to": [], "save_strategy": "no"},
        pruning={"importance": "magnitude", "sparsity": 0.3},
    )  # fmt: skip
    result = train_glue(recipe)
    assert set(result["metrics"]["validation"]) >= {"eval_validation_accuracy", "eval_validation_f1_macro"}
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}  # class names became the head's labels
    card = (tmp_path / "final" / "README.md").read_text()
    assert "accuracy" in card
    # The teacher is scored too: its column in the card's table holds a number ("-" when it was not evaluated).
    teacher_row = next(line for line in card.splitlines() if line.startswith("| accuracy |"))
    assert re.fullmatch(r"\d\.\d{4}", teacher_row.split("|")[2].strip()), teacher_row
    with pytest.raises(ConfigError, match="needs either `task` .* or `dataset`"):
        GlueRecipe(model="m", task="sst2", dataset={"path": "x"}, training={"output_dir": str(tmp_path / "r")})
    with pytest.raises(ConfigError, match=r"Unknown key 'colums'"):
        GlueRecipe(model="m", dataset={"path": "x", "colums": "a"}, training={"output_dir": str(tmp_path / "r")})
