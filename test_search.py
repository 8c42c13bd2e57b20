"""Tests of the search (`search_phase1.py`): settings, space, Optuna set-up, bad inputs, pruning, real dry runs, resume.

Run with `python test_search.py` or under pytest. The real runs train tiny DreamerV3-JEPA models on DMC pixels;
the pruning test uses a scripted stand-in trainer so that which trials are pruned is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from jepa_search.cli import main, run_search  # noqa: E402
from jepa_search.objective import Objective  # noqa: E402
from jepa_search.report import write_report  # noqa: E402
from jepa_search.sampler import SpaceExhausted  # noqa: E402
from jepa_search.settings import mask_password  # noqa: E402
from jepa_search.space import DEFAULT_SPACE_FILE, configuration, is_control, load_space, to_overrides  # noqa: E402
from jepa_search.stats import probability_of_improvement  # noqa: E402
from jepa_search.study import (  # noqa: E402
    check_resumable,
    make_pruner,
    make_sampler,
    open_confirm_study,
    open_study,
)
from jepa_search.trial import HISTORY_COLUMNS, smoothed, trial_overrides  # noqa: E402
from tests.helpers import SMALL, base_args, scripted_trainer, settings_for  # noqa: E402

REPO = Path(__file__).resolve().parent


# --- configuration ----------------------------------------------------------------------------------------------


def test_default_space_is_the_readme_space():
    space = load_space(None)
    assert space.variable == {
        "jepa_coef": (0.3, 1.0, 3.0),
        "jepa_ema": (0.992, 0.996, 0.999),
        "jepa_mask.erase_frac": (0.4, 0.6),
    }
    assert space.fixed == {"jepa_mask.vec_dropout": 0.2, "jepa_proj_dim": 1024, "jepa_hidden": 1024}
    assert space.size() == 18
    assert DEFAULT_SPACE_FILE == REPO / "configs" / "search_space.yaml"


def test_custom_space_file_and_overrides(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("variable:\n  jepa_coef: [0.1, 10]\nfixed:\n  jepa_hidden: 256\n")
    space = load_space(f)
    assert space.variable == {"jepa_coef": (0.1, 10.0)} and space.fixed == {"jepa_hidden": 256}
    assert to_overrides({"jepa_mask.erase_frac": 0.4}) == ["algo.jepa_mask.erase_frac=0.4"]


def test_settings_defaults_units_and_trial_overrides(tmp_path):
    s = settings_for(tmp_path)
    assert (s.fidelity_frac, s.n_trials, s.eval_episodes, s.sampler, s.pruner, s.seed0, s.grace_frac) == (
        0.1,
        20,
        10,
        "random",
        "hyperband",
        0,
        0.25,
    )
    assert s.task == "walker_walk" and s.storage == f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}"
    assert s.trial_steps == 2000 and s.n_evaluations == 4 and s.grace_evaluations == 1
    assert not (tmp_path / "out").exists()  # validation creates nothing
    o = trial_overrides(s, {"jepa_coef": 3.0}, 7, tmp_path / "t")
    for expected in (
        "algo.total_steps=2000",
        "algo.eval.every=500",
        "algo.eval.episodes=10",
        "algo.jepa_coef=3.0",
        "algo.jepa_proj_dim=1024",
        "seed=7",
        "env.wrapper.domain_name=walker",
        "env.wrapper.task_name=walk",
    ):
        assert expected in o


def test_smoothing_is_the_mean_of_the_last_three():
    assert smoothed([1.0]) == 1.0 and smoothed([1.0, 3.0]) == 2.0 and smoothed([1.0, 3.0, 5.0, 7.0]) == 5.0


# --- Optuna set-up -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,cls", [("random", optuna.samplers.RandomSampler), ("tpe", optuna.samplers.TPESampler)])
def test_samplers_are_seeded_from_seed0_and_the_trial_number_and_never_repeat(tmp_path, name, cls):
    s = settings_for(tmp_path, "--sampler", name, "--seed0", "5")
    assert isinstance(make_sampler(s).make_base(0), cls)

    def draw(study: optuna.Study) -> dict:
        trial = study.ask()
        params = {n: trial.suggest_categorical(n, list(c)) for n, c in s.space.variable.items()}
        study.tell(trial, params["jepa_coef"])
        return params

    studies = [optuna.create_study(sampler=make_sampler(s), direction="maximize") for _ in range(2)]
    draws = [[draw(study) for _ in range(s.space.size())] for study in studies]
    assert draws[0] == draws[1]  # the same seed0 replays
    assert len({tuple(d.values()) for d in draws[0]}) == s.space.size()  # every configuration once
    with pytest.raises(SpaceExhausted, match="every configuration of the search space"):
        draw(studies[0])


def test_pruners_follow_the_grace_period():
    hb = make_pruner("hyperband", 3, 12)
    assert isinstance(hb, optuna.pruners.HyperbandPruner) and hb._min_resource == 3 and hb._max_resource == 12
    asha = make_pruner("asha", 3, 12)
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner) and asha._min_resource == 3
    assert isinstance(make_pruner("none", 3, 12), optuna.pruners.NopPruner)


def test_storage_default_sqlite_and_settings_stored_with_the_study(tmp_path):
    s = settings_for(tmp_path)
    (tmp_path / "out").mkdir()
    study = open_study(s)
    assert (tmp_path / "out" / "study.db").exists()
    assert study.user_attrs["settings"] == s.fingerprint()
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    check_resumable(s)  # same settings: fine


# --- bad inputs: one line, exit code 2, nothing created -------------------------------------------------------------

BAD_INPUTS = [
    (["--eval-every", "5000"], "longer than a trial"),
    (["--fidelity-frac", "0"], "must be in (0, 1]"),
    (["--fidelity-frac", "1.5"], "must be in (0, 1]"),
    (["--n-trials", "0"], "--n-trials 0 must be positive"),
    (["--eval-episodes", "-1"], "--eval-episodes -1 must be positive"),
    (["--grace-frac", "0.5"], "--grace-frac 0.5"),
    (["--env", "mujoco"], "--env mujoco is not supported"),
    (["--task", "walker_fly"], "--task walker_fly is not a DMC task"),
    (["--storage", "not a url"], "is not a database URL"),
    (["--storage", "redis://localhost/0"], "use a sqlite:///"),
    (["--override", "algo.per_rank_batch_size"], "must look like KEY=VALUE"),
    (["--override", "algo.total_steps=5"], "set by the search itself"),
    (["--override", "algo.no_such_key=1"], "SheepRL rejects the trial configuration"),
    (["--search-space", "/nonexistent/space.yaml"], "cannot read it"),
    (["--n-trials", "1"], "--n-trials 1 leaves no trial besides the control"),
    (["--objectives", "return,speed"], "unknown objective 'speed'"),
    (["--objectives", "wall_time,return"], "list return first"),
    (["--objectives", "return,return"], "list return first"),
    (["--confirm-top-k", "-1"], "--confirm-top-k -1 must be 0"),
    (["--confirm-top-k", "19"], "exceeds the 18 configurations"),
    (["--confirm-seeds", "3"], "--confirm-seeds needs --confirm-top-k"),
    (["--confirm-steps", "1000"], "--confirm-steps needs --confirm-top-k"),
    (["--confirm-only"], "--confirm-only needs --confirm-top-k"),
    (["--confirm-top-k", "2", "--confirm-seeds", "1"], "a confidence interval needs at least 2 seeds"),
    (["--confirm-top-k", "2", "--confirm-steps", "100"], "--confirm-steps 100 must be between"),
    (["--confirm-top-k", "2", "--confirm-only"], "--confirm-only: there is no study"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_creates_nothing(tmp_path, capsys, extra, message):
    assert main(base_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        ("variable:\n  jepa_lr: [1, 2]\n", "unknown parameter 'jepa_lr'"),
        ("variable:\n  jepa_coef: []\n", "needs a non-empty list"),
        ("variable:\n  jepa_coef: [fast]\n", "must be a number"),
        ("variable:\n  jepa_proj_dim: [1.5]\n", "must be an integer"),
        ("variable: {}\n", "'variable' is empty"),
        ("- a\n- b\n", "expected a mapping"),
        ("variable: [\n", "not valid YAML"),
    ],
)
def test_bad_search_space_files(tmp_path, capsys, content, message):
    f = tmp_path / "space.yaml"
    f.write_text(content)
    assert main(base_args(tmp_path, "--search-space", str(f))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(base_args(tmp_path, "--output-dir", str(tmp_path / "file" / "out"))) == 2
    assert "not writable" in capsys.readouterr().err


def test_corrupted_study_db_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.db").write_bytes(b"this is not sqlite")
    assert main(["--env", "dmc", "--full-steps", "2000", "--eval-every", "100", "--output-dir", str(out)]) == 2
    assert "is not an SQLite database" in capsys.readouterr().err
    assert (out / "study.db").read_bytes() == b"this is not sqlite" and sorted(os.listdir(out)) == ["study.db"]


def test_resume_with_other_settings_names_the_differences(tmp_path, capsys):
    s = settings_for(tmp_path)
    (tmp_path / "out").mkdir()
    open_study(s)
    before = (tmp_path / "out" / "study.db").read_bytes()
    assert main(base_args(tmp_path, "--eval-episodes", "3", "--sampler", "tpe")) == 2
    err = capsys.readouterr().err
    assert "eval_episodes: stored 10, now 3" in err and "sampler: stored 'random', now 'tpe'" in err
    assert (tmp_path / "out" / "study.db").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "out")) == ["study.db"]


def test_confirm_steps_other_than_the_confirmation_s_are_refused(tmp_path, capsys):
    s = settings_for(tmp_path, "--confirm-top-k", "1", "--confirm-steps", "1000")
    (tmp_path / "out").mkdir()
    open_study(s)
    open_confirm_study(s)
    assert main(base_args(tmp_path, "--confirm-top-k", "1", "--confirm-only")) == 2
    assert "use --confirm-steps 1000" in capsys.readouterr().err


def test_fidelity_outside_the_usual_range_warns(tmp_path):
    assert any("outside the usual 0.1-0.2" in w for w in settings_for(tmp_path, "--fidelity-frac", "0.5").warnings)


# --- pruning, with a scripted trainer -------------------------------------------------------------------------------


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_pruning_really_stops_bad_trials(tmp_path, pruner):
    space = tmp_path / "space.yaml"
    space.write_text("variable:\n  jepa_coef: [0.3, 1.0, 3.0]\n  jepa_ema: [0.992, 0.996, 0.999]\n")
    s = settings_for(
        tmp_path,
        "--fidelity-frac",
        "0.4",
        "--eval-every",
        "1000",
        "--n-trials",
        "9",
        "--pruner",
        pruner,
        "--search-space",
        str(space),
        "--no-control",
    )
    assert s.n_evaluations == 8 and s.grace_evaluations == 2
    s.output_dir.mkdir()
    study = open_study(s)
    assert run_search(study, s, Objective(s, print, trainer=scripted_trainer)) == 0
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(trials) == 9 and pruned
    for t in pruned:
        history = pd.read_csv(s.output_dir / f"trial_{t.number}" / "history.csv")
        assert s.grace_evaluations <= len(history) < s.n_evaluations  # stopped early, never before the grace
        assert t.params["jepa_coef"] < 3.0
    best = study.best_trial
    assert best.params["jepa_coef"] == 3.0 and best.value == pytest.approx(300.0 + 7.0)  # mean of evals 6, 7, 8


def test_a_search_covering_the_space_trains_every_configuration_once_and_the_control(tmp_path):
    s = settings_for(tmp_path, "--n-trials", "19")  # the control and the 18 configurations of the default space
    s.output_dir.mkdir()
    study = open_study(s)
    assert run_search(study, s, Objective(s, print, trainer=scripted_trainer)) == 0
    trials = study.get_trials()
    assert len(trials) == 19 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    (control,) = [t for t in trials if is_control(t)]
    assert control.state.name == "COMPLETE" and configuration(control) == {"jepa_coef": 0.0}
    assert len({tuple(t.params.values()) for t in trials if not is_control(t)}) == 18 == s.space.size()
    # A rerun with more trials has nothing left to train
    s = settings_for(tmp_path, "--n-trials", "25")
    assert run_search(open_study(s), s, Objective(s, print, trainer=scripted_trainer)) == 0
    assert len(study.get_trials()) == 19
    table = pd.read_csv(s.output_dir / "results.csv")
    assert table.loc[table["control"], "jepa_coef"].tolist() == [0.0]
    top = json.loads((s.output_dir / "topk.json").read_text())
    assert control.number not in [r["number"] for r in top] and top[0]["params"]["jepa_coef"] == 3.0
    summary = (s.output_dir / "SUMMARY.md").read_text()
    assert f"Trial {control.number}: plain DreamerV3" in summary and "the bar to beat" in summary


def test_several_objectives_make_an_unpruned_multi_objective_study_with_a_pareto_front(tmp_path, capsys):
    objectives = ("--objectives", "return,wall_time,peak_gpu_memory")
    s = settings_for(tmp_path, *objectives, "--n-trials", "6")
    assert s.pruner == "none" and any("does not prune multi-objective" in w for w in s.warnings)
    s.output_dir.mkdir()
    study = open_study(s)
    assert len(study.directions) == 3
    assert run_search(study, s, Objective(s, print, trainer=scripted_trainer)) == 0
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    for t in trials:
        results = json.loads((s.output_dir / f"trial_{t.number}" / "results.json").read_text())
        assert t.values == [results["objective"], results["wall_time_s"], results["peak_memory_mib"]]
        assert results["peak_memory_mib"] > 0  # the process's peak RSS on a CPU
        assert not t.intermediate_values and len(t.user_attrs["smoothed_returns"]) == s.n_evaluations
    write_report(study, s.output_dir)
    summary = (s.output_dir / "SUMMARY.md").read_text()
    assert "## Pareto front" in summary and "Optuna does not prune multi-objective studies" in summary
    for t in study.best_trials:
        assert f"| {t.number} | " in summary.split("## Pareto front")[1]
    assert (s.output_dir / "plots" / "pareto_front.png").stat().st_size > 1000
    assert main(base_args(tmp_path, *objectives, "--n-trials", "6")) == 0  # a resume: nothing left to train
    assert "pruning is off" in capsys.readouterr().err


# --- real runs ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    """A real small dry-run search of 2 trials (the control and one JEPA configuration), shared by the tests below
    (the last one adds a trial)."""
    out = tmp_path_factory.mktemp("dry") / "runs"
    assert main([*SMALL, "--n-trials", "2", "--output-dir", str(out), "--tensorboard", "--wandb-project", "jepa"]) == 0
    return out


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="jepa-phase1-dmc-walker_walk-dry-run", storage=f"sqlite:///{out}/study.db")


def test_real_dry_run_writes_the_trial_files(dry_run):
    trials = _study(dry_run).get_trials()
    assert len(trials) == 2
    for t in trials:
        folder = dry_run / f"trial_{t.number}"
        results = json.loads((folder / "results.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        assert tuple(history.columns) == HISTORY_COLUMNS
        assert list(history["step"]) == [256, 512][: len(history)]
        assert results["state"] == t.state.name and results["seed"] == 3 + t.number
        assert results["params"] == configuration(t) and results["steps"] == history["step"].iloc[-1]
        assert results["frames"] == results["steps"]  # a dry run has no action repeat
        assert results["best_eval_return"] == history["eval_return"].max() > 0
        assert results["versions"]["sheeprl"] == "0.8.4" and results["versions"]["git_commit"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(results["objective"]) == pytest.approx(history["smoothed_return"].max())
        assert "Eval 1 at policy_step=256" in (folder / "training.log").read_text()
        # --tensorboard: the trial's event file has the evaluation returns, and the training metrics once it trained
        # (a dry run trains from step 256 on); the control has no JEPA loss
        trained = results["steps"] > 256
        expected = {"Eval/return_mean"} | ({"Loss/world_model_loss"} if trained else set())
        scalars = tensorboard_scalars(folder)
        assert expected <= scalars and ("Loss/jepa_loss" in scalars) == (trained and not is_control(t))
    assert sum(is_control(t) for t in trials) == 1


def tensorboard_scalars(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(folder.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return set(events.Tags()["scalars"])


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_holds_one_run_per_trial_with_its_evaluation_curve(dry_run):
    from tests.helpers import wandb_records

    for t in _study(dry_run).trials:
        (path,) = (dry_run / f"trial_{t.number}").rglob("offline-run-*/run-*.wandb")
        records = list(wandb_records(path))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.display_name == f"trial_{t.number}" and run.run_group == "jepa-phase1-dmc-walker_walk-dry-run"
        config = {_key(i): json.loads(i.value_json) for i in run.config.update}
        assert config["params"] == configuration(t) and config["settings"]["study_name"] == run.run_group
        curve = [
            {_key(i): json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        history = pd.read_csv(dry_run / f"trial_{t.number}" / "history.csv")
        assert [c["_step"] for c in curve] == list(history["step"])
        assert [c["eval/smoothed_return"] for c in curve] == pytest.approx(list(history["smoothed_return"]))
        summary = {}
        for r in records:
            if r.WhichOneof("record_type") == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        assert summary["state"] == t.state.name


def test_passwords_in_storage_urls_are_masked(tmp_path):
    s = settings_for(tmp_path)
    s = dataclasses.replace(s, storage="postgresql://search:s3cret@db.example:5432/optuna")
    assert "s3cret" not in json.dumps(s.as_dict()) and "***" in s.as_dict()["storage"]
    assert mask_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_study_artifacts_match_the_trials_and_are_rebuilt_by_report_only(dry_run):
    study = _study(dry_run)
    table = pd.read_csv(dry_run / "results.csv")
    assert list(table["number"]) == [t.number for t in study.trials]
    for row in table.itertuples():
        results = json.loads((dry_run / f"trial_{row.number}" / "results.json").read_text())
        assert row.state == results["state"] and row.seed == results["seed"] and row.steps == results["steps"]
        assert row.best_eval_return == pytest.approx(results["best_eval_return"])
        assert row.jepa_coef == results["params"]["jepa_coef"]
    top = json.loads((dry_run / "topk.json").read_text())
    assert 1 <= len(top) <= 6 and top[0]["rank"] == 1
    assert [r["objective"] for r in top] == sorted((r["objective"] for r in top), reverse=True) or top[-1]["pruned"]
    best = yaml.safe_load((dry_run / "best_config.yaml").read_text())
    assert best["algo"]["jepa_coef"] == top[0]["params"]["jepa_coef"] and best["algo"]["total_steps"] == 2560
    summary = (dry_run / "SUMMARY.md").read_text()
    assert "Dry run" in summary and "Too few finished trials" in summary and top[0]["phase2_command"] in summary
    for plot in ("learning_curves", "optimization_history", "param_effects"):
        assert (dry_run / "plots" / f"{plot}.png").stat().st_size > 1000
    before = {f: (dry_run / f).read_text() for f in ("results.csv", "topk.json", "best_config.yaml", "SUMMARY.md")}
    for f in before:
        (dry_run / f).unlink()
    assert main(["--report-only", "--output-dir", str(dry_run)]) == 0
    assert {f: (dry_run / f).read_text() for f in before} == before


def _run_phase2_commands(output_dir: Path, tmp_path: Path) -> list[str]:
    """Both Phase 2 commands of the SUMMARY.md in `output_dir`, run by the `sheeprl` CLI on the tiny model for 128
    steps (with its metrics logged, as a user's run); the commands."""
    from tests.helpers import TINY_RUN

    summary = (output_dir / "SUMMARY.md").read_text()
    commands = [block.split("\n")[1] for block in summary.split("```bash")[1:]]
    assert commands[0].startswith("sheeprl --config-path") and commands[1].startswith("sheeprl exp=dreamer_v3_jepa")
    tiny = [*TINY_RUN, "algo.total_steps=128", "algo.eval.every=128", "algo.eval.episodes=1", "checkpoint.every=0"]
    for i, command in enumerate(commands):
        argv = shlex.split(command)
        argv[0] = str(Path(sys.executable).parent / "sheeprl")
        out = subprocess.run(
            [*argv, *tiny, f"log_root={tmp_path}/p{i}", f"hydra.run.dir={tmp_path}/h{i}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Eval 1 at policy_step=128" in out.stdout
    return commands


def test_phase2_commands_of_the_summary_run(dry_run, tmp_path):
    _run_phase2_commands(dry_run, tmp_path)


def test_phase2_commands_of_a_search_on_our_compiled_route_run_on_it(tmp_path):
    # `--compile auto` picks this route on a GPU; Phase 2 keeps it, and both commands still run (the encoder-gradient
    # ratio, measured at each logging point, backpropagates through the compiled graphs twice)
    out = tmp_path / "compiled"
    argv = [*SMALL, "--n-trials", "1", "--no-control", "--pruner", "none", "--compile", "steps"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    results = json.loads((out / "trial_0" / "results.json").read_text())
    assert results["state"] == "COMPLETE" and "algo.compile_steps=True" in results["overrides"]
    commands = _run_phase2_commands(out, tmp_path)
    assert "algo.compile_steps=True" in commands[1]
    assert yaml.safe_load((out / "best_config.yaml").read_text())["algo"]["compile_steps"] is True


def test_rerun_adds_nothing_and_a_higher_n_trials_adds_the_difference(dry_run):
    argv = [*SMALL, "--n-trials", "2", "--output-dir", str(dry_run), "--tensorboard"]
    assert main(argv) == 0
    assert len(_study(dry_run).get_trials()) == 2
    assert main([*SMALL, "--n-trials", "3", "--output-dir", str(dry_run), "--tensorboard"]) == 0
    assert len(_study(dry_run).get_trials()) == 3 and (dry_run / "trial_2" / "results.json").exists()
    assert len(pd.read_csv(dry_run / "results.csv")) == 3  # the artifacts follow the study


def test_subprocess_isolation_writes_the_same_files(tmp_path):
    out = tmp_path / "iso"
    assert (
        main(
            [
                *SMALL,
                *("--n-trials", "1", "--no-control", "--isolation", "subprocess", "--pruner", "none"),
                *("--output-dir", str(out)),
            ]
        )
        == 0
    )
    results = json.loads((out / "trial_0" / "results.json").read_text())
    assert results["state"] == "COMPLETE" and results["evaluations"] == 2
    assert (out / "trial_0" / "history.csv").exists() and (out / "trial_0" / "trial_spec.json").exists()
    assert "Eval 2 at policy_step=512" in (out / "trial_0" / "training.log").read_text()
    study = optuna.load_study(study_name="jepa-phase1-dmc-walker_walk-dry-run", storage=f"sqlite:///{out}/study.db")
    assert study.trials[0].intermediate_values.keys() == {1, 2}  # reported by the child process


def test_real_confirmation_of_the_best_configuration_and_the_control_on_fresh_seeds(tmp_path):
    out = tmp_path / "confirm"
    # One evaluation per trial and run (256 steps): the final evaluation never prunes
    argv = [
        *SMALL,
        *("--fidelity-frac", "0.1", "--n-trials", "2", "--output-dir", str(out)),
        *("--confirm-top-k", "1", "--confirm-seeds", "2"),
    ]
    assert main(argv) == 0
    study = _study(out)
    (jepa,) = [t for t in study.trials if not is_control(t)]
    runs = pd.read_csv(out / "confirm.csv")  # 2 configurations x 2 seeds
    assert len(runs) == 4 and set(runs["state"]) == {"COMPLETE"}
    assert set(runs["configuration"]) == {"control", f"trial {jepa.number}"}
    assert set(runs["seed"]) == {3 + 1_000_000, 3 + 1_000_001}  # disjoint from the search's seeds (3, 4)
    for run in runs.to_dict("records"):
        folder = out / run["run_dir"]
        results = json.loads((folder / "results.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        assert results["state"] == "COMPLETE" and results["seed"] == run["seed"] and results["steps"] == 256
        assert run["return"] == pytest.approx(results["objective"]) == pytest.approx(history["smoothed_return"].max())
        assert "Eval 1 at policy_step=256" in (folder / "training.log").read_text()
    section = (out / "SUMMARY.md").read_text().split("## Confirmation")[1].split("\n## ")[0]
    returns = {c: sorted(g["return"]) for c, g in runs.groupby("configuration")}
    for config, (low, high) in returns.items():
        # The bootstrap interval of two runs' mean spans them (a resample is both of one, or one of each)
        assert f"| {config} | " in section and f"{(low + high) / 2:.2f} [{low:.2f}, {high:.2f}]" in section
    p = probability_of_improvement(returns[f"trial {jepa.number}"], returns["control"])
    assert f"| {p:.2f} [" in section
    top = json.loads((out / "topk.json").read_text())
    assert top[0]["number"] == jepa.number and top[0]["ranked_by"] == "confirmation"
    assert top[0]["confirmation"]["runs"] == 2
    assert "ranked by the confirmation" in (out / "best_config.yaml").read_text()
    # Only the confirmation, on the existing study: every run is done, nothing is trained again
    assert main([*argv, "--confirm-only"]) == 0
    assert len(pd.read_csv(out / "confirm.csv")) == 4 and len(_study(out).trials) == 2


def _start_search(out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, str(REPO / "search_phase1.py"), *SMALL, "--n-trials", "1", "--output-dir", str(out), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_first_evaluation(out: Path, proc: subprocess.Popen) -> None:
    history = out / "trial_0" / "history.csv"
    for _ in range(600):
        if history.exists() and len(history.read_text().splitlines()) > 1:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    raise TimeoutError("no evaluation within 5 minutes")


def test_sigterm_records_the_trial_and_queues_it_again(tmp_path):
    out = tmp_path / "term"
    proc = _start_search(out, "--no-control")
    _wait_for_first_evaluation(out, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    results = json.loads((out / "trial_0" / "results.json").read_text())
    assert results["state"] == "FAIL" and "signal 15" in results["fail_reason"] and results["evaluations"] >= 1
    study = optuna.load_study(study_name="jepa-phase1-dmc-walker_walk-dry-run", storage=f"sqlite:///{out}/study.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert study.trials[1].params == study.trials[0].params


def _kill_when(out: Path, proc: subprocess.Popen, ready) -> None:
    """SIGKILL the search once `ready(out)` holds (or it ended by itself), then wait out two heartbeats."""
    for _ in range(1200):
        if ready(out) or proc.poll() is not None:
            break
        time.sleep(0.25)
    proc.kill()
    proc.wait()
    time.sleep(2.5)


def _evaluations(out: Path) -> int:
    return sum(len(p.read_text().splitlines()) - 1 for p in out.glob("trial_*/history.csv"))


def test_killed_several_times_the_search_still_finishes_every_trial_exactly_once(tmp_path):
    out = tmp_path / "kills"
    extra = ("--fidelity-frac", "0.4", "--pruner", "none", "--heartbeat-interval", "1", "--n-trials", "2")
    argv = [*SMALL, *extra, "--output-dir", str(out)]
    # After the first checkpoint; while a restarted search sets up; after the restarted search's first evaluation
    _kill_when(out, _start_search(out, *extra), lambda o: any(o.glob("trial_*/run/version_*/checkpoint/*.ckpt")))
    deadline = time.monotonic() + 3
    _kill_when(out, _start_search(out, *extra), lambda o: time.monotonic() > deadline)
    before = _evaluations(out)
    _kill_when(out, _start_search(out, *extra), lambda o: _evaluations(o) > before)
    assert main(argv) == 0

    study = optuna.load_study(study_name="jepa-phase1-dmc-walker_walk-dry-run", storage=f"sqlite:///{out}/study.db")
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2 and not [t for t in trials if t.state.name == "RUNNING"]
    roots = [t.system_attrs.get("retry_history", [t.number])[0] for t in finished]
    assert len(set(roots)) == 2  # no configuration finished twice
    for t in trials:
        results = json.loads((out / f"trial_{t.number}" / "results.json").read_text())
        assert results["state"] == t.state.name and results["params"] == configuration(t)
    resumed = [json.loads((out / f"trial_{t.number}" / "results.json").read_text()) for t in finished]
    resumed = [r for r in resumed if r.get("resumed_from")]
    assert resumed, "no retried trial continued from a checkpoint"
    for r in resumed:
        history = pd.read_csv(out / f"trial_{r['number']}" / "history.csv")
        assert list(history["eval_index"]) == list(range(1, len(history) + 1)) and r["steps"] == 1024
    assert not list(out.glob("trial_*/run/version_*/memmap_buffer"))  # finished trials leave no buffers behind


def test_readme_quick_start_is_the_seed_dry_run_and_runs_twice(tmp_path):
    """The README's quick check (the seed's dry-run command): 4 real trials, files, then a rerun adds nothing."""
    readme = (REPO / "README_HYPERPARAMETER_SEARCH.md").read_text()
    block = readme.split("Quick check")[1].split("```bash")[1].split("```")[0]
    command = shlex.split(block.replace("\\\n", " "))
    assert command[:2] == ["python", "search_phase1.py"] and "--dry-run" in command
    command = [sys.executable, *command[1:]]
    command[command.index("--output-dir") + 1] = str(tmp_path / "test_runs")
    started = time.perf_counter()
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    print(f"seed dry run: {time.perf_counter() - started:.0f}s")
    table = pd.read_csv(tmp_path / "test_runs" / "results.csv")
    assert len(table) == 4 and set(table["state"]) <= {"COMPLETE", "PRUNED"} and (table["steps"] == 2000).all()
    assert (tmp_path / "test_runs" / "SUMMARY.md").exists()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "4/4 finished" in second.stdout
    assert len(pd.read_csv(tmp_path / "test_runs" / "results.csv")) == 4


def test_atari_tiny_search_runs(tmp_path):
    pytest.importorskip("ale_py", reason="--env atari needs ale-py (in requirements_search.txt)")
    out = tmp_path / "atari"
    argv = [
        "--env",
        "atari",
        "--full-steps",
        "2560",
        "--fidelity-frac",
        "0.2",
        "--eval-every",
        "256",
        "--eval-episodes",
        "1",
        "--dry-run",
        "--n-trials",
        "1",
        "--no-control",
        "--pruner",
        "none",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads((out / "trial_0" / "results.json").read_text())
    assert results["state"] == "COMPLETE" and results["steps"] == 512 and results["evaluations"] == 2
    assert "env.id=PongNoFrameskip-v4" in results["overrides"]
    assert "sheeprl exp=dreamer_v3_jepa_atari env=atari env.id=PongNoFrameskip-v4" in (out / "SUMMARY.md").read_text()


def test_cli_entry_point_runs_as_a_script(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "search_phase1.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--fidelity-frac" in out.stdout and "--dry-run" in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            str(REPO / "search_phase1.py"),
            "--env",
            "dmc",
            "--full-steps",
            "-5",
            "--output-dir",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == "search_phase1.py: error: --full-steps -5 must be positive"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
