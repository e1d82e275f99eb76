"""How a handle learns that a run's keeper ended, with what the kernel offers (means.py).

- `pidfd`: a pidfd of the keeper (Linux 5.3+): readable when it ends, reaped through it if it
  is our child.
- `pipe`: our child keeper, without pidfds: the read end of its report pipe, which only the
  keeper holds open, gives EOF when it ends; reaped by pid (a child's pid is ours until reaped).
- `timer`: a keeper adopted after a restart, without pidfds: not our child, no pipe; whether it
  is still the same process is looked at when the executor polls (KEEPER_POLL_SECONDS, then
  further apart while it lives on).
- `gone`: the keeper had ended before the handle was made: an eventfd holding 1 is a
  descriptor that is always readable.
"""

from __future__ import annotations

import errno
import os

from supervisor.executors.base import ProcessIdentity
from supervisor.executors.local.identity import is_same_process, readable, reap_status

# How often adopted keepers are looked at where there are no pidfds (Linux before 5.3), all in
# one pass: first every KEEPER_POLL_SECONDS, further apart while none ends, up to
# KEEPER_POLL_MAX_SECONDS (a look reads /proc/<pid>/stat, and every pass wakes the loop: 100
# adopted runs looked at twice a second cost 2 % of a core against the idle target of 1 %;
# bench/run.py --only adopted, BENCHMARKS.md).
KEEPER_POLL_SECONDS = 0.5
KEEPER_POLL_MAX_SECONDS = 4.0
_DRAIN_BYTES = 4096


class KeeperWatch:
    """The end of one keeper process, watched by one of four means."""

    def __init__(
        self,
        keeper: ProcessIdentity,
        *,
        pidfd: int | None = None,
        pipe_fd: int | None = None,
        child: bool = False,
        gone: bool = False,
    ) -> None:
        """Own `pidfd` / `pipe_fd`; with neither: `gone`, else a timer on the identity."""
        self.keeper = keeper
        self._child = child  # our unreaped child: reap it by pid when it ends
        self._fd: int | None
        if gone:
            self.mode = "gone"
            self._fd = os.eventfd(1)
        elif pidfd is not None:
            self.mode, self._fd = "pidfd", pidfd
        elif pipe_fd is not None:
            self.mode, self._fd = "pipe", pipe_fd
            os.set_blocking(pipe_fd, False)
        else:
            self.mode, self._fd = "timer", None
        self._ended = gone

    def fileno(self) -> int | None:
        """Readable once the keeper ended; None: only ended() on a timer tells."""
        return self._fd

    def ended(self) -> bool:
        """True once the keeper has ended (looks now, never waits)."""
        if self._ended:
            return True
        if self.mode == "pidfd":
            assert self._fd is not None
            self._ended = readable(self._fd, 0)
        elif self.mode == "pipe":
            self._ended = self._pipe_closed()
        else:
            self._ended = not is_same_process(self.keeper)
        return self._ended

    def _pipe_closed(self) -> bool:
        assert self._fd is not None
        while True:
            try:
                if not os.read(self._fd, _DRAIN_BYTES):
                    return True
            except BlockingIOError:
                return False

    def reap_status(self) -> os.waitid_result | None:
        """After ended(): reap the keeper if it is our child; its result, else None."""
        if self.mode == "pidfd":
            assert self._fd is not None
            return reap_status(self._fd)
        if self.mode != "pipe" or not self._child:
            return None
        try:
            # EOF came as the exiting keeper closed its files: it is a zombie in a moment.
            return os.waitid(os.P_PID, self.keeper.pid, os.WEXITED)
        except ChildProcessError:
            return None
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return None
            raise

    def close(self) -> None:
        """Close the descriptor (the process is not touched); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
