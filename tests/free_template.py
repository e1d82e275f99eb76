"""A template whose simulation takes any config keys, for tests about how configs are stored.

The built-in erlang-demo refuses keys it does not know at `runsup submit` (SPEC section 2: a
typo must not change what runs), so tests of --set, --sweep and resubmit that use made-up
keys submit to this template instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Runsup

FREE_TEMPLATE = "free"
FREE_CONFIG = f"""
[templates.{FREE_TEMPLATE}]
command = ["/bin/true", "{{config_path}}"]
"""


def with_free_template(runsup: Runsup) -> Runsup:
    """The same command and database, with a configuration that adds the `free` template."""
    path = runsup.home / "free.toml"
    path.write_text(FREE_CONFIG, encoding="utf-8")
    return replace(runsup, env={**runsup.env, "RUNSUP_CONFIG": str(path)})
