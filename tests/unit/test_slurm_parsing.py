"""The Slurm command layer's pure parts, on output captured from a real Slurm 22.05 cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervisor.executors.slurm.commands import sacct_time
from supervisor.executors.slurm.parsing import (
    SACCT_FORMAT,
    SQUEUE_FORMAT,
    JobState,
    SubmitRequest,
    decode_wait_status,
    export_option,
    job_name,
    memory_mib,
    merge_accounting,
    parse_exit_code,
    parse_job_names,
    parse_sacct,
    parse_size,
    parse_squeue,
    parse_state,
    parse_submitted_id,
    sbatch_argv,
    submit_error_is_final,
    time_limit_minutes,
    unknown_ids,
)

# squeue -h -t all -j ... -O SQUEUE_FORMAT, a few seconds after submitting: exit 3, a
# self-SIGSEGV, `echo`, a cancelled `sleep`, a cancelled TERM-ignoring `sleep` (still
# COMPLETING, then CANCELLED by SIGKILL), an output directory that does not exist (launch
# failure, "signal" 53 with the core bit), a held job, a job queued for Resources.
SQUEUE_OUTPUT = """\
22|CANCELLED|15|None|vm|runsup-ddd444
23|COMPLETING|0|None|vm|runsup-eee555
21|COMPLETED|0|None|vm|runsup-ccc333
19|FAILED|768|NonZeroExitCode|vm|runsup-aaa111
20|FAILED|11|JobLaunchFailure|vm|runsup-bbb222
25|FAILED|4021|JobLaunchFailure|vm|runsup-ggg777
26|PENDING|0|JobHeldUser||runsup-hhh888
27|RUNNING|0|None|vm|runsup-iii999
24|PENDING|0|Resources||runsup-fff666
"""
SQUEUE_LATER = "23|CANCELLED|9|None|vm|runsup-eee555\n"

# sacct -n -P -j ... -o SACCT_FORMAT for the same jobs (slurmdbd + MariaDB).
SACCT_OUTPUT = """\
19|FAILED|3:0|vm||None|runsup-aaa111
19.batch|FAILED|3:0|vm|||batch
20|FAILED|0:11|vm||None|runsup-bbb222
20.batch|CANCELLED|0:11|vm|||batch
21|COMPLETED|0:0|vm||None|runsup-ccc333
21.batch|COMPLETED|0:0|vm|||batch
22|CANCELLED by 0|0:0|vm||None|runsup-ddd444
22.batch|CANCELLED|0:15|vm|||batch
23|CANCELLED by 0|0:0|vm||None|runsup-eee555
23.batch|CANCELLED|0:9|vm|||batch
24|RUNNING|0:0|vm||None|runsup-fff666
24.batch|RUNNING|0:0|vm|||batch
25|FAILED|0:53|vm||None|runsup-ggg777
25.batch|CANCELLED|0:53|vm|||batch
26|PENDING|0:0|None assigned||JobHeldUser|runsup-hhh888
27|COMPLETED|0:0|vm||None|runsup-iii999
27.batch|COMPLETED|0:0|vm|2480K||batch
"""


def test_formats_name_the_fields_the_parsers_expect() -> None:
    assert SQUEUE_FORMAT == "JobID:0|,State:0|,exit_code:0|,Reason:0|,NodeList:0|,Name:0"
    assert SACCT_FORMAT == "JobID,State,ExitCode,NodeList,MaxRSS,Reason,JobName"


def test_squeue_states_exit_codes_and_signals() -> None:
    jobs = parse_squeue(SQUEUE_OUTPUT)
    assert set(jobs) == {str(n) for n in range(19, 28)}
    failed = jobs["19"]
    assert (failed.state, failed.exit_code, failed.exit_signal) == (JobState.FAILED, 3, None)
    assert failed.reason == "NonZeroExitCode" and failed.node == "vm"
    assert failed.name == "runsup-aaa111" and failed.source == "squeue" and failed.final
    assert (jobs["20"].exit_code, jobs["20"].exit_signal) == (None, 11)
    assert (jobs["21"].state, jobs["21"].exit_code) == (JobState.COMPLETED, 0)
    assert (jobs["22"].state, jobs["22"].exit_signal) == (JobState.CANCELLED, 15)
    assert jobs["25"].exit_signal == 53 and jobs["25"].reason == "JobLaunchFailure"


def test_squeue_unfinished_jobs_have_no_exit_status() -> None:
    jobs = parse_squeue(SQUEUE_OUTPUT)
    assert jobs["23"].state is JobState.COMPLETING and not jobs["23"].final
    held, queued, running = jobs["26"], jobs["24"], jobs["27"]
    assert (held.state, held.reason, held.node) == (JobState.PENDING, "JobHeldUser", None)
    assert (queued.state, queued.reason) == (JobState.PENDING, "Resources")
    assert (running.state, running.reason, running.node) == (JobState.RUNNING, None, "vm")
    for job in (jobs["23"], held, queued, running):
        assert (job.exit_code, job.exit_signal) == (None, None)
        assert not job.purged


def test_squeue_term_ignoring_job_ends_killed() -> None:
    job = parse_squeue(SQUEUE_LATER)["23"]
    assert (job.state, job.exit_code, job.exit_signal) == (JobState.CANCELLED, None, 9)


def test_squeue_skips_noise_and_keeps_names_with_separators() -> None:
    text = "garbage\n\n5.batch|RUNNING|0|None|vm|x\n7|RUNNING|0|None|vm|a|b c\n"
    jobs = parse_squeue(text)
    assert list(jobs) == ["7"]
    assert jobs["7"].name == "a|b c"


def test_sacct_folds_steps_and_takes_the_script_status_from_the_batch_step() -> None:
    jobs = parse_sacct(SACCT_OUTPUT)
    assert set(jobs) == {str(n) for n in range(19, 28)}
    assert (jobs["19"].state, jobs["19"].exit_code) == (JobState.FAILED, 3)
    assert (jobs["20"].exit_code, jobs["20"].exit_signal) == (None, 11)
    # The job line reads 0:0 for a cancelled job; its batch step has the signal.
    cancelled = jobs["22"]
    assert (cancelled.state, cancelled.raw_state) == (JobState.CANCELLED, "CANCELLED by 0")
    assert cancelled.exit_signal == 15 and cancelled.source == "sacct"
    assert jobs["23"].exit_signal == 9
    assert jobs["24"].state is JobState.RUNNING and jobs["24"].exit_code is None
    held = jobs["26"]
    assert (held.state, held.node, held.reason) == (JobState.PENDING, None, "JobHeldUser")
    assert jobs["27"].max_rss_bytes == 2480 * 1024
    assert jobs["21"].max_rss_bytes is None
    assert jobs["19"].name == "runsup-aaa111"


def test_sacct_ignores_orphan_steps_and_noise() -> None:
    assert parse_sacct("31.batch|FAILED|3:0|vm|||batch\nnot a line\n") == {}


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("COMPLETED", JobState.COMPLETED),
        ("CANCELLED by 1000", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("TIMEOUT", JobState.TIMEOUT),
        ("CONFIGURING", JobState.PENDING),
        ("REQUEUED", JobState.PENDING),
        ("STAGE_OUT", JobState.COMPLETING),
        ("SIGNALING", JobState.RUNNING),
        ("", JobState.UNKNOWN),
        ("SOMETHING_NEW", JobState.UNKNOWN),
    ],
)
def test_parse_state(text: str, state: JobState) -> None:
    assert parse_state(text) is state


def test_wait_status_and_exit_code_text() -> None:
    assert decode_wait_status(0) == (0, None)
    assert decode_wait_status(768) == (3, None)
    assert decode_wait_status(11) == (None, 11)
    assert decode_wait_status(4021) == (None, 53)  # 53 with the core-dump bit
    assert parse_exit_code("3:0") == (3, None)
    assert parse_exit_code("0:15") == (None, 15)
    assert parse_exit_code("0:0") == (0, None)
    assert parse_exit_code("") == (None, None)


@pytest.mark.parametrize(
    ("text", "size"),
    [("2480K", 2480 * 1024), ("1.5M", 1572864), ("3G", 3 * 1024**3), ("123", 123), ("", None)],
)
def test_parse_size(text: str, size: int | None) -> None:
    assert parse_size(text) == size


def test_job_names_keep_the_newest_id_and_skip_steps() -> None:
    t = "2026-12-07T10:00:00"
    text = f"22|{t}|runsup-d\n19|{t}|runsup-a\n41|{t}|runsup-a\n41.batch|{t}|batch\n"
    assert parse_job_names(text) == {"runsup-d": "22", "runsup-a": "41"}


def test_job_names_only_since_the_claim() -> None:
    """A job submitted before the attempt's claim is never taken for it (issue 21)."""
    local = datetime(2026, 12, 7, 10, 0, 0).astimezone()  # as Slurm prints: local time
    claim = local.astimezone(UTC).replace(microsecond=500_000)
    text = (
        f"40|{(local - timedelta(seconds=30)).strftime('%Y-%m-%dT%H:%M:%S')}|runsup-a-1\n"
        f"41|{local.strftime('%Y-%m-%dT%H:%M:%S')}|runsup-b-1\n"
        "42|Unknown|runsup-c-1\n"
    )
    assert parse_job_names(text) == {"runsup-a-1": "40", "runsup-b-1": "41", "runsup-c-1": "42"}
    # Same second as the claim counts (Slurm keeps whole seconds); earlier ones do not.
    assert parse_job_names(text, claim) == {"runsup-b-1": "41"}
    per_name = {"runsup-a-1": claim - timedelta(minutes=1)}
    assert parse_job_names(text, per_name) == {
        "runsup-a-1": "40",
        "runsup-b-1": "41",
        "runsup-c-1": "42",
    }


