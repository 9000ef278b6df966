"""Plans that do not fit the weights are refused with an error naming the layer or group and the problem."""

import copy
import json

import pytest
import torch

from hfprune import HfPruneError, PlanMismatchError, PruningConfig, PruningPlan, compact_, load_pruned, prune_
from hfprune.channels import ChannelPlan, apply_channel_plan_
from hfprune.compaction import PLAN_NAME
from hfprune.hub import load_channel_pruned
from hfprune.structured import apply_plan_masks_

from .models import ConvNet, bert_batch, tiny_bert


X8 = torch.zeros(1, 3, 8, 8)


def _plan_dict() -> dict:
    return PruningPlan.dense(tiny_bert()).to_dict()


BAD_INDICES = {
    "float that looks whole": ([0, 1.0], r"Layer 0: kept heads must be integer indices; got \[1\.0\] \(float\)"),
    "fractional float": ([2.5], r"Layer 0: kept heads must be integer indices; got \[2\.5\]"),
    "bool": ([True], r"Layer 0: kept heads must be integer indices; got \[True\] \(bool\)"),
    "string": (["1"], r"Layer 0: kept heads must be integer indices; got \['1'\] \(str\)"),
    "negative": ([-1, 0], r"Layer 0: kept heads: indices must be in \[0, 4\); got \[-1\]"),
    "too large": ([0, 4], r"Layer 0: kept heads: indices must be in \[0, 4\); got \[4\]"),
    "duplicated": ([1, 1, 2], r"Layer 0: kept heads: indices \[1\] appear more than once"),
    "not a list": (3, r"Layer 0: kept heads must be a list of integer indices; got int"),
}


@pytest.mark.parametrize("case", list(BAD_INDICES))
def test_bad_head_indices_name_the_layer(case):
    value, message = BAD_INDICES[case]
    data = _plan_dict()
    data["heads"][0] = value
    with pytest.raises(PlanMismatchError, match=message):
        PruningPlan.from_dict(data)


def test_bad_neuron_indices_name_the_layer():
    data = _plan_dict()
    data["neurons"][1] = [0, 37]
    with pytest.raises(PlanMismatchError, match=r"Layer 1: kept neurons: indices must be in \[0, 37\); got \[37\]"):
        PruningPlan.from_dict(data)


