"""Kill soak: interrupt a training run K times at random steps, resume after each, compare bitwise.

    python benchmarks/kill_soak.py [--engines ddp:20,deepspeed:10] [--nproc 2] [--seed 0] [--data DIR] [--keep DIR]
                                   [--actions kill-rank,usr2,...]

For each engine, one small run (ResNet-8 on the digits, 2 processes over gloo, a checkpoint every 4
steps, W&B offline as users run it) is trained uninterrupted, then again while being interrupted K times.
Each time, once the run has logged a random number of steps past where it resumed, one of these happens
(each once per round of seven, in a random order; `--actions` takes turns with fewer):

    kill-rank     SIGKILL to one random rank (a crashed process or a lost node: nothing is saved)
    usr2          SIGUSR2 to every process of the run (SLURM's warning before the time limit: save, exit)
    sigterm       SIGTERM to every process of the run, W&B's service included (scancel, a requeue, a
                  preemption: save and exit)
    truncate      SIGKILL to every process, then the newest complete checkpoint's files cut in half (a node
                  crash, a full disk): the next start must name it and resume from the one before
    second-start  the same command started again while the run trains (paused meanwhile, so that it cannot end
                  first): refused by the run's lock (exit 4) without touching it; the run is then stopped
                  with SIGTERM
    torn-metrics  SIGKILL to every process, then half a record appended to metrics.jsonl (`{"step": 11, "kind":
                  "tra`: an append a node crash or a full disk cut short): the next start must cut it off, say
                  so in a warning event, and resume
    sigstop-rank  SIGSTOP to one random rank (a process stuck in the kernel, a node that stops answering):
                  the others must end the job by themselves after engine.hang_timeout_minutes (0.2 on this
                  start alone: a whole job paused, as second-start does, must not count as hung), with exit
                  code 8 and no process left behind

"Every process of the run" is what SLURM signals: each rank and all it started (W&B's service, loader
workers), not the launcher. After each interruption the same command is started again and resumes from its
latest intact checkpoint. After the K-th it runs to the end. The final weights must be identical, bit for
bit, to the uninterrupted run's, and no process of the run may outlive its launcher. The results go to
benchmarks/results/kill_soak.md (each interruption: action, step, exit code, the step resumed from, and for a
torn line whether the next start warned of it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import REPO, machine, sh, write_report  # benchmarks/ is this script's directory

sys.path.insert(0, str(REPO))
from launch.submit.local import child_processes, process_tree  # noqa: E402
from pipeline.dist.exit_codes import HUNG, LOCKED  # noqa: E402
from pipeline.run.jsonl import read_jsonl  # noqa: E402
from pipeline.run.layout import RunDir  # noqa: E402

CONFIG = str(REPO / "configs" / "demo" / "digits.yaml")
ACTIONS = ("kill-rank", "usr2", "sigterm", "truncate", "second-start", "torn-metrics", "sigstop-rank")
HANG_TIMEOUT = ["engine.hang_timeout_minutes=0.2"]  # the start whose rank is stopped: 12 s, not 10 minutes
TORN_WARNING = "dropped its last line"  # what a start logs when it cut off a torn last line of metrics.jsonl
ENGINES = {"ddp": ["engine.name=ddp"], "deepspeed": ["engine.name=deepspeed", "engine.zero_stage=1"]}


def command(args: list[str], nproc: int) -> list[str]:
    """`launch local`, as a user runs it: its exit code is the ranks' (torchrun's own is 1 for any failure)."""
    return [sys.executable, "-m", "launch", "local", CONFIG, *args, "--nproc", str(nproc)]


def overrides(data: Path, out: Path, engine: str, total: int) -> list[str]:
    return [f"data.root={data}", f"run.out_dir={out}", "run.name=run", "run.deterministic=true",
            "model.name=cifar_resnet8", "schedule.unit=iteration", f"schedule.total={total}",
            f"schedule.milestones=[{3 * total // 4}]", "logging.every_steps=1", "logging.wandb_mode=offline",
            "eval.every_epochs=0", "checkpoint.every_steps=4", "checkpoint.check_every_steps=2",
            "checkpoint.every_minutes=0", *ENGINES[engine]]


class Run:
    """One start of the training command, with its log; knows its ranks and the steps it has logged."""

    def __init__(self, args: list[str], nproc: int, run_dir: Path, log: Path) -> None:
        self.run_dir, self.log = run_dir, log
        self._offset = log.stat().st_size if log.exists() else 0  # this start's output: the log past here
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(command(args, nproc), cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        """What this start has printed so far (the last line may be half written)."""
        with open(self.log, "rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def logged_step(self) -> int:
        """The last training step this start has logged (-1: none yet).

        The primary prints each record on the console after appending it to metrics.jsonl, so this start's
        console lines say what it has logged. (metrics.jsonl alone cannot: a start cuts it back to the step it
        resumes from, which can drop the start event of an earlier start that had resumed from a later step.)"""
        return max((int(step) for step in re.findall(r"^step=(\d+) .*\bloss=", self.output(), re.MULTILINE)),
                   default=-1)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def survivors(self) -> list[int]:
        """Processes of this run still alive after its launcher ended (found by the run directory)."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(self.run_dir.parent).encode() in cmdline.read_bytes():
                    found.append(int(cmdline.parent.name))
            except OSError:
                continue
        return [pid for pid in found if pid != os.getpid()]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    # Nine digits exactly: a staging copy (step-N.tmp) may hold its marker for an instant before its rename.
    return sorted(p.parent for p in RunDir(run_dir).checkpoints.glob("step-?????????/COMPLETE"))


