"""The graph route (`algo.compile_graph`): the whole gradient step replayed as one CUDA graph.

The graph holds everything a step does on the device after the target-critic update: the world-model loss with
JEPA, its backward pass, gradient clipping, the optimiser step and the EMA update of the JEPA target; the
imagination, the return normaliser, the actor and critic losses, their backward passes, clipping and optimiser steps;
the finiteness flag and the step's metrics, stacked into one tensor. Outside it stays what depends on the host or
cannot be replayed: copying each batch into the static inputs (through pinned memory when it comes from the host),
the target-critic update (its period and its tau of 1 at step 0 come from a host counter), the encoder-gradient ratio
(two extra backward passes, now and then; this route does not measure it) and the metric sink, fed from the graph's
output after each replay. A replay reads and writes the very tensors that the capture saw, so all state lives in
tensors updated in place: the weights, the optimisers' state (capturable, created by eager warm-up steps before the
capture) and the return normaliser's, which SheepRL's `Moments` replaces at every call instead (`InPlaceMoments`).
On a CPU the same step runs without a graph, which lets the tests compare it with the plain step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v2.utils import MAX_SAMPLED_BATCHES
from sheeprl.algos.dreamer_v3.utils import Moments
from sheeprl.data.buffers import EnvIndependentReplayBuffer
from torch import Tensor, nn
from torch.optim import Optimizer

from jepa_dreamer.shared import gpu_work

# Real gradient steps run eagerly before the capture (PyTorch's whole-network example runs 3): they create the
# optimisers' state, compile the `steps` route's graphs and initialise the libraries' handles on the capture stream
WARMUP_STEPS = 3


def check_graph_route(fabric: Fabric, cfg: dict[str, Any]) -> None:
    """Refuse what a captured step cannot do, with the setting to change, before anything is built."""
    key = "algo.compile_fused" if cfg.algo.get("compile_fused") else "algo.compile_graph"
    if (cfg.algo.get("compile") or {}).get("enabled", False):
        raise ValueError(f"{key}=True with algo.compile.enabled=True: choose one compiled route")
    if fabric.world_size > 1:
        raise ValueError(f"{key}=True trains on one device only: set fabric.devices=1")
    if str(cfg.fabric.precision).startswith("16"):
        raise ValueError(f"{key}=True: fp16's loss scaler reads its overflow check on the host; use bf16")
    if cfg.distribution.validate_args:
        raise ValueError(f"{key}=True: distribution.validate_args=True reads every sample on the host")


def make_capturable(optimizer: Optimizer) -> None:
    """Let `optimizer.step` be captured: its step counts stay on the device. Set on the groups after any checkpoint is
    loaded, since `load_state_dict` takes the saved groups' flags. Fused Adam computes the same update either way."""
    for group in optimizer.param_groups:
        group["capturable"] = True


class InPlaceMoments(nn.Module):
    """SheepRL's return normaliser, with its state updated in place.

    `Moments.forward` assigns new tensors to its `low` and `high` buffers: a replayed graph would read the tensors it
    captured forever, and `state_dict` would miss the replays' values. Here SheepRL's forward runs through
    `torch.func.functional_call`, which hands the new tensors back in the dictionary it was given and puts the
    module's own ones back; those are then overwritten with exact copies of the new values."""

    def __init__(self, moments: Moments) -> None:
        super().__init__()
        self.moments = moments

    def forward(self, x: Tensor, fabric: Fabric) -> tuple[Tensor, Tensor]:
        state = dict(self.moments.named_buffers())
        own = dict(state)
        offset, invscale = torch.func.functional_call(self.moments, state, (x, fabric))
        for name, tensor in own.items():
            tensor.copy_(state[name])
        return offset, invscale


def off_device(tensors: Iterable[tuple[str, Tensor]], device: torch.device) -> list[str]:
    """The names of `tensors` that are not on `device` (by type and index: `cuda` is `cuda:0` on a one-GPU process)."""
    index = (
        device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
    )
    wanted = (device.type, index if device.type == "cuda" else None)
    return [
        name for name, t in tensors if (t.device.type, t.device.index if t.device.type == "cuda" else None) != wanted
    ]


