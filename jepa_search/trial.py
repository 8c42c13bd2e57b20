"""One trial: the evaluation hook that reports to Optuna, the training run, the trial's files and its W&B run.

The same `run_trial` serves the in-process objective and `train_wrapper.py` (a child process that reaches the
trial through the shared storage), so both paths write the same `results.json`, `history.csv` and `training.log`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from jepa_dreamer.dreamer_v3_jepa import TrainResult
from jepa_dreamer.evaluate import EvalHook, EvalResult
from jepa_dreamer.metrics import LogSink
from jepa_dreamer.runner import compose_config, run
from jepa_dreamer.shared import Shared
from jepa_search.host import peak_memory_mib, trial_device, versions
from jepa_search.lineage import replayed_rows
from jepa_search.progress import Progress, time_left
from jepa_search.record import write
from jepa_search.results import HistoryRow, TrialResult, append_history, smoothed, start_history

# What trains a trial: `jepa_dreamer.runner.run` (config, evaluation hook, logging sink, cancel event); tests pass a
# scripted stand-in to make pruning deterministic
Trainer = Callable[[DictConfig, EvalHook, LogSink | None, threading.Event | None], TrainResult]
# The loggers whose records go to a trial's training.log: the training loop's, and Python's warnings
TRIAL_LOGGERS = ("jepa_dreamer", "py.warnings")

log = logging.getLogger(__name__)

# A trial's W&B run (`--wandb-project`): one run per trial, grouped by study. Set WANDB_MODE=offline to log without an
# account (the runs are written under the trial folder, `wandb sync` uploads them later). Its config holds the
# settings as the search stores them, so the storage URL's password is masked.
# What the run's summary keeps of the trial's result
SUMMARY = (
    "state",
    "objective",
    "best_eval_return",
    "best_smoothed_return",
    "steps",
    "frames",
    "wall_time_s",
    "fail_reason",
)


class WandbTrial:
    """The W&B run of one trial: its training metrics and evaluation curve, then its final state in the summary."""

    def __init__(self, project: str, group: str, name: str, folder: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=project,
            group=group,
            job_type="trial",
            name=name,
            dir=folder,
            config=config,
            reinit="create_new",
            # The trial's lines already go to training.log
            settings=wandb.Settings(console="off"),
        )

    def log_training(self, policy_step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=policy_step)

    def log_evaluation(self, row: HistoryRow) -> None:
        self.run.log(
            {
                "eval/return": row.eval_return,
                "eval/smoothed_return": row.smoothed_return,
                "eval/return_std": row.return_std,
                "eval/episode_length": row.episode_length,
                "eval/index": row.eval_index,
            },
            step=row.step,
        )

    def finish(self, result: TrialResult) -> None:
        self.run.summary.update({k: getattr(result, k) for k in SUMMARY} | {"state": result.state.name})
        self.run.finish(exit_code=1 if result.state == TrialState.FAIL else 0)


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs, as JSON (the file `train_wrapper.py` reads)."""

    number: int
    seed: int
    params: dict[str, Any]
    fixed: dict[str, Any]
    overrides: list[str]
    trial_dir: str
    grace_evaluations: int
    n_evaluations: int
    study_name: str
    storage: str
    # The pruner of the study (`study.make_pruner`), which `train_wrapper.py` loads the study with
    pruner: str
    # How long `train_wrapper.py` rides out a database outage (`--storage-timeout`)
    storage_timeout: float = 300.0
    exp: str = "dreamer_v3_jepa"
    # Log the trial to this W&B project
    wandb_project: str | None = None
    # Other trials train in the same process (their peak memory is the process's)
    shares_process: bool = False
    # The search's settings as results.json and W&B record them (`SearchSettings.as_dict`), never read here
    settings: dict[str, Any] = field(default_factory=dict)
    # The checkpoint of an earlier try of this configuration that this one continues from
    resume_from: str | None = None
    # Why newer checkpoints of the earlier tries were skipped (`Resume.note`)
    resume_note: str | None = None
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


