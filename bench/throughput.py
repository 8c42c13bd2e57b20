"""Training throughput of SheepRL's DreamerV3 against DreamerV3-JEPA, and K trials at once on one device: in K
processes (`VARIANT*K`) or in P processes of M trials each, side by side in threads (`VARIANT*PxM`, the search's
`--trials-per-device P*M --trials-per-process M`).

One command, on a GPU (DMC walker-walk from 64x64 pixels, model S, bf16, the search's configuration):
    MUJOCO_GL=egl python bench/throughput.py --out docs/throughput_gpu.md
On the CPU, with a tiny model and without the compiled step (minutes of compilation on a CPU; CI runs this):
    MUJOCO_GL=egl python bench/throughput.py --tiny --out /tmp/throughput.md

Every variant trains in a process of its own and is timed in its steady state only: the window opens after
`--warmup` gradient steps (start-up, random acting before `learning_starts` and compilation are over) and lasts
`--window` seconds. K concurrent trials wait for each other at that point, so that their windows overlap. The
single run of the `--evaluate` variant then plays one evaluation at the search's settings, timed on its own. Each
process also counts the CPU time of its process tree (its environment processes included) over its windows.
A `numerics` check trains the same batch with the plain step and each compiled route and compares their losses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jepa_dreamer.presets import CAPTURED_ROUTES, COMPILE_KEYS  # noqa: E402 (the compiled routes and their keys)

# What stays entered until this process ends: a learner's process settings
_PROCESS = contextlib.ExitStack()

# name: (experiment, overrides, what it is)
VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "sheeprl": ("dreamer_v3_dmc_walker_walk", (), "SheepRL's own dreamer_v3 loop (the baseline)"),
    "jepa0": ("dreamer_v3_jepa", ("algo.jepa_coef=0",), "ours, jepa_coef 0 (plain DreamerV3)"),
    "jepa": ("dreamer_v3_jepa", ("algo.jepa_coef=1",), "ours, JEPA on"),
    "jepa_steps": (
        "dreamer_v3_jepa",
        ("algo.jepa_coef=1", "algo.compile_steps=True"),
        "ours, JEPA on, the recurrent steps compiled (algo.compile_steps, our route)",
    ),
    "jepa_steps_fp32": (
        "dreamer_v3_jepa",
        ("algo.jepa_coef=1", "algo.compile_steps=True", "fabric.precision=32-true"),
        "jepa_steps in fp32 (TF32 matmuls): no autocast casts, where the launch-bound step pays for every kernel",
    ),
    "jepa_steps_ahead": (
        "dreamer_v3_jepa",
        ("algo.jepa_coef=1", "algo.compile_steps=True", "algo.prefetch=ahead"),
        "jepa_steps with the replay batches drawn in a thread, a batch ahead across iterations (algo.prefetch=ahead)",
    ),
    "jepa_graph": (
        "dreamer_v3_jepa",
        ("algo.jepa_coef=1", "algo.compile_graph=True"),
        "ours, JEPA on, the whole gradient step replayed as one CUDA graph (algo.compile_graph, our route)",
    ),
    "jepa_fused": (
        "dreamer_v3_jepa",
        ("algo.jepa_coef=1", "algo.compile_fused=True"),
        "ours, JEPA on, the step's parts compiled, then captured as one CUDA graph (algo.compile_fused, our route)",
    ),
    "jepa_compiled": (
        "dreamer_v3_jepa",
        ("algo.jepa_coef=1", "algo.compile.enabled=True"),
        "ours, JEPA on, the losses compiled with CUDA graphs (SheepRL's algo.compile)",
    ),
    "sheeprl_compiled": (
        "dreamer_v3_dmc_walker_walk",
        ("algo.compile.enabled=True",),
        "SheepRL's loop with its algo.compile",
    ),
}
DEFAULT_RUNS = (
    "sheeprl,jepa0,jepa,jepa_steps,jepa_graph,jepa_steps*4,numerics,jepa_steps*2,jepa_steps*8,jepa_steps_fp32,"
    "jepa_compiled"
)
TINY_RUNS = "sheeprl,jepa0,jepa,jepa*2,jepa*1x2"

# The same for every variant: no logging, checkpoints or videos, a buffer that fits K processes
COMMON_OVERRIDES = (
    "algo.total_steps=100000000",
    "algo.learning_starts=1024",
    "buffer.size=100000",
    "buffer.checkpoint=False",
    "checkpoint.every=0",
    "checkpoint.save_last=False",
    "metric.log_level=0",
    "env.capture_video=False",
    "fabric.devices=1",
)
TINY_OVERRIDES = (
    "env.num_envs=2",
    "env.action_repeat=1",
    "env.max_episode_steps=100",
    "algo.learning_starts=128",
    "buffer.size=4096",
)
EVAL_OVERRIDES = ("algo.eval.every=0",)  # evaluated once, after the window
TINY_EVAL_OVERRIDES = ("algo.eval.episodes=1", "algo.eval.num_envs=1")


class BenchDone(Exception):
    """Raised from the timed step when the window is over: ends the training run of a worker."""


@dataclass
class Meter:
    """Timestamps of gradient and environment steps; opens the window after `warmup` gradient steps."""

    warmup: int
    window: float
    barrier: Path | None
    k: int
    seed: int
    grad_steps: int = 0
    window_grad_steps: int = 0
    window_env_steps: int = 0
    first_grad_at: float | None = None
    window_at: float | None = None
    window_closed_at: float | None = None
    cpu_at_open: float = 0.0
    cpu_at_close: float = 0.0
    barrier_wait: float = 0.0
    evaluator: Any = None
    train_env: Any = None
    count_ops: bool = False
    counter: Any = None
    started: float = field(default_factory=time.perf_counter)

    def around(self) -> Any:
        """Counts the operators of one warmed-up step before the window (plain steps only: a compiled step's kernels
        do not pass through the dispatcher one by one)."""
        if self.count_ops and self.counter is None and self.grad_steps == max(1, self.warmup - 2):
            self.counter = op_counter()
            return self.counter
        return contextlib.nullcontext()

    def on_env_step(self, env: Any) -> None:
        if self.train_env is None:
            self.train_env = env  # the training env steps first: evaluation envs come later
        if env is self.train_env and self.window_at is not None:
            self.window_env_steps += env.num_envs

    def on_grad_step(self) -> None:
        now = time.perf_counter()
        self.grad_steps += 1
        if self.first_grad_at is None:
            self.first_grad_at = now
        if self.window_at is None:
            # In the worker's log: where a run that never reaches its window (e.g. still compiling) spent its time
            print(f"gradient step {self.grad_steps}: {now - self.started:.1f} s after start", flush=True)
            if self.grad_steps >= self.warmup:
                self._wait_for_the_others()
                self.cpu_at_open = tree_cpu_seconds(os.getpid())
                self.window_at = time.perf_counter()
            return
        self.window_grad_steps += 1
        if now - self.window_at >= self.window:
            self.window_closed_at, self.cpu_at_close = now, tree_cpu_seconds(os.getpid())
            raise BenchDone

    def _wait_for_the_others(self) -> None:
        from jepa_dreamer.shared import gpu_work

        if self.barrier is None or self.k <= 1:
            return
        start = time.perf_counter()
        (self.barrier / f"ready_{self.seed}").touch()
        while len(list(self.barrier.glob("ready_*"))) < self.k and time.perf_counter() - start < 900:
            # A run beside this one in the process may still have to capture its step alone on the device
            gpu_work.pause()
            time.sleep(0.05)
        self.barrier_wait = time.perf_counter() - start


def _wrap(owner: Any, name: str, before: Any = None, after: Any = None, around: Any = None) -> None:
    """Instrument `owner.name`: `before` and `after` get the call's arguments, `around()` is a context for it."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        with around() if around is not None else contextlib.nullcontext():
            out = original(*args, **kwargs)
        if after is not None:
            after(*args, **kwargs)
        return out

    setattr(owner, name, wrapped)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by process `root` and its live descendants (its environment processes), from /proc."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime+stime
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


