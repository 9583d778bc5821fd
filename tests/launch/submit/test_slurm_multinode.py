"""Multi-node jobs for real: `launch submit` of 2 nodes x 2 tasks on the 2-node minicluster.

Cells: DDP, DeepSpeed ZeRO-1 and ZeRO-2 each finish with every rank on the node SLURM put it on; DDP
and ZeRO-1 requeued mid-run by `scontrol requeue` (SLURM's SIGTERM to every process of the job, W&B's
service included, with W&B offline as users run it) save on both nodes, take their run directory's lock
back from their earlier start, resume and end bitwise equal to the uninterrupted job; a job signalled
(USR2) during its final evaluation requeues and still ends with its results. Jobs run through
submitit's sbatch/srun; ranks meet at the first node of the job.
"""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from pipeline.run.logger import read_metrics
from tests.support.slurm import job_logs, queue_state, require_minicluster, submit, wait_finished, wait_for
from tests.support.training import assert_bitwise_equal, final_state, small_run
from tests.support.wandb_offline import offline_runs

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TWO_NODES = ["--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "20"]
ENGINES = {"ddp": ["engine.name=ddp"],
           "zero1": ["engine.name=deepspeed", "engine.zero_stage=1"],
           "zero2": ["engine.name=deepspeed", "engine.zero_stage=2"]}
# Within the first epoch (46 steps at batch 32), checkpoints mid-epoch; long enough that a requeue at the first
# training record lands many steps before the last (see the requeue test).
TOTAL, CHECKPOINT_EVERY = 24, 8
FINAL_EVALUATION_TOTAL = 12  # the training before the final evaluation that test signals: its length does not matter


def overrides(data: Path, out: Path, engine: str, *extra: str, total: int = TOTAL) -> list:
    return small_run(data, out, *ENGINES[engine], "data.batch_size=32", f"schedule.total={total}",
                     f"schedule.milestones=[{total * 2 // 3}]", f"checkpoint.every_steps={CHECKPOINT_EVERY}",
                     "checkpoint.check_every_steps=2", "logging.wandb_mode=offline", *extra)


@pytest.fixture(scope="module")
def uninterrupted(digits_dataset, tmp_path_factory):
    """The three engines' 2x2 jobs, submitted together (SLURM runs them one after another), run to the end."""
    require_minicluster()
    root = tmp_path_factory.mktemp("uninterrupted")
    runs = {}
    for engine in ENGINES:
        runs[engine] = root / engine / "t"
        submit(runs[engine], overrides(digits_dataset, root / engine, engine), *TWO_NODES)
    wait_finished(runs.values(), timeout=1200)
    return runs


@pytest.mark.parametrize("engine", list(ENGINES))
def test_two_node_job_finishes_with_each_rank_on_its_slurm_node(uninterrupted, engine):
    run_dir = uninterrupted[engine]
    assert json.loads((run_dir / "results.json").read_text())["train"]["step"] == TOTAL
    placement = [json.loads((run_dir / "ranks" / f"rank-{r:05d}.json").read_text()) for r in range(4)]
    # SLURM's block distribution: tasks 0-1 on the first node, 2-3 on the second.
    for r, rank in enumerate(placement):
        assert (rank["launcher"], rank["world_size"], rank["rank"]) == ("slurm", 4, r)
        assert (rank["node"], rank["node_rank"], rank["local_rank"]) == (f"n{r // 2 + 1}", r // 2, r % 2), rank
        assert rank["master"].startswith("n1:")
    checkpoint = run_dir / "checkpoints" / f"step-{TOTAL:09d}"
    if engine == "ddp":
        assert "model" in torch.load(checkpoint / "state.pt", weights_only=True)
    else:  # ZeRO: one optimizer partition per rank, written by DeepSpeed itself
        assert len(list((checkpoint / "deepspeed").glob("zero_pp_rank_*_optim_states.pt"))) == 4


@pytest.mark.parametrize("engine", ["ddp", "zero1"])
def test_two_node_job_requeued_mid_run_saves_resumes_and_ends_bitwise_equal(uninterrupted, digits_dataset, tmp_path,
                                                                           engine):
    run_dir = tmp_path / "t"
    job = submit(run_dir, overrides(digits_dataset, tmp_path, engine), *TWO_NODES)
    # Requeued at the first training record (step 2): it is all-reduced over the ranks, so every rank has its signal
    # handler by then, and 22 steps remain for the SIGTERM to arrive and the ranks to agree on stopping.
    trained = lambda: any("loss" in m for m in read_metrics(run_dir))
    wait_for(trained, "the first training record", run_dir)
    subprocess.run(["scontrol", "requeue", job], check=True)  # SIGTERM to every process of the job, on both nodes
    stopped = lambda: any("stopped by SIGTERM" in str(m.get("event")) for m in read_metrics(run_dir))
    wait_for(lambda: stopped() and queue_state(job) == "PENDING", "the save and the requeue", run_dir)
    # As if the first start had died holding the lock (a node lost): a live pid on this host, this job's id.
    # Only the requeued start of this same job may take it back.
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "start": "earlier", "argv": ["the first start"],
            "slurm_job_id": job, "slurm_restarts": 0}
    (run_dir / "run.lock").write_text(json.dumps(lock))
    wait_finished([run_dir])

    metrics = read_metrics(run_dir)
    stops = [m for m in metrics if "stopped by SIGTERM" in str(m.get("event"))]
    # Strictly before the last step: a stop there (or in the final evaluation) would leave the resumed start nothing
    # to train, and the comparison with the uninterrupted job at the end would hold whatever the resume did.
    assert len(stops) == 1 and 2 <= stops[0]["step"] < TOTAL, job_logs(run_dir)
    logs = job_logs(run_dir, tail=0)
    assert f"resuming {run_dir} from step {stops[0]['step']}" in logs
    assert "taking over the stale lock" in logs and f"earlier start of this SLURM job {job}" in logs
    assert "Traceback" not in logs, logs
    assert [m["step"] for m in metrics if "loss" in m] == list(range(2, TOTAL + 1, 2))  # each step once
    # One W&B run across the requeue; what the first start's W&B service held when SLURM ended it was sent again by
    # the requeued start: its file holds every step, once, in order.
    runs = offline_runs(run_dir)
    assert len({r.run_id for r in runs if r.run_id}) == 1
    assert [row["_step"] for row in runs[-1].history if "loss" in row] == list(range(2, TOTAL + 1, 2))

    assert_bitwise_equal(final_state(uninterrupted[engine], TOTAL), final_state(run_dir, TOTAL),
                         f"{engine}: weights and optimizer state")


def test_job_signalled_during_its_final_evaluation_requeues_and_ends_with_results(digits_dataset, tmp_path):
    require_minicluster()
    run_dir = tmp_path / "t"
    # A final evaluation long enough to signal into (~9 s on 2 idle cores): ResNet-56 on the 1,500
    # training digits, one image per rank per batch.
    job = submit(run_dir, overrides(digits_dataset, tmp_path, "ddp", "model.name=cifar_resnet56",
                                    "data.eval_split=train", "data.eval_batch_per_gpu=4",
                                    total=FINAL_EVALUATION_TOTAL), *TWO_NODES)
    in_final_evaluation = lambda: any(m.get("event") == "final evaluation" for m in read_metrics(run_dir))
    wait_for(in_final_evaluation, "final evaluation", run_dir)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_finished([run_dir])

    results = json.loads((run_dir / "results.json").read_text())["train"]
    assert (results["step"], results["samples"]) == (FINAL_EVALUATION_TOTAL, 1500)
    events = [m.get("event") for m in read_metrics(run_dir) if "event" in m]
    assert "stopped by SIGUSR2 during the final evaluation" in events, events
    assert events.count("final evaluation") == 2  # cut short, then done again by the requeued job
    assert f"resuming {run_dir} from step {FINAL_EVALUATION_TOTAL}" in job_logs(run_dir)
