"""Let accelerate run FSDP on CPU processes, for the tests of `PruningTrainer` under FSDP2.

accelerate 1.16 turns FSDP on only for GPU-like devices: on CPU processes it quietly trains with DDP instead
(``distributed_type`` stays ``MULTI_CPU``, the parameters are not sharded). Everything after that check
(``fully_shard``, DTensors, torch.distributed.checkpoint, the Trainer's FSDP branches) runs on CPU with gloo, so
`open_cpu_fsdp_gate` sets the distributed type to FSDP where accelerate would on a GPU. It is the one thing that
differs from a GPU run. As a launcher, it opens the gate and runs a script:

    accelerate launch --config_file configs/accelerate/fsdp2.yaml tests/cpu_fsdp.py scripts/run_glue.py RECIPE
"""

from __future__ import annotations

import runpy
import sys


def open_cpu_fsdp_gate() -> None:
    """Make accelerate's state FSDP when an FSDP plugin is given (or asked for in the environment) on CPU ranks."""
    import accelerate.state
    from accelerate.utils import DistributedType

    init = accelerate.state.AcceleratorState.__init__

    def patched_init(self, *args, fsdp_plugin=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # Both states: every later AcceleratorState() re-reads PartialState's.
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    accelerate.state.AcceleratorState.__init__ = patched_init


if __name__ == "__main__":
    open_cpu_fsdp_gate()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
