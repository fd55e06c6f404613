"""The command line: `router validate | test | serve | worker | migrate | events | dead-letters | replay |
backup | sign | keygen | sink`.

One convention: every command that needs the rules file takes it as its first argument, or as
`--rules FILE`, or from `$ROUTER_RULES`. Store commands load it leniently (only `settings:` must be
valid, and unset ${VAR}s elsewhere do not matter), so they work without the service's secrets.

Exit codes: 0 done; 1 invalid, not found, or nothing to do; 2 usage (a bad option, a missing
file); 130 interrupted. Errors reach the user as one clear line, never a traceback. Everything
printed passes through `safe_text`/`safe_json`: a payload-controlled control character (an escape
sequence in a dead-letter reason) is shown escaped, never sent raw to the terminal; and secrets
never appear.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from router import __version__, logs
from router.config.fields import did_you_mean, parse_duration
from router.config.loader import load, load_for_store
from router.config.model import Config
from router.config.settings import Settings
from router.errors import ConfigError, StoreError
from router.secret import Redactor
from router.store.base import Store
from router.store.uri import describe

# --------------------------------------------------------------------------- terminal safety

# C0 controls but newline and tab, DEL, C1 controls, and the invisible bidi/format marks that
# can make text display as something else
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_UNSAFE_CELL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    return {9: "\\t", 10: "\\n", 13: "\\r"}.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe_text(text: str) -> str:
    """Text for a terminal: control characters shown as escapes (\\x1b), line breaks kept."""
    return _UNSAFE.sub(_escape, text)


def safe_cell(text: str) -> str:
    """One table cell: also line breaks and tabs escaped, so a row stays one line."""
    return _UNSAFE_CELL.sub(_escape, text)


def safe_json(text: str) -> str:
    """JSON text (json.dumps already escapes C0): what remains is escaped as JSON's \\uXXXX."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def echo(text: str, *, err: bool = False) -> None:
    click.echo(safe_text(text), err=err)


def dumps(value: Any, *, indent: int | None = None) -> str:
    return safe_json(json.dumps(value, indent=indent, ensure_ascii=False, default=str))


class _EscapingStream:
    """Wraps stderr for click's own error messages, which quote what the user typed."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(safe_text(text))

    def flush(self) -> None:
        self.stream.flush()


class Invalid(click.ClickException):
    """Exit 1 with a message (problems already printed, or a one-line reason)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        if self.message:
            echo(self.message, err=True)


def usage(message: str) -> click.UsageError:
    """Exit 2, with the command's usage line."""
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


# --------------------------------------------------------------------------- the rules file

RULES_HELP = "The rules file (instead of the first argument); default $ROUTER_RULES."


def rules_option(f: Any) -> Any:
    return click.option("--rules", "rules_opt", default=None, metavar="FILE", help=RULES_HELP)(f)


def _rules_path(given: str | None, option: str | None) -> str:
    if given is not None and option is not None:
        raise usage("give the rules file once: as the first argument or with --rules, not both")
    path = given or option or os.environ.get("ROUTER_RULES")
    if not path:
        raise usage("no rules file: give it as the first argument, with --rules FILE, or in $ROUTER_RULES")
    if not Path(path).exists():
        raise usage(f"rules file {path} does not exist")
    if not Path(path).is_file():
        raise usage(f"rules file {path} is not a file")
    return path


def _split(args: tuple[str, ...], option: str | None, names: list[str], optional: int = 0) -> tuple[str, list[str | None]]:
    """Positional arguments -> (rules file, the command's own arguments). The rules file is the
    first argument when one more than the command's own is given; otherwise it comes from
    --rules or $ROUTER_RULES. The last `optional` of `names` may be left out."""
    most, least = len(names), len(names) - optional
    n = len(args)
    if n > most + 1:
        raise usage(f"too many arguments: expected {' '.join(['[RULES]', *names])}")
    from_elsewhere = option is not None or bool(os.environ.get("ROUTER_RULES"))
    if n == most + 1 or (n > least and not from_elsewhere):
        rules, own = _rules_path(args[0], option), list(args[1:])
    elif n >= least:
        rules, own = _rules_path(None, option), list(args)
    else:
        missing = names[n]
        raise usage(f"missing argument {missing}")
    return rules, own + [None] * (most - len(own))


