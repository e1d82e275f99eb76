"""The `runsup` command line: parses arguments, loads settings, calls in. No logic of its own.

Heavy modules (SQLAlchemy, the daemon) are imported inside the commands that need them,
so that `runsup --help` and friends start fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from supervisor.errors import NotFoundError, SupervisorError, ValidationError

if TYPE_CHECKING:
    from datetime import datetime

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


def _store(ctx: click.Context, *, create: bool = True) -> Store:
    """The database; commands that only read pass create=False (SPEC 7: never create one)."""
    from supervisor.cliopen import open_store

    store = open_store(_settings(ctx), create=create)
    ctx.call_on_close(store.close)
    return store


def _warn_if_no_daemon(ctx: click.Context) -> None:
    """On stderr: no daemon has served this database lately (runs would wait for ever)."""
    from supervisor.cliopen import daemon_absent

    warning = daemon_absent(_settings(ctx))
    if warning is not None:
        click.echo(f"runsup: warning: {warning}", err=True)


def _run_ids(store: Store, typed: tuple[str, ...] | list[str]) -> list[str]:
    """Whole run ids from what was typed: each an id or a unique prefix of one."""
    return [store.resolve_id(t) for t in typed]


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
    from supervisor.cliopen import prepare_daemon
    from supervisor.daemon import run_daemon
    from supervisor.logs import configure_logging

    configure_logging(verbose=verbose)
    settings = _settings(ctx)
    prepare_daemon(settings)
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
@click.option(
    "--priority",
    type=int,
    default=None,
    help="Higher starts first (default 0); among equals, the oldest starts first.",
)
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="ID",
    help="Start only after run ID COMPLETED; if it FAILED or was CANCELLED, this run is "
    "CANCELLED. Repeatable.",
)
@click.option(
    "--after-any",
    "after_any",
    multiple=True,
    metavar="ID",
    help="Start only after run ID ended, whatever its status. Repeatable.",
)
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="Submit one run per value (values parsed as with --set); repeated, one run per "
    "combination. The runs share a sweep id and are named after their values.",
)
@json_option
@click.pass_context
def submit(
    ctx: click.Context,
    template: str,
    name: str | None,
    config_json: str | None,
    config_file: str | None,
    sets: tuple[str, ...],
    priority: int | None,
    after: tuple[str, ...],
    after_any: tuple[str, ...],
    sweeps: tuple[str, ...],
    as_json: bool,
) -> None:
    """Queue a run; prints the new run id (one a line for a sweep)."""
    from supervisor.cliopen import check_run_config
    from supervisor.db import NewRun, new_run_id

    _check_template(ctx, template)
    settings = _settings(ctx)
    config = _deep_merge(_base_config(config_json, config_file), _parse_set(sets))
    if sweeps:
        from supervisor.queue.rules import expand_sweep

        points = expand_sweep(sweeps)
        configs = [_deep_merge(config, _parse_set(tuple(p.as_set_pairs()))) for p in points]
        names: list[str | None] = [f"{name} {p.name}" if name else p.name for p in points]
    else:
        configs, names = [config], [name]
    for one in configs:
        check_run_config(settings, template, one)
    new = [
        NewRun(template, json.dumps(c), n, priority) for c, n in zip(configs, names, strict=True)
    ]
    store = _store(ctx)
    sweep_id = new_run_id() if sweeps else None
    records = store.submit_many(
        new,
        after=_run_ids(store, after),
        after_any=_run_ids(store, after_any),
        sweep_id=sweep_id,
    )
    if as_json:
        _print_json(records[0].to_json() if not sweeps else [r.to_json() for r in records])
    else:
        for record in records:
            click.echo(record.id)
    if sweep_id is not None:
        # stderr, so that stdout stays one run id a line (SPEC section 7).
        click.echo(
            f"sweep {sweep_id}: {len(records)} runs (runsup list/watch/cancel --sweep {sweep_id})",
            err=True,
        )
    _warn_if_no_daemon(ctx)


def _check_template(ctx: click.Context, template: str) -> None:
    settings = _settings(ctx)
    if template not in settings.templates:
        known = ", ".join(sorted(settings.templates))
        raise ValidationError(f"unknown template {template!r} (known: {known})")


def _base_config(config_json: str | None, config_file: str | None) -> dict[str, Any]:
    from supervisor.db import check_config_json

    if config_json is not None and config_file is not None:
        raise ValidationError("give --config-json or --config-file, not both")
    text = config_json if config_json is not None else None
    if config_file is not None:
        text = _read_config_file(config_file)
    source = f"--config-file {config_file}" if config_file is not None else "--config-json"
    try:
        return check_config_json(text) if text is not None else {}
    except ValidationError as exc:
        raise ValidationError(f"{source}: {exc}") from None


@cli.command()
@config_option
@click.argument("run_id", required=False)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Change one config key.")
@click.option(
    "--sweep",
    "sweep_id",
    default=None,
    metavar="ID",
    help="With --failed: that sweep's runs that FAILED (each point once), again in the same sweep.",
)
@click.option("--failed", is_flag=True, help="With --sweep ID: resubmit its failed runs.")
@click.option("--name", "-n", default=None, help="A new name (default: the old run's).")
@click.option("--priority", type=int, default=None, help="A new priority (default: the old).")
@click.option("--after", multiple=True, metavar="ID", help="As submit --after. Repeatable.")
@click.option("--after-any", "after_any", multiple=True, metavar="ID", help="As submit.")
@json_option
@click.pass_context
def resubmit(
    ctx: click.Context,
    run_id: str | None,
    sets: tuple[str, ...],
    sweep_id: str | None,
    failed: bool,
    name: str | None,
    priority: int | None,
    after: tuple[str, ...],
    after_any: tuple[str, ...],
    as_json: bool,
) -> None:
    """Queue a new PENDING run with the same template and config as RUN_ID (sets applied), or
    with --sweep ID --failed, the failed runs of a sweep again; prints the new run ids."""
    from supervisor.cliopen import check_run_config
    from supervisor.db import NewRun, check_config_json

    if sweep_id is not None or failed:
        if run_id is not None or sets or sweep_id is None or not failed:
            raise click.UsageError("give RUN_ID [--set ...], or --sweep ID --failed")
        from supervisor.resultsview import resubmit_failed

        for line in resubmit_failed(_settings(ctx), sweep_id, as_json):
            click.echo(line)
        return
    if run_id is None:
        raise click.UsageError("name the RUN_ID to resubmit (or --sweep ID --failed)")
    store = _store(ctx)
    old = store.get(store.resolve_id(run_id))
    config = _deep_merge(check_config_json(old.config_json), _parse_set(sets))
    if old.template in _settings(ctx).templates:
        check_run_config(_settings(ctx), old.template, config)
    new = NewRun(
        old.template,
        json.dumps(config),
        name if name is not None else old.name,
        priority if priority is not None else old.priority,
    )
    record = store.submit_many(
        [new], after=_run_ids(store, after), after_any=_run_ids(store, after_any)
    )[0]
    _warn_if_no_daemon(ctx)
    if as_json:
        _print_json(record.to_json())
    else:
        click.echo(record.id)


@cli.command()
@config_option
@click.argument("run_id")
@click.argument("priority", type=int)
@json_option
@click.pass_context
def priority(ctx: click.Context, run_id: str, priority: int, as_json: bool) -> None:
    """Set a PENDING run's PRIORITY (higher starts first; default 0)."""
    store = _store(ctx)
    record = store.set_priority(store.resolve_id(run_id), priority)
    if as_json:
        _print_json(record.to_json())
    else:
        click.echo(f"run {record.id}: priority {priority}")


