"""The next replay batch drawn while the current gradient step runs (`algo.prefetch`).

An iteration's batches come from a generator that draws from the replay buffer, converts them and copies them to the
device (SheepRL's `sample_batches`, or `host_batches` for the graph routes). `Prefetched` runs that generator in a
thread of its own, one batch ahead of the steps that consume them: the same generator in the same order, so the very
batches of the loop without it. The buffer is not written meanwhile (the environments step before the learning), and
its draws use its own random stream, not torch's, which the steps use. On a GPU the thread queues its copies on the
consumer's stream, so that a step reads a batch after its copy.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")

# What the thread puts after the last item
_END = object()


class Prefetched(Generic[T]):
    """Iterates over `source` in a thread of its own, at most `depth` items ahead of the consumer. An exception of the
    source is raised at the consumer, in its place in the sequence; `close` stops the thread early."""

    def __init__(self, source: Iterator[T], device: torch.device, depth: int = 1) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._fill, args=(source, stream), daemon=True)
        self._thread.start()

    def _fill(self, source: Iterator[T], stream: torch.cuda.Stream | None) -> None:
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for item in source:
                    if not self._put(item):
                        return
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)
            return
        self._put(_END)

    def _put(self, item: object) -> bool:
        """Waits for room in the queue; False when the consumer closed it meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        try:
            while (item := self._queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# `algo.prefetch`: none; `iteration`, the batches of an iteration (the loop's very batches); `ahead`, one stream of
# batches across iterations, drawn before the newest transitions reach the buffer
PREFETCH_MODES = ("none", "iteration", "ahead")


class GuardedAdds:
    """The replay buffer for the environments' loop: its `add` waits for a draw in progress (`lock`)."""

    def __init__(self, rb: Any, lock: threading.Lock) -> None:
        self.rb = rb
        self.lock = lock

    def add(self, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            self.rb.add(*args, **kwargs)


class BatchFeed(Generic[T]):
    """The batches of every iteration's gradient steps, drawn by `draw(n_steps)` as `mode` says (`PREFETCH_MODES`).

    With `ahead`, one thread draws a stream of batches for all iterations, a batch ahead of the steps, in draws of as
    many batches as the last iteration took: the next iteration's draw runs during this iteration's steps, so it
    misses the transitions that the next iteration adds before its steps (one policy step of each environment). The
    buffer's adds wait for a draw in progress (`adds`), as must any other write to the buffer (`lock`)."""

    def __init__(self, draw: Callable[[int], Iterator[T]], mode: str, device: torch.device) -> None:
        if mode not in PREFETCH_MODES:
            raise ValueError(f"algo.prefetch={mode}: choose from {', '.join(PREFETCH_MODES)}")
        self.draw = draw
        self.mode = mode
        self.device = device
        self.lock = threading.Lock()
        self._stream: Prefetched[T] | None = None
        self._batches: Iterator[T] | None = None
        self._draw_size = 1

    def adds(self, rb: Any) -> Any:
        """The buffer the environments add to: guarded while a draw may run beside them."""
        return GuardedAdds(rb, self.lock) if self.mode == "ahead" else rb

    def batches(self, n_steps: int) -> Iterable[T]:
        """This iteration's `n_steps` batches."""
        if self.mode == "none":
            return self.draw(n_steps)
        if self.mode == "iteration":
            return Prefetched(self.draw(n_steps), self.device)
        self._draw_size = n_steps
        if self._stream is None:  # at the first gradient step: the buffer holds enough transitions from then on
            self._stream = Prefetched(self._draws(), self.device)
            self._batches = iter(self._stream)
        return itertools.islice(self._batches, n_steps)

    def _draws(self) -> Iterator[T]:
        """Draws of `_draw_size` batches, one after the other, each from the buffer under the lock."""
        while True:
            yield from _locked(self.draw(self._draw_size), self.lock)

    def close(self) -> None:
        """Stop the stream of `ahead`."""
        if self._stream is not None:
            self._stream.close()


def _locked(source: Iterator[T], lock: threading.Lock) -> Iterator[T]:
    """`source`, each item made under `lock` (the first one draws from the buffer)."""
    while True:
        with lock:
            item = next(source, _END)
        if item is _END:
            return
        yield item  # type: ignore[misc]
