"""A quiet simulation for the cancel benchmark: records when SIGTERM reached it.

Writes `ready` (in its working directory, the run directory) once its handler is set, then
sleeps; on SIGTERM it writes CLOCK_MONOTONIC to `term` and exits as killed by SIGTERM.
Run with `python -I -S` so it starts in a few milliseconds.
"""

import os
import signal
import time


def on_term(_signum: int, _frame: object) -> None:
    stamp = time.clock_gettime(time.CLOCK_MONOTONIC)
    with open("term.tmp", "w") as fh:
        fh.write(repr(stamp))
    os.rename("term.tmp", "term")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    signal.signal(signal.SIGTERM, on_term)
    with open("ready", "w") as fh:
        fh.write(str(os.getpid()))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
