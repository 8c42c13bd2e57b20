"""The fused route (`algo.compile_fused`, `jepa_dreamer/fused.py`) on the CPU, where it runs its compiled parts
without the graph captured around them on a GPU: the plain step's updates within fp32's rounding, really compiled,
and fresh noise at every call."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric import Fabric

from jepa_dreamer.learner import Learner
from tests.helpers import ACTIONS, OBS_SPACE, resolved_cfg, synthetic_batch

# The tiny model with JEPA, imagining 5 steps instead of 15, as the graph route's tests
FAST = ("algo.horizon=5",)
STEPS = 3


# As in the trials (`distribution.validate_args: False`), which a captured step requires
pytestmark = pytest.mark.usefixtures("no_distribution_validation")


def _learner(fused: bool) -> Learner:
    torch.manual_seed(0)
    cfg = resolved_cfg(*FAST, f"algo.compile_fused={fused}")
    fabric = Fabric(accelerator="cpu", devices=1, precision=cfg.fabric.precision)
    return Learner(fabric, cfg, OBS_SPACE, (ACTIONS,), is_continuous=True)


def _trained(learner: Learner) -> dict[str, torch.Tensor]:
    """What the steps change: the weights, the optimisers' moments and step counts, the return normaliser."""
    tensors = {}
    for part in ("world_model", "actor", "critic", "target_critic", "moments", "heads"):
        module = getattr(learner, part)
        tensors |= {f"{part}.{n}": t for n, t in [*module.named_parameters(), *module.named_buffers()]}
    for key in ("world_optimizer", "actor_optimizer", "critic_optimizer"):
        for i, state in enumerate(getattr(learner, key).state.values()):
            tensors |= {f"{key}.{i}.{n}": t for n, t in state.items()}
    return tensors


@pytest.mark.slow
@pytest.mark.compile  # 2-4.5 minutes cold on 2 cores (13 s from inductor's cache): outside the suite's budget
def test_fused_route_trains_like_the_plain_step_and_draws_fresh_noise():
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    learners = {fused: _learner(fused) for fused in (False, True)}
    # `fallback_random`: the compiled random operators draw what the eager ones draw from the same stream
    with inductor_config.patch(fallback_random=True):
        for step in range(STEPS):
            for learner in learners.values():
                torch.manual_seed(1000 + step)
                learner.train_step(synthetic_batch(step), None, measure_ratio=False)
    # Compiled: the recurrent steps, the batched parts and the losses, each its own graph (and some graph breaks)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 10
    plain, fused = (_trained(learners[f]) for f in (False, True))
    assert plain.keys() == fused.keys()
    # Fused kernels round differently from eager ones: fp32's rounding, carried through 3 Adam steps (which turn a
    # gradient of about 0 into a step of about ±lr) and the normaliser's quantiles. Measured: at most 1e-4 of a
    # tensor's norm (the normaliser's low quantile), 1e-5 elsewhere
    for name, want in plain.items():
        assert (fused[name] - want).float().norm() <= 1e-3 * want.float().norm(), name
    assert learners[True].actor_optimizer.state_dict()["state"][0]["step"].item() == STEPS
    assert learners[True].moments.low.item() != 0
    # Two calls without a reseed draw different noise: the JEPA masks and the posterior samples
    parts, heads = learners[True].parts, learners[True].heads
    obs = {"rgb": torch.rand(4, 2, 3, 64, 64) - 0.5}
    states = torch.zeros(4, 2, learners[True].cfg.algo.world_model.recurrent_model.recurrent_state_size)
    masked = [
        parts.jepa_loss(
            parts.world_model.encoder, heads, obs, states, cnn_keys=("rgb",), mlp_keys=(), erase_frac=0.6, vec_dropout=0
        )[0]
        for _ in range(2)
    ]
    assert masked[0].item() != masked[1].item()
