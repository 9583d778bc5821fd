"""When the ranks check for a stop: every `check_every_steps` steps where steps are fast, every step or few where
they are slow, so that a stop is taken within `check_every_seconds` whatever a step costs (SLURM's SIGKILL
follows its SIGTERM after KillWait seconds). One process (no process group): the collective is its own values."""

import pytest

from pipeline.checkpoint import policy as policy_module
from pipeline.checkpoint.policy import SavePolicy
from pipeline.config.schema import CheckpointConfig


class _Checkpoints:
    writing = False

    def finish_pending(self) -> None:
        pass

    def owner_lost(self) -> bool:
        return False


@pytest.mark.parametrize(("step_s", "between"), [(0.01, 10), (0.25, 8), (0.5, 4), (1.2, 1), (45.0, 1)])
def test_checks_come_at_least_every_check_every_seconds_and_at_most_every_check_every_steps(monkeypatch, step_s,
                                                                                            between):
    clock = [0.0]
    monkeypatch.setattr(policy_module.time, "monotonic", lambda: clock[0])
    stop = [False]
    policy = SavePolicy(CheckpointConfig(every_minutes=0), lambda: stop[0], _Checkpoints())
    checked = []
    for step in range(1, 61):
        clock[0] += step_s
        stop[0] = step >= 33  # a signal arrives during step 33 (and stays received)
        decision = policy.after_step(step)
        if policy.last_check[0] == step:
            checked.append(step)
        if decision.stopping:
            break
    # The first check follows the first step; then one every `between` steps.
    assert checked[:3] == [1, 1 + between, 1 + 2 * between]
    assert all(b - a == between for a, b in zip(checked, checked[1:]))
    assert decision.stopping and decision.save and step == checked[-1]
    assert (step - 33) * step_s <= max(2.0, step_s) + 1e-9  # the signal waited at most ~check_every_seconds


def test_a_signal_seen_between_checks_is_acted_on_at_the_next_one_only(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(policy_module.time, "monotonic", lambda: clock[0])
    policy = SavePolicy(CheckpointConfig(every_minutes=0), lambda: True, _Checkpoints())
    clock[0] += 0.01
    assert policy.after_step(1).stopping  # the first step after a start is a check
    policy = SavePolicy(CheckpointConfig(every_minutes=0), lambda: False, _Checkpoints())
    policy.after_step(1)
    policy.stop_requested = lambda: True
    decisions = [policy.after_step(step) for step in range(2, 12)]
    assert [d.stopping for d in decisions] == [False] * 9 + [True]  # checks at 1 and 11 (fast steps)
