"""Replay batches drawn in a thread (`algo.prefetch`, `jepa_dreamer/prefetch.py`): the loop's very batches where the
order allows, failures raised where they belong, and adds that wait for a draw ahead."""

from __future__ import annotations

import time

import pytest
import torch
from lightning.fabric import Fabric
from sheeprl.algos.dreamer_v2.utils import sample_batches

from jepa_dreamer.prefetch import BatchFeed, GuardedAdds, Prefetched
from jepa_dreamer.presets import output_overrides
from jepa_dreamer.runner import compose_config, run
from tests.helpers import assert_identical, resolved_cfg
from tests.test_graphed import _buffer

CPU = torch.device("cpu")


def test_prefetched_batches_are_the_ones_sampled_in_the_loop():
    cfg = resolved_cfg("algo.per_rank_sequence_length=8", "algo.per_rank_batch_size=3")
    fabric = Fabric(accelerator="cpu", devices=1)
    # More steps than one draw from the buffer holds (16): the second draw is compared too
    theirs = list(sample_batches(fabric, cfg, _buffer(cfg), 18))
    ours = list(Prefetched(sample_batches(fabric, cfg, _buffer(cfg), 18), CPU))
    assert len(ours) == len(theirs) == 18
    for step, (got, want) in enumerate(zip(ours, theirs)):
        assert_identical(got, want, f"batch {step}")


def test_a_failed_draw_is_raised_in_its_place_and_close_stops_the_thread():
    def failing():
        yield 1
        raise RuntimeError("the buffer is empty")

    got = []
    with pytest.raises(RuntimeError, match="the buffer is empty"):
        for item in Prefetched(failing(), CPU):
            got.append(item)
    assert got == [1]
    # A consumer that stops early (a step raised): the thread, blocked on a full queue, ends
    prefetched = Prefetched(iter(range(100)), CPU)
    assert next(iter(prefetched)) == 0
    prefetched.close()
    assert not prefetched._thread.is_alive()


def test_ahead_is_one_stream_of_batches_whose_draws_hold_the_buffers_adds():
    events: list[str] = []
    sizes: list[int] = []

    class Buffer:
        def add(self, data: int) -> None:
            events.append("add")

    def draw(n_steps: int):
        sizes.append(n_steps)
        events.append("draw")
        time.sleep(0.1)  # sampling from the buffer, before the first batch
        events.append("drawn")
        yield from range(n_steps)

    feed = BatchFeed(draw, "ahead", CPU)
    buffer = feed.adds(Buffer())
    assert isinstance(buffer, GuardedAdds)
    assert list(feed.batches(3)) == [0, 1, 2]
    time.sleep(0.05)  # the next draw (of 3, as the last iteration took) runs meanwhile
    buffer.add(7)
    # The stream goes on across iterations: the rest of a draw, then a draw of the size last asked for
    assert list(feed.batches(2)) == [0, 1]
    assert list(feed.batches(2)) == [2, 0]
    feed.close()
    assert sizes[:3] == [3, 3, 2]
    # No add while a draw reads the buffer
    assert "add" in events and events[events.index("add") - 1] == "drawn", events
    assert not isinstance(BatchFeed(draw, "iteration", CPU).adds(Buffer()), GuardedAdds)
    with pytest.raises(ValueError, match="choose from none, iteration, ahead"):
        BatchFeed(draw, "always", CPU)


@pytest.mark.slow
def test_training_with_batches_drawn_during_the_steps_trains_as_without(tmp_path, tiny_run):
    # A real tiny run per mode from the same seed: `iteration` gives the loop the batches it draws without a thread,
    # so it logs the same values; `ahead` draws before the newest transitions arrive: other batches, as many steps
    logged: dict[str, list[dict[str, float]]] = {}
    steps = {}
    for mode in ("none", "iteration", "ahead"):
        overrides = [*tiny_run, "algo.horizon=5", "algo.per_rank_sequence_length=16", "algo.total_steps=128"]
        overrides += ["algo.eval.episodes=0", "checkpoint.every=0", f"algo.prefetch={mode}"]
        overrides += output_overrides(str(tmp_path), mode)
        logged[mode] = []
        result = run(compose_config(overrides), on_log=lambda step, values, mode=mode: logged[mode].append(values))
        steps[mode] = result.gradient_steps
    assert steps["none"] == steps["iteration"] == steps["ahead"] > 0

    def losses(mode: str) -> dict[str, float]:
        return {k: v for k, v in logged[mode][-1].items() if k.startswith("Loss/")}

    assert losses("none") and losses("iteration") == losses("none")
    assert losses("ahead") != losses("none")