def latest_step(run_dir: Path, damaged: dict[Path, str]) -> int:
    """The step the next start resumes from: the newest complete checkpoint that is not one we damaged (a damaged
    one that training has saved again since has another COMPLETE marker)."""
    done = [int(p.name.split("-")[1]) for p in complete_checkpoints(run_dir)
            if damaged.get(p) != (p / "COMPLETE").read_text()]
    return max(done, default=0)


def intact_checkpoints(run_dir: Path, damaged: dict[Path, str]) -> int:
    return sum(damaged.get(p) != (p / "COMPLETE").read_text() for p in complete_checkpoints(run_dir))


def cut_newest_checkpoint(run_dir: Path, damaged: dict[Path, str]) -> None:
    """Every file of the newest complete checkpoint cut to half its size, its COMPLETE marker kept."""
    newest = complete_checkpoints(run_dir)[-1]
    for path in newest.rglob("*.pt"):
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    damaged[newest] = (newest / "COMPLETE").read_text()


def tear_metrics(run_dir: Path, step: int) -> None:
    """Half a record at the end of metrics.jsonl, as an append cut short by a crash or a full disk leaves it."""
    with open(RunDir(run_dir).metrics, "ab") as metrics:
        metrics.write(f'{{"step": {step}, "kind": "tra'.encode())


def torn_line_warned(run: Run, resumed_from: int) -> bool:
    """Whether this start cut off the torn last line and said so: on its console, and as a warning event in
    metrics.jsonl at the step it resumed from."""
    events = [record for record in read_jsonl(RunDir(run.run_dir).metrics).records
              if TORN_WARNING in str(record.get("event")) and record.get("step") == resumed_from]
    return bool(events) and TORN_WARNING in run.output()


def second_start(args: list[str], nproc: int, run_dir: Path, log: Path) -> int:
    """Start the same command while the run trains; returns its exit code (refused: LOCKED) after checking that it
    wrote nothing: the run's config, lock and W&B runs are as they were."""
    run = RunDir(run_dir)
    before = [run.config.read_bytes(), run.lock.read_bytes(),
              sorted(run_dir.glob("wandb/offline-run-*"))]
    with open(log, "ab") as out:
        code = subprocess.run(command(args, nproc), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600).returncode
    after = [run.config.read_bytes(), run.lock.read_bytes(),
             sorted(run_dir.glob("wandb/offline-run-*"))]
    if after != before:
        raise RuntimeError(f"a refused second start changed {run_dir}")
    return code


