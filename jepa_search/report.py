"""Study-level artifacts, rebuilt from the study alone: results.csv, topk.json, best_config.yaml, SUMMARY.md, plots,
and with a confirmation confirm.csv.

Nothing here holds state: every call reads the study (trials, their parameters and user attributes, the settings
stored with it) and its confirmation study, so the files are right after a resume, after a crash and while other
workers still run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from jepa_search import stats
from jepa_search.confirm import CONTROL_LABEL, aggregate, confirmation_rows
from jepa_search.objective import SUMMARY_KEYS
from jepa_search.settings import COMPILE_KEYS, DEFAULT_TASKS, EXPERIMENTS, OBJECTIVE_KEYS
from jepa_search.space import configuration, is_control
from jepa_search.study import (
    COMPILE_ATTR,
    CONFIRM_STEPS_ATTR,
    NOT_TRAINED_ATTR,
    SETTINGS_ATTR,
    load_confirm_study,
    search_return,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TOP_MAX, TOP_MIN = 6, 4
# Fewer complete trials than this and SUMMARY.md says the ranking is not to be trusted
TRUSTED_MIN_COMPLETE = 5


def _curve(trial: FrozenTrial) -> list[float]:
    """The trial's smoothed return after each evaluation so far."""
    return trial.user_attrs.get("smoothed_returns", [])


def _value(trial: FrozenTrial) -> float | None:
    """A complete trial's return; a pruned one's best smoothed return so far (for ranking fill-ins only)."""
    if trial.state == TrialState.COMPLETE:
        return search_return(trial)
    return max(_curve(trial), default=None)


def trial_rows(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, control or not, each parameter, the returns, steps, time, memory, seed,
    fail reason."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in configuration(t)})
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "control": is_control(t)}
        row.update({name: configuration(t).get(name) for name in names})
        row["objective"] = _value(t) if t.state == TrialState.COMPLETE else None
        row.update({k: t.user_attrs.get(k) for k in SUMMARY_KEYS})
        rows.append(row)
    return pd.DataFrame(rows, columns=["number", "state", "control", *names, "objective", *SUMMARY_KEYS])


def phase2_overrides(settings: dict[str, Any], params: dict[str, Any], route: str = "off") -> list[str]:
    """The explicit SheepRL overrides of a configuration's Phase 2 run: full budget, same env, task and extras, and
    the compiled `route` its trial trained with (it computes what the plain step does, faster)."""
    out = [f"env={settings['env']}"]
    if settings["task"] != DEFAULT_TASKS.get(settings["env"]) or settings["env"] != "dmc":
        if settings["env"] == "dmc":
            domain, _, task = settings["task"].partition("_")
            out += [f"env.wrapper.domain_name={domain}", f"env.wrapper.task_name={task}"]
        else:
            out += [f"env.id={settings['task']}"]
    merged = {**params, **settings["space"]["fixed"]}
    out += [f"algo.{k}={v}" for k, v in merged.items()]
    out += [f"algo.total_steps={settings['full_steps']}", *settings["overrides"]]
    if route in COMPILE_KEYS:
        out.append(f"{COMPILE_KEYS[route]}=True")
    return out


def phase2_command(settings: dict[str, Any], params: dict[str, Any], route: str = "off") -> str:
    exp = EXPERIMENTS[settings["env"]]
    return " ".join(["sheeprl", f"exp={exp}", *map(shlex.quote, phase2_overrides(settings, params, route))])


def _ranked(study: optuna.Study, confirmed: list[dict[str, Any]]) -> list[FrozenTrial]:
    """The JEPA trials (never the control), best first: the confirmed configurations by their confirmation IQM, then
    complete trials by return, then pruned ones (only to fill up to TOP_MIN)."""
    jepa = [t for t in study.trials if not is_control(t) and _value(t) is not None]
    by_number = {t.number: t for t in jepa}
    first = [by_number[g["source_trial"]] for g in confirmed if g["source_trial"] in by_number]
    confirmed_numbers = {t.number for t in first}
    complete = sorted(
        (t for t in jepa if t.state == TrialState.COMPLETE and t.number not in confirmed_numbers),
        key=lambda t: -_value(t),
    )
    pruned = sorted((t for t in jepa if t.state == TrialState.PRUNED), key=lambda t: -_value(t))
    top = (first + complete)[: max(TOP_MAX, len(first))]
    return top + pruned[: max(0, TOP_MIN - len(top))]


