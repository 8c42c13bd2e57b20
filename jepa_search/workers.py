"""Several trials at once: worker processes of the same command on one study, spread over the GPUs.

One DreamerV3 trial leaves most of a GPU idle (its step is bound by kernel launches, docs/PERFORMANCE.md), so the
search runs `--trials-per-device` workers on each GPU. Each worker is `search_phase1.py` itself with one device
(`CUDA_VISIBLE_DEVICES`); they share the study through its storage, as workers started by hand on other machines
do. Workers start one after the other, each once the previous one holds a trial, so that they do not all take the
last trials of `--n-trials` at the same moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from jepa_search.settings import SearchSettings
from jepa_search.study import FINISHED

SCRIPT = Path(__file__).resolve().parents[1] / "search_phase1.py"
# What a worker prefixes its progress lines with
WORKER_ENV = "JEPA_SEARCH_WORKER"
# A worker that holds no trial after this long (imports, environment checks) no longer delays the next one
START_TIMEOUT_S = 300.0


def worker_commands(argv: Sequence[str], settings: SearchSettings) -> list[tuple[list[str], dict[str, str]]]:
    """The command and environment of every worker: this command with one trial at a time and one GPU each."""
    parent_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = parent_visible.split(",") if parent_visible else None
    # The cores shared among the workers: more torch threads than cores make OpenMP's spinning threads fight over
    # them (two CPU trials with two threads each on two cores ran 8x slower than one, bench/throughput.py)
    share = max(1, (os.cpu_count() or 1) // settings.n_workers)
    threads = str(min(share, int(os.environ.get("OMP_NUM_THREADS") or share)))
    commands = []
    for _ in range(settings.trials_per_device):
        for gpu in settings.gpus or (None,):
            name = f"w{len(commands)}" + (f"/gpu{gpu}" if gpu is not None else "")
            command = [sys.executable, str(SCRIPT), *argv, "--trials-per-device", "1"]
            env = {**os.environ, WORKER_ENV: name, "OMP_NUM_THREADS": threads}
            if gpu is not None:
                command += ["--gpus", "0"]
                env["CUDA_VISIBLE_DEVICES"] = physical[gpu] if physical else str(gpu)
            commands.append((command, env))
    return commands


def _claimed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def run_workers(
    study: optuna.Study, settings: SearchSettings, argv: Sequence[str], progress: Callable[[str], None]
) -> int:
    """Start the workers, pass SIGINT/SIGTERM on to them, wait for all; the worst exit code (0 when all are done)."""
    procs: list[subprocess.Popen] = []
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for command, env in worker_commands(argv, settings):
            if stopping:
                break
            before = _claimed(study)
            # A session of its own: a Ctrl-C in the terminal reaches the workers once, through `forward`
            procs.append(subprocess.Popen(command, env=env, start_new_session=True))
            progress(f"worker {env[WORKER_ENV]} started (pid {procs[-1].pid})")
            started = time.monotonic()
            while procs[-1].poll() is None and _claimed(study) <= before:
                if time.monotonic() - started > START_TIMEOUT_S or before >= settings.n_trials:
                    break
                time.sleep(0.5)
        codes = [proc.wait() for proc in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # 130/143 (interrupted) outrank 1 (too many failures), which outranks 0
    return max(codes, key=lambda c: (c in (130, 143), c != 0))
