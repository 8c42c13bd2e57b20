"""The Slurm recipe (scripts/slurm_search.sbatch) on a real one-node Slurm cluster started here: a job array of two
CPU dry-run workers sharing one study on the PostgreSQL server the job starts, one of them cancelled mid-trial."""

import os
import re
import shutil
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from tests.slurm import SlurmCluster

REPO = Path(__file__).resolve().parents[1]
# Trials of 384 steps with an evaluation and a checkpoint every 128: the control and a JEPA configuration
ARGV = ["--env", "dmc", "--full-steps", "1920", "--fidelity-frac", "0.2", "--eval-every", "128"]
ARGV += ["--eval-episodes", "1", "--dry-run", "--n-trials", "2", "--pruner", "none"]


def _wait(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
def test_a_job_array_of_workers_on_the_job_s_own_database_finishes_every_trial_once_though_one_task_is_cancelled():
    # Not under pytest's temporary folder, private to this user: the job's database may run as `postgres`
    root = Path(tempfile.mkdtemp(prefix="jepa-search-job-"))
    os.chmod(root, 0o755)
    out, logs = root / "out", root / "logs"
    logs.mkdir()
    try:
        with closing(SlurmCluster()) as cluster:
            job = cluster.run(
                "sbatch",
                "--parsable",
                "--array=0-1",
                "--cpus-per-task=1",
                "--gres=none",  # no GPU on this node
                f"--output={logs}/task-%a.out",
                "scripts/slurm_search.sbatch",
                *ARGV,
                "--output-dir",
                str(out),
                cwd=REPO,
            ).strip()
            task_log = {task: logs / f"task-{task}.out" for task in (0, 1)}

            def text(task: int) -> str:
                return task_log[task].read_text() if task_log[task].exists() else ""

            host_file = out / "postgres" / f"host.{job}" / "task"
            _wait(lambda: host_file.exists() and all(" started: " in text(t) for t in (0, 1)), "both tasks train")
            # The task that does not run the database, cancelled once its trial has evaluated and checkpointed
            cancelled = 1 - int(host_file.read_text())
            # The evaluation is logged before the checkpoint is written (renamed into place, so complete once seen)
            (number,) = re.findall(r"trial (\d+) started: ", text(cancelled))
            checkpoints = f"trial_{number}/run/version_*/checkpoint/ckpt_*_0.ckpt"
            _wait(lambda: any(out.glob(checkpoints)), "the trial's first checkpoint")
            cluster.run("scancel", f"{job}_{cancelled}")
            _wait(lambda: not cluster.run("squeue", "-h", "-j", job).strip(), "the job's end")

        # The cancelled worker stopped at once (its trial queued again), though its environments' processes were
        # signalled too; the other one finished the study
        stopped, worker = text(cancelled), text(1 - cancelled)
        assert "interrupted (Interrupted); the running trials are queued again" in stopped, stopped
        assert len([line for line in stopped.splitlines() if line.startswith("[") and " started: " in line]) == 1
        assert "done: 2 finished trials" in worker and "(exit 0)" in worker and "Traceback" not in worker, worker
        rows = pd.read_csv(out / "results.csv")
        finished = rows[rows["state"].isin(["COMPLETE", "PRUNED"])]
        # Every configuration (the control's too) finished once; the cancelled trial failed and was taken over
        params = ["jepa_coef", "jepa_ema", "jepa_mask.erase_frac"]
        assert len(finished) == 2 and not finished[params].astype(str).duplicated().any(), rows
        (failed,) = rows[rows["state"] == "FAIL"]["number"]
        retry = [int(n) for n in finished["number"] if int(n) > failed]
        resumed = [json_resumed(out, n) for n in retry]
        assert any(r and f"trial_{failed}/" in r for r in resumed), resumed  # from the cancelled try's checkpoint
    finally:
        shutil.rmtree(root, ignore_errors=True)


def json_resumed(out: Path, number: int) -> str | None:
    import json

    return json.loads((out / f"trial_{number}" / "results.json").read_text())["resumed_from"]
