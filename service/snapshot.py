"""Atomic snapshot files of the stream table: temp file, fsync, rename, fsync the folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

SNAPSHOT_VERSION = 1


def write_snapshot(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"version": SNAPSHOT_VERSION, **meta})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(header), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_snapshot(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"{path}: snapshot version {meta.get('version')}, expected {SNAPSHOT_VERSION}")
        return {k: data[k] for k in data.files if k != "meta"}, meta