class GraphedStep:
    """A gradient step `step(inputs) -> tensor` replayed as a CUDA graph from static inputs.

    Each call copies the batch into the static inputs and runs one real step: the first `warmup_steps` eagerly, on a
    side stream of its own (the last one alone on the device, where any host synchronisation raises: the capture
    would fail on it), the next one captures the graph and replays it, later ones replay it. Every object has its own
    inputs, stream, graph, memory pool and random stream (a copy of the device generator's state at the capture, which
    each replay advances: graphs of the default state share the tensors that hand a replay its offset), so that
    several (one per trial) can live in one process. The capture is alone on the device (`gpu_work`). Before the
    first step and before the capture, every tensor of `state()` (weights, optimiser and normaliser states) must be on
    the step's device: a tensor elsewhere is copied through the host at every step, which a capture refuses. The
    output is the graph's: the next call overwrites it. On a CPU, `step` runs uncaptured on the static inputs, into a
    static output, with the same checks."""

    def __init__(
        self,
        step: Callable[[dict[str, Tensor]], Tensor],
        device: torch.device,
        state: Callable[[], Iterable[tuple[str, Tensor]]],
        warmup_steps: int = WARMUP_STEPS,
    ) -> None:
        self.step = step
        self.device = device
        self.state = state
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.inputs: dict[str, Tensor] = {}
        self.output: Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @property
    def takes_host_batches(self) -> bool:
        """Whether a batch sampled on the host crosses to the device here, from pinned memory, without a sync."""
        return self.stream is not None

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        self._load(batch)
        if self.calls in (0, self.warmup_steps):
            self._check_devices()
        self.calls += 1
        if self.stream is None:
            # No graph, but a static output all the same, which the next call overwrites as a replay does
            output = self.step(self.inputs)
            self.output = output if self.output is None else self.output.copy_(output)
            return self.output
        if self.calls < self.warmup_steps:
            return self._warm_up()
        if self.calls == self.warmup_steps:
            with gpu_work.alone(), _no_host_sync():
                return self._warm_up()
        if self.graph is None:
            with gpu_work.alone():
                self._capture()
        self.graph.replay()
        return self.output

    def _check_devices(self) -> None:
        if off := off_device(self.state(), self.device):
            more = f" and {len(off) - 3} more" if len(off) > 3 else ""
            raise ValueError(
                f"the graph route needs every tensor of its step on {self.device}, but {', '.join(off[:3])}{more} "
                "are elsewhere: move them to the learner's device"
            )

    def _load(self, batch: dict[str, Tensor]) -> None:
        """Copy `batch` into the static inputs (created at the first call; float32, as `sample_batches` gives)."""
        if not self.inputs:
            self.inputs = {k: torch.empty(v.shape, dtype=torch.float32, device=self.device) for k, v in batch.items()}
        shapes, static = ({k: tuple(v.shape) for k, v in b.items()} for b in (batch, self.inputs))
        if shapes != static:
            raise ValueError(f"a replayed step takes batches of one shape: got {shapes} after {static}")
        for k, v in batch.items():
            # From the host: a pinned copy crosses asynchronously; the host allocator keeps it until the copy is done
            source = v.pin_memory() if self.stream is not None and v.device.type == "cpu" else v
            self.inputs[k].copy_(source, non_blocking=True)

    def _warm_up(self) -> Tensor:
        """One eager step on the capture stream, ordered after the work queued before it and before what follows."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            output = self.step(self.inputs)
        current.wait_stream(self.stream)
        return output

    def _capture(self) -> None:
        """Record the step without running it, drawing its random numbers from a state of its own."""
        generator = torch.cuda.default_generators[self.device.index or 0]
        default = generator.graphsafe_get_state()
        generator.graphsafe_set_state(generator.clone_state())
        try:
            self.graph = torch.cuda.CUDAGraph()
            # `thread_local`: another trial's thread may still allocate or pin host memory, which is no error here
            with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
                self.output = self.step(self.inputs)
        finally:
            generator.graphsafe_set_state(default)


@contextlib.contextmanager
def _no_host_sync() -> Iterator[None]:
    """Any host synchronisation raises meanwhile (a process-wide mode: hold the device alone)."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    except RuntimeError as e:
        raise RuntimeError(f"the graph route's step synchronises with the host, which a capture cannot: {e}") from e
    finally:
        torch.cuda.set_sync_debug_mode(before)


def host_batches(cfg: dict[str, Any], rb: EnvIndependentReplayBuffer, n_steps: int) -> Iterator[dict[str, Tensor]]:
    """The batches of `n_steps` gradient steps, drawn from the buffer as SheepRL's `sample_batches` draws them but
    left on the host in the buffer's dtypes: `GraphedStep` copies them to the device through pinned memory, where they
    become float32 (uint8 pixels cross the bus at a quarter of their float size, and no copy waits for the GPU)."""
    algo = cfg.algo
    for first in range(0, n_steps, MAX_SAMPLED_BATCHES):
        n_samples = min(MAX_SAMPLED_BATCHES, n_steps - first)
        sample = rb.sample_tensors(
            algo.per_rank_batch_size,
            sequence_length=algo.per_rank_sequence_length,
            n_samples=n_samples,
            from_numpy=cfg.buffer.from_numpy,
            online=cfg.buffer.online,
        )
        for i in range(n_samples):
            yield {k: v[i] for k, v in sample.items()}
