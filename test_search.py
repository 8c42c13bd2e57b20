"""The search end to end, for real: tiny DreamerV3-JEPA models trained on DMC walker from pixels, the way a user runs
it. Each real path runs once: the README's quick check (in-process trials, W&B offline, TensorBoard), shared by the
tests that only read it, and its Phase 2 command; a trial in a subprocess on the compiled route; a confirmation;
kills and reruns; Atari.

Run with `python test_search.py` or under pytest (`-m "not slow"` leaves these out). The search's logic without
training is in tests/test_scripted_search.py, its settings in tests/test_settings.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from jepa_dreamer.runner import run  # noqa: E402
from jepa_search.cli import main  # noqa: E402
from jepa_search.progress import printer  # noqa: E402
from jepa_search.record import TrialRecord, is_control  # noqa: E402
from jepa_search.results import HISTORY_COLUMNS  # noqa: E402
from jepa_search.search import run_stages  # noqa: E402
from jepa_search.stats import probability_of_improvement  # noqa: E402
from jepa_search.study import open_study  # noqa: E402
from tests.helpers import (  # noqa: E402
    ENVS_IN_PROCESS,
    SMALL,
    markdown_rows,
    scripted_trainer,
    settings_from_argv,
    tensorboard_scalars,
)
from tests.postgres import PostgresServer  # noqa: E402

REPO = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def _readme_quick_check() -> list[str]:
    """The README's quick check command, as a user copies it."""
    readme = (REPO / "README_HYPERPARAMETER_SEARCH.md").read_text()
    block = readme.split("Quick check")[1].split("```bash")[1].split("```")[0]
    return shlex.split(block.replace("\\\n", " "))


# The quick check's budget here: trials of 512 steps with their one evaluation at the end, instead of 2000 (the
# command as the README has it is timed in docs/PERFORMANCE.md)
QUICK_CHECK_BUDGET = {"--full-steps": "5120", "--eval-every": "512"}


def _quick_check_argv(out: Path) -> list[str]:
    """The README's quick check command's arguments, with the tests' budget and output folder."""
    argv = _readme_quick_check()[2:]
    for flag, value in {**QUICK_CHECK_BUDGET, "--output-dir": str(out)}.items():
        argv[argv.index(flag) + 1] = value
    return argv


@pytest.fixture(scope="module")
def seed_search(tmp_path_factory) -> Path:
    """The README's quick check (the seed's dry run: 4 real trials), run as a command as the README says, with the
    tests' budget, two worker processes, and TensorBoard and W&B (offline) on; shared by the tests that only read
    it (copy it before changing it)."""
    command = _readme_quick_check()
    assert command[:2] == ["python", "search_phase1.py"] and "--dry-run" in command
    out = tmp_path_factory.mktemp("seed") / "test_runs"
    command = [sys.executable, command[1], *_quick_check_argv(out), "--tensorboard", "--wandb-project", "jepa"]
    # Two trials at a time in two worker processes (on 2 cores faster than one after the other)
    command += ["--trials-per-device", "2"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"the README's quick check: {time.perf_counter() - started:.0f}s")
    (out / "search.log").write_text(done.stdout + done.stderr)
    return out


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="jepa-phase1-dmc-walker_walk-dry-run", storage=f"sqlite:///{out}/study.db")