BAD_FIELDS = {
    "not a dict": (lambda data: [data], r"must be a JSON object \(dict\); got list"),
    "missing field": (lambda data: {k: v for k, v in data.items() if k != "neurons"}, r"lacks the fields \['neurons"),
    "num_heads a string": (lambda data: {**data, "num_heads": "4"}, r"num_heads must be a positive integer; got '4'"),
    "num_heads a float": (lambda data: {**data, "num_heads": 4.0}, r"num_heads must be a positive integer; got 4\.0"),
    "intermediate_size zero": (lambda data: {**data, "intermediate_size": 0}, "intermediate_size must be a positive"),
    "model_type missing value": (lambda data: {**data, "model_type": None}, "model_type must be a non-empty string"),
    "heads a dict": (lambda data: {**data, "heads": {"0": [1]}}, "heads must be a list with one list"),
    "layer counts differ": (lambda data: {**data, "heads": data["heads"][:1]}, "1 head lists but 2 neuron lists"),
    "plan_version a string": (lambda data: {**data, "plan_version": "1"}, "plan_version must be an integer"),
    "extra a list": (lambda data: {**data, "extra": []}, "extra must be a dict"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_corrupt_plan_structure_is_refused(case):
    corrupt, message = BAD_FIELDS[case]
    with pytest.raises(PlanMismatchError, match=message):
        PruningPlan.from_dict(corrupt(_plan_dict()))


def test_plan_edited_after_construction_is_checked_again_before_use():
    model = tiny_bert()
    plan = PruningPlan.dense(model)
    plan.heads[1] = [0, 9]  # would be an IndexError deep inside index_select
    with pytest.raises(PlanMismatchError, match=r"Layer 1: kept heads: indices must be in \[0, 4\); got \[9\]"):
        compact_(copy.deepcopy(model), plan)
    with pytest.raises(PlanMismatchError, match="Layer 1: kept heads"):
        apply_plan_masks_(copy.deepcopy(model), plan)
    plan.heads[1] = [0, 1.5]
    with pytest.raises(PlanMismatchError, match="must be integer indices"):
        compact_(copy.deepcopy(model), plan)
    with pytest.raises(PlanMismatchError, match="needs a PruningPlan; got dict"):
        compact_(model, PruningPlan.dense(model).to_dict())  # type: ignore[arg-type]


def test_plan_for_another_size_is_refused_by_masks_and_compaction():
    plan = PruningPlan.dense(tiny_bert(num_hidden_layers=3))
    with pytest.raises(PlanMismatchError, match="3 layers"):
        compact_(tiny_bert(), plan)
    with pytest.raises(PlanMismatchError, match="for 3 layers of 4 heads and 37 neurons; this model has 2 layers"):
        apply_plan_masks_(tiny_bert(), plan)
    with pytest.raises(PlanMismatchError, match="expects 4 heads and 40 neurons"):
        compact_(tiny_bert(), PruningPlan.dense(tiny_bert(intermediate_size=40)))


def _saved_pruned(tmp_path):
    model = tiny_bert()
    config = PruningConfig(structure="heads_and_neurons", sparsity=0.5)
    prune_(model, config)
    plan = compact_(model)
    folder = tmp_path / "pruned"
    model.save_pretrained(folder)
    plan.save_pretrained(folder)
    return folder, plan


def test_load_pruned_refuses_bad_plan_files_naming_the_file(tmp_path):
    folder, plan = _saved_pruned(tmp_path)
    path = folder / PLAN_NAME
    reference = load_pruned(folder)(**bert_batch(labels=False)).logits  # the intact folder loads

    path.write_text(path.read_text()[:-20])  # cut short
    with pytest.raises(PlanMismatchError, match=rf"{PLAN_NAME} is not valid JSON"):
        load_pruned(folder)

    data = plan.to_dict()
    data["neurons"][0] = [float(i) for i in data["neurons"][0]]  # 3.0 would otherwise load as neuron 3
    path.write_text(json.dumps(data))
    with pytest.raises(PlanMismatchError, match=rf"{PLAN_NAME}: Layer 0: kept neurons must be integer indices"):
        load_pruned(folder)

    data = plan.to_dict()
    data["heads"], data["neurons"] = data["heads"] * 2, data["neurons"] * 2
    path.write_text(json.dumps(data))
    with pytest.raises(PlanMismatchError, match="with 4 layers; this model is a bert with 2 layers"):
        load_pruned(folder)

    data = plan.to_dict()
    data["neurons"][0] = data["neurons"][0][:-1]  # a valid plan, but not the one the weights were saved with
    path.write_text(json.dumps(data))
    with pytest.raises(PlanMismatchError, match="do not fit the model the plan builds"):
        load_pruned(folder)

    path.write_text(json.dumps(plan.to_dict()))
    torch.testing.assert_close(load_pruned(folder)(**bert_batch(labels=False)).logits, reference)


def test_corrupt_plan_in_config_json_is_refused(tmp_path):
    folder, _ = _saved_pruned(tmp_path)
    (folder / PLAN_NAME).unlink()  # the plan now comes from config.json
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["hfprune_plan"]["heads"][1] = [0, 2.5]
    config_path.write_text(json.dumps(config))
    with pytest.raises(PlanMismatchError, match=r"config\.hfprune_plan: Layer 1: kept heads must be integer"):
        load_pruned(folder)


# ---------------------------------------------------------------------------------------------- channel plans
def _channel_dict() -> dict:
    return ChannelPlan(num_channels={"conv1": 8, "conv2": 16}, kept={"conv1": [0, 1, 2], "conv2": [3, 4]}).to_dict()


BAD_CHANNELS = {
    "float": (lambda d: d["kept"].update(conv2=[3.0, 4]), r"Group 'conv2': kept channels must be integer indices"),
    "negative": (lambda d: d["kept"].update(conv1=[-2]), r"Group 'conv1': kept channels: indices must be in \[0, 8\)"),
    "too large": (lambda d: d["kept"].update(conv2=[16]), r"Group 'conv2': kept channels: indices must be in \[0, 16"),
    "duplicated": (lambda d: d["kept"].update(conv1=[1, 1]), r"Group 'conv1': kept channels: indices \[1\] appear"),
    "empty": (lambda d: d["kept"].update(conv1=[]), r"Group 'conv1': kept channels are empty"),
    "unknown width": (lambda d: d["kept"].update(conv3=[0]), r"keeps channels of 'conv3' but does not say how many"),
    "width a float": (lambda d: d["num_channels"].update(conv1=8.0), r"num_channels\['conv1'\] must be a positive"),
    "kept a list": (lambda d: d.update(kept=[[0]]), "field kept must map convolution names"),
    "missing field": (lambda d: d.pop("num_channels"), r"lacks the fields \['num_channels'\]"),
    "wrong kind": (lambda d: d.update(kind="heads"), r"Not a channel plan \(kind='heads'\)"),
}


@pytest.mark.parametrize("case", list(BAD_CHANNELS))
def test_bad_channel_plans_name_the_group(case):
    corrupt, message = BAD_CHANNELS[case]
    data = _channel_dict()
    corrupt(data)
    with pytest.raises(PlanMismatchError, match=message):
        ChannelPlan.from_dict(data)


def test_channel_plan_that_does_not_fit_the_model_is_refused():
    with pytest.raises(PlanMismatchError, match="prunes 'conv3', which this ConvNet does not have"):
        apply_channel_plan_(ConvNet(), ChannelPlan(num_channels={"conv3": 8}, kept={"conv3": [0]}), X8)
    with pytest.raises(PlanMismatchError, match="conv2 has 16 output channels; the plan was made for 32"):
        apply_channel_plan_(ConvNet(), ChannelPlan(num_channels={"conv2": 32}, kept={"conv2": [0]}), X8)
    with pytest.raises(PlanMismatchError, match="'fc', but that is a Linear, not a Conv2d"):
        apply_channel_plan_(ConvNet(), ChannelPlan(num_channels={"fc": 10}, kept={"fc": [0]}), X8)
    plan = ChannelPlan(num_channels={"conv1": 8}, kept={"conv1": [0, 1]})
    plan.kept["conv1"] = [0, 8]  # edited after construction
    with pytest.raises(PlanMismatchError, match=r"Group 'conv1': kept channels: indices must be in \[0, 8\)"):
        apply_channel_plan_(ConvNet(), plan, X8)


def test_corrupt_channel_folder_names_the_file(tmp_path):
    folder = tmp_path / "cnn"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "cifar_resnet20", "num_classes": 10}')
    (folder / PLAN_NAME).write_text('{"kind": "channels", "kept": {')
    with pytest.raises(PlanMismatchError, match=rf"{PLAN_NAME} is not valid JSON"):
        load_channel_pruned(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(HfPruneError, match=r"config\.json is not valid JSON"):
        load_channel_pruned(folder)


# ------------------------------------------------------------------------------- folders that do not fit together
def test_a_channel_plan_in_a_transformers_folder_names_the_plan_kind(tmp_path):
    folder, _ = _saved_pruned(tmp_path)
    ChannelPlan(num_channels={"conv1": 8}, kept={"conv1": [0, 1]}).save_pretrained(folder)
    with pytest.raises(PlanMismatchError, match=r"CNN channel plan, but config\.json describes a transformers bert"):
        load_pruned(folder)


def test_a_compacted_folder_without_its_plan_says_the_plan_is_missing(tmp_path):
    folder, _ = _saved_pruned(tmp_path)
    (folder / PLAN_NAME).unlink()
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    del config["hfprune_plan"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(PlanMismatchError, match="No pruning plan was found.*plan was lost"):
        load_pruned(folder)


def test_load_options_that_change_shapes_are_named_with_the_way_out(tmp_path):
    folder, _ = _saved_pruned(tmp_path)
    with pytest.raises(PlanMismatchError, match=r"classifier\.weight: saved \(2, 32\), model \(5, 32\).*"
                                                r"\[.num_labels.\] may change the shapes.*ignore_mismatched_sizes"):
        load_pruned(folder, num_labels=5)
    model = load_pruned(folder, num_labels=5, ignore_mismatched_sizes=True)
    assert model(**bert_batch(labels=False)).logits.shape[-1] == 5


@pytest.mark.parametrize("name", ["pipeline", "BertConfig", "NoSuchModelClass"])
def test_an_architecture_that_is_not_a_model_class_is_refused(tmp_path, name):
    folder, _ = _saved_pruned(tmp_path)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [name]
    config_path.write_text(json.dumps(config))
    with pytest.raises(HfPruneError, match=rf"names the architecture '{name}', which is not"):
        load_pruned(folder)


def test_a_truncated_weights_file_is_named(tmp_path):
    folder, _ = _saved_pruned(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(HfPruneError, match=rf"{folder}.*damaged or was cut short"):
        load_pruned(folder)


def _channel_folder(tmp_path):
    from hfprune.channels import create_base_model, plan_channels
    from hfprune.hub import save_channel_pruned

    model = create_base_model("cifar_resnet20", 10)
    x = torch.zeros(1, 3, 32, 32)
    plan = plan_channels(model, PruningConfig(structure="channels", sparsity=0.5), x)
    apply_channel_plan_(model, plan, x)
    return save_channel_pruned(model, tmp_path / "cnn", plan, architecture="cifar_resnet20", num_classes=10)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_classes", "10", r"num_classes must be a positive integer; got '10' \(str\)"),
        ("num_classes", 10.5, r"num_classes must be a positive integer; got 10\.5 \(float\)"),
        ("architecture", 5, r"architecture must be a timm architecture name \(a string\); got 5"),
        ("pretrained_cfg", "x", r"pretrained_cfg must be a JSON object; got 'x'"),
    ],
)
def test_a_channel_folder_config_with_wrong_types_names_the_key(tmp_path, key, value, message):
    folder = _channel_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(HfPruneError, match=message):
        load_pruned(folder)


def test_a_channel_folder_naming_a_hub_architecture_says_so_before_going_online(tmp_path, monkeypatch):
    from hfprune.errors import UnsupportedArchitectureError

    folder = _channel_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "hf-hub:timm/resnet18.a1_in1k"
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("huggingface_hub.is_offline_mode", lambda: True)
    with pytest.raises(UnsupportedArchitectureError, match=r"The Hub is offline .*name the timm architecture itself"):
        load_pruned(folder)


def test_a_truncated_channel_weights_file_is_named(tmp_path):
    folder = _channel_folder(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with pytest.raises(HfPruneError, match=rf"{weights} cannot be read .*damaged or was cut short"):
        load_pruned(folder)
