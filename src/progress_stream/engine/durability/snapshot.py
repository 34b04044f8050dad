"""State files: atomic snapshots of the stream table, and the rules that keep them from being lost.

A snapshot is written to a temporary file, fsynced, renamed over the old one, and the folder fsynced.
At start a state file is either restored, or refused with one line naming the file and what is wrong
(the start fails and the file is left untouched), or, with ``on_mismatch="discard"``, moved aside to
``NAME.rejected-<UTC time>``: the server never overwrites a state file it did not load.

A server killed while writing a snapshot leaves its temporary file (``.NAME.xxxxxxxx``) beside the state
file; the next start removes such files, and only those: a name write_snapshot makes, a plain file.
One state file belongs to one server, so at start no other writer can own them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from progress_stream.engine.streams import ADDED_ARRAYS, DEFAULT_OWNER, SLOT_ARRAYS, fill_added

log = logging.getLogger(__name__)

#: 2: the accepted chunks' records (retries are checked against them); 3: owners; 4: frame rates, and the
#: band and place in the action of each retained answer; 5: chunk digests by :func:`.streams.chunk_digests`
SNAPSHOT_VERSION = 5
#: The arrays of a snapshot, one row per stream: ``owners`` holds the name of the key that created each
#: (never a key).
ARRAYS = ("ids", "owners", "done_seq", "created_at", *SLOT_ARRAYS)
#: Versions still read, and the arrays they lack: a version-2 file has no owners (its streams are the
#: default tenant's); files before version 4 lack the :data:`ADDED_ARRAYS` (see :func:`fill_added`).
READS = {2: ("owners", *ADDED_ARRAYS), 3: ADDED_ARRAYS, 4: (), SNAPSHOT_VERSION: ()}
ON_MISMATCH = ("fail", "discard")


class SnapshotError(RuntimeError):
    """A state file that cannot be restored or written; one line that names the file."""


def identity(checkpoint_sha256: str, window: int) -> dict:
    """What a snapshot must match to be restored: the model it was written for and the retained window."""
    return {"checkpoint_sha256": checkpoint_sha256, "window": window}


def temp_name(path: Path) -> re.Pattern:
    """The names of :func:`write_snapshot`'s temporary files for ``path``: ``tempfile.mkstemp`` with the
    prefix ``.NAME.`` adds 8 characters of ``[a-z0-9_]``."""
    return re.compile(rf"\.{re.escape(Path(path).name)}\.[a-z0-9_]{{8}}")


def remove_stale_temp_files(path: Path) -> int:
    """Remove the temporary files that snapshots of ``path`` left when killed mid-write (only names
    :func:`write_snapshot` makes, only plain files); how many. One that cannot be removed is logged."""
    path, pattern, removed = Path(path), temp_name(path), 0
    try:
        entries = list(os.scandir(path.parent))
    except OSError:  # no folder yet (or not one): nothing left there; check_writable judges the path
        return 0
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError as exc:
                log.warning("%s: cannot remove a temporary file left by a snapshot: %s", path, exc)
    if removed:
        log.info("%s: removed %d temporary files left by an interrupted snapshot", path, removed)
    return removed


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
    """The arrays and header of a snapshot; anything unreadable or inconsistent is a :class:`SnapshotError`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            version = meta.get("version") if isinstance(meta, dict) else meta
            if not isinstance(version, int) or version not in READS:
                readable = " or ".join(str(v) for v in READS)
                raise SnapshotError(f"{path}: state file version {version!r}, this server reads version {readable}")
            arrays = {k: data[k] for k in ARRAYS if k not in READS[version]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SnapshotError(f"{path}: not a readable state file ({reason[:200]})") from exc
    if "owners" not in arrays:
        arrays["owners"] = np.full(len(arrays["ids"]), DEFAULT_OWNER)
    if "seen" not in arrays:
        fill_added(arrays, arrays["done_seq"])
    if version < SNAPSHOT_VERSION:  # their chunks' digests were another hash: retries of them cannot be checked
        arrays["chunk_seq"] = np.zeros_like(arrays["chunk_seq"])
    rows = {k: len(v) for k, v in arrays.items()}
    if len(set(rows.values())) != 1:
        raise SnapshotError(f"{path}: state file arrays disagree on the number of streams: {rows}")
    return arrays, meta


def check_writable(path: Path) -> None:
    """Create and remove a file beside ``path``, so that a state file that cannot be written fails the start."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot write the state file there ({exc.strerror or exc})") from exc


def load_state(
    path: Path, expected: dict, max_streams: int, on_mismatch: str = "fail"
) -> tuple[dict[str, np.ndarray], dict] | None:
    """The snapshot at ``path`` if it can be restored, ``None`` if there is none (or it was moved aside).

    A corrupt file, one written for another model or window (``expected``, see :func:`identity`), or
    one with more streams than ``max_streams`` raises :class:`SnapshotError` and is left untouched,
    unless ``on_mismatch`` is ``discard``: then it is renamed ``NAME.rejected-<UTC time>``. Temporary
    files a killed snapshot left are removed first (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    if on_mismatch not in ON_MISMATCH:
        raise SnapshotError(f"state_on_mismatch must be one of {', '.join(ON_MISMATCH)}, not {on_mismatch!r}")
    remove_stale_temp_files(path)
    check_writable(path)
    if not path.exists():
        return None
    try:
        arrays, meta = read_snapshot(path)
        differ = [f"{k} {meta.get(k)!r} (this server: {v!r})" for k, v in expected.items() if meta.get(k) != v]
        if differ:
            raise SnapshotError(f"{path}: state file written for another configuration: {'; '.join(differ)}")
        if len(arrays["ids"]) > max_streams:
            raise SnapshotError(f"{path}: state file holds {len(arrays['ids'])} streams, max_streams is {max_streams}")
    except SnapshotError as exc:
        if on_mismatch == "fail":
            raise
        aside = path.with_name(f"{path.name}.rejected-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        os.replace(path, aside)
        log.warning("%s; moved aside to %s, starting empty", exc, aside)
        return None
    return arrays, meta
