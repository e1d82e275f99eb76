"""Keeps a run's log bounded: the head and the tail are kept, the middle is cut.

The simulation writes `logs/sim.log` through an O_APPEND descriptor it inherited from the
daemon (via its keeper), and it must go on writing while the daemon is stopped or restarted.
So the daemon is not in the data path (a pipe it drains would block, or with SIGPIPE kill, the
writer whenever no daemon reads). Instead the daemon looks at the file's size now and then and,
once it passes the cap, cuts the middle out in place:

* where the filesystem can (ext4, xfs): `fallocate(FALLOC_FL_COLLAPSE_RANGE)` removes a
  block-aligned range. The kernel does it under the inode lock, so the writer's appends are
  neither lost nor reordered and nothing is copied.
* elsewhere (tmpfs, btrfs, NFS, ...): the tail is copied down over the middle and the file is
  truncated after it. Output the writer appends in the few microseconds between the last size
  check and the truncate is lost; that is the price where the kernel offers no collapse.

Either way the end of the kept head is overwritten by a marker line saying that output was cut
there, and the file ends up about half the cap (a quarter head, a quarter tail), so it is cut
again only after the writer has produced another half cap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MIN_CAP_BYTES: Final = 64 * 1024
"""The smallest cap that leaves room for a head, a tail and the marker."""
KEEP_SHARE: Final = 4
"""The head and the tail each keep 1/KEEP_SHARE of the cap."""
COPY_CHUNK_BYTES: Final = 1024 * 1024
"""The fallback copies the tail down in chunks of this size (bounded memory)."""
COPY_MAX_ROUNDS: Final = 8
"""The fallback follows a writer still appending for at most this many rounds."""
MARKER: Final = (
    b"\n\n[... runsup cut output here to keep this log under its max_log_bytes;"
    b" the start is above, the latest output below ...]\n\n"
)

# <linux/falloc.h>
FALLOC_FL_COLLAPSE_RANGE: Final = 0x08
_OPEN_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_COLLAPSE_UNSUPPORTED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


@dataclass(frozen=True)
class Cut:
    """What one call did: bytes removed (0: nothing to do) and how."""

    removed: int
    method: str  # "collapse", "copy" or "" when nothing was cut
    size_after: int


NOTHING: Final = Cut(0, "", 0)


def bound_log(path: Path, cap: int) -> Cut:
    """Cut the middle of the log at `path` if it is larger than `cap` bytes.

    Only a regular file is touched (a symlink or anything else is left alone). Raises OSError
    for an I/O error; a missing file is nothing to do.
    """
    if cap < MIN_CAP_BYTES:
        raise ValueError(f"cap must be at least {MIN_CAP_BYTES} bytes")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return NOTHING
    if not stat.S_ISREG(st.st_mode) or st.st_size <= cap:
        return NOTHING  # the common case: one lstat
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return NOTHING
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # swapped for a symlink or FIFO
            return NOTHING
        raise
    try:
        return _bound_fd(fd, cap)
    finally:
        os.close(fd)


def _bound_fd(fd: int, cap: int) -> Cut:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size <= cap:
        return NOTHING
    block = max(st.st_blksize, 512)
    keep = cap // KEEP_SHARE
    head_end = max(block, keep - keep % block)
    cut_end = st.st_size - keep
    cut_end -= (cut_end - head_end) % block
    if cut_end <= head_end:
        return NOTHING
    _mark(fd, head_end)
    if _collapse(fd, head_end, cut_end - head_end):
        return Cut(cut_end - head_end, "collapse", os.fstat(fd).st_size)
    return _copy_down(fd, head_end, cut_end)


def _mark(fd: int, head_end: int) -> None:
    """Overwrite the end of the kept head with the marker (the same bytes at every cut)."""
    os.pwrite(fd, MARKER, head_end - len(MARKER))


def _collapse(fd: int, offset: int, length: int) -> bool:
    """FALLOC_FL_COLLAPSE_RANGE; False where the filesystem cannot do it."""
    if _fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in _COLLAPSE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err))


def _copy_down(fd: int, dest: int, src: int) -> Cut:
    """Copy [src, end) to dest, following a writer that still appends, then truncate."""
    for _ in range(COPY_MAX_ROUNDS):
        end = os.fstat(fd).st_size
        while src < end:
            chunk = os.pread(fd, min(COPY_CHUNK_BYTES, end - src), src)
            if not chunk:
                break
            os.pwrite(fd, chunk, dest)
            src += len(chunk)
            dest += len(chunk)
        if os.fstat(fd).st_size == end:
            break
    os.ftruncate(fd, dest)
    return Cut(src - dest, "copy", dest)


TAIL_BYTES: Final = 4096
"""How much of a log's end is read to quote its last lines."""


def tail_lines(path: Path, *, start: int = 0, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The lines in the last `max_bytes` of the log (none before `start`); [] if unreadable."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, end - max_bytes))
            data = fh.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()
