"""Several trials at once: worker processes of the same command on one study, spread over the GPUs.

One DreamerV3 trial leaves most of a GPU idle (its step is bound by kernel launches, docs/PERFORMANCE.md), so the
search runs `--trials-per-device` trials on each GPU, in workers of `--trials-per-process` trials each (those train
side by side in threads, `schedule.run_trials`). Each worker is `search_phase1.py --worker-spec <output-dir>/
worker_spec.json`: the settings of one process's trials on one device (`CUDA_VISIBLE_DEVICES`), written here, the
storage URL in its environment; they share the study through its storage, as workers started by hand on other
machines do. Workers start one after the other, each once the previous one holds a trial, so that they do not all
take the last trials of `--n-trials` at the same moment; a slot gets a worker while the rule every worker follows
(`schedule.search_decision`) would start a trial.

Every process that trains trials registers itself in `<output-dir>/workers/` while it runs. A worker of an earlier
run of the command that is still alive (its parent was killed) keeps its slot: a rerun starts only the slots that
no live worker holds, and waits for the others. A slot whose worker dies is started again while the study has work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from jepa_search.host import WorkerId
from jepa_search.lineage import Lineage
from jepa_search.progress import WORKER_ENV, Progress
from jepa_search.schedule import Action, Waiter, search_decision
from jepa_search.settings import STORAGE_ENV, SearchSettings
from jepa_search.study import FINISHED, fail_lost_trials
from jepa_search.validate import UsageError

SCRIPT = Path(__file__).resolve().parents[1] / "search_phase1.py"
# A worker that holds no trial after this long (imports, environment checks) no longer delays the next one
START_TIMEOUT_S = 300.0
# How often the parent looks at its workers
POLL_S = 1.0


def _spec_path(settings: SearchSettings) -> Path:
    return settings.output_dir / "worker_spec.json"


def write_worker_spec(settings: SearchSettings) -> Path:
    """The settings of each worker: this command's, with one process's trials (`--trials-per-process`) on one device
    (the one GPU its `CUDA_VISIBLE_DEVICES` shows, or the CPU). Written aside then renamed: a worker of a rerun never
    reads half a file."""
    worker = dataclasses.replace(
        settings, trials_per_device=settings.trials_per_process, gpus=(0,) if settings.gpus else ()
    )
    path = _spec_path(settings)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(worker.to_spec(), indent=2))
    os.replace(tmp, path)
    return path


def read_worker_spec(path: Path) -> SearchSettings:
    """A worker's settings, from its spec and the storage URL in its environment."""
    if STORAGE_ENV not in os.environ:
        raise UsageError(f"--worker-spec {path}: ${STORAGE_ENV} is not set (the search's command starts its workers)")
    return SearchSettings.from_spec(json.loads(path.read_text()), os.environ[STORAGE_ENV])


