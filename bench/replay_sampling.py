"""Does SheepRL's replay sampling serialise trials that train side by side in one process?

Every gradient step samples a batch of 16 sequences of 64 frames (64x64x3, ~12 MB) from SheepRL's numpy buffer on the
host. Trials in threads of one process only overlap there if the copy runs without Python's GIL. This times T
threads sampling at once against one, on this machine's CPU:
    python bench/replay_sampling.py [--threads 1,2,4] [--samples 30]
A ratio near T means the sampling overlaps (the GIL is released in the copies); near 1, it serialises.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch
from sheeprl.data.buffers import EnvIndependentReplayBuffer, SequentialReplayBuffer

ENVS, SIZE, BATCH, SEQUENCE = 4, 40_000, 16, 64


def filled_buffer(seed: int) -> EnvIndependentReplayBuffer:
    rb = EnvIndependentReplayBuffer(
        SIZE // ENVS, n_envs=ENVS, memmap=False, buffer_cls=SequentialReplayBuffer, seed=seed
    )
    rng = np.random.default_rng(seed)
    chunk = 1000
    for _ in range(SIZE // ENVS // chunk):
        rb.add(
            {
                "rgb": rng.integers(0, 256, (chunk, ENVS, 3, 64, 64), dtype=np.uint8),
                "actions": rng.random((chunk, ENVS, 6), dtype=np.float32),
                "rewards": rng.random((chunk, ENVS, 1), dtype=np.float32),
                "terminated": np.zeros((chunk, ENVS, 1), np.float32),
                "truncated": np.zeros((chunk, ENVS, 1), np.float32),
                "is_first": np.zeros((chunk, ENVS, 1), np.float32),
            }
        )
    return rb


def sample(rb: EnvIndependentReplayBuffer) -> None:
    batch = rb.sample_tensors(batch_size=BATCH, sequence_length=SEQUENCE, n_samples=1, device="cpu", from_numpy=True)
    for v in batch.values():
        v[0].float()


def samples_per_s(buffers: list[EnvIndependentReplayBuffer], samples: int) -> float:
    def work(rb: EnvIndependentReplayBuffer) -> None:
        for _ in range(samples):
            sample(rb)

    threads = [threading.Thread(target=work, args=(rb,)) for rb in buffers]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(buffers) * samples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--samples", type=int, default=30, help="batches per thread")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(1)
    buffers = [filled_buffer(seed) for seed in range(max(counts))]
    sample(buffers[0])  # warm-up
    alone = samples_per_s(buffers[:1], args.samples)
    print(f"1 thread: {alone:.1f} batches/s ({1000 / alone:.1f} ms per batch)")
    for t in counts:
        if t > 1:
            rate = samples_per_s(buffers[:t], args.samples)
            print(f"{t} threads: {rate:.1f} batches/s, {rate / alone:.2f}x one thread")


if __name__ == "__main__":
    main()