def _pause_scope(ctx: click.Context, template: str | None) -> str:
    from supervisor.db import QUEUE_ALL

    if template is None:
        return QUEUE_ALL
    _check_template(ctx, template)
    return template


def _scope_words(scope: str) -> str:
    from supervisor.db import QUEUE_ALL

    return "the whole queue" if scope == QUEUE_ALL else f"template {scope}"


@cli.command()
@config_option
@click.argument("template", required=False)
@click.option("--reason", default=None, help="Why (kept with the pause, shown by list).")
@json_option
@click.pass_context
def pause(ctx: click.Context, template: str | None, reason: str | None, as_json: bool) -> None:
    """Stop starting new runs (of TEMPLATE, else any); running runs go on."""
    scope = _pause_scope(ctx, template)
    changed = _store(ctx).pause(scope, reason)
    if as_json:
        _print_json({"scope": scope, "paused": True, "changed": changed})
    else:
        click.echo(f"paused {_scope_words(scope)}" + ("" if changed else " (already paused)"))


@cli.command()
@config_option
@click.argument("template", required=False)
@json_option
@click.pass_context
def resume(ctx: click.Context, template: str | None, as_json: bool) -> None:
    """Start new runs again (of TEMPLATE, else lift the pause of the whole queue)."""
    scope = _pause_scope(ctx, template)
    changed = _store(ctx).resume(scope)
    if as_json:
        _print_json({"scope": scope, "paused": False, "changed": changed})
    else:
        click.echo(f"resumed {_scope_words(scope)}" + ("" if changed else " (was not paused)"))


