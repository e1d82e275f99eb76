"""The `runsup` command line: parses arguments, loads settings, calls in. No logic of its own.

Heavy modules (SQLAlchemy, the daemon) are imported inside the commands that need them,
so that `runsup --help` and friends start fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from supervisor.errors import SupervisorError, ValidationError

if TYPE_CHECKING:
    from supervisor.db import Store
    from supervisor.settings import Settings

CONFIG_OBJ_KEY = "config"


def _remember_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    # `--config` may stand before or after the command's name (SPEC section 7).
    if value is not None:
        ctx.ensure_object(dict)[CONFIG_OBJ_KEY] = value


def config_option(func: Any) -> Any:
    """Adds `--config FILE` to a command."""
    return click.option(
        "--config",
        "config",
        metavar="FILE",
        expose_value=False,
        is_eager=True,
        callback=_remember_config,
        help="TOML configuration file (default: $RUNSUP_CONFIG, else built-in defaults).",
    )(func)


def json_option(func: Any) -> Any:
    """Adds `--json` to a command that prints data."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def _settings(ctx: click.Context) -> Settings:
    from supervisor.settings import load_settings

    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings(obj.get(CONFIG_OBJ_KEY))
    settings: Settings = obj["settings"]
    return settings


def _store(ctx: click.Context) -> Store:
    from supervisor.db import Store

    settings = _settings(ctx)
    path = settings.database_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database_url)
    ctx.call_on_close(store.close)
    return store


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(package_name="run-supervisor", prog_name="runsup")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """run-supervisor: keep long simulation runs alive, visible and controllable."""
    ctx.ensure_object(dict)


@cli.command()
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Log debug events too.")
@click.pass_context
def daemon(ctx: click.Context, verbose: bool) -> None:
    """Run the supervisor in the foreground."""
    from supervisor.daemon import run_daemon
    from supervisor.logs import configure_logging

    configure_logging(verbose=verbose)
    settings = _settings(ctx)
    raise SystemExit(run_daemon(settings, config_file=ctx.obj.get(CONFIG_OBJ_KEY)))


