"""Rank, node, world size and master from whichever launcher started the process; GPU binding.

The SLURM environments below are the variables srun gave real tasks of a 2-node x 2-task job on the
minicluster (`srun -N2 --ntasks-per-node=2 env`), and what its batch script had.
"""

import numpy as np
import pytest

from pipeline.dist import DistInfo, cuda_device_index, dist_info_from_env, export_env, first_host, job_hosts, job_port

SRUN_TASK_3 = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
               "SLURMD_NODENAME": "n2", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "123",
               "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2(x2)"}


def test_no_launcher_is_a_world_of_one():
    info = dist_info_from_env({})
    assert (info.rank, info.world_size, info.source) == (0, 1, "single") and info.is_primary
    assert not info.distributed


def test_torchrun_variables_win_over_slurm():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
           "MASTER_ADDR": "n1", "MASTER_PORT": "1234", **{k: v for k, v in SRUN_TASK_3.items() if k != "SLURM_PROCID"},
           "SLURM_PROCID": "0"}
    info = dist_info_from_env(env)
    assert (info.rank, info.local_rank, info.world_size, info.master_addr, info.master_port, info.source) == (
        3, 1, 4, "n1", 1234, "torchrun")
    assert (info.node_rank, info.local_world_size, info.node_name) == (1, 2, "n2")
    assert not info.is_primary and info.distributed


def test_srun_task_of_a_two_node_job():
    info = dist_info_from_env(SRUN_TASK_3)
    assert (info.rank, info.local_rank, info.world_size, info.source) == (3, 1, 4, "slurm")
    assert (info.node_rank, info.local_world_size, info.node_name) == (1, 2, "n2")
    assert (info.master_addr, info.master_port) == ("n1", 20123)  # first node; port from the job id


def test_job_ports_are_never_ephemeral_and_neighbouring_jobs_differ():
    ports = np.array([job_port(job_id) for job_id in range(1_000_001)])
    assert not ((ports >= 32768) & (ports <= 60999)).any()  # Linux's ephemeral range (ip_local_port_range)
    assert ports.min() >= 1024 and ports.max() < 65536
    assert (ports[1:] != ports[:-1]).all() and len(set(ports[:10_000])) == 10_000  # jobs submitted together


def test_uneven_tasks_per_node():
    env = {**SRUN_TASK_3, "SLURM_NTASKS": "5", "SLURM_TASKS_PER_NODE": "3,2", "SLURM_NODEID": "1"}
    assert dist_info_from_env(env).local_world_size == 2
    env = {**env, "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NODEID": "2"}
    assert dist_info_from_env(env).local_world_size == 1


def test_sbatch_script_itself_is_not_a_rank():
    """The batch script has SLURM_PROCID=0 and SLURM_NTASKS=4 but no step: it must not wait for 3 more ranks."""
    batch = {k: v for k, v in SRUN_TASK_3.items() if k != "SLURM_STEP_ID"}
    batch.update(SLURM_PROCID="0", SLURM_NODEID="0")
    assert dist_info_from_env(batch).world_size == 1


def test_export_env_gives_libraries_the_torchrun_names():
    env: dict = {}
    export_env(dist_info_from_env(SRUN_TASK_3), env)
    assert env == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
                   "MASTER_ADDR": "n1", "MASTER_PORT": "20123"}
    # Read back as torchrun's, the same place in the job.
    again = dist_info_from_env({**env, "SLURMD_NODENAME": "n2"})
    assert (again.rank, again.local_rank, again.world_size, again.node_rank, again.master_addr) == (3, 1, 4, 1, "n1")


def test_node_lists_expand_like_submitit():
    assert job_hosts("gpu[003-005,009],cpu1") == ["gpu003", "gpu004", "gpu005", "gpu009", "cpu1"]
    assert first_host("node7") == "node7" and first_host("a[10,2]") == "a10"
    assert job_hosts("") == ["127.0.0.1"]


@pytest.mark.parametrize("visible, local_rank, env, expected", [
    (8, 5, {}, 5),  # the task sees all 8 GPUs of its node: the one at its local rank
    (1, 5, {"CUDA_VISIBLE_DEVICES": "5"}, 0),  # --gpus-per-task=1: its one GPU is device 0
    (1, 0, {"CUDA_VISIBLE_DEVICES": "GPU-8f2c"}, 0),  # bound by UUID
    (4, 3, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 3),
], ids=["all-gpus-of-node", "one-gpu-per-task", "one-gpu-by-uuid", "visible-list"])
def test_gpu_binding(visible, local_rank, env, expected):
    assert cuda_device_index(DistInfo(local_rank=local_rank), visible, env) == expected


def test_gpu_binding_refuses_a_rank_without_a_gpu():
    with pytest.raises(RuntimeError, match="local rank 3 but sees only 2 GPUs.*CUDA_VISIBLE_DEVICES=0,1"):
        cuda_device_index(DistInfo(rank=3, local_rank=3), 2, {"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda_device_index(DistInfo(), 0, {})


def test_a_slurm_task_computes_with_the_cpus_slurm_gave_it():
    """Without CPU binding, each task would start a thread per core of the node and fight the others."""
    import torch

    from pipeline.dist.process import use_task_cpus

    before = torch.get_num_threads()
    try:
        assert use_task_cpus({"SLURM_CPUS_PER_TASK": "1"}) == 1 and torch.get_num_threads() == 1
        assert use_task_cpus({"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "2"}) is None  # the user's choice wins
        assert use_task_cpus({}) is None
    finally:
        torch.set_num_threads(before)
