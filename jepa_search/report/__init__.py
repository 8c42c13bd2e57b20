"""Study-level artifacts, rebuilt from the study alone: results.csv, topk.json, best_config.yaml, SUMMARY.md, plots,
and with a confirmation confirm.csv.

Nothing here holds state: every call reads the study (trials, their parameters and user attributes, the settings
stored with it) and its confirmation study, so the files are right after a resume, after a crash and while other
workers still run. `tables.py` makes the tables, `plots.py` the plots, `summary.py` the prose.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd

from jepa_search.record import stored_confirm_steps, stored_settings
from jepa_search.report.plots import plots
from jepa_search.report.summary import summary
from jepa_search.report.tables import aggregate, best_config, confirmation_rows, topk, trial_rows
from jepa_search.settings import StudyConfig
from jepa_search.study import load_confirm_study


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path to write, moved onto `path` at the end: workers rewriting the artifacts at the same moment
    leave whole files, never interleaved ones."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(study: optuna.Study, output_dir: Path) -> None:
    """Rewrite every study-level artifact in `output_dir` from `study` and its confirmation study."""
    config = StudyConfig.from_fingerprint(stored_settings(study))
    output_dir.mkdir(parents=True, exist_ok=True)
    df = trial_rows(study)
    with _replacing(output_dir / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    confirm = load_confirm_study(study)
    rows = confirmation_rows(confirm) if confirm is not None else []
    if rows:
        with _replacing(output_dir / "confirm.csv") as tmp:
            pd.DataFrame([r.as_row() for r in rows]).to_csv(tmp, index=False)
    confirmed = aggregate(rows)
    top = topk(study, config, [g for g in confirmed if not g.is_control])
    with _replacing(output_dir / "topk.json") as tmp:
        tmp.write_text(json.dumps([entry.as_dict() for entry in top], indent=2))
    if top:
        with _replacing(output_dir / "best_config.yaml") as tmp:
            tmp.write_text(
                f"# Phase 2 of {study.study_name}: trial {top[0].number}, ranked by the {top[0].ranked_by}.\n"
                f"# Run: sheeprl --config-path {output_dir.resolve()} --config-name best_config\n"
                + best_config(config, top[0].params, top[0].compile)
            )
    (output_dir / "plots").mkdir(exist_ok=True)
    for name, plot in plots(study, config).items():
        with _replacing(output_dir / "plots" / name) as tmp:
            plot(tmp)
    steps = stored_confirm_steps(confirm) if confirm is not None else None
    text = summary(study, config, df, top, output_dir, (rows, confirmed, steps))
    with _replacing(output_dir / "SUMMARY.md") as tmp:
        tmp.write_text(text)
