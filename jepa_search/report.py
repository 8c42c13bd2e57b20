"""Study-level artifacts, rebuilt from the study alone: results.csv, topk.json, best_config.yaml, SUMMARY.md, plots.

Nothing here holds state: every call reads the study (trials, their parameters, intermediate values and user
attributes, and the settings stored with it), so the files are right after a resume, after a crash and while
other workers still run.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import matplotlib
import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from jepa_search.objective import SUMMARY_KEYS
from jepa_search.settings import DEFAULT_TASKS, EXPERIMENTS
from jepa_search.study import SETTINGS_ATTR

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TOP_MAX, TOP_MIN = 6, 4
# Fewer complete trials than this and SUMMARY.md says the ranking is not to be trusted
TRUSTED_MIN_COMPLETE = 5


def _value(trial: FrozenTrial) -> float | None:
    """A complete trial's objective; a pruned one's best reported smoothed return (for ranking fill-ins only)."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.intermediate_values:
        return max(trial.intermediate_values.values())
    return None


def trial_rows(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, each parameter, the returns, steps, time, seed, fail reason."""
    names = sorted({name for t in study.trials for name in t.params})
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update({name: t.params.get(name) for name in names})
        row["objective"] = t.value if t.state == TrialState.COMPLETE else None
        row.update({k: t.user_attrs.get(k) for k in SUMMARY_KEYS})
        rows.append(row)
    return pd.DataFrame(rows, columns=["number", "state", *names, "objective", *SUMMARY_KEYS])


def phase2_overrides(settings: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The explicit SheepRL overrides of a configuration's Phase 2 run (full budget, same env, task and extras)."""
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
    return out


def phase2_command(settings: dict[str, Any], params: dict[str, Any]) -> str:
    exp = EXPERIMENTS[settings["env"]]
    return " ".join(["sheeprl", f"exp={exp}", *map(shlex.quote, phase2_overrides(settings, params))])


def _ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials by objective, then pruned ones (only to fill up to TOP_MIN), best first."""
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    pruned = sorted(
        (t for t in study.trials if t.state == TrialState.PRUNED and _value(t) is not None), key=lambda t: -_value(t)
    )
    top = complete[:TOP_MAX]
    return top + pruned[: max(0, TOP_MIN - len(top))]


def topk(study: optuna.Study, settings: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "rank": rank,
            "number": t.number,
            "pruned": t.state == TrialState.PRUNED,
            "objective": _value(t),
            "params": t.params,
            "fixed": settings["space"]["fixed"],
            "best_eval_return": t.user_attrs.get("best_eval_return"),
            "best_smoothed_return": t.user_attrs.get("best_smoothed_return"),
            "last_eval_return": t.user_attrs.get("last_eval_return"),
            "seed": t.user_attrs.get("seed"),
            "trial_dir": t.user_attrs.get("trial_dir"),
            "phase2_command": phase2_command(settings, t.params),
        }
        for rank, t in enumerate(_ranked(study), start=1)
    ]


def best_config(settings: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
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
    for override in phase2_overrides(settings, params)[1:]:  # the first one is the env group, in the defaults
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
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        x = [min(i * settings["eval_every"], round(settings["fidelity_frac"] * settings["full_steps"])) for i in steps]
        y = [t.intermediate_values[i] for i in steps]
        style = {"linestyle": "--", "alpha": 0.6} if t.state == TrialState.PRUNED else {"linewidth": 2}
        (line,) = ax.plot(x, y, marker="o", markersize=3, **style)
        ax.annotate(
            f"{t.number}{' (pruned)' if t.state == TrialState.PRUNED else ''}",
            (x[-1], y[-1]),
            fontsize=7,
            color=line.get_color(),
        )
    ax.set(xlabel="policy steps", ylabel="smoothed evaluation return", title="Learning curves (dashed: pruned)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_history(study: optuna.Study, path: Path) -> None:
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(7, 4))
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], label="objective")
        best, xs, ys = -math.inf, [], []
        for t in done:
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C1", label="best so far")
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
        ax.legend(fontsize=7)
    fig.suptitle("Effect of each parameter (pruned: best reported value)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| rank | trial | objective | " + " | ".join(rows[0]["params"]) + " | best return | note |\n"
    head += "|" + " --- |" * (5 + len(rows[0]["params"])) + "\n"
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        head += (
            f"| {r['rank']} | {r['number']} | {fmt(r['objective'])} | "
            + " | ".join(str(v) for v in r["params"].values())
            + f" | {fmt(r['best_eval_return'])} | {'pruned' if r['pruned'] else ''} |\n"
        )
    return head


def _summary(
    study: optuna.Study, settings: dict[str, Any], df: pd.DataFrame, top: list[dict[str, Any]], output_dir: Path
) -> str:
    counts = {s: int((df["state"] == s).sum()) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    seconds = float(pd.to_numeric(df["wall_time_s"], errors="coerce").fillna(0).sum())
    gpu_seconds = float(pd.to_numeric(df.loc[df["device"] == "cuda", "wall_time_s"], errors="coerce").fillna(0).sum())
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
        f"`{settings['sampler']}`, pruner `{settings['pruner']}` (grace {settings['grace_frac']}), seed0 "
        f"{settings['seed0']}",
        f"- search space: `{json.dumps(settings['space'])}`; extra overrides: `{settings['overrides']}`",
        "",
        "## Trials",
        "",
        f"complete {counts['COMPLETE']}, pruned {counts['PRUNED']}, failed {counts['FAIL']}, running "
        f"{counts['RUNNING']}, waiting {counts['WAITING']}; training time {seconds / 3600:.2f} h "
        f"({gpu_seconds / 3600:.2f} GPU-hours)",
        "",
    ]
    failed = df[df["state"] == "FAIL"]
    if len(failed):
        lines += ["Failed trials:", ""] + [f"- trial {r.number}: {r.fail_reason}" for r in failed.itertuples()] + [""]
    if top:
        best = top[0]
        direct = f"sheeprl --config-path {shlex.quote(str(output_dir.resolve()))} --config-name best_config"
        lines += [
            "## Top configurations",
            "",
            _table(top),
            "## Best configuration",
            "",
            f"Trial {best['number']}{' (pruned: no trial completed)' if best['pruned'] else ''}: "
            f"`{json.dumps(best['params'])}`, objective {best['objective']:.2f}.",
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
        lines += ["No trial has reported an evaluation yet.", ""]
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


def write_report(study: optuna.Study, output_dir: Path) -> None:
    """Rewrite every study-level artifact in `output_dir` from `study`."""
    settings = study.user_attrs[SETTINGS_ATTR]
    output_dir.mkdir(parents=True, exist_ok=True)
    df = trial_rows(study)
    df.to_csv(output_dir / "results.csv", index=False)
    top = topk(study, settings)
    (output_dir / "topk.json").write_text(json.dumps(top, indent=2))
    if top:
        with (output_dir / "best_config.yaml").open("w") as f:
            f.write(
                f"# Phase 2 of {study.study_name}: trial {top[0]['number']}.\n"
                f"# Run: sheeprl --config-path {output_dir.resolve()} --config-name best_config\n"
            )
            yaml.safe_dump(best_config(settings, top[0]["params"]), f, sort_keys=False)
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    _plot_curves(study, settings, plots / "learning_curves.png")
    _plot_history(study, plots / "optimization_history.png")
    _plot_params(study, settings, plots / "param_effects.png")
    (output_dir / "SUMMARY.md").write_text(_summary(study, settings, df, top, output_dir))
