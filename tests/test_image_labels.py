"""ImageFolder labels are the model's class indices, not positions among the folders that happen to be present."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hfprune.vision import ImageDataError, LabelledImages, evaluate_images, folder_label_index, model_class_names


CLASSES = ["airplane", "bird", "cat", "dog", "frog"]


def _to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255


class RedReader(nn.Module):
    """Predicts class i for images whose red channel is 40*i: perfect accuracy iff labels are class indices."""

    def __init__(self, class_names=CLASSES) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.arange(len(class_names), dtype=torch.float32) * 40)
        self.num_classes = len(class_names)
        self.pretrained_cfg = {"label_names": list(class_names)}

    def forward(self, pixels):
        red = pixels[:, 0].mean(dim=(1, 2), keepdim=False)[:, None] * 255
        return -(red - self.anchor).abs()


def _tree(root, names, per_class=2, red_of=None):
    for name in names:
        (root / name).mkdir(parents=True)
        red = 40 * (red_of or CLASSES).index(name)
        for i in range(per_class):
            Image.new("RGB", (4, 4), (red, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_missing_class_folder_keeps_the_other_labels(tmp_path):
    root = _tree(tmp_path / "val", [name for name in CLASSES if name != "bird"])  # class 1 missing
    model = RedReader()
    names = model_class_names(model)
    data = LabelledImages(root, transform=_to_tensor, class_names=names, num_classes=5)
    assert data.class_to_idx == {"airplane": 0, "cat": 2, "dog": 3, "frog": 4}
    assert sorted({label for _, label in data.samples}) == [0, 2, 3, 4]
    assert evaluate_images(model, data, batch_size=3) == {"top1": 1.0, "top5": 1.0, "num_images": 8}
    # What sorted present folders gave before: every class after the gap shifted by one, top-1 1/4.
    shifted = {folder: i for i, folder in enumerate(sorted(data.class_to_idx))}
    assert sum(shifted[f] == data.class_to_idx[f] for f in shifted) == 1


def test_missing_folder_without_class_names_is_refused(tmp_path):
    root = _tree(tmp_path / "val", CLASSES[:4])
    with pytest.raises(ImageDataError, match=r"has 4 class folders, fewer than the model's 5 classes.*classes:"):
        LabelledImages(root, num_classes=5)
    (root / "frog").mkdir()  # an empty folder completes the list: sorted names are the label order again
    assert LabelledImages(root, num_classes=5).class_to_idx == {name: i for i, name in enumerate(CLASSES)}
    with pytest.raises(ImageDataError, match=r"more than the model's 3 classes.*Remove the extra folders"):
        LabelledImages(root, num_classes=3)


def test_unknown_folder_is_refused(tmp_path):
    root = _tree(tmp_path / "val", ["cat", "dog"])
    (root / "zebra").mkdir()
    Image.new("RGB", (4, 4)).save(root / "zebra" / "0.png")
    with pytest.raises(ImageDataError, match=r"Class folders \['zebra'\] .* not among the model's 5 classes"):
        LabelledImages(root, class_names=CLASSES, num_classes=5)
    with pytest.raises(ImageDataError, match="3 class names were given for a model with 5 classes"):
        LabelledImages(root, class_names=["cat", "dog", "zebra"], num_classes=5)


def test_integer_and_imagenet_synset_folders(tmp_path):
    assert folder_label_index(["0", "3", "12"], None, 20) == {"0": 0, "3": 3, "12": 12}  # not sorted positions
    with pytest.raises(ImageDataError, match=r"'12' .* not a class index of a model with 10 classes"):
        folder_label_index(["0", "12"], None, 10)
    synsets = folder_label_index(["n01443537", "n01440764"], None, 1000)  # 1000 classes: timm's ImageNet-1k order
    assert synsets == {"n01440764": 0, "n01443537": 1}
    assert folder_label_index(["n01484850"], None, 1000) == {"n01484850": 2}


def test_model_class_names_sources():
    assert model_class_names(RedReader()) == CLASSES
    from transformers import BertConfig

    generic = nn.Linear(1, 2)
    generic.config = BertConfig(num_labels=2)  # id2label LABEL_0, LABEL_1: not real names
    assert model_class_names(generic) is None
    named = nn.Linear(1, 2)
    named.config = BertConfig(id2label={0: "cat", 1: "dog"})
    assert model_class_names(named) == ["cat", "dog"]
    reheaded = RedReader()
    reheaded.num_classes = 3  # names of another head are not this model's
    assert model_class_names(reheaded) is None


def test_train_image_and_cli_eval_use_the_same_mapping(tmp_path, capsys):
    import json

    from hfprune.cli import main
    from hfprune.recipes import ImageRecipe, train_image

    root = _tree(tmp_path / "val", [name for name in CLASSES if name != "bird"], per_class=1)
    recipe = ImageRecipe(model="cifar_resnet20", num_classes=5, output_dir=str(tmp_path / "out"), eval_data=str(root),
                         batch_size=8)  # fmt: skip
    with pytest.raises(ImageDataError, match="has 4 class folders, fewer than the model's 5 classes"):
        train_image(recipe)
    recipe.classes = list(CLASSES)
    assert train_image(recipe)["dense"]["num_images"] == 4
    capsys.readouterr()
    base = ["eval", "--model", "cifar_resnet20", "--num-classes", "5", "--images", str(root)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfprune: error: ") and "fewer than the model's 5 classes" in err and "--classes" in err
    assert main([*base, "--classes", ",".join(CLASSES)]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 4
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES[:4]) + "\n")
    assert main([*base, "--classes", str(tmp_path / "classes.txt")]) == 2
    assert "classes has 4 names but num_classes is 5" in capsys.readouterr().err


def test_labels_the_model_cannot_predict_are_refused_when_evaluating(tmp_path):
    # Through the Python API without num_classes: an extra class folder gets label 5 for a 5-class model.
    root = _tree(tmp_path / "val", CLASSES + ["zebra"], red_of=CLASSES + ["zebra"])
    data = LabelledImages(root, transform=_to_tensor, class_names=CLASSES + ["zebra"])
    with pytest.raises(ImageDataError, match=r"predicts 5 classes \(labels 0\.\.4\), but 2 of 12 images have labels "
                                             r"outside it, e\.g\. zebra/0\.png -> 5"):
        evaluate_images(RedReader(), data, batch_size=4)


def test_labels_csv_beyond_the_model_is_refused_when_evaluating(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(root / f"{i}.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n0.png,0\n1.png,1\n2.png,10\n")
    data = LabelledImages(root, csv, transform=_to_tensor)
    with pytest.raises(ImageDataError, match=r"1 of 3 images have labels outside it, e\.g\. 2\.png -> 10"):
        evaluate_images(RedReader(), data)
    rows = [(torch.zeros(3, 4, 4), 7)]  # any dataset of (image, label) pairs
    with pytest.raises(ImageDataError, match="e.g. label 7"):
        evaluate_images(RedReader(), rows)
