"""A configurable simulation for tests: behaves as its config.json says.

Keys: progress (list of objects or strings written as lines), exit_code, sleep (seconds,
in small slices), ignore_term (bool), term_exit_code (exit with it on SIGTERM),
children (how many sleeping children to fork into its group), signal_self (a signal
number to kill itself with), stdout (text), wait_for_file (a path to wait for),
launches_file (append one line per launch, to count them), progress_after (lines written
after the wait), per_launch (a list: launch N, counted in launches_file, also takes the keys
of item N-1; for retries), results (an object written to results.json as it is, with
"echo": the config's values of the keys listed in echo), fail_unless_exists (a path: exit 3
without writing results while it does not exist).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SLICE_SECONDS = 0.02


def main() -> int:
    config = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "config.json").read_text())
    if config.get("launches_file"):
        with open(config["launches_file"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
        launch = len(Path(config["launches_file"]).read_text().splitlines())
        per_launch = config.get("per_launch", [])
        if launch <= len(per_launch):
            config.update(per_launch[launch - 1])
    if config.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif "term_exit_code" in config:
        code = int(config["term_exit_code"])
        signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
    for _ in range(int(config.get("children", 0))):
        subprocess.Popen(["sleep", "300"])
    if config.get("stdout"):
        print(config["stdout"], flush=True)
    progress = os.environ.get("RUNSUP_PROGRESS_FILE", "progress.jsonl")
    with open(progress, "a") as fh:
        for line in config.get("progress", []):
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
            fh.flush()
    deadline = time.monotonic() + float(config.get("sleep", 0))
    wait_for = config.get("wait_for_file")
    while time.monotonic() < deadline or (wait_for and not os.path.exists(wait_for)):
        time.sleep(SLICE_SECONDS)
    with open(progress, "a") as fh:
        for line in config.get("progress_after", []):
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    if config.get("signal_self"):
        os.kill(os.getpid(), int(config["signal_self"]))
    gate = config.get("fail_unless_exists")
    if gate and not os.path.exists(gate):
        return 3
    write_results(config)
    return int(config.get("exit_code", 0))


def write_results(config: dict[str, object]) -> None:
    """results.json from the keys `results` and `echo`, when the config has either."""
    if "results" not in config and "echo" not in config:
        return
    results = dict(config.get("results", {}))  # type: ignore[call-overload]
    echo = config.get("echo")
    if isinstance(echo, list):
        results["echo"] = {key: config.get(key) for key in echo}
    Path("results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
