"""FLOPs, bytes and operators of one gradient step, the floors they put on a GPU step, and the gradient steps/s
each route should reach on an H100 or H200: a prediction written down before the device run measures it.

    MUJOCO_GL=egl python bench/flops.py           # model S, bf16-mixed, on the CPU (docs/PERFORMANCE.md)
    MUJOCO_GL=egl python bench/flops.py --tiny    # the tests' tiny model

A fresh learner of the search's configuration (JEPA on, batch 16 x 64, the plain step) trains one warm-up step on a
synthetic batch, then one counted step. FLOPs are `torch.utils.flop_counter`'s (matmuls and convolutions, forward and
backward; elementwise operators count none). Bytes are the sizes of every non-view operator's tensor inputs and
outputs: what unfused kernels would move through HBM if nothing stayed in the L2 cache, an upper bound for them
(most of these tensors are small enough to stay there). Operators are the non-view ones, as `bench/throughput.py`
counts them. The step is split by phase (the world model with JEPA, then behaviour) and by pass (forward, backward,
optimiser step); JEPA's share is the difference to the same step with `jepa_coef=0`. The prediction then combines
these with the figures of `Figures`, measured on the H200 or assumed (docs/PERFORMANCE.md says which).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402 (the benchmark's learner and synthetic batch)
from launches import NOT_LAUNCHES  # noqa: E402 (allocations, which move no data)

PHASES = ("world model + JEPA", "behaviour")
PASSES = ("forward", "backward", "optimiser")


@dataclass(frozen=True)
class Card:
    name: str
    bf16_tflops: float  # dense peak, no sparsity
    hbm_tb_s: float


CARDS = (Card("H100 SXM", 989.0, 3.35), Card("H200", 989.0, 4.8))


@dataclass(frozen=True)
class Figures:
    """What the prediction assumes besides the counts (docs/PERFORMANCE.md: measured on the H200, 2026-11-28, or
    assumed)."""

    host_us_per_launch: float = 37.0  # a trial alone, host-bound: training time per gradient step / launches
    plain_kernels: int = 15000  # CUDA launches of the plain step: 16568 counted with argument checks, ~1500 theirs
    # CUDA launches of the `steps` route: the H200's 8312 (the count the 37 us came from), less the share the
    # concatenated recurrent weights cut from its CPU count since (4755 -> 3994 at model S)
    steps_kernels: int = round(8312 * 3994 / 4755)
    shared_us_per_kernel: float = 7.6  # GPU time per kernel at K=8 (time slices included): an upper bound
    graph_us_per_kernel: float = 2.5  # assumed: a small kernel inside a CUDA graph on Hopper, 2-3 us
    matmul_efficiency: float = 0.25  # assumed: the share of peak that matmuls of a 16 x 64 batch reach
    fused_fraction: float = 3719 / 9836  # the fused route's kernels, counted on the CPU at model S (2026-12-06)
    sample_ms: float = 27.5  # replay sampling of one batch on the host (bench/replay_sampling.py, 2 cores)
    env_step_ms: float = 5.0  # assumed: 4 environments stepped in parallel, a frame rendered on the GPU in ~3.5 ms
    grad_steps_per_iteration: int = 2  # replay ratio 0.5 x 4 environments: acting once every 2 gradient steps


class StepCounter:
    """A dispatch mode that adds up FLOPs, bytes and operators per (phase, pass); `phase` is set by the caller."""

    def __init__(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        from torch.utils.flop_counter import flop_registry

        self.phase = PHASES[0]
        self.in_optimiser = False
        self.totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                packet = func.overloadpacket
                if func.is_view or f"aten::{packet.__name__}" in NOT_LAUNCHES:
                    return out
                tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
                flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
                if counter.in_optimiser:
                    part = "optimiser"
                else:
                    part = "backward" if torch._C._current_autograd_node() is not None else "forward"
                row = counter.totals[counter.phase, part]
                row[0] += flops
                row[1] += sum(t.numel() * t.element_size() for t in tensors)
                row[2] += 1
                return out

        self.mode = Mode()
        self._hooks = [
            register_optimizer_step_pre_hook(lambda *_: setattr(self, "in_optimiser", True)),
            register_optimizer_step_post_hook(lambda *_: setattr(self, "in_optimiser", False)),
        ]

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def total(self, index: int) -> float:
        return sum(row[index] for row in self.totals.values())


def count_step(args: argparse.Namespace, extra: tuple[str, ...]) -> tuple[StepCounter, float, int]:
    """(the split counts, FlopCounterMode's total, the player's operators for one action) of a warmed-up step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    learner, batch = throughput.fresh_learner(args, extra, Path("/tmp/flops_runs"))
    learner.train_step({k: v.clone() for k, v in batch.items()}, None, measure_ratio=False)
    counter = StepCounter()
    world_model_step = learner.world_model_step

    def labelled(*a: Any, **kw: Any) -> Any:
        counter.phase = PHASES[0]
        try:
            return world_model_step(*a, **kw)
        finally:
            counter.phase = PHASES[1]

    learner.world_model_step = labelled  # this learner only: the phase of each operator
    counter.phase = PHASES[1]  # the step starts with the target critic's update, a part of behaviour learning
    with FlopCounterMode(display=False) as flop_counter, counter.mode:
        learner.train_step({k: v.clone() for k, v in batch.items()}, None, measure_ratio=False)
    counter.close()
    # Acting: one action for every environment (as the training loop's player does once per iteration)
    player = learner.player
    size = int(learner.cfg.env.screen_size)
    player.init_states()
    acting = StepCounter()
    with torch.no_grad(), acting.mode:
        player.get_actions({"rgb": torch.zeros(1, player.num_envs, 3, size, size, device=learner.fabric.device)})
    acting.close()
    return counter, float(flop_counter.get_total_flops()), int(acting.total(2))


