"""A simulation of `steps` steps that checkpoints and resumes (SPEC section 15), for tests and
bench/.

It computes one step every `step_seconds` and keeps its state in `checkpoint.json` in its run
directory, written only when it is told to (the checkpoint signal, SIGUSR1) or when it gives
up its attempt by itself (`checkpoint_every`). With RUNSUP_RESUME=1 it starts from the
checkpoint; otherwise from step 0. Every step it computes is appended to `steps.log` as
"<attempt> <step> <unix time>" (a step computed twice was lost work), every signal it gets to
`signals.log` as "<attempt> <signal> <unix time>", each attempt's start to `starts.log` as
"<attempt> <unix time>".

Config keys: steps (10), step_seconds (1.0), on_signal: "wait" (save, then compute nothing
more: the limit or the preemption ends the attempt) or "exit" (save, then exit with
`exit_code`), exit_code (85), checkpoint_every (0: never; N: save and exit with `exit_code`
after every N steps of an attempt).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

CHECKPOINT = "checkpoint.json"
SLICE_SECONDS = 0.02


class Sim:
    """One attempt: its step counter and what the signal asked."""

    def __init__(self, config: dict[str, object]) -> None:
        self.config = config
        self.attempt = os.environ.get("RUNSUP_ATTEMPT", "?")
        self.step = 0
        self.warned = False
        if os.environ.get("RUNSUP_RESUME") == "1" and Path(CHECKPOINT).exists():
            self.step = int(json.loads(Path(CHECKPOINT).read_text())["step"])

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        with open("signals.log", "a") as fh:
            fh.write(f"{self.attempt} {signal.Signals(signum).name} {time.time():.3f}\n")
        self.warned = True

    def save(self) -> None:
        tmp = Path(CHECKPOINT + ".tmp")
        tmp.write_text(json.dumps({"step": self.step}))
        os.replace(tmp, CHECKPOINT)

    def progress(self, record: dict[str, object]) -> None:
        with open(os.environ.get("RUNSUP_PROGRESS_FILE", "progress.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def run(self) -> int:
        steps = int(str(self.config.get("steps", 10)))
        step_seconds = float(str(self.config.get("step_seconds", 1.0)))
        exit_code = int(str(self.config.get("exit_code", 85)))
        every = int(str(self.config.get("checkpoint_every", 0)))
        on_signal = self.config.get("on_signal", "wait")
        done_here = 0
        with open("starts.log", "a") as fh:
            fh.write(f"{self.attempt} {time.time():.3f}\n")
        self.progress({"type": "start", "config": {"total_iterations": steps}})
        while self.step < steps:
            started = time.monotonic()
            while time.monotonic() - started < step_seconds and not self.warned:
                time.sleep(SLICE_SECONDS)
            if self.warned:  # the step under way is lost: save what is done
                self.save()
                if on_signal == "exit":
                    return exit_code
                while True:  # wait for the end of the attempt (time limit, preemption)
                    time.sleep(SLICE_SECONDS)
            self.step += 1
            done_here += 1
            with open("steps.log", "a") as fh:
                fh.write(f"{self.attempt} {self.step} {time.time():.3f}\n")
            self.progress({"type": "iteration", "iteration": self.step, "total_iterations": steps})
            if every and done_here % every == 0 and self.step < steps:
                self.save()
                return exit_code
        self.progress({"type": "complete", "exit_code": 0})
        return 0


def main() -> int:
    config = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "config.json").read_text())
    sim = Sim(config)
    signal.signal(signal.SIGUSR1, sim.on_signal)
    return sim.run()


if __name__ == "__main__":
    sys.exit(main())
