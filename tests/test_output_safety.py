"""Nothing is lost: overwrite replaces only hfprune's own outputs, never an input, and a kill at any moment of a
save leaves the old or the new model at the destination (never neither, never a mix)."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hfprune.errors import HfPruneWarning
from hfprune.hub import (
    MANIFEST_NAME,
    OutputDirectoryError,
    atomic_directory,
    check_output_directory,
    recover_interrupted_save,
)


def _write_output(path: Path, content: str) -> None:
    with atomic_directory(path, overwrite=True) as staging:
        (staging / "model.safetensors").write_text(content)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_overwrite_replaces_an_earlier_hfprune_output(tmp_path):
    _write_output(tmp_path / "out", "old")
    _write_output(tmp_path / "out", "new")
    assert (tmp_path / "out" / "model.safetensors").read_text() == "new"
    assert _names(tmp_path) == ["out"]  # no hidden leftovers beside it


@pytest.mark.parametrize(
    "foreign",
    [
        "notes.txt",  # the user's own file
        "checkpoint-500/",  # training checkpoints (save_pruned_model(args.output_dir))
        "run-1/",  # a parent folder holding earlier runs
    ],
)
def test_overwrite_refuses_folders_holding_what_hfprune_did_not_write(tmp_path, foreign):
    target = tmp_path / "out"
    _write_output(target, "model")
    entry = target / foreign.rstrip("/")
    entry.mkdir() if foreign.endswith("/") else entry.write_text("mine")
    with pytest.raises(OutputDirectoryError, match=rf"holds files hfprune did not write \({entry.name}\)"):
        _write_output(target, "new")
    assert entry.exists() and (target / "model.safetensors").read_text() == "model"


def test_overwrite_refuses_an_unrelated_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("x")
    with pytest.raises(OutputDirectoryError, match="did not write"):
        _write_output(tmp_path / "data", "new")
    assert (tmp_path / "data" / "train.tsv").read_text() == "x"


def test_legacy_outputs_without_a_manifest_can_be_replaced(tmp_path):
    # Folders written before the manifest existed: only hfprune's own file names.
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "model.safetensors", "pruning_config.json", "README.md", "vocab.txt"):
        (old / name).write_text("{}")
    _write_output(old, "new")
    assert _names(old) == [MANIFEST_NAME, "model.safetensors"]


@pytest.mark.parametrize("where", ["same", "parent"])
def test_output_never_replaces_the_input(tmp_path, where):
    source = tmp_path / "model"
    _write_output(source, "dense")
    output = source if where == "same" else tmp_path
    with pytest.raises(OutputDirectoryError, match="is or contains the input"):
        check_output_directory(output, overwrite=True, inputs=[source])
    assert (source / "model.safetensors").read_text() == "dense"


def test_an_existing_file_is_not_a_folder(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputDirectoryError, match="is a file, not a folder"):
        check_output_directory(tmp_path / "out", overwrite=True)


def test_save_pruned_refuses_the_folder_the_model_came_from(tmp_path):
    import hfprune
    from hfprune import PruningConfig
    from tests.models import tiny_bert

    model = tiny_bert()
    model.save_pretrained(tmp_path / "dense")
    (tmp_path / "dense" / "pruning_config.json").write_text("{}")  # looks like an hfprune output, still an input
    loaded = type(model).from_pretrained(tmp_path / "dense")
    with pytest.raises(OutputDirectoryError, match="is or contains the input"):
        hfprune.hub.save_pruned(loaded, tmp_path / "dense", pruning_config=PruningConfig(), overwrite=True)
    assert (tmp_path / "dense" / "model.safetensors").is_file()


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import hfprune.hub as hub

    target, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "between_renames":
        hub._exchange_function = lambda: None  # a filesystem without atomic exchange: two renames
        original = Path.rename
        def rename(self, other):
            result = original(self, other)
            if ".old-" in str(other):  # the old model was moved aside; the new one is not in place yet
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        Path.rename = rename
    elif mode == "after_swap":
        hub.shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # before the old one is removed
    with hub.atomic_directory(target, overwrite=True) as staging:
        (staging / "model.safetensors").write_text("new")
    """
)


