"""Image data and evaluation: ImageNet-format folders (or a zip) with top-1/top-5, and a Trainer-ready wrapper.

Layouts read by `LabelledImages`:
- an ImageFolder tree (``root/<class name>/<image>``), class indices from ``class_names`` or sorted folder names;
- a folder or ``.zip`` of images plus a labels CSV whose first two columns are the image path and its class index
  (a header row is skipped), like ``ilsvrc2012_val_subset500_labels.csv`` or the CIFAR-10 JPEG zip's CSV.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, HfPruneError, MissingDataError


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")


class ImageDataError(HfPruneError, ValueError):
    """An image cannot be read, or a label is not a known class."""


class LabelledImages(Dataset):
    """Labelled images from an ImageFolder tree or from a folder/zip plus a labels CSV.

    Args:
        root (`str` or `os.PathLike`): Image folder, or a ``.zip`` of images.
        labels_csv (`str`, *optional*): CSV with image path (relative to ``root``) and class index columns.
        transform (`Callable`, *optional*): Applied to each PIL image (e.g. the model's timm eval transform).
        class_names (`Sequence[str]`, *optional*): Class folder names in label order (ImageFolder layout); folders
            not in it are an error. Default: sorted folder names.
        num_classes (`int`, *optional*): Labels must be below it (checked at construction).
        as_dict (`bool`, defaults to `False`): Yield ``{"pixel_values", "labels"}`` (for `transformers.Trainer`)
            instead of ``(image, label)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        labels_csv: str | os.PathLike | None = None,
        transform: Callable[[Any], Tensor] | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        as_dict: bool = False,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.as_dict = as_dict
        if not self.root.exists():
            raise MissingDataError(f"Image data {self.root} does not exist.")
        self._zip: zipfile.ZipFile | None = None
        if labels_csv is not None:
            self.samples = self._read_csv(Path(labels_csv))
        elif self.root.is_dir():
            self.samples = self._read_folder(class_names)
        else:
            raise ConfigError(f"{self.root} is a file; images in a zip need labels_csv=<csv of path,label>.")
        if not self.samples:
            raise MissingDataError(f"No images found in {self.root}.")
        if num_classes is not None:
            bad = [(path, label) for path, label in self.samples if not 0 <= label < num_classes]
            if bad:
                raise ImageDataError(
                    f"{len(bad)} images have labels outside [0, {num_classes}), e.g. {bad[0][0]} -> {bad[0][1]}. "
                    "Check that the labels CSV uses the model's class indices."
                )

    def _names_in_zip(self) -> set[str]:
        with zipfile.ZipFile(self.root) as archive:
            return set(archive.namelist())

    def _read_csv(self, path: Path) -> list[tuple[str, int]]:
        if not path.is_file():
            raise MissingDataError(f"Labels CSV {path} does not exist.")
        rows = list(csv.reader(path.read_text().splitlines()))
        if rows and (len(rows[0]) < 2 or not rows[0][1].strip().lstrip("-").isdigit()):
            rows = rows[1:]  # header
        samples = []
        for number, row in enumerate(rows, start=2):
            if len(row) < 2 or not row[1].strip().lstrip("-").isdigit():
                raise ImageDataError(f"{path}:{number}: expected '<image path>,<class index>', got {row[:2]}.")
            samples.append((row[0].strip(), int(row[1])))
        available = self._names_in_zip() if self.root.is_file() else None
        missing = [p for p, _ in samples if (p not in available if available is not None
                                             else not (self.root / p).is_file())]  # fmt: skip
        if missing:
            raise MissingDataError(
                f"{len(missing)} images listed in {path} are not in {self.root}, e.g. {missing[:3]}. Paths in the CSV "
                "must be relative to the image folder (or zip)."
            )
        return samples

    def _read_folder(self, class_names: Sequence[str] | None) -> list[tuple[str, int]]:
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        names = list(class_names) if class_names is not None else folders
        index = {name: i for i, name in enumerate(names)}
        unknown = [folder for folder in folders if folder not in index]
        if unknown:
            raise ImageDataError(
                f"Class folders {unknown[:5]} in {self.root} are not among the model's {len(names)} classes "
                f"(e.g. {names[:3]}). Rename them, or pass class_names in label order."
            )
        samples = []
        for folder in folders:
            for image in sorted((self.root / folder).rglob("*")):
                if image.suffix in IMAGE_SUFFIXES:
                    samples.append((str(image.relative_to(self.root)), index[folder]))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, relative: str) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            if self.root.is_file():
                if self._zip is None:  # opened lazily so the dataset pickles into DataLoader workers
                    self._zip = zipfile.ZipFile(self.root)
                data = io.BytesIO(self._zip.read(relative))
                return Image.open(data).convert("RGB")
            return Image.open(self.root / relative).convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ImageDataError(f"Cannot read image {self.root / relative}: {err}. Remove or replace it.") from err

    def __getitem__(self, index: int) -> Any:
        path, label = self.samples[index]
        image = self._open(path)
        pixels = self.transform(image) if self.transform is not None else image
        return {"pixel_values": pixels, "labels": label} if self.as_dict else (pixels, label)


def eval_transform(model: nn.Module) -> Callable[[Any], Tensor]:
    """The model's own evaluation preprocessing, from its timm data config (resize, crop, normalize)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model), is_training=False)


@torch.no_grad()
def evaluate_images(
    model: nn.Module, dataset: Dataset, batch_size: int = 64, num_workers: int = 0
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions) of ``model`` on ``(image, label)`` items, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    correct1 = correct5 = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        with torch.inference_mode():
            logits = model(images.to(device))
        logits = getattr(logits, "logits", logits).cpu()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(-1).sum())
        total += int(labels.numel())
    return {"top1": correct1 / total, "top5": correct5 / total, "num_images": total}


def image_card_evaluation(after: dict[str, float], before: dict[str, float] | None, dataset_name: str) -> Any:
    """A model card's `CardEvaluation` (top-1 as ``accuracy``, top-5 as ``top_5_accuracy``) from two
    `evaluate_images` results: the pruned model's and the dense model's."""
    from .hub import CardEvaluation

    def card_metrics(measured: dict[str, float]) -> dict[str, float]:
        return {"accuracy": measured["top1"], "top_5_accuracy": measured["top5"]}

    return CardEvaluation(
        task_type="image-classification",
        dataset_type="imagefolder",
        dataset_name=f"{dataset_name} ({int(after['num_images'])} images)",
        metrics=card_metrics(after),
        base_metrics=card_metrics(before) if before else {},
    )


class ImageClassifier(nn.Module):
    """Wraps a timm/torchvision classifier for `transformers.Trainer`: ``forward(pixel_values, labels)`` returns a
    dict with ``loss`` (cross-entropy when labels are given) and ``logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None, **_: Any) -> dict[str, Tensor]:
        logits = self.model(pixel_values)
        outputs = {"logits": logits}
        if labels is not None:
            outputs["loss"] = nn.functional.cross_entropy(logits, labels)
        return outputs
