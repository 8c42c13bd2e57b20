"""SUMMARY.md: what the search found, in prose and tables, from the study, its settings and its confirmation."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from jepa_search import stats
from jepa_search.record import TrialRecord, records
from jepa_search.report.tables import ConfirmGroup, ConfirmRow, TopEntry
from jepa_search.results import OBJECTIVES
from jepa_search.settings import StudyConfig

# Fewer complete trials than this and SUMMARY.md says the ranking is not to be trusted
TRUSTED_MIN_COMPLETE = 5


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _with_ci(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _markdown(rows: list[dict[str, str]]) -> str:
    """A markdown table of rows of text (tabulate would otherwise reformat the numbers)."""
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _top_table(top: list[TopEntry]) -> str:
    return _markdown(
        [
            {
                "rank": str(r.rank),
                "trial": str(r.number),
                "objective": _fmt(r.objective),
                **{name: str(v) for name, v in r.params.items()},
                "best return": _fmt(r.best_eval_return),
                "confirmed IQM": _fmt(r.confirmation and r.confirmation.iqm),
                "note": "pruned" if r.pruned else "",
            }
            for r in top
        ]
    )


def _pareto_lines(study: optuna.Study, config: StudyConfig) -> list[str]:
    names = [f"{n} ({OBJECTIVES[n][1]})" for n in config.objectives]
    best = [TrialRecord.of(t) for t in study.best_trials]
    rows = [
        {
            "trial": str(r.number),
            "configuration": "control" if r.control else json.dumps(r.params),
            **{name: f"{v:.2f}" for name, v in zip(names, r.values or (), strict=True)},
        }
        for r in sorted(best, key=lambda r: -r.value)
    ]
    return [
        "## Pareto front",
        "",
        "Complete trials that no other trial beats on every objective (return maximised, the others minimised). "
        "Multi-objective studies are not pruned (Optuna does not support it): every trial trained its whole budget.",
        "",
        _markdown(rows),
        "",
        "![Pareto front](plots/pareto_front.png)",
        "",
    ]


def _control_lines(study: optuna.Study, config: StudyConfig) -> list[str]:
    control = next((r for r in records(study) if r.control), None)
    lines = ["## Control", ""]
    if not config.control:
        return [*lines, "No control trial (`--no-control`).", ""]
    if control is None or control.value is None:
        state = "queued" if control is None else control.state.name.lower()
        return [*lines, f"The control (plain DreamerV3, `jepa_coef: 0`) has not completed yet ({state}).", ""]
    bar = control.value
    jepa = [r for r in records(study, (TrialState.COMPLETE,)) if not r.control]
    better = sum(r.value > bar for r in jepa)
    return [
        *lines,
        f"Trial {control.number}: plain DreamerV3 (`jepa_coef: 0`), same budget and seed scheme as every trial: "
        f"objective **{bar:.2f}**, the bar to beat. {better} of {len(jepa)} complete JEPA trials beat it (one seed "
        "each; see the confirmation for several).",
        "",
    ]


def _confirmation_lines(rows: list[ConfirmRow], confirmed: list[ConfirmGroup], steps: int | None) -> list[str]:
    complete = sum(r.value is not None for r in rows)
    table = [
        {
            "configuration": g.configuration,
            "returns": ", ".join(f"{x:.1f}" for x in g.returns),
            "mean [95% CI]": _with_ci(g.mean, g.mean_ci),
            "IQM [95% CI]": _with_ci(g.iqm, g.iqm_ci),
            "std": _fmt(g.std),
            "range": f"{g.range:.2f}",
            "P(> control) [95% CI]": ""
            if g.p_improvement is None or g.p_improvement_ci is None
            else _with_ci(g.p_improvement, g.p_improvement_ci),
        }
        for g in confirmed
    ]
    return [
        "## Confirmation",
        "",
        f"Each configuration below was trained again on fresh seeds (disjoint from the search's), {steps} steps per "
        "run, never pruned. A run's return is the search's objective: its best smoothed evaluation return. Mean and "
        f"IQM (interquartile mean) with 95% stratified-bootstrap intervals ({stats.BOOTSTRAP_REPS} resamples of the "
        "runs within each configuration), the seed-to-seed spread (std, range), and P(> control): the probability "
        "that a run of the configuration beats a run of the control (ties count half), with its bootstrap interval. "
        f"{complete} of {len(rows)} runs complete; per-run returns in `confirm.csv`.",
        "",
        _markdown(table) if table else "No configuration has a complete run yet.",
        "",
    ]


def _diagnostic_lines(study: optuna.Study, config: StudyConfig, confirmed: list[ConfirmGroup]) -> list[str]:
    """How far early evaluations predicted the final ones, and how much seeds alone move a configuration."""
    grace = config.grace_evaluations
    curves = [r.curve for r in records(study, (TrialState.COMPLETE,)) if len(r.curve) >= grace]
    if grace >= config.n_evaluations:
        rho = "n/a (the grace point is a trial's last evaluation: nothing earlier predicts the final return)"
    elif len(curves) < 3:
        rho = f"n/a ({len(curves)} complete trials; at least 3 needed)"
    else:
        value = stats.spearman([c[grace - 1] for c in curves], [c[-1] for c in curves])
        rho = "n/a (the returns are all equal on one side)" if math.isnan(value) else f"{value:.2f}"
    lines = [
        "## Diagnostics",
        "",
        f"- Early stopping: Spearman rank correlation between the smoothed return at the grace point (evaluation "
        f"{grace}) and the final smoothed return of the complete trials: {rho}. Near 1, pruning at the grace point "
        "loses little; near 0 or below, it is a coin toss.",
    ]
    spread = [g for g in confirmed if g.std is not None]
    if spread:
        widest = max(spread, key=lambda g: g.range)
        stds = ", ".join(f"{g.configuration} {g.std:.2f}" for g in spread)
        lines.append(
            f"- Seed-to-seed spread (confirmation): std {stds}; widest range {widest.range:.2f} "
            f"({widest.configuration}). Differences in the search smaller than this are noise."
        )
    else:
        lines.append(
            "- Seed-to-seed spread: n/a (no confirmation with 2+ complete runs per configuration; "
            "use --confirm-top-k K --confirm-seeds S)"
        )
    return [*lines, ""]


def _settings_lines(config: StudyConfig) -> list[str]:
    objectives = ", ".join(f"{n} ({'maximised' if n == 'return' else 'minimised'})" for n in config.objectives)
    pruning = (
        "pruning off: Optuna does not prune multi-objective studies"
        if config.multi_objective
        else f"pruner `{config.pruner}` (grace {config.grace_frac})"
    )
    return [
        "## Settings",
        "",
        f"- env `{config.env}`, task `{config.task}`; full budget {config.full_steps} policy steps, fidelity "
        f"{config.fidelity_frac} ({config.trial_steps} steps per trial)",
        f"- evaluation every {config.eval_every} steps, {config.eval_episodes} episodes; sampler `{config.sampler}` "
        f"(no configuration trained twice), {pruning}, seed0 {config.seed0}",
        f"- objectives: {objectives}. The return is the best smoothed evaluation return; wall time the trial's "
        "seconds; peak memory (MiB) `torch.cuda.max_memory_allocated` since the trial started on a GPU, the "
        "process's peak resident memory on a CPU (over every trial of an in-process worker)",
        f"- search space: `{json.dumps(config.space.as_dict())}`; extra overrides: `{list(config.overrides)}`",
        "",
    ]


def _trial_lines(study: optuna.Study, df: pd.DataFrame) -> list[str]:
    skipped = [r.number for r in records(study) if r.not_trained]
    trained = df[~df["number"].isin(skipped)]
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    counts = {s.name: int((trained["state"] == s.name).sum()) for s in states}
    seconds = float(pd.to_numeric(df["wall_time_s"], errors="coerce").fillna(0).sum())
    gpu_seconds = float(pd.to_numeric(df.loc[df["device"] == "cuda", "wall_time_s"], errors="coerce").fillna(0).sum())
    lines = [
        "## Trials",
        "",
        f"complete {counts['COMPLETE']}, pruned {counts['PRUNED']}, failed {counts['FAIL']}, running "
        f"{counts['RUNNING']}, waiting {counts['WAITING']}; training time {seconds / 3600:.2f} h "
        f"({gpu_seconds / 3600:.2f} GPU-hours)"
        + (f"; {len(skipped)} not trained (nothing left to sample when they started)" if skipped else ""),
        "",
    ]
    failed = trained[trained["state"] == TrialState.FAIL.name]
    if len(failed):
        lines += ["Failed trials:", ""] + [f"- trial {r.number}: {r.fail_reason}" for r in failed.itertuples()] + [""]
    return lines


def _best_lines(top: list[TopEntry], output_dir: Path, ranked_by: str) -> list[str]:
    best = top[0]
    direct = f"sheeprl --config-path {shlex.quote(str(output_dir.resolve()))} --config-name best_config"
    return [
        "## Best configuration",
        "",
        f"Trial {best.number}{' (pruned: no trial completed)' if best.pruned else ''}: "
        f"`{json.dumps(best.params)}`, objective {best.objective:.2f}; {ranked_by}.",
        "",
        "## Phase 2",
        "",
        "Run `best_config.yaml` directly:",
        "",
        f"```bash\n{direct}\n```",
        "",
        "or with explicit overrides:",
        "",
        f"```bash\n{best.phase2_command}\n```",
        "",
    ]


def summary(
    study: optuna.Study,
    config: StudyConfig,
    df: pd.DataFrame,
    top: list[TopEntry],
    output_dir: Path,
    confirmation: tuple[list[ConfirmRow], list[ConfirmGroup], int | None],
) -> str:
    """The text of SUMMARY.md."""
    rows, confirmed, confirm_steps = confirmation
    complete = int((df["state"] == TrialState.COMPLETE.name).sum())
    lines = [f"# JEPA search summary: {study.study_name}", ""]
    if config.dry_run:
        lines += [
            "> **Dry run**: tiny model, short episodes, small buffers. These numbers check the pipeline; they say "
            "nothing about which configuration is better.",
            "",
        ]
    if complete < TRUSTED_MIN_COMPLETE:
        lines += [
            f"> **Too few finished trials to trust**: {complete} complete (at least {TRUSTED_MIN_COMPLETE} wanted). "
            "Treat the ranking as provisional.",
            "",
        ]
    lines += _settings_lines(config) + _trial_lines(study, df) + _control_lines(study, config)
    if top:
        ranked_by = (
            "ranked by the confirmation (IQM over seeds), then by the search's one seed"
            if top[0].ranked_by == "confirmation"
            else "ranked by the search's objective (one seed each)"
        )
        lines += ["## Top configurations", "", f"JEPA configurations (the control is not one), {ranked_by}.", ""]
        lines += [_top_table(top), ""]
        if rows:
            lines += _confirmation_lines(rows, confirmed, confirm_steps)
        if config.multi_objective:
            lines += _pareto_lines(study, config)
        lines += _best_lines(top, output_dir, ranked_by)
    else:
        lines += ["No JEPA trial has reported an evaluation yet.", ""]
    lines += _diagnostic_lines(study, config, confirmed)
    lines += [
        "## Plots",
        "",
        "![learning curves](plots/learning_curves.png)",
        "",
        "![optimisation history](plots/optimization_history.png)",
        "",
        "![parameters](plots/param_effects.png)",
        "",
    ]
    return "\n".join(lines)