@pytest.mark.parametrize("mode, expected", [("between_renames", "old"), ("after_swap", "new")])
def test_a_kill_at_the_dangerous_moment_loses_nothing(tmp_path, mode, expected):
    target = tmp_path / "out"
    _write_output(target, "old")
    run = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(target), mode], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    # The next save (or any check of the folder) finishes what the killed one left: the old model is back in place
    # if it had been moved aside, leftovers are removed.
    if mode == "between_renames":
        assert not target.exists()  # what a user would find after the kill
        with pytest.warns(HfPruneWarning, match="Restored .* interrupted"):
            recover_interrupted_save(target)
    else:
        recover_interrupted_save(target)
    assert (target / "model.safetensors").read_text() == expected
    assert _names(tmp_path) == ["out"]
    _write_output(target, "third")
    assert (target / "model.safetensors").read_text() == "third" and _names(tmp_path) == ["out"]


_SLOW_SAVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import hfprune.hub as hub

    with hub.atomic_directory(Path(sys.argv[1]), overwrite=True) as staging:
        (staging / "model.safetensors").write_text("partial")
        print("writing", flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_and_ctrl_c_during_a_save_leave_the_old_model_and_no_leftovers(tmp_path, signum):
    target = tmp_path / "out"
    _write_output(target, "old")
    child = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signum)
    code = child.wait(timeout=60)
    assert code != 0
    assert (target / "model.safetensors").read_text() == "old"
    deadline = time.time() + 5
    while _names(tmp_path) != ["out"] and time.time() < deadline:
        time.sleep(0.05)
    assert _names(tmp_path) == ["out"]


def test_an_image_recipe_refuses_a_folder_holding_the_users_file_before_any_work(tmp_path):
    from hfprune.recipes import ImageRecipe, train_image

    out = tmp_path / "out"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    recipe = ImageRecipe(model="cifar_resnet20", num_classes=10, output_dir=str(out), pruning={"sparsity": 0.5})
    with pytest.raises(OutputDirectoryError, match=r"did not write \(my_notes.txt\)"):
        train_image(recipe)
    assert _names(out) == ["my_notes.txt"]


def test_a_glue_recipe_refuses_an_output_holding_others_files_before_training(tmp_path, bert_folder):
    from hfprune.recipes import GlueRecipe, train_glue

    out = tmp_path / "out"
    (out / "checkpoint-500").mkdir(parents=True)
    recipe = GlueRecipe(model=str(bert_folder), task="sst2", output_dir=str(out),
                        training={"output_dir": str(tmp_path / "run"), "max_steps": 1, "use_cpu": True})  # fmt: skip
    with pytest.raises(OutputDirectoryError, match=r"did not write \(checkpoint-500\)"):
        train_glue(recipe)
    assert _names(out) == ["checkpoint-500"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("final", [".", ".."])
def test_a_glue_recipe_whose_output_is_its_training_folder_is_refused_when_read(tmp_path, final):
    # With an empty training folder this used to pass the up-front check, train every step, then fail to save.
    from hfprune.errors import ConfigError
    from hfprune.recipes import GlueRecipe

    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"output_dir \(.*\) is, or contains, training\.output_dir"):
        GlueRecipe(model="m", task="sst2", output_dir=str(run / final),
                   training={"output_dir": str(run), "max_steps": 1})  # fmt: skip
    assert not run.exists()


@pytest.fixture
def bert_folder(tmp_path):
    from tests.models import tiny_bert

    tiny_bert().save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
def test_saved_folders_get_the_mode_the_umask_gives_new_folders(tmp_path, umask, mode):
    # The hidden build folder is private (0700); swapped into place it kept that mode, so a model saved on a shared
    # server could not be read by the group serving it.
    previous = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == mode
