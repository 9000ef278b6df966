#!/usr/bin/env python
"""Fine-tune or fine-prune a model on a GLUE task from a YAML recipe.

python scripts/run_glue.py configs/glue/sst2_movement_distil.yaml [section.key=value ...]
accelerate launch scripts/run_glue.py configs/glue/sst2_movement_distil.yaml training.max_steps=100
"""

import sys

from hfprune.cli import exit_process, run_reporting_errors
from hfprune.recipes import GlueRecipe, train_glue


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    # One clear line on stderr for user errors (exit 2), no traceback unless HFPRUNE_DEBUG=1.
    return run_reporting_errors("run_glue", _run, argv)


def _run(argv: list[str]) -> int:
    train_glue(GlueRecipe.from_yaml(argv[0], overrides=argv[1:]))
    return 0


if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))  # a distributed rank must not exit through interpreter teardown
