"""Several worker processes on one study (SQLite, and a real PostgreSQL server started here), and faults inside
trials. The trials use the scripted trainer (tests/helpers.py): these tests are about the search, not training."""

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from jepa_search.objective import Objective
from jepa_search.parser import build_parser
from jepa_search.record import is_control
from jepa_search.search import run_search, run_stages
from jepa_search.study import make_storage, open_study
from jepa_search.validate import settings_from_args
from tests.helpers import scripted_trainer
from tests.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]
WORKERS = 4


def _args(out: Path, *extra: str) -> list[str]:
    return [
        "--env",
        "dmc",
        "--full-steps",
        "20000",
        "--fidelity-frac",
        "0.4",
        "--eval-every",
        "1000",
        "--output-dir",
        str(out),
        *extra,
    ]


def _run_workers(argv: list[str]) -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.scripted_worker", *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _check_shared_study(study: optuna.Study, out: Path, n_trials: int, outputs: list[str]) -> None:
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states), states
    # Workers count the trials the others are running; two that check at the same moment may both start one
    assert n_trials <= len(trials) <= n_trials + WORKERS - 1
    for t in trials:
        assert json.loads((out / f"trial_{t.number}" / "results.json").read_text())["number"] == t.number
    started = [line for o in outputs for line in o.splitlines() if " started: " in line]
    assert len(started) == len(trials)  # no trial ran twice
    assert sum(1 for o in outputs if " started: " in o) >= 2  # the work was really shared
    assert not any("database is locked" in o for o in outputs)


def _make_storage_at_once(settings, barrier) -> None:
    barrier.wait()
    make_storage(settings)


@pytest.mark.slow
def test_workers_started_at_the_same_moment_on_a_new_database_all_open_it(tmp_path):
    # Each creating the tables of the same new SQLite file: all but one find them half made by another
    ctx = multiprocessing.get_context("fork")
    for round_ in range(4):
        argv = _args(tmp_path / f"race{round_}", "--n-trials", "2")
        (tmp_path / f"race{round_}").mkdir()
        settings = settings_from_args(build_parser().parse_args(argv))
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_make_storage_at_once, args=(settings, barrier)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * 8, f"round {round_}"


# A worker taking queued trials from the study as fast as it can, once every worker is ready (a line on its stdin);
# prints their numbers. Light: the study's modules load no training stack (tests/test_layout.py)
TAKE_QUEUED = """
import sys
import optuna
from jepa_search.parser import build_parser
from jepa_search.study import make_storage
from jepa_search.validate import settings_from_args

optuna.logging.set_verbosity(optuna.logging.ERROR)
settings = settings_from_args(build_parser().parse_args(sys.argv[1:]))
study = optuna.load_study(study_name=settings.study_name, storage=make_storage(settings))
print("ready", flush=True)
sys.stdin.readline()
print([study.ask().number for _ in range(15)])
"""


def test_workers_taking_queued_trials_at_the_same_moment_never_take_the_same_one(tmp_path):
    # The control and every retry are queued (WAITING): two workers that both took one would train it twice
    argv = _args(tmp_path / "queue")
    (tmp_path / "queue").mkdir()
    settings = settings_from_args(build_parser().parse_args(argv))
    study = open_study(settings)  # queues the control (trial 0)
    for i in range(1, 30):
        study.enqueue_trial({}, user_attrs={"queued": i})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TAKE_QUEUED, *argv],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * WORKERS
    for p in procs:  # all at once
        p.stdin.write("go\n")
        p.stdin.flush()
    taken = [n for p in procs for n in json.loads(p.communicate(timeout=120)[0])]
    assert all(p.returncode == 0 for p in procs)
    assert len(taken) == len(set(taken)) == 15 * WORKERS and set(range(30)) <= set(taken)


@pytest.mark.slow
def test_four_workers_on_one_sqlite_study_train_every_configuration_once_and_one_control(tmp_path):
    out = tmp_path / "distinct"
    space = tmp_path / "space.yaml"
    space.write_text("variable:\n  jepa_coef: [0.3, 1.0, 3.0]\n  jepa_ema: [0.992, 0.999]\n")
    # More trials than the control and the 6 configurations: the workers must stop once each is trained
    argv = _args(out, "--n-trials", "9", "--search-space", str(space), "--pruner", "none", "--fidelity-frac", "0.1")
    outputs = _run_workers(argv)
    study = optuna.load_study(study_name="jepa-phase1-dmc-walker_walk", storage=f"sqlite:///{out}/study.db")
    trained = [t for t in study.trials if not t.user_attrs.get("not_trained")]
    assert [t.state for t in trained] == [TrialState.COMPLETE] * 7
    assert sum(is_control(t) for t in trained) == 1
    configs = [tuple(t.params.values()) for t in trained if not is_control(t)]
    assert len(configs) == len(set(configs)) == 6
    started = [line for o in outputs for line in o.splitlines() if " started: " in line]
    assert len(started) == 7 and sum(1 for o in outputs if " started: " in o) >= 2  # shared, no trial twice
    for t in trained:
        assert json.loads((out / f"trial_{t.number}" / "results.json").read_text())["number"] == t.number
    assert not any("database is locked" in o for o in outputs)  # SQLite's lock is waited for


@pytest.mark.slow
def test_four_workers_share_one_postgresql_study_they_create_on_a_new_server(tmp_path):
    # A freshly made server: its database has no table yet, and every worker checks it as the command line does
    with closing(PostgresServer()) as server:
        out = tmp_path / "pg"
        argv = _args(out, "--n-trials", "10", "--storage", server.url)
        outputs = _run_workers(argv)
        assert not (out / "study.db").exists()  # the study lives in PostgreSQL
        settings = settings_from_args(build_parser().parse_args(argv))
        _check_shared_study(open_study(settings), out, 10, outputs)
        assert sum(is_control(t) for t in open_study(settings).trials) == 1  # created once


