"""Our sync-free behaviour step (`jepa_dreamer.behaviour`) against SheepRL's `behaviour_learning`: the same
updates bit for bit, and two host synchronisations fewer per gradient step."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v3.dreamer_v3 import behaviour_learning as sheeprl_behaviour_learning
from torch.profiler import ProfilerActivity, profile

from jepa_dreamer.behaviour import behaviour_learning
from jepa_dreamer.learner import Learner
from tests.helpers import (
    ACTIONS,
    CPU_ONLY,
    DATA_DEPENDENT_SHAPE,
    OBS_SPACE,
    assert_identical,
    host_reads,
    resolved_cfg,
    synthetic_batch,
)

# The tiny model without JEPA (the behaviour step never sees it), imagining 5 steps instead of 15: every op of the
# step still runs, a third as many times
FAST = ("algo.jepa_coef=0", "algo.horizon=5")
BehaviourFn = Callable[..., dict[str, torch.Tensor]]


pytestmark = pytest.mark.usefixtures("no_distribution_validation")


def _learner(cfg: Any, precision: str) -> Learner:
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    return Learner(fabric, cfg, OBS_SPACE, (ACTIONS,), is_continuous=True)


def _behaviour_step(learner: Learner, behaviour: BehaviourFn, step: int) -> dict[str, torch.Tensor]:
    """`Learner.train_step`'s world-model and behaviour steps, with `behaviour` for the latter, each from a
    known point of the random stream, then its clearing of the gradients."""
    data = synthetic_batch(step)
    torch.manual_seed(1000 + step)
    posteriors, recurrent_states, _ = learner.world_model_step(data, measure_ratio=False)
    torch.manual_seed(2000 + step)
    out = behaviour(
        learner.fabric,
        learner.cfg,
        learner.world_model,
        learner.actor,
        learner.critic,
        learner.target_critic,
        learner.actor_optimizer,
        learner.critic_optimizer,
        learner.moments,
        posteriors,
        recurrent_states,
        data["terminated"],
        learner.is_continuous,
        learner.actions_dim,
    )
    for opt in (learner.world_optimizer, learner.actor_optimizer, learner.critic_optimizer):
        opt.zero_grad(set_to_none=True)
    return out


def _trained_state(learner: Learner) -> dict[str, Any]:
    """Everything a behaviour step writes: the actor, the critic, their optimisers, the return normaliser (and the
    world model and target critic, which it must leave alone)."""
    return {
        "actor": learner.actor.state_dict(),
        "critic": learner.critic.state_dict(),
        "target_critic": learner.target_critic.state_dict(),
        "world_model": learner.world_model.state_dict(),
        "actor_optimizer": learner.actor_optimizer.state_dict(),
        "critic_optimizer": learner.critic_optimizer.state_dict(),
        "moments": learner.moments.state_dict(),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "precision,overrides",
    [
        ("32-true", ()),
        ("bf16-mixed", ()),
        # REINFORCE only (no graph through the imagination), and a critic whose gradients are not clipped
        ("32-true", ("algo.actor.objective_mix=1", "algo.critic.clip_gradients=0")),
    ],
    ids=["fp32", "bf16-mixed", "fp32-reinforce-unclipped-critic"],
)
def test_sync_free_behaviour_step_updates_exactly_like_sheeprl(precision: str, overrides: tuple[str, ...]) -> None:
    cfg = resolved_cfg(*FAST, *overrides)
    ours, reference = _learner(cfg, precision), _learner(cfg, precision)
    assert_identical(_trained_state(ours), _trained_state(reference), "initial")
    clip_critic = cfg.algo.critic.clip_gradients > 0
    for step in range(3):
        got = _behaviour_step(ours, behaviour_learning, step)
        want = _behaviour_step(reference, sheeprl_behaviour_learning, step)
        expected_keys = {"policy_loss", "value_loss", "actor_grads"} | ({"critic_grads"} if clip_critic else set())
        assert set(got) == set(want) == expected_keys, step
        assert_identical(got, want, f"step {step} metrics")
        assert_identical(_trained_state(ours), _trained_state(reference), f"step {step}")
    # The steps did train: the comparison is not between two untouched copies
    assert ours.actor_optimizer.state_dict()["state"][0]["step"].item() == 3


# The host reads an op can make inside the dispatcher: `Tensor.item` / `bool(tensor)` (`_local_scalar_dense`) and
# `torch.equal`, which returns a Python bool
def _host_reads(learner: Learner, behaviour: BehaviourFn) -> tuple[Counter[str], set[str]]:
    """The host reads of one behaviour step, by the op that made them (the outermost one of `CPU_ONLY`, or
    `aten::is_nonzero`, a tensor's truth value, with the Python function that asked for it), and the ops it ran.

    The profiler records every op, also those that other ops call inside their kernels (e.g. `multinomial`'s
    `_assert_async`), which a `TorchDispatchMode` does not see."""
    data = synthetic_batch(0)
    torch.manual_seed(1)
    posteriors, recurrent_states, _ = learner.world_model_step(data, measure_ratio=False)
    args = (learner.fabric, learner.cfg, learner.world_model, learner.actor, learner.critic, learner.target_critic)
    args += (learner.actor_optimizer, learner.critic_optimizer, learner.moments, posteriors, recurrent_states)
    args += (data["terminated"], learner.is_continuous, learner.actions_dim)
    torch.manual_seed(2)
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        behaviour(*args)
    return host_reads(prof.events()), {event.name for event in prof.events()}


@pytest.mark.slow
def test_sync_free_behaviour_step_drops_sheeprls_two_host_syncs():
    cfg = resolved_cfg(*FAST)
    ours, ours_ops = _host_reads(_learner(cfg, "32-true"), behaviour_learning)
    theirs, _ = _host_reads(_learner(cfg, "32-true"), sheeprl_behaviour_learning)
    # SheepRL's `if actor_grads:` and `if critic_grads:`, and nothing else, are gone
    assert theirs - ours == Counter({"aten::is_nonzero in behaviour_learning": 2}), (theirs, ours)
    assert not ours - theirs, (theirs, ours)
    assert theirs.total() - ours.total() == 2
    # What is left happens on the CPU only: checks that CUDA kernels leave to the device
    assert set(ours) <= CPU_ONLY, ours
    # And none of our ops would synchronise on CUDA by the shape of its output
    assert not ours_ops & DATA_DEPENDENT_SHAPE