def predict(
    card: Card, flops: float, nbytes: float, ops: int, act_ops: int, f: Figures, sample_hidden: bool
) -> dict[str, float]:
    """Gradient steps/s of a trial alone on `card`, per route. Host-bound routes: the plain step's `ops`, or the
    `steps` route's launches, at the host time each took in the H200's training windows, which sampled serially
    (hiding the sampling saves `sample_ms`). Graph routes: the GPU's kernel time (a launch each, the bytes, the FLOPs
    at `matmul_efficiency`), then the host's work the GPU waits for: the batch sampled, unless hidden, and the
    step's share of acting."""
    host_ms = f.host_us_per_launch / 1e3
    saved = f.sample_ms if sample_hidden else 0.0
    rest_ms = (act_ops * host_ms + f.env_step_ms) / f.grad_steps_per_iteration + f.sample_ms - saved
    work_ms = nbytes / (card.hbm_tb_s * 1e9) + flops / (card.bf16_tflops * 1e9 * f.matmul_efficiency)
    step_ms = {
        "off (plain)": ops * host_ms - saved,
        "steps": f.steps_kernels * host_ms - saved,
        "graph": f.plain_kernels * f.graph_us_per_kernel / 1e3 + work_ms + rest_ms,
        f"graph, kernels at K=8's {f.shared_us_per_kernel} us": f.plain_kernels * f.shared_us_per_kernel / 1e3
        + rest_ms,
        "fused": f.plain_kernels * f.fused_fraction * f.graph_us_per_kernel / 1e3 + work_ms + rest_ms,
    }
    return {route: 1e3 / ms for route, ms in step_ms.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
    args = parser.parse_args(argv)
    args.accelerator = "cpu"
    counter, flops, act_ops = count_step(args, ())
    without_jepa, flops_without, _ = count_step(args, ("algo.jepa_coef=0",))
    nbytes, ops = counter.total(1), int(counter.total(2))
    model = "tiny" if args.tiny else "model S"
    print(
        f"one gradient step ({model}, bf16-mixed, CPU): {flops / 1e9:.1f} GFLOP, {nbytes / 1e9:.2f} GB, {ops} operators"
    )
    print(f"JEPA's share: {(flops - flops_without) / 1e9:.1f} GFLOP, {(nbytes - without_jepa.total(1)) / 1e9:.2f} GB")
    print(f"acting (one player call, an action for every environment): {act_ops} operators")
    print("| phase | pass | GFLOP | GB | operators |\n|---|---|---|---|---|")
    for phase in PHASES:
        for part in PASSES:
            gflop, gb, n = counter.totals[phase, part]
            print(f"| {phase} | {part} | {gflop / 1e9:.1f} | {gb / 1e9:.2f} | {int(n)} |")
    f = Figures()
    print(f"\nassumed: {f}")
    for card in CARDS:
        compute = flops / (card.bf16_tflops * 1e9)
        memory = nbytes / (card.hbm_tb_s * 1e9)
        launches = f.plain_kernels * f.graph_us_per_kernel / 1e3
        print(
            f"{card.name}: floors per step: compute {compute:.2f} ms (at peak), memory {memory:.2f} ms, "
            f"graph launches {launches:.1f} ms ({f.plain_kernels} kernels x {f.graph_us_per_kernel} us)"
        )
    print("\n| route | " + " | ".join(f"{c.name}, sampling {s}" for c in CARDS for s in ("serial", "hidden")) + " |")
    print("|---" * 5 + "|")
    rows = [predict(c, flops, nbytes, ops, act_ops, f, hidden) for c in CARDS for hidden in (False, True)]
    for route in rows[0]:
        print(f"| {route} | " + " | ".join(f"{r[route]:.1f}" for r in rows) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
