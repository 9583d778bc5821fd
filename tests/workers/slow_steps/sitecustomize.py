"""Every backward pass of this process waits `SLOW_STEP_S` seconds first: training steps slower than SLURM's
KillWait allows between stop checks (a ResNet-152 at a large batch, or a busy node), made on this CPU by
putting this folder on a job's PYTHONPATH (Python imports `sitecustomize` at start-up). Test-only."""

import importlib.abc
import importlib.machinery
import os
import sys
import time

SECONDS = float(os.environ.get("SLOW_STEP_S", "0"))


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
