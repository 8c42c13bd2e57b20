"""The search's logic with a scripted trainer (known returns, no model): the Optuna set-up, pruning, covering the
space, several objectives, and an interrupt. What is under test is the search, not training."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from jepa_search import search as search_module
from jepa_search.cli import main
from jepa_search.objective import Objective
from jepa_search.record import TrialRecord, is_control
from jepa_search.report import write_report
from jepa_search.sampler import SpaceExhausted
from jepa_search.search import run_search, run_stages
from jepa_search.study import check_resumable, make_pruner, make_sampler, open_study
from tests.helpers import base_args, markdown_rows, scripted_trainer, settings_for

REPO = Path(__file__).resolve().parents[1]


# --- Optuna set-up -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,cls", [("random", optuna.samplers.RandomSampler), ("tpe", optuna.samplers.TPESampler)])
def test_samplers_are_seeded_from_seed0_and_the_trial_number_and_never_repeat(tmp_path, name, cls):
    s = settings_for(tmp_path, "--sampler", name, "--seed0", "5")
    assert isinstance(make_sampler(s).make_base(0), cls)

    def draw(study: optuna.Study) -> dict:
        trial = study.ask()
        params = {n: trial.suggest_categorical(n, list(c)) for n, c in s.space.variable.items()}
        study.tell(trial, params["jepa_coef"])
        return params

    studies = [optuna.create_study(sampler=make_sampler(s), direction="maximize") for _ in range(2)]
    draws = [[draw(study) for _ in range(s.space.size())] for study in studies]
    assert draws[0] == draws[1]  # the same seed0 replays
    assert len({tuple(d.values()) for d in draws[0]}) == s.space.size()  # every configuration once
    with pytest.raises(SpaceExhausted, match="every configuration of the search space"):
        draw(studies[0])


def _first_pruned_steps(pruner: optuna.pruners.BasePruner, steps: int = 12) -> list[int | None]:
    """Ten good trials finish, then six bad ones report step by step, each asking the pruner after every report as the
    search's evaluation hook does: the step at which each bad one is pruned (None: never)."""
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        for step in range(1, steps + 1):
            trial.report(100.0, step)
            assert not trial.should_prune()  # as the evaluation hook asks after every report
        study.tell(trial, 100.0)
    first = []
    for _ in range(6):
        trial = study.ask()
        pruned_at = None
        for step in range(1, steps + 1):
            trial.report(0.0, step)
            if trial.should_prune():
                pruned_at = step
                break
        first.append(pruned_at)
        if pruned_at:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.0)
    return first


def test_pruners_prune_bad_trials_only_from_the_grace_evaluation_on():
    # Grace 3 of 12 evaluations: never before evaluation 3; ASHA's first rung is the grace evaluation itself
    assert _first_pruned_steps(make_pruner("asha", 3, 12)) == [3] * 6
    hyperband = _first_pruned_steps(make_pruner("hyperband", 3, 12))
    assert any(hyperband) and all(step is None or step >= 3 for step in hyperband), hyperband
    assert _first_pruned_steps(make_pruner("none", 3, 12)) == [None] * 6


def test_storage_default_sqlite_and_settings_stored_with_the_study(tmp_path):
    s = settings_for(tmp_path)
    (tmp_path / "out").mkdir()
    study = open_study(s)
    assert (tmp_path / "out" / "study.db").exists()
    assert study.user_attrs["settings"] == s.fingerprint()
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    check_resumable(s)  # same settings: fine
    # Named as optuna-dashboard, opening study.db as it is, shows them (not "Objective 0")
    stored = optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert stored.metric_names == ["best smoothed return"]


# --- pruning, with a scripted trainer -------------------------------------------------------------------------------


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_pruning_really_stops_bad_trials(tmp_path, pruner):
    space = tmp_path / "space.yaml"
    space.write_text("variable:\n  jepa_coef: [0.3, 1.0, 3.0]\n  jepa_ema: [0.992, 0.996, 0.999]\n")
    s = settings_for(
        tmp_path,
        "--fidelity-frac",
        "0.4",
        "--eval-every",
        "1000",
        "--n-trials",
        "9",
        "--pruner",
        pruner,
        "--search-space",
        str(space),
        "--no-control",
    )
    assert s.n_evaluations == 8 and s.grace_evaluations == 2
    s.output_dir.mkdir()
    study = open_study(s)
    assert run_search(study, s, Objective(s, print, trainer=scripted_trainer)) == 0
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(trials) == 9 and pruned
    for t in pruned:
        history = pd.read_csv(s.output_dir / f"trial_{t.number}" / "history.csv")
        assert s.grace_evaluations <= len(history) < s.n_evaluations  # stopped early, never before the grace
        assert t.params["jepa_coef"] < 3.0
    best = study.best_trial
    assert best.params["jepa_coef"] == 3.0 and best.value == pytest.approx(300.0 + 7.0)  # mean of evals 6, 7, 8


