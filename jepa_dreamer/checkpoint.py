"""Checkpoints that a kill at any moment leaves readable.

SheepRL's `CheckpointCallback` writes the checkpoint and its replay-buffer file in place: a kill during the write
leaves a torn file where the newest checkpoint was, and with `checkpoint.keep_last=1` the only one. Our callback has
SheepRL's write both into a staging folder, then renames them into place (the buffer first, the checkpoint last: a
checkpoint is never there without its buffer), and only then deletes the ones beyond `keep_last`.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric import Fabric
from sheeprl.utils import fs
from sheeprl.utils.callback import CheckpointCallback

from jepa_dreamer.checkpoint_files import STAGING


def _commit(source: str, target: str) -> None:
    """Move a finished file into place: flushed to disk first, so that even a crash of the machine leaves either the
    old state or the whole new file."""
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(source, target)


class AtomicCheckpointCallback:
    """SheepRL's checkpoint callback (`fabric.callbacks`), written aside then renamed; same arguments and call."""

    def __init__(self, keep_last: int | None = None, memmap_buffer: str = "reference") -> None:
        # SheepRL's writes (buffers by reference or copy, the episode truncation); it deletes nothing itself
        self.inner = CheckpointCallback(keep_last=None, memmap_buffer=memmap_buffer)
        self.keep_last = keep_last

    def on_checkpoint_coupled(
        self, fabric: Fabric, ckpt_path: str, state: dict[str, Any], replay_buffer: Any = None
    ) -> None:
        if fs.is_url(ckpt_path):  # a remote filesystem renames by copying: nothing to gain there
            self.inner.on_checkpoint_coupled(fabric, ckpt_path, state, replay_buffer)
            return
        folder = fs.parent(ckpt_path)
        # <log_dir>/checkpoint_staging/checkpoint/<ckpt>: SheepRL puts the buffers in checkpoint_staging/
        # checkpoint_buffers. The checkpoint names its buffers there; once they are moved, SheepRL's loader finds them
        # in the checkpoint_buffers folder beside the checkpoint's folder (`BufferFiles`)
        staged = os.path.join(fs.parent(folder), STAGING, "checkpoint", fs.basename(ckpt_path))
        self.inner.on_checkpoint_coupled(fabric, staged, state, replay_buffer)
        if replay_buffer is not None:
            _commit(fs.buffer_path(staged, fabric.global_rank), fs.buffer_path(ckpt_path, fabric.global_rank))
            fabric.barrier()
        if fabric.is_global_zero:
            _commit(staged, ckpt_path)
            if self.keep_last:
                checkpoints = fs.checkpoints(folder)
                for old in checkpoints[: max(len(checkpoints) - self.keep_last, 0)]:
                    fs.remove_checkpoint(old, folder)
