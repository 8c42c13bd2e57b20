"""The Optuna objectives: a search trial's (sample a configuration) and a confirmation run's (the queued configuration
and seed); each runs the trial (in this process or a child) and returns its score."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from jepa_dreamer.runner import run
from jepa_search.experiments import EXPERIMENTS
from jepa_search.host import WorkerId
from jepa_search.lineage import Lineage, root_number
from jepa_search.overrides import trial_overrides
from jepa_search.progress import Progress
from jepa_search.record import Claim, confirm_run, is_control, records, write
from jepa_search.results import TrialResult
from jepa_search.sampler import SpaceExhausted
from jepa_search.seeds import trial_seed
from jepa_search.settings import STORAGE_ENV, SearchSettings, evaluations, mask_password
from jepa_search.space import CONTROL_PARAMS, suggest
from jepa_search.trial import Trainer, TrialSpec, run_trial

WRAPPER = Path(__file__).resolve().parents[1] / "train_wrapper.py"


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def make_spec(
    settings: SearchSettings,
    lineage: Lineage,
    trial: optuna.Trial,
    params: dict[str, Any],
    seed: int,
    steps: int,
    prunable: bool,
) -> TrialSpec:
    """The run's spec (a search trial's or a confirmation run's, of `steps`); a retry continues from the newest
    readable checkpoint of the earlier tries of its configuration."""
    folder = lineage.folder(trial.study, trial.number)
    overrides = trial_overrides(settings, params, seed, folder, steps)
    resume = lineage.resume(trial.study, _frozen(trial))
    checkpoint = resume.checkpoint
    if checkpoint is not None:
        overrides.append(f"checkpoint.resume_from={checkpoint}")
    return TrialSpec(
        number=trial.number,
        seed=seed,
        params=params,
        fixed=dict(settings.space.fixed),
        overrides=overrides,
        trial_dir=str(folder),
        grace_evaluations=settings.grace_evaluations,
        n_evaluations=evaluations(steps, settings.eval_every),
        study_name=trial.study.study_name,
        storage=mask_password(settings.storage),
        pruner=settings.pruner,
        storage_timeout=settings.storage_timeout,
        exp=EXPERIMENTS[settings.env],
        wandb_project=settings.wandb_project,
        shares_process=settings.trials_per_process > 1,
        settings=settings.as_dict(),
        resume_from=str(checkpoint) if checkpoint is not None else None,
        resume_note=resume.note(),
        steps=steps,
        # Optuna takes intermediate values (and prunes) in single-objective studies only
        report=len(trial.study.directions) == 1,
        prunable=prunable and len(trial.study.directions) == 1,
    )


def run_in_subprocess(spec: TrialSpec, storage: str) -> TrialResult:
    """`train_wrapper.py` on the spec; the child reports to the study itself. Returns its `results.json`."""
    folder = Path(spec.trial_dir)
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "trial_spec.json"
    spec.save(spec_path)
    env = {**os.environ, STORAGE_ENV: storage}
    proc = subprocess.run(
        [sys.executable, str(WRAPPER), "--trial-config", str(spec_path), "--out", str(folder)], env=env, check=False
    )
    results_path = folder / "results.json"
    if not results_path.exists():
        raise RuntimeError(f"train_wrapper.py exited with code {proc.returncode} before writing results.json")
    result = TrialResult.load(results_path)
    if result.state == TrialState.FAIL:
        raise RuntimeError(result.fail_reason or f"train_wrapper.py exited with code {proc.returncode}")
    return result


class Objective:
    """The search's objective: the best smoothed evaluation return of the trial (with wall time and peak memory when
    those are objectives too); raises `TrialPruned` when pruned.

    Several trials may run at once, in threads of this process (`schedule.run_trials`, which passes the event that
    stops their training).
    """

    def __init__(self, settings: SearchSettings, progress: Progress, trainer: Trainer = run) -> None:
        self.settings = settings
        self.progress = progress
        self.trainer = trainer
        self.lineage = Lineage(settings.output_dir, settings.max_retries)

    def __call__(self, trial: optuna.Trial, cancel: threading.Event | None = None) -> float | tuple[float, ...]:
        settings = self.settings
        self.claim(trial)
        control = is_control(trial)
        try:
            params = dict(CONTROL_PARAMS) if control else suggest(trial, settings.space)
        except SpaceExhausted as e:
            not_trained(trial, e)
            raise
        seed = trial_seed(settings.seed0, root_number(_frozen(trial)))
        spec = make_spec(settings, self.lineage, trial, params, seed, settings.trial_steps, prunable=not control)
        label = "the control (plain DreamerV3)" if control else str(params)
        result = self.train(trial, spec, f"trial {trial.number} started: {label} seed {seed}", cancel)
        if result.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"pruned at evaluation {result.evaluations}")
        values = tuple(result.value(name) for name in settings.objectives)
        return values if settings.multi_objective else values[0]

    def claim(self, trial: optuna.Trial) -> None:
        """The first thing a trial does: this process runs it, in its folder, so that a rerun after this process
        died fails it at once instead of waiting out its heartbeats."""
        write(trial, claim=Claim(WorkerId.current(), self.lineage.folder_name(trial.study, trial.number)))

    def train(self, trial: optuna.Trial, spec: TrialSpec, started: str, cancel: threading.Event | None) -> TrialResult:
        """Run the spec (in this process or a child) and keep its summary in the trial's user attributes."""
        # Its Phase 2 run trains on the same compiled route
        write(trial, seed=spec.seed, compile=self.settings.compile, resumed_from=spec.resume_from)
        self.progress(started)
        try:
            if self.settings.isolation == "subprocess":
                result = run_in_subprocess(spec, self.settings.storage)
            else:
                result = run_trial(spec, trial, self.progress, self.trainer, cancel)
        except BaseException as e:
            write(trial, fail_reason=f"{type(e).__name__}: {e}"[:1000])
            raise
        write(trial, result=result)
        return result


def not_trained(trial: optuna.Trial, reason: Exception) -> None:
    """Mark a trial that ends before training (nothing left to run): failed, but never retried."""
    write(trial, fail_reason=f"{type(reason).__name__}: {reason}", not_trained=True)


class NothingToRun(RuntimeError):
    """A confirmation trial with no run of its own: another worker took the last queued one, or the same run was
    queued twice by two workers starting together and the other one has it."""


class ConfirmObjective(Objective):
    """One confirmation run: the queued configuration and seed, at `confirm_steps`, never pruned; its return."""

    def __call__(self, trial: optuna.Trial, cancel: threading.Event | None = None) -> float:
        self.claim(trial)
        run_ = confirm_run(trial)
        twin = run_ and next(
            (
                r.number
                for r in records(trial.study, (TrialState.COMPLETE, TrialState.RUNNING))
                if r.number < trial.number and r.run is not None and r.run.key() == run_.key()
            ),
            None,
        )
        if run_ is None or twin is not None:
            reason = NothingToRun("no queued run left" if run_ is None else f"the same run is run {twin}")
            not_trained(trial, reason)
            raise reason
        s = self.settings
        spec = make_spec(s, self.lineage, trial, run_.params, run_.seed, s.confirm_steps, prunable=False)
        started = f"confirmation run {trial.number} started: {run_.label} {run_.params} seed {run_.seed}"
        return float(self.train(trial, spec, started, cancel).objective)
