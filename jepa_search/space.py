"""The search space: data read from YAML, turned into `trial.suggest_categorical` calls and SheepRL overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

DEFAULT_SPACE_FILE = Path(__file__).resolve().parents[1] / "configs" / "search_space.yaml"

# What the space may vary or fix, with the type each value must have (bool is rejected: YAML's yes/no are bools)
KNOWN_PARAMS: dict[str, type] = {
    "jepa_coef": float,
    "jepa_ema": float,
    "jepa_mask.erase_frac": float,
    "jepa_mask.vec_dropout": float,
    "jepa_proj_dim": int,
    "jepa_hidden": int,
}
RANGES: dict[str, tuple[float, float]] = {
    "jepa_coef": (0.0, float("inf")),
    "jepa_ema": (0.0, 1.0),
    "jepa_mask.erase_frac": (0.0, 1.0),
    "jepa_mask.vec_dropout": (0.0, 1.0),
    "jepa_proj_dim": (1, float("inf")),
    "jepa_hidden": (1, float("inf")),
}


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the value and the fix."""


@dataclass(frozen=True)
class SearchSpace:
    variable: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any]

    def size(self) -> int:
        """How many distinct configurations the space holds."""
        n = 1
        for choices in self.variable.values():
            n *= len(choices)
        return n

    def as_dict(self) -> dict[str, Any]:
        return {"variable": {k: list(v) for k, v in self.variable.items()}, "fixed": dict(self.fixed)}


def _check_value(source: str, name: str, value: Any) -> Any:
    kind = KNOWN_PARAMS[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
    if not ok:
        raise SpaceError(f"{source}: {name} value {value!r} must be {'a number' if kind is float else 'an integer'}")
    low, high = RANGES[name]
    if not low <= value <= high or (name == "jepa_ema" and value == 1.0):
        raise SpaceError(f"{source}: {name} value {value!r} is outside its range [{low}, {high}]")
    return kind(value)


def parse_space(data: Any, source: str) -> SearchSpace:
    """A validated `SearchSpace` from parsed YAML; raises `SpaceError` with one clear line."""
    if not isinstance(data, dict) or set(data) - {"variable", "fixed"} or "variable" not in data:
        raise SpaceError(f"{source}: expected a mapping with keys 'variable' (and optionally 'fixed'), got {data!r}")
    variable_in, fixed_in = data["variable"] or {}, data.get("fixed") or {}
    if not isinstance(variable_in, dict) or not isinstance(fixed_in, dict):
        raise SpaceError(f"{source}: 'variable' and 'fixed' must be mappings of parameter names to values")
    for name in [*variable_in, *fixed_in]:
        if name not in KNOWN_PARAMS:
            raise SpaceError(f"{source}: unknown parameter '{name}'; known: {', '.join(KNOWN_PARAMS)}")
    if both := set(variable_in) & set(fixed_in):
        raise SpaceError(f"{source}: {', '.join(sorted(both))} cannot be both variable and fixed")
    if not variable_in:
        raise SpaceError(f"{source}: 'variable' is empty; give at least one parameter with its choices")
    variable = {}
    for name, choices in variable_in.items():
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{source}: {name} needs a non-empty list of choices, got {choices!r}")
        values = tuple(_check_value(source, name, c) for c in choices)
        if len(set(values)) != len(values):
            raise SpaceError(f"{source}: {name} lists a choice twice: {list(values)}")
        variable[name] = values
    fixed = {name: _check_value(source, name, v) for name, v in fixed_in.items()}
    return SearchSpace(variable, fixed)


def load_space(path: str | Path | None) -> SearchSpace:
    """The space in `path` (YAML, read with the safe loader), or the default one."""
    path = Path(path) if path is not None else DEFAULT_SPACE_FILE
    try:
        text = path.read_text()
    except OSError as e:
        raise SpaceError(f"--search-space {path}: cannot read it ({e.strerror}); give an existing YAML file") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"--search-space {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    return parse_space(data, f"--search-space {path}")


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's variable parameters, one categorical suggestion each."""
    return {name: trial.suggest_categorical(name, list(choices)) for name, choices in space.variable.items()}


def to_overrides(params: dict[str, Any]) -> list[str]:
    """SheepRL/Hydra overrides for JEPA parameters (`jepa_coef` -> `algo.jepa_coef=...`)."""
    return [f"algo.{name}={value}" for name, value in params.items()]


# The control: plain DreamerV3 (no JEPA module exists at coefficient 0), trained with the search's budget and seeding
CONTROL_PARAMS: dict[str, Any] = {"jepa_coef": 0.0}
