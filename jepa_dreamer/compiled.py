"""Our compiled route (`algo.compile_steps`): one step of the posterior unroll and one of the imagination compiled.

These two recurrent steps run 64 and 15 times per gradient step and are behind most of its kernel launches; each is
a small graph compiled once, where SheepRL's `algo.compile` compiles the whole losses with their loops unrolled.
SheepRL's losses call `world_model.rssm.dynamic` and `.imagination`: the learner hands them a world model whose RSSM
is `CompiledSteps`, a module of ours around SheepRL's RSSM, which stays as it is (the player keeps using it eagerly).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from sheeprl.algos.dreamer_v2.agent import WorldModel
from torch import Tensor, nn


def step_scope() -> contextlib.AbstractContextManager[None]:
    """What a gradient step on these graphs runs under: the encoder-gradient ratio backpropagates through them with
    retain_graph=True, which a compiled backward that frees its saved tensors early ("donated buffers") refuses.
    The graphs' forward and backward are compiled lazily, inside a step, so the setting is scoped to the steps."""
    return torch._functorch.config.patch(donated_buffer=False)


class _Method(nn.Module):
    """`module.<name>` as the forward of a module, which `torch.func.functional_call` can call with other weights."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module = module
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, self.name)(*args, **kwargs)


class FlatWeightStep:
    """`module.<method>` compiled, reading the weights of the submodules `parts` from one tensor, their concatenation.

    A step called T times in a gradient step gives each of its weights T gradients, which autograd adds one by one:
    one kernel per weight and call. Here each call gives one gradient, of the concatenation, and autograd splits the
    sum into the weights once. All calls share one concatenation until `forget` (after an optimiser step: a fused
    optimiser changes the weights without bumping their version counters) or until gradients are switched on or off.
    """

    def __init__(self, module: nn.Module, method: str, parts: Sequence[str]) -> None:
        self._call = _Method(module, method)
        named = [(n, p) for n, p in module.named_parameters() if n.split(".")[0] in parts]
        self._weights = [p for _, p in named]
        # Names and shapes only: the compiled code slices the concatenation, it never reads the weights themselves
        self._layout = [(f"module.{n}", tuple(p.shape), p.numel()) for n, p in named]
        self._compiled = torch.compile(self._flat_call)
        self._flat: Tensor | None = None

    def _flat_call(self, flat: Tensor, *args: Any, **kwargs: Any) -> Any:
        weights, offset = {}, 0
        for name, shape, numel in self._layout:
            weights[name] = flat[offset : offset + numel].view(shape)
            offset += numel
        # Fabric's wrappers reach each module by two names; tying them, the call left other tensors in the weights'
        # place when it restored them
        return torch.func.functional_call(self._call, weights, args, kwargs, tie_weights=False)

    def flat(self) -> Tensor:
        """The weights' concatenation, made at the first call since `forget`."""
        if self._flat is None or self._flat.requires_grad != torch.is_grad_enabled():
            self._flat = torch.cat([p.reshape(-1) for p in self._weights])
        return self._flat

    def forget(self) -> None:
        """The weights changed: the next call concatenates them again."""
        self._flat = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._compiled(self.flat(), *args, **kwargs)


class CompiledSteps(nn.Module):
    """SheepRL's RSSM with `dynamic` and `imagination` compiled, their recurrent weights read from one tensor
    (`FlatWeightStep`); every other attribute is the RSSM's own."""

    def __init__(self, rssm: nn.Module) -> None:
        super().__init__()
        self.rssm = rssm
        self._dynamic = FlatWeightStep(rssm, "dynamic", ("recurrent_model", "representation_model"))
        self._imagination = FlatWeightStep(rssm, "imagination", ("recurrent_model", "transition_model"))

    def weights_changed(self) -> None:
        """To be called after every step of the optimiser of the RSSM's weights."""
        self._dynamic.forget()
        self._imagination.forget()

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
