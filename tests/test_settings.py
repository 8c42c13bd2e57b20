"""The search's settings: defaults and units, the search space, and every bad input as one line that creates
nothing (the real CLI, no training)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models

from jepa_search import study as study_module
from jepa_search.cli import main
from jepa_search.overrides import trial_overrides
from jepa_search.record import records, store_settings, stored_settings
from jepa_search.results import smoothed
from jepa_search.settings import mask_password
from jepa_search.space import DEFAULT_SPACE_FILE, load_space, to_overrides
from jepa_search.study import check_resumable, open_confirm_study, open_study
from jepa_search.validate import UsageError
from tests.helpers import base_args, settings_for

REPO = Path(__file__).resolve().parents[1]


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
    (["--storage-timeout", "0"], "--storage-timeout 0.0 must be positive"),
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


@pytest.fixture
def wandb_online(tmp_path, monkeypatch):
    """W&B online, with no credentials anywhere it looks (its settings are read once per process: read afresh)."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb.teardown()
    yield
    wandb.teardown()


@pytest.mark.parametrize(
    "key,message",
    [(None, "W&B has no API key here; run `wandb login`"), ("short", "WANDB_API_KEY invalid")],
)
def test_wandb_online_without_credentials_is_refused_before_training(
    tmp_path, capsys, monkeypatch, wandb_online, key, message
):
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
    assert main(base_args(tmp_path, "--wandb-project", "jepa")) == 2
    err = capsys.readouterr().err.strip()
    assert f"--wandb-project jepa: {message}" in err and "WANDB_MODE=offline" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key (not checked with the server) or offline mode: accepted
    assert settings_for(tmp_path, "--wandb-project", "jepa").wandb_project == "jepa"


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


def test_a_database_of_other_tables_is_refused_and_an_empty_one_is_a_new_study(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with sqlite3.connect(out / "study.db") as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    assert main(["--env", "dmc", "--full-steps", "2000", "--eval-every", "100", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds tables that are not Optuna's (invoices)" in err and len(err.strip().splitlines()) == 1
    (out / "study.db").unlink()
    sqlite3.connect(out / "study.db").close()  # a new, empty database file
    s = settings_for(tmp_path)
    check_resumable(s)
    assert open_study(s).study_name == s.study_name


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


def _bare_study(tmp_path: Path):
    """A study as another worker's `open_study` leaves it between its two commits: made, settings not yet stored."""
    s = settings_for(tmp_path)
    (tmp_path / "out").mkdir()
    return s, optuna.create_study(study_name=s.study_name, storage=s.storage)


def test_a_study_seen_before_its_creator_stored_the_settings_is_checked_against_them(tmp_path):
    s, study = _bare_study(tmp_path)
    # The creator (here a timer) stores settings of 3 evaluation episodes half a second later: the check waits for
    # them, where it used to call the study "not made by this tool" (4 workers started together on one database)
    creator = threading.Timer(0.5, store_settings, (study, {**s.fingerprint(), "eval_episodes": 3}))
    creator.start()
    with pytest.raises(UsageError, match="eval_episodes: stored 3, now 10"):
        check_resumable(s)
    creator.join()


def test_a_study_left_bare_by_its_creator_is_taken_over_and_one_with_trials_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(study_module, "CREATION_WAIT_S", 0.3)
    s, study = _bare_study(tmp_path)
    check_resumable(s)
    taken = open_study(s)
    assert stored_settings(taken) == s.fingerprint() and [r.control for r in records(taken)] == [True]
    other = optuna.create_study(study_name="someone-else", storage=s.storage)
    other.add_trial(optuna.trial.create_trial(value=1.0))
    with pytest.raises(UsageError, match="exists but was not made by this tool"):
        check_resumable(dataclasses.replace(s, study_name="someone-else"))


def test_a_database_another_worker_is_still_creating_is_waited_for(tmp_path):
    s = settings_for(tmp_path)
    (tmp_path / "out").mkdir()
    engine = sqlalchemy.create_engine(s.storage)
    models.BaseModel.metadata.tables["studies"].create(engine)  # the first of a new database's tables, alone
    # Its creator makes the rest a moment later: the check used to call the database unreadable ("no such table")
    creator = threading.Timer(0.3, RDBStorage, (s.storage,))
    creator.start()
    check_resumable(s)
    creator.join()
    engine.dispose()


def test_confirm_steps_other_than_the_confirmation_s_are_refused(tmp_path, capsys):
    s = settings_for(tmp_path, "--confirm-top-k", "1", "--confirm-steps", "1000")
    (tmp_path / "out").mkdir()
    open_study(s)
    open_confirm_study(s)
    assert main(base_args(tmp_path, "--confirm-top-k", "1", "--confirm-only")) == 2
    assert "use --confirm-steps 1000" in capsys.readouterr().err


def test_fidelity_outside_the_usual_range_warns(tmp_path):
    assert any("outside the usual 0.1-0.2" in w for w in settings_for(tmp_path, "--fidelity-frac", "0.5").warnings)


def test_passwords_in_storage_urls_are_masked(tmp_path):
    s = settings_for(tmp_path)
    s = dataclasses.replace(s, storage="postgresql://search:s3cret@db.example:5432/optuna")
    assert "s3cret" not in json.dumps(s.as_dict()) and "***" in s.as_dict()["storage"]
    assert mask_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.slow
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
