"""The thread policy: free cores shared by the ranks/workers, overrides respected, applied once per process."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from ganforge import cli, cli_train, threads


@pytest.fixture(autouse=True)
def fresh_policy(monkeypatch):
    monkeypatch.setattr(threads, "_applied", None)
    for name in (threads.THREADS_ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_a_busy_core_is_left_to_its_process():
    assert threads.decide(cores=2, busy=0.0).threads == 2
    assert threads.decide(cores=2, busy=0.3).threads == 2  # a little background load does not count
    assert threads.decide(cores=2, busy=0.6).threads == 1
    assert threads.decide(cores=2, busy=1.0).threads == 1
    assert threads.decide(cores=8, busy=2.9).threads == 5
    assert threads.decide(cores=2, busy=2.0).threads == 1  # never fewer than one


def test_ranks_times_threads_never_exceeds_the_free_cores():
    for cores, busy, ranks in itertools.product(range(1, 17), (0.0, 0.6, 1.0, 3.4, 7.0), range(1, 9)):
        plan = threads.decide(ranks, cores=cores, busy=busy)
        free = max(1, cores - round(busy))
        assert plan.threads >= 1
        assert plan.budget <= max(free, ranks), (cores, busy, ranks, plan)
        assert threads.split(plan, ranks) == plan.threads


def test_ganforge_threads_is_the_budget_shared_by_the_processes():
    plan = threads.decide(2, cores=2, busy=2.0, override="4")
    assert (plan.threads, plan.source, plan.busy) == (2, threads.THREADS_ENV, None)
    assert threads.decide(cores=2, busy=1.0, override="auto").source == "free cores"
    with pytest.raises(threads.ThreadsError, match="GANFORGE_THREADS='many' must be a positive integer or 'auto'"):
        threads.decide(cores=2, busy=0.0, override="many")


def test_omp_num_threads_set_by_the_user_is_taken_as_given():
    plan = threads.decide(cores=2, busy=2.0, omp="3")
    assert (plan.threads, plan.source) == (3, "OMP_NUM_THREADS")
    with pytest.raises(threads.ThreadsError, match="OMP_NUM_THREADS='0'"):
        threads.decide(cores=2, busy=0.0, omp="0")


def test_an_override_skips_the_probe(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda *a: pytest.fail("probed although pinned"))
    assert threads.plan_from_environment(1, {threads.THREADS_ENV: "1"}).threads == 1
    assert threads.plan_from_environment(1, {"OMP_NUM_THREADS": "2"}).threads == 2


def test_the_probe_counts_other_processes_not_this_one(monkeypatch):
    hz = os.sysconf("SC_CLK_TCK")
    readings = iter([(0, 10 * hz), (int(1.5 * hz), 12 * hz)])  # 1.5 CPU-seconds of work on the cores in 1 s
    clock = iter([0.0, 1.0])
    own = iter([5.0, 5.5])  # of which this process did 0.5
    monkeypatch.setattr(threads, "_cpu_jiffies", lambda cpus: next(readings))
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads.time, "process_time", lambda: next(own))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.busy_cores() == pytest.approx(1.0)


def test_the_probe_sees_a_busy_competitor():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert threads.busy_cores(0.5) >= 0.8
    finally:
        spin.kill()
        spin.wait(timeout=30)


def test_torchrun_ranks_get_their_share_of_the_free_cores(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "4")
    assert threads.env_for_ranks(2)["OMP_NUM_THREADS"] == "2"
    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    assert threads.env_for_ranks(2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stays
    assert threads.env_for_ranks(2)["OMP_NUM_THREADS"] == "3"


def test_the_cli_hands_its_ranks_their_share(monkeypatch):
    launched = {}
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv(threads.THREADS_ENV, "2")

    class Launcher:  # the ranks' launcher, recorded instead of started
        def __init__(self, cmd, env):
            launched.update(env)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait(self):
            return 0

    monkeypatch.setattr(cli_train.subprocess, "Popen", Launcher)  # where the relaunch looks it up
    assert cli.main(["train", "--profile", "tiny", "--nproc", "2", "--data", "d", "--out", "o"]) == 0
    assert launched["OMP_NUM_THREADS"] == "1"


def test_evaluation_workers_fit_the_free_cores():
    assert threads.cap_processes(4, threads.decide(cores=2, busy=1.0)) == 1
    assert threads.cap_processes(2, threads.decide(cores=2, busy=0.0)) == 2
    assert threads.cap_processes(1, threads.decide(cores=2, busy=0.0)) == 1
    assert threads.cap_processes(64) == threads.usable_cores()  # no entry point decided: the cores


def test_configure_applies_the_plan_once_per_process():
    code = (
        "import torch; from ganforge import threads; p = threads.configure(); "
        "q = threads.configure(processes=4); "
        "print(torch.get_num_threads(), torch.get_num_interop_threads(), p is q)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **{threads.THREADS_ENV: "1"})
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "1", "True"], done.stderr


def test_a_bad_value_is_a_one_line_cli_error(monkeypatch, capsys):
    monkeypatch.setenv(threads.THREADS_ENV, "0")
    assert cli.main(["train", "--profile", "tiny", "--data", "nowhere", "--out", "nowhere"]) == 2
    assert "GANFORGE_THREADS='0' must be a positive integer" in capsys.readouterr().err