# Operators whose result the host must wait for: a value read back (`.item()`, `bool(t)`) or a data-dependent size
SYNC_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "unique", "_unique2"})


def op_counter() -> Any:
    """A dispatch mode counting the operators of a plain (eager) gradient step: the non-view ones are the kernel
    launches a GPU would see, give or take a few, and `SYNC_OPS` the host synchronisations."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.kernels = 0
            self.syncs = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.kernels += not func.is_view
            self.syncs += func.overloadpacket.__name__ in SYNC_OPS
            return func(*args, **(kwargs or {}))

    return OpCounter()


def overrides_for(variant: str, tiny: bool, accelerator: str, seed: int, log_root: Path) -> tuple[str, list[str]]:
    """The experiment and overrides of `variant`; tiny runs drop the JEPA keys for SheepRL's own algorithm."""
    from jepa_dreamer.presets import TINY_MODEL_OVERRIDES, output_overrides

    exp, extra, _ = VARIANTS[variant]
    ours = exp == "dreamer_v3_jepa"
    overrides = [*COMMON_OVERRIDES, f"fabric.accelerator={accelerator}", f"seed={seed}"]
    if tiny:
        overrides += [o for o in TINY_MODEL_OVERRIDES if ours or "jepa" not in o]
        overrides += TINY_OVERRIDES
    if ours:
        overrides += EVAL_OVERRIDES + (TINY_EVAL_OVERRIDES if tiny else ())
    overrides += [*extra, *output_overrides(str(log_root), f"{variant}_{seed}")]
    return exp, overrides


