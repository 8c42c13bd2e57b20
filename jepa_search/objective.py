"""The Optuna objective: sample a configuration, run the trial (in this process or a child), return its score."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from jepa_dreamer.runner import run
from jepa_search.settings import EXPERIMENTS, SearchSettings, mask_password
from jepa_search.space import suggest
from jepa_search.study import root_number
from jepa_search.trial import Trainer, TrialSpec, latest_checkpoint, run_trial, trial_dir_name, trial_overrides

WRAPPER = Path(__file__).resolve().parents[1] / "train_wrapper.py"
# The child process of --isolation subprocess reads the storage URL from here: it may hold a password, which the
# spec file on disk must not
STORAGE_ENV = "JEPA_SEARCH_STORAGE"
# What each trial keeps in the study (so the artifacts can be rebuilt from the study alone)
SUMMARY_KEYS = (
    "seed",
    "best_eval_return",
    "best_smoothed_return",
    "last_eval_return",
    "evaluations",
    "steps",
    "frames",
    "wall_time_s",
    "device",
    "fail_reason",
)


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def make_spec(settings: SearchSettings, trial: optuna.Trial, params: dict[str, Any]) -> TrialSpec:
    """The trial's spec; a retry continues from the newest checkpoint of the earlier tries of its configuration."""
    frozen = _frozen(trial)
    seed = settings.seed0 + root_number(frozen)
    folder = settings.output_dir / trial_dir_name(trial.number)
    overrides = trial_overrides(settings, params, seed, folder)
    checkpoint = latest_checkpoint(settings.output_dir, RetryHeartbeatStaleTrialCallback.retry_history(frozen))
    if checkpoint is not None:
        overrides.append(f"checkpoint.resume_from={checkpoint}")
    return TrialSpec(
        number=trial.number,
        trial_id=trial._trial_id,
        seed=seed,
        params=params,
        fixed=dict(settings.space.fixed),
        overrides=overrides,
        trial_dir=str(folder),
        grace_evaluations=settings.grace_evaluations,
        n_evaluations=settings.n_evaluations,
        study_name=settings.study_name,
        storage=mask_password(settings.storage),
        exp=EXPERIMENTS[settings.env],
        settings=settings.as_dict(),
        resume_from=str(checkpoint) if checkpoint is not None else None,
    )


def run_in_subprocess(spec: TrialSpec, storage: str) -> dict[str, Any]:
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
    results = json.loads(results_path.read_text())
    if results["state"] == "FAIL":
        raise RuntimeError(results["fail_reason"] or f"train_wrapper.py exited with code {proc.returncode}")
    return results


class Objective:
    """The objective: best smoothed evaluation return of the trial; raises `TrialPruned` when pruned. `current` is
    the number of the trial this process is running, so an interrupt can queue it again."""

    def __init__(self, settings: SearchSettings, progress: Callable[[str], None], trainer: Trainer = run) -> None:
        self.settings = settings
        self.progress = progress
        self.trainer = trainer
        self.current: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        settings = self.settings
        self.current = trial.number
        params = suggest(trial, settings.space)
        spec = make_spec(settings, trial, params)
        trial.set_user_attr("seed", spec.seed)
        trial.set_user_attr("trial_dir", trial_dir_name(trial.number))
        self.progress(f"trial {trial.number} started: {params} seed {spec.seed}")
        try:
            if settings.isolation == "subprocess":
                results = run_in_subprocess(spec, settings.storage)
            else:
                results = run_trial(spec, trial, self.progress, self.trainer)
        except BaseException as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:1000])
            raise
        for key in SUMMARY_KEYS:
            trial.set_user_attr(key, results[key])
        if results["state"] == "PRUNED":
            raise optuna.TrialPruned(f"pruned at evaluation {results['evaluations']}")
        return float(results["objective"])
