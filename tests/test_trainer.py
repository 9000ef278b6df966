import json

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, TrainerCallback, TrainingArguments

from hfprune import ConfigError, CubicSchedule, NoPrunableModulesError, Pruner, PruningConfig
from hfprune.distillation import DistillationConfig
from hfprune.importance import MovementImportance
from hfprune.trainer import PRUNER_STATE_NAME, PruningTrainer

from .models import bert_batch, tiny_bert


def _dataset(n: int = 64, seq_len: int = 12) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (n, seq_len), generator=generator)
    # A learnable rule (label = first token is even) so losses and movement scores carry signal.
    labels = (ids[:, 0] % 2 == 0).long()
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * seq_len] * n, "labels": labels.tolist()}
    )


class _InterruptAt(TrainerCallback):
    """Stops training right after the checkpoint at ``step``, like a killed job (the LR schedule is unchanged)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _student():
    torch.manual_seed(0)
    return tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=12,
        logging_steps=4,
        use_cpu=True,
        report_to=[],
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
    )
    defaults.update(kwargs)
    return TrainingArguments(**defaults)


def test_magnitude_cubic_reaches_target_and_logs_terms(tmp_path):
    config = PruningConfig(sparsity=0.7, schedule=CubicSchedule(start_step=2, end_step=8, every=2))
    trainer = PruningTrainer(
        model=_student(),
        args=_args(tmp_path),
        train_dataset=_dataset(),
        pruning_config=config,
        teacher_model=tiny_bert(),
    )
    trainer.train()
    assert trainer.pruner.mask_sparsity() == pytest.approx(0.7, abs=1e-3)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"kd_loss", "task_loss", "pruning/sparsity"} <= set(logs[-1])
    sparsities = [entry["pruning/sparsity"] for entry in logs]
    assert sparsities == sorted(sparsities) and sparsities[0] < 0.7 and sparsities[-1] == pytest.approx(0.7, abs=1e-3)


def test_scores_get_their_own_param_group(tmp_path):
    config = PruningConfig(importance="movement", sparsity=0.5, schedule=CubicSchedule(end_step=6))
    trainer = PruningTrainer(
        model=_student(),
        args=_args(tmp_path, learning_rate=1e-4, max_steps=2),
        train_dataset=_dataset(),
        pruning_config=config,
        score_learning_rate=0.05,
    )
    trainer.create_optimizer()
    groups = trainer.optimizer.param_groups
    score_group = groups[-1]
    assert score_group["lr"] == 0.05 and score_group["weight_decay"] == 0.0
    assert {id(p) for p in score_group["params"]} == {id(p) for p in trainer.pruner.score_parameters()}
    assert len(score_group["params"]) == 12
    other = {id(p) for group in groups[:-1] for p in group["params"]}
    assert not other & {id(p) for p in score_group["params"]}
    assert all(group["lr"] == 1e-4 for group in groups[:-1])


def test_movement_scores_receive_straight_through_gradient():
    linear = torch.nn.Linear(3, 2, bias=False)
    model = torch.nn.Sequential(linear)
    pruner = Pruner(model, PruningConfig(importance="movement", sparsity=0.5, target_modules=["0"]))
    pruner.attach_()
    pruner.step(0)
    x = torch.randn(4, 3)
    model(x).sum().backward()
    weight = linear.parametrizations.weight.original
    # dL/dW' for L = sum(x W'^T) is sum over batch of x; scores get dL/dW' * W (Sanh et al. 2020, eq. 3).
    expected = (x.sum(0).expand(2, 3) * weight.detach()).reshape(-1)
    torch.testing.assert_close(pruner.score_parameters()[0].grad, expected)


def _soft_movement_run(tmp_path, final_lambda):
    importance = {"type": "soft_movement", "final_threshold": 0.1, "final_lambda": final_lambda}
    config = PruningConfig(importance=importance, schedule=CubicSchedule(end_step=10))
    trainer = PruningTrainer(
        model=_student(),
        args=_args(tmp_path, max_steps=30, logging_steps=10, learning_rate=1e-3),
        train_dataset=_dataset(),
        pruning_config=config,
        score_learning_rate=0.2,
    )
    trainer.train()
    return trainer


def test_soft_movement_sparsity_grows_with_lambda_and_keeps_min_density(tmp_path):
    none, low, high = (_soft_movement_run(tmp_path / str(lam), lam) for lam in (0.0, 0.01, 0.3))
    last = [entry for entry in high.state.log_history if "loss" in entry][-1]
    assert last["pruning/threshold"] == pytest.approx(0.1)
    assert last["pruning/lambda"] == pytest.approx(0.3)
    assert last["regularization_loss"] > 0
    assert none.pruner.mask_sparsity() < 0.05
    assert 0.2 < low.pruner.mask_sparsity() < high.pruner.mask_sparsity() < 0.999
    # No layer is cut off entirely: at least 0.5% of each module survives.
    assert max(high.pruner.sparsity().values()) <= 0.995


@pytest.mark.parametrize("importance", ["movement", "taylor"])
def test_resume_from_checkpoint_gives_the_same_masks(tmp_path, importance):
    config = PruningConfig(
        importance=importance if importance != "movement" else MovementImportance(update_every=1),
        sparsity=0.6,
        schedule=CubicSchedule(end_step=10, every=1),
    )
    full = PruningTrainer(
        model=_student(), args=_args(tmp_path / "full"), train_dataset=_dataset(), pruning_config=config
    )
    full.train()

    cut_args = _args(tmp_path / "cut", save_strategy="steps", save_steps=5)
    first = PruningTrainer(
        model=_student(), args=cut_args, train_dataset=_dataset(), pruning_config=config, callbacks=[_InterruptAt(5)]
    )
    first.train()
    assert first.state.global_step == 5
    checkpoint = tmp_path / "cut" / "checkpoint-5"
    assert (checkpoint / PRUNER_STATE_NAME).is_file()

    resumed = PruningTrainer(model=_student(), args=cut_args, train_dataset=_dataset(), pruning_config=config)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.pruner.global_step == full.pruner.global_step == 12
    full_masks, resumed_masks = full.pruner.masks(), resumed.pruner.masks()
    assert all(torch.equal(full_masks[name], resumed_masks[name]) for name in full_masks)
    assert resumed.pruner.mask_sparsity() == pytest.approx(0.6, abs=1e-3)


def test_resume_without_pruner_state_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    trainer = PruningTrainer(
        model=_student(), args=_args(tmp_path), train_dataset=_dataset(), pruning_config=PruningConfig()
    )
    with pytest.raises(Exception, match="has no hfprune_pruner.pt"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_save_pruned_model_is_an_ordinary_checkpoint(tmp_path):
    config = PruningConfig(importance="movement", sparsity=0.5, schedule=CubicSchedule(end_step=4))
    trainer = PruningTrainer(
        model=_student(),
        args=_args(tmp_path, max_steps=6),
        train_dataset=_dataset(),
        pruning_config=config,
        teacher_model=tiny_bert(),
        distillation_config=DistillationConfig(alpha=0.5),
    )
    trainer.train()
    batch = bert_batch(labels=False)
    trainer.model.eval()
    with torch.no_grad():
        masked = trainer.model(**batch).logits
    out = trainer.save_pruned_model(tmp_path / "final")
    keys = load_file(out / "model.safetensors")
    assert not any("parametrizations" in key or "scores" in key for key in keys)
    reloaded = BertForSequenceClassification.from_pretrained(out).eval()
    torch.testing.assert_close(reloaded(**batch).logits, masked)
    assert json.loads((out / "report.json").read_text())["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert json.loads((out / "distillation_config.json").read_text())["alpha"] == 0.5
    assert not any(p.requires_grad is False for p in reloaded.parameters())


def test_teacher_with_other_labels_or_vocab_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="num_labels"):
        PruningTrainer(model=_student(), args=_args(tmp_path), teacher_model=tiny_bert(num_labels=3))
    with pytest.raises(ConfigError, match="vocab_size"):
        PruningTrainer(model=_student(), args=_args(tmp_path), teacher_model=tiny_bert(vocab_size=120))
    with pytest.raises(ConfigError, match="without a teacher_model"):
        PruningTrainer(model=_student(), args=_args(tmp_path), distillation_config=DistillationConfig())


def test_block_movement_prunes_whole_blocks(tmp_path):
    from hfprune import Blocks

    config = PruningConfig(
        importance="movement",
        structure=Blocks(rows=8, cols=8),
        sparsity=0.5,
        target_modules=["query", "key", "value"],
        schedule=CubicSchedule(end_step=6),
    )
    trainer = PruningTrainer(
        model=_student(), args=_args(tmp_path, max_steps=8), train_dataset=_dataset(), pruning_config=config
    )
    # One score per 8x8 block of each 32x32 weight.
    assert all(p.numel() == 16 for p in trainer.pruner.score_parameters())
    trainer.train()
    trainer.pruner.make_permanent_()
    weight = trainer.model.bert.encoder.layer[0].attention.self.key.weight.detach()
    blocks = (weight == 0).reshape(4, 8, 4, 8)
    assert (blocks.all(dim=(1, 3)) | (~blocks).all(dim=(1, 3))).all()
    assert float((weight == 0).float().mean()) == pytest.approx(0.5)


def test_image_classifier_trains_with_distillation_and_bn_l1(tmp_path):
    import timm

    import hfprune.models  # noqa: F401
    from hfprune.vision import ImageClassifier

    torch.manual_seed(0)
    student = ImageClassifier(timm.create_model("cifar_resnet20"))
    teacher = ImageClassifier(timm.create_model("cifar_resnet20"))
    images = Dataset.from_dict(
        {"pixel_values": torch.randn(32, 3, 32, 32).tolist(), "labels": torch.randint(0, 10, (32,)).tolist()}
    ).with_format("torch")
    config = PruningConfig(
        sparsity=0.5, target_modules=r"model\.layer\d\.\d\.conv\d", schedule=CubicSchedule(end_step=3)
    )
    gammas_before = sum(float(m.weight.abs().sum()) for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trainer = PruningTrainer(
        model=student,
        args=_args(tmp_path, max_steps=4, logging_steps=2, learning_rate=1e-2),
        train_dataset=images,
        pruning_config=config,
        teacher_model=teacher,
        bn_l1=1e-2,
    )
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert {"kd_loss", "task_loss", "bn_l1_loss"} <= set(last)
    assert trainer.pruner.mask_sparsity() == pytest.approx(0.5, abs=1e-3)
    gammas_after = sum(float(m.weight.abs().sum()) for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert gammas_after < gammas_before


def test_head_movement_scores_get_the_unit_mask_gradient():
    """A head's learned score gets dL/d(mask on the head's output), i.e. movement summed over its weights."""
    model = _student()
    pruner = Pruner(model, PruningConfig(importance="movement", structure="heads", sparsity=0.5))
    pruner.attach_()
    name = "bert.encoder.layer.0.attention.output.dense"
    assert set(pruner.modules) == {name, name.replace("layer.0", "layer.1")}
    captured = {}
    dense = model.get_submodule(name)
    dense.register_forward_hook(lambda m, inputs, out: captured.update(x=inputs[0]) or inputs[0].retain_grad())
    model(**bert_batch()).loss.backward()
    context = captured["x"]
    expected = (context * context.grad).sum((0, 1)).reshape(4, 8).sum(1)
    torch.testing.assert_close(pruner.named_score_parameters()[name].grad, expected)


@pytest.mark.parametrize("importance", ["movement", "soft_movement", "magnitude"])
def test_heads_and_neurons_fine_pruning_compacts_on_save(tmp_path, importance):
    if importance == "soft_movement":
        importance = {"type": "soft_movement", "final_threshold": 0.2, "final_lambda": 1.0}
    config = PruningConfig(
        importance=importance,
        structure={"type": "heads_and_neurons", "round_to": 4},
        sparsity=0.5,
        scope="global",
        schedule=CubicSchedule(end_step=8, every=2),
    )
    trainer = PruningTrainer(
        model=_student(),
        args=_args(tmp_path, max_steps=10, learning_rate=1e-3),
        train_dataset=_dataset(),
        pruning_config=config,
        teacher_model=tiny_bert(),
        score_learning_rate=0.5,
    )
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert {"pruning/heads_kept", "pruning/neurons_kept", "pruning/encoder_flops"} <= set(last)
    plan = trainer.pruner.plan()
    if importance == "magnitude" or importance == "movement":
        assert sum(map(len, plan.heads)) == 4  # half of 2 x 4 heads, ranked globally
        assert last["pruning/encoder_flops"] < 0.6
    assert all(len(kept) % 4 == 0 or len(kept) == 37 for kept in plan.neurons)
    assert sum(map(len, plan.heads)) < 8 or sum(map(len, plan.neurons)) < 2 * 37  # something was removed
    batch = bert_batch(labels=False)
    trainer.model.eval()
    with torch.no_grad():
        masked = trainer.model(**batch).logits
    out = trainer.save_pruned_model(tmp_path / "final")
    assert json.loads((out / "pruning_plan.json").read_text())["heads"] == plan.heads
    from hfprune import load_pruned

    reloaded = load_pruned(out)
    assert reloaded.bert.encoder.layer[0].intermediate.dense.out_features == len(plan.neurons[0])
    torch.testing.assert_close(reloaded(**batch).logits, masked)


def test_head_pruning_resumes_with_the_same_masks_and_scores(tmp_path):
    config = PruningConfig(
        importance=MovementImportance(update_every=1),
        structure="heads_and_neurons",
        target_flops=0.5,
        schedule=CubicSchedule(end_step=10, every=1),
    )
    full = PruningTrainer(model=_student(), args=_args(tmp_path / "full"), train_dataset=_dataset(),
                          pruning_config=config)  # fmt: skip
    full.train()
    cut_args = _args(tmp_path / "cut", save_strategy="steps", save_steps=5)
    PruningTrainer(
        model=_student(), args=cut_args, train_dataset=_dataset(), pruning_config=config, callbacks=[_InterruptAt(5)]
    ).train()
    resumed = PruningTrainer(model=_student(), args=cut_args, train_dataset=_dataset(), pruning_config=config)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-5"))
    assert resumed.pruner.plan().heads == full.pruner.plan().heads
    assert resumed.pruner.plan().neurons == full.pruner.plan().neurons
    for name, scores in full.pruner.named_score_parameters().items():
        torch.testing.assert_close(resumed.pruner.named_score_parameters()[name], scores)


def test_bad_unit_pruning_configs_are_clear():
    with pytest.raises(ConfigError, match="'fisher' ranks units once"):
        Pruner(_student(), PruningConfig(importance="fisher", structure="heads"))
    with pytest.raises(ConfigError, match="every attention head of every layer"):
        Pruner(_student(), PruningConfig(importance="movement", structure="heads", sparsity=0.9))
    with pytest.raises(NoPrunableModulesError, match="none matched"):
        Pruner(_student(), PruningConfig(structure="heads", target_modules=r".*classifier"))
    only_layer_1 = Pruner(_student(), PruningConfig(structure="neurons", exclude_modules=["layer.0.output.dense"]))
    assert list(only_layer_1.modules) == ["bert.encoder.layer.1.output.dense"]
    with pytest.raises(ConfigError, match="fraction of the whole encoder"):
        Pruner(
            _student(), PruningConfig(structure="neurons", target_flops=0.5, exclude_modules=["layer.0.output.dense"])
        )
    with pytest.raises(ConfigError, match="soft_movement keeps what its threshold keeps"):
        Pruner(_student(), PruningConfig(importance="soft_movement", structure="heads", target_params=0.5))
    with pytest.raises(ConfigError, match="scope='local'"):
        Pruner(_student(), PruningConfig(structure={"type": "heads", "uniform": True}, scope="global"))


def test_parameter_target_during_training_sets_the_final_unit_sparsity():
    from hfprune.structured import encoder_dims

    pruner = Pruner(_student(), PruningConfig(structure="heads_and_neurons", target_params=0.5))
    pruner.apply_sparsity_(pruner.final_sparsity)
    plan, dims = pruner.plan(), encoder_dims(pruner.model)
    kept = sum(map(len, plan.heads)) * dims.head_params() + sum(map(len, plan.neurons)) * dims.neuron_params()
    total = 2 * (4 * dims.head_params() + 37 * dims.neuron_params())
    assert kept / total == pytest.approx(0.5, abs=0.01)  # per-layer counts round to whole units


def test_the_task_loss_is_a_batch_mean_whatever_the_accumulation(tmp_path):
    # BERT's heads take loss kwargs but ignore the global item count transformers passes; left to transformers, two
    # accumulated half batches would give twice the gradient of one whole batch, and on N processes the task term
    # would weigh N times the distillation term. Both runs see the same 8 examples per step, in order.
    def run(batch, accumulation):
        torch.manual_seed(1)
        teacher = tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        trainer = PruningTrainer(
            model=_student(), teacher_model=teacher, train_dataset=_dataset(16),
            args=_args(tmp_path / f"b{batch}", per_device_train_batch_size=batch, max_steps=2, logging_steps=1,
                       gradient_accumulation_steps=accumulation, train_sampling_strategy="sequential"),
        )  # fmt: skip
        trainer.train()
        return [entry for entry in trainer.state.log_history if "grad_norm" in entry]

    whole, halves = run(8, 1), run(4, 2)
    for one, two in zip(whole, halves, strict=True):
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert two["task_loss"] == pytest.approx(one["task_loss"], rel=1e-4)
