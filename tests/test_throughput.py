"""Throughput: the benchmark on the CPU with a tiny model, the compiled-step setting, and trials at once."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from jepa_dreamer.presets import COMPILE_KEYS
from jepa_search.cli import main
from jepa_search.overrides import trial_overrides
from jepa_search.progress import WORKER_ENV
from jepa_search.settings import STORAGE_ENV
from jepa_search.workers import read_worker_spec, worker_commands, write_worker_spec
from tests.helpers import base_args, settings_for

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_replay_check_of_the_device_run_passes_on_the_cpu(tmp_path, capsys):
    # The GPU's proof of the graph route (bench/replay_check.py), where the CPU runs the same step uncaptured
    sys.path.insert(0, str(REPO / "bench"))
    import replay_check

    assert replay_check.main(["--tiny", "--steps", "3", "--accelerator", "cpu", "--log-root", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 5 and all(line.startswith("PASS") for line in lines), lines


@pytest.mark.slow
def test_benchmark_runs_on_the_cpu_and_prints_ratios_against_sheeprl(tmp_path):
    import subprocess

    out = tmp_path / "throughput.md"
    command = [sys.executable, str(REPO / "bench" / "throughput.py"), "--tiny"]
    command += ["--runs", "sheeprl,jepa,jepa*1x2", "--window", "1", "--warmup", "3", "--out", str(out)]
    subprocess.run(command, check=True, timeout=900, env={**os.environ, "MUJOCO_GL": "egl"})
    runs = json.loads(out.with_suffix(".json").read_text())
    assert runs.pop("numerics") is None  # not asked for
    assert set(runs) == {"sheeprl_k1", "jepa_k1", "jepa_k1x2"}
    for name, rows in runs.items():
        assert len(rows) == (2 if name == "jepa_k1x2" else 1)
        for row in rows:
            assert "problem" not in row, row
            assert row["grad_steps_per_s"] > 0 and row["policy_steps_per_s"] > 0 and row["window_s"] >= 1
            assert 0.2 < row["process_cores"] <= os.cpu_count() + 0.5  # the process and its environment processes
    side_by_side = runs["jepa_k1x2"]
    assert len({r["pid"] for r in side_by_side}) == 1 and len({r["seed"] for r in side_by_side}) == 2
    # Operators of one plain step, counted through the dispatcher: the JEPA loss adds a few batched ones to SheepRL's
    # step (tests/test_jepa.py proves the step without it is SheepRL's); not counted beside another run
    kernels = {name: rows[0]["kernels_per_step"] for name, rows in runs.items()}
    assert 1000 < kernels["sheeprl_k1"] < kernels["jepa_k1"] < kernels["sheeprl_k1"] * 1.1
    assert kernels["jepa_k1x2"] is None
    # Host reads of one step (on the CPU most are checks CUDA leaves to the device): ours drops at least SheepRL's
    # `if actor_grads:` and `if critic_grads:` (jepa_dreamer/behaviour.py)
    syncs = {name: rows[0]["syncs_per_step"] for name, rows in runs.items()}
    assert 0 < syncs["jepa_k1"] <= syncs["sheeprl_k1"] - 2, syncs
    # Our run alone also timed one evaluation; SheepRL's loop has none
    assert runs["sheeprl_k1"][0]["eval_s"] is None and runs["jepa_k1"][0]["eval_s"] > 0
    lines = out.read_text().splitlines()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|") for line in lines if line.startswith("| ")}
    assert rows["sheeprl", "1"][6].strip() == "1.00"  # the baseline's ratio to itself
    alone = runs["jepa_k1"][0]["policy_steps_per_s"]
    total = sum(r["policy_steps_per_s"] for r in side_by_side)
    assert float(rows["jepa", "1x2"][3]) == 2  # K
    assert float(rows["jepa", "1x2"][7]) == pytest.approx(total / alone, abs=0.01)  # × alone
    slowest = min(r["policy_steps_per_s"] for r in side_by_side) / alone
    assert float(rows["jepa", "1x2"][8]) == pytest.approx(slowest, abs=0.01)


def _simulate_gpus(monkeypatch, count: int, gib: int = 80) -> None:
    """`count` visible GPUs of `gib` GiB each, for the settings' checks: CI has no GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=gib << 30))


