"""One trial: its SheepRL configuration, the evaluation hook that reports to Optuna, and its files.

The same `run_trial` serves the in-process objective and `train_wrapper.py` (a child process that reaches the
trial through the shared storage), so both paths write the same `results.json`, `history.csv` and `training.log`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import platform
import resource
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from jepa_dreamer.dreamer_v3_jepa import TrainResult
from jepa_dreamer.evaluate import EvalHook, EvalResult
from jepa_dreamer.runner import TINY_MODEL_OVERRIDES, compose_config, output_overrides, run
from jepa_search.settings import COMPILE_KEYS, SearchSettings
from jepa_search.space import configuration, to_overrides
from jepa_search.tracking import WandbTrial

Trainer = Callable[[DictConfig, EvalHook], TrainResult]
SMOOTHING_WINDOW = 3
HISTORY_COLUMNS = (
    "eval_index",
    "step",
    "frames",
    "eval_return",
    "smoothed_return",
    "return_std",
    "return_min",
    "return_max",
    "episode_length",
    "episodes",
)
# A dry run: the real pipeline with a tiny model, small buffers, short episodes and a light replay ratio, so that the
# seed's dry-run command (4 trials x 2000 steps) finishes in under 5 minutes on two CPU cores. Rendering dominates
# there (about 18 ms per 64x64 frame with Mesa on a CPU, and SheepRL's DMC wrapper renders every repeated frame):
# no action repeat, and the two envs stepped in parallel processes
DRY_RUN_OVERRIDES = (
    *TINY_MODEL_OVERRIDES,
    "algo.per_rank_sequence_length=16",
    "env.num_envs=2",
    "env.sync_env=False",
    "env.action_repeat=1",
    "env.max_episode_steps=100",
    "algo.learning_starts=256",
    "algo.replay_ratio=0.05",
    "buffer.size=4096",
)


def smoothed(returns: list[float], window: int = SMOOTHING_WINDOW) -> float:
    """Mean of the last min(window, k) evaluation returns."""
    tail = returns[-window:]
    return sum(tail) / len(tail)


def trial_dir_name(number: int) -> str:
    return f"trial_{number}"


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs, as JSON (the file `train_wrapper.py` reads)."""

    number: int
    trial_id: int
    seed: int
    params: dict[str, Any]
    fixed: dict[str, Any]
    overrides: list[str]
    trial_dir: str
    grace_evaluations: int
    n_evaluations: int
    study_name: str
    storage: str
    exp: str = "dreamer_v3_jepa"
    settings: dict[str, Any] = field(default_factory=dict)
    # The checkpoint of an earlier try of this configuration that this one continues from
    resume_from: str | None = None
    # The run's budget in policy steps
    steps: int = 0
    # Report the smoothed returns to Optuna (not possible in a multi-objective study), and let the pruner stop the
    # run (never the control, nor a confirmation run: both must train the whole budget)
    report: bool = True
    prunable: bool = True

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrialSpec:
        return cls(**json.loads(path.read_text()))


