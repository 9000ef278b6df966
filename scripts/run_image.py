#!/usr/bin/env python
"""Prune a CNN (uniform or EagleEye), fine-tune it with distillation, and evaluate top-1/top-5, from a YAML recipe.

python scripts/run_image.py configs/image/cifar_resnet56_eagleeye.yaml [section.key=value ...]
accelerate launch scripts/run_image.py configs/image/cifar_resnet56_eagleeye.yaml
"""

import sys

from hfprune.cli import run_reporting_errors
from hfprune.recipes import ImageRecipe, train_image


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    # One clear line on stderr for user errors (exit 2), no traceback unless HFPRUNE_DEBUG=1.
    return run_reporting_errors("run_image", _run, argv)


def _run(argv: list[str]) -> int:
    train_image(ImageRecipe.from_yaml(argv[0], overrides=argv[1:]))
    return 0


def _close_process_group() -> None:
    """Destroy the process group `accelerate launch` ranks joined, while the interpreter is still whole.

    A gloo group left to interpreter shutdown aborts the rank now and then ("terminate called without an active
    exception", exit -6; torchrun then kills the others): its C++ worker threads outlive Python's teardown.
    """
    if "torch" not in sys.modules:  # --help, or an error before anything was launched
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # After main returns (reported errors included); an uncaught exception skips it, and torchrun stops the others.
    _close_process_group()
    raise SystemExit(code)
