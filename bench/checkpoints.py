"""Long runs (issue 21): work lost per interruption, the checkpoint signal's lead time, and the
Slurm executor's status queries while sbatch calls time out.

    .venv/bin/python bench/checkpoints.py [--interruptions 20] [--slurm-jobs 6]
                                          [--jobs 500] [--timeouts 50] [--seconds 60]

1. Work lost: the installed daemon runs tests/sims/ckptsim.py locally with `timeout_seconds`
   and `checkpoint_seconds` until it has been interrupted N times (each attempt: the warning,
   a checkpoint, the limit, a resumed attempt). Work lost per interruption = the time the
   simulation had spent on the step under way when the warning came (thrown away: the
   checkpoint holds the steps done), and the steps computed twice (must be 0).
2. Lead time: the time between the warning and the attempt's limit, locally (from the same
   runs) and on the real test cluster (jobs with --time=1 and --signal=B:USR1@secs through the
   batch script; the limit is the job's end in the cluster's jobcomp record). Slurm checks
   time limits and signals about every 30 s, so its warning comes early by up to that much.
3. Queries: a SlurmExecutor watching N queued jobs while M submissions time out (an sbatch
   that never answers, with a short command timeout; squeue is a stand-in printing N pending
   jobs, so nothing but the lanes is measured): status queries per minute, which must stay one
   per poll_interval_seconds.
Needs root and Debian's slurm packages for part 2 (skipped otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ckpt_harness import CKPT_SIM, attempt_starts, ckpt_template, signals_seen, step_times
from daemon_harness import DaemonHarness
from slurm_cluster import running_cluster, unavailable_reason

from supervisor.executors.base import LaunchSpec, RunRef
from supervisor.executors.slurm.commands import Programs, SlurmCommands
from supervisor.executors.slurm.executor import SlurmExecutor
from supervisor.executors.slurm.jobs import batch_script
from supervisor.executors.slurm.parsing import SubmitRequest
from supervisor.settings import ExecutorSettings

# Part 1: one attempt's limit and warning, and the simulation's step (its checkpoint interval).
LOCAL_TIMEOUT = 2.0
LOCAL_LEAD = 1.0
STEP_SECONDS = 0.25
STEPS_PER_ATTEMPT = 3
# Part 2: Slurm's shortest limit, and the warning asked for before it.
SLURM_LIMIT_SECONDS = 60
SLURM_LEAD = 40
SLURM_DEADLINE = 240.0
# Part 3.
POLL_INTERVAL = 1.0
COMMAND_TIMEOUT = 2.0
LOOP_TICK = 0.05
_JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")


def spread(values: list[float]) -> str:
    """min / median / max of `values`, to the millisecond."""
    if not values:
        return "no samples"
    return (
        f"min {min(values):.3f}  median {statistics.median(values):.3f}  max {max(values):.3f}"
        f"  (n={len(values)})"
    )


def lost_work(run_dir: Path) -> tuple[list[float], int, list[float]]:
    """Per interruption: seconds of the step under way thrown away; steps computed twice;
    and the warning's lead before the limit (limit - (warning - attempt start))."""
    steps = step_times(run_dir)
    starts = attempt_starts(run_dir)
    lost, leads = [], []
    for attempt, _, warned_at in signals_seen(run_dir):
        before = [t for a, _, t in steps if a == attempt and t <= warned_at]
        since = max(before) if before else starts.get(attempt, warned_at)
        lost.append(warned_at - since)
        if attempt in starts:
            leads.append(LOCAL_TIMEOUT - (warned_at - starts[attempt]))
    counts: dict[int, int] = {}
    for _, step, _ in steps:
        counts[step] = counts.get(step, 0) + 1
    twice = sum(n - 1 for n in counts.values())
    return lost, twice, leads


