"""W&B logging of a trial (`--wandb-project`): one run per trial, grouped by study.

Set WANDB_MODE=offline to log without an account (the runs are written under the trial folder, `wandb sync` uploads
them later). The config holds the settings as the search stores them, so the storage URL's password is masked.
"""

from __future__ import annotations

from typing import Any


class WandbTrial:
    """The W&B run of one trial: its evaluation curve, then its final state in the summary."""

    def __init__(self, project: str, spec: Any) -> None:
        import wandb

        self.run = wandb.init(
            project=project,
            group=spec.study_name,
            job_type="trial",
            name=f"trial_{spec.number}",
            dir=spec.trial_dir,
            config={"params": spec.params, "fixed": spec.fixed, "seed": spec.seed, "settings": spec.settings},
            reinit="create_new",
            # The trial's output already goes to training.log
            settings=wandb.Settings(console="off"),
        )

    def log_evaluation(self, row: dict[str, Any]) -> None:
        self.run.log(
            {
                "eval/return": row["eval_return"],
                "eval/smoothed_return": row["smoothed_return"],
                "eval/return_std": row["return_std"],
                "eval/episode_length": row["episode_length"],
                "eval/index": row["eval_index"],
            },
            step=int(row["step"]),
        )

    def finish(self, results: dict[str, Any]) -> None:
        self.run.summary.update(
            {
                k: results[k]
                for k in (
                    "state",
                    "objective",
                    "best_eval_return",
                    "best_smoothed_return",
                    "steps",
                    "frames",
                    "wall_time_s",
                    "fail_reason",
                )
            }
        )
        self.run.finish(exit_code=1 if results["state"] == "FAIL" else 0)
