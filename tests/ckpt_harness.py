"""What the checkpoint tests (and bench/checkpoints.py) share: the checkpointing simulation's
templates and how to read what it left in its run directory (tests/sims/ckptsim.py)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

CKPT_SIM = Path(__file__).parent / "sims" / "ckptsim.py"


def ckpt_template(name: str, **keys: object) -> str:
    """A `[templates.NAME]` running the checkpointing simulation, with these keys."""
    py, sim = json.dumps(sys.executable), json.dumps(str(CKPT_SIM))
    lines = [f"[templates.{name}]", f'command = [{py}, {sim}, "{{config_path}}"]']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def steps_done(run_dir: Path) -> list[tuple[int, int]]:
    """(attempt, step) for every step the simulation computed, in order."""
    path = run_dir / "steps.log"
    if not path.exists():
        return []
    rows = (line.split() for line in path.read_text().splitlines())
    return [(int(row[0]), int(row[1])) for row in rows]


def step_times(run_dir: Path) -> list[tuple[int, int, float]]:
    """(attempt, step, unix time it was done) for every step the simulation computed."""
    path = run_dir / "steps.log"
    if not path.exists():
        return []
    rows = (line.split() for line in path.read_text().splitlines())
    return [(int(row[0]), int(row[1]), float(row[2])) for row in rows]


def attempt_starts(run_dir: Path) -> dict[int, float]:
    """Attempt -> unix time the simulation started computing in it."""
    path = run_dir / "starts.log"
    if not path.exists():
        return {}
    rows = (line.split() for line in path.read_text().splitlines())
    return {int(row[0]): float(row[1]) for row in rows}


def signals_seen(run_dir: Path) -> list[tuple[int, str, float]]:
    """(attempt, signal name, unix time) for every signal the simulation caught."""
    path = run_dir / "signals.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        attempt, name, at = line.split()
        out.append((int(attempt), name, float(at)))
    return out


def recomputed(run_dir: Path) -> Counter[int]:
    """Step -> how many times it was computed beyond the first (lost work)."""
    counts = Counter(step for _, step in steps_done(run_dir))
    return Counter({step: n - 1 for step, n in counts.items() if n > 1})