@cli.command(name="list")
@config_option
@click.option("--status", "-s", default=None, help="Only runs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Every run (default: every waiting or running run and the 20 that ended last).",
)
@click.option(
    "--sweep", "sweep_id", default=None, metavar="ID", help="Only the runs of this sweep."
)
@json_option
@click.pass_context
def list_runs(
    ctx: click.Context,
    status: str | None,
    limit: int | None,
    show_all: bool,
    sweep_id: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first: every PENDING and RUNNING run and the 20 that ended last, and
    how many more there are (--limit N or --all for others)."""
    from supervisor.db.clientstore import ClientStore
    from supervisor.resultsview import check_status

    if limit is not None and show_all:
        raise click.UsageError("give --limit N or --all, not both")
    status = check_status(status)
    store = _store(ctx, create=False)
    if sweep_id is not None:
        sweep_id = store.resolve_id(sweep_id, sweep=True)
    more = 0
    if limit is None and not show_all:
        bounded = ClientStore(store).bounded_list(status=status, sweep_id=sweep_id)
        runs, more = bounded.runs, bounded.more
    else:
        runs = store.list_runs(status=status, limit=limit, sweep_id=sweep_id)
    if as_json:
        _print_json([r.to_json() for r in runs])
    else:
        from supervisor.cli.views import pause_lines, runs_table

        for line in pause_lines(store.pauses()):
            click.echo(line)
        click.echo(runs_table(runs) if runs else "no runs")
    if more:
        click.echo(
            f"... and {more} more (--all shows every run, --limit N the N newest)", err=as_json
        )


@cli.command()
@config_option
@click.argument("run_ids", nargs=-1, metavar="[ID ...]")
@click.option("--sweep", "sweep_id", default=None, metavar="ID", help="The runs of this sweep.")
@click.option("--status", "-s", default=None, help="Only runs with this status.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, with a header line.")
@json_option
@click.option("--plot", default=None, metavar="X:Y", help="Draw column Y against X into a PNG.")
@click.option("--out", default=None, metavar="F.png", help="The PNG --plot writes (results.png).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Without IDs: at most this many of the newest runs (default 20).",
)
@click.option("--all", "show_all", is_flag=True, help="Without IDs: every run.")
@click.pass_context
def results(
    ctx: click.Context,
    run_ids: tuple[str, ...],
    sweep_id: str | None,
    status: str | None,
    as_csv: bool,
    as_json: bool,
    plot: str | None,
    out: str | None,
    limit: int | None,
    show_all: bool,
) -> None:
    """One row a run: its parameters (the config keys that differ) and its results file's
    values (SPEC section 15)."""
    from supervisor.resultsview import print_results

    if as_csv and as_json:
        raise click.UsageError("give --csv or --json, not both")
    if out is not None and plot is None:
        raise click.UsageError("--out names the picture --plot X:Y draws")
    fmt = "csv" if as_csv else "json" if as_json else "table"
    from supervisor.cliopen import require_database

    require_database(_settings(ctx))  # results only reads: it never creates a database
    raise SystemExit(
        print_results(
            _settings(ctx),
            run_ids,
            sweep_id,
            status,
            fmt,
            plot=plot,
            out=out,
            limit=limit,
            show_all=show_all,
        )
    )


@cli.command()
@config_option
@click.argument("run_id")
@json_option
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run and its history."""
    from supervisor.cli.views import dependency_lines, run_details, shown_json
    from supervisor.hints import retry_note

    store = _store(ctx, create=False)
    run = store.get(store.resolve_id(run_id))
    events = store.events(run.id)
    deps = store.dependencies_of(run.id)
    note = retry_note(run, _settings(ctx).templates.get(run.template))
    if as_json:
        _print_json(
            {
                **shown_json(run),
                "events": [e.to_json() for e in events],
                "dependencies": [d.to_json() for d in deps],
                "retry_note": note,
            }
        )
        return
    click.echo(run_details(run, events))
    if note is not None:
        click.echo(note)
    for line in dependency_lines(deps):
        click.echo(line)


@cli.command()
@config_option
@click.argument("run_ids", nargs=-1, metavar="[ID]...")
@click.option(
    "--sweep", "sweep_id", default=None, metavar="ID", help="Cancel every run of a sweep."
)
@json_option
@click.pass_context
def cancel(
    ctx: click.Context, run_ids: tuple[str, ...], sweep_id: str | None, as_json: bool
) -> None:
    """Ask for runs (IDs, or a sweep's runs) to be cancelled; prints the state of each."""
    store = _store(ctx)
    ids = _ids_or_sweep(store, run_ids, sweep_id)
    answers = [store.request_cancel(i) for i in ids]
    if as_json:
        rows = [{**run.to_json(), "cancel_requested": asked} for run, asked in answers]
        _print_json(rows if sweep_id is not None or len(run_ids) > 1 else rows[0])
    else:
        for run, requested in answers:
            click.echo(_cancel_words(run, requested))
    if any(not run.is_final for run, _ in answers):
        _warn_if_no_daemon(ctx)


def _one_or_sweep(store: Store, run_id: str | None, sweep_id: str | None) -> list[str]:
    """The run named, or every run of the sweep named (exactly one of the two)."""
    return _ids_or_sweep(store, () if run_id is None else (run_id,), sweep_id)


def _ids_or_sweep(store: Store, run_ids: tuple[str, ...], sweep_id: str | None) -> list[str]:
    """The runs named (ids or unique prefixes), or every run of the sweep named."""
    if bool(run_ids) == (sweep_id is not None):
        raise ValidationError("name run IDs or --sweep ID (one of the two)")
    if run_ids:
        return list(dict.fromkeys(_run_ids(store, run_ids)))
    assert sweep_id is not None
    runs = store.list_runs(sweep_id=store.resolve_id(sweep_id, sweep=True))
    if not runs:
        raise NotFoundError(f"no sweep with id {sweep_id!r}")
    return [r.id for r in reversed(runs)]


def _cancel_words(run: Any, requested: bool) -> str:
    if run.is_final:
        return f"run {run.id} is already {run.status}; nothing to cancel"
    if requested:
        return f"run {run.id} ({run.status}): cancel requested"
    asked = run.cancel_requested_at.isoformat() if run.cancel_requested_at else "?"
    return f"run {run.id} ({run.status}): cancel already requested at {asked}"


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
    from supervisor.logs import configure_logging

    configure_logging(quiet=True)  # stdout is the report (--json must parse); GPUs log debug
    if (template is None) != (sample_log is None):
        raise click.UsageError("give --template and --sample-log together")
    settings = _settings(ctx)
    if template is not None and sample_log is not None:
        report = checks.check_sample_log(settings, template, Path(sample_log))
        click.echo(
            json.dumps(report.to_json(), indent=2) if as_json else checks.sample_text(report)
        )
        return
    setup = checks.check_setup(settings)
    click.echo(json.dumps(setup.to_json(), indent=2) if as_json else checks.setup_text(setup))
    raise SystemExit(setup.exit_code)


@cli.command()
@config_option
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
@click.option(
    "--json", "as_json", is_flag=True, help='JSON Lines: {"id": ..., "line": ...} a line.'
)
@click.pass_context
def logs(ctx: click.Context, run_id: str, follow: bool, as_json: bool) -> None:
    """Print a run's log (the simulation's stdout and stderr)."""
    from supervisor.cli.logview import print_log

    store = _store(ctx, create=False)
    raise SystemExit(print_log(store, store.resolve_id(run_id), follow=follow, as_json=as_json))


@cli.command()
@config_option
@click.argument("run_id", required=False)
@click.option("--sweep", "sweep_id", default=None, metavar="ID", help="Watch every run of a sweep.")
@click.option(
    "--json", "as_json", is_flag=True, help="JSON Lines: one object a change, for scripts."
)
@click.pass_context
def watch(ctx: click.Context, run_id: str | None, sweep_id: str | None, as_json: bool) -> None:
    """Live progress bars for running runs, until they end.

    With RUN_ID, that run; with --sweep ID, that sweep's runs; without, every run pending or
    running now or starting meanwhile. Paused scopes of the queue are shown above the runs.
    Plain lines when stdout is not a terminal. Exit status: 0 when every watched run
    COMPLETED, 1 when one FAILED or was CANCELLED, 130 on Ctrl-C (the runs go on).
    """
    from supervisor.cli.watchview import watch_runs

    store = _store(ctx, create=False)
    if sweep_id is not None:
        ids = _one_or_sweep(store, run_id, sweep_id)
        header = f"watching the {len(ids)} runs of sweep {sweep_id} until all end (Ctrl-C: stop)"
        _warn_if_no_daemon(ctx)
        raise SystemExit(watch_runs(store, None, run_ids=ids, header=header, as_json=as_json))
    one = None if run_id is None else store.resolve_id(run_id)
    _warn_if_no_daemon(ctx)
    raise SystemExit(watch_runs(store, one, as_json=as_json))


@cli.command()
@config_option
@click.option(
    "--state-dir",
    default=None,
    metavar="DIR",
    help="Keep the demo's database, runs and daemon log in DIR (default: a temporary "
    "directory, removed at the end).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="The tour on stderr; the runs and results as JSON."
)
@click.pass_context
def demo(ctx: click.Context, state_dir: str | None, as_json: bool) -> None:
    """A self-contained tour: daemon, demo runs, live progress, results."""
    from supervisor.cli.demo import run_demo

    config_file = ctx.obj.get(CONFIG_OBJ_KEY)
    raise SystemExit(run_demo(state_dir=state_dir, config_file=config_file, as_json=as_json))


@cli.command()
@config_option
@click.option(
    "--textfile",
    default=None,
    metavar="PATH",
    help="Write to PATH atomically (for node_exporter's textfile collector) instead of stdout.",
)
@json_option
@click.pass_context
def metrics(ctx: click.Context, textfile: str | None, as_json: bool) -> None:
    """Print the Prometheus metrics, computed from the database (SPEC section 14)."""
    from supervisor.logs import configure_logging
    from supervisor.metrics.collector import render, samples_json, write_textfile

    configure_logging(quiet=True)  # stdout is the metrics; finding GPUs logs debug events

    data = render(_store(ctx, create=False), _settings(ctx))
    if as_json:
        _print_json(samples_json(data))
    elif textfile is None:
        click.echo(data.decode(), nl=False)
    else:
        write_textfile(Path(textfile), data)


@cli.command(name="cgroup-handover", hidden=True)
@click.argument("user")
def cgroup_handover(user: str) -> None:
    """For the systemd unit's ExecStartPre (as root): give USER the unit's v1 memory cgroup."""
    from supervisor.executors.local.cgroup_handover import main as hand_over

    raise SystemExit(hand_over([user]))


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@config_option
@json_option
@click.pass_context
def upgrade(ctx: click.Context, as_json: bool) -> None:
    """Bring the database schema up to date."""
    from supervisor.db import HEAD_REVISION

    _store(ctx)
    database = _settings(ctx).database
    if as_json:
        _print_json({"database": database, "revision": HEAD_REVISION})
    else:
        click.echo(f"database {database}: schema at revision {HEAD_REVISION}")


@db.command()
@config_option
@click.option(
    "--ended-before",
    "ended_before",
    default=None,
    metavar="DATE",
    help="Prune final runs that ended before DATE (YYYY-MM-DD or ISO 8601; UTC unless it says).",
)
@click.option(
    "--keep-days",
    "keep_days",
    default=None,
    type=click.FloatRange(min=0),
    metavar="N",
    help="Prune final runs that ended more than N days ago.",
)
@click.option("--files", is_flag=True, help="Remove their run directories too.")
@click.option("--dry-run", "dry_run", is_flag=True, help="Say what would go; change nothing.")
@json_option
@click.pass_context
def prune(
    ctx: click.Context,
    ended_before: str | None,
    keep_days: float | None,
    files: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete final runs that ended before a date, with their events and dependency rows;
    never a PENDING or RUNNING run, nor one a run not yet final depends on."""
    from supervisor.db import utcnow
    from supervisor.retention import cutoff_for, prune_runs

    if (ended_before is None) == (keep_days is None):
        raise ValidationError("give one of --ended-before DATE and --keep-days N")
    cutoff = cutoff_for(keep_days, utcnow()) if keep_days is not None else _date(ended_before)
    done = prune_runs(_store(ctx), _settings(ctx), cutoff, files=files, dry_run=dry_run)
    rows = done.rows
    if as_json:
        _print_json(
            {
                "ended_before": cutoff.isoformat(),
                "dry_run": dry_run,
                "runs": rows.runs,
                "events": rows.events,
                "dependencies": rows.dependencies,
                "kept_needed": rows.kept_needed,
                "run_dirs": done.dirs_removed,
                "run_dir_errors": done.dir_errors,
            }
        )
    else:
        verb = "would prune" if dry_run else "pruned"
        click.echo(
            f"{verb} {rows.runs} runs that ended before {cutoff:%Y-%m-%d %H:%M:%S} UTC"
            f" ({rows.events} events, {rows.dependencies} dependency rows)"
        )
        if rows.kept_needed:
            click.echo(f"kept {rows.kept_needed} that runs not yet final depend on")
        if files:
            click.echo(f"{'would remove' if dry_run else 'removed'} {done.dirs_removed} run"
                       " directories")
        for error in done.dir_errors:
            click.echo(f"runsup: could not remove {error}", err=True)
    if done.dir_errors:
        raise SystemExit(1)


def _date(value: str | None) -> datetime:
    """A --ended-before value: a date or an ISO 8601 time; UTC unless it names an offset."""
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValidationError(
            f"--ended-before {value!r}: expected a date (YYYY-MM-DD) or an ISO 8601 time"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"runsup: error: {message}", err=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `runsup` and `python -m supervisor`."""
    try:
        cli.main(args=argv, prog_name="runsup", standalone_mode=True)
    except SupervisorError as exc:
        _fail(str(exc))
    except OSError as exc:
        # A folder or file the system refused that no command foresaw: one line, no traceback.
        from supervisor.cliopen import os_error_words

        _fail(os_error_words(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
