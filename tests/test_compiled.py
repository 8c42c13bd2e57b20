"""The recurrent steps' weights read from one concatenation (`FlatWeightStep`, `jepa_dreamer/compiled.py`), run
eagerly here (Dynamo switched off): the compiled routes' tests (`-m compile`) check the same through the compiler."""

from __future__ import annotations

import torch
import torch._dynamo
from lightning.fabric import Fabric
from torch import Tensor, nn

from jepa_dreamer.compiled import FlatWeightStep


class _Cell(nn.Module):
    """A recurrent cell of two parts, as SheepRL's RSSM has them: Fabric wraps each."""

    def __init__(self, fabric: Fabric) -> None:
        super().__init__()
        self.inner = fabric.setup_module(nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Tanh()))
        self.outer = fabric.setup_module(nn.Linear(6, 6))

    def step(self, h: Tensor, x: Tensor) -> Tensor:
        return self.outer(self.inner(h + x))


def _unrolled(step, h: Tensor, xs: Tensor) -> Tensor:
    outputs = []
    for x in xs:
        h = step(h, x)
        outputs.append(h)
    return torch.stack(outputs)


def test_a_step_on_concatenated_weights_gives_the_weights_their_gradients_and_follows_their_updates():
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1)
    cell = _Cell(fabric)
    weights = dict(cell.named_parameters())
    optimizer = torch.optim.Adam(cell.parameters(), lr=0.1, fused=True)
    flat_step = FlatWeightStep(cell, "step", ("inner", "outer"))
    optimizer.register_step_post_hook(lambda *_: flat_step.forget())
    h, xs = torch.zeros(3, 6), torch.randn(5, 3, 6)
    with torch._dynamo.config.patch(disable=True):
        for _ in range(2):
            expected = _unrolled(cell.step, h, xs)
            expected.square().mean().backward()
            want = {n: p.grad.clone() for n, p in weights.items()}
            optimizer.zero_grad()
            got = _unrolled(flat_step, h, xs)
            torch.testing.assert_close(got, expected)
            got.square().mean().backward()
            # The cell keeps its own weights (a functional call through Fabric's wrappers can replace them)
            assert all(p is weights[n] for n, p in cell.named_parameters())
            for name, p in weights.items():
                torch.testing.assert_close(p.grad, want[name], msg=name)
            # A fused optimiser changes the weights in place, unseen by their version counters: the next calls read
            # the new weights, which the comparison at the next round checks
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            torch.testing.assert_close(_unrolled(flat_step, h, xs), _unrolled(cell.step, h, xs))
