"""Kill soak: interrupt a training run K times at random steps, resume after each, compare bitwise.

    python benchmarks/kill_soak.py [--engines ddp:20,deepspeed:10] [--nproc 2] [--seed 0] [--data DIR]

For each engine, one small run (ResNet-8 on the digits, 2 processes over gloo, a checkpoint every 4
steps) is trained uninterrupted, then again while being interrupted K times. Each time, once the run has
logged a random number of steps past where it resumed, one of these happens (each once per three
interruptions, in a random order):

    kill-rank   SIGKILL to one random rank (a crashed process or a lost node: nothing is saved)
    usr2        SIGUSR2 to every rank (SLURM's warning before the time limit: save, exit, requeue)
    sigterm     SIGTERM to every rank (scancel, a preemption: save and exit)

and the run is started again with the same command, which resumes from its latest complete checkpoint.
After the K-th interruption it runs to the end. The final weights must be identical, bit for bit, to the
uninterrupted run's, and no process of the run may outlive its launcher. The results go to
benchmarks/results/kill_soak.md (each interruption: action, step, exit code, the step resumed from).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from train_throughput import REPO, machine, sh, write_report  # benchmarks/ is this script's directory

sys.path.insert(0, str(REPO))
from launch.local import child_processes, local_command  # noqa: E402

CONFIG = str(REPO / "configs" / "demo" / "digits.yaml")
ACTIONS = ("kill-rank", "usr2", "sigterm")
ENGINES = {"ddp": ["engine.name=ddp"], "deepspeed": ["engine.name=deepspeed", "engine.zero_stage=1"]}


def overrides(data: Path, out: Path, engine: str, total: int) -> List[str]:
    return [f"data.root={data}", f"run.out_dir={out}", "run.name=run", "run.deterministic=true",
            "model.name=cifar_resnet8", "schedule.unit=iteration", f"schedule.total={total}",
            f"schedule.milestones=[{3 * total // 4}]", "logging.every_steps=1", "logging.wandb_mode=disabled",
            "eval.every_epochs=0", "checkpoint.every_steps=4", "checkpoint.check_every_steps=2",
            "checkpoint.every_minutes=0", *ENGINES[engine]]


class Run:
    """One start of the training command, with its log; knows its ranks and the steps it has logged."""

    def __init__(self, args: List[str], nproc: int, run_dir: Path, log: Path, starts_before: int = 0) -> None:
        self.run_dir, self.starts_before = run_dir, starts_before
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(local_command(CONFIG, args, nproc), cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def logged_step(self) -> int:
        """The last training step this start has logged (-1: none yet).

        A start cuts metrics.jsonl back to the step it resumes from and then logs a "start" event, so the
        lines after the (starts_before + 1)-th start event are this start's (earlier lines may be a killed
        start's, logged past its last checkpoint)."""
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text(errors="replace").split("\n")[:-1] if path.exists() else []  # the last: half written
        starts = [i for i, line in enumerate(lines) if '"event": "start"' in line]
        if len(starts) <= self.starts_before:
            return -1
        mine = lines[starts[self.starts_before]:]
        return max((json.loads(line)["step"] for line in mine if '"loss"' in line), default=-1)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def survivors(self) -> List[int]:
        """Processes of this run still alive after its launcher ended (found by the run directory)."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(self.run_dir.parent).encode() in cmdline.read_bytes():
                    found.append(int(cmdline.parent.name))
            except OSError:
                continue
        return [pid for pid in found if pid != os.getpid()]


def latest_step(run_dir: Path) -> int:
    done = [int(p.parent.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*/COMPLETE")]
    return max(done, default=0)


def soak(engine: str, kills: int, data: Path, out: Path, nproc: int, rng: random.Random) -> Dict:
    total = 40 + 6 * kills
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    reference = out / f"{engine}-whole"
    run = Run(overrides(data, reference, engine, total), nproc, reference / "run", logs / f"{engine}-whole.log")
    assert run.wait() == 0, f"the uninterrupted run failed: see {logs / f'{engine}-whole.log'}"

    soaked = out / f"{engine}-soaked"
    run_dir, rows, started = soaked / "run", [], time.time()
    for k in range(kills):
        resumed_from = latest_step(run_dir)
        target = min(resumed_from + rng.randint(2, 10), total - 1)
        if k % len(ACTIONS) == 0:  # every action once in each round of three, in a random order
            order = rng.sample(ACTIONS, len(ACTIONS))
        action = order[k % len(ACTIONS)]
        run = Run(overrides(data, soaked, engine, total), nproc, run_dir, logs / f"{engine}-soaked.log", k)
        while run.proc.poll() is None and run.logged_step() < target:
            time.sleep(0.05)
        if run.proc.poll() is not None:
            raise RuntimeError(f"{engine}: start {k + 1} ended (code {run.proc.returncode}) before step {target}; "
                               f"see {logs / f'{engine}-soaked.log'}")
        at, ranks = run.logged_step(), child_processes(run.proc.pid)  # torchrun's children: the ranks
        victims = [rng.choice(ranks)] if action == "kill-rank" else ranks
        for pid in victims:
            os.kill(pid, signal.SIGKILL if action == "kill-rank" else
                    signal.SIGUSR2 if action == "usr2" else signal.SIGTERM)
        code = run.wait()
        left = run.survivors()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        rows.append({"k": k + 1, "action": action, "resumed_from": resumed_from, "at_step": at,
                     "saved": latest_step(run_dir), "exit": code, "left_behind": len(left)})
        print(f"{engine} {k + 1}/{kills}: {action} at step {at} (resumed from {resumed_from}), exit {code}, "
              f"latest checkpoint {rows[-1]['saved']}, {len(left)} process(es) left behind", flush=True)
    run = Run(overrides(data, soaked, engine, total), nproc, run_dir, logs / f"{engine}-soaked.log")
    finished = run.wait() == 0

    from pipeline.engine import load_weights

    a = load_weights(reference / "run" / "checkpoints" / f"step-{total:09d}")
    b = load_weights(run_dir / "checkpoints" / f"step-{total:09d}") if finished else {}
    identical = finished and a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)
    return {"engine": engine, "kills": kills, "total": total, "rows": rows, "finished": finished,
            "identical": identical, "left_behind": sum(r["left_behind"] for r in rows),
            "minutes": (time.time() - started) / 60}


def report(results: List[Dict], args: argparse.Namespace) -> List[str]:
    lines = ["# Kill soak: interrupted K times, resumed, compared bitwise", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/kill_soak.py --engines {args.engines} --nproc {args.nproc} "
             f"--seed {args.seed}` (ResNet-8 on the digits, DDP / DeepSpeed ZeRO-1 over gloo, a checkpoint every "
             "4 steps, the stop check every 2).", "",
             "| engine | interruptions | kill-rank / usr2 / sigterm | finished | final weights identical | "
             "processes left behind | minutes |", "|---|---|---|---|---|---|---|"]
    for r in results:
        counts = " / ".join(str(sum(row["action"] == a for row in r["rows"])) for a in ACTIONS)
        lines.append(f"| {r['engine']} | {r['kills']} | {counts} | {'yes' if r['finished'] else 'NO'} | "
                     f"{'yes' if r['identical'] else 'NO'} | {r['left_behind']} | {r['minutes']:.1f} |")
    for r in results:
        lines += ["", f"## {r['engine']}: {r['total']} steps", "",
                  "| # | action | resumed from step | at step | latest checkpoint after | exit code |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['k']} | {row['action']} | {row['resumed_from']} | {row['at_step']} | {row['saved']} | "
                  f"{row['exit']} |" for row in r["rows"]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="ddp:20,deepspeed:10", help="engine:K pairs (K interruptions each)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of actions, steps and ranks")
    parser.add_argument("--data", type=Path, help="prepared digits shards (default: built in a temporary dir)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kill_soak.md")
    args = parser.parse_args()
    plan = [(name, int(k)) for name, k in (pair.split(":") for pair in args.engines.split(","))]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            sh("-m", "data_prep", "synth", "--kind", "cifar10", "--out", str(tmp / "raw"))
            sh("-m", "data_prep", "cifar10", "--src", str(tmp / "raw" / "cifar-10-batches-py"), "--out",
               str(tmp / "shards"), "--no-progress")
            data = tmp / "shards"
        results = [soak(name, kills, data, tmp / "runs", args.nproc, rng) for name, kills in plan]
    write_report(args.out, report(results, args))
    return 0 if all(r["identical"] and not r["left_behind"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
