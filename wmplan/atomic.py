"""Atomic file writes: a reader of ``path`` sees its old content or all of the new one, never part.

    with atomic_path("out/video.gif") as tmp:
        iio.imwrite(tmp, frames)
    write_json_atomic("out/results.json", results)

``exclusive_lock(path)`` serialises processes that would build the same output.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to: on success it replaces ``path``,
    on an exception it is removed and ``path`` is left untouched.

    The temporary file sits next to ``path`` (a rename within a directory is atomic) and ends
    in ``path``'s suffix, so writers that pick a format by extension still can. The new file
    is flushed to disk before the rename, and the rename after it. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_json_atomic(
    path: str | os.PathLike, obj: Any, indent: int = 1, sort_keys: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """``json.dump`` ``obj`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=default)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a directory after a rename inside it, to disk."""
    if os.name == "nt" and Path(path).is_dir():  # Windows cannot open a directory; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing): processes that would
    build the same output take turns. The OS releases it if the holder dies. Without fcntl
    (Windows) no lock is taken: concurrent builders are not expected there."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
