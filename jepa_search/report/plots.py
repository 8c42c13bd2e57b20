"""The report's plots. Optuna draws what it can (optimisation history, each parameter's effect, the Pareto front);
the learning curves are ours: Optuna's intermediate-value plot shows neither the control, nor the pruned trials
apart, nor policy steps, and a multi-objective study has no intermediate values (the curves are user attributes)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import optuna
import optuna.visualization.matplotlib as optuna_plots
from optuna.trial import TrialState

from jepa_search.record import is_control, records
from jepa_search.settings import StudyConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RETURN = "best smoothed return"


@contextmanager
def _figure(path: Path) -> Iterator[None]:
    """Whatever figure the block draws is saved to `path` and closed. Optuna marks its plots experimental and warns
    of a study without complete trials yet (an empty plot, redrawn after the next trial); matplotlib warns of a
    legend or an axis range with a single trial: nothing a user can act on."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
            plt.gcf().savefig(path, dpi=100, bbox_inches="tight")
    finally:
        optuna.logging.set_verbosity(verbosity)
        plt.close("all")


def _jepa_only(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study without the control, which is no point of the search's space."""
    copy = optuna.create_study(directions=study.directions)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    copy.add_trials([t for t in finished if not is_control(t)])
    return copy


def _control_return(study: optuna.Study) -> float | None:
    control = [r for r in records(study, (TrialState.COMPLETE,)) if r.control]
    return control[0].value if control else None


def learning_curves(study: optuna.Study, config: StudyConfig, path: Path) -> None:
    with _figure(path):
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in records(study):
            if not (y := r.curve):
                continue
            x = [min(i * config.eval_every, config.trial_steps) for i in range(1, len(y) + 1)]
            style = {"linestyle": "--", "alpha": 0.6} if r.state == TrialState.PRUNED else {"linewidth": 2}
            if r.control:
                style["color"] = "black"
            (line,) = ax.plot(x, y, marker="o", markersize=3, **style)
            note = " (control)" if r.control else " (pruned)" if r.state == TrialState.PRUNED else ""
            ax.annotate(f"{r.number}{note}", (x[-1], y[-1]), fontsize=7, color=line.get_color())
        title = "Learning curves (dashed: pruned; black: control)"
        ax.set(xlabel="policy steps", ylabel="smoothed evaluation return", title=title)


def _return(trial: optuna.trial.FrozenTrial) -> float:
    """What the plots show of a trial: its first objective, the best smoothed evaluation return."""
    return trial.values[0]


def optimization_history(study: optuna.Study, path: Path) -> None:
    """Optuna's history of the JEPA trials' returns, with the control's as a line to beat."""
    with _figure(path):
        jepa = _jepa_only(study)
        ax = optuna_plots.plot_optimization_history(jepa, target=_return, target_name=RETURN)
        if (bar := _control_return(study)) is not None:
            ax.axhline(bar, color="black", linestyle=":", label="control (plain DreamerV3)")
            ax.legend()


def param_effects(study: optuna.Study, path: Path) -> None:
    """Optuna's slice plot: each parameter's value against the return of the complete JEPA trials."""
    with _figure(path):
        optuna_plots.plot_slice(_jepa_only(study), target=_return, target_name=RETURN)


def pareto_front(study: optuna.Study, config: StudyConfig, path: Path) -> None:
    """Optuna's Pareto front of the objectives, return first (the control included: it is a trial like the others)."""
    with _figure(path):
        optuna_plots.plot_pareto_front(study, target_names=list(config.objectives))


def plots(study: optuna.Study, config: StudyConfig) -> dict[str, Callable[[Path], None]]:
    """Each plot of the study's report by file name."""
    figures: dict[str, Callable[[Path], None]] = {
        "learning_curves.png": lambda p: learning_curves(study, config, p),
        "optimization_history.png": lambda p: optimization_history(study, p),
        "param_effects.png": lambda p: param_effects(study, p),
    }
    if config.multi_objective:
        figures["pareto_front.png"] = lambda p: pareto_front(study, config, p)
    return figures