@pytest.mark.parametrize(
    "fault",
    [
        RuntimeError("the environment crashed"),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        FloatingPointError("non-finite loss at step 3000"),
    ],
    ids=["exception", "oom", "nan"],
)
def test_a_fault_fails_the_trial_is_retried_then_left_failed_and_the_study_goes_on(tmp_path, fault):
    space = tmp_path / "space.yaml"
    space.write_text("variable:\n  jepa_coef: [0.3, 3.0]\n")
    settings = settings_from_args(
        build_parser().parse_args(
            _args(
                tmp_path / "out", "--n-trials", "3", "--max-retries", "1", "--search-space", str(space), "--seed0", "1"
            )
        )
    )
    settings.output_dir.mkdir()

    def faulty(cfg, hook, on_log=None, cancel=None):
        if cfg.algo.jepa_coef == 0.3:
            raise fault
        return scripted_trainer(cfg, hook)

    study = open_study(settings)
    assert run_stages(study, settings, print, faulty) == 0
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["jepa_coef"] == 0.3 for t in failed)
    # The control and the other configuration; the failed one is not sampled again (no duplicates)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2 and [t.params for t in finished if not is_control(t)] == [{"jepa_coef": 3.0}]
    reason = f"{type(fault).__name__}: {fault}"
    for t in failed:
        results = json.loads((settings.output_dir / f"trial_{t.number}" / "results.json").read_text())
        assert results["state"] == "FAIL" and results["fail_reason"] == reason
        assert t.user_attrs["fail_reason"] == reason
    # Each failed configuration was tried once more, then left failed
    retries = [t for t in failed if t.system_attrs.get("failed_trial") is not None]
    firsts = [t for t in failed if t.system_attrs.get("failed_trial") is None]
    assert len(retries) == len(firsts) and {t.system_attrs["failed_trial"] for t in retries} == {
        t.number for t in firsts
    }
    summary = (settings.output_dir / "SUMMARY.md").read_text()
    assert f"trial {failed[0].number}: {reason}" in summary


@pytest.mark.slow
def test_a_rerun_waits_for_the_live_workers_of_a_killed_parent_instead_of_doubling_them(tmp_path, capfd):
    # What `kill -9` of a `--trials-per-device 2` search leaves: its two workers, training on; the rerun of the same
    # command sees them alive in their slots, starts no worker of its own, and returns once the study is done
    from jepa_search.cli import main
    from jepa_search.progress import WORKER_ENV
    from jepa_search.workers import live_workers

    out = tmp_path / "orphans"
    argv = _args(out, "--n-trials", "6", "--trials-per-device", "2")
    settings = settings_from_args(build_parser().parse_args(argv))
    out.mkdir()
    open_study(settings)
    orphans = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.scripted_worker", *argv],
            cwd=REPO,
            env={**os.environ, WORKER_ENV: f"w{i}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(live_workers(settings)) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in orphans)
        time.sleep(0.1)
    assert main(argv) == 0
    printed = capfd.readouterr().out
    assert "waiting for the workers of an earlier run, which still train: w0" in printed
    assert "worker w0 started" not in printed and "worker w1 started" not in printed
    for proc in orphans:
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output[-2000:]
    study = optuna.load_study(study_name="jepa-phase1-dmc-walker_walk", storage=f"sqlite:///{out}/study.db")
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) >= 6
    assert not live_workers(settings) and not list((out / "workers").glob("*.json"))


def test_trials_side_by_side_in_one_process_overlap_and_a_failing_one_fails_alone(tmp_path):
    # Two slots of one process: the trials of each ask, report, are pruned and finish on their own, at the same time;
    # a crashing configuration fails (and is retried) while the other slot trains on
    space = tmp_path / "space.yaml"
    space.write_text("variable:\n  jepa_coef: [0.3, 0.5, 1.0, 3.0]\n")
    argv = _args(tmp_path / "out", "--n-trials", "5", "--max-retries", "1", "--search-space", str(space))
    settings = settings_from_args(
        build_parser().parse_args([*argv, "--trials-per-device", "2", "--trials-per-process", "2"])
    )
    assert (settings.n_workers, settings.trials_per_process) == (1, 2)
    settings.output_dir.mkdir()
    threads = threading.active_count()

    def faulty(cfg, hook, on_log=None, cancel=None):
        if cfg.algo.jepa_coef == 0.3:
            raise RuntimeError("the environment crashed")
        return scripted_trainer(cfg, hook, cancel=cancel, seconds_per_eval=0.05)

    study = open_study(settings)
    assert run_search(study, settings, Objective(settings, print, trainer=faulty)) == 0
    assert threading.active_count() == threads  # the slots are gone
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and all(t.params["jepa_coef"] == 0.3 for t in failed)  # a try and its retry
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # The control and the three other configurations, once each: the failing one is given up after its retry
    assert len(finished) == 4 and len({json.dumps(t.params) for t in finished}) == 4
    spans = sorted((t.datetime_start, t.datetime_complete) for t in finished)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # side by side
    for t in trials:
        results = json.loads((settings.output_dir / f"trial_{t.number}" / "results.json").read_text())
        assert results["state"] == t.state.name
        assert (results["fail_reason"] == "RuntimeError: the environment crashed") == (t.state == TrialState.FAIL)