def worker_commands(settings: SearchSettings) -> dict[str, tuple[list[str], dict[str, str]]]:
    """The command and environment of every worker slot, by name: `search_phase1.py --worker-spec` and one GPU
    each."""
    parent_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = parent_visible.split(",") if parent_visible else None
    # The cores shared among the workers: more torch threads than cores make OpenMP's spinning threads fight over
    # them (docs/PERFORMANCE.md)
    share = max(1, (os.cpu_count() or 1) // settings.n_workers)
    threads = str(min(share, int(os.environ.get("OMP_NUM_THREADS") or share)))
    command = [sys.executable, str(SCRIPT), "--worker-spec", str(_spec_path(settings))]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    for _ in range(settings.processes_per_device):
        for gpu in settings.gpus or (None,):
            name = f"w{len(commands)}" + (f"/gpu{gpu}" if gpu is not None else "")
            env = {**os.environ, WORKER_ENV: name, "OMP_NUM_THREADS": threads, STORAGE_ENV: settings.storage}
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = physical[gpu] if physical else str(gpu)
            commands[name] = (command, env)
    return commands


def _registry(settings: SearchSettings) -> Path:
    return settings.output_dir / "workers"


@contextlib.contextmanager
def registered(settings: SearchSettings) -> Iterator[None]:
    """This process trains trials of the study while the block runs: a rerun of the command sees it."""
    me = WorkerId.current()
    path = _registry(settings) / f"{me.host}.{me.pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    name = os.environ.get(WORKER_ENV, "main")
    path.write_text(json.dumps({"name": name, "study": settings.study_name, **me.as_dict()}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def live_workers(settings: SearchSettings) -> dict[str, WorkerId]:
    """The registered workers of the study on this host that are still alive, by slot name; the files of dead ones
    are removed."""
    found = {}
    for path in _registry(settings).glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            entry = json.loads(path.read_text())
            worker = WorkerId.from_dict(entry)
            if not worker.is_local() or entry["study"] != settings.study_name:
                continue
            if worker.is_alive():
                found[entry["name"]] = worker
            else:
                path.unlink(missing_ok=True)
    return found


def _claimed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def _has_work(study: optuna.Study, settings: SearchSettings) -> bool:
    """Whether a new worker would start a trial: the rule every worker follows (`schedule.search_decision`)."""
    return search_decision(study.get_trials(deepcopy=False), settings).action == Action.START


class _Supervisor:
    """The worker slots of this command: starts the ones no live worker holds, passes SIGINT/SIGTERM on to its own
    workers, and keeps the exit codes."""

    def __init__(self, study: optuna.Study, settings: SearchSettings, progress: Progress):
        self.study, self.settings, self.progress = study, settings, progress
        write_worker_spec(settings)
        self.slots = worker_commands(settings)
        self.lineage = Lineage(settings.output_dir, settings.max_retries)
        self.procs: dict[str, subprocess.Popen] = {}
        self.codes: list[int] = []
        self.stopping = False
        self.waiter = Waiter(progress, POLL_S)

    def forward(self, signum: int, frame: object) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def reap(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.codes.append(proc.returncode)
                del self.procs[name]

    def start(self, name: str) -> None:
        """Start the slot's worker, then wait until it holds a trial (or ends, or takes too long)."""
        command, env = self.slots[name]
        before = _claimed(self.study)
        # A session of its own: a Ctrl-C in the terminal reaches the workers once, through `forward`
        proc = subprocess.Popen(command, env=env, start_new_session=True)
        self.procs[name] = proc
        self.progress(f"worker {name} started (pid {proc.pid})")
        started = time.monotonic()
        while proc.poll() is None and _claimed(self.study) <= before and not self.stopping:
            if time.monotonic() - started > START_TIMEOUT_S or before >= self.settings.n_trials:
                break
            self.waiter.pause()

    def run(self) -> int:
        while True:
            self.reap()
            # The trials of a worker that died are queued again: work for a slot of ours
            fail_lost_trials(self.study, self.lineage)
            others = live_workers(self.settings)
            # A worker returns once the study is done (or failed too often, or was interrupted): then no new starts
            if not self.codes and not self.stopping:
                for name in self.slots:
                    if name in self.procs or name in others or self.stopping:
                        continue
                    if _has_work(self.study, self.settings):
                        self.start(name)
            others = {name: w for name, w in live_workers(self.settings).items() if name not in self.procs}
            if not self.procs and not others:
                break
            if others:
                held = ", ".join(f"{name} (pid {w.pid})" for name, w in sorted(others.items()))
                self.waiter.wait(f"waiting for the workers of an earlier run, which still train: {held}")
            else:
                self.waiter.pause()
        # 130/143 (interrupted) outrank 1 (too many failures), which outranks 0
        return max(self.codes or [0], key=lambda c: (c in (130, 143), c != 0))


def run_workers(study: optuna.Study, settings: SearchSettings, progress: Progress) -> int:
    """Run the study's trials in `settings.n_workers` worker processes (with the live workers of an earlier run of
    the command); the worst exit code (0 when all are done)."""
    where = f"each of GPUs {','.join(map(str, settings.gpus))}" if settings.gpus else "the CPU"
    progress(f"{settings.n_workers} workers: {settings.trials_per_device} trial(s) at once on {where}")
    supervisor = _Supervisor(study, settings, progress)
    previous = {s: signal.signal(s, supervisor.forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return supervisor.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
