"""Atomic file output: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def naming(path: Path, err: OSError) -> OSError:
    """``err`` (its errno and reason) about ``path`` rather than the temporary file."""
    return OSError(err.errno, err.strerror or str(err), str(path))


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; on success it is
    fsynced and renamed to ``path`` (readers see the old file or the new one, never a part);
    on failure it is removed. An ``OSError`` (a full disk, no permission) names ``path``, not
    the temporary file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as err:
        raise naming(path, err) from err
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise naming(path, err) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
