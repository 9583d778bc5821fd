"""Every backward pass of this process waits `SLOW_STEP_S` seconds first: training steps slower than SLURM's
KillWait allows between stop checks (a ResNet-152 at a large batch, or a busy node), made on this CPU by
putting this folder on a job's PYTHONPATH (Python imports `sitecustomize` at start-up). Test-only.

With `SLOW_UNTIL_REQUEUED=1` only a SLURM job's first allocation is slowed (`SLURM_RESTART_COUNT` unset or 0): a
job whose steps outlast its time limit however fast the machine is, and which, requeued, finishes at full speed."""

import importlib.abc
import importlib.machinery
import os
import sys
import time

REQUEUED = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
FULL_SPEED = REQUEUED and os.environ.get("SLOW_UNTIL_REQUEUED") == "1"
SECONDS = 0.0 if FULL_SPEED else float(os.environ.get("SLOW_STEP_S", "0"))


class _SlowBackwardOnceTorchLoads(importlib.abc.MetaPathFinder):
    """Wraps `torch.Tensor.backward` when torch is imported (importing it here would slow every process)."""

    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def load_then_slow(module):
            load(module)
            backward = module.Tensor.backward

            def slow_backward(self, *args, **kwargs):
                time.sleep(SECONDS)
                return backward(self, *args, **kwargs)

            module.Tensor.backward = slow_backward

        spec.loader.exec_module = load_then_slow
        return spec


if SECONDS > 0:
    sys.meta_path.insert(0, _SlowBackwardOnceTorchLoads())