def _copy(out: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


def test_readme_quick_check_trains_four_trials_and_writes_every_file(seed_search):
    study = _study(seed_search)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert sum(is_control(t) for t in trials) == 1
    for t in trials:
        folder = seed_search / f"trial_{t.number}"
        results = json.loads((folder / "results.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        assert tuple(history.columns) == HISTORY_COLUMNS
        assert list(history["step"]) == [512] and results["steps"] == 512
        assert results["state"] == t.state.name and results["seed"] == t.number  # --seed0 0
        assert (
            results["params"] == TrialRecord.of(t).params and results["frames"] == 512
        )  # a dry run has no action repeat
        assert results["best_eval_return"] == history["eval_return"].max() > 0
        assert results["versions"]["sheeprl"] == "0.8.4" and results["versions"]["git_commit"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(results["objective"]) == pytest.approx(history["smoothed_return"].max())
        # --tensorboard: the evaluation returns and the training metrics; the control has no JEPA loss
        scalars = tensorboard_scalars(folder)
        assert {"Eval/return_mean", "Loss/world_model_loss", "Time/policy_steps_per_s"} <= scalars
        assert ("Loss/jepa_loss" in scalars) != is_control(t)
        # One run folder: TensorBoard's events beside the run's config
        assert [p.name for p in (folder / "run").iterdir()] == ["version_0"]
        assert (folder / "run" / "version_0" / "config.yaml").exists()
    for name in ("results.csv", "topk.json", "best_config.yaml", "SUMMARY.md"):
        assert (seed_search / name).stat().st_size > 0
    log = (seed_search / "search.log").read_text()
    assert "finished 4/4 (" in log and "w0]" in log and "w1]" in log  # both workers trained
    first, second = sorted(trials, key=lambda t: t.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete  # at the same time
    assert not list(seed_search.rglob(".*.tmp*"))  # both workers rewrote the artifacts through temporary files


def test_training_log_has_every_interval_and_evaluation_and_no_warning(seed_search):
    for t in _study(seed_search).get_trials():
        log = (seed_search / f"trial_{t.number}" / "training.log").read_text()
        intervals = [line for line in log.splitlines() if " gradient steps | " in line]
        # metric.log_every 500 in a dry run, and the last step; training starts at step 256
        assert [int(line.split(" step ")[1].split("/")[0]) for line in intervals] == [500, 512], log
        assert "episodes: return" in intervals[0]  # episodes of 100 steps: none ends between 500 and 512
        for line in intervals:
            assert "policy steps/s" in line and "gradient steps/s" in line
            assert "Loss/world_model_loss=" in line and "Loss/policy_loss=" in line and "Loss/value_loss=" in line
            assert ("JEPA/target_std=" in line and "Loss/jepa_loss=" in line) != is_control(t)
        assert "Eval 1 at policy_step=512: playing 3 greedy episodes" in log
        assert "Eval 1 at policy_step=512: return " in log and "over 3 episodes (" in log
        assert f"trial {t.number} complete" in log or f"trial {t.number} pruned" in log
        assert "WARNING" not in log and "Warning" not in log, log


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_holds_one_run_per_trial_with_its_training_metrics_and_evaluation_curve(seed_search):
    from tests.helpers import wandb_records

    for t in _study(seed_search).trials:
        (path,) = (seed_search / f"trial_{t.number}").rglob("offline-run-*/run-*.wandb")
        records = list(wandb_records(path))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.display_name == f"trial_{t.number}" and run.run_group == "jepa-phase1-dmc-walker_walk-dry-run"
        config = {_key(i): json.loads(i.value_json) for i in run.config.update}
        assert config["params"] == TrialRecord.of(t).params and config["settings"]["study_name"] == run.run_group
        logged = [
            {_key(i): json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        curve = [row for row in logged if "eval/return" in row]
        history = pd.read_csv(seed_search / f"trial_{t.number}" / "history.csv")
        assert [c["_step"] for c in curve] == list(history["step"])
        assert [c["eval/smoothed_return"] for c in curve] == pytest.approx(list(history["smoothed_return"]))
        # The values of training.log's interval lines, at the same policy steps
        training = [row for row in logged if "Time/policy_steps_per_s" in row]
        assert [row["_step"] for row in training] == [500, 512]
        assert all("Loss/world_model_loss" in row for row in training)
        summary = {}
        for r in records:
            if r.WhichOneof("record_type") == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        assert summary["state"] == t.state.name


def test_study_artifacts_match_the_trials_and_are_rebuilt_by_report_only(seed_search, tmp_path):
    out = _copy(seed_search, tmp_path)
    study = _study(out)
    table = pd.read_csv(out / "results.csv")
    assert list(table["number"]) == [t.number for t in study.trials]
    for row in table.itertuples():
        results = json.loads((out / f"trial_{row.number}" / "results.json").read_text())
        assert row.state == results["state"] and row.seed == results["seed"] and row.steps == results["steps"]
        assert row.best_eval_return == pytest.approx(results["best_eval_return"])
        assert row.jepa_coef == results["params"]["jepa_coef"]
    top = json.loads((out / "topk.json").read_text())
    assert 1 <= len(top) <= 6 and [r["rank"] for r in top] == list(range(1, len(top) + 1))
    assert not [r for r in top if r["params"].get("jepa_coef") == 0.0]  # never the control
    # Complete trials first, best first; pruned ones only after them, best first too
    flags = [r["pruned"] for r in top]
    assert flags == sorted(flags)
    for group in ([r for r in top if not r["pruned"]], [r for r in top if r["pruned"]]):
        assert [r["objective"] for r in group] == sorted((r["objective"] for r in group), reverse=True)
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["algo"]["jepa_coef"] == top[0]["params"]["jepa_coef"] and best["algo"]["total_steps"] == 5120
    summary = (out / "SUMMARY.md").read_text()
    assert "Dry run" in summary and "Too few finished trials" in summary and top[0]["phase2_command"] in summary
    ranks = [row[0] for row in markdown_rows(summary.split("## Top configurations")[1].split("## ")[0])]
    assert ranks == [str(r["rank"]) for r in top]
    for plot in ("learning_curves", "optimization_history", "param_effects"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    before = {f: (out / f).read_text() for f in ("results.csv", "topk.json", "best_config.yaml", "SUMMARY.md")}
    for f in before:
        (out / f).unlink()
    assert main(["--report-only", "--output-dir", str(out)]) == 0
    after = {f: (out / f).read_text() for f in before}
    # The copy's folder is another one: the commands that name it differ by it alone
    assert after == {f: text.replace(str(seed_search.resolve()), str(out.resolve())) for f, text in before.items()}


def test_rerun_adds_nothing_and_a_higher_n_trials_adds_the_difference(seed_search, tmp_path):
    out = _copy(seed_search, tmp_path)
    argv = _quick_check_argv(out)
    assert main(argv) == 0  # 4/4 finished: nothing to train
    assert len(_study(out).get_trials()) == 4
    # Five trials asked: exactly one more (the scripted trainer stands in: what is under test is the count)
    argv[argv.index("--n-trials") + 1] = "5"
    settings = settings_from_argv(argv)
    assert run_stages(open_study(settings), settings, print, scripted_trainer) == 0
    assert len(_study(out).get_trials()) == 5 and (out / "trial_4" / "results.json").exists()
    assert len(pd.read_csv(out / "results.csv")) == 5  # the artifacts follow the study


def _phase2_commands(output_dir: Path) -> list[str]:
    """The two Phase 2 commands of the SUMMARY.md in `output_dir`: the best configuration's file, and overrides."""
    summary = (output_dir / "SUMMARY.md").read_text()
    commands = [block.split("\n")[1] for block in summary.split("```bash")[1:]]
    assert commands[0].startswith("sheeprl --config-path") and commands[1].startswith("sheeprl exp=dreamer_v3_jepa")
    return commands


def _run_phase2(command: str, tmp_path: Path) -> Path:
    """A Phase 2 command run by the `sheeprl` CLI from an empty folder, on the tiny model for 128 steps, with a
    checkpoint and its metrics logged as a user's run; the folder of its outputs."""
    from tests.helpers import TINY_RUN

    cwd, out = tmp_path / "cwd", tmp_path / "phase2"
    cwd.mkdir()
    argv = shlex.split(command)
    argv[0] = str(Path(sys.executable).parent / "sheeprl")
    tiny = [*TINY_RUN, "algo.total_steps=128", "algo.eval.every=128", "algo.eval.episodes=1", "checkpoint.every=128"]
    done = subprocess.run(
        [*argv, *tiny, f"log_root={out}", f"hydra.run.dir={out}/hydra"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Eval 1 at policy_step=128" in done.stdout
    assert not list(cwd.iterdir())  # every output went into the run's folder
    assert list(out.rglob("ckpt_128_0.ckpt"))
    return out


def test_phase2_command_of_the_best_configuration_runs_and_logs_its_metrics(seed_search, tmp_path):
    out = _run_phase2(_phase2_commands(seed_search)[0], tmp_path)
    # The best configuration is never the control: the JEPA loss and its collapse signal are logged
    assert {"Eval/return_mean", "Loss/jepa_loss", "JEPA/cosine", "JEPA/target_std"} <= tensorboard_scalars(out)


def test_a_trial_in_a_subprocess_on_our_compiled_route_and_its_phase2_command_keeps_it(tmp_path):
    # `--compile auto` picks this route on a GPU; Phase 2 keeps it. The trial runs in a child process, which reports
    # to the study itself; the encoder-gradient ratio, measured at each logging point, backpropagates through the
    # compiled graphs twice
    out = tmp_path / "compiled"
    argv = [*SMALL, "--fidelity-frac", "0.1", "--eval-every", "128", "--n-trials", "1", "--no-control"]
    argv += ["--pruner", "none", "--compile", "steps", "--isolation", "subprocess", "--output-dir", str(out)]
    argv += ENVS_IN_PROCESS
    assert main(argv) == 0
    folder = out / "trial_0"
    results = json.loads((folder / "results.json").read_text())
    assert results["state"] == "COMPLETE" and results["evaluations"] == 2
    assert "algo.compile_steps=True" in results["overrides"]
    assert (folder / "history.csv").exists() and (folder / "trial_spec.json").exists()
    log = (folder / "training.log").read_text()
    assert "Eval 2 at policy_step=256" in log and "WARNING" not in log, log
    assert _study(out).trials[0].intermediate_values.keys() == {1, 2}  # reported by the child process
    command = _phase2_commands(out)[1]
    assert "algo.compile_steps=True" in command
    assert yaml.safe_load((out / "best_config.yaml").read_text())["algo"]["compile_steps"] is True
    # SheepRL composes it (`--cfg job` prints the job's config and stops); the route itself trained the trial
    argv = [str(Path(sys.executable).parent / "sheeprl"), *shlex.split(command)[1:], "--cfg", "job"]
    job = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "compile_steps: true" in job.stdout, job.stdout[-3000:]


def test_real_confirmation_two_at_a_time_after_a_search_whose_failing_trial_failed_alone(tmp_path):
    # Two runs at a time, side by side in one process (two slots), evaluated every 128 steps: the search (the control
    # and one configuration, 256 steps each), then the confirmation (128 steps each). The configuration's first try
    # fails after its first evaluation while the control trains on in the other slot; its retry finishes it. In
    # bf16-mixed, a GPU trial's precision, where Lightning checks every backward pass by one process-wide flag
    out = tmp_path / "confirm"
    argv = [
        *SMALL,
        *("--fidelity-frac", "0.1", "--eval-every", "128", "--eval-episodes", "1", "--n-trials", "2"),
        *("--confirm-top-k", "1", "--confirm-seeds", "2", "--confirm-steps", "128"),
        *("--trials-per-device", "2", "--trials-per-process", "2", "--output-dir", str(out)),
        *("--override", "fabric.precision=bf16-mixed"),
    ]
    settings = settings_from_argv(argv)
    out.mkdir()

    failures = []

    def first_try_fails(cfg, hook, on_log=None, cancel=None):
        if cfg.algo.jepa_coef == 0 or failures:
            return run(cfg, hook, on_log, cancel)

        def then_fail(evaluation):
            hook(evaluation)
            failures.append(evaluation)
            raise RuntimeError("diverged after its first evaluation")

        return run(cfg, then_fail, on_log, cancel)

    assert run_stages(open_study(settings), settings, printer(), first_try_fails) == 0
    study = _study(out)
    control, failed, jepa = study.trials
    assert (control.state.name, failed.state.name, jepa.state.name) == ("COMPLETE", "FAIL", "COMPLETE")
    assert is_control(control) and jepa.system_attrs["failed_trial"] == failed.number and jepa.params == failed.params
    assert failed.datetime_start < control.datetime_complete  # side by side
    assert failed.user_attrs["fail_reason"] == "RuntimeError: diverged after its first evaluation"
    for t in study.trials:  # each training.log has its own trial's lines only
        log = (out / f"trial_{t.number}" / "training.log").read_text()
        assert f"trial {t.number}: " in log and not any(f"trial {n}: " in log for n in range(3) if n != t.number)
    runs = pd.read_csv(out / "confirm.csv")  # 2 configurations x 2 seeds
    assert len(runs) == 4 and set(runs["state"]) == {"COMPLETE"}
    assert set(runs["configuration"]) == {"control", f"trial {jepa.number}"}
    assert set(runs["seed"]) == {3 + 2_000_000, 3 + 2_000_001}  # past the search's training and evaluation seeds
    for run_ in runs.to_dict("records"):
        folder = out / run_["run_dir"]
        results = json.loads((folder / "results.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        assert results["state"] == "COMPLETE" and results["seed"] == run_["seed"] and results["steps"] == 128
        assert run_["return"] == pytest.approx(results["objective"]) == pytest.approx(history["smoothed_return"].max())
        assert "Eval 1 at policy_step=128" in (folder / "training.log").read_text()
    section = (out / "SUMMARY.md").read_text().split("## Confirmation")[1].split("\n## ")[0]
    returns = {c: sorted(g["return"]) for c, g in runs.groupby("configuration")}
    table = {row[0]: row for row in markdown_rows(section)}
    for config, (low, high) in returns.items():
        # The bootstrap interval of two runs' mean spans them (a resample is both of one, or one of each)
        assert table[config][2] == f"{(low + high) / 2:.2f} [{low:.2f}, {high:.2f}]"
    p = probability_of_improvement(returns[f"trial {jepa.number}"], returns["control"])
    assert table[f"trial {jepa.number}"][6].startswith(f"{p:.2f} [")
    top = json.loads((out / "topk.json").read_text())
    assert top[0]["number"] == jepa.number and top[0]["ranked_by"] == "confirmation"
    assert top[0]["confirmation"]["runs"] == 2
    assert "ranked by the confirmation" in (out / "best_config.yaml").read_text()
    # Only the confirmation, on the existing study: every run is done, nothing is trained again
    assert main([*argv, "--confirm-only"]) == 0
    assert len(pd.read_csv(out / "confirm.csv")) == 4 and len(_study(out).trials) == 3


def _killed_when(out: Path, ready, log: Path) -> dict[str, int]:
    """Start the search (its output into `log`), SIGKILL it once `ready(out, log)` holds (or it ended by itself), and
    return the checkpoint step (0: none yet) of every trial that was running then. Through the `jepa-search` console
    script, without MUJOCO_GL: it renders headless as `python search_phase1.py` does."""
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    with log.open("a") as f:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "jepa-search"), *KILL_ARGV, "--output-dir", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 600
        while not ready(out, log) and proc.poll() is None:
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.05)
        running = {}
        for folder in out.glob("trial_*"):
            if not (folder / "results.json").exists():
                steps = [int(p.stem.split("_")[1]) for p in folder.glob("run/version_*/checkpoint/ckpt_*_0.ckpt")]
                running[folder.name] = max(steps, default=0)
    finally:
        proc.kill()
        proc.wait()
    return running


def _log_lines(out: Path) -> list[str]:
    return [line for p in sorted(out.glob("trial_*/training.log")) for line in p.read_text().splitlines()]


# 512-step trials of the tiny model, 4 evaluations of one episode, a checkpoint at each; the default heartbeat
# interval (60 s), so that only recognising the dead worker at once can finish the study without waiting out two
# heartbeats; as many retries as kills, so that no configuration is given up (the default gives up after 2)
KILL_ARGV = [*SMALL, "--eval-every", "128", "--eval-episodes", "1", "--pruner", "none", "--n-trials", "2"]
KILL_ARGV += ["--max-retries", "5", *ENVS_IN_PROCESS]
KILL_MOMENTS = {
    "start-up": lambda out, log: log.exists() and "study jepa-phase1" in log.read_text(),
    "training": lambda out, log: any(out.glob("trial_*/run/version_*/checkpoint/*.ckpt")),
    "evaluation": lambda out, log: (evals := [x for x in _log_lines(out) if " Eval " in x]) and "playing" in evals[-1],
    "report": lambda out, log: log.exists() and " complete values " in log.read_text().split("study jepa")[-1],
    "training again": lambda out, log: log.exists() and " started: " in log.read_text().split("study jepa")[-1],
}


def test_killed_at_any_moment_a_rerun_at_once_finishes_every_trial_exactly_once(tmp_path):
    out, log = tmp_path / "kills", tmp_path / "search.log"
    checkpointed: dict[str, int] = {}  # trial folder -> the checkpoint step it had when killed
    cut: Path | None = None  # a checkpoint cut in half: what a kill during its write in place would leave
    for moment, ready in KILL_MOMENTS.items():
        for folder, step in _killed_when(out, ready, log).items():
            if step:
                checkpointed[folder] = step
                if cut is None:
                    cut = next(out.glob(f"{folder}/run/version_*/checkpoint/ckpt_{checkpointed.pop(folder)}_0.ckpt"))
                    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
        print(f"killed at {moment}: {len(list(out.glob('trial_*')))} trial folders")
    started = time.monotonic()
    assert main([*KILL_ARGV, "--output-dir", str(out)]) == 0
    # No rerun waited out the heartbeats of a dead worker (2 x 60 s)
    assert time.monotonic() - started < 110 and "waiting for" not in log.read_text()

    study = _study(out)
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2 and not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    roots = [t.system_attrs.get("retry_history", [t.number])[0] for t in finished]
    assert len(set(roots)) == 2  # no configuration finished twice
    results = {t.number: json.loads((out / f"trial_{t.number}" / "results.json").read_text()) for t in trials}
    for t in trials:
        assert results[t.number]["state"] == t.state.name and results[t.number]["params"] == TrialRecord.of(t).params
    # Every try killed after a checkpoint was continued from it (or from a later one) by its retry
    assert cut is not None, "no kill came after a checkpoint"
    for t in trials:
        step = checkpointed.get(f"trial_{t.system_attrs.get('failed_trial')}")
        if step:
            resumed = results[t.number]["resumed_from"]
            assert resumed and int(Path(resumed).stem.split("_")[1]) >= step, (t.number, resumed)
    for t in finished:
        history = pd.read_csv(out / f"trial_{t.number}" / "history.csv")
        assert list(history["eval_index"]) == [1, 2, 3, 4] and results[t.number]["steps"] == 512
    # The retry of the try whose checkpoint was cut fell back to an older one or started over, saying so, and its
    # configuration finished all the same
    cut_try = int(cut.parents[3].name.split("_")[1])
    retries = [t.number for t in trials if cut_try in t.system_attrs.get("retry_history", [])]
    noted = [n for n in retries if f"{cut}: BadZipFile" in (results[n]["resume_note"] or "")]
    assert noted and all(results[n]["resumed_from"] != str(cut) for n in retries), retries
    assert "unreadable checkpoint(s) skipped" in (out / f"trial_{noted[0]}" / "training.log").read_text()
    assert results[cut_try]["params"] in [results[t.number]["params"] for t in finished]
    # Every configuration finished, and with it every try of it left its buffer and checkpoints
    assert not list(out.glob("trial_*/run/version_*/memmap_buffer"))
    assert not list(out.glob("trial_*/run/version_*/checkpoint"))
    assert (out / "SUMMARY.md").exists() and len(pd.read_csv(out / "results.csv")) == len(trials)


def _search_until(argv: list[str], log: Path, moments: list, timeout: float = 600) -> int:
    """Run the search command (output into `log`); at each of `moments` (a check of the log, then an action) in
    turn, act; the exit code."""
    with log.open("a") as f:
        proc = subprocess.Popen([sys.executable, "search_phase1.py", *argv], cwd=REPO, stdout=f, stderr=f, text=True)
    try:
        deadline = time.monotonic() + timeout
        for ready, act in moments:
            while not ready(log.read_text()) and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            act()
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()


def test_a_real_search_on_a_new_postgresql_server_rides_out_two_outages_and_ends_cleanly_after_a_longer_one(tmp_path):
    out, log = tmp_path / "pg", tmp_path / "search.log"
    # Two trials of 256 steps with an evaluation (a report) and a checkpoint every 128, heartbeats every second
    argv = ["--env", "dmc", "--full-steps", "1280", "--fidelity-frac", "0.2", "--eval-every", "128", "--dry-run"]
    argv += ["--eval-episodes", "1", "--pruner", "none", "--no-control", "--n-trials", "2", "--seed0", "3"]
    argv += ["--heartbeat-interval", "1", "--storage-timeout", "8", "--output-dir", str(out), *ENVS_IN_PROCESS]
    with closing(PostgresServer()) as server:
        argv += ["--storage", server.url]  # a new server (no table yet), through the command line

        def outage() -> None:
            server.stop()
            time.sleep(2)
            server.start()

        # Down for a few seconds twice while trial 0 trains, then for good while trial 1 trains
        moments = [
            (lambda text: "trial 0 started" in text, outage),
            (lambda text: "eval 1/2" in text, outage),
            (lambda text: "eval 1/2" in text.partition("trial 1 started")[2], server.stop),
        ]
        assert _search_until(argv, log, moments) == 75
        text = log.read_text()
        assert text.count("storage: lost the connection") >= 3 and "went through after" in text, text
        errors = [line for line in text.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and "the storage did not answer for " in errors[0], errors
        assert " s (--storage-timeout 8; " in errors[0] and "rerun the same command" in errors[0], errors
        assert "Traceback" not in text, text
        # Back up: a rerun finishes trial 1 from its checkpoint
        server.start()
        assert main(argv) == 0
        trials = optuna.load_study(study_name="jepa-phase1-dmc-walker_walk-dry-run", storage=server.url).trials
        # Nothing of trial 0 was lost to the outages, nor was it retried
        assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
        assert sorted(trials[0].intermediate_values) == [1, 2]
        assert len(pd.read_csv(out / "trial_0" / "history.csv")) == 2
        assert trials[2].user_attrs["resumed_from"] and sorted(trials[2].intermediate_values) == [1, 2]


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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