def _load(rules: str, *, problems_to_stdout: bool = False) -> Config:
    try:
        return load(rules)
    except ConfigError as exc:
        for problem in exc.problems:
            echo(str(problem), err=not problems_to_stdout)
        raise Invalid(f"{rules}: {len(exc.problems)} problem(s) found") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="router")
def cli() -> None:
    """The router: receive webhooks, prove them authentic, validate, route and deliver them.

    Every command that needs the rules file takes it as its first argument, or --rules FILE,
    default $ROUTER_RULES. Exit codes: 0 done, 1 invalid or not found, 2 usage (a bad option,
    a missing file). Shell completion: eval "$(_ROUTER_COMPLETE=bash_source router)".
    """


# --------------------------------------------------------------------------- validate


@cli.command()
@click.argument("rules", required=False, metavar="[RULES]")
@rules_option
@click.option("--strict", is_flag=True, help="Treat warnings as errors (exit 1).")
@click.option("--check-store", is_flag=True, help="Also connect to the store and report its schema version.")
def validate(rules: str | None, rules_opt: str | None, strict: bool, check_store: bool) -> None:
    """Check a rules file: YAML, structure, references, regexes, templates, schemas, env vars.

    Prints OK and a summary, or one line per problem as FILE:LINE:COL: path: message. Warnings
    (a field the provider's schema does not have, an unknown template variable, an unused
    action) are printed the same way and do not fail the check unless --strict. With
    --check-store, also connects to the store and reports its schema version.
    Exit 0 when valid, 1 when not (or the store cannot be reached), 2 on usage (a missing file).
    """
    path = _rules_path(rules, rules_opt)
    config = _load(path, problems_to_stdout=True)
    for warning in config.warnings:
        echo(str(warning))
    n = len(config.warnings)
    if strict and n:
        raise Invalid(f"{path}: {n} warning(s), failing because of --strict")
    note = f" ({n} warning{'s' if n != 1 else ''})" if n else ""
    echo(config.redactor(f"OK: {path}: {config.summary()}{note}"))
    if check_store:
        echo(config.redactor(_check_store(config.settings, config.redactor)))


def _check_store(settings: Settings, redactor: Redactor) -> str:
    from router.store import is_postgres

    location = settings.store
    if not is_postgres(location) and not Path(location).exists():
        return f"store: {describe(location)}: not created yet (the first event creates it)"
    try:
        store, version = _open_for_schema(settings, migrate=False)
        store.close()
    except StoreError as exc:
        raise Invalid(redactor(f"store: {describe(location)}: cannot connect: {exc}")) from None
    from router.store.postgres import SCHEMA_VERSION

    if version == 0:
        state = "no schema yet (run `router migrate` or start the router)"
    elif version < SCHEMA_VERSION:
        state = f"schema version {version}, this router migrates it to {SCHEMA_VERSION} at start"
    else:
        state = f"schema version {version}"
    return f"store: {describe(location)}: connected, {state}"


def _open_for_schema(settings: Settings, *, migrate: bool) -> tuple[Store, int]:
    """The store and its schema version; for PostgreSQL without creating the schema unless `migrate`."""
    from router.store import is_postgres, open_store

    location = settings.store
    if is_postgres(location):
        from router.store.postgres import PostgresStore

        pg = PostgresStore(str(location), settings.durability, migrate=False)
        if migrate:
            pg.migrate()
        return pg, pg.schema_version()
    from router.store.sqlite import SCHEMA_VERSION

    return open_store(location, settings.durability), SCHEMA_VERSION  # SQLite creates its schema on open


@cli.command()
@click.argument("rules", required=False, metavar="[RULES]")
@rules_option
def migrate(rules: str | None, rules_opt: str | None) -> None:
    """Create the store's schema, or migrate it to this router's version (one host at a time).

    Every host also does this at start; run it on purpose before a rolling upgrade. Needs only
    the rules file's settings.
    """
    path = _rules_path(rules, rules_opt)
    try:
        settings, redactor = load_for_store(path)
    except ConfigError as exc:
        for problem in exc.problems:
            echo(str(problem), err=True)
        raise Invalid(f"{path}: cannot find the store ({len(exc.problems)} problem(s) under settings)") from None
    where = describe(settings.store)
    try:
        store, before = _open_for_schema(settings, migrate=False)
        store.close()
        store, after = _open_for_schema(settings, migrate=True)
        store.close()
    except StoreError as exc:
        raise Invalid(redactor(f"cannot migrate {where}: {exc}")) from None
    if before == after:
        echo(redactor(f"{where}: schema version {after}, up to date"))
    else:
        echo(redactor(f"{where}: schema migrated from version {before} to {after}"))