def soak(engine: str, kills: int, data: Path, out: Path, nproc: int, rng: random.Random,
         actions: tuple[str, ...] = ACTIONS) -> dict:
    total = 40 + 6 * kills
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    reference = out / f"{engine}-whole"
    run = Run(overrides(data, reference, engine, total), nproc, reference / "run", logs / f"{engine}-whole.log")
    assert run.wait() == 0, f"the uninterrupted run failed: see {logs / f'{engine}-whole.log'}"

    soaked = out / f"{engine}-soaked"
    run_dir, rows, started, damaged = soaked / "run", [], time.time(), {}
    log = logs / f"{engine}-soaked.log"
    for k in range(kills):
        resumed_from = latest_step(run_dir, damaged)
        target = min(resumed_from + rng.randint(2, 10), total - 1)
        if k % len(actions) == 0:  # every action once in each round, in a random order
            order = rng.sample(actions, len(actions))
        action = order[k % len(actions)]
        args = overrides(data, soaked, engine, total) + (HANG_TIMEOUT if action == "sigstop-rank" else [])
        run = Run(args, nproc, run_dir, log)
        # A checkpoint is cut only where an intact one remains before it: with none, the run rightly stops and
        # asks what to do (exit 7), which is tested elsewhere; a soak resumes by itself.
        enough = (lambda: intact_checkpoints(run_dir, damaged) >= 2) if action == "truncate" else (lambda: True)
        while run.proc.poll() is None and (run.logged_step() < target or not enough()):
            time.sleep(0.05)
        if run.proc.poll() is not None:
            raise RuntimeError(f"{engine}: start {k + 1} ended (code {run.proc.returncode}) before step {target}; "
                               f"see {log}")
        if rows and rows[-1]["action"] == "torn-metrics":
            rows[-1]["torn_warned"] = torn_line_warned(run, resumed_from)
        at, ranks = run.logged_step(), child_processes(run.proc.pid)  # torchrun's children: the ranks
        job = [pid for rank in ranks for pid in process_tree(rank)]  # what SLURM signals: ranks and their helpers
        refused = None
        if action == "second-start":
            _signal(job, signal.SIGSTOP)  # paused meanwhile, so that it is still training when the second one asks
            refused = second_start(args, nproc, run_dir, log)
            _signal(job, signal.SIGCONT)
            _signal(job, signal.SIGTERM)
        elif action in ("kill-rank", "truncate", "torn-metrics"):
            _signal([rng.choice(ranks)] if action == "kill-rank" else job, signal.SIGKILL)
        elif action == "sigstop-rank":
            _signal([rng.choice(ranks)], signal.SIGSTOP)  # the job must end itself: HUNG
        else:
            _signal(job, signal.SIGUSR2 if action == "usr2" else signal.SIGTERM)
        code = run.wait()
        if action == "truncate":
            cut_newest_checkpoint(run_dir, damaged)
        if action == "torn-metrics":
            tear_metrics(run_dir, at + 1)
        left = run.survivors()
        for pid in left:  # counted above (a failure of the soak); ended so that the next start runs alone
            _signal([pid], signal.SIGCONT)  # a stopped rank the job did not end
            _signal([pid], signal.SIGKILL)
        rows.append({"k": k + 1, "action": action, "resumed_from": resumed_from, "at_step": at,
                     "saved": latest_step(run_dir, damaged), "exit": code, "second_start_exit": refused,
                     "torn_warned": None, "left_behind": len(left)})
        print(f"{engine} {k + 1}/{kills}: {action} at step {at} (resumed from {resumed_from}), exit {code}"
              + (f", second start exit {refused}" if refused is not None else "")
              + f", next start resumes from {rows[-1]['saved']}, {len(left)} process(es) left behind", flush=True)
    resumed_from = latest_step(run_dir, damaged)
    run = Run(overrides(data, soaked, engine, total), nproc, run_dir, log)
    finished = run.wait() == 0
    if rows and rows[-1]["action"] == "torn-metrics":
        rows[-1]["torn_warned"] = torn_line_warned(run, resumed_from)

    from pipeline.engine.weights import load_weights

    a = load_weights(RunDir(reference / "run").checkpoints / f"step-{total:09d}")
    b = load_weights(RunDir(run_dir).checkpoints / f"step-{total:09d}") if finished else {}
    identical = finished and a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)
    refusals_ok = all(r["second_start_exit"] == LOCKED for r in rows if r["action"] == "second-start")
    fell_back = _fallbacks_named(log, damaged)
    torn_warned = all(r["torn_warned"] for r in rows if r["action"] == "torn-metrics")
    hung_ended = all(r["exit"] == HUNG for r in rows if r["action"] == "sigstop-rank")
    return {"engine": engine, "kills": kills, "total": total, "rows": rows, "finished": finished,
            "identical": identical, "left_behind": sum(r["left_behind"] for r in rows), "refused": refusals_ok,
            "fell_back": fell_back, "torn_warned": torn_warned, "hung_ended": hung_ended,
            "minutes": (time.time() - started) / 60}


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # it ended on its own meanwhile (a loader worker, W&B's monitor)


