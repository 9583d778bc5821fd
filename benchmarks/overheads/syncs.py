"""Section `syncs`: host syncs counted per training step and per evaluation batch."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path

from overheads.common import DEMO_CONFIG, REPO, Lines, digits, free_port, load_tolerant, table

SYNC_CALLS = ("item", "__int__", "__float__", "__bool__", "tolist", "cpu", "numpy")


class SyncCounter:
    """Counts the SYNC_CALLS made on tensors while installed, by phase and call site.

    Phase: "evaluation" while `evaluate` of pipeline's evaluation.py is on the stack; otherwise "start-up"
    until the model's first training forward, "training" after it. The model's outermost forwards are counted
    too (a global forward hook): in evaluation one per batch with one view (the centre protocol)."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()  # (phase, site, call) -> count
        self.forwards: Counter = Counter()  # phase -> outermost module forwards
        self._local = threading.local()
        self._originals: dict[str, object] = {}
        self._hooks: list = []
        self._benchmarks = str(Path(__file__).resolve().parents[1])  # the counting code's own frames are not sites
        self._installed = (sys.prefix, sys.base_prefix)  # a virtual environment inside the repository is not ours

    def __enter__(self) -> SyncCounter:
        import torch
        from torch.nn.modules import module

        for name in SYNC_CALLS:
            self._originals[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        self._hooks = [module.register_module_forward_pre_hook(self._forward_in),
                       module.register_module_forward_hook(self._forward_out)]
        return self

    def __exit__(self, *exc) -> None:
        import torch

        for name, original in self._originals.items():
            if original is None:
                delattr(torch.Tensor, name)  # it was inherited: uncover the base class's
            else:
                setattr(torch.Tensor, name, original)
        for hook in self._hooks:
            hook.remove()

    def _counting(self, name: str, original):
        def call(tensor, *args, **kwargs):
            depth = getattr(self._local, "depth", 0)
            if depth == 0:  # not a call that another counted call makes
                phase, site = self._where(sys._getframe(1))
                self.calls[(phase, site, name)] += 1
            self._local.depth = depth + 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._local.depth = depth
        return call

    def _forward_in(self, module, inputs) -> None:
        depth = getattr(self._local, "forward_depth", 0)
        if depth == 0:
            self.forwards["evaluation" if self._in_evaluate(sys._getframe(1)) else
                          "training" if module.training else "other"] += 1
        self._local.forward_depth = depth + 1

    def _forward_out(self, module, inputs, output) -> None:
        self._local.forward_depth = getattr(self._local, "forward_depth", 1) - 1

    @staticmethod
    def _in_evaluate(frame) -> bool:
        while frame is not None:
            if frame.f_code.co_name == "evaluate" and frame.f_code.co_filename.endswith("evaluation.py"):
                return True
            frame = frame.f_back
        return False

    def _ours(self, path: str) -> bool:
        return path.startswith(str(REPO)) and not path.startswith(self._benchmarks) and \
            "site-packages" not in path and not path.startswith(self._installed)

    def _where(self, frame) -> tuple[str, str]:
        """(phase, site): the site is the innermost frame in this repository and its caller in another of its files
        ("pipeline/dist.py:any_rank < pipeline/train.py:_train"), plus the innermost frame when outside it."""
        inner, ours, phase = frame, [], None  # ours: the innermost frames in this repository, two files at most
        while frame is not None:
            path = frame.f_code.co_filename
            if phase is None and frame.f_code.co_name == "evaluate" and path.endswith("evaluation.py"):
                phase = "evaluation"
            if len(ours) < 2 and self._ours(path) and (not ours or ours[0][0] != path):
                ours.append((path, f"{Path(path).relative_to(REPO)}:{frame.f_code.co_name}"))
            frame = frame.f_back
        site = " < ".join(name for _, name in ours) or None
        phase = phase or ("training" if self.forwards["training"] else "start-up")
        inner_path = inner.f_code.co_filename
        if not self._ours(inner_path):
            short = inner_path.split("site-packages/")[-1]
            site = f"{site or '?'} (in {short}:{inner.f_code.co_name})"
        return phase, site or "?"



def _process_group_of_one() -> None:
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                                timeout=datetime.timedelta(minutes=10))


