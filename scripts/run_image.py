#!/usr/bin/env python
"""Prune a CNN (uniform or EagleEye), fine-tune it with distillation, and evaluate top-1/top-5, from a YAML recipe.

python scripts/run_image.py configs/image/cifar_resnet56_eagleeye.yaml [section.key=value ...]
accelerate launch scripts/run_image.py configs/image/cifar_resnet56_eagleeye.yaml
"""

import sys

from hfprune.cli import exit_process, run_reporting_errors
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


if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))  # a distributed rank must not exit through interpreter teardown