# --------------------------------------------------------------------------- test


def _pairs(values: tuple[str, ...], sep: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        if sep not in value:
            raise usage(f"{what} '{value}' must look like NAME{sep}VALUE")
        k, v = value.split(sep, 1)
        out[k.strip()] = v.strip() if sep == ":" else v
    return out


def _read_payload(payload: str | None) -> bytes:
    if payload is None or payload == "-":
        if payload is None and sys.stdin.isatty():
            raise usage("give a PAYLOAD file, or pipe the event on stdin")
        return sys.stdin.buffer.read()
    try:
        return Path(payload).read_bytes()
    except FileNotFoundError:
        raise usage(f"payload file {payload} does not exist") from None
    except OSError as exc:
        raise usage(f"cannot read {payload}: {exc.strerror or exc}") from None


@cli.command("test")
@click.argument("args", nargs=-1, metavar="[RULES] [PAYLOAD]")
@rules_option
@click.option("--provider", "provider_name", default=None, help="The provider (a key under providers:); "
              "required unless --event.")
@click.option("--event", "event_id", default=None, metavar="ID", help="Take a stored event (payload, headers, "
              "query, provider) from the store instead of PAYLOAD.")
@click.option("--header", "headers", multiple=True, metavar="K:V", help="A request header (repeatable).")
@click.option("--query", "query", multiple=True, metavar="K=V", help="A query parameter (repeatable).")
@click.option("--expect", "expect", multiple=True, metavar="RULE", help="A rule that must match (repeatable); "
              "with any --expect, the matched rules must be exactly this set.")
@click.option("--explain", is_flag=True, help="For every rule: matched or not, the condition that failed and the "
              "value the event had there; where a stop: true rule ended evaluation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def test_cmd(args: tuple[str, ...], rules_opt: str | None, provider_name: str | None, event_id: str | None,
             headers: tuple[str, ...], query: tuple[str, ...], expect: tuple[str, ...], explain: bool,
             as_json: bool) -> None:
    """Dry run: what the router would do with an event. Validates the payload as PROVIDER would send
    it, shows the matching rules and each action rendered as it would be sent. Sends nothing and
    skips the signature check.

    PAYLOAD is a file, or - (or nothing) for stdin. With one argument and --rules or $ROUTER_RULES
    given, the argument is the PAYLOAD. Exit 0, or 1 when the payload is invalid, the event is
    not found, or the matched rules are not exactly the --expect set.
    """
    from router.pipeline.explain import explain as explain_event
    from router.pipeline.explain import pretty, render_text

    if event_id is not None:
        rules, own = _split(args, rules_opt, [])
    else:
        rules, own = _split(args, rules_opt, ["PAYLOAD"], optional=1)
        if provider_name is None:
            raise usage("--provider is required (or --event ID to take a stored event)")
    config = _load(rules)
    header_map = {k.lower(): v for k, v in _pairs(headers, ":", "--header").items()}
    query_map = _pairs(query, "=", "--query")
    received_at = content_type = None
    if event_id is not None:
        stored = _open_store(rules, config.settings.store, config.settings.durability, config.redactor).event(event_id)
        if stored is None:
            raise Invalid(f"no event {event_id}")
        provider_name = provider_name or stored.provider
        body, received_at, content_type = stored.body, stored.received_at, stored.content_type
        header_map = {**stored.headers, **header_map}
        query_map = {**stored.query, **query_map}
    else:
        body = _read_payload(own[0])
    assert provider_name is not None
    if provider_name not in config.providers:
        hint = did_you_mean(provider_name, config.providers)
        raise usage(f"no provider named '{provider_name}'{hint}; known: {', '.join(config.providers)}")

    ex = explain_event(config, provider_name, body, header_map, query_map, content_type=content_type,
                       event_id=event_id, received_at=received_at)
    redact = config.redactor
    if not ex.valid:
        if as_json:
            echo(redact(dumps(ex.to_dict(), indent=2)))
        if ex.violations:
            echo(f"payload invalid for provider '{provider_name}' (HTTP {ex.status}):", err=True)
            for d in ex.violations:
                echo(f"  {'.'.join(str(x) for x in d['loc'])}: {d['msg']} ({d['type']})", err=True)
            raise Invalid("")
        raise Invalid(f"payload invalid for provider '{provider_name}' (HTTP {ex.status}): {ex.error}")

    if as_json:
        if explain:
            echo(redact(dumps(ex.to_dict(), indent=2)))
        else:
            entries = []
            for a in ex.actions:
                entry: dict[str, Any] = {"rule": a.rule, "action": a.action, "type": a.type}
                entry.update({"error": a.error} if a.error is not None else {"rendered": a.rendered})
                entries.append(entry)
            result = {"provider": provider_name, "matched": ex.matched, "actions": entries}
            echo(redact(dumps(result, indent=2)))
    elif explain:
        echo(redact(render_text(ex)))
    else:
        echo(f"payload: valid for provider '{provider_name}' ({ex.provider_type})")
        echo(f"matched: {', '.join(ex.matched) if ex.matched else '(no rule)'}")
        for a in ex.actions:
            echo(f"- rule {a.rule} -> action {a.action} ({a.type})")
            if a.error is not None:
                echo(f"    would fail permanently: {redact(a.error)}")
            else:
                echo(redact("\n".join("    " + line for line in pretty(a.rendered).splitlines())))
    if expect:
        wanted, got = set(expect), set(ex.matched)
        if wanted != got:
            missing = ", ".join(sorted(wanted - got)) or "none"
            extra = ", ".join(sorted(got - wanted)) or "none"
            raise Invalid(f"expectation failed: missing {missing}; unexpected {extra}")
        echo("expectation met")


# --------------------------------------------------------------------------- serve / worker


@cli.command()
@click.argument("rules", required=False, metavar="[RULES]")
@rules_option
@click.option("--bind", "-b", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", "-w", type=click.IntRange(1, 64), default=None,
              help="Worker processes [default: one per core, at least 2, at most 8].")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True, help="Threads per worker.")
