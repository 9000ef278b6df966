"""Image data and evaluation: ImageNet-format folders (or a zip) with top-1/top-5, and a Trainer-ready wrapper.

Layouts read by `LabelledImages`:
- an ImageFolder tree (``root/<class name>/<image>``). A folder's label is its index in the model's class list
  (``class_names``, e.g. from `model_class_names`), never its position among the folders present: with one class
  folder missing, positions would shift every later label. Without class names, folders named by integers are
  those class indices, ImageNet synset folders (``n01440764``) of a 1000-class model follow timm's ImageNet-1k
  order, and other folders must be all ``num_classes`` of them (sorted names = label order), else it is an error;
- a folder or ``.zip`` of images plus a labels CSV whose first two columns are the image path and its class index
  (a header row is skipped), like ``ilsvrc2012_val_subset500_labels.csv`` or the CIFAR-10 JPEG zip's CSV.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zipfile
import zlib
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
        class_names (`Sequence[str]`, *optional*): Class folder names in label order (ImageFolder layout), e.g.
            `model_class_names(model)` or a recipe's ``classes:``; folders not in it are an error, missing ones are
            fine. Default: see the module docstring (integer names, ImageNet synsets, or all folders sorted).
        num_classes (`int`, *optional*): The model's number of classes. Labels must be below it (checked at
            construction), and without ``class_names`` an ImageFolder tree must have this many class folders.
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
        self._class_to_idx: dict[str, int] = {}
        if labels_csv is not None:
            self.samples = self._read_csv(Path(labels_csv))
        elif self.root.is_dir():
            self.samples = self._read_folder(class_names, num_classes)
        else:
            raise ConfigError(f"{self.root} is a file; images in a zip need labels_csv=<csv of path,label>.")
        if not self.samples:
            raise MissingDataError(
                f"No images found in {self.root} (image files end in {', '.join(IMAGE_SUFFIXES[:5])}, ...)."
            )
        if num_classes is not None:
            bad = [(path, label) for path, label in self.samples if not 0 <= label < num_classes]
            if bad:
                raise ImageDataError(
                    f"{len(bad)} images have labels outside [0, {num_classes}), e.g. {bad[0][0]} -> {bad[0][1]}. "
                    "Check that the labels CSV uses the model's class indices."
                )

    def _names_in_zip(self) -> set[str]:
        try:
            with zipfile.ZipFile(self.root) as archive:
                return set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as err:
            raise ImageDataError(
                f"{self.root} is not a readable zip file ({err}). Pass a folder of images or an intact .zip "
                "(download or copy it again)."
            ) from None

    def _read_csv(self, path: Path) -> list[tuple[str, int]]:
        if not path.is_file():
            raise MissingDataError(f"Labels CSV {path} does not exist (or is a folder).")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise ImageDataError(
                f"Labels CSV {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}). "
                "Save it as UTF-8 with rows '<image path>,<class index>'."
            ) from None
        try:
            rows = [row for row in csv.reader(text.splitlines()) if row]
        except csv.Error as err:
            raise ImageDataError(f"Labels CSV {path} is not a CSV file ({err}).") from None
        if not rows:
            raise ImageDataError(f"Labels CSV {path} is empty; it needs rows '<image path>,<class index>'.")
        if len(rows[0]) < 2 or not rows[0][1].strip().lstrip("-").isdigit():
            rows = rows[1:]  # header
            if not rows:
                raise ImageDataError(f"Labels CSV {path} has a header but no rows '<image path>,<class index>'.")
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

    def _read_folder(self, class_names: Sequence[str] | None, num_classes: int | None) -> list[tuple[str, int]]:
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise MissingDataError(
                f"{self.root} has no class folders. Expected the ImageFolder layout <root>/<class name>/<image>, or "
                "pass a labels CSV (--labels / eval_labels) for a flat folder of images."
            )
        index = folder_label_index(folders, class_names, num_classes, where=str(self.root))
        self._class_to_idx = dict(index)
        samples = []
        for folder in folders:
            for image in sorted((self.root / folder).rglob("*")):
                if image.suffix in IMAGE_SUFFIXES:
                    samples.append((str(image.relative_to(self.root)), index[folder]))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class folder name -> label, for the folders present (ImageFolder layout; empty for a labels CSV)."""
        return dict(self._class_to_idx)

    def _open(self, relative: str) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            if self.root.is_file():
                if self._zip is None:  # opened lazily so the dataset pickles into DataLoader workers
                    self._zip = zipfile.ZipFile(self.root)
                data = io.BytesIO(self._zip.read(relative))
                return Image.open(data).convert("RGB")
            return Image.open(self.root / relative).convert("RGB")
        except (UnidentifiedImageError, OSError, zipfile.BadZipFile, zlib.error, EOFError, KeyError) as err:
            raise ImageDataError(f"Cannot read image {self.root / relative}: {err}. Remove or replace it.") from err

    def __getitem__(self, index: int) -> Any:
        path, label = self.samples[index]
        image = self._open(path)
        pixels = self.transform(image) if self.transform is not None else image
        return {"pixel_values": pixels, "labels": label} if self.as_dict else (pixels, label)


_GENERIC_LABEL = re.compile(r"LABEL_\d+|\d+")
_SYNSET = re.compile(r"n\d{8}")
_FIX = ("pass the model's class list in label order (recipe key `classes:`, `hfprune eval --classes a,b,...` or "
        "a file with one name per line, LabelledImages(class_names=...))")  # fmt: skip