def _parse_set(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs into a config object: values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValidationError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        # Dotted keys make nested objects: --set physical.length=2 -> {"physical": {"length": 2}}.
        target = out
        parts = key.split(".")
        for part in parts[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ValidationError(f"--set {pair!r}: {part!r} is already a plain value")
            target = nested
        target[parts[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_config_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"--config-file {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValidationError(f"--config-file {path}: not UTF-8 text") from None


@cli.command()
@config_option
@click.option("--template", "-t", required=True, help="Template name from the configuration.")
@click.option("--name", "-n", default=None, help="A name for people to recognise the run.")
@click.option("--config-json", default=None, metavar="JSON", help="The run's config object.")
@click.option("--config-file", default=None, metavar="FILE", help="Read the config object here.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set one config key.")
@json_option
@click.pass_context
def submit(
    ctx: click.Context,
    template: str,
    name: str | None,
    config_json: str | None,
    config_file: str | None,
    sets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Queue a run; prints the new run id."""
    from supervisor.db import check_config_json

    settings = _settings(ctx)
    if template not in settings.templates:
        known = ", ".join(sorted(settings.templates))
        raise ValidationError(f"unknown template {template!r} (known: {known})")
    if config_json is not None and config_file is not None:
        raise ValidationError("give --config-json or --config-file, not both")
    text = config_json if config_json is not None else None
    if config_file is not None:
        text = _read_config_file(config_file)
    source = f"--config-file {config_file}" if config_file is not None else "--config-json"
    try:
        config = check_config_json(text) if text is not None else {}
    except ValidationError as exc:
        raise ValidationError(f"{source}: {exc}") from None
    config = _deep_merge(config, _parse_set(sets))
    record = _store(ctx).submit(template, json.dumps(config), name)
    if as_json:
        _print_json(record.to_json())
    else:
        click.echo(record.id)


@cli.command(name="list")
@config_option
@click.option("--status", "-s", default=None, help="Only runs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@json_option
@click.pass_context
def list_runs(ctx: click.Context, status: str | None, limit: int | None, as_json: bool) -> None:
    """List runs, newest first."""
    from supervisor.states import RunStatus

    if status is not None:
        status = status.upper()
        if status not in RunStatus.__members__:
            raise ValidationError(
                f"unknown status {status!r} (one of {', '.join(RunStatus.__members__)})"
            )
    runs = _store(ctx).list_runs(status=status, limit=limit)
    if as_json:
        _print_json([r.to_json() for r in runs])
        return
    from supervisor.views import runs_table

    click.echo(runs_table(runs) if runs else "no runs")


@cli.command()
@config_option
@click.argument("run_id")
@json_option
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run and its history."""
    store = _store(ctx)
    run = store.get(run_id)
    events = store.events(run_id)
    if as_json:
        _print_json({**run.to_json(), "events": [e.to_json() for e in events]})
        return
    from supervisor.views import run_details

    click.echo(run_details(run, events))


@cli.command()
@config_option
@click.argument("run_id")
@json_option
@click.pass_context
def cancel(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Ask for a run to be cancelled; prints the run's state."""
    run, requested = _store(ctx).request_cancel(run_id)
    if as_json:
        _print_json({**run.to_json(), "cancel_requested": requested})
        return
    if run.is_final:
        click.echo(f"run {run.id} is already {run.status}; nothing to cancel")
    elif requested:
        click.echo(f"run {run.id} ({run.status}): cancel requested")
    else:
        asked = run.cancel_requested_at.isoformat() if run.cancel_requested_at else "?"
        click.echo(f"run {run.id} ({run.status}): cancel already requested at {asked}")


@cli.command()
@config_option
@click.option("--template", "-t", default=None, help="Try this template's progress patterns.")
@click.option("--sample-log", default=None, metavar="FILE", help="...on this saved log.")
@json_option
@click.pass_context
def check(ctx: click.Context, template: str | None, sample_log: str | None, as_json: bool) -> None:
    """Validate the configuration and say what this machine offers and lacks for it (exit 1
    when something a template needs is missing); with a sample log, print the progress its
    patterns give."""
    from supervisor import check as checks

    if (template is None) != (sample_log is None):
        raise click.UsageError("give --template and --sample-log together")
    settings = _settings(ctx)
    if template is not None and sample_log is not None:
        report = checks.check_sample_log(settings, template, Path(sample_log))
        click.echo(
            json.dumps(report.to_json(), indent=2) if as_json else checks.sample_text(report)
        )
        return
    from supervisor.logs import configure_logging

    configure_logging()  # the checks' own debug events (no GPU driver...) are not shown
    setup = checks.check_setup(settings)
    click.echo(json.dumps(setup.to_json(), indent=2) if as_json else checks.setup_text(setup))
    raise SystemExit(setup.exit_code)


@cli.command()
@config_option
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
@click.pass_context
def logs(ctx: click.Context, run_id: str, follow: bool) -> None:
    """Print a run's log (the simulation's stdout and stderr)."""
    from supervisor.logview import print_log

    raise SystemExit(print_log(_store(ctx), run_id, follow=follow))


@cli.command()
@config_option
@click.argument("run_id", required=False)
@click.pass_context
def watch(ctx: click.Context, run_id: str | None) -> None:
    """Live progress bars for running runs, until they end.

    With RUN_ID, that run; without, every run pending or running now or starting meanwhile.
    Plain lines when stdout is not a terminal. Exit status: 0 when every watched run
    COMPLETED, 1 when one FAILED or was CANCELLED, 130 on Ctrl-C (the runs go on).
    """
    from supervisor.watchview import watch_runs

    raise SystemExit(watch_runs(_store(ctx), run_id))


@cli.command()
@config_option
@click.option(
    "--state-dir",
    default=None,
    metavar="DIR",
    help="Keep the demo's database, runs and daemon log in DIR (default: a temporary "
    "directory, removed at the end).",
)
@click.pass_context
def demo(ctx: click.Context, state_dir: str | None) -> None:
    """A self-contained tour: daemon, demo runs, live progress, results."""
    from supervisor.demo import run_demo

    raise SystemExit(run_demo(state_dir=state_dir, config_file=ctx.obj.get(CONFIG_OBJ_KEY)))


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@config_option
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Bring the database schema up to date."""
    from supervisor.db import HEAD_REVISION

    _store(ctx)
    click.echo(f"database {_settings(ctx).database}: schema at revision {HEAD_REVISION}")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"runsup: error: {message}", err=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `runsup` and `python -m supervisor`."""
    try:
        cli.main(args=argv, prog_name="runsup", standalone_mode=True)
    except SupervisorError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
