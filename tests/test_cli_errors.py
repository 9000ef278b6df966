"""Every error a user can cause ends in one line ``hfprune: error: <problem and fix>``, exit code 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hfprune.cli import main
from hfprune.glue import GlueDataError, load_glue

from .models import family_model, tiny_bert
from .test_recipe_types import _complete_checkpoint


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small models and broken files, built once; each case names what it needs by key."""
    root = tmp_path_factory.mktemp("cli-errors")
    paths = {"root": root}
    tiny_bert().save_pretrained(root / "bert")
    paths["bert"] = root / "bert"
    from transformers import GPT2Config

    # config.json is all the structural check reads: no weights are needed to refuse GPT-2 heads pruning.
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0).save_pretrained(
        root / "gpt2"
    )
    paths["gpt2"] = root / "gpt2"
    tiny_bert(max_position_embeddings=16).save_pretrained(root / "short_bert")
    paths["short_bert"] = root / "short_bert"
    family_model("deberta-v2").save_pretrained(root / "deberta")  # 64 positions
    paths["deberta"] = root / "deberta"
    (root / "a_file").write_text("not a folder")
    paths["a_file"] = root / "a_file"
    (root / "bad.yaml").write_text("pruning:\n  sparsity: 0.5\n   importance: l1\n")
    paths["bad_yaml"] = root / "bad.yaml"
    (root / "zero_calibration.yaml").write_text("calibration: {task: sst2, num_examples: 0}\n")
    paths["zero_calibration"] = root / "zero_calibration.yaml"
    (root / "train_bad_type.yaml").write_text(
        f"model: {root / 'bert'}\ntask: sst2\ntraining: {{output_dir: {root / 'run'}, max_steps: 2.5}}\n"
    )
    paths["train_bad_type"] = root / "train_bad_type.yaml"
    (root / "busy").mkdir()
    (root / "busy" / "notes.txt").write_text("mine")
    paths["busy"] = root / "busy"
    corrupt = root / "corrupt_config"
    corrupt.mkdir()
    (corrupt / "config.json").write_text('{"model_type": "bert", ')
    paths["corrupt_config"] = corrupt
    corrupt_plan = root / "corrupt_plan"
    tiny_bert().save_pretrained(corrupt_plan)
    (corrupt_plan / "pruning_plan.json").write_bytes(b"\x00\x01 not json")
    paths["corrupt_plan"] = corrupt_plan
    images = root / "images"
    for index, name in enumerate(["cat", "dog"]):
        (images / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (index * 100, 0, 0)).save(images / name / "0.png")
    paths["images"] = images
    (root / "not_a.zip").write_bytes(b"PK\x03\x04 truncated")
    paths["not_zip"] = root / "not_a.zip"
    (root / "labels.csv").write_text("cat/0.png,0\n")
    paths["labels"] = root / "labels.csv"
    (root / "latin1.csv").write_bytes("chat/\xe9t\xe9.png,0\n".encode("latin-1"))
    paths["latin1_csv"] = root / "latin1.csv"
    (root / "empty.csv").write_text("")
    paths["empty_csv"] = root / "empty.csv"
    (root / "results.json").write_text('{"variants": {')
    paths["bad_results"] = root / "results.json"
    (root / "weights.th").write_bytes(b"\x80\x02 not a checkpoint")
    paths["bad_checkpoint"] = root / "weights.th"
    glue = root / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "train.tsv").write_text("")
    (glue / "dev.tsv").write_text("sentence\tlabel\n")
    paths["glue"] = root / "glue"
    return paths


def _fill(arguments, files):
    return [str(files[part[1:-1]]) if part.startswith("{") and part.endswith("}") else part for part in arguments]


