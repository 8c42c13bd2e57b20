"""The graph route (`algo.compile_graph`, `jepa_dreamer/graphed.py`) on the CPU, where it runs the step it captures on a
GPU without the capture: the plain step's updates bit for bit, no host synchronisation of its own, state that a
replayed graph can keep (updated in place), checkpoints that resume, and the batches it samples on the host."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v2.utils import sample_batches
from sheeprl.data.buffers import EnvIndependentReplayBuffer, SequentialReplayBuffer
from torch.profiler import ProfilerActivity, profile

from jepa_dreamer.graphed import WARMUP_STEPS, check_graph_route, host_batches
from jepa_dreamer.learner import Learner
from jepa_dreamer.metrics import MetricMeans
from jepa_dreamer.presets import output_overrides
from jepa_dreamer.runner import compose_config, run
from tests.helpers import (
    ACTIONS,
    CPU_ONLY,
    DATA_DEPENDENT_SHAPE,
    OBS_SPACE,
    assert_identical,
    host_reads,
    resolved_cfg,
    synthetic_batch,
)

# The tiny model with JEPA, imagining 5 steps instead of 15: every op of the step runs, a third as many times
FAST = ("algo.horizon=5",)
STEPS = 3


pytestmark = pytest.mark.usefixtures("no_distribution_validation")


def _learner(graph: bool, *overrides: str, state: dict[str, Any] | None = None) -> Learner:
    torch.manual_seed(0)
    cfg = resolved_cfg(*FAST, f"algo.compile_graph={graph}", *overrides)
    fabric = Fabric(accelerator="cpu", devices=1, precision=cfg.fabric.precision)
    return Learner(fabric, cfg, OBS_SPACE, (ACTIONS,), is_continuous=True, state=state)


class _Sink:
    """A metric sink that keeps every value as it is given, by reference (as `MetricMeans` keeps its first one): a
    value that a later step overwrites in place would show up changed."""

    def __init__(self) -> None:
        self.values: defaultdict[str, list[torch.Tensor]] = defaultdict(list)

    def update(self, name: str, value: torch.Tensor) -> None:
        self.values[name].append(value)


def _step(learner: Learner, step: int, sink: Any = None, reseed: bool = True) -> None:
    if reseed:
        torch.manual_seed(1000 + step)
    learner.train_step(synthetic_batch(step), sink, measure_ratio=False)


def _trained_state(learner: Learner) -> dict[str, Any]:
    """What a gradient step changes, as a checkpoint holds it, without the optimisers' `capturable` flags: the graph
    route sets them (fused Adam computes the same update either way)."""
    state = copy.deepcopy(learner.state_dict())
    for key in ("world_optimizer", "actor_optimizer", "critic_optimizer"):
        for group in state[key]["param_groups"]:
            group.pop("capturable")
    return state


@pytest.mark.slow
def test_graph_route_trains_exactly_like_the_plain_step_and_keeps_its_state_in_place():
    plain, graph = _learner(False), _learner(True)
    assert_identical(_trained_state(graph), _trained_state(plain), "initial")
    sinks = {plain: _Sink(), graph: _Sink()}
    low = plain.moments.low
    for learner, sink in sinks.items():
        # Seeded once: each step draws on from where the last one left the random stream, as in a run
        torch.manual_seed(1000)
        for step in range(STEPS):
            _step(learner, step, sink, reseed=False)
            if step == 0 and learner is graph:  # the optimisers' state exists from the first step on
                before = {name: (t, t.data_ptr()) for name, t in graph.named_state()}
    # The CPU runs the captured step's very code, in the same order, on the same random stream: bit for bit
    assert_identical(_trained_state(graph), _trained_state(plain), f"after {STEPS} steps")
    # SheepRL's return normaliser replaces its state at every call: left so, a replay would read stale statistics
    assert plain.moments.low is not low
    after = dict(graph.named_state())
    assert after.keys() == before.keys()
    moved = [n for n, (t, ptr) in before.items() if after[n] is not t or after[n].data_ptr() != ptr]
    assert not moved, moved
    # The metrics of every step, as the sink got them (an output overwritten by the next step would differ here)
    graph_sink, plain_sink = sinks[graph], sinks[plain]
    assert "Grads/encoder_jepa_over_recon" not in graph_sink.values
    assert graph_sink.values.keys() == plain_sink.values.keys() >= {"Loss/jepa_loss", "Loss/policy_loss", "Grads/actor"}
    for name, values in plain_sink.values.items():
        assert len(graph_sink.values[name]) == STEPS, name
        for step, (got, want) in enumerate(zip(graph_sink.values[name], values)):
            assert torch.equal(got, want.float()), (name, step)
    # The steps did train (the comparison is not between two untouched copies), and each optimiser counted each one
    for optimizer in (graph.world_optimizer, graph.actor_optimizer, graph.critic_optimizer):
        assert {int(s["step"]) for s in optimizer.state.values()} == {STEPS}
    assert graph.moments.low.item() != 0 and graph.gradient_steps == STEPS


def test_graph_route_refuses_a_step_whose_state_is_not_on_its_device():
    learner = _learner(True)
    # As SheepRL's normaliser was before the learner moved it: its state elsewhere than the step's device
    learner.moments.to("meta")
    with pytest.raises(ValueError, match=r"on cpu, but moments\.low, moments\.high are elsewhere"):
        _step(learner, 0)
    # And before the capture, once the warm-up steps have made the optimisers' states
    learner = _learner(True)
    for step in range(WARMUP_STEPS):
        _step(learner, step)
    optimizer_state = next(iter(learner.actor_optimizer.state.values()))
    optimizer_state["exp_avg"] = optimizer_state["exp_avg"].to("meta")
    with pytest.raises(ValueError, match=r"actor_optimizer\.0\.exp_avg are elsewhere"):
        _step(learner, WARMUP_STEPS)


def _host_reads(learner: Learner) -> tuple[Counter[str], set[str]]:
    """The host reads of one whole gradient step (the second: the first creates the optimisers' state), by the op that
    made them (the outermost one of `CPU_ONLY`, or a tensor's truth value with the function that asked for it), and
    the ops it ran."""
    _step(learner, 0)
    metrics = MetricMeans(resolved_cfg().metric.aggregator.metrics)
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        _step(learner, 1, metrics)
    return host_reads(prof.events()), {event.name for event in prof.events()}


@pytest.mark.slow
def test_graph_route_step_has_no_host_sync_of_its_own():
    plain, _ = _host_reads(_learner(False))
    graph, graph_ops = _host_reads(_learner(True))
    # Only the reads that the plain step makes too, and only those that CUDA leaves to the device
    assert not graph - plain, (graph, plain)
    assert set(graph) <= CPU_ONLY, graph
    # And no output whose shape depends on the data (a sync on CUDA)
    assert not graph_ops & DATA_DEPENDENT_SHAPE


@pytest.mark.slow
def test_a_checkpoint_of_the_graph_route_resumes_identically():
    trained = _learner(True)
    for step in range(2):
        _step(trained, step)
    checkpoint = copy.deepcopy(trained.state_dict())
    # The checkpoint holds what the steps left, not what the learner was built with
    assert checkpoint["per_rank_gradient_steps"] == 2 and checkpoint["moments"]["low"].item() != 0
    assert checkpoint["actor_optimizer"]["state"][0]["step"].item() == 2
    resumed = _learner(True, state=checkpoint)
    assert_identical(_trained_state(resumed), _trained_state(trained), "resumed")
    for step in range(2, 4):
        _step(trained, step)
        _step(resumed, step)
        assert_identical(_trained_state(resumed), _trained_state(trained), f"step {step}")
    # A plain run's checkpoint holds optimisers that a capture refuses: resumed on the graph route, they capture
    resumed_plain = _learner(True, state=copy.deepcopy(_learner(False).state_dict()))
    for optimizer in (resumed_plain.world_optimizer, resumed_plain.actor_optimizer, resumed_plain.critic_optimizer):
        assert all(group["capturable"] for group in optimizer.param_groups)


def test_graph_route_refuses_what_a_capture_cannot_do():
    fabric = Fabric(accelerator="cpu", devices=1)
    check_graph_route(fabric, resolved_cfg("algo.compile_graph=True"))
    for override, message in (
        ("algo.compile.enabled=True", "choose one compiled route"),
        ("fabric.precision=16-mixed", "use bf16"),
        ("distribution.validate_args=True", "reads every sample on the host"),
    ):
        with pytest.raises(ValueError, match=message):
            check_graph_route(fabric, resolved_cfg("algo.compile_graph=True", override))
    learner = _learner(True)
    with pytest.raises(ValueError, match="does not measure the encoder-gradient ratio"):
        learner.train_step(synthetic_batch(0), None, measure_ratio=True)
    _step(learner, 0)
    with pytest.raises(ValueError, match="batches of one shape"):
        learner.train_step({k: v[:2] for k, v in synthetic_batch(1).items()}, None, measure_ratio=False)


def _buffer(cfg: Any) -> EnvIndependentReplayBuffer:
    """A buffer of 2 environments with 40 random steps each, drawn from its own seeded random stream."""
    rb = EnvIndependentReplayBuffer(64, n_envs=2, memmap=False, buffer_cls=SequentialReplayBuffer, seed=3)
    g = np.random.default_rng(0)
    rb.add(
        {
            "rgb": g.integers(0, 256, (40, 2, 3, 64, 64), dtype=np.uint8),
            "actions": g.random((40, 2, ACTIONS), dtype=np.float32),
            "rewards": g.random((40, 2, 1), dtype=np.float32),
            "terminated": np.zeros((40, 2, 1), np.float32),
            "truncated": np.zeros((40, 2, 1), np.float32),
            "is_first": np.zeros((40, 2, 1), np.float32),
        }
    )
    return rb


def test_host_batches_draw_what_sample_batches_draws_left_in_the_buffers_dtypes():
    cfg = resolved_cfg("algo.per_rank_sequence_length=8", "algo.per_rank_batch_size=3")
    fabric = Fabric(accelerator="cpu", devices=1)
    # More steps than one draw from the buffer holds (16): the second draw is compared too
    theirs = list(sample_batches(fabric, cfg, _buffer(cfg), 18))
    ours = list(host_batches(cfg, _buffer(cfg), 18))
    assert len(ours) == len(theirs) == 18
    for step, (got, want) in enumerate(zip(ours, theirs)):
        assert got["rgb"].dtype == torch.uint8 and got["rgb"].shape == (8, 3, 3, 64, 64), step
        assert_identical({k: v.float() for k, v in got.items()}, want, f"batch {step}")


@pytest.mark.slow
def test_training_loop_on_the_graph_route_logs_what_the_plain_route_logs(tmp_path, tiny_run):
    # A real tiny run of each route from the same seed: the loop samples the same batches for both on a CPU, leaves
    # the encoder-gradient ratio out on the graph route and feeds the sink the same values from its static output
    logged: dict[bool, list[dict[str, float]]] = {}
    for graph in (False, True):
        overrides = [*tiny_run, *FAST, "algo.per_rank_sequence_length=16", "algo.total_steps=128"]
        overrides += ["algo.eval.episodes=0", "checkpoint.every=0"]
        overrides += [f"algo.compile_graph={graph}", *output_overrides(str(tmp_path), f"graph_{graph}")]
        logged[graph] = []
        result = run(compose_config(overrides), on_log=lambda step, values, graph=graph: logged[graph].append(values))
        assert result.gradient_steps > 0
    ratio = "Grads/encoder_jepa_over_recon"
    assert len(logged[True]) == len(logged[False]) == 2  # at 64 steps (before training) and at 128
    assert {ratio, "Loss/jepa_loss", "Loss/policy_loss", "Grads/world_model"} <= set(logged[False][-1])
    for got, want in zip(logged[True], logged[False]):
        expected = {k: v for k, v in want.items() if not k.startswith("Time/") and k != ratio}
        assert ratio not in got and {k: got[k] for k in expected} == expected
