"""tests.conftest.race: each target in a process of its own, released together, in the test's
environment (its processes come from a fork server started earlier, with the environment of then)."""

from __future__ import annotations

import os
import time

from tests.conftest import race


def _report(barrier, results, name: str) -> None:
    barrier.wait(timeout=60)
    results.put((os.getpid(), os.environ.get(name), time.monotonic()))


def test_each_target_runs_in_its_own_process_with_the_environment_of_the_test(monkeypatch):
    monkeypatch.delenv("FRESHREC_RACE_CHECK", raising=False)
    race(_report, [("FRESHREC_RACE_CHECK",)])  # the worker's fork server is running from here on
    monkeypatch.setenv("FRESHREC_RACE_CHECK", "set after the fork server started")
    outcomes = race(_report, [("FRESHREC_RACE_CHECK",)] * 3)
    pids = {pid for pid, _, _ in outcomes}
    assert len(pids) == 3 and os.getpid() not in pids
    assert [value for _, value, _ in outcomes] == ["set after the fork server started"] * 3
    released = [at for _, _, at in outcomes]
    assert max(released) - min(released) < 5  # the barrier let them go together
