"""Real tiny DreamerV3-JEPA runs on DMC walker pixels: the `sheeprl` command, the in-process hook, and resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jepa_dreamer.evaluate import EvalResult
from jepa_dreamer.learner import Learner
from jepa_dreamer.presets import output_overrides
from jepa_dreamer.runner import compose_config, run
from tests.helpers import ACTIONS, OBS_SPACE, resolved_cfg


def _scalars(folder: Path) -> set[str]:
    events = EventAccumulator(str(next(folder.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.slow
def test_sheeprl_command_trains_and_evaluates_from_outside_the_repo(tmp_path, tiny_run):
    command = [
        os.path.join(os.path.dirname(sys.executable), "sheeprl"),
        "exp=dreamer_v3_jepa",
        "env=dmc",
        "algo.jepa_coef=1.0",
        "algo.jepa_ema=0.996",
        "algo.jepa_mask.erase_frac=0.6",
        "algo.total_steps=256",
        *tiny_run,
        "algo.eval.every=128",
        "checkpoint.every=128",
        f"hydra.run.dir={tmp_path / 'run' / 'hydra'}",
        *output_overrides(str(tmp_path / "run"), "cli"),
    ]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Eval 1 at policy_step=128" in out.stdout and "Eval 2 at policy_step=256" in out.stdout
    assert {"Eval/return_mean", "Loss/jepa_loss", "JEPA/cosine", "JEPA/target_std"} <= _scalars(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # every output went into one folder
    assert list((tmp_path / "run").rglob("ckpt_256_0.ckpt"))


@pytest.mark.slow
def test_in_process_run_reports_evaluations_to_the_hook_and_stops_early(tmp_path, tiny_run):
    seen: list[EvalResult] = []

    def hook(result: EvalResult) -> bool:
        seen.append(result)
        return len(seen) == 2

    cfg = compose_config(
        [
            *tiny_run,
            "algo.total_steps=512",
            "algo.eval.every=128",
            "checkpoint.every=0",
            *output_overrides(str(tmp_path), "hook"),
        ]
    )
    result = run(cfg, hook)
    assert [e.policy_step for e in seen] == [128, 256]
    assert result.stopped_early and result.policy_steps == 256 < 512
    assert result.evaluations == seen and result.gradient_steps > 0
    for e in seen:
        assert len(e.returns) == 2 and len(e.lengths) == 2 and all(n == 100 for n in e.lengths)  # policy steps
        assert e.min <= e.mean <= e.max and e.std >= 0 and e.mean > 0


@pytest.mark.slow
def test_resume_restores_jepa_state_and_evaluation_history(tmp_path, tiny_run):
    first = run(
        compose_config(
            [
                *tiny_run,
                "algo.total_steps=128",
                "algo.eval.every=128",
                "checkpoint.every=128",
                *output_overrides(str(tmp_path), "first"),
            ]
        )
    )
    ckpt = next(Path(first.log_dir).rglob("ckpt_128_0.ckpt"))
    state = torch.load(ckpt, weights_only=False)
    assert state["jepa"] is not None and any(k.startswith("target_encoder.") for k in state["jepa"])

    # The learner built from the checkpoint holds the checkpoint's online and EMA weights
    learner = Learner(Fabric(accelerator="cpu", devices=1), resolved_cfg(), OBS_SPACE, (ACTIONS,), True, state)
    for name, value in learner.heads.state_dict().items():
        assert torch.equal(value, state["jepa"][name]), name

    resumed = run(
        compose_config(
            [
                *tiny_run,
                "algo.total_steps=256",
                "algo.eval.every=128",
                "checkpoint.every=128",
                f"checkpoint.resume_from={ckpt}",
                *output_overrides(str(tmp_path), "second"),
            ]
        )
    )
    assert [e.policy_step for e in resumed.evaluations] == [128, 256]
    assert resumed.evaluations[0] == first.evaluations[0]
    assert resumed.gradient_steps > first.gradient_steps
