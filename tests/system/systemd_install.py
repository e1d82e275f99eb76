"""run-supervisor installed as the README says, for the tests that run the real unit.

The unit runs `/opt/run-supervisor/venv/bin/runsup` as the user run-supervisor, with
ProtectHome=yes: a venv of the test interpreter (under /root here, pyenv) is out of its
reach. So this builds a venv from Debian's /usr/bin/python3 whose paths really are
/opt/run-supervisor/venv: it is created in a mount namespace of its own where a cache
folder is bound on /opt, and the systemd harness binds the same folder on /opt (read-only)
for the service.

- run-supervisor itself: a wheel built from a copy of the work tree (pip, isolated build),
  installed with pip, so `runsup` is the console script pip writes, as for an operator;
- its dependencies: copied from the test environment's own installed files (the RECORD of
  each distribution), which keeps this offline and takes a fraction of a second; when the
  two Pythons differ in minor version (compiled modules would not load), pip installs them
  from the index instead.

Built folders are kept under /var/cache/run-supervisor-test, one per content hash of the
package sources, dependency versions and system Python, so an unchanged tree costs
nothing and two test runs never rebuild under each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTION = "run-supervisor"
SYSTEM_PYTHON = Path("/usr/bin/python3")
CACHE_ROOT = Path("/var/cache/run-supervisor-test")
INNER_VENV = "/opt/run-supervisor/venv"
"""The venv's path as the service sees it (the shipped unit's ExecStart points into it)."""
INNER_RUNSUP = f"{INNER_VENV}/bin/runsup"
INNER_PYTHON = f"{INNER_VENV}/bin/python"
SOURCES = ("pyproject.toml", "supervisor")
"""What the wheel is built from (and what the cache key hashes), besides README.md."""
READY_MARK = ".ready"
BUILD_PREFIX = "build-"
OPT_PREFIX = "opt-"
KEEP_BUILDS = 3
"""Cached builds kept besides the one in use; older ones are removed."""
STALE_BUILD_SECONDS = 3600.0
"""A half-built folder this old belongs to a test run that died: remove it."""
PIP_TIMEOUT_SECONDS = 300.0
PROBE_TIMEOUT_SECONDS = 30.0


class InstallError(RuntimeError):
    """The service venv could not be built."""


def install_skip_reason() -> str | None:
    """Why the service venv cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace to build the venv at /opt/run-supervisor)"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing (apt-get install python3 python3-venv)"
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import venv, sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SECONDS,
        check=False,
    )
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} has no venv module (apt-get install python3-venv)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare and mount are needed (apt-get install util-linux mount)"
    return None


def _dependency_closure() -> list[metadata.Distribution]:
    """Installed distributions run-supervisor needs at run time, itself excluded."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(raw) for raw in metadata.distribution(DISTRIBUTION).requires or []]
    while todo:
        req = todo.pop()
        key = req.name.lower().replace("_", "-")
        if key in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        dist = metadata.distribution(req.name)
        seen[key] = dist
        todo.extend(Requirement(raw) for raw in dist.requires or [])
    return sorted(seen.values(), key=lambda d: d.metadata["Name"].lower())


def _system_python_tag() -> str:
    """major.minor of /usr/bin/python3."""
    out = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SECONDS,
        check=True,
    )
    return out.stdout.strip()


def _source_files() -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = REPO / name
        if path.is_file():
            files.append(path)
        else:
            files.extend(
                p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
            )
    return files


def cache_key(deps: list[metadata.Distribution], python_tag: str) -> str:
    """Content hash of what the built venv depends on."""
    digest = hashlib.sha256()
    python = SYSTEM_PYTHON.resolve().stat()
    digest.update(f"{python_tag} {python.st_size} {python.st_mtime_ns}\n".encode())
    digest.update(f"{sys.version_info[:2]}\n".encode())
    for dist in deps:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    for path in _source_files():
        digest.update(f"{path.relative_to(REPO)}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False
    )
    if result.returncode != 0:
        raise InstallError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _build_wheel(work: Path) -> Path:
    """A wheel of the work tree, built from a copy (the shared tree gets no build/ folder)."""
    src = work / "src"
    src.mkdir()
    for name in (*SOURCES, "README.md"):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, src / name)
    wheels = work / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)],
        "building the run-supervisor wheel",
    )
    (wheel,) = wheels.glob("*.whl")
    return wheel


def _copy_dependencies(deps: list[metadata.Distribution], site_packages: Path) -> None:
    """Copy each distribution's installed files (its RECORD) into site_packages."""
    for dist in deps:
        for entry in dist.files or []:
            if entry.parts and entry.parts[0] == "..":
                continue  # scripts and data outside site-packages: not needed to import
            source = Path(str(dist.locate_file(entry)))
            if not source.is_file():
                continue
            target = site_packages / entry
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _in_opt(opt: Path, cmd: list[str], what: str) -> None:
    """Run cmd in a mount namespace of its own where opt is bound on /opt."""
    script = 'set -e; mount --bind "$1" /opt; shift; exec "$@"'
    unshare = ["unshare", "--mount", "--propagation=private", "--", "/bin/sh", "-c", script]
    _run([*unshare, "in-opt", str(opt), *cmd], what)


def _build(opt: Path, work: Path, deps: list[metadata.Distribution], same_python: bool) -> None:
    """Create the venv at /opt/run-supervisor/venv (opt bound there) and install into it."""
    wheel = _build_wheel(work)
    _in_opt(opt, [str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", INNER_VENV], "venv")
    pip = [sys.executable, "-m", "pip", "--python", INNER_PYTHON, "install", "-q"]
    pip.append("--no-cache-dir")
    if same_python:
        (site_packages,) = (opt / "run-supervisor" / "venv" / "lib").glob("python3*/site-packages")
        _copy_dependencies(deps, site_packages)
        pip += ["--no-deps", "--no-index"]
    _in_opt(opt, [*pip, str(wheel)], f"pip install {wheel.name}")


def _prune(keep: Path) -> None:
    """Remove old cached builds and half-built folders of dead runs."""
    now = time.time()
    builds = sorted(
        (p for p in CACHE_ROOT.glob(f"{OPT_PREFIX}*") if p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in builds[KEEP_BUILDS:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in CACHE_ROOT.glob(f"{BUILD_PREFIX}*"):
        if now - stale.stat().st_mtime > STALE_BUILD_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)


def service_opt() -> Path:
    """A host folder to bind on /opt: holds run-supervisor/venv with `runsup` installed."""
    deps = _dependency_closure()
    tag = _system_python_tag()
    same_python = tag == "{}.{}".format(*sys.version_info[:2])
    final = CACHE_ROOT / f"{OPT_PREFIX}{cache_key(deps, tag)}"
    if (final / READY_MARK).exists():
        os.utime(final)
        return final
    CACHE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    with _locked(CACHE_ROOT / ".lock"):
        if (final / READY_MARK).exists():
            return final
        work = CACHE_ROOT / f"{BUILD_PREFIX}{uuid.uuid4().hex[:12]}"
        opt = work / "opt"
        old_umask = os.umask(0o022)
        try:
            opt.mkdir(parents=True)
            _build(opt, work, deps, same_python)
            (opt / READY_MARK).write_text(f"{time.time()}\n")
            opt.chmod(0o755)
            opt.rename(final)
        finally:
            os.umask(old_umask)
            shutil.rmtree(work, ignore_errors=True)
        _prune(final)
    return final