def test_compiled_step_is_ours_on_a_gpu_off_on_the_cpu_and_each_route_sets_its_own_key(tmp_path, monkeypatch):
    # auto: our compiled steps where trials train on a GPU (the fastest sound route measured there), the plain step
    # on the CPU (no faster there, and no compilation)
    s = settings_for(tmp_path, "--device", "cpu")
    assert s.compile == "off"
    overrides = trial_overrides(s, {}, 0, tmp_path)
    assert "algo.compile.enabled=False" in overrides and "algo.compile_steps=False" in overrides
    _simulate_gpus(monkeypatch, 2)
    assert settings_for(tmp_path).compile == "steps"  # --device auto, two GPUs visible
    assert settings_for(tmp_path, "--device", "cuda", "--compile", "off").compile == "off"
    assert settings_for(tmp_path, "--device", "cpu").compile == "off"
    steps = trial_overrides(settings_for(tmp_path, "--compile", "steps"), {}, 0, tmp_path)
    assert "algo.compile.enabled=False" in steps and "algo.compile_steps=True" in steps
    losses = trial_overrides(settings_for(tmp_path, "--compile", "losses"), {}, 0, tmp_path)
    assert "algo.compile.enabled=True" in losses and "algo.compile_steps=False" in losses
    graph = trial_overrides(settings_for(tmp_path, "--compile", "graph"), {}, 0, tmp_path)
    assert "algo.compile_graph=True" in graph and "algo.compile_steps=False" in graph
    fused = trial_overrides(settings_for(tmp_path, "--compile", "fused"), {}, 0, tmp_path)
    assert "algo.compile_fused=True" in fused and "algo.compile_graph=False" in fused