def trial_overrides(
    settings: SearchSettings, params: dict[str, Any], seed: int, trial_dir: Path, steps: int | None = None
) -> list[str]:
    """The SheepRL overrides of one trial: env and task, budget (a trial's, or `steps`), evaluation, JEPA parameters,
    seed, outputs."""
    overrides = [f"env={settings.env}"]
    if settings.env == "dmc":
        domain, _, task = settings.task.partition("_")
        overrides += [f"env.wrapper.domain_name={domain}", f"env.wrapper.task_name={task}"]
    else:
        overrides += [f"env.id={settings.task}"]
    overrides += [
        f"algo.total_steps={settings.trial_steps if steps is None else steps}",
        f"algo.eval.every={settings.eval_every}",
        f"algo.eval.episodes={settings.eval_episodes}",
        *to_overrides({**settings.space.fixed, **params}),
        f"seed={seed}",
        f"fabric.accelerator={settings.device}",
        *(f"{key}={settings.compile == route}" for route, key in COMPILE_KEYS.items()),
        "env.capture_video=False",
        "checkpoint.save_last=False",
        f"checkpoint.every={settings.checkpoint_every}",
        "checkpoint.keep_last=1",
        f"metric.log_level={1 if settings.tensorboard else 0}",
    ]
    if settings.dry_run:
        overrides += DRY_RUN_OVERRIDES
    return [*overrides, *settings.overrides, *output_overrides(str(trial_dir), "run")]


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "sheeprl", "optuna", "dm-control", "mujoco"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    with contextlib.suppress(Exception):
        repo = Path(__file__).resolve().parents[1]
        versions["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return versions


def _peak_memory_mib(device: str) -> float:
    """Peak GPU memory allocated by torch since the run started (reset then); on a CPU, the process's peak resident
    memory, which in-process covers every run this process made (a subprocess-isolated run measures its own)."""
    import torch

    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _device(accelerator: str) -> str:
    """Where the trial trains: `auto` is the GPU when there is one (what GPU-hours are counted from)."""
    import torch

    return "cuda" if accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"


class PruningHook:
    """After each evaluation: the history row, the smoothed returns stored with the trial (and reported to Optuna),
    and the pruning decision."""

    def __init__(
        self,
        trial: optuna.Trial,
        spec: TrialSpec,
        action_repeat: int,
        progress: Callable[[str], None],
        tracker: WandbTrial | None = None,
    ):
        self.trial = trial
        self.tracker = tracker
        self.spec = spec
        self.action_repeat = action_repeat
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.pruned = False
        self.started = time.perf_counter()
        self.path = Path(spec.trial_dir) / "history.csv"
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerow(HISTORY_COLUMNS)

    def _record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        # The learning curve, in a form a multi-objective study (no intermediate values there) can store too
        self.trial.set_user_attr("smoothed_returns", [r["smoothed_return"] for r in self.history])
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in HISTORY_COLUMNS])
        if self.tracker is not None:
            self.tracker.log_evaluation(row)

    def replay(self, rows: list[dict[str, Any]]) -> None:
        """The evaluations of the try this trial resumes: recorded and reported once each, as they were."""
        for row in rows:
            self._record(row)
            if self.spec.report:
                self.trial.report(row["smoothed_return"], step=int(row["eval_index"]))

    def __call__(self, result: EvalResult) -> bool:
        value = smoothed([row["eval_return"] for row in self.history] + [result.mean])
        row = {
            "eval_index": result.index,
            "step": result.policy_step,
            "frames": result.policy_step * self.action_repeat,
            "eval_return": result.mean,
            "smoothed_return": value,
            "return_std": result.std,
            "return_min": result.min,
            "return_max": result.max,
            "episode_length": sum(result.lengths) / len(result.lengths),
            "episodes": len(result.returns),
        }
        self._record(row)
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite evaluation return {result.mean} at step {result.policy_step}")
        if self.spec.report:
            self.trial.report(value, step=result.index)
        # Pruning saves nothing once the budget is spent: the final evaluation always completes the trial
        final = result.index >= self.spec.n_evaluations
        if self.spec.prunable and not final and result.index >= self.spec.grace_evaluations:
            self.pruned = self.trial.should_prune()
        total = self.spec.steps
        elapsed = time.perf_counter() - self.started
        left = elapsed / result.policy_step * max(0, total - result.policy_step)
        self.progress(
            f"trial {self.spec.number} {self.spec.params} eval {result.index}/{self.spec.n_evaluations} step "
            f"{result.policy_step}/{total}: return {result.mean:.1f} smoothed {value:.1f}"
            + (" -> pruned" if self.pruned else f", about {left / 60:.0f} min left in this trial")
        )
        return self.pruned


def _results(
    spec: TrialSpec,
    hook: PruningHook | None,
    state: str,
    seconds: float,
    reason: str | None,
    steps: int,
    action_repeat: int,
    device: str,
    peak_memory_mib: float,
) -> dict[str, Any]:
    history = hook.history if hook else []
    best_smoothed = max((r["smoothed_return"] for r in history), default=None)
    return {
        "number": spec.number,
        "params": spec.params,
        "fixed": spec.fixed,
        "seed": spec.seed,
        "state": state,
        "objective": best_smoothed if state == "COMPLETE" else None,
        "best_smoothed_return": best_smoothed,
        "best_eval_return": max((r["eval_return"] for r in history), default=None),
        "last_eval_return": history[-1]["eval_return"] if history else None,
        "evaluations": len(history),
        "steps": steps,
        "frames": steps * action_repeat,
        "wall_time_s": round(seconds, 2),
        "fail_reason": reason,
        "device": device,
        "peak_memory_mib": peak_memory_mib,
        "resumed_from": spec.resume_from,
        "overrides": spec.overrides,
        "settings": spec.settings,
        "versions": _versions(),
    }