def bench_local(interruptions: int) -> None:
    """Part 1 (and the local half of part 2)."""
    # About 3 steps an attempt (the warning after 1 s, less the interpreter's start).
    steps = STEPS_PER_ATTEMPT * interruptions + 1
    with tempfile.TemporaryDirectory(prefix="runsup-bench-ckpt-") as tmp:
        h = DaemonHarness(Path(tmp))
        template = ckpt_template(
            "limited",
            timeout_seconds=LOCAL_TIMEOUT,
            max_attempts=steps + 1,  # never the limit here: one step an attempt at worst
            retry_on=["timeout"],
            retry_delay_seconds=0,
            resume=True,
            checkpoint_signal="USR1",
            checkpoint_seconds=LOCAL_LEAD,
        )
        h.write_config(template)
        h.start()
        try:
            run_id = h.submit({"steps": steps, "step_seconds": STEP_SECONDS}, template="limited")
            final = h.wait_final(run_id, (steps + 1) * (LOCAL_TIMEOUT + 3))
        finally:
            h.close()
        lost, twice, leads = lost_work(Path(tmp) / "runs" / run_id)
    print(
        f"local: {final.status} after {final.attempt} attempts, {len(lost)} interruptions "
        f"(limit {LOCAL_TIMEOUT:g} s, warning {LOCAL_LEAD:g} s before, step {STEP_SECONDS:g} s)"
    )
    print(f"  work lost per interruption (s): {spread(lost)}")
    print(f"  steps computed twice: {twice}")
    print(
        f"  lead time seen (s, asked {LOCAL_LEAD:g}; counted from the simulation's own start, "
        f"so it includes the interpreter's start-up): {spread(leads)}"
    )


