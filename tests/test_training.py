"""A real tiny DreamerV3-JEPA run on DMC walker pixels: the in-process hook stops it, and a run resumes from its
checkpoint. (The `sheeprl` command runs in test_search.py, as a Phase 2 command.)"""

from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric

from jepa_dreamer.checkpoint_files import STAGING, unreadable
from jepa_dreamer.evaluate import EvalResult
from jepa_dreamer.learner import Learner
from jepa_dreamer.presets import output_overrides
from jepa_dreamer.runner import compose_config, run
from jepa_search.lineage import resume_point
from tests.helpers import ACTIONS, OBS_SPACE, resolved_cfg, tensorboard_scalars

# Fewer and shorter gradient steps than the tiny run's: what is under test is stopping and resuming
LIGHT_TRAINING = ("algo.replay_ratio=0.05", "algo.per_rank_sequence_length=16")


@pytest.mark.slow
def test_a_run_stopped_by_its_hook_resumes_from_its_checkpoint_with_its_jepa_state_and_evaluations(tmp_path, tiny_run):
    seen: list[EvalResult] = []

    def hook(result: EvalResult) -> bool:
        seen.append(result)
        return len(seen) == 2

    first = run(
        compose_config(
            [
                *tiny_run,
                "algo.total_steps=512",
                "algo.eval.every=128",
                "algo.eval.episodes=1",
                *LIGHT_TRAINING,
                "checkpoint.every=128",
                *output_overrides(str(tmp_path), "first"),
            ]
        ),
        hook,
    )
    assert [e.policy_step for e in seen] == [128, 256]
    assert first.stopped_early and first.policy_steps == 256 < 512
    assert first.evaluations == seen and first.gradient_steps > 0
    for e in seen:
        assert len(e.returns) == 1 and e.lengths == (100,)  # policy steps
        assert e.min <= e.mean <= e.max and e.std >= 0 and e.mean > 0
    assert {"Eval/return_mean", "Loss/jepa_loss", "JEPA/cosine", "JEPA/target_std"} <= tensorboard_scalars(
        tmp_path / "first"
    )

    ckpt = next(Path(first.log_dir).rglob("ckpt_128_0.ckpt"))
    # Written aside, then moved into place with its replay buffer: nothing is left in the staging folder
    assert (Path(first.log_dir) / "checkpoint_buffers" / "ckpt_128_buffer_rank_0.pt").exists()
    assert not [p for p in (Path(first.log_dir) / STAGING).rglob("*") if p.is_file()]
    assert unreadable(ckpt) is None
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
                "algo.eval.episodes=1",
                *LIGHT_TRAINING,
                "checkpoint.every=128",
                f"checkpoint.resume_from={ckpt}",
                *output_overrides(str(tmp_path), "second"),
            ]
        )
    )
    # The evaluation before the checkpoint is the first run's; the gradient steps count on from the checkpoint's
    # (its replay buffer found where it was moved to)
    assert [e.policy_step for e in resumed.evaluations] == [128, 256]
    assert resumed.evaluations[0] == first.evaluations[0]
    assert resumed.gradient_steps > state["per_rank_gradient_steps"] > 0


def _checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint and its replay-buffer file, laid out as SheepRL's callback writes them."""
    path = folder / "run" / "version_0" / "checkpoint" / f"ckpt_{step}_0.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"iter_num": step, "weights": torch.randn(4096)}, path)
    buffers = path.parents[1] / "checkpoint_buffers"
    buffers.mkdir(exist_ok=True)
    torch.save({"rb": torch.randn(4096)}, buffers / f"ckpt_{step}_buffer_rank_0.pt")
    return path


def _cut_in_half(path: Path) -> None:
    """What a kill during the write of `path` leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_retry_skips_unreadable_checkpoints_for_the_newest_readable_one_or_starts_over(tmp_path):
    first, second = tmp_path / "trial_0", tmp_path / "trial_1"
    old, newer, newest = _checkpoint(first, 500), _checkpoint(second, 500), _checkpoint(second, 1000)
    assert resume_point([first, second]).checkpoint == newest and resume_point([first, second]).note() is None
    _cut_in_half(newest)
    resume = resume_point([first, second])
    assert (
        resume.checkpoint == newer
        and "ckpt_1000_0.ckpt" in resume.note()
        and f"continues from {newer}" in resume.note()
    )
    _cut_in_half(newer.parents[1] / "checkpoint_buffers" / "ckpt_500_buffer_rank_0.pt")  # its buffer torn
    assert resume_point([first, second]).checkpoint == old
    _cut_in_half(old)
    resume = resume_point([first, second])
    assert resume.checkpoint is None and resume.note().endswith("the trial starts over") and len(resume.skipped) == 3


def test_process_settings_are_held_by_runs_side_by_side_and_restored_after_the_last():
    from jepa_dreamer.runner import process_settings

    before = torch.get_num_threads()
    one, two = resolved_cfg("num_threads=1"), resolved_cfg("num_threads=3")
    with process_settings(one):
        with process_settings(one):  # a second run beside the first: the same settings
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # still held by the first
        with pytest.raises(ValueError, match="must share the process settings"), process_settings(two):
            pass
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_environments_render_with_the_shadows_and_anti_aliasing_their_config_gives():
    from sheeprl.utils.env import make_env

    from jepa_dreamer.envs import make_vector_env

    frames = {}
    # The tiny run's (a dry run's): neither; DMC's own: a 2048-pixel shadow map, 4 samples per pixel
    for overrides, quality in [((), (0, 0)), (("env.shadow_size=null", "env.render_samples=null"), (2048, 4))]:
        cfg = resolved_cfg("env.sync_env=True", "env.num_envs=1", *overrides)
        envs = make_vector_env(cfg, [make_env(cfg, 0, 0, None, "eval", vector_env_idx=0)])
        try:
            frames[quality] = envs.reset(seed=[0])[0]["rgb"].astype(float)
            model = envs.envs[0].unwrapped.env.physics.model
            assert (model.vis.quality.shadowsize, model.vis.quality.offsamples) == quality
        finally:
            envs.close()
    plain, dmc = frames.values()
    assert plain.shape == (1, 3, 64, 64) and plain.std() > 0
    assert 0 < abs(plain - dmc).mean() < 10  # the same scene, drawn otherwise