@click.option("--timeout", type=click.IntRange(1, 3600), default=30, show_default=True, help="Worker timeout (s).")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="An access line for every request on stdout (each hook request has its event line anyway).")
@click.option("--no-delivery", is_flag=True, help="Serve HTTP only (run `router worker` elsewhere).")
def serve(rules: str | None, rules_opt: str | None, bind: str, workers: int | None, threads: int, timeout: int,
          access_log: bool, no_delivery: bool) -> None:
    """Run the service under gunicorn. This process is the gunicorn master: HUP reloads, TERM stops."""
    from router.web.server import run

    path = _rules_path(rules, rules_opt)
    _load(path)  # fail fast, with validate's messages, before any worker starts
    run(str(Path(path).resolve()), bind=bind, workers=workers, threads=threads, timeout=timeout,
        access_log=access_log, delivery=not no_delivery)


@cli.command()
@click.argument("rules", required=False, metavar="[RULES]")
@rules_option
@click.option("--concurrency", type=click.IntRange(1, 256), default=None, help="Deliveries in flight at once.")
def worker(rules: str | None, rules_opt: str | None, concurrency: int | None) -> None:
    """Deliver only, for deployments that split web and delivery. TERM stops after in-flight attempts."""
    import gc
    import signal
    import threading

    from router import metrics
    from router.web.state import RouterState

    path = _rules_path(rules, rules_opt)
    config = _load(path)
    logs.setup(config.redactor)
    metrics.init(config.settings.store)  # beside `router serve`, into the folder its workers count in
    state = RouterState(config, Path(path))
    if concurrency:
        config.settings.delivery_concurrency = concurrency
    state.start_delivery()
    gc.collect()
    gc.freeze()  # the loaded rules and libraries: out of the collector's reach, as in the web workers
    done = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        done.set()

    def reload(signum: int, frame: Any) -> None:
        try:
            state.config = load(path)
            logs.use_redactor(state.config.redactor)
            logs.info("rules reloaded", rules=str(path))
        except ConfigError as exc:
            logs.error("rules reload failed; keeping the old rules", problems=[str(p) for p in exc.problems])

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    logs.info("worker started", pid=os.getpid(), store=describe(config.settings.store))
    while not done.wait(1.0):
        pass
    state.stop_delivery(10.0)
    logs.info("worker stopped", pid=os.getpid())


