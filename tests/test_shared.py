"""What runs side by side in one process hold together (`jepa_dreamer/shared.py`): the device, which a capture takes
alone, and Lightning's backward flag under mixed precision."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from lightning.fabric import Fabric

from jepa_dreamer.shared import GpuWork, SideBySideFabric


def _start(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_a_thread_alone_waits_for_the_runs_to_pause_and_holds_them_there():
    work, stop = GpuWork(), threading.Event()
    iterations = [0, 0]

    def run(i: int) -> None:
        with work.shared():
            while not stop.is_set():
                work.pause()
                iterations[i] += 1
                time.sleep(0.002)

    runs = [_start(run, i) for i in range(2)]
    while min(iterations) < 5:
        time.sleep(0.01)
    with work.shared():  # the capturing run holds a share of its own, as it does inside its training loop
        with work.alone():
            paused = list(iterations)
            time.sleep(0.1)
            assert iterations == paused  # nobody else ran meanwhile
        time.sleep(0.1)
    assert min(a - b for a, b in zip(iterations, paused)) > 5  # and they ran on afterwards
    stop.set()
    for thread in runs:
        thread.join(5)
        assert not thread.is_alive()


def test_runs_asking_to_be_alone_at_once_take_turns():
    work = GpuWork()
    inside, most = [0], [0]
    lock = threading.Lock()

    def run() -> None:
        with work.shared():
            for _ in range(20):
                work.pause()
                with work.alone():
                    with lock:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.001)
                    with lock:
                        inside[0] -= 1

    runs = [_start(run) for _ in range(3)]
    for thread in runs:
        thread.join(20)
        assert not thread.is_alive(), "the runs waited for each other"
    assert most[0] == 1


@pytest.mark.parametrize("fabric_class", [Fabric, SideBySideFabric])
def test_backward_passes_of_two_threads_under_bf16_mixed(fabric_class):
    # Thread A's backward pass stops between two of its modules' outputs until thread B's whole `fabric.backward`
    # has run (or 0.5 s have passed): Lightning's own Fabric lets B clear the flag that A's next output checks
    b_done, a_waiting = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def setup(fabric: Fabric) -> tuple[torch.nn.Module, torch.nn.Module]:
        return fabric.setup_module(torch.nn.Linear(4, 4)), fabric.setup_module(torch.nn.Linear(4, 1))

    def a() -> None:
        fabric = fabric_class(accelerator="cpu", devices=1, precision="bf16-mixed")
        first, second = setup(fabric)
        middle = first(torch.randn(8, 4)) * 1.0
        middle.register_hook(lambda grad: (a_waiting.set(), b_done.wait(0.5)) and None)
        try:
            fabric.backward(second(middle).float().square().mean())
        except RuntimeError as e:
            errors.append(e)

    def b() -> None:
        fabric = fabric_class(accelerator="cpu", devices=1, precision="bf16-mixed")
        first, second = setup(fabric)
        a_waiting.wait(5)
        fabric.backward(second(first(torch.randn(8, 4))).float().square().mean())
        b_done.set()

    threads = [_start(a), _start(b)]
    for thread in threads:
        thread.join(10)
    if fabric_class is Fabric:
        assert errors and "fabric.backward(loss)" in str(errors[0])
    else:
        assert not errors and b_done.is_set()
