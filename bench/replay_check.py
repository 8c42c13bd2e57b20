"""Does a replayed step train what the plain step trains? The graph route's proof of itself, for the device run.

    MUJOCO_GL=egl python bench/replay_check.py                      # model S, bf16-mixed, on the GPU if there is one
    MUJOCO_GL=egl python bench/replay_check.py --tiny --steps 5     # the tests' tiny model (fp32), on a CPU

For each route, a fresh learner with the plain one's weights and random stream trains `--steps` steps on one batch
without reseeding (on a GPU the graph route warms up, captures and then replays), and is compared with the plain
step's: its weights, optimiser states and return normaliser must lie within the distance that bf16's own rounding
puts between the plain step in fp32 and in bf16, and at least `FP32_ROUNDING` (fused kernels round differently from
eager ones in fp32 too: 2.6e-6 for the tiny model's fused route on a CPU), and every optimiser must have counted
`--steps` steps. Then, with every learning rate 0 (the weights stay), the route's last two steps on the same batch
must draw different noise: their world-model losses differ, where the plain step reseeded before each gives equal
ones (the control: that loss moves with the noise alone). One line per check; exit status 1 when one fails.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402 (the benchmark's learners and synthetic batch)

ZERO_LR = tuple(f"algo.{part}.optimizer.lr=0" for part in ("world_model", "actor", "critic"))
NOISY_LOSS = "Loss/world_model_loss"
# The least distance a route may keep from the plain step, where both train in fp32 (the tests' tiny model)
FP32_ROUNDING = 1e-5


class _Losses:
    """A metric sink that keeps the step's losses as floats."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def update(self, name: str, value: Any) -> None:
        self.values[name] = float(value)


def _train(args: argparse.Namespace, overrides: tuple[str, ...], steps: int, reseed: bool = False) -> tuple[Any, list]:
    """A fresh learner of the benchmark's seed after `steps` steps on its one batch, and each step's losses."""
    learner, batch = throughput.fresh_learner(args, overrides, Path(args.log_root))
    losses = []
    for _ in range(steps):
        if reseed:
            learner.fabric.seed_everything(100)
        sink = _Losses()
        learner.train_step({k: v.clone() for k, v in batch.items()}, sink, measure_ratio=False)
        losses.append(sink.values)
    return learner, losses


def _distance(a: Any, b: Any) -> float:
    """The relative distance between two learners' states (weights, optimiser and normaliser states)."""
    import torch

    sa, sb = dict(a.named_state()), dict(b.named_state())
    if sa.keys() != sb.keys():
        raise ValueError(f"the learners' states differ in their tensors: {sorted(sa.keys() ^ sb.keys())[:5]}")
    with torch.no_grad():
        floats = [k for k, t in sb.items() if t.is_floating_point()]
        diff = torch.stack([(sa[k].double() - sb[k].double()).norm() for k in floats]).norm()
        return float(diff / torch.stack([sb[k].double().norm() for k in floats]).norm())


def _step_counts(learner: Any) -> set[int]:
    return {
        int(state["step"])
        for optimizer in (learner.world_optimizer, learner.actor_optimizer, learner.critic_optimizer)
        for state in optimizer.state.values()
    }


def check(args: argparse.Namespace) -> Iterator[tuple[str, bool, str]]:
    """Every check of every route as it is made (a route whose compilation runs out of time leaves the earlier
    routes' answers): (what, passed, the numbers)."""
    plain, _ = _train(args, throughput.MODE_OVERRIDES["plain"], args.steps)
    fp32, _ = _train(args, throughput.MODE_OVERRIDES[throughput.FP32_REFERENCE], args.steps)
    scale = _distance(fp32, plain)
    _, control = _train(args, ZERO_LR, 2, reseed=True)
    yield (
        "control: reseeded steps draw the same noise",
        control[0][NOISY_LOSS] == control[1][NOISY_LOSS],
        f"{NOISY_LOSS} {control[0][NOISY_LOSS]:.6g} and {control[1][NOISY_LOSS]:.6g}",
    )
    for route in args.routes:
        try:
            yield from _check_route(args, route, plain, scale)
        except Exception as e:  # a capture that fails is this route's answer; the next route is still checked
            traceback.print_exc()
            yield (f"{route}: trains {args.steps} steps", False, f"{type(e).__name__}: {e}")


def _check_route(args: argparse.Namespace, route: str, plain: Any, scale: float) -> list[tuple[str, bool, str]]:
    learner, _ = _train(args, throughput.MODE_OVERRIDES[route], args.steps)
    distance = _distance(learner, plain)
    counts = _step_counts(learner)
    low, high = (float(t) for t in (learner.moments.low, learner.moments.high))
    _, losses = _train(args, (*throughput.MODE_OVERRIDES[route], *ZERO_LR), args.steps)
    last, before = losses[-1][NOISY_LOSS], losses[-2][NOISY_LOSS]
    return [
        (
            f"{route}: state after {args.steps} steps within bf16's rounding of the plain step's",
            distance <= max(scale, FP32_ROUNDING),
            f"distance {distance:.3g}, bf16 against fp32 {scale:.3g} (at least {FP32_ROUNDING:g})",
        ),
        (f"{route}: every optimiser counted {args.steps} steps", counts == {args.steps}, f"{counts}"),
        (f"{route}: the return normaliser moved", (low, high) != (0.0, 0.0), f"{low:.4g}, {high:.4g}"),
        (f"{route}: two steps draw different noise", last != before, f"{before:.6g} and {last:.6g}"),
    ]


def main(argv: list[str] | None = None) -> int:
    from jepa_dreamer.graphed import WARMUP_STEPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of model S")
    parser.add_argument("--accelerator", default="auto", help="auto: the GPU if there is one")
    parser.add_argument("--routes", default="graph", type=lambda s: s.split(","), help="comma-separated routes")
    # Enough for the graph route to warm up, capture, and replay at least twice
    parser.add_argument("--steps", type=int, default=WARMUP_STEPS + 3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--log-root", default="/tmp/replay_check_runs")
    args = parser.parse_args(argv)
    if args.accelerator == "auto":
        import torch

        args.accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    import torch._inductor.config as inductor_config

    # Compiled random ops draw what eager ones draw: a compiled route's noise is then the plain step's
    failed = False
    with inductor_config.patch(fallback_random=True):
        for what, passed, numbers in check(args):
            print(f"{'PASS' if passed else 'FAIL'}  {what}: {numbers}", flush=True)
            failed |= not passed
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
