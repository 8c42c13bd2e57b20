"""Is the replay sampling hidden behind the gradient steps (`algo.prefetch`)? On the CPU:

    MUJOCO_GL=egl python bench/prefetch.py [--iterations 6] [--act-ms 50]

Iterations of the training loop as the search runs them (2 gradient steps per iteration: replay ratio 0.5, 4
environments) on batches of its shape (16 sequences of 64 frames of 64x64 pixels, from a buffer of 40k transitions),
with the tests' tiny model. Acting is modelled as the loop waiting `--act-ms` for the environments' processes, then
adding their transitions. Each mode of `algo.prefetch` runs in the same process, against `none`; the sampling alone
and the steps alone are timed too, and in each mode the steps' waiting for their batches: the sampling left on the
loop's path, which a CPU's long steps and other work on the machine do not blur. torch computes in one thread,
leaving a core to the thread that draws.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import replay_sampling  # noqa: E402 (the filled buffer of the search's shapes)
import throughput  # noqa: E402 (a learner of the benchmark's configuration)

STEPS_PER_ITERATION = 2
BATCH_OVERRIDES = ("algo.per_rank_batch_size=16", "algo.per_rank_sequence_length=64")


def _transitions() -> dict[str, Any]:
    """One policy step of each environment, as the loop adds it after acting."""
    import numpy as np

    envs, rng = replay_sampling.ENVS, np.random.default_rng(0)
    return {
        "rgb": rng.integers(0, 256, (1, envs, 3, 64, 64), dtype=np.uint8),
        "actions": rng.random((1, envs, 6), dtype=np.float32),
        **{k: np.zeros((1, envs, 1), np.float32) for k in ("rewards", "terminated", "truncated", "is_first")},
    }


def seconds_per_iteration(learner: Any, rb: Any, mode: str, args: argparse.Namespace) -> tuple[float, float]:
    """Mean seconds of an iteration (acting, adding, the gradient steps) with `algo.prefetch` = `mode`, and of the
    steps' waiting for their batches in it (the sampling left on the loop's path)."""
    from sheeprl.algos.dreamer_v2.utils import sample_batches

    from jepa_dreamer.prefetch import BatchFeed

    fabric, cfg = learner.fabric, learner.cfg
    feed = BatchFeed(lambda n: sample_batches(fabric, cfg, rb, n), mode, fabric.device)
    adds, transitions = feed.adds(rb), _transitions()
    started, waited = 0.0, 0.0
    for iteration in range(args.warmup + args.iterations):
        if iteration == args.warmup:
            started, waited = time.perf_counter(), 0.0
        time.sleep(args.act_ms / 1000)
        adds.add(transitions)
        batches = iter(feed.batches(STEPS_PER_ITERATION))
        for _ in range(STEPS_PER_ITERATION):
            asked = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - asked
            learner.train_step(batch, None, measure_ratio=False)
        next(batches, None)  # the end of an iteration's draw (`iteration`: its thread ends)
    feed.close()
    return (time.perf_counter() - started) / args.iterations, waited / args.iterations


def main() -> None:
    import torch
    from sheeprl.algos.dreamer_v2.utils import sample_batches

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per mode")
    parser.add_argument("--warmup", type=int, default=2, help="iterations before the timing")
    parser.add_argument("--act-ms", type=float, default=50.0, help="milliseconds of acting per iteration")
    parser.add_argument("--modes", default="iteration,ahead", help="modes timed against none")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_args = argparse.Namespace(tiny=True, accelerator="cpu")
    learner, _ = throughput.fresh_learner(bench_args, BATCH_OVERRIDES, Path("/tmp/prefetch_runs"))
    rb = replay_sampling.filled_buffer(0)
    fabric, cfg = learner.fabric, learner.cfg
    started = time.perf_counter()
    for _ in range(args.iterations):
        batches = list(sample_batches(fabric, cfg, rb, STEPS_PER_ITERATION))
    sampling = (time.perf_counter() - started) / args.iterations
    started = time.perf_counter()
    for _ in range(args.iterations):
        for batch in batches:
            learner.train_step({k: v.clone() for k, v in batch.items()}, None, measure_ratio=False)
    steps = (time.perf_counter() - started) / args.iterations
    print(
        f"per iteration: sampling {1000 * sampling:.0f} ms, {STEPS_PER_ITERATION} gradient steps "
        f"{1000 * steps:.0f} ms, acting {args.act_ms:.0f} ms"
    )
    none, none_wait = seconds_per_iteration(learner, rb, "none", args)
    print(f"none: {1000 * none:.0f} ms per iteration, of which {1000 * none_wait:.0f} ms waiting for batches")
    for mode in args.modes.split(","):
        seconds, wait = seconds_per_iteration(learner, rb, mode, args)
        print(
            f"{mode}: {1000 * seconds:.0f} ms per iteration ({none / seconds:.3f}x none), of which {1000 * wait:.0f} "
            f"ms waiting for batches ({wait / none_wait:.3f}x none's wait)"
        )


if __name__ == "__main__":
    main()
