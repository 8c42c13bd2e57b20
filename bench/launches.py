"""Kernel launches of one gradient step, plain against our compiled routes (`algo.compile_steps`, `algo.compile_graph`),
by the profiler.

    MUJOCO_GL=egl python bench/launches.py             # model S on the GPU if there is one, else on the CPU
    MUJOCO_GL=egl python bench/launches.py --tiny      # the tests' tiny model

On a GPU it counts the launches the CUDA runtime saw (kernels, graph replays, copies and fills); a replayed graph is
one launch. On a CPU the graph route runs its step uncaptured, so it counts what the plain step does. On a CPU, where
there are no launches, it counts what would be one on a GPU: the outermost non-view ATen operators (an operator
called inside another one runs in its launch) and the kernels that inductor generated (`cpp.enable_kernel_profile`
names them in the profile). `bench/throughput.py` counts the plain step by the dispatcher instead, which cannot see
inside compiled code; on the plain step the two counts differ by under 10% (tiny model: 6582 and 7046).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
# Compiled kernels are named in the profile only when generated with the flag below, not when read from the cache
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402 (the benchmark's configuration and synthetic batch)

from jepa_dreamer.presets import CAPTURED_ROUTES  # noqa: E402 (on the path once throughput is imported)

# CUDA runtime and driver calls that put work on the GPU
CUDA_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")
NOT_LAUNCHES = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::_unsafe_view"})


def _is_view(name: str) -> bool:
    import torch

    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    return packet is not None and any(getattr(packet, o).is_view for o in packet.overloads())


def count_launches(events: Any, cuda: bool) -> int:
    """Launches among the profiler's `events` (see the module's docstring for what counts on a CPU)."""
    if cuda:
        return sum(e.name.startswith(CUDA_LAUNCHES) for e in events)
    count = 0
    for e in events:
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is not None:
            continue
        if e.name.startswith("aten::"):
            count += not _is_view(e.name) and e.name not in NOT_LAUNCHES
        else:
            count += "_cpp_fused" in e.name
    return count


def measure(route: str, args: argparse.Namespace) -> int:
    """Launches of a warmed-up gradient step of a fresh learner: the third (the first two compile and warm up), and
    for the graph route the third replay (its first replay follows its eager warm-up steps and the capture)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from jepa_dreamer.graphed import WARMUP_STEPS

    learner, batch = throughput.fresh_learner(args, throughput.MODE_OVERRIDES[route], Path("/tmp/launches_runs"))
    for _ in range(2 + (WARMUP_STEPS if route in CAPTURED_ROUTES else 0)):
        learner.train_step({k: v.clone() for k, v in batch.items()}, None, measure_ratio=False)
    cuda = learner.fabric.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        learner.train_step({k: v.clone() for k, v in batch.items()}, None, measure_ratio=False)
        if cuda:
            torch.cuda.synchronize()
    return count_launches(prof.events(), cuda)


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch._inductor.config as inductor_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--accelerator", choices=("cuda", "cpu"), default=default)
    ours = ("steps", *CAPTURED_ROUTES)
    parser.add_argument("--routes", default=",".join(ours), help=f"routes counted besides the plain step: {ours}")
    args = parser.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    if not set(routes) <= set(ours):
        parser.error(f"--routes {args.routes}: choose from {', '.join(ours)}")
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):
        counts = {route: measure(route, args) for route in ("plain", *routes)}
    fewer = ", ".join(f"{r} {counts[r]} ({counts['plain'] / counts[r]:.2f}x fewer)" for r in routes)
    model = "tiny" if args.tiny else "model S"
    print(f"launches per gradient step ({model}, {args.accelerator}): plain {counts['plain']}, {fewer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