def model_class_names(model: nn.Module) -> list[str] | None:
    """The model's class names by label index, when it has real ones; ``None`` for generic or absent names.

    Looked up in order: a ``class_names`` attribute, timm's ``pretrained_cfg["label_names"]``, and a transformers
    ``config.id2label`` (``LABEL_0``-style names are generic and ignored). Names for a different number of classes
    than the model's head (a re-headed model) are ignored too."""
    names = getattr(model, "class_names", None)
    if names is None:
        names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if names is None:
        id2label = getattr(getattr(model, "config", None), "id2label", None)
        if id2label:
            names = [id2label[i] for i in sorted(id2label)]
    if not names:
        return None
    names = [str(name) for name in names]
    if all(_GENERIC_LABEL.fullmatch(name) for name in names) or len(set(names)) != len(names):
        return None
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int) and num_classes != len(names):
        return None
    return names


def folder_label_index(
    folders: Sequence[str], class_names: Sequence[str] | None, num_classes: int | None, where: str = "the data"
) -> dict[str, int]:
    """Label of each class folder: its index in ``class_names``; without names, the folder's integer name, its
    ImageNet-1k synset index (1000 classes), or, when all ``num_classes`` folders are present, its sorted position.

    Raises:
        `ImageDataError`: A folder is not one of the classes, or folders are missing and nothing says which (their
            sorted positions would shift the labels of every later class).
    """
    folders = sorted(folders)
    if class_names is None and num_classes == 1000 and all(_SYNSET.fullmatch(f) for f in folders):
        from timm.data import ImageNetInfo

        class_names = list(ImageNetInfo().label_names())
    if class_names is not None:
        names = [str(name) for name in class_names]
        if num_classes is not None and len(names) != num_classes:
            raise ImageDataError(
                f"{len(names)} class names were given for a model with {num_classes} classes; give one per class."
            )
        index = {name: i for i, name in enumerate(names)}
        unknown = [folder for folder in folders if folder not in index]
        if unknown:
            raise ImageDataError(
                f"Class folders {unknown[:5]} in {where} are not among the model's {len(names)} classes "
                f"(e.g. {names[:3]}). Rename or remove them, or {_FIX}."
            )
        return {folder: index[folder] for folder in folders}
    if all(folder.isdigit() for folder in folders):
        labels = {folder: int(folder) for folder in folders}
        if num_classes is not None and max(labels.values()) >= num_classes:
            raise ImageDataError(
                f"Class folder {max(labels, key=labels.get)!r} in {where} is not a class index of a model with "
                f"{num_classes} classes (0..{num_classes - 1}). Remove it, or {_FIX}."
            )
        if len(set(labels.values())) != len(labels):
            raise ImageDataError(f"Class folders in {where} name the same index twice ({folders}). Rename them.")
        return labels
    if num_classes is not None and len(folders) != num_classes:
        relation = "fewer" if len(folders) < num_classes else "more"
        change = "Remove the extra folders"
        if relation == "fewer":
            change = "Add the missing class folders (empty ones are fine)"
        raise ImageDataError(
            f"{where} has {len(folders)} class folders, {relation} than the model's {num_classes} classes, and the "
            f"model has no class names to match them to: labels from the sorted folder names would be wrong. "
            f"{change}, or {_FIX}."
        )
    return {folder: i for i, folder in enumerate(folders)}


def eval_transform(model: nn.Module) -> Callable[[Any], Tensor]:
    """The model's own evaluation preprocessing (resize, crop, normalize).

    timm and torchvision models: their timm data config. transformers image models (ViT): the size from
    ``config.image_size`` and, when the model's folder has a ``preprocessor_config.json``, its mean, std and
    resampling (transformers' ViT processors resize straight to the size, without a crop); else ImageNet's.
    """
    from timm.data import create_transform, resolve_data_config

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "image_size"):
        return create_transform(**resolve_data_config({}, model=model), is_training=False)
    size = config.image_size if isinstance(config.image_size, int) else max(config.image_size)
    settings: dict[str, Any] = {"input_size": (getattr(config, "num_channels", 3), size, size), "crop_pct": 1.0}
    processor = Path(str(getattr(config, "_name_or_path", "") or "")) / "preprocessor_config.json"
    if processor.is_file():
        values = json.loads(processor.read_text())
        settings.update({key: tuple(values[name]) for key, name in (("mean", "image_mean"), ("std", "image_std"))
                         if name in values})  # fmt: skip
        # PIL resampling codes: 2 bilinear, 3 bicubic.
        settings["interpolation"] = {3: "bicubic"}.get(values.get("resample"), "bilinear")
    return create_transform(**resolve_data_config(settings), is_training=False)


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
        _check_labels(labels, logits.shape[-1], dataset)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(-1).sum())
        total += int(labels.numel())
    if total == 0:
        raise MissingDataError("The evaluation data holds no images; check its folder (or indices file).")
    return {"top1": correct1 / total, "top5": correct5 / total, "num_images": total}


def _check_labels(labels: Tensor, num_outputs: int, dataset: Dataset) -> None:
    """Refuse labels the model cannot predict: scored, they would only count as misses and lower the accuracy."""
    if bool(((labels >= 0) & (labels < num_outputs)).all()):
        return
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list):
        bad = [(path, label) for path, label in samples if not 0 <= label < num_outputs]
        example = f"{len(bad)} of {len(samples)} images have labels outside it, e.g. {bad[0][0]} -> {bad[0][1]}"
    else:
        example = f"e.g. label {int(labels[(labels < 0) | (labels >= num_outputs)][0])}"
    raise ImageDataError(
        f"The model predicts {num_outputs} classes (labels 0..{num_outputs - 1}), but {example}. Those images would "
        "only count as misses. Check the labels CSV or the class folders (an extra class folder, or labels from "
        "another dataset), or pass num_classes= to LabelledImages to check them when the data is read."
    )


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
