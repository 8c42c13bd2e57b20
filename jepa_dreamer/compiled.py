"""Our compiled route (`algo.compile_steps`): one step of the posterior unroll and one of the imagination compiled.

These two recurrent steps run 64 and 15 times per gradient step and are behind most of its kernel launches; each is
a small graph compiled once, where SheepRL's `algo.compile` compiles the whole losses with their loops unrolled.
SheepRL's losses call `world_model.rssm.dynamic` and `.imagination`: the learner hands them a world model whose RSSM
is `CompiledSteps`, a module of ours around SheepRL's RSSM, which stays as it is (the player keeps using it eagerly).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from sheeprl.algos.dreamer_v2.agent import WorldModel
from torch import nn


def step_scope() -> contextlib.AbstractContextManager[None]:
    """What a gradient step on these graphs runs under: the encoder-gradient ratio backpropagates through them with
    retain_graph=True, which a compiled backward that frees its saved tensors early ("donated buffers") refuses.
    The graphs' forward and backward are compiled lazily, inside a step, so the setting is scoped to the steps."""
    return torch._functorch.config.patch(donated_buffer=False)


class CompiledSteps(nn.Module):
    """SheepRL's RSSM with `dynamic` and `imagination` compiled; every other attribute is the RSSM's own."""

    def __init__(self, rssm: nn.Module) -> None:
        super().__init__()
        self.rssm = rssm
        self._dynamic = torch.compile(rssm.dynamic)
        self._imagination = torch.compile(rssm.imagination)

    def dynamic(self, *args: Any, **kwargs: Any) -> Any:
        return self._dynamic(*args, **kwargs)

    def imagination(self, *args: Any, **kwargs: Any) -> Any:
        return self._imagination(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["rssm"], name)


def with_compiled_steps(world_model: WorldModel) -> WorldModel:
    """A world model of the same parts whose RSSM runs its recurrent steps compiled (the parameters are shared)."""
    return WorldModel(
        world_model.encoder,
        CompiledSteps(world_model.rssm),
        world_model.observation_model,
        world_model.reward_model,
        world_model.continue_model,
    )
