"""The search's settings, frozen: `StudyConfig` is what defines a study (stored with it, compared on a resume, and
what the report is rebuilt from); `SearchSettings` adds how this command runs it. `validate.py` makes them from the
command line."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from jepa_search.results import OBJECTIVES
from jepa_search.space import SearchSpace, parse_space


def evaluations(steps: int, eval_every: int) -> int:
    """Evaluations of a run of `steps`: every `eval_every` steps, and one at the end when the budget is not a
    multiple."""
    return math.ceil(steps / eval_every)


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """The settings that define a study: a resume with other values would mix incomparable trials."""

    env: str
    task: str
    full_steps: int
    fidelity_frac: float
    eval_every: int
    eval_episodes: int
    space: SearchSpace
    sampler: str = "random"
    pruner: str = "hyperband"
    grace_frac: float = 0.25
    seed0: int = 0
    dry_run: bool = False
    overrides: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ("return",)
    control: bool = True

    @property
    def trial_steps(self) -> int:
        """Each trial's budget in policy steps (SheepRL's `algo.total_steps` unit)."""
        return round(self.fidelity_frac * self.full_steps)

    @property
    def n_evaluations(self) -> int:
        """Evaluations per trial."""
        return evaluations(self.trial_steps, self.eval_every)

    @property
    def grace_evaluations(self) -> int:
        """No pruning before this many evaluations (`grace_frac` of them, at least one)."""
        return max(1, math.ceil(self.grace_frac * self.n_evaluations))

    @property
    def directions(self) -> list[str]:
        """One Optuna direction per objective; several make a multi-objective study (never pruned)."""
        return [OBJECTIVES[name].direction for name in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def fingerprint(self) -> dict[str, Any]:
        """The study's settings as JSON, stored with it."""
        d = {f.name: getattr(self, f.name) for f in fields(StudyConfig)}
        d.update(overrides=list(self.overrides), objectives=list(self.objectives), space=self.space.as_dict())
        return d

    @classmethod
    def from_fingerprint(cls, stored: dict[str, Any]) -> StudyConfig:
        """The settings a study was made with. A study made before --objectives and the control existed had one
        objective and no control."""
        d = {"objectives": ["return"], "control": False, **stored}
        d.update(
            overrides=tuple(d["overrides"]),
            objectives=tuple(d["objectives"]),
            space=parse_space(d["space"], "the study's stored search space"),
        )
        return cls(**{f.name: d[f.name] for f in fields(StudyConfig) if f.name in d})


@dataclass(frozen=True, kw_only=True)
class SearchSettings(StudyConfig):
    """What the search does: the study, and how this command runs it."""

    n_trials: int
    output_dir: Path
    storage: str
    study_name: str
    device: str = "auto"
    wandb_project: str | None = None
    tensorboard: bool = False
    isolation: str = "inprocess"
    heartbeat_interval: int = 60
    storage_timeout: float = 300.0
    max_retries: int = 2
    checkpoint_every: int = 0
    compile: str = "off"
    trials_per_device: int = 1
    trials_per_process: int = 1
    gpus: tuple[int, ...] = ()
    confirm_top_k: int = 0
    confirm_seeds: int = 3
    confirm_steps: int = 0
    confirm_only: bool = False
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def processes_per_device(self) -> int:
        """Worker processes on each device: its `trials_per_device` trials, `trials_per_process` in each."""
        return self.trials_per_device // self.trials_per_process

    @property
    def n_workers(self) -> int:
        """Worker processes: `processes_per_device` on each GPU of `gpus`, or on the CPU when there are none."""
        return self.processes_per_device * max(1, len(self.gpus))

    def to_spec(self) -> dict[str, Any]:
        """The settings as JSON, whole but for the storage URL, which may hold a password (a worker takes it from
        `STORAGE_ENV`): what a worker process is started from (`from_spec`)."""
        d = self.fingerprint()
        d.update({f.name: getattr(self, f.name) for f in fields(SearchSettings) if f.name not in d})
        d.update(output_dir=str(self.output_dir), gpus=list(self.gpus))
        for name in ("storage", "warnings"):
            d.pop(name)
        return d

    @classmethod
    def from_spec(cls, spec: dict[str, Any], storage: str) -> SearchSettings:
        study = StudyConfig.from_fingerprint(spec)
        values = {f.name: getattr(study, f.name) for f in fields(StudyConfig)}
        values.update({f.name: spec[f.name] for f in fields(SearchSettings) if f.name in spec and f.name not in values})
        values.update(output_dir=Path(spec["output_dir"]), gpus=tuple(spec["gpus"]), storage=storage)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            output_dir=str(self.output_dir),
            space=self.space.as_dict(),
            storage=mask_password(self.storage),
            trial_steps=self.trial_steps,
            n_evaluations=self.n_evaluations,
            grace_evaluations=self.grace_evaluations,
        )
        d.pop("warnings")
        return d


# Where a child process (a worker, a trial of --isolation subprocess) finds the storage URL: it may hold a password,
# which files on disk must not
STORAGE_ENV = "JEPA_SEARCH_STORAGE"


def default_storage(output_dir: Path) -> str:
    """The study's database when no --storage is given: `study.db` in the output folder."""
    return f"sqlite:///{(output_dir / 'study.db').resolve()}"


def mask_password(url: str) -> str:
    """The storage URL with its password replaced by ***, for logs and artifacts."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