def _fallbacks_named(log: Path, damaged: dict[Path, str]) -> bool:
    """Every checkpoint we damaged was named in a start's log as damaged and not used."""
    text = log.read_text(errors="replace")
    return all(f"checkpoint {path} is damaged" in text for path in damaged)


def report(results: list[dict], args: argparse.Namespace) -> list[str]:
    lines = ["# Kill soak: interrupted K times, resumed, compared bitwise", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/kill_soak.py --engines {args.engines} --nproc {args.nproc} "
             f"--seed {args.seed}{actions_flag(args.actions)}` (ResNet-8 on the digits, DDP / DeepSpeed ZeRO-1 over "
             "gloo, W&B offline, a checkpoint every 4 steps, the stop check every 2).", "",
             "| engine | interruptions | " + " / ".join(ACTIONS) + " | finished | final weights identical | "
             "second starts refused | damaged checkpoints named | torn lines cut and warned of | stopped ranks: "
             f"job ended, exit {HUNG} | processes left behind | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        counts = " / ".join(str(sum(row["action"] == a for row in r["rows"])) for a in ACTIONS)
        yes = lambda flag: "yes" if flag else "NO"
        lines.append(f"| {r['engine']} | {r['kills']} | {counts} | {yes(r['finished'])} | {yes(r['identical'])} | "
                     f"{yes(r['refused'])} | {yes(r['fell_back'])} | {yes(r['torn_warned'])} | "
                     f"{yes(r['hung_ended'])} | {r['left_behind']} | {r['minutes']:.1f} |")
    for r in results:
        lines += ["", f"## {r['engine']}: {r['total']} steps", "",
                  "| # | action | resumed from step | at step | next start resumes from | exit code | left behind |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {row['k']} | {row['action']} | {row['resumed_from']} | {row['at_step']} | {row['saved']} | "
                  f"{row['exit']}{_outcome(row)} | {row['left_behind']} |" for row in r["rows"]]
    return lines


def actions_flag(actions: tuple[str, ...]) -> str:
    """The command line's `--actions`, where it was not all seven."""
    return "" if actions == ACTIONS else f" --actions {','.join(actions)}"


def parse_actions(text: str) -> tuple[str, ...]:
    """`--actions`: some of ACTIONS, comma-separated."""
    actions = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown or not actions:
        raise argparse.ArgumentTypeError(f"unknown action(s) {', '.join(unknown) or '(none given)'}: choose among "
                                         f"{', '.join(ACTIONS)}")
    return actions


def _outcome(row: dict) -> str:
    """What an interruption's exit code does not say: the second start's refusal, the torn line's warning."""
    if row["second_start_exit"] is not None:
        return f" (second start: {row['second_start_exit']})"
    if row["action"] == "torn-metrics":
        return " (next start: torn line cut, " + ("warned)" if row["torn_warned"] else "NOT warned)")
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="ddp:20,deepspeed:10", help="engine:K pairs (K interruptions each)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of actions, steps and ranks")
    parser.add_argument("--actions", type=parse_actions, default=ACTIONS, metavar="A,B,...",
                        help=f"the interruptions that take turns (default: all seven: {','.join(ACTIONS)})")
    parser.add_argument("--data", type=Path, help="prepared digits shards (default: built in a temporary dir)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kill_soak.md")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the runs and their logs in DIR/runs (default: a temporary directory, removed)")
    args = parser.parse_args()
    plan = [(name, int(k)) for name, k in (pair.split(":") for pair in args.engines.split(","))]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() if args.keep is None else contextlib.nullcontext(args.keep) as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            sh("-m", "data_prep", "synth", "--kind", "cifar10", "--out", str(tmp / "raw"))
            sh("-m", "data_prep", "cifar10", "--src", str(tmp / "raw" / "cifar-10-batches-py"), "--out",
               str(tmp / "shards"), "--no-progress")
            data = tmp / "shards"
        results = [soak(name, kills, data, tmp / "runs", args.nproc, rng, args.actions) for name, kills in plan]
    write_report(args.out, report(results, args))
    ok = all(r["identical"] and r["refused"] and r["fell_back"] and r["torn_warned"] and r["hung_ended"]
             and not r["left_behind"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