# --------------------------------------------------------------------------- store inspection


def _open_store(rules: str, location: Any, durability: str, redactor: Redactor) -> Store:
    from router.store import is_postgres, open_store

    if not is_postgres(location) and not Path(location).exists():
        raise Invalid(f"no store yet at {location} (nothing received)")
    try:
        return open_store(location, durability)
    except StoreError as exc:
        raise Invalid(redactor(f"cannot open the store: {exc}")) from None


def _store(rules: str) -> tuple[Redactor, Store]:
    """The store of a rules file, read leniently: the service's secrets need not be set."""
    try:
        settings, redactor = load_for_store(rules)
    except ConfigError as exc:
        for problem in exc.problems:
            echo(str(problem), err=True)
        raise Invalid(f"{rules}: cannot find the store ({len(exc.problems)} problem(s) under settings)") from None
    return redactor, _open_store(rules, settings.store, settings.durability, redactor)


def parse_when(text: str, now: float | None = None) -> float:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration ago (`1h`, `30m`, `2d`)."""
    import time

    seconds = parse_duration(text)
    if seconds is not None:
        return (time.time() if now is None else now) - seconds
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is neither an ISO time (2026-12-01T09:30:00Z) nor a duration "
                                 "ago (30m, 1h, 2d)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _when_option(name: str, help: str) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
        return None if value is None else parse_when(value)

    return click.option(name, default=None, metavar="TIME", callback=convert, help=help)


@cli.group()
def events() -> None:
    """Inspect stored events."""


@events.command("list")
@click.argument("rules", required=False, metavar="[RULES]")
@rules_option
@click.option("--provider", default=None, help="Only this provider's events.")
@click.option("--rule", default=None, help="Only events that matched this rule.")
@click.option("--state", type=click.Choice(["pending", "delivered", "dead"]), default=None,
              help="Only events with a delivery in this state.")
@_when_option("--since", "Received at or after: an ISO time, or a duration ago (1h, 30m, 2d).")
@_when_option("--until", "Received before: an ISO time, or a duration ago.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events_list(rules: str | None, rules_opt: str | None, provider: str | None, rule: str | None, state: str | None,
                since: float | None, until: float | None, limit: int, as_json: bool) -> None:
    """Stored events, newest first, with their delivery states."""
    from router.store import EventFilter

    redact, store = _store(_rules_path(rules, rules_opt))
    rows = store.list_events(EventFilter(provider=provider, rule=rule, state=state, since=since, until=until,
                                         limit=limit))
    _print_rows(rows, as_json, ["event_id", "received_at", "provider", "matched", "deliveries"], redact)


@events.command("show")
@click.argument("args", nargs=-1, metavar="[RULES] EVENT_ID")
@rules_option
def events_show(args: tuple[str, ...], rules_opt: str | None) -> None:
    """One event: headers, payload, and every delivery with its attempts. Exit 1 when not found."""
    rules, (event_id,) = _split(args, rules_opt, ["EVENT_ID"])
    assert event_id is not None
    redact, store = _store(rules)
    found = store.show_event(event_id)
    if found is None:
        raise Invalid(f"no event {event_id}")
    echo(redact(dumps(found, indent=2)))


@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect deliveries that were given up on."""


@dead_letters.command("list")
@click.argument("rules", required=False, metavar="[RULES]")
@rules_option
@click.option("--action", default=None, help="Only this action's dead letters.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_letters_list(rules: str | None, rules_opt: str | None, action: str | None, limit: int,
                      as_json: bool) -> None:
    """Dead-lettered deliveries, newest first, with the reason. Replay one with `router replay JOB_ID`."""
    redact, store = _store(_rules_path(rules, rules_opt))
    rows = store.list_dead(action=action, limit=limit)
    _print_rows(rows, as_json, ["job_id", "event_id", "rule", "action", "attempts", "status", "dead_at", "reason"],
                redact)