def run_worker(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train `args.per_process` runs of `args.worker` side by side (a thread each) until their windows close; a row
    of numbers for each."""
    import gymnasium as gym
    import sheeprl.algos.dreamer_v3.dreamer_v3 as sheeprl_dv3
    import torch
    from omegaconf import OmegaConf
    from sheeprl.cli import check_configs, run_algorithm
    from sheeprl.utils.utils import dotdict

    from jepa_dreamer.evaluate import Evaluator
    from jepa_dreamer.learner import Learner
    from jepa_dreamer.runner import compose_config, run

    local = threading.local()  # the meter of the run this thread trains
    torch.set_num_threads(args.threads)
    for cls in (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv):
        _wrap(cls, "step", before=lambda env, *a, **kw: local.meter.on_env_step(env))
    for owner, name in ((Learner, "train_step"), (sheeprl_dv3, "train")):
        _wrap(owner, name, after=lambda *a, **kw: local.meter.on_grad_step(), around=lambda: local.meter.around())
    _wrap(Evaluator, "__init__", after=lambda evaluator, *a, **kw: setattr(local.meter, "evaluator", evaluator))
    cuda = torch.cuda.is_available() and args.accelerator != "cpu"
    rows: list[dict[str, Any]] = []

    def train_one(seed: int) -> None:
        meter = Meter(args.warmup, args.window, Path(args.barrier) if args.barrier else None, args.k, seed)
        local.meter = meter
        exp, overrides = overrides_for(args.worker, args.tiny, args.accelerator, seed, Path(args.log_root))
        # Our runner gives torch `num_threads` threads; SheepRL's loop keeps the ones set above: the same for both
        cfg = compose_config([*overrides, f"num_threads={args.threads}"], exp=exp)
        # The dispatcher sees a compiled step's operators only where it falls back to eager, a replayed graph's
        # none: plain steps of a run alone in its process only
        compiled = any(OmegaConf.select(cfg, key, default=False) for key in COMPILE_KEYS.values())
        meter.count_ops = not compiled and args.per_process == 1
        eval_seconds = first_eval_seconds = None
        try:
            if exp == "dreamer_v3_jepa":
                run(cfg, hook=None)
            else:
                cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
                check_configs(cfg)
                run_algorithm(cfg)
            raise RuntimeError("the run ended before the window closed: raise algo.total_steps")
        except BenchDone:
            window = meter.window_closed_at - meter.window_at
        if args.timed_eval and meter.evaluator is not None:
            eval_seconds = first_eval_seconds = meter.evaluator.evaluate(1, 0).seconds
            if cfg.algo.compile.enabled:  # the first evaluation compiles the player: a trial pays that once
                eval_seconds = meter.evaluator.evaluate(2, 0).seconds
        rows.append(
            {
                "variant": args.worker,
                "k": args.k,
                "per_process": args.per_process,
                "seed": seed,
                "pid": os.getpid(),
                "startup_s": meter.first_grad_at - meter.started,
                "warmup_s": meter.window_at - meter.first_grad_at - meter.barrier_wait,
                "window_s": window,
                "window_at": meter.window_at,
                "window_closed_at": meter.window_closed_at,
                "cpu_at_open": meter.cpu_at_open,
                "cpu_at_close": meter.cpu_at_close,
                "grad_steps_per_s": meter.window_grad_steps / window,
                "policy_steps_per_s": meter.window_env_steps / window,
                "eval_s": eval_seconds,
                "eval_first_s": first_eval_seconds,
                "eval_episodes": int(cfg.algo.eval.episodes) if "eval" in cfg.algo else None,
                "kernels_per_step": meter.counter.kernels if meter.counter is not None else None,
                "syncs_per_step": meter.counter.syncs if meter.counter is not None else None,
            }
        )

    if args.per_process == 1:
        train_one(args.seed)
    else:
        if VARIANTS[args.worker][0] != "dreamer_v3_jepa":
            raise SystemExit(f"{args.worker}: runs side by side in one process need our loop (dreamer_v3_jepa)")
        errors: list[BaseException] = []

        def guarded(seed: int) -> None:
            try:
                train_one(seed)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=guarded, args=(args.seed + i,)) for i in range(args.per_process)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    # The process's CPU over the span of its windows, and its peak GPU memory (its runs share both)
    span = max(r["window_closed_at"] for r in rows) - min(r["window_at"] for r in rows)
    cores = (max(r["cpu_at_close"] for r in rows) - min(r["cpu_at_open"] for r in rows)) / span
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return [{**r, "process_cores": cores, "process_peak_gpu_gib": peak} for r in rows]


# The plain step in fp32: how far bf16-mixed's own rounding moves the losses, the scale for the routes' differences
FP32_REFERENCE = "plain fp32"
# The overrides of each step the numerics run compares: plain, its fp32 reference, and the search's compiled routes
MODE_OVERRIDES = {"plain": (), FP32_REFERENCE: ("fabric.precision=32-true",)} | {
    route: (f"{key}=True",) for route, key in COMPILE_KEYS.items()
}


def fresh_learner(args: argparse.Namespace, extra: tuple[str, ...], log_root: Path) -> tuple[Any, dict[str, Any]]:
    """A learner of the `jepa` variant with the `extra` overrides, seeded, and a synthetic replay batch on its
    device: the numerics run and `bench/launches.py` train one batch again and again."""
    from lightning.fabric import Fabric
    from omegaconf import OmegaConf
    from sheeprl.utils.env import make_env
    from sheeprl.utils.utils import dotdict

    from jepa_dreamer.learner import Learner
    from jepa_dreamer.runner import compose_config, process_settings

    _, overrides = overrides_for("jepa", args.tiny, args.accelerator, 0, log_root)
    cfg = dotdict(OmegaConf.to_container(compose_config([*overrides, *extra]), resolve=True))
    # As a trial runs (without it, torch.distributions' argument checks sync the host), for the rest of this process
    _PROCESS.enter_context(process_settings(cfg))
    fabric = Fabric(accelerator=args.accelerator, devices=1, precision=cfg.fabric.precision)
    fabric.seed_everything(0)
    env = make_env(cfg, 0, 0, None, "bench")()
    learner = Learner(fabric, cfg, env.observation_space, env.action_space.shape, True)
    batch = _synthetic_batch(cfg, env.action_space.shape[0], fabric.device)
    env.close()
    return learner, batch


def run_numerics(args: argparse.Namespace) -> dict[str, Any]:
    """Gradient steps on one batch with the plain step and each compiled route, from the same weights and the same
    random stream (`fallback_random` makes the compiled random ops draw what eager ones draw): their losses, and the
    seconds of each step (the first one of a compiled route includes its compilation). In bf16-mixed the plain step
    in fp32 is compared too: a route is sound when it moves the losses less than bf16's own rounding does. With a
    captured route (`graph`, `fused`) every mode trains as many more steps as the graph's warm-up, so that it replays
    a captured graph at the last 3 (its first replayed step also captures it)."""
    import warnings

    import torch
    import torch._inductor.config as inductor_config

    from jepa_dreamer.graphed import WARMUP_STEPS
    from jepa_dreamer.runner import compose_config

    _PROCESS.enter_context(inductor_config.patch(fallback_random=True))
    torch.set_num_threads(args.threads or 2)

    class Capture:
        def __init__(self) -> None:
            self.values: dict[str, float] = {}

        def update(self, name: str, value: Any) -> None:
            self.values[name] = float(value)

    losses: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {}
    syncs: dict[str, int] = {}
    steps = 3 + (WARMUP_STEPS if set(CAPTURED_ROUTES) & set(args.routes) else 0)
    _, overrides = overrides_for("jepa", args.tiny, args.accelerator, 0, Path(args.log_root))
    reference = [FP32_REFERENCE] if compose_config(overrides).fabric.precision != "32-true" else []
    for mode in ("plain", *args.routes, *reference):
        learner, batch = fresh_learner(args, MODE_OVERRIDES[mode], Path(args.log_root))
        fabric = learner.fabric
        losses[mode], seconds[mode] = [], []
        for step in range(steps):
            fabric.seed_everything(100 + step)
            capture = Capture()
            started = time.perf_counter()
            learner.train_step({k: v.clone() for k, v in batch.items()}, capture, measure_ratio=False)
            losses[mode].append({k: v for k, v in capture.values.items() if k.startswith("Loss/")})
            seconds[mode].append(time.perf_counter() - started)  # the capture has read every loss back
            print(f"{mode} step {step}: {seconds[mode][-1]:.1f} s", flush=True)
        if mode in ("plain", *CAPTURED_ROUTES) and fabric.device.type == "cuda":
            # Host synchronisations of one warmed-up step without metrics (a search trial's), by CUDA's debug mode
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                learner.train_step({k: v.clone() for k, v in batch.items()}, None, measure_ratio=False)
                torch.cuda.set_sync_debug_mode("default")
            syncs[mode] = sum("synchroniz" in str(w.message) for w in caught)
    diffs = {
        mode: [max(abs(c[k] - p[k]) / max(abs(p[k]), 1e-6) for k in p) for p, c in zip(losses["plain"], losses[mode])]
        for mode in (*args.routes, *reference)
    }
    return {
        "variant": "numerics",
        "losses": losses,
        "step_seconds": seconds,
        "max_rel_diff_per_step": diffs,
        "syncs_per_step": syncs or None,
    }


def _synthetic_batch(cfg: Any, action_dim: int, device: Any) -> dict[str, Any]:
    """Random pixels, actions and rewards (not zeros: zeros hide mistakes), shaped like a replay batch."""
    import torch

    g = torch.Generator().manual_seed(0)
    t, b = int(cfg.algo.per_rank_sequence_length), int(cfg.algo.per_rank_batch_size)
    size = int(cfg.env.screen_size)
    zeros = torch.zeros(t, b, 1)
    batch = {
        "rgb": torch.randint(0, 256, (t, b, 3, size, size), generator=g).float(),
        "actions": torch.rand(t, b, action_dim, generator=g) * 2 - 1,
        "rewards": torch.rand(t, b, 1, generator=g),
        "terminated": zeros,
        "truncated": zeros.clone(),
        "is_first": zeros.clone(),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _threads(args: argparse.Namespace, k: int) -> int:
    """Torch threads per process: the cores shared among the K processes unless given (more threads than cores
    make OpenMP's spinning threads fight over them)."""
    return args.threads or max(1, min(2, (os.cpu_count() or 1) // k))


def _worker_command(args: argparse.Namespace, variant: str, seed: int, k: int, barrier: Path, out: Path) -> list[str]:
    command = [sys.executable, __file__, "--worker", variant, "--seed", str(seed), "--k", str(k)]
    command += ["--warmup", str(args.warmup), "--window", str(args.window), "--threads", str(_threads(args, k))]
    command += ["--accelerator", args.accelerator, "--barrier", str(barrier), "--result", str(out)]
    command += ["--routes", ",".join(args.routes)]
    command += ["--log-root", str(args.scratch / "runs")] + (["--tiny"] if args.tiny else [])
    return command


@dataclass(frozen=True)
class Arrangement:
    """K trials at once: `processes` processes of `per_process` trials each (side by side in threads)."""

    processes: int
    per_process: int = 1

    @classmethod
    def parse(cls, text: str) -> Arrangement:
        """`K` (K processes) or `PxM`."""
        processes, _, per_process = text.partition("x")
        return cls(int(processes or 1), int(per_process or 1))

    @property
    def k(self) -> int:
        return self.processes * self.per_process

    def __str__(self) -> str:
        return str(self.processes) if self.per_process == 1 else f"{self.processes}x{self.per_process}"


ALONE = Arrangement(1)


def launch(
    args: argparse.Namespace, variant: str, arrangement: Arrangement, deadline: float, evaluate: bool
) -> list[dict[str, Any]]:
    """The arrangement's processes of `variant` at once (seeds 5, 6, ...); their rows, or one saying why there are
    none."""
    k, per_process = arrangement.k, arrangement.per_process
    barrier = args.scratch / f"{variant}_k{arrangement}"
    barrier.mkdir(parents=True, exist_ok=True)
    # Torch threads as the cores allow per trial: all of a process's trials share its thread pool
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads(args, k)), "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(arrangement.processes):
        out, log = barrier / f"result_{i}.json", barrier / f"worker_{i}.log"
        command = _worker_command(args, variant, 5 + i * per_process, k, barrier, out)
        command += ["--per-process", str(per_process)] + (["--timed-eval"] if evaluate else [])
        with log.open("w") as f:
            procs.append((subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env), out, log))
    rows, problem = [], None
    for proc, out, log in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problem = "out of time"
        if out.exists():
            rows += json.loads(out.read_text())
        elif problem is None:
            tail = log.read_text().strip().splitlines()[-1:]
            problem = f"failed: {tail[0] if tail else proc.returncode}"
    if problem is not None or len(rows) < k:
        return [{"variant": variant, "k": k, "problem": problem or "missing results"}]
    return rows


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[tuple[str, Arrangement], list[dict[str, Any]]], eval_every: int, device: str) -> str:
    """The markdown table: throughput of every run, its ratio to SheepRL's loop and to one trial of its variant
    alone, the slowest of its trials against one alone, and what it used of the machine."""
    total = {key: sum(r.get("policy_steps_per_s", 0.0) for r in rows) for key, rows in results.items()}
    base = total.get(("sheeprl", ALONE)) or None
    lines = [
        f"Device: {device}. Steady-state window per run; K = trials at once on this device (totals over them), in "
        "P processes of M trials each (PxM; K alone: K processes).",
        "",
        "| variant | arrangement | K | grad steps/s | policy steps/s | × SheepRL | × alone | slowest trial × alone "
        f"| CPU cores | start-up s | warm-up s | eval s | eval share (every {eval_every}) | peak GPU GiB "
        "| kernels/step | syncs/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, arrangement), rows in results.items():
        k = arrangement.k
        if "problem" in rows[0]:
            lines.append(f"| {variant} | {arrangement} | {k} | {rows[0]['problem']} |" + " |" * 12)
            continue
        gsps = sum(r["grad_steps_per_s"] for r in rows)
        psps = total[variant, arrangement]
        single = total.get((variant, ALONE))
        slowest = min(r["policy_steps_per_s"] for r in rows) / single if single else None
        evals = [r["eval_s"] for r in rows if r["eval_s"] is not None]
        eval_s = sum(evals) / len(evals) if evals else None
        # Wall time of one trial between two evaluations, at this per-trial speed, against one evaluation's time
        share = eval_s / (eval_s + eval_every / (psps / k)) if eval_s is not None and psps > 0 else None
        processes = {r["pid"]: r for r in rows}.values()
        cores = sum(r["process_cores"] for r in processes)
        peaks = [r["process_peak_gpu_gib"] for r in processes if r["process_peak_gpu_gib"] is not None]
        lines.append(
            f"| {variant} | {arrangement} | {k} | {gsps:.2f} | {psps:.2f} | {_fmt(psps / base if base else None)} "
            f"| {_fmt(psps / single if single else None)} | {_fmt(slowest)} | {cores:.1f} "
            f"| {max(r['startup_s'] for r in rows):.0f} | {max(r['warmup_s'] for r in rows):.0f} "
            f"| {_fmt(eval_s, '.1f')} | {_fmt(share, '.1%')} | {_fmt(sum(peaks) if peaks else None)} "
            f"| {_fmt(rows[0]['kernels_per_step'], 'd')} | {_fmt(rows[0]['syncs_per_step'], 'd')} |"
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> str:
    import importlib.metadata as md

    import torch

    def version(package: str) -> str:
        try:
            return md.version(package)
        except md.PackageNotFoundError:  # e.g. dm_control unpacked onto the path, without its metadata
            return "?"

    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "sheeprl", "mujoco", "dm-control"))
    device = torch.cuda.get_device_name(0) if args.accelerator == "cuda" else f"CPU ({os.cpu_count()} cores)"
    config = (
        "tiny model, 2 envs, no action repeat, 100-step episodes"
        if args.tiny
        else "model S, bf16, 4 envs, replay ratio 0.5"
    )
    return f"{device}; {versions}; python {platform.python_version()}; walker-walk 64x64 pixels, {config}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and short episodes (CPU, CI)")
    parser.add_argument(
        "--runs",
        help="comma-separated runs in order: a variant, VARIANT*K for K processes of it at once, or VARIANT*PxM for "
        "P processes of M runs each, side by side in threads (default: "
        f"{DEFAULT_RUNS}; with --tiny {TINY_RUNS}); variants: " + ", ".join(["numerics", *VARIANTS]),
    )
    parser.add_argument(
        "--routes",
        default=",".join(COMPILE_KEYS),
        help="compiled routes that the numerics run compares with the plain step: steps (ours, algo.compile_steps), "
        "losses (SheepRL's algo.compile), graph (ours, algo.compile_graph), fused (ours, algo.compile_fused)",
    )
    parser.add_argument("--evaluate", help="the variant whose K=1 run times an evaluation (jepa_steps; tiny: jepa)")
    parser.add_argument("--warmup", type=int, default=None, help="gradient steps before the window (GPU 30, tiny 5)")
    parser.add_argument("--window", type=float, default=None, help="seconds of the window (GPU 40, tiny 8)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: the cores / K, at most 2)")
    parser.add_argument("--accelerator", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    parser.add_argument("--budget", type=float, default=3600, help="seconds for all runs; later ones are skipped")
    parser.add_argument("--eval-every", type=int, default=10000, help="for the evaluation share column")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "throughput.md")
    parser.add_argument("--scratch", type=Path, default=None, help="run folders (default: next to --out)")
    # Worker mode (one process of one variant)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--per-process", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--timed-eval", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log-root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.routes = [r for r in args.routes.split(",") if r]
    if not set(args.routes) <= set(COMPILE_KEYS):
        parser.error(f"--routes {','.join(args.routes)}: choose from {', '.join(COMPILE_KEYS)}")
    if args.accelerator is None:
        import torch

        args.accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    args.runs = args.runs or (TINY_RUNS if args.tiny else DEFAULT_RUNS)
    args.evaluate = args.evaluate or ("jepa" if args.tiny else "jepa_steps")
    args.warmup = args.warmup if args.warmup is not None else (5 if args.tiny else 30)
    if args.warmup < 3:
        parser.error(f"--warmup {args.warmup}: at least 3 (one step is counted, the window opens after the last)")
    args.window = args.window if args.window is not None else (8.0 if args.tiny else 40.0)
    args.scratch = (args.scratch or args.out.parent / (args.out.stem + "_runs")).resolve()
    return args


