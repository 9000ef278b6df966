"""ONNX export of pruned models (compacted transformers with uneven per-layer widths, channel-pruned CNNs),
checked against PyTorch with onnxruntime.

Once compacted, a pruned model is made of ordinary layers of smaller sizes, so torch's exporter (the `torch.export`
based one, ``dynamo=True``) handles it like any model; batch and sequence length stay dynamic. The check runs the
exported graph with onnxruntime at two input shapes and compares it with the PyTorch model's outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError, HfPruneError
from .hub import atomic_directory


ONNX_NAME = "model.onnx"


class _Logits(nn.Module):
    """The model with named tensor inputs and one output, the logits: what an ONNX graph signature can hold."""

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: Tensor) -> Tensor:
        if self.input_names == ["pixel_values"] and not hasattr(self.model, "config"):
            output = self.model(inputs[0])  # a timm / torchvision CNN takes the images positionally
        else:
            output = self.model(**dict(zip(self.input_names, inputs, strict=True)))
        return output.logits if hasattr(output, "logits") else output


def _example_inputs(model: nn.Module, batch: int, length: int, image_size: int) -> dict[str, Tensor]:
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if isinstance(embeddings, nn.Embedding):
        config = model.config  # type: ignore[attr-defined]
        generator = torch.Generator().manual_seed(batch * 1000 + length)
        inputs = {"input_ids": torch.randint(0, config.vocab_size, (batch, length), generator=generator),
                  "attention_mask": torch.ones(batch, length, dtype=torch.long)}  # fmt: skip
        inputs["attention_mask"][0, length // 2 :] = 0  # padding in the check too
        if getattr(config, "type_vocab_size", 0) > 1:
            inputs["token_type_ids"] = torch.zeros(batch, length, dtype=torch.long)
        return inputs
    size = getattr(getattr(model, "config", None), "image_size", None) or image_size
    size = size if isinstance(size, int) else max(size)
    channels = getattr(getattr(model, "config", None), "num_channels", 3)
    generator = torch.Generator().manual_seed(batch)
    return {"pixel_values": torch.randn(batch, channels, size, size, generator=generator)}


def export_onnx(
    model: nn.Module, output_dir: str | os.PathLike, *, image_size: int = 224, opset: int | None = None,
    tolerance: float = 1e-4, tokenizer: Any = None, overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Write ``output_dir/model.onnx`` (dynamic batch; dynamic sequence length for text models) and
    ``onnx_export.json`` (inputs, the check's largest differences, versions), after checking the graph against
    ``model`` with onnxruntime at two input shapes.

    Args:
        model (`nn.Module`): A transformers model (token ids in, logits out; vision models take ``pixel_values``) or
            a timm / torchvision CNN (images in, logits out), compacted or not, on the CPU, in eval mode.
        output_dir (`str` or `os.PathLike`): Folder to write (atomically).
        image_size (`int`, defaults to 224): Image side for CNNs without a config that says it (CIFAR: 32).
        opset (`int`, *optional*): ONNX opset (default: the exporter's).
        tolerance (`float`, defaults to 1e-4): Largest absolute difference from PyTorch the check accepts.
        tokenizer (*optional*): Saved beside the graph (``save_pretrained``).
        overwrite (`bool`, defaults to `False`): Replace an earlier export in ``output_dir``.

    Returns:
        the record written to ``onnx_export.json``.

    Raises:
        ConfigError: onnx / onnxruntime are not installed, or the model still carries masks.
        HfPruneError: the export fails, or the graph's outputs differ from PyTorch's by more than ``tolerance``.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'hfprune[onnx]'.") from None
    from torch.nn.utils import parametrize

    masked = [name for name, module in model.named_modules() if parametrize.is_parametrized(module)]
    if masked:
        raise ConfigError(f"{masked[0]} still carries a mask: make pruning permanent (or compact) before export.")
    model = model.eval()
    inputs = _example_inputs(model, 2, 16, image_size)
    names = list(inputs)
    wrapper = _Logits(model, names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic: dict[str, dict[int, Any]] = {name: {0: batch} for name in names}
    if "input_ids" in inputs:
        sequence = torch.export.Dim("sequence", min=2, max=model.config.max_position_embeddings)  # type: ignore
        dynamic = {name: {0: batch, 1: sequence} for name in names}
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        path = staging / ONNX_NAME
        # The wrapper takes *inputs, which torch.export sees as one argument holding a tuple: so are its shapes.
        shapes = (tuple(dynamic[name] for name in names),)
        try:
            torch.onnx.export(wrapper, tuple(inputs.values()), str(path), input_names=names, output_names=["logits"],
                              dynamic_shapes=shapes, dynamo=True, opset_version=opset,
                              verbose=False)  # fmt: skip
        except Exception as err:  # the exporter raises many types; the message is what helps
            raise HfPruneError(f"torch.onnx.export failed for {type(model).__name__}: {err}") from err
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        differences = {}
        for batch_size, length in ((2, 16), (3, 9)):
            check = _example_inputs(model, batch_size, length, image_size)
            with torch.inference_mode():
                expected = wrapper(*check.values()).float().numpy()
            got = session.run(["logits"], {name: value.numpy() for name, value in check.items()})[0]
            shape = "x".join(str(n) for n in next(iter(check.values())).shape)
            differences[shape] = float(abs(got - expected).max())
        worst = max(differences.values())
        if worst > tolerance:
            raise HfPruneError(
                f"The ONNX graph's logits differ from PyTorch's by up to {worst:.3g} (tolerance {tolerance}): "
                f"{differences}. The export is not written."
            )
        import onnx

        record = {"file": ONNX_NAME, "inputs": names, "outputs": ["logits"], "dynamic_axes": {
            name: ["batch", "sequence"] if "input_ids" in inputs else ["batch"] for name in names},
            "max_abs_difference_vs_pytorch": differences, "tolerance": tolerance, "opset": opset,
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip
        (staging / "onnx_export.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "save_pretrained"):
            config.save_pretrained(staging)  # label names and sizes travel with the graph
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return record


def onnx_session(folder: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``folder/model.onnx`` with ``threads`` intra-op threads (default: torch's) that
    do not spin: onnxruntime's threads otherwise busy-wait after each run and take the cores from whatever runs
    next in the process (a PyTorch model timed right after a session ran several times slower)."""
    import onnxruntime

    path = Path(folder) / ONNX_NAME
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: export with hfprune.onnx_export.export_onnx first.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