def test_submitted_id() -> None:
    assert parse_submitted_id("123\n") == "123"
    assert parse_submitted_id("123;ci\n") == "123"
    with pytest.raises(ValueError, match="no job id"):
        parse_submitted_id("sbatch: warning\n")


def test_time_and_memory_round_up() -> None:
    assert time_limit_minutes(1) == 1
    assert time_limit_minutes(60) == 1
    assert time_limit_minutes(61) == 2
    assert time_limit_minutes(3600) == 60
    assert memory_mib(1) == 1
    assert memory_mib(8 * 1024**3) == 8192
    assert memory_mib(8 * 1024**3 + 1) == 8193


def test_sbatch_argv_carries_the_whole_request() -> None:
    request = SubmitRequest(
        run_id="0123456789ab",
        run_dir=Path("/shared/runs/0123456789ab"),
        script="#!/bin/sh\ntrue\n",
        cpus=4,
        gpus=2,
        memory_bytes=8 * 1024**3,
        timeout_seconds=90,
        partition="compute",
        account="proj42",
        sbatch_args=("--qos=normal",),
        env={"RUNSUP_RUN_ID": "0123456789ab", "A_B": "x,y"},
        attempt=3,
        checkpoint_signal="USR1",
        checkpoint_seconds=120,
    )
    assert sbatch_argv(request) == [
        "--parsable",
        "--job-name=runsup-0123456789ab-3",
        "--output=/shared/runs/0123456789ab/logs/sim.log",
        "--open-mode=append",
        "--chdir=/shared/runs/0123456789ab",
        "--no-requeue",
        "--cpus-per-task=4",
        "--gpus=2",
        "--mem=8192M",
        "--time=2",
        "--signal=B:USR1@120",
        "--partition=compute",
        "--account=proj42",
        "--export=A_B,RUNSUP_RUN_ID",
        "--qos=normal",
    ]