@cli.command()
@click.argument("args", nargs=-1, metavar="[RULES] [ID]")
@rules_option
@click.option("--action", default=None, help="Every dead letter of this action.")
@_when_option("--since", "Dead letters that died at or after this time (ISO, or a duration ago: 1h).")
@click.option("--all-dead", is_flag=True, help="Every dead letter.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before re-queueing (needed when stdin is not a terminal).")
def replay(args: tuple[str, ...], rules_opt: str | None, action: str | None, since: float | None, all_dead: bool,
           yes: bool) -> None:
    """Re-queue dead-lettered deliveries: one job (JOB_ID), every dead delivery of an event (EVENT_ID),
    or those a filter selects (--action, --since, --all-dead), after saying how many.

    Exit 1 when the id is unknown or has nothing dead (each said plainly), or nothing matches.
    """
    filtering = action is not None or since is not None or all_dead
    if filtering:
        rules, (ident,) = _split(args, rules_opt, ["ID"], optional=1)
        if ident is not None:
            raise usage("give an ID or a filter (--action, --since, --all-dead), not both")
    else:
        if not args:
            raise usage("give a JOB_ID or EVENT_ID, or a filter: --action NAME, --since TIME, --all-dead")
        rules, (ident,) = _split(args, rules_opt, ["ID"])
    redact, store = _store(rules)
    if ident is not None:
        count = store.replay(ident)
        if count:
            logs.info("dead letters replayed", id=ident, count=count)
            echo(f"re-queued {count} deliver{'y' if count == 1 else 'ies'}")
            return
        raise Invalid(_why_nothing_to_replay(store, ident))

    what = ", ".join(x for x in (f"action {action}" if action else "",
                                 f"dead since {_iso(since)}" if since is not None else "") if x) or "all"
    count = store.count_dead(action=action, since=since)
    if count == 0:
        raise Invalid(f"no dead-lettered delivery matches ({what})")
    echo(f"{count} dead-lettered deliver{'y' if count == 1 else 'ies'} match ({what})")
    if not yes:
        if not sys.stdin.isatty():
            raise usage("stdin is not a terminal: add --yes to re-queue without a prompt")
        if not click.confirm("Re-queue them?", default=False):
            raise Invalid("nothing re-queued")
    done = store.replay_dead(action=action, since=since)
    logs.info("dead letters replayed", action=action, since=_iso(since) if since is not None else None, count=done)
    echo(f"re-queued {done} deliver{'y' if done == 1 else 'ies'}")


def _why_nothing_to_replay(store: Store, ident: str) -> str:
    if ident.isdigit():
        job = store.job(int(ident))
        if job is not None:
            hint = " (it is still being tried)" if job.state == "pending" else ""
            return f"job {ident} is {job.state}, not dead: nothing to replay{hint}"
    if store.event(ident) is not None:
        states: dict[str, int] = {}
        for j in store.jobs(event_id=ident):
            states[j.state] = states.get(j.state, 0) + 1
        shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no deliveries"
        return f"event {ident} has no dead deliveries ({shown}): nothing to replay"
    return f"no job or event {ident}"