def report(args: argparse.Namespace, results: dict, numerics: dict[str, Any] | None) -> str:
    """The table (and the numerics line), written to `--out` with the raw numbers beside it as JSON."""
    text = f"# Throughput ({time.strftime('%Y-%m-%d')})\n\n{environment(args)}\n\n"
    text += table(results, args.eval_every, "cuda" if args.accelerator == "cuda" else "cpu") + "\n"
    if numerics is not None:
        steps = len(numerics.get("step_seconds", {}).get("plain", ()))
        text += f"\nPlain vs compiled steps on one batch ({steps} steps, same weights and random stream):\n"
        if "problem" in numerics:
            text += f"- {numerics['problem']}\n"
        for mode, diffs in numerics.get("max_rel_diff_per_step", {}).items():
            first, *later = numerics["step_seconds"][mode]
            text += (
                f"- `{mode}`: largest relative difference of a loss per step "
                + ", ".join(f"{d:.2e}" for d in diffs)
                + f"; first step (compilation included) {first:.0f} s, then {', '.join(f'{t:.2f}' for t in later)} s"
                + f" (plain: {', '.join(f'{t:.2f}' for t in numerics['step_seconds']['plain'])} s)\n"
            )
        if numerics.get("syncs_per_step") is not None:
            syncs = ", ".join(f"{mode} {n}" for mode, n in numerics["syncs_per_step"].items())
            text += f"Host synchronisations per gradient step: {syncs}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {f"{v}_k{arrangement}": rows for (v, arrangement), rows in results.items()} | {"numerics": numerics}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        result = [run_numerics(args)] if args.worker == "numerics" else run_worker(args)
        args.result.write_text(json.dumps(result))
        return 0
    runs = [(v, Arrangement.parse(a or "1")) for v, _, a in (r.partition("*") for r in args.runs.split(",") if r)]
    unknown = [v for v, _ in runs if v != "numerics" and v not in VARIANTS]
    if unknown:
        raise SystemExit(f"throughput.py: error: unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    deadline = time.time() + args.budget
    results: dict[tuple[str, Arrangement], list[dict[str, Any]]] = {}
    numerics = None
    for variant, arrangement in runs:
        if arrangement != ALONE and "problem" in results.get((variant, ALONE), [{}])[0]:
            # Without a working run of this variant alone, the plain JEPA step still measures the scaling
            variant = "jepa"
        if time.time() > deadline - 30:
            rows = [{"variant": variant, "k": arrangement.k, "problem": "skipped (budget)"}]
        else:
            evaluate = (variant, arrangement) == (args.evaluate, ALONE)
            rows = launch(args, variant, arrangement, deadline, evaluate)
        print(f"{variant} {arrangement}: {json.dumps(rows)}", flush=True)
        if variant == "numerics":
            numerics = rows[0]
        else:
            results[variant, arrangement] = rows
        text = report(args, results, numerics)  # after every run: a run out of time keeps what was measured
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