def host_syncs(args: argparse.Namespace, work: Path) -> Lines:
    from pipeline.run.layout import RunDir
    from pipeline.train.loop import train

    shards = digits(work)
    out = work / "sync-runs"
    every_log, every_check = 10, 10
    overrides = [f"data.root={shards}", f"data.backend={args.sync_backend}", "data.num_threads=1",
                 "data.eval_batch_size=32", f"run.out_dir={out}", "run.name=syncs", "run.device=cpu",
                 f"model.name={args.model}", "schedule.unit=iteration", f"schedule.total={args.sync_steps}",
                 "schedule.milestones=[]", f"logging.every_steps={every_log}",
                 f"checkpoint.check_every_steps={every_check}", "checkpoint.every_minutes=0",
                 "checkpoint.every_steps=0", "eval.every_epochs=0", f"eval.every_steps={args.sync_steps // 2}",
                 # This counts the trainer's host syncs; W&B reads none of its tensors (it is given the numbers
                 # the trainer already read), so it is off: nothing but the trainer runs, and nothing is uploaded.
                 "logging.wandb_mode=disabled"]
    cfg, dropped = load_tolerant(DEMO_CONFIG, overrides)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    try:
        with SyncCounter() as counter:
            # A process group of one (gloo), as every rank of a multi-GPU job has: without one, pipeline.dist's
            # collectives (the stop/save agreement, the logged sums, the evaluation totals, `on_every_rank`)
            # return at once and their host reads would not be counted. `train` keeps this group (it starts
            # one only when there is none) and ends it; the engine stays the plain module (world of 1).
            _process_group_of_one()
            result = train(cfg)
    finally:
        os.environ.update(saved)
    steps = int(getattr(result, "step", 0) or counter.forwards["training"])
    records = [json.loads(line) for line in RunDir(out / "syncs").metrics.read_text().splitlines()]
    evaluations = sum(1 for r in records if "val_top1_error" in r)
    per_epoch = next((r.get("steps_per_epoch") for r in records if r.get("event") == "start"), None)
    by_phase: Counter = Counter()
    for (phase, _, _), n in counter.calls.items():
        by_phase[phase] += n
    batches = counter.forwards["evaluation"]
    rows = [["training (the loop, after the first training forward)", by_phase["training"], f"{steps} steps",
             f"{by_phase['training'] / max(steps, 1):.2f}"],
            ["start-up (before the first training forward)", by_phase["start-up"], "-", "-"],
            ["start-up and training, per step (all outside evaluation)", by_phase["training"] + by_phase["start-up"],
             f"{steps} steps", f"{(by_phase['training'] + by_phase['start-up']) / max(steps, 1):.2f}"],
            ["evaluation (`evaluate` on the stack)", by_phase["evaluation"], f"{batches} batches",
             f"{by_phase['evaluation'] / max(batches, 1):.2f}"]]
    sites = sorted(counter.calls.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
    lines = ["### 1. Host syncs per training step and per evaluation batch", "",
             "`pipeline.train.loop.train(cfg)` in this process, world of 1 in a gloo process group of its own (as a "
             "rank of a multi-GPU job has one; without it pipeline.dist's collectives skip their reads), CPU: "
             f"`{args.model}` on the digits "
             f"(`python -m data_prep synth --kind cifar10` + `python -m data_prep cifar10`, 1,500 train / 297 test), "
             f"data.backend={args.sync_backend}, batch 64, {steps} steps; logging.every_steps={every_log} (a logged "
             f"window reads its sums), checkpoint.check_every_steps={every_check} (the stop/save agreement), "
             f"a checkpoint at each epoch end (every {per_epoch} steps) and one after the final evaluation; "
             f"an evaluation every {args.sync_steps // 2} steps and the final one ({evaluations} in all, "
             f"evaluation batch 32). W&B off (logging.wandb_mode=disabled): W&B is not involved in host syncs. "
             f"Counted: calls on tensors of {', '.join(f'`{c}`' for c in SYNC_CALLS)} (each would wait for a GPU; "
             "on this CPU they cost nothing, the count is what matters). Evaluation batches: the model's outermost "
             "forwards inside `evaluate`.", ""]
    if dropped:
        lines += [f"Settings this commit's schema does not know, left out: {', '.join(dropped)}.", ""]
    if not batches:
        lines += ["No model forward ran inside `evaluate`: the evaluation is attributed by a function named "
                  "`evaluate` in a file evaluation.py on the stack; if it has moved or been renamed, update "
                  "`SyncCounter` (its syncs are counted as training until then).", ""]
    lines += table(["phase", "syncs", "over", "syncs per step / batch"], rows)
    lines += ["", "Where they are made:", ""]
    lines += table(["phase", "call site", "call", "count"], [[p, s, c, n] for (p, s, c), n in sites])
    return lines