def bench_slurm_lead(jobs: int) -> None:
    """Part 2 on the real test cluster: jobs run into their limit at once (in parallel)."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"slurm lead time: skipped ({reason})")
        return
    with tempfile.TemporaryDirectory(prefix="runsup-bench-ckpt-slurm-") as tmp:
        base = Path(tmp)
        with running_cluster(base / "cluster") as cluster:
            commands = SlurmCommands(env=dict(cluster.env))
            dirs = []
            for i in range(jobs):
                run_dir = base / "runs" / f"lead{i:08x}"
                (run_dir / ".runsup").mkdir(parents=True)
                config = run_dir / "config.json"
                config.write_text(json.dumps({"steps": 1000, "step_seconds": 1.0}))
                argv = [sys.executable, str(CKPT_SIM), str(config)]
                env = {"RUNSUP_ATTEMPT": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
                script = batch_script(
                    run_dir.name, run_dir / ".runsup", argv, env, checkpoint_signal="USR1"
                )
                commands.submit(
                    SubmitRequest(
                        run_id=run_dir.name,
                        run_dir=run_dir,
                        script=script,
                        timeout_seconds=SLURM_LIMIT_SECONDS,
                        checkpoint_signal="USR1",
                        checkpoint_seconds=SLURM_LEAD,
                    )
                )
                dirs.append(run_dir)
            jobcomp = cluster.base / "jobcomp" / "jobcomp.txt"
            deadline = time.monotonic() + SLURM_DEADLINE
            ended: dict[str, float] = {}
            while time.monotonic() < deadline and len(ended) < jobs:
                time.sleep(1.0)
                text = jobcomp.read_text() if jobcomp.exists() else ""
                for line in text.splitlines():
                    fields = dict(_JOBCOMP_FIELD.findall(line))
                    name = fields.get("Name", "")
                    if name.startswith("runsup-lead") and fields.get("JobState") == "TIMEOUT":
                        ended[name] = datetime.fromisoformat(fields["EndTime"]).timestamp()
        leads = []
        for run_dir in dirs:
            end = ended.get(f"runsup-{run_dir.name}-1")
            warned = [t for _, _, t in signals_seen(run_dir)]
            if end is not None and warned:
                leads.append(end - warned[0])
    print(
        f"slurm: {len(leads)} of {jobs} jobs warned and timed out "
        f"(--time={SLURM_LIMIT_SECONDS // 60}, --signal=B:USR1@{SLURM_LEAD})"
    )
    print(f"  lead time seen (s, asked {SLURM_LEAD}, end to the second): {spread(leads)}")


def _program(where: Path, name: str, body: str) -> str:
    path = where / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def bench_queries(jobs: int, timeouts: int, seconds: float) -> None:
    """Part 3: the lanes keep status queries on time while every sbatch times out."""
    with tempfile.TemporaryDirectory(
        prefix="runsup-bench-lanes-", ignore_cleanup_errors=True
    ) as tmp:
        where = Path(tmp)
        listing = where / "squeue.out"
        listing.write_text(
            "".join(f"{i}|PENDING|0|Priority||runsup-{i:012x}-1\n" for i in range(1, jobs + 1))
        )
        programs = Programs(
            # A controller that never answers (exec: the timeout's kill ends the sleep too).
            sbatch=_program(where, "sbatch", "exec sleep 3600"),
            squeue=_program(where, "squeue", f"cat {listing}"),
            sacct=_program(where, "sacct", "echo 'accounting storage is disabled' >&2; exit 1"),
            scancel=_program(where, "scancel", "true"),
        )
        commands = SlurmCommands(env=dict(os.environ), timeout=COMMAND_TIMEOUT, programs=programs)
        config = ExecutorSettings(
            name="bench",
            kind="slurm",
            runs_dir=where / "runs",
            poll_interval_seconds=POLL_INTERVAL,
            command_timeout_seconds=COMMAND_TIMEOUT,
        )
        executor = SlurmExecutor("bench", config, wake=lambda: None, commands=commands)
        try:
            for i in range(1, jobs + 1):
                run_id = f"{i:012x}"
                ref = RunRef(
                    run_id=run_id,
                    record_dir=where / "runs" / run_id / ".runsup",
                    process=None,
                    claimed=True,
                    external_id=str(i),
                )
                executor.recover(ref)
            for i in range(timeouts):
                run_id = f"{0xF00000 + i:012x}"
                run_dir = where / "runs" / run_id
                (run_dir / ".runsup").mkdir(parents=True)
                executor.begin_launch(
                    LaunchSpec(
                        run_id=run_id,
                        argv=["true"],
                        cwd=run_dir,
                        env={},
                        log_path=run_dir / "sim.log",
                        record_dir=run_dir / ".runsup",
                    )
                )
            started = time.monotonic()
            first = executor.queries
            while time.monotonic() - started < seconds:
                executor.poll()
                time.sleep(LOOP_TICK)
            made = executor.queries - first
            sbatch_calls = commands.calls["sbatch"]
        finally:
            executor.close()
    per_minute = made * 60.0 / seconds
    print(
        f"queries: {made} status queries of {executor.largest_query} jobs in {seconds:g} s "
        f"= {per_minute:.1f}/min (poll_interval_seconds {POLL_INTERVAL:g}: "
        f"{60 / POLL_INTERVAL:.0f}/min) while {sbatch_calls} sbatch calls timed out "
        f"({COMMAND_TIMEOUT:g} s each, {timeouts} runs submitting)"
    )
    print(
        f"  one lane (before issue 21): the queries would wait behind "
        f"{timeouts} x {COMMAND_TIMEOUT:g} s = {timeouts * COMMAND_TIMEOUT:g} s of sbatch"
    )


def main() -> None:
    """Run the three parts."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interruptions", type=int, default=20)
    parser.add_argument("--slurm-jobs", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--timeouts", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["local", "slurm", "queries"])
    args = parser.parse_args()
    if "queries" not in args.skip:
        bench_queries(args.jobs, args.timeouts, args.seconds)
    if "local" not in args.skip:
        bench_local(args.interruptions)
    if "slurm" not in args.skip:
        bench_slurm_lead(args.slurm_jobs)


if __name__ == "__main__":
    main()
