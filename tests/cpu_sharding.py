"""Let accelerate run FSDP and DeepSpeed on CPU processes, for the tests of `PruningTrainer` under sharding.

accelerate 1.16 turns FSDP and DeepSpeed on only for GPU-like devices: on CPU processes it quietly trains with DDP
instead of FSDP (``distributed_type`` stays ``MULTI_CPU``, the parameters are not sharded), and with DeepSpeed and
``use_cpu=True`` the same; without ``use_cpu`` each CPU process trains alone. Everything after that check
(``fully_shard``, DTensors, torch.distributed.checkpoint, DeepSpeed's engine with its CPU accelerator over gloo,
the Trainer's FSDP and DeepSpeed branches) runs on CPU, so `open_cpu_gates` sets the distributed type where
accelerate would on a GPU. It is the one check bypassed; the other differences from a GPU run are gloo for NCCL and
DeepSpeed's CPU accelerator. As a launcher, it opens the gates and runs a script:

    accelerate launch --config_file configs/accelerate/fsdp2.yaml tests/cpu_sharding.py scripts/run_glue.py RECIPE
"""

from __future__ import annotations

import runpy
import sys


def open_cpu_gates() -> None:
    """Make accelerate's state FSDP or DeepSpeed, when a plugin is given (or asked for in the environment), on CPU
    processes (started with ``use_cpu=True``, so that they form one gloo process group)."""
    import accelerate.state
    from accelerate.utils import DistributedType

    init = accelerate.state.AcceleratorState.__init__

    def patched_init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:
            if self._mixed_precision != "no":  # as AcceleratorState does for FSDP on a GPU
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            kind = DistributedType.FSDP
        elif deepspeed_plugin is not None:
            # What AcceleratorState does for DeepSpeed on a GPU: precision is DeepSpeed's config's, the plugin active.
            self._mixed_precision = "no"
            deepspeed_plugin.set_mixed_precision("no")
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            kind = DistributedType.DEEPSPEED
        else:
            return
        # Both states: every later AcceleratorState() re-reads PartialState's.
        accelerate.state.PartialState._shared_state["distributed_type"] = kind
        self.distributed_type = kind

    accelerate.state.AcceleratorState.__init__ = patched_init


if __name__ == "__main__":
    open_cpu_gates()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
