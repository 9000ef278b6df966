"""The last-mile subcommands: train dispatch, eval, export, push (offline)."""

import json

import pytest
from PIL import Image

from hfprune import PruningConfig, PruningPlan, compact_
from hfprune.cli import main
from hfprune.hub import save_pruned
from hfprune.push import commit_operations

from .models import tiny_bert


@pytest.fixture
def compacted_folder(tmp_path):
    model = tiny_bert()
    plan = PruningPlan.dense(model)
    plan.heads = [[0, 1], [2]]
    plan = PruningPlan.from_dict(plan.to_dict())
    compact_(model, plan)
    return save_pruned(model, tmp_path / "pruned", pruning_config=PruningConfig(structure="heads"), plan=plan), model


def test_push_without_token_is_clear_and_keeps_folder(compacted_folder, monkeypatch, capsys):
    folder, _ = compacted_folder
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = sorted(p.name for p in folder.iterdir())
    assert main(["push", str(folder), "--repo-id", "me/tiny"]) == 2
    assert "No Hugging Face token" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_push_commits_every_file_in_one_commit(compacted_folder, monkeypatch, capsys):
    folder, _ = compacted_folder
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["repo"] = (repo_id, private)

        def create_branch(self, repo_id, branch, exist_ok=False):
            calls["branch"] = branch

        def create_commit(self, repo_id, operations, commit_message, revision=None):
            calls["files"] = sorted(op.path_in_repo for op in operations)
            card = next(op for op in operations if op.path_in_repo == "README.md")
            with card.as_file() as handle:
                calls["card"] = handle.read().decode()
            calls["revision"] = revision
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_test")
    assert main(["push", str(folder), "--repo-id", "me/tiny", "--private", "--revision", "v1"]) == 0
    assert calls["repo"] == ("me/tiny", True) and calls["branch"] == "v1" and calls["revision"] == "v1"
    assert calls["files"] == sorted(["README.md", "config.json", "kept_structure.png", "model.safetensors",
                                     "pruning_config.json", "pruning_plan.json"])  # fmt: skip
    # The uploaded card loads from the repository; the local card is unchanged.
    assert 'hfprune.load_pruned("me/tiny")' in calls["card"] or "hfprune.load_pruned('me/tiny')" in calls["card"]
    assert "path/to/this/folder" in (folder / "README.md").read_text()
    assert "https://hub/me/tiny/commit/1" in capsys.readouterr().out


def test_push_to_unreachable_hub_is_clear(compacted_folder, monkeypatch, capsys):
    folder, _ = compacted_folder
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_test")
    # HF_HUB_OFFLINE=1 (conftest) makes every hub call fail at once.
    assert main(["push", str(folder), "--repo-id", "me/tiny"]) == 2
    assert "Could not push" in capsys.readouterr().err
    assert len(commit_operations(folder)) == 6  # the folder is intact: weights, configs, plan, card, figure


def test_export_cli_remote_code(compacted_folder, tmp_path):
    folder, model = compacted_folder
    assert main(["export", "--model", str(folder), "--output", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "modeling_hfprune.py").is_file()
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_hfprune.")
    assert main(["export", "--model", str(folder), "--output", str(tmp_path / "plain"), "--format", "plain"]) == 2


def test_eval_image_folder(tmp_path, capsys):
    for label in range(10):
        (tmp_path / "imgs" / f"c{label}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (label * 20, 0, 0)).save(tmp_path / "imgs" / f"c{label}" / "a.png")
    assert main(["eval", "--model", "cifar_resnet20", "--num-classes", "10", "--images", str(tmp_path / "imgs")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 10 and 0 <= result["top1"] <= result["top5"] <= 1


def test_train_rejects_unknown_recipe_kind(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: x\n")
    assert main(["train", str(recipe)]) == 2
    assert "neither a text recipe (has `task` or `dataset`)" in capsys.readouterr().err


def test_eval_needs_one_data_source(capsys):
    assert main(["eval", "--model", "x"]) == 2
    assert "either --task" in capsys.readouterr().err
