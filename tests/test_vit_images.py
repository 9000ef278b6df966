"""A transformers ViT through the image paths the CNNs have: hfprune's ImageFolder evaluation (top-1/top-5) and
fine-pruning with `PruningTrainer` (group movement on heads, distillation from the dense model), then reload."""

import copy

import pytest
import torch
from PIL import Image

from hfprune import PruningConfig, PruningTrainer, load_pruned
from hfprune.schedules import CubicSchedule
from hfprune.vision import LabelledImages, eval_transform, evaluate_images

from .models import family_model


@pytest.fixture
def image_folder(tmp_path):
    generator = torch.Generator().manual_seed(0)
    for label in ("0", "1", "2"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(4):
            pixels = (torch.rand(24, 20, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.jpg")
    return tmp_path / "images"


def test_vit_eval_transform_follows_its_config(image_folder, tmp_path):
    model = family_model("vit")
    data = LabelledImages(image_folder, transform=eval_transform(model), num_classes=3)
    image, label = data[0]
    assert tuple(image.shape) == (3, 16, 16) and label == 0
    # A processor config beside the weights sets the normalization (ViT's is mean = std = 0.5).
    model.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], '
                                                              '"image_std": [0.5, 0.5, 0.5], "resample": 2}')
    model.config._name_or_path = str(tmp_path / "vit")
    normalized = LabelledImages(image_folder, transform=eval_transform(model), num_classes=3)[0][0]
    assert normalized.min() >= -1.0 and normalized.max() <= 1.0 and normalized.min() < -0.5


def test_vit_fine_pruned_with_the_trainer_evaluates_and_reloads(image_folder, tmp_path):
    teacher = family_model("vit")
    student = copy.deepcopy(teacher)
    transform = eval_transform(student)
    train = LabelledImages(image_folder, transform=transform, num_classes=3, as_dict=True)
    config = PruningConfig(importance="movement", structure="heads_and_neurons", sparsity=0.5,
                           schedule=CubicSchedule(end_step=4))  # fmt: skip
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=6,
                             use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
                             logging_steps=2, learning_rate=1e-3)  # fmt: skip
    trainer = PruningTrainer(model=student, args=args, train_dataset=train, pruning_config=config,
                             teacher_model=teacher)  # fmt: skip
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert {"kd_loss", "task_loss", "pruning/heads_kept", "pruning/neurons_kept"} <= set(last)
    # 37 neurons: half rounds to 18 removed, so 19/37 are kept.
    assert last["pruning/heads_kept"] == 0.5 and last["pruning/neurons_kept"] == pytest.approx(19 / 37)
    trainer.save_pruned_model(tmp_path / "pruned")
    evaluation = LabelledImages(image_folder, transform=transform, num_classes=3)
    result = evaluate_images(student, evaluation, batch_size=5)
    assert result["num_images"] == 12 and 0.0 <= result["top1"] <= result["top5"] == 1.0  # 3 classes: top-5 is all
    reloaded = load_pruned(tmp_path / "pruned")
    assert evaluate_images(reloaded, evaluation, batch_size=5) == result
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in teacher.parameters())
