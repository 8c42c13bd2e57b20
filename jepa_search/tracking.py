"""W&B logging of a trial (`--wandb-project`): one run per trial, grouped by study.

Set WANDB_MODE=offline to log without an account (the runs are written under the trial folder, `wandb sync` uploads
them later). The config holds the settings as the search stores them, so the storage URL's password is masked.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from jepa_search.results import HistoryRow, TrialResult

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
        self.run.summary.update({k: getattr(result, k) for k in SUMMARY})
        self.run.finish(exit_code=1 if result.state == TrialState.FAIL else 0)
