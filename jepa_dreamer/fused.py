"""The fused route (`algo.compile_fused`): every part of the gradient step compiled, then the whole step captured.

The graph route (`jepa_dreamer/graphed.py`) replays the plain step's thousands of small kernels; here the parts that
SheepRL's losses call are compiled first, so that the captured step holds fewer, fused kernels: the recurrent steps
as in the `steps` route (one step of each loop; the 64- and 15-step loops stay in Python, since compiling them
unrolled took minutes), and the parts that run once per step on the whole batch: the encoder, the RSSM's batched
projections, the decoder, the reward and continue heads, the JEPA loss, the actor and the critics. Each is compiled
once, for one input shape (`dynamic=False`), in inductor's default mode: the capture around the whole step replaces
inductor's own CUDA graphs. The losses' glue between the parts (distributions, the normaliser, the optimisers) stays
eager. The compiled parts are modules of ours around SheepRL's, sharing their parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from sheeprl.algos.dreamer_v2.agent import WorldModel
from torch import nn

from jepa_dreamer.compiled import CompiledSteps, with_compiled_steps
from jepa_dreamer.jepa import jepa_loss
from jepa_dreamer.shared import Shared


def _compile(fn: Callable[..., Any], fullgraph: bool = True) -> Callable[..., Any]:
    return torch.compile(fn, dynamic=False, fullgraph=fullgraph)


# Dynamo's limit of compiled entries per code object, raised while any step of the fused route runs (in any thread)
_RECOMPILE_LIMIT = Shared()
_raised = contextlib.ExitStack()


def fused_scope() -> contextlib.AbstractContextManager[None]:
    """What a gradient step of the fused route runs under: parts of one class (the critics and heads are SheepRL's
    `MLP`s) share one code object, whose compiled entries Dynamo counts together, one per part and input shape, and
    past its limit (8) a part compiled with `fullgraph` fails. The parts compile lazily, inside a step, so the limit is
    raised for the steps, held together by the trials that run side by side in threads."""
    return _RECOMPILE_LIMIT.held(
        lambda: _raised.enter_context(torch._dynamo.config.patch(recompile_limit=64)), _raised.close
    )


class FusedRSSM(CompiledSteps):
    """SheepRL's RSSM with its recurrent steps compiled (`CompiledSteps`) and its batched projections too."""

    def __init__(self, rssm: nn.Module) -> None:
        super().__init__(rssm)
        self._project_observations = _compile(rssm.project_observations)
        self._prior_logits = _compile(rssm.prior_logits)

    def project_observations(self, *args: Any, **kwargs: Any) -> Any:
        return self._project_observations(*args, **kwargs)

    def prior_logits(self, *args: Any, **kwargs: Any) -> Any:
        return self._prior_logits(*args, **kwargs)


class StepParts(NamedTuple):
    """What a gradient step calls: the learner's parts, or views of them with compiled code (same parameters)."""

    world_model: WorldModel
    actor: nn.Module
    critic: nn.Module
    target_critic: nn.Module
    jepa_loss: Callable[..., Any]


def step_parts(
    cfg: dict[str, Any],
    world_model: WorldModel,
    actor: nn.Module,
    critic: nn.Module,
    target_critic: nn.Module,
    jepa_loss_fn: Callable[..., Any],
) -> StepParts:
    """The parts a step of the configured route calls: on the fused route each compiled (the actor returns
    distributions, which are no graph outputs: it compiles with graph breaks around them); on the `steps` route the
    world model with its recurrent steps compiled; else the parts themselves. `jepa_loss_fn`: the JEPA loss as
    SheepRL's `algo.compile` gives it."""
    if not cfg.algo.compile_fused:
        stepped = with_compiled_steps(world_model) if cfg.algo.compile_steps else world_model
        return StepParts(stepped, actor, critic, target_critic, jepa_loss_fn)
    compiled_world_model = WorldModel(
        _compile(world_model.encoder),
        FusedRSSM(world_model.rssm),
        _compile(world_model.observation_model),
        _compile(world_model.reward_model),
        _compile(world_model.continue_model),
    )
    return StepParts(
        compiled_world_model,
        _compile(actor, fullgraph=False),
        _compile(critic),
        _compile(target_critic),
        _compile(jepa_loss, fullgraph=False),
    )