def test_sbatch_argv_minimal_request() -> None:
    request = SubmitRequest(run_id="r", run_dir=Path("/r"), script="", log_path=Path("/l/x.log"))
    assert sbatch_argv(request) == [
        "--parsable",
        "--job-name=runsup-r-1",
        "--output=/l/x.log",
        "--open-mode=append",
        "--chdir=/r",
            "--no-requeue",
    ]
    assert job_name("r") == "runsup-r-1"
    assert job_name("r", 12) == "runsup-r-12"


def test_export_option() -> None:
    assert export_option(None) is None
    assert export_option({}) == "NONE"
    assert export_option({"B": "1", "A": "2"}) == "A,B"
    with pytest.raises(ValueError, match="not a variable name"):
        export_option({"A=B": "1"})


@pytest.mark.parametrize(
    ("stderr", "final"),
    [
        ("sbatch: error: Batch job submission failed: Invalid partition name specified", True),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition", True),
        (
            "sbatch: error: Batch job submission failed: "
            "Unable to contact slurm controller (connect failure)",
            False,
        ),
        ("sbatch: error: Batch job submission failed: Socket timed out on send/recv", False),
        ("sbatch: error: Invalid user for SlurmUser root, ignored\nSlurmctld is busy", False),
    ],
)
def test_submit_errors_final_or_uncertain(stderr: str, final: bool) -> None:
    assert submit_error_is_final(stderr) is final


def test_unknown_ids_keep_order_without_duplicates() -> None:
    known = parse_squeue(SQUEUE_OUTPUT)
    assert unknown_ids(["5", "19", "4", "5"], known) == ["5", "4"]


def test_sacct_time_is_local_time_to_the_second() -> None:
    moment = datetime(2026, 11, 29, 17, 30, 5, 999, tzinfo=UTC)
    local = moment.astimezone()
    assert sacct_time(moment) == local.strftime("%Y-%m-%dT%H:%M:%S")
    assert sacct_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05"


def test_merge_accounting_keeps_squeue_authoritative() -> None:
    # Captured while job 2 was RUNNING in squeue: slurmdbd's placeholder already COMPLETED.
    listed = parse_squeue("2|RUNNING|0|None|vm|runsup-x\n21|COMPLETED|0|None|vm|runsup-ccc333\n")
    accounted = parse_sacct(
        "2|COMPLETED|0:0|vm||None|allocation\n2.batch|COMPLETED|0:0|vm|||batch\n"
        "21|COMPLETED|0:0|vm||None|runsup-ccc333\n21.batch|COMPLETED|0:0|vm|2480K||batch\n"
        "19|FAILED|3:0|vm||None|runsup-aaa111\n"
    )
    merged = merge_accounting(listed, accounted)
    assert merged["2"] == listed["2"]  # not the placeholder
    assert merged["21"].source == "squeue" and merged["21"].max_rss_bytes == 2480 * 1024
    assert (merged["19"].source, merged["19"].exit_code) == ("sacct", 3)