def checkpoint_step(path: Path) -> int:
    """The policy step of a SheepRL checkpoint, from its name `ckpt_<step>_<rank>.ckpt`."""
    return int(path.stem.split("_")[1])


def latest_checkpoint(folders: list[Path]) -> Path | None:
    """The newest checkpoint among the folders of earlier tries (oldest first) of a configuration."""
    for folder in reversed(folders):
        found = sorted(folder.glob("run/version_*/checkpoint/ckpt_*_0.ckpt"), key=checkpoint_step)
        if found:
            return found[-1]
    return None


def _replayed_rows(checkpoint: Path) -> list[dict[str, Any]]:
    """The history rows of the try that wrote `checkpoint` (trial_<n>/run/version_<v>/checkpoint/...), up to it."""
    history = checkpoint.parents[3] / "history.csv"
    counts = ("eval_index", "step", "frames", "episodes")
    with history.open(newline="") as f:
        rows = [{k: int(float(v)) if k in counts else float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return [row for row in rows if row["step"] <= checkpoint_step(checkpoint)]


def record_stale(folder: Path, trial: optuna.trial.FrozenTrial) -> None:
    """`results.json` for a trial whose worker died (SIGKILL, preemption): nobody else would write it."""
    history = folder / "history.csv"
    rows = list(csv.DictReader(history.open(newline=""))) if history.exists() else []
    results = {
        "number": trial.number,
        "params": configuration(trial),
        "seed": trial.user_attrs.get("seed"),
        "state": "FAIL",
        "objective": None,
        "best_smoothed_return": max((float(r["smoothed_return"]) for r in rows), default=None),
        "best_eval_return": max((float(r["eval_return"]) for r in rows), default=None),
        "last_eval_return": float(rows[-1]["eval_return"]) if rows else None,
        "evaluations": len(rows),
        "steps": int(rows[-1]["step"]) if rows else 0,
        "fail_reason": "its worker stopped sending heartbeats (killed?); queued again with the same parameters",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2))


def _remove_training_state(folder: Path) -> None:
    """A finished trial's replay buffer and checkpoints are only disk space."""
    for pattern in ("run/version_*/memmap_buffer", "run/version_*/checkpoint", "run/version_*/checkpoint_buffers"):
        for path in folder.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def run_trial(
    spec: TrialSpec, trial: optuna.Trial, progress: Callable[[str], None], trainer: Trainer = run
) -> dict[str, Any]:
    """Train the trial in this process and write its files; returns the content of `results.json`.

    Output of the training goes to `training.log`. A pruned trial ends cleanly with state PRUNED; an exception is
    recorded with state FAIL and its reason, then raised again for Optuna to fail the trial. `trainer` is
    `jepa_dreamer.runner.run`; tests pass a scripted stand-in to make pruning deterministic.
    """
    folder = Path(spec.trial_dir)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hook: PruningHook | None = None
    tracker: WandbTrial | None = None
    state, reason, steps, action_repeat, device = "FAIL", None, 0, 1, "cpu"
    with (folder / "training.log").open("a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            cfg = compose_config(spec.overrides, exp=spec.exp)
            action_repeat = int(cfg.env.action_repeat)
            device = _device(cfg.fabric.accelerator)
            if device == "cuda":
                import torch

                torch.cuda.reset_peak_memory_stats()
            if spec.settings.get("wandb_project"):
                tracker = WandbTrial(spec.settings["wandb_project"], spec)
            hook = PruningHook(trial, spec, action_repeat, progress, tracker)
            if spec.resume_from:
                hook.replay(_replayed_rows(Path(spec.resume_from)))
                progress(f"trial {spec.number} resumes from {spec.resume_from} ({len(hook.history)} evaluations)")
            result = trainer(cfg, hook)
            steps = result.policy_steps
            state = "PRUNED" if hook.pruned else "COMPLETE"
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            traceback.print_exc(file=log)
            raise
        finally:
            if hook is not None and steps == 0 and hook.history:
                steps = hook.history[-1]["step"]
            seconds = time.perf_counter() - started
            peak = _peak_memory_mib(device)
            results = _results(spec, hook, state, seconds, reason, steps, action_repeat, device, peak)
            (folder / "results.json").write_text(json.dumps(results, indent=2))
            if tracker is not None:
                tracker.finish(results)
            # A failed try keeps its checkpoint and buffer: its retry continues from them
            if state != "FAIL":
                _remove_training_state(folder)
                if spec.resume_from:
                    _remove_training_state(Path(spec.resume_from).parents[3])
    return results
