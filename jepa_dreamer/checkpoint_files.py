"""A run's checkpoint files as they lie on disk: the policy step in a name, the folder they are written aside in,
whether one can be read. The standard library only: the search reads them without loading the training stack."""

from __future__ import annotations

import zipfile
from pathlib import Path

# Beside a run's `checkpoint` folder: where a checkpoint and its buffers are written before they are renamed into place
STAGING = "checkpoint_staging"


def checkpoint_step(path: Path) -> int:
    """The policy step of a SheepRL checkpoint, from its name `ckpt_<step>_<rank>.ckpt`."""
    return int(path.stem.split("_")[1])


def unreadable(path: Path) -> str | None:
    """Why the checkpoint `path` (or one of its replay-buffer files) cannot be read, or None when it can: every
    member of their archives is read and checked against its CRC, without unpickling anything."""
    files = [path, *sorted(path.parents[1].glob(f"checkpoint_buffers/ckpt_{checkpoint_step(path)}_buffer_rank_*.pt"))]
    for file in files:
        try:
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as e:
            return f"{file}: {type(e).__name__}: {e}"
        if bad is not None:
            return f"{file}: {bad} is corrupt"
    return None