class PruningHook:
    """After each evaluation: the history row, the smoothed returns stored with the trial (and reported to Optuna),
    and the pruning decision."""

    def __init__(
        self,
        trial: optuna.Trial,
        spec: TrialSpec,
        action_repeat: int,
        progress: Progress,
        tracker: WandbTrial | None = None,
    ) -> None:
        self.trial = trial
        self.tracker = tracker
        self.spec = spec
        self.action_repeat = action_repeat
        self.progress = progress
        self.history: list[HistoryRow] = []
        self.pruned = False
        self.started = time.perf_counter()
        self.path = Path(spec.trial_dir) / "history.csv"
        start_history(self.path)

    def _record(self, row: HistoryRow) -> None:
        self.history.append(row)
        # The learning curve, in a form a multi-objective study (no intermediate values there) can store too
        write(self.trial, curve=[r.smoothed_return for r in self.history])
        append_history(self.path, row)
        if self.tracker is not None:
            self.tracker.log_evaluation(row)

    def replay(self, rows: list[HistoryRow]) -> None:
        """The evaluations of the try this trial resumes: recorded and reported once each, as they were."""
        for row in rows:
            self._record(row)
            if self.spec.report:
                self.trial.report(row.smoothed_return, step=row.eval_index)

    def __call__(self, result: EvalResult) -> bool:
        value = smoothed([row.eval_return for row in self.history] + [result.mean])
        self._record(
            HistoryRow(
                eval_index=result.index,
                step=result.policy_step,
                frames=result.policy_step * self.action_repeat,
                eval_return=result.mean,
                smoothed_return=value,
                return_std=result.std,
                return_min=result.min,
                return_max=result.max,
                episode_length=sum(result.lengths) / len(result.lengths),
                episodes=len(result.returns),
            )
        )
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite evaluation return {result.mean} at step {result.policy_step}")
        if self.spec.report:
            self.trial.report(value, step=result.index)
        # Pruning saves nothing once the budget is spent: the final evaluation always completes the trial
        final = result.index >= self.spec.n_evaluations
        if self.spec.prunable and not final and result.index >= self.spec.grace_evaluations:
            self.pruned = self.trial.should_prune()
        left = time_left(time.perf_counter() - self.started, result.policy_step, self.spec.steps)
        self.progress(
            f"trial {self.spec.number} {self.spec.params} eval {result.index}/{self.spec.n_evaluations} step "
            f"{result.policy_step}/{self.spec.steps}: return {result.mean:.1f} smoothed {value:.1f}"
            + (" -> pruned" if self.pruned else f", about {left / 60:.0f} min left in this trial")
        )
        return self.pruned


# Python's warnings go to the `py.warnings` logger while at least one trial of this process runs
_captured_warnings = Shared()


@contextmanager
def _training_log(path: Path) -> Iterator[None]:
    """The lines of the training loop and the warnings raised while the trial runs, appended to `path`: those of
    this thread only, as other trials may train in other threads of the process."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    loggers = [logging.getLogger(name) for name in (*TRIAL_LOGGERS, __name__)]
    with _captured_warnings.held(lambda: logging.captureWarnings(True), lambda: logging.captureWarnings(False)):
        for logger in loggers:
            logger.addHandler(handler)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            handler.close()


def run_trial(
    spec: TrialSpec,
    trial: optuna.Trial,
    progress: Progress,
    trainer: Trainer = run,
    cancel: threading.Event | None = None,
) -> TrialResult:
    """Train the trial in this process and write its files; returns its result (also in `results.json`). Setting
    `cancel` stops the training with `Cancelled` (a KeyboardInterrupt).

    A pruned trial ends cleanly with state PRUNED; an exception is recorded with state FAIL and its reason, then
    raised again for Optuna to fail the trial.
    """
    folder = Path(spec.trial_dir)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hook: PruningHook | None = None
    tracker: WandbTrial | None = None
    state, reason, steps, action_repeat, device = TrialState.FAIL, None, 0, 1, "cpu"
    with _training_log(folder / "training.log"):
        try:
            cfg = compose_config(spec.overrides, exp=spec.exp)
            action_repeat = int(cfg.env.action_repeat)
            device = trial_device(cfg.fabric.accelerator)
            # Trials side by side in one process share its peak: it is the process's then
            if device == "cuda" and not spec.shares_process:
                import torch

                torch.cuda.reset_peak_memory_stats()
            if spec.wandb_project:
                config = {"params": spec.params, "fixed": spec.fixed, "seed": spec.seed, "settings": spec.settings}
                tracker = WandbTrial(
                    spec.wandb_project, spec.study_name, f"trial_{spec.number}", spec.trial_dir, config
                )
            hook = PruningHook(trial, spec, action_repeat, progress, tracker)
            if spec.resume_note:
                log.warning(f"trial {spec.number}: {spec.resume_note}")
                progress(f"trial {spec.number}: {spec.resume_note}")
            if spec.resume_from:
                hook.replay(replayed_rows(Path(spec.resume_from)))
                progress(f"trial {spec.number} resumes from {spec.resume_from} ({len(hook.history)} evaluations)")
            log.info(f"trial {spec.number}: {spec.params} seed {spec.seed}, {spec.steps} policy steps on {device}")
            result = trainer(cfg, hook, tracker.log_training if tracker is not None else None, cancel)
            steps = result.policy_steps
            state = TrialState.PRUNED if hook.pruned else TrialState.COMPLETE
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.exception(f"trial {spec.number} failed: {reason}")
            raise
        finally:
            history = hook.history if hook is not None else []
            # The steps trained, when the run returned (else those of the last evaluation)
            trained = {"steps": steps, "frames": steps * action_repeat} if steps else {}
            result = TrialResult.of(
                spec.number,
                spec.params,
                spec.seed,
                state,
                history,
                fixed=spec.fixed,
                wall_time_s=round(time.perf_counter() - started, 2),
                fail_reason=reason,
                device=device,
                peak_memory_mib=peak_memory_mib(device),
                resumed_from=spec.resume_from,
                resume_note=spec.resume_note,
                overrides=spec.overrides,
                settings=spec.settings,
                versions=versions(),
                **trained,
            )
            result.save(folder / "results.json")
            log.info(
                f"trial {spec.number} {state.name.lower()}: {result.evaluations} evaluations, {result.steps} steps"
            )
            if tracker is not None:
                tracker.finish(result)
    return result
