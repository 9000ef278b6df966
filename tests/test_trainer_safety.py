"""PruningTrainer loses nothing: checkpoints keep their pruner state through rotation, resumes use a complete
checkpoint written with the same config, and saving the pruned model never deletes a training run."""

import pytest
import transformers.trainer

from hfprune import ConfigError, CubicSchedule, HfPruneError, PruningConfig
from hfprune.errors import HfPruneWarning
from hfprune.hub import OutputDirectoryError
from hfprune.trainer import PRUNER_STATE_NAME, PruningTrainer

from .test_trainer import _args, _dataset, _student


CONFIG = PruningConfig(sparsity=0.6, schedule=CubicSchedule(end_step=10, every=1))


def _trainer(output_dir, config=CONFIG, **kwargs):
    args = _args(output_dir, save_strategy="steps", save_steps=4, save_total_limit=1, **kwargs)
    return PruningTrainer(model=_student(), args=args, train_dataset=_dataset(), pruning_config=config)


def test_save_pruned_model_into_the_training_folder_keeps_every_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.train()
    with pytest.raises(OutputDirectoryError, match=r"did not write \(checkpoint-4"):
        trainer.save_pruned_model(tmp_path)
    assert (tmp_path / "checkpoint-4" / PRUNER_STATE_NAME).is_file()
    # Refused before the masks were merged: the same trainer still saves into a new folder.
    out = trainer.save_pruned_model(tmp_path / "pruned")
    assert (out / "model.safetensors").is_file() and (tmp_path / "checkpoint-4").is_dir()
    with pytest.raises(OutputDirectoryError, match="--overwrite"):
        trainer.save_pruned_model(tmp_path / "pruned")


def test_pruner_state_is_in_the_checkpoint_before_older_ones_are_deleted(tmp_path, monkeypatch):
    # A kill at the moment transformers rotates checkpoints (save_total_limit) must leave a resumable run.
    def killed_while_rotating(**kwargs):
        raise KeyboardInterrupt("killed while rotating")

    trainer = _trainer(tmp_path, max_steps=8)
    calls = {"n": 0}
    original = transformers.trainer.rotate_checkpoints

    def rotate(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            killed_while_rotating(**kwargs)
        return original(**kwargs)

    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", rotate)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "checkpoint-8" / PRUNER_STATE_NAME).is_file()
    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", original)
    resumed = _trainer(tmp_path, max_steps=12)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.pruner.global_step == 12


def test_resume_skips_an_incomplete_newest_checkpoint(tmp_path):
    _trainer(tmp_path, max_steps=4).train()
    # What a kill in the middle of saving checkpoint-8 leaves: weights but no trainer state.
    broken = tmp_path / "checkpoint-8"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    resumed = _trainer(tmp_path, max_steps=6)
    with pytest.warns(HfPruneWarning, match="Resuming from checkpoint-4: the newer checkpoint-8 are incomplete"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.pruner.global_step == 6


def test_resume_with_a_changed_pruning_config_is_refused(tmp_path):
    _trainer(tmp_path, max_steps=4).train()
    changed = PruningConfig(sparsity=0.8, schedule=CubicSchedule(end_step=10, every=1))
    with pytest.raises(ConfigError, match=r"different pruning config \(sparsity: checkpoint 0.6, now 0.8\)"):
        _trainer(tmp_path, config=changed, max_steps=6).train(resume_from_checkpoint=True)


def test_a_damaged_pruner_state_says_so_and_never_suggests_unsafe_loading(tmp_path):
    _trainer(tmp_path, max_steps=4).train()
    (tmp_path / "checkpoint-4" / PRUNER_STATE_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(HfPruneError, match="is damaged") as error:
        _trainer(tmp_path, max_steps=6).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert "weights_only" not in str(error.value)


def test_resume_true_without_any_complete_checkpoint_is_clear(tmp_path):
    (tmp_path / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(HfPruneError, match=r"No complete checkpoint .* \(incomplete: checkpoint-2\)"):
        _trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=True)


@pytest.mark.parametrize("resume", ["true", "path"])
def test_resuming_a_pruning_checkpoint_without_a_pruning_config_names_the_config(tmp_path, resume):
    # It used to end in torch's "loaded state dict has a different number of parameter groups".
    movement = PruningConfig(importance="movement", sparsity=0.6, schedule=CubicSchedule(end_step=10, every=1))
    _trainer(tmp_path, config=movement, max_steps=4).train()
    plain = _trainer(tmp_path, config=None, max_steps=6)
    target = True if resume == "true" else str(tmp_path / "checkpoint-4")
    with pytest.raises(
        ConfigError,
        match=r"checkpoint-4 was written by a PruningTrainer with a pruning config "
        r"\(PruningConfig\(importance=MovementImportance.*sparsity=0\.6\)\), but "
        r"this trainer has none",
    ):
        plain.train(resume_from_checkpoint=target)


def test_pruning_under_fsdp1_or_zero3_is_refused():
    from hfprune import ConfigError, Pruner, PruningConfig
    from hfprune.trainer import refuse_sharded_pruning

    from .models import tiny_bert

    movement = Pruner(tiny_bert(), PruningConfig(sparsity=0.5, importance="movement"))
    taylor = Pruner(tiny_bert(), PruningConfig(sparsity=0.5, importance="taylor"))
    with pytest.raises(ConfigError, match=r"does not prune under FSDP1: FSDP1 flattens.*Use FSDP2"):
        refuse_sharded_pruning(movement, fsdp_version=1, zero_stage=None)
    with pytest.raises(ConfigError, match=r"does not prune under DeepSpeed ZeRO-3: .*Use ZeRO-2 .*FSDP2"):
        refuse_sharded_pruning(movement, fsdp_version=None, zero_stage=3)
    # tests/test_trainer_sharded.py runs these.
    refuse_sharded_pruning(movement, fsdp_version=2, zero_stage=None)
    refuse_sharded_pruning(taylor, fsdp_version=2, zero_stage=None)
    refuse_sharded_pruning(movement, fsdp_version=None, zero_stage=2)
    refuse_sharded_pruning(taylor, fsdp_version=None, zero_stage=2)
    refuse_sharded_pruning(None, fsdp_version=1, zero_stage=3)  # no pruning: nothing of hfprune to refuse