@pytest.mark.slow
def test_a_search_covering_the_space_trains_every_configuration_once_and_the_control(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("variable:\n  jepa_coef: [0.3, 1.0, 3.0]\n  jepa_ema: [0.992, 0.999]\n")
    s = settings_for(tmp_path, "--n-trials", "7", "--search-space", str(space))  # the control and 6 configurations
    s.output_dir.mkdir()
    study = open_study(s)
    assert run_search(study, s, Objective(s, print, trainer=scripted_trainer)) == 0
    trials = study.get_trials()
    assert len(trials) == 7 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    (control,) = [t for t in trials if is_control(t)]
    assert control.state.name == "COMPLETE" and TrialRecord.of(control).params == {"jepa_coef": 0.0}
    assert len({tuple(t.params.values()) for t in trials if not is_control(t)}) == 6 == s.space.size()
    # A rerun with more trials has nothing left to train
    s = settings_for(tmp_path, "--n-trials", "10", "--search-space", str(space))
    assert run_stages(open_study(s), s, print, scripted_trainer) == 0
    assert len(study.get_trials()) == 7
    table = pd.read_csv(s.output_dir / "results.csv")
    assert table.loc[table["control"], "jepa_coef"].tolist() == [0.0]
    top = json.loads((s.output_dir / "topk.json").read_text())
    assert control.number not in [r["number"] for r in top] and top[0]["params"]["jepa_coef"] == 3.0
    summary = (s.output_dir / "SUMMARY.md").read_text()
    assert f"Trial {control.number}: plain DreamerV3" in summary and "the bar to beat" in summary


def test_several_objectives_make_an_unpruned_multi_objective_study_with_a_pareto_front(tmp_path, capsys):
    objectives = ("--objectives", "return,wall_time,peak_gpu_memory")
    s = settings_for(tmp_path, *objectives, "--n-trials", "6")
    assert s.pruner == "none" and any("does not prune multi-objective" in w for w in s.warnings)
    s.output_dir.mkdir()
    study = open_study(s)
    assert len(study.directions) == 3
    assert study.metric_names == ["best smoothed return", "wall time (s)", "peak GPU memory (MiB)"]
    assert run_search(study, s, Objective(s, print, trainer=scripted_trainer)) == 0
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    for t in trials:
        results = json.loads((s.output_dir / f"trial_{t.number}" / "results.json").read_text())
        assert t.values == [results["objective"], results["wall_time_s"], results["peak_memory_mib"]]
        assert results["peak_memory_mib"] > 0  # the process's peak RSS on a CPU
        assert not t.intermediate_values and len(t.user_attrs["smoothed_returns"]) == s.n_evaluations
    write_report(study, s.output_dir)
    summary = (s.output_dir / "SUMMARY.md").read_text()
    assert "## Pareto front" in summary and "Optuna does not prune multi-objective studies" in summary
    front = [row[0] for row in markdown_rows(summary.split("## Pareto front")[1])]
    assert sorted(front) == sorted(str(t.number) for t in study.best_trials)
    assert (s.output_dir / "plots" / "pareto_front.png").stat().st_size > 1000
    assert main(base_args(tmp_path, *objectives, "--n-trials", "6")) == 0  # a resume: nothing left to train
    assert "pruning is off" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("per_process", [1, 2])
def test_sigterm_records_the_running_trials_and_queues_them_again(tmp_path, per_process):
    out = tmp_path / "term"
    argv = [*base_args(tmp_path, "--fidelity-frac", "0.4", "--eval-every", "500", "--no-control")]
    argv[argv.index("--output-dir") + 1] = str(out)
    argv += ["--n-trials", str(per_process), "--trials-per-device", str(per_process)]
    argv += ["--trials-per-process", str(per_process)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scripted_worker", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    histories = [out / f"trial_{n}" / "history.csv" for n in range(per_process)]
    deadline = time.monotonic() + 120
    while not all(h.exists() and len(h.read_text().splitlines()) > 1 for h in histories):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    # In this thread, the signal itself; in a slot's thread, the cancellation it caused
    reason = "signal 15" if per_process == 1 else "Cancelled: cancelled at policy step"
    for n in range(per_process):
        results = json.loads((out / f"trial_{n}" / "results.json").read_text())
        assert results["state"] == "FAIL" and reason in results["fail_reason"] and results["evaluations"] >= 1
    study = optuna.load_study(study_name="jepa-phase1-dmc-walker_walk", storage=f"sqlite:///{out}/study.db")
    assert [t.state.name for t in study.trials] == ["FAIL"] * per_process + ["WAITING"] * per_process
    queued = study.trials[per_process:]
    assert sorted(t.system_attrs["failed_trial"] for t in queued) == list(range(per_process))
    for t in queued:
        assert t.params == study.trials[t.system_attrs["failed_trial"]].params


def test_early_stopping_diagnostic_is_na_when_the_grace_point_is_the_last_evaluation(tmp_path):
    # One evaluation per trial (the README's quick check): nothing earlier to predict the final return from
    s = settings_for(tmp_path, "--eval-every", "2000", "--n-trials", "4", "--pruner", "none")
    assert s.n_evaluations == s.grace_evaluations == 1
    s.output_dir.mkdir()
    study = open_study(s)
    assert run_search(study, s, Objective(s, print, trainer=scripted_trainer)) == 0
    write_report(study, s.output_dir)
    summary = (s.output_dir / "SUMMARY.md").read_text()
    assert "final smoothed return of the complete trials: n/a (the grace point is a trial's last evaluation" in summary


@pytest.mark.parametrize("every,writes", [(30.0, 2), (0.0, 5)])
def test_the_artifacts_are_rewritten_after_a_trial_at_most_every_so_often_and_at_the_end(
    tmp_path, monkeypatch, every, writes
):
    # Four trials ending within seconds: after the first and at the end; with no interval, after each and at the end
    monkeypatch.setattr(search_module, "REPORT_EVERY_S", every)
    written = []
    monkeypatch.setattr(search_module, "write_report", lambda study, out: written.append(out))
    s = settings_for(tmp_path, "--n-trials", "4", "--pruner", "none")
    s.output_dir.mkdir()
    assert run_stages(open_study(s), s, print, scripted_trainer) == 0
    assert written == [s.output_dir] * writes
