#!/usr/bin/env python
"""Fine-tune or fine-prune a model on a GLUE task from a YAML recipe.

python scripts/run_glue.py configs/glue/sst2_movement_distil.yaml [section.key=value ...]
accelerate launch scripts/run_glue.py configs/glue/sst2_movement_distil.yaml training.max_steps=100
"""

import sys

from hfprune.errors import HfPruneError
from hfprune.recipes import GlueRecipe, train_glue


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        recipe = GlueRecipe.from_yaml(argv[0], overrides=argv[1:])
        train_glue(recipe)
    except HfPruneError as err:
        print(f"run_glue: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
