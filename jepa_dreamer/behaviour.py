"""The actor-critic half of a gradient step, without host synchronisation.

SheepRL's `behaviour_learning` decides whether to log the gradient norms with `if actor_grads:` and
`if critic_grads:`, which read a device tensor on the host: two synchronisations per gradient step, and no way
to capture the step as a CUDA graph. `behaviour_learning` here runs the same SheepRL pieces (`imagine`,
`Moments`, `actor_loss`, `critic_loss`, `update`) in the same order, so it computes the same updates from the
same random stream, and decides what to return from the config alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v2.utils import reinforce_weight
from sheeprl.algos.dreamer_v3.agent import WorldModel
from sheeprl.algos.dreamer_v3.dreamer_v3 import actor_loss, critic_loss, imagine
from sheeprl.algos.dreamer_v3.utils import Moments
from sheeprl.utils.compile import compiled
from sheeprl.utils.fabric import autocast_cache_scope, update
from torch import Tensor, nn
from torch.optim import Optimizer


def clips_gradients(max_norm: float | None) -> bool:
    """Whether `update` clips the gradients to `max_norm`, and so returns their norm: a host-side test of the
    config (the same as `update`'s own), never of a tensor."""
    return max_norm is not None and max_norm > 0


def behaviour_learning(
    fabric: Fabric,
    cfg: dict[str, Any],
    world_model: WorldModel,
    actor: nn.Module,
    critic: nn.Module,
    target_critic: nn.Module,
    actor_optimizer: Optimizer,
    critic_optimizer: Optimizer,
    moments: Moments,
    # From the world-model step: the latent states of the batch, where the imagination starts
    posteriors: Tensor,
    recurrent_states: Tensor,
    terminated: Tensor,
    is_continuous: bool,
    actions_dim: Sequence[int],
) -> dict[str, Tensor]:
    """One update of the actor and one of the critic on trajectories imagined from the batch's latent states:
    SheepRL's `behaviour_learning`, with the same arguments, updates and random draws.

    Returns:
        `policy_loss` and `value_loss`, and the norms of the gradients before clipping, `actor_grads` and
        `critic_grads`, whenever the config clips them (`algo.{actor,critic}.clip_gradients` > 0). SheepRL also
        leaves a norm out when it is exactly 0, which it can only know by reading it on the host.
    """
    algo = cfg.algo
    objective_mix = algo.actor.objective_mix
    actor_clip, critic_clip = algo.actor.clip_gradients, algo.critic.clip_gradients
    # Pure REINFORCE (weight 1) backpropagates nothing through the imagination: no graph is built for it
    dynamics_backprop = reinforce_weight(objective_mix, is_continuous) < 1
    with autocast_cache_scope(fabric), torch.set_grad_enabled(dynamics_backprop):
        trajectories, actions, values, lambda_values, discount = compiled(imagine, fabric, cfg)(
            world_model,
            actor,
            critic,
            posteriors,
            recurrent_states,
            terminated,
            horizon=algo.horizon,
            gamma=algo.gamma,
            lmbda=algo.lmbda,
            # The RSSM clips continuous actions only; the discrete ones are one-hot already
            action_clip=float(algo.actor.action_clip) if is_continuous else 0.0,
        )
    with autocast_cache_scope(fabric):
        # The return normaliser changes its own state, so it runs uncompiled, between the compiled pieces
        offset, invscale = moments(lambda_values, fabric)
        policy_loss = compiled(actor_loss, fabric, cfg)(
            actor,
            trajectories,
            actions,
            values,
            lambda_values,
            discount,
            offset,
            invscale,
            objective_mix=objective_mix,
            is_continuous=is_continuous,
            actions_dim=tuple(int(dim) for dim in actions_dim),
            ent_coef=algo.actor.ent_coef,
        )
    # `error_if_nonfinite=True` would check the norm on the host: a NaN reaches the losses, which the learner
    # watches on the device instead
    actor_grads = update(fabric, policy_loss, actor_optimizer, actor_clip, error_if_nonfinite=False)
    # A scope of its own: autocast's cached low-precision weights must not outlive an optimiser step
    with autocast_cache_scope(fabric):
        value_loss = compiled(critic_loss, fabric, cfg)(critic, target_critic, trajectories, lambda_values, discount)
    critic_grads = update(fabric, value_loss, critic_optimizer, critic_clip, error_if_nonfinite=False)

    metrics = {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach()}
    # Whether a norm exists comes from the config, where SheepRL asks the tensor (`if actor_grads:`)
    if clips_gradients(actor_clip):
        metrics["actor_grads"] = actor_grads.detach()
    if clips_gradients(critic_clip):
        metrics["critic_grads"] = critic_grads.detach()
    return metrics
