"""Resources per run (SPEC section 10) through the installed daemon: GPU ids and thread counts
each run sees, scheduling by what runs hold, a restart in the middle of held GPUs, and memory
caps enforced by the kernel (cgroup v1 here; skipped where none can be enforced)."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonHarness, pid_alive, wait_for

from supervisor.executors.local import cgroups

ENV_DUMP = (
    "import json, os, pathlib, sys, time\n"
    "keys = ('CUDA_VISIBLE_DEVICES', 'CUDA_DEVICE_ORDER', 'OMP_NUM_THREADS')\n"
    "json.dump({k: os.environ.get(k) for k in keys}, open('env.tmp', 'w'))\n"
    "os.replace('env.tmp', 'env.json')  # whole, or not there\n"
    "gate = pathlib.Path(sys.argv[1])\n"
    "while not gate.exists():\n"
    "    time.sleep(0.02)\n"
)
HOG = (
    "import sys, time\n"
    "chunks = []\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    chunks.append(bytearray(1024 * 1024))\n"
    "    chunks[-1][::4096] = b'x' * len(chunks[-1][::4096])\n"
    "print('allocated', flush=True)\n"
)
ESCAPE = (
    "import subprocess, time\n"
    "subprocess.Popen(['setsid', 'sleep', '300'])\n"
    "open('escaped', 'w').write('1')\n"
    "time.sleep(300)\n"
)
SUPPORT = cgroups.detect()
needs_caps = pytest.mark.skipif(not SUPPORT.enforced, reason=f"no memory caps: {SUPPORT.reason}")


def templates(tmp: Path, gate: Path) -> str:
    def tmpl(name: str, code: str, extra: str, args: list[str]) -> str:
        script = tmp / f"{name}.py"  # a file: braces in a command are placeholders
        script.write_text(code)
        command = json.dumps([sys.executable, str(script), *args])
        return f"[templates.{name}]\ncommand = {command}\n{extra}"

    return "".join(
        [
            tmpl("gpu1", ENV_DUMP, "gpus = 1\n", [str(gate)]),
            tmpl("nogpu", ENV_DUMP, "gpus = 0\ncpus = 2\n", [str(gate)]),
            tmpl("plain", ENV_DUMP, 'env = { OMP_NUM_THREADS = "7" }\n', [str(gate)]),
            tmpl("hog", HOG, 'memory_max = "64M"\n', ["400"]),
            tmpl("modest", HOG, 'memory_max = "256M"\n', ["32"]),
            tmpl("escaper", ESCAPE, 'memory_max = "256M"\n', []),
        ]
    )


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path, max_concurrent_runs=8)
    h.gate = tmp_path / "gate"  # type: ignore[attr-defined]
    h.write_config(
        f'[resources]\ncpus = 8\ngpus = ["0", "1"]\n{templates(tmp_path, tmp_path / "gate")}'
    )
    yield h
    h.close()


def seen_env(h: DaemonHarness, run_id: str) -> dict[str, str | None]:
    path = h.runs_dir / run_id / "env.json"

    def written() -> dict[str, str | None] | None:
        # The simulation creates the file, then writes it: an empty file is not its answer yet.
        text = path.read_text() if path.exists() else ""
        return json.loads(text) if text.endswith("}") else None

    env: dict[str, str | None] = wait_for(f"{run_id}'s environment", written)
    return env


def test_each_run_sees_exactly_its_gpus_and_threads(harness: DaemonHarness) -> None:
    harness.start()
    a = harness.submit({}, template="gpu1")
    b = harness.submit({}, template="gpu1")
    waiting = harness.submit({}, template="gpu1")
    none = harness.submit({}, template="nogpu")
    plain = harness.submit({}, template="plain")
    got = {seen_env(harness, r)["CUDA_VISIBLE_DEVICES"] for r in (a, b)}
    assert got == {"0", "1"}, "two runs, two different GPUs"
    assert seen_env(harness, a)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert seen_env(harness, a)["OMP_NUM_THREADS"] == "1"
    # A run that needs no GPU is not held back by the one waiting for a GPU.
    assert seen_env(harness, none) == {
        "CUDA_VISIBLE_DEVICES": "",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "OMP_NUM_THREADS": "2",
    }
    assert seen_env(harness, plain)["OMP_NUM_THREADS"] == "7", "the template's env wins"
    assert seen_env(harness, plain)["CUDA_VISIBLE_DEVICES"] is None, "GPUs not managed"
    assert harness.run(waiting).status == "PENDING", "both GPUs are held"
    rows = {r: harness.run(r) for r in (a, b, none)}
    assert {rows[a].gpu_ids, rows[b].gpu_ids} == {"0", "1"} and rows[none].cpus == 2
    harness.gate.touch()  # type: ignore[attr-defined]
    for run_id in (a, b, none, plain, waiting):
        assert harness.wait_final(run_id).status == "COMPLETED"
    assert seen_env(harness, waiting)["CUDA_VISIBLE_DEVICES"] in ("0", "1")


def test_a_restart_never_hands_a_held_gpu_to_another_run(harness: DaemonHarness) -> None:
    harness.start()
    first = harness.submit({}, template="gpu1")
    held = seen_env(harness, first)["CUDA_VISIBLE_DEVICES"]
    harness.kill()
    harness.start()
    harness.wait_logged("run_adopted", run_id=first)
    second = harness.submit({}, template="gpu1")
    third = harness.submit({}, template="gpu1")
    other = seen_env(harness, second)["CUDA_VISIBLE_DEVICES"]
    assert other is not None and other != held
    assert harness.run(third).status == "PENDING"
    harness.gate.touch()  # type: ignore[attr-defined]
    for run_id in (first, second, third):
        assert harness.wait_final(run_id).status == "COMPLETED"


@needs_caps
def test_a_run_past_its_memory_cap_fails_out_of_memory(harness: DaemonHarness) -> None:
    harness.start()
    rec = harness.wait_final(harness.submit({}, template="hog"))
    assert rec.status == "FAILED" and rec.exit_signal == signal.SIGKILL
    assert rec.error_message is not None and rec.error_message.startswith("out of memory")
    assert "64M" in rec.error_message
    assert rec.memory_max_bytes == 64 * 1024 * 1024
    assert rec.peak_memory_bytes is not None and rec.peak_memory_bytes > 32 * 1024 * 1024
    wait_for("its cgroup removed", lambda: cgroups.find(SUPPORT, rec.id) is None)


@needs_caps
def test_a_run_under_its_cap_completes_with_its_peak(harness: DaemonHarness) -> None:
    harness.start()
    rec = harness.wait_final(harness.submit({}, template="modest"))
    assert rec.status == "COMPLETED"
    assert rec.peak_memory_bytes is not None and rec.peak_memory_bytes >= 32 * 1024 * 1024


@needs_caps
def test_a_cancel_reaches_processes_that_left_the_group(harness: DaemonHarness) -> None:
    harness.start()
    run_id = harness.submit({}, template="escaper")
    escaped = harness.runs_dir / run_id / "escaped"
    wait_for("the escapee started", escaped.exists)
    cg = cgroups.find(SUPPORT, run_id)
    assert cg is not None
    members = cgroups.members(cg)
    assert len(members) >= 2
    harness.store.request_cancel(run_id)
    assert harness.wait_final(run_id).status == "CANCELLED"
    wait_for("every process of the cgroup gone", lambda: not any(pid_alive(p) for p in members))
