"""The lottery ticket search of an image recipe (``lottery:`` section): `hfprune.find_lottery_ticket` with each
round trained by a `transformers.Trainer` on the recipe's data and evaluated on its evaluation data.

    hfprune train configs/image/cifar_resnet20_lottery.yaml        # run again to resume at the first unfinished round
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..lottery import LotteryConfig, find_lottery_ticket, rewind_callback


def prunable_layer_names(model: nn.Module) -> list[str]:
    """Every convolution and linear layer: the lottery papers prune all of them (the recipe may narrow it)."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def run_lottery_recipe(recipe: Any) -> dict[str, Any]:
    """Run (or resume) the search an `hfprune.recipes.ImageRecipe` with a ``lottery:`` section describes; rounds go
    to ``output_dir/round_XX``, the records of all rounds to ``output_dir/lottery_results.json``."""
    from transformers import Trainer, set_seed

    from ..channels import create_base_model
    from ..recipes import _subset, build_training_arguments
    from ..vision import ImageClassifier, LabelledImages, eval_transform, evaluate_images, model_class_names

    seed = int((recipe.training or {}).get("seed", 42))
    set_seed(seed)
    model = create_base_model(recipe.model, recipe.num_classes)
    if recipe.checkpoint_path:
        from ..models.cifar_resnet import load_cifar_checkpoint

        load_cifar_checkpoint(model, recipe.checkpoint_path)
    section = dict(recipe.lottery)
    pruning = dict(section.pop("pruning", None) or {})
    pruning.setdefault("target_modules", prunable_layer_names(model))
    config = LotteryConfig.from_dict({**section, "pruning": pruning})
    transform = eval_transform(model)
    class_names = recipe.classes or model_class_names(model)

    def images(root: str | None, labels: str | None, indices: str | None, as_dict: bool) -> Any:
        if root is None:
            return None
        return _subset(LabelledImages(root, labels, transform, class_names=class_names, num_classes=recipe.num_classes,
                                      as_dict=as_dict), indices)  # fmt: skip

    train_set = images(recipe.train_data, recipe.train_labels, recipe.train_indices, as_dict=True)
    eval_set = images(recipe.eval_data, recipe.eval_labels, recipe.eval_indices, as_dict=False)
    output = Path(recipe.output_dir)

    def train(model: nn.Module, round_index: int, after_step: Any) -> dict[str, Any]:
        set_seed(seed)  # every round sees the same batches: rounds differ by their masks only
        with tempfile.TemporaryDirectory(prefix="hfprune-lottery-round-") as scratch:
            # Rounds are the checkpoints (written whole when a round ends); no Trainer checkpoints inside one.
            args = build_training_arguments({**recipe.training, "output_dir": scratch, "save_strategy": "no"})
            trainer = Trainer(model=ImageClassifier(model), args=args, train_dataset=train_set,
                              callbacks=[rewind_callback(after_step)])  # fmt: skip
            result = trainer.train()
        model.eval()
        metrics: dict[str, Any] = {"train_loss": result.training_loss, "steps": trainer.state.global_step}
        if eval_set is not None:
            metrics.update(evaluate_images(model, eval_set, recipe.batch_size))
        print(f"hfprune lottery round {round_index}: " + json.dumps(metrics, sort_keys=True), flush=True)
        return metrics

    if train_set is None:
        raise ConfigError("A lottery section needs train_data: every round trains the network.")
    records = find_lottery_ticket(model, config, train, output)
    summary = {"model": recipe.model, "rounds": records}
    (output / "lottery_results.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