def test_phase2_command_keeps_the_compiled_route_the_trials_trained_with(tmp_path):
    from jepa_search.overrides import phase2_overrides

    settings = settings_for(tmp_path)
    for route, key in COMPILE_KEYS.items():
        key = f"{key}=True"
        assert key in phase2_overrides(settings, {"jepa_coef": 1.0}, route)
    assert not [o for o in phase2_overrides(settings, {"jepa_coef": 1.0}, "off") if "compile" in o]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--trials-per-device", "0"], "--trials-per-device 0 must be positive"),
        (["--trials-per-device", "four"], "--trials-per-device 'four' must be a whole number or auto"),
        (["--trials-per-process", "0"], "--trials-per-process 0 must be positive"),
        (["--trials-per-device", "3", "--trials-per-process", "2"], "must divide --trials-per-device 3 (the"),
        (
            ["--trials-per-process", "2", "--isolation", "subprocess"],
            "--isolation subprocess each in a process of its own: use --trials-per-device 2 with",
        ),
        (
            ["--trials-per-process", "2", "--objectives", "return,peak_gpu_memory"],
            "trials that share a process share its peak memory",
        ),
        (["--device", "cpu", "--gpus", "0"], "--gpus 0 with --device cpu"),
        (["--gpus", "0"], "--gpus 0: no CUDA GPU is visible"),
        (["--override", "algo.compile.enabled=True"], "set by the search itself; use its own flag"),
        (["--override", "algo.compile_steps=True"], "set by the search itself; use its own flag"),
    ],
)
def test_bad_parallel_flags_are_one_line(tmp_path, capsys, extra, message):
    assert main(base_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_trials_per_device_auto_fills_each_gpu_while_there_are_cores_for_its_trials(tmp_path, monkeypatch):
    assert settings_for(tmp_path).trials_per_device == 1  # no GPU: one trial at a time on the CPU
    side_by_side = settings_for(tmp_path, "--trials-per-process", "2")  # auto: at least one process's trials
    assert (side_by_side.trials_per_device, side_by_side.n_workers) == (2, 1)
    assert "env.sync_env=False" in trial_overrides(side_by_side, {}, 0, tmp_path)  # environments in processes
    for cores, gib, per_gpu in ((64, 80, 4), (16, 80, 2), (4, 80, 1), (64, 12, 3), (64, 2, 1)):
        _simulate_gpus(monkeypatch, 2, gib)
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        s = settings_for(tmp_path)
        assert (s.trials_per_device, s.n_workers) == (per_gpu, 2 * per_gpu), (cores, gib)
    assert settings_for(tmp_path, "--trials-per-device", "3").trials_per_device == 3
    assert settings_for(tmp_path, "--device", "cpu").trials_per_device == 1


def test_workers_are_spread_over_the_gpus_named(tmp_path, monkeypatch):
    s = dataclasses.replace(settings_for(tmp_path), gpus=(0, 1), trials_per_device=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    s.output_dir.mkdir(parents=True)
    monkeypatch.setenv(STORAGE_ENV, s.storage)
    commands = list(worker_commands(s).values())
    assert {env["OMP_NUM_THREADS"] for _, env in commands} == {"2"}  # 8 cores shared by 4 workers
    assert s.n_workers == 4 and len(commands) == 4
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["4", "6", "4", "6"]
    assert [env[WORKER_ENV] for _, env in commands] == ["w0/gpu0", "w1/gpu1", "w2/gpu0", "w3/gpu1"]
    for command, env in commands:  # each worker from the spec: one trial at a time, one visible GPU
        assert command[-2] == "--worker-spec" and env[STORAGE_ENV] == s.storage
        assert read_worker_spec(write_worker_spec(s)) == dataclasses.replace(s, trials_per_device=1, gpus=(0,))
    # 2 GPUs x 4 trials, 2 side by side in each worker: 4 workers of 2 trials
    s = dataclasses.replace(s, trials_per_device=4, trials_per_process=2)
    commands = list(worker_commands(s).values())
    assert s.n_workers == 4 and len(commands) == 4
    assert read_worker_spec(write_worker_spec(s)).trials_per_device == 2


@pytest.mark.slow
def test_launch_count_takes_outermost_operators_and_compiled_kernels(monkeypatch):
    import torch
    import torch._inductor.config as inductor_config
    from torch.profiler import profile

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from launches import count_launches

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ w + 1).view(-1).sum() * 2

    x, w = torch.randn(8, 8), torch.randn(8, 8)
    with profile() as eager:
        f(x, w)
    compiled = torch.compile(f)
    # Compiled kernels are named in the profile only when generated with the flag, not when read from the cache
    with inductor_config.patch({"force_disable_caches": True, "cpp.enable_kernel_profile": True}):
        compiled(x, w)
    with profile() as fused:
        compiled(x, w)
    assert count_launches(eager.events(), cuda=False) == 5  # matmul (its mm inside), add, relu, sum, mul; no view
    assert 2 <= count_launches(fused.events(), cuda=False) < 5  # the mm, then fused pointwise and reduction kernels


def test_flop_count_splits_a_step_by_pass_and_counts_bytes_of_each_operator(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from flops import StepCounter

    w = torch.nn.Parameter(torch.randn(8, 4))
    x = torch.randn(16, 8)
    counter = StepCounter()
    try:
        with counter.mode:
            (x @ w).view(-1).sum().backward()
            torch.optim.SGD([w], lr=0.1).step()
    finally:
        counter.close()
    forward, backward, optimiser = (
        counter.totals["world model + JEPA", part] for part in ("forward", "backward", "optimiser")
    )
    # The matmul's 2·16·8·4 FLOPs forward, the same again for w's gradient (x needs none); the sum and SGD count none
    assert forward[0] == backward[0] == 2 * 16 * 8 * 4 and optimiser[0] == 0
    # Backward is that one matmul: x (16×8), the output's gradient (16×4), w's gradient (8×4), in float32
    assert backward[1:] == [(16 * 8 + 16 * 4 + 8 * 4) * 4, 1]
    assert optimiser[2] >= 1