def topk(study: optuna.Study, settings: dict[str, Any], confirmed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best JEPA configurations; `ranked_by` says whether the confirmation or the search's one seed ranked it."""
    by_trial = {g["source_trial"]: g for g in confirmed}
    return [
        {
            "rank": rank,
            "number": t.number,
            "ranked_by": "confirmation" if t.number in by_trial else "search",
            "pruned": t.state == TrialState.PRUNED,
            "objective": _value(t),
            "confirmation": _confirmation_entry(by_trial.get(t.number)),
            "params": t.params,
            "fixed": settings["space"]["fixed"],
            "best_eval_return": t.user_attrs.get("best_eval_return"),
            "best_smoothed_return": t.user_attrs.get("best_smoothed_return"),
            "last_eval_return": t.user_attrs.get("last_eval_return"),
            "seed": t.user_attrs.get("seed"),
            "trial_dir": t.user_attrs.get("trial_dir"),
            "compile": t.user_attrs.get(COMPILE_ATTR, "off"),
            "phase2_command": phase2_command(settings, t.params, t.user_attrs.get(COMPILE_ATTR, "off")),
        }
        for rank, t in enumerate(_ranked(study, confirmed), start=1)
    ]


def _confirmation_entry(group: dict[str, Any] | None) -> dict[str, Any] | None:
    keys = ("runs", "returns", "mean", "mean_ci", "iqm", "iqm_ci", "std", "range", "p_improvement", "p_improvement_ci")
    return None if group is None else {k: group.get(k) for k in keys}


def best_config(settings: dict[str, Any], params: dict[str, Any], route: str = "off") -> dict[str, Any]:
    """A primary SheepRL config for Phase 2, equal to the explicit overrides of `phase2_command`:
    `sheeprl --config-path DIR --config-name best_config` runs it."""
    config: dict[str, Any] = {
        "defaults": [
            "config",
            {"override exp": EXPERIMENTS[settings["env"]]},
            {"override env": settings["env"]},
            "_self_",
        ],
        # The file is run with --config-path: this brings back SheepRL's configs (and so this project's)
        "hydra": {"searchpath": ["pkg://sheeprl.configs"]},
    }
    for override in phase2_overrides(settings, params, route)[1:]:  # the first one is the env group, in the defaults
        key, _, value = override.lstrip("+~").partition("=")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config


def _plot_curves(study: optuna.Study, settings: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in study.get_trials(deepcopy=False):
        if not (y := _curve(t)):
            continue
        budget = round(settings["fidelity_frac"] * settings["full_steps"])
        x = [min(i * settings["eval_every"], budget) for i in range(1, len(y) + 1)]
        style = {"linestyle": "--", "alpha": 0.6} if t.state == TrialState.PRUNED else {"linewidth": 2}
        if is_control(t):
            style["color"] = "black"
        (line,) = ax.plot(x, y, marker="o", markersize=3, **style)
        note = " (control)" if is_control(t) else " (pruned)" if t.state == TrialState.PRUNED else ""
        ax.annotate(f"{t.number}{note}", (x[-1], y[-1]), fontsize=7, color=line.get_color())
    title = "Learning curves (dashed: pruned; black: control)"
    ax.set(xlabel="policy steps", ylabel="smoothed evaluation return", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_history(study: optuna.Study, path: Path) -> None:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    done = [t for t in complete if not is_control(t)]
    fig, ax = plt.subplots(figsize=(7, 4))
    if done:
        ax.scatter([t.number for t in done], [search_return(t) for t in done], label="objective")
        best, xs, ys = -math.inf, [], []
        for t in done:
            best = max(best, search_return(t))
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C1", label="best so far")
    for t in complete:
        if is_control(t):
            ax.axhline(search_return(t), color="black", linestyle=":", label="control (plain DreamerV3)")
    if complete:
        ax.legend()
    ax.set(xlabel="trial", ylabel="best smoothed return", title="Optimisation history")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_params(study: optuna.Study, settings: dict[str, Any], path: Path) -> None:
    choices = settings["space"]["variable"]
    fig, axes = plt.subplots(1, len(choices), figsize=(4 * len(choices), 3.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], choices.items(), strict=True):
        for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
            points = [
                (values.index(t.params[name]), _value(t))
                for t in study.trials
                if t.state == state and t.params.get(name) in values and _value(t) is not None
            ]
            if points:
                ax.scatter(*zip(*points, strict=True), marker=marker, label=state.name.lower())
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set(xlabel=name, ylabel="smoothed return")
        if ax.collections:  # the control alone has no parameters to plot
            ax.legend(fontsize=7)
    fig.suptitle("Effect of each parameter (pruned: best reported value)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _with_ci(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| rank | trial | objective | " + " | ".join(rows[0]["params"]) + " | best return | confirmed IQM | note |\n"
    head += "|" + " --- |" * (6 + len(rows[0]["params"])) + "\n"
    for r in rows:
        confirmed = r["confirmation"]
        head += (
            f"| {r['rank']} | {r['number']} | {_fmt(r['objective'])} | "
            + " | ".join(str(v) for v in r["params"].values())
            + f" | {_fmt(r['best_eval_return'])} | {_fmt(confirmed and confirmed['iqm'])} | "
            + f"{'pruned' if r['pruned'] else ''} |\n"
        )
    return head


def _plot_pareto(study: optuna.Study, settings: dict[str, Any], path: Path) -> None:
    """Return against each minimised objective; the Pareto-optimal trials in red."""
    objectives = settings["objectives"][1:]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in study.best_trials}
    fig, axes = plt.subplots(1, len(objectives), figsize=(5 * len(objectives), 4), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], objectives, strict=True), start=1):
        for t in complete:
            color = "C3" if t.number in front else "C7"
            ax.scatter(t.values[k], t.values[0], color=color, marker="s" if is_control(t) else "o")
            ax.annotate(f"{t.number}{' (control)' if is_control(t) else ''}", (t.values[k], t.values[0]), fontsize=7)
        ax.set(xlabel=f"{name} ({OBJECTIVE_KEYS[name]}, minimised)", ylabel="return (maximised)")
    fig.suptitle("Pareto front (red: not beaten on every objective by another trial)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pareto_lines(study: optuna.Study, settings: dict[str, Any]) -> list[str]:
    names = settings["objectives"]
    head = "| trial | configuration | " + " | ".join(f"{n} ({OBJECTIVE_KEYS[n]})" for n in names) + " |"
    rows = [
        f"| {t.number} | {'control' if is_control(t) else json.dumps(t.params)} | "
        + " | ".join(f"{v:.2f}" for v in t.values)
        + " |"
        for t in sorted(study.best_trials, key=lambda t: -search_return(t))
    ]
    return [
        "## Pareto front",
        "",
        "Complete trials that no other trial beats on every objective (return maximised, the others minimised). "
        "Multi-objective studies are not pruned (Optuna does not support it): every trial trained its whole budget.",
        "",
        head,
        "|" + " --- |" * (len(names) + 2),
        *rows,
        "",
        "![Pareto front](plots/pareto_front.png)",
        "",
    ]


def _control_lines(study: optuna.Study, settings: dict[str, Any]) -> list[str]:
    control = next((t for t in study.get_trials(deepcopy=False) if is_control(t)), None)
    lines = ["## Control", ""]
    if not settings["control"]:
        return [*lines, "No control trial (`--no-control`).", ""]
    if control is None or control.state != TrialState.COMPLETE:
        state = "queued" if control is None else control.state.name.lower()
        return [*lines, f"The control (plain DreamerV3, `jepa_coef: 0`) has not completed yet ({state}).", ""]
    bar = search_return(control)
    jepa = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if not is_control(t)]
    better = sum(search_return(t) > bar for t in jepa)
    return [
        *lines,
        f"Trial {control.number}: plain DreamerV3 (`jepa_coef: 0`), same budget and seed scheme as every trial: "
        f"objective **{bar:.2f}**, the bar to beat. {better} of {len(jepa)} complete JEPA trials beat it (one seed "
        "each; see the confirmation for several).",
        "",
    ]


def _confirmation_lines(rows: list[dict[str, Any]], confirmed: list[dict[str, Any]], steps: int | None) -> list[str]:
    complete = sum(r["return"] is not None for r in rows)
    lines = [
        "## Confirmation",
        "",
        f"Each configuration below was trained again on fresh seeds (disjoint from the search's), {steps} steps per "
        "run, never pruned. A run's return is the search's objective: its best smoothed evaluation return. Mean and "
        f"IQM (interquartile mean) with 95% stratified-bootstrap intervals ({stats.BOOTSTRAP_REPS} resamples of the "
        "runs within each configuration), the seed-to-seed spread (std, range), and P(> control): the probability "
        "that a run of the configuration beats a run of the control (ties count half), with its bootstrap interval. "
        f"{complete} of {len(rows)} runs complete; per-run returns in `confirm.csv`.",
        "",
        "| configuration | returns | mean [95% CI] | IQM [95% CI] | std | range | P(> control) [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in confirmed:
        p = g.get("p_improvement")
        lines.append(
            f"| {g['configuration']} | {', '.join(f'{x:.1f}' for x in g['returns'])} | "
            f"{_with_ci(g['mean'], g['mean_ci'])} | {_with_ci(g['iqm'], g['iqm_ci'])} | {_fmt(g['std'])} | "
            f"{g['range']:.2f} | {'' if p is None else _with_ci(p, g['p_improvement_ci'])} |"
        )
    return [*lines, ""]


def _diagnostic_lines(study: optuna.Study, settings: dict[str, Any], confirmed: list[dict[str, Any]]) -> list[str]:
    """How far early evaluations predicted the final ones, and how much seeds alone move a configuration."""
    evaluations = math.ceil(round(settings["fidelity_frac"] * settings["full_steps"]) / settings["eval_every"])
    grace = max(1, math.ceil(settings["grace_frac"] * evaluations))
    curves = [
        _curve(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if len(_curve(t)) >= grace
    ]
    if len(curves) < 3:
        rho = f"n/a ({len(curves)} complete trials; at least 3 needed)"
    else:
        value = stats.spearman([c[grace - 1] for c in curves], [c[-1] for c in curves])
        rho = "n/a (the returns are all equal on one side)" if math.isnan(value) else f"{value:.2f}"
    spread = [g for g in confirmed if g["std"] is not None]
    lines = [
        "## Diagnostics",
        "",
        f"- Early stopping: Spearman rank correlation between the smoothed return at the grace point (evaluation "
        f"{grace}) and the final smoothed return of the complete trials: {rho}. Near 1, pruning at the grace point "
        "loses little; near 0 or below, it is a coin toss.",
    ]
    if spread:
        widest = max(spread, key=lambda g: g["range"])
        stds = ", ".join(f"{g['configuration']} {g['std']:.2f}" for g in spread)
        lines.append(
            f"- Seed-to-seed spread (confirmation): std {stds}; "
            f"widest range {widest['range']:.2f} ({widest['configuration']}). Differences in the search smaller than "
            "this are noise."
        )
    else:
        lines.append(
            "- Seed-to-seed spread: n/a (no confirmation with 2+ complete runs per configuration; "
            "use --confirm-top-k K --confirm-seeds S)"
        )
    return [*lines, ""]


def _summary(
    study: optuna.Study,
    settings: dict[str, Any],
    df: pd.DataFrame,
    top: list[dict[str, Any]],
    output_dir: Path,
    confirmation: tuple[list[dict[str, Any]], list[dict[str, Any]], int | None],
) -> str:
    skipped = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(NOT_TRAINED_ATTR)]
    trained = df[~df["number"].isin(skipped)]
    counts = {s: int((trained["state"] == s).sum()) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    seconds = float(pd.to_numeric(df["wall_time_s"], errors="coerce").fillna(0).sum())
    gpu_seconds = float(pd.to_numeric(df.loc[df["device"] == "cuda", "wall_time_s"], errors="coerce").fillna(0).sum())
    rows, confirmed, confirm_steps = confirmation
    multi = len(settings["objectives"]) > 1
    objectives = ", ".join(f"{n} ({'maximised' if n == 'return' else 'minimised'})" for n in settings["objectives"])
    pruning = (
        "pruning off: Optuna does not prune multi-objective studies"
        if multi
        else f"pruner `{settings['pruner']}` (grace {settings['grace_frac']})"
    )
    lines = [f"# JEPA search summary: {study.study_name}", ""]
    if settings.get("dry_run"):
        lines += [
            "> **Dry run**: tiny model, short episodes, small buffers. These numbers check the pipeline; they say "
            "nothing about which configuration is better.",
            "",
        ]
    if counts["COMPLETE"] < TRUSTED_MIN_COMPLETE:
        lines += [
            f"> **Too few finished trials to trust**: {counts['COMPLETE']} complete (at least "
            f"{TRUSTED_MIN_COMPLETE} wanted). Treat the ranking as provisional.",
            "",
        ]
    lines += [
        "## Settings",
        "",
        f"- env `{settings['env']}`, task `{settings['task']}`; full budget {settings['full_steps']} policy steps, "
        f"fidelity {settings['fidelity_frac']} ({round(settings['fidelity_frac'] * settings['full_steps'])} steps "
        "per trial)",
        f"- evaluation every {settings['eval_every']} steps, {settings['eval_episodes']} episodes; sampler "
        f"`{settings['sampler']}` (no configuration trained twice), {pruning}, seed0 {settings['seed0']}",
        f"- objectives: {objectives}. The return is the best smoothed evaluation return; wall time the trial's "
        "seconds; peak memory (MiB) `torch.cuda.max_memory_allocated` since the trial started on a GPU, the "
        "process's peak resident memory on a CPU (over every trial of an in-process worker)",
        f"- search space: `{json.dumps(settings['space'])}`; extra overrides: `{settings['overrides']}`",
        "",
        "## Trials",
        "",
        f"complete {counts['COMPLETE']}, pruned {counts['PRUNED']}, failed {counts['FAIL']}, running "
        f"{counts['RUNNING']}, waiting {counts['WAITING']}; training time {seconds / 3600:.2f} h "
        f"({gpu_seconds / 3600:.2f} GPU-hours)"
        + (f"; {len(skipped)} not trained (nothing left to sample when they started)" if skipped else ""),
        "",
    ]
    failed = trained[trained["state"] == "FAIL"]
    if len(failed):
        lines += ["Failed trials:", ""] + [f"- trial {r.number}: {r.fail_reason}" for r in failed.itertuples()] + [""]
    lines += _control_lines(study, settings)
    if top:
        best = top[0]
        ranked_by = (
            "ranked by the confirmation (IQM over seeds), then by the search's one seed"
            if best["ranked_by"] == "confirmation"
            else "ranked by the search's objective (one seed each)"
        )
        direct = f"sheeprl --config-path {shlex.quote(str(output_dir.resolve()))} --config-name best_config"
        lines += [
            "## Top configurations",
            "",
            f"JEPA configurations (the control is not one), {ranked_by}.",
            "",
            _table(top),
        ]
        if rows:
            lines += _confirmation_lines(rows, confirmed, confirm_steps)
        if multi:
            lines += _pareto_lines(study, settings)
        lines += [
            "## Best configuration",
            "",
            f"Trial {best['number']}{' (pruned: no trial completed)' if best['pruned'] else ''}: "
            f"`{json.dumps(best['params'])}`, objective {best['objective']:.2f}; {ranked_by}.",
            "",
            "## Phase 2",
            "",
            "Run `best_config.yaml` directly:",
            "",
            f"```bash\n{direct}\n```",
            "",
            "or with explicit overrides:",
            "",
            f"```bash\n{best['phase2_command']}\n```",
            "",
        ]
    else:
        lines += ["No JEPA trial has reported an evaluation yet.", ""]
    lines += _diagnostic_lines(study, settings, confirmed)
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
    # A study made before --objectives and the control existed had one objective and no control
    settings = {"objectives": ["return"], "control": False, **study.user_attrs[SETTINGS_ATTR]}
    output_dir.mkdir(parents=True, exist_ok=True)
    df = trial_rows(study)
    with _replacing(output_dir / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    confirm = load_confirm_study(study)
    rows = confirmation_rows(confirm) if confirm is not None else []
    if rows:
        with _replacing(output_dir / "confirm.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    confirmed = aggregate(rows)
    top = topk(study, settings, [g for g in confirmed if g["configuration"] != CONTROL_LABEL])
    with _replacing(output_dir / "topk.json") as tmp:
        tmp.write_text(json.dumps(top, indent=2))
    if top:
        with _replacing(output_dir / "best_config.yaml") as tmp, tmp.open("w") as f:
            f.write(
                f"# Phase 2 of {study.study_name}: trial {top[0]['number']}, ranked by the {top[0]['ranked_by']}.\n"
                f"# Run: sheeprl --config-path {output_dir.resolve()} --config-name best_config\n"
            )
            yaml.safe_dump(best_config(settings, top[0]["params"], top[0]["compile"]), f, sort_keys=False)
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    figures = {
        "learning_curves.png": partial(_plot_curves, study, settings),
        "optimization_history.png": partial(_plot_history, study),
        "param_effects.png": partial(_plot_params, study, settings),
    }
    if len(settings["objectives"]) > 1:
        figures["pareto_front.png"] = partial(_plot_pareto, study, settings)
    for name, plot in figures.items():
        with _replacing(plots / name) as tmp:
            plot(tmp)
    steps = confirm.user_attrs.get(CONFIRM_STEPS_ATTR) if confirm is not None else None
    summary = _summary(study, settings, df, top, output_dir, (rows, confirmed, steps))
    with _replacing(output_dir / "SUMMARY.md") as tmp:
        tmp.write_text(summary)
