"""Rank, world size and master from torchrun's or SLURM's environment."""

from pipeline.dist import DistInfo, dist_info_from_env, first_host


def test_single_process_is_a_world_of_one():
    info = dist_info_from_env({})
    assert info == DistInfo() and info.is_primary and not info.distributed


def test_torchrun_variables_win():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "n1", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}
    info = dist_info_from_env(env)
    assert (info.rank, info.local_rank, info.world_size, info.master_addr, info.master_port, info.source) == (
        3, 1, 4, "n1", 1234, "torchrun")
    assert not info.is_primary and info.distributed


def test_slurm_task():
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "123",
           "SLURM_JOB_NODELIST": "gpu[003-004]"}
    info = dist_info_from_env(env)
    assert (info.rank, info.local_rank, info.world_size, info.master_addr, info.source) == (5, 1, 8, "gpu003", "slurm")
    assert info.master_port == 20123


def test_first_host_of_node_lists():
    assert first_host("node7") == "node7"
    assert first_host("gpu[003-005,009],cpu1") == "gpu003"
    assert first_host("a[10,2]") == "a10"