def _iso(ts: float | None) -> str:
    from router.model import iso_utc

    return iso_utc(ts) if ts is not None else "-"


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: list[str], redact: Redactor) -> None:
    if as_json:
        for row in rows:
            echo(redact(dumps(row)))
        return
    if not rows:
        echo("(none)")
        return
    cells = [[safe_cell(redact(_cell(row.get(c)))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    widths[-1] = len(columns[-1])  # the last column runs free
    echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


@cli.command()
@click.argument("args", nargs=-1, metavar="[RULES] DESTINATION")
@rules_option
def backup(args: tuple[str, ...], rules_opt: str | None) -> None:
    """Copy the store to DESTINATION while the router runs (SQLite's online backup; pg_dump for PostgreSQL)."""
    rules, (destination,) = _split(args, rules_opt, ["DESTINATION"])
    assert destination is not None
    redact, store = _store(rules)
    dest = Path(destination)
    if dest.exists():
        raise Invalid(f"{destination} exists; give a new file name")
    try:
        echo(store.backup(dest))
    except StoreError as exc:
        raise Invalid(redact(str(exc))) from None


# --------------------------------------------------------------------------- sign / keygen / sink


@cli.command()
@click.argument("args", nargs=-1, metavar="[RULES] [PAYLOAD]")
@rules_option
@click.option("--provider", "provider_name", required=True, help="The provider to sign as.")
@click.option("--private-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="PEM P-256 private key, to sign as an ES256 (Panjaya) provider (make one: router keygen).")
@click.option("--curl", "curl_url", default=None, metavar="URL", help="Print a curl command for this URL.")
@click.option("--timestamp", type=click.IntRange(0), default=None, metavar="UNIX",
              help="The time to sign, in Unix seconds (default now), for the types that sign one "
                   "(stripe, slack, standard-webhooks).")
def sign(args: tuple[str, ...], rules_opt: str | None, provider_name: str, private_key: str | None,
         curl_url: str | None, timestamp: int | None) -> None:
    """Print the headers PROVIDER would send with PAYLOAD (a file, or - for stdin), to test locally with curl."""
    import shlex

    rules, (payload,) = _split(args, rules_opt, ["PAYLOAD"], optional=1)
    config = _load(rules)
    spec = config.providers.get(provider_name)
    if spec is None:
        hint = did_you_mean(provider_name, config.providers)
        raise usage(f"no provider named '{provider_name}'{hint}")
    body = _read_payload(payload)
    key = Path(private_key).read_bytes() if private_key else None
    try:
        headers = spec.impl.sign(body, key, timestamp=timestamp)
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc)) from None
    headers = {"Content-Type": "application/json", **headers}
    query = spec.impl.sign_query(body)  # what the provider adds to its URL (Twilio's bodySHA256)
    if curl_url:
        url = curl_url + ("&" if "?" in curl_url else "?") + query if query else curl_url
        parts = ["curl", "-sS", "-X", "POST", url]
        for k, v in headers.items():
            parts += ["-H", f"{k}: {v}"]
        parts += ["--data-binary", f"@{payload or '-'}"]
        echo(" ".join(shlex.quote(p) for p in parts))
    else:
        for k, v in headers.items():
            echo(f"{k}: {v}")
        if query:
            echo(f"# add to the URL's query string: {query}", err=True)
    if spec.token is not None:
        echo("# this provider also needs its token: ?token=... or X-Router-Token (not printed)", err=True)


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--name", default="panjaya-test", show_default=True, help="File names: NAME.key.pem, NAME.pub.pem.")
def keygen(directory: str, name: str) -> None:
    """Write a P-256 key pair, to try Panjaya-style (ES256) signing locally.

    Give the public half to a panjaya provider (public_key_file: NAME.pub.pem) and sign with the
    private half: router sign --provider NAME --private-key NAME.key.pem PAYLOAD.
    The private key is written readable by you only; existing files are never overwritten.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise usage("--name may use only letters, digits, '_', '-' and '.'")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.key.pem", folder / f"{name}.pub.pem"
    for p in (private_path, public_path):
        if p.exists():
            raise Invalid(f"{p} exists; not overwriting it (give another --name or folder)")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(public_pem)
    echo(f"private key: {private_path} (mode 600; keep it out of the rules file)")
    echo(f"public key:  {public_path}")
    echo(f"use it: public_key_file: {public_path.resolve()}   (in the panjaya provider's entry)")
    echo(f"        router sign --provider NAME --private-key {private_path} PAYLOAD")


@cli.command()
@click.option("--bind", "-b", default="127.0.0.1:9000", show_default=True,
              help="HOST:PORT to listen on (port 0: any free port).")
@click.option("--max-body", type=click.IntRange(1, 64 << 20), default=1 << 20, show_default=True,
              help="Bytes of one body it reads; a larger one gets 413.")
def sink(bind: str, max_body: int) -> None:
    """A destination that prints every request it receives and answers 200 `ok` (Slack's success
    answer), to try forward and slack actions locally. Ctrl-C stops it."""
    from router.sink import serve_sink

    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise usage(f"--bind '{bind}' must look like HOST:PORT")
    serve_sink(host, int(port), max_body, lambda text: echo(text))


def main() -> NoReturn:
    try:
        code = cli.main(prog_name="router", standalone_mode=False)
    except click.exceptions.Abort:
        echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show(file=_EscapingStream(sys.stderr))  # type: ignore[arg-type]
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug of ours: one line, not a traceback
        echo(f"router: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
