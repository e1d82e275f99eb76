"""A delay that doubles while a group lingers: how often a handle's group is worth a look."""

from __future__ import annotations

# A group that outlived its leader: look again after this long, doubling up to the maximum
# (a fd, where there is one, wakes the loop sooner), so a group that lingers costs a bounded
# number of looks (/proc scans, cluster queries), not one every few milliseconds.
GROUP_CHECK_FIRST_SECONDS = 0.05
GROUP_CHECK_MAX_SECONDS = 2.0


class Backoff:
    """GROUP_CHECK_FIRST_SECONDS, doubling at each next() up to GROUP_CHECK_MAX_SECONDS."""

    def __init__(
        self, first: float = GROUP_CHECK_FIRST_SECONDS, most: float = GROUP_CHECK_MAX_SECONDS
    ) -> None:
        """Start at `first`."""
        self.first = first
        self.most = most
        self._delay = first

    def next(self) -> float:
        """The delay to wait now; the one after is twice as long (up to the maximum)."""
        delay = self._delay
        self._delay = min(self._delay * 2, self.most)
        return delay

    def reset(self) -> None:
        """Start again from the first delay (something changed: a SIGKILL was sent)."""
        self._delay = self.first
