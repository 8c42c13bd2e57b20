"""Retries and resumption: the tries of one configuration, each in a folder of its own, in the spirit of Optuna's
`RetryFailedTrialCallback`.

A try that fails (a crash, a lost worker, an interrupt) is queued again with the same parameters, up to
`--max-retries` times, unless it ended before training; its retry is a new trial whose retry history
(`RetryHeartbeatStaleTrialCallback.retry_history`) names the earlier tries. The retry trains on the seed of the
first try (its root), continues from the newest readable checkpoint of the earlier tries and replays their
evaluations up to it. Once a configuration is finished (complete or pruned), the checkpoints and replay buffers of
all its tries are only disk space, and are removed here, after Optuna has recorded the state.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from jepa_dreamer.checkpoint_files import STAGING, checkpoint_step, unreadable
from jepa_search.record import TrialRecord
from jepa_search.results import HistoryRow, TrialResult, read_history

# The confirmation runs live in a study of their own beside the search's, named after it
CONFIRM_SUFFIX = "-confirm"
# What a finished configuration's tries keep no longer
_TRAINING_STATE = ("memmap_buffer", "checkpoint", "checkpoint_buffers", STAGING)


@dataclass(frozen=True)
class Resume:
    """Where a retry continues: the newest readable checkpoint of the earlier tries of its configuration (None: from
    scratch), and the newer ones it skipped because they cannot be read, each with the reason."""

    checkpoint: Path | None
    skipped: tuple[str, ...] = ()

    def note(self) -> str | None:
        """The line training.log and results.json get when a checkpoint was skipped."""
        if not self.skipped:
            return None
        where = f"continues from {self.checkpoint}" if self.checkpoint is not None else "starts over"
        return f"unreadable checkpoint(s) skipped ({'; '.join(self.skipped)}): the trial {where}"


def resume_point(folders: list[Path]) -> Resume:
    """The newest readable checkpoint among the folders of earlier tries (oldest first) of a configuration."""
    skipped = []
    for folder in reversed(folders):
        for path in sorted(folder.glob("run/version_*/checkpoint/ckpt_*_0.ckpt"), key=checkpoint_step, reverse=True):
            reason = unreadable(path)
            if reason is None:
                return Resume(path, tuple(skipped))
            skipped.append(reason)
    return Resume(None, tuple(skipped))


def replayed_rows(checkpoint: Path) -> list[HistoryRow]:
    """The history rows of the try that wrote `checkpoint` (<folder>/run/version_<v>/checkpoint/...), up to it."""
    rows = read_history(checkpoint.parents[3] / "history.csv")
    return [row for row in rows if row.step <= checkpoint_step(checkpoint)]


def root_number(trial: FrozenTrial) -> int:
    """The number of the first try of a trial's configuration: its retries keep its seed."""
    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return int(history[0]) if history else trial.number


class Lineage:
    """The tries of the configurations of the studies in `output_dir`: which try resumes from which checkpoint,
    which failed try is queued again, what is removed once a configuration is finished."""

    def __init__(self, output_dir: Path, max_retries: int) -> None:
        self.output_dir = output_dir
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)

    @staticmethod
    def folder_name(study: optuna.Study, number: int) -> str:
        """The folder of the study's trial `number`, relative to the output folder: a search trial's, or a
        confirmation run's."""
        return f"confirm/run_{number}" if study.study_name.endswith(CONFIRM_SUFFIX) else f"trial_{number}"

    def folder(self, study: optuna.Study, number: int) -> Path:
        """A try's folder."""
        return self.output_dir / self.folder_name(study, number)

    def earlier_tries(self, study: optuna.Study, trial: FrozenTrial) -> list[Path]:
        """The folders of the earlier tries of the trial's configuration, oldest first."""
        return [self.folder(study, n) for n in RetryHeartbeatStaleTrialCallback.retry_history(trial)]

    def resume(self, study: optuna.Study, trial: FrozenTrial) -> Resume:
        """Where the trial continues: the newest readable checkpoint of its earlier tries."""
        return resume_point(self.earlier_tries(study, trial))

    def finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """After Optuna recorded a try's end: a failed one that trained is queued again; a finished configuration's
        tries lose their checkpoints and buffers (a failed try keeps them: its retry continues from them)."""
        if trial.state == TrialState.FAIL and not TrialRecord.of(trial).not_trained:
            self.retry(study, trial)
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            for folder in (self.folder(study, trial.number), *self.earlier_tries(study, trial)):
                for pattern in _TRAINING_STATE:
                    for path in folder.glob(f"run/version_*/{pattern}"):
                        shutil.rmtree(path, ignore_errors=True)

    def requeue(self, study: optuna.Study, numbers: set[int]) -> None:
        """Queue again the tries of `numbers` that an interrupt or an error stopped (Optuna failed them)."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.number in numbers:
                self.retry(study, trial)

    def lost(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A try whose worker died: its results.json (as failed), then queued again. The storage's stale-trial
        callback."""
        record = TrialRecord.of(trial)
        # Its claim's folder, else (it died before claiming it) the folder its study would have given it
        folder = self.output_dir / record.claim.folder if record.claim else self.folder(study, trial.number)
        reason = "its worker stopped (killed?); queued again with the same parameters"
        history = read_history(folder / "history.csv")
        folder.mkdir(parents=True, exist_ok=True)
        resumed = record.resumed_from if record.claim is not None else None
        TrialResult.of(
            trial.number, record.params, record.seed, TrialState.FAIL, history, fail_reason=reason, resumed_from=resumed
        ).save(folder / "results.json")
        self.retry(study, trial)
