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


def _exit(code: int) -> None:
    """Exit; a rank of `accelerate launch` destroys its process group and leaves without interpreter teardown.

    Left to the normal exit, a gloo rank aborts now and then ("terminate called without an active exception",
    exit -6, after which torchrun kills the other ranks): torch's C++ threads are still there when the process
    tears down (pytorch/pytorch#190489). `destroy_process_group` alone does not prevent it; `os._exit` after
    flushing does. Everything this script writes is closed by then.
    """
    if "torch" in sys.modules:  # not for --help, or an error before anything was launched
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import logging
            import os

            dist.destroy_process_group()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    # After main returns (reported errors included); an uncaught exception exits normally, and torchrun stops the
    # other ranks.
    _exit(main(sys.argv[1:]))