CASES = {
    "bad regex": (["prune", "--model", "{bert}", "--target-modules", "[", "--output", "{root}/o"],
                  "'[' is not a valid regular expression"),
    "bad exclude regex": (["prune", "--model", "{bert}", "--exclude-modules", "(a", "--output", "{root}/o"],
                          "--exclude-modules (pruning.exclude_modules) '(a' is not a valid regular expression"),
    "zero calibration in recipe": (["prune", "--model", "{bert}", "--config", "{zero_calibration}", "--output",
                                    "{root}/o"], "calibration.num_examples must be a positive integer"),
    "recipe YAML syntax": (["prune", "--model", "{bert}", "--config", "{bad_yaml}", "--output", "{root}/o"],
                           "is not valid YAML: line 3"),
    "sequences longer than the positions": (
        ["prune", "--model", "{short_bert}", "--method", "taylor", "--task", "sst2", "--max-seq-length", "64",
         "--output", "{root}/o"], "--max-seq-length asks for 64 tokens, but this bert model takes at most 16"),
    "sequences longer than DeBERTa's positions": (
        ["prune", "--model", "{deberta}", "--method", "fisher", "--structure", "heads", "--task", "sst2",
         "--max-seq-length", "4096", "--output", "{root}/o"], "asks for 4096 tokens, but this deberta-v2 model takes "
        "at most 64"),
    "output is a file": (["prune", "--model", "{bert}", "--output", "{a_file}"], "is a file, not a folder"),
    "output holds user files": (["prune", "--model", "{bert}", "--output", "{busy}", "--overwrite"],
                                "holds files hfprune did not write (notes.txt)"),
    "output is the input": (["prune", "--model", "{bert}", "--output", "{bert}", "--overwrite"],
                            "is or contains the input"),
    "missing model folder": (["prune", "--model", "{root}/no/such/model", "--output", "{root}/o"],
                             "no/such/model does not exist"),
    "model path is a file": (["prune", "--model", "{a_file}", "--output", "{root}/o"], "is a file; pass the model's"),
    "unknown task": (["prune", "--model", "{bert}", "--method", "taylor", "--task", "sst3", "--output", "{root}/o"],
                     "Unknown GLUE task 'sst3'"),
    "missing GLUE folder": (["prune", "--model", "{bert}", "--method", "taylor", "--task", "rte", "--data-dir",
                             "{glue}", "--output", "{root}/o"], "No RTE/ folder for GLUE task 'rte'"),
    "gpt2 heads": (["prune", "--model", "{gpt2}", "--structure", "heads", "--sparsity", "0.5", "--output",
                    "{root}/o"], "supports the encoders with an adapter only: model types bert"),
    "corrupt config.json": (["report", "--model", "{corrupt_config}", "--no-latency"],
                            "config.json is damaged (not valid JSON"),
    "corrupt pruning_plan.json": (["report", "--model", "{corrupt_plan}", "--no-latency"],
                                  "pruning_plan.json is damaged"),
    "report output is a folder": (["report", "--model", "{bert}", "--output", "{busy}"], "is a folder; pass a file"),
    "export output is a file": (["export", "--model", "{bert}", "--output", "{a_file}"], "is a file, not a folder"),
    "eval task and images": (["eval", "--model", "{bert}", "--task", "sst2", "--images", "{images}"],
                             "Pass either --task"),
    "eval image flag with task": (["eval", "--model", "{bert}", "--task", "sst2", "--labels", "{labels}"],
                                  "--labels belongs to image evaluation"),
    "zip that is not a zip": (["eval", "--model", "cifar_resnet20", "--num-classes", "2", "--images", "{not_zip}",
                               "--labels", "{labels}"], "is not a readable zip file"),
    "labels CSV not UTF-8": (["eval", "--model", "cifar_resnet20", "--num-classes", "2", "--images", "{images}",
                              "--labels", "{latin1_csv}"], "is not UTF-8 text (byte 0xe9"),
    "labels CSV empty": (["eval", "--model", "cifar_resnet20", "--num-classes", "2", "--images", "{images}",
                          "--labels", "{empty_csv}"], "empty.csv is empty"),
    "missing image folder": (["eval", "--model", "cifar_resnet20", "--num-classes", "2", "--images",
                              "{root}/nowhere"], "nowhere does not exist"),
    "unknown class folder": (["eval", "--model", "cifar_resnet20", "--num-classes", "2", "--images", "{images}",
                              "--classes", "cat,emu"], "Class folders ['dog']"),
    "damaged CNN checkpoint": (["eval", "--model", "cifar_resnet20", "--num-classes", "2", "--images", "{images}",
                                "--checkpoint", "{bad_checkpoint}"], "weights.th cannot be loaded into"),
    "train YAML syntax": (["train", "{bad_yaml}"], "is not valid YAML"),
    "train value type": (["train", "{train_bad_type}"], "max_steps must be an integer (e.g. 3); got 2.5"),
    "train bad override": (["train", "{train_bad_type}", "training.max_steps=["], "the value is not valid YAML"),
    "push missing folder": (["push", "{root}/nothing", "--repo-id", "u/m"], "nothing does not exist"),
    "plot corrupt results": (["plot", "{bad_results}", "--output", "{root}/p.png"], "results.json is damaged"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_clear_line(case, files, capsys):
    arguments, expected = CASES[case]
    code = main(_fill(arguments, files))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("hfprune: error: "), err
    assert sum(line.startswith("hfprune: error: ") for line in lines) == 1
    assert expected in lines[-1]
    assert not (files["root"] / "o").exists()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["prune", "--num-calibration", "0", "--output", "o"], "--num-calibration: must be a positive integer"),
        (["prune", "--max-seq-length", "-5", "--output", "o"], "must be a positive integer (1 or more), got -5"),
        (["report", "--model", "m", "--batch-size", "many"], "expected a positive integer, got 'many'"),
        (["eval", "--model", "m", "--task", "sst2", "--num-classes", "0"], "--num-classes: must be a positive"),
    ],
)
def test_bad_flag_values_are_argparse_errors(arguments, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err.splitlines()[-1] and "Traceback" not in err


def test_unexpected_error_prints_its_text_and_the_debug_hint(monkeypatch, capsys):
    import hfprune.cli as cli

    def boom(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_push", boom)
    monkeypatch.delenv("HFPRUNE_DEBUG", raising=False)
    assert main(["push", ".", "--repo-id", "u/m"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("hfprune: error: unexpected RuntimeError: boom second line (this may be a bug in "
                           "hfprune; rerun with HFPRUNE_DEBUG=1 for the traceback and report it)")  # fmt: skip
    monkeypatch.setenv("HFPRUNE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["push", ".", "--repo-id", "u/m"])


def test_glue_files_users_break(files, tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    cases = {
        b"": "is empty. Replace it with the original GLUE SST-2/train.tsv",
        b"a fine movie\t1\nawful\t0\n": "first line ['a fine movie', '1'] is not a header",
        b"sentence\tlabel\n": "has no data rows after its header",
        b"sentence\tlabel\ncaf\xe9 au lait\t1\n": "is not UTF-8 text (byte 0xe9",
        b"sentence\tlabel\ngood\t1\ncut off\t": "line 3: label '' is neither a class id",
    }
    for content, message in cases.items():
        (folder / "train.tsv").write_bytes(content)
        with pytest.raises(GlueDataError) as caught:
            load_glue("sst2", folder, splits="train")
        assert message in str(caught.value), (content, str(caught.value))


def test_damaged_checkpoint_in_run_glue_never_suggests_weights_only(files, tmp_path):
    run = tmp_path / "run"
    for step in (5, 10):
        _complete_checkpoint(run / f"checkpoint-{step}", step)
    (run / "checkpoint-10" / "hfprune_pruner.pt").write_bytes(b"PK\x03\x04 cut short")
    recipe = tmp_path / "resume.yaml"
    recipe.write_text(f"model: {files['bert']}\ntask: sst2\ndata_dir: {files['glue']}\n"
                      f"training: {{output_dir: {run}, resume_from_checkpoint: true, use_cpu: true}}\n")  # fmt: skip
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import run_glue
    finally:
        sys.path.remove(str(REPO / "scripts"))
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        assert run_glue.main([str(recipe)]) == 2
    message = err.getvalue().strip()
    assert message.startswith("run_glue: error: Checkpoint file ")
    assert "checkpoint-10/hfprune_pruner.pt is damaged" in message
    assert f"earlier checkpoint {run / 'checkpoint-5'}" in message and "weights_only" not in message


def test_subprocesses_show_no_traceback(files, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HFPRUNE_DEBUG", None)
    cli = subprocess.run([sys.executable, "-m", "hfprune.cli", "prune", "--model", str(files["bert"]),
                          "--target-modules", "[", "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith("hfprune: error: --target-modules")
    (tmp_path / "images.zip").write_bytes(b"not a zip at all")
    (tmp_path / "labels.csv").write_text("a.png,0\n")
    recipe = tmp_path / "image.yaml"
    recipe.write_text(f"model: cifar_resnet20\nnum_classes: 10\noutput_dir: {tmp_path / 'out'}\n"
                      f"eval_data: {tmp_path / 'images.zip'}\neval_labels: {tmp_path / 'labels.csv'}\n")  # fmt: skip
    script = subprocess.run([sys.executable, str(REPO / "scripts" / "run_image.py"), str(recipe)],
                            capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert script.returncode == 2 and "Traceback" not in script.stderr
    assert "is not a readable zip file" in script.stderr.strip().splitlines()[-1]
