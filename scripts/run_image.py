#!/usr/bin/env python
"""Prune a CNN (uniform or EagleEye), fine-tune it with distillation, and evaluate top-1/top-5, from a YAML recipe.

python scripts/run_image.py configs/image/cifar_resnet56_eagleeye.yaml [section.key=value ...]
accelerate launch scripts/run_image.py configs/image/cifar_resnet56_eagleeye.yaml
"""

import sys

from hfprune.errors import HfPruneError
from hfprune.recipes import ImageRecipe, train_image


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        train_image(ImageRecipe.from_yaml(argv[0], overrides=argv[1:]))
    except HfPruneError as err:
        print(f"run_image: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
