"""The command line: `router validate | test | serve | worker | events | dead-letters | replay | sign`.

Errors reach the user as one clear line (click's ClickException, exit 1; UsageError, exit 2),
never as a traceback; secrets never appear in what is printed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from router import __version__
from router.config.fields import did_you_mean
from router.config.loader import load
from router.config.model import Config
from router.errors import ConfigError, RequestError, SchemaError, StoreError
from router.store.base import Store


class Invalid(click.ClickException):
    """Exit 1 with a message (problems already printed, or a one-line reason)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        if self.message:
            click.echo(self.message, err=True)


def _load(rules: str, *, problems_to_stdout: bool = False) -> Config:
    try:
        return load(rules)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=not problems_to_stdout)
        raise Invalid(f"{rules}: {len(exc.problems)} problem(s) found") from None


def _rules_option(f: Any) -> Any:
    return click.option(
        "--rules",
        "rules",
        envvar="ROUTER_RULES",
        required=True,
        type=click.Path(dir_okay=False),
        help="The rules file (default: $ROUTER_RULES).",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="router")
def cli() -> None:
    """The router: receive webhooks, prove them authentic, validate, route and deliver them."""


# --------------------------------------------------------------------------- validate


@cli.command()
@click.argument("rules", type=click.Path(dir_okay=False))
def validate(rules: str) -> None:
    """Check a rules file: YAML, structure, references, regexes, templates, schemas, env vars.

    Prints OK and a summary, or one line per problem as FILE:LINE:COL: path: message.
    Exit 0 when valid, 1 when not.
    """
    config = _load(rules, problems_to_stdout=True)
    click.echo(f"OK: {rules}: {config.summary()}")
    inspector = config.settings.inspector
    if inspector is not None and inspector.enabled:
        click.echo(f"warning: settings.inspector is on at {inspector.path}: its password travels by HTTP Basic, "
                   "so serve it on a loopback bind (serve's default) or with TLS in front", err=True)


# --------------------------------------------------------------------------- test


def _pairs(values: tuple[str, ...], sep: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        if sep not in value:
            raise click.UsageError(f"{what} '{value}' must look like NAME{sep}VALUE")
        k, v = value.split(sep, 1)
        out[k.strip()] = v.strip() if sep == ":" else v
    return out


@cli.command("test")
@click.argument("rules", type=click.Path(dir_okay=False))
@click.argument("payload", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--provider", "provider_name", required=True, help="The provider (a key under providers:).")
@click.option("--header", "headers", multiple=True, metavar="K:V", help="A request header (repeatable).")
@click.option("--query", "query", multiple=True, metavar="K=V", help="A query parameter (repeatable).")
@click.option("--expect", "expect", multiple=True, metavar="RULE", help="A rule that must match (repeatable); "
              "with any --expect, the matched rules must be exactly this set.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def test_cmd(rules: str, payload: str, provider_name: str, headers: tuple[str, ...], query: tuple[str, ...],
             expect: tuple[str, ...], as_json: bool) -> None:
    """Dry run: validate PAYLOAD as PROVIDER would send it, show the matching rules and each rendered
    action. Sends nothing and skips the signature check.

    Exit 0, or 1 when the payload is invalid or the matched rules are not exactly the --expect set.
    """
    from router.actions.base import Delivery
    from router.errors import DeliveryError
    from router.model import iso_utc, new_event_id, now_ts
    from router.pipeline import payload as payloads
    from router.pipeline.conditions import EventView

    config = _load(rules)
    spec = config.providers.get(provider_name)
    if spec is None:
        hint = did_you_mean(provider_name, config.providers)
        raise click.UsageError(f"no provider named '{provider_name}'{hint}; known: {', '.join(config.providers)}")
    try:
        body = sys.stdin.buffer.read() if payload == "-" else Path(payload).read_bytes()
    except OSError as exc:
        raise click.UsageError(f"cannot read {payload}: {exc.strerror or exc}") from None
    header_map = {k.lower(): v for k, v in _pairs(headers, ":", "--header").items()}
    query_map = _pairs(query, "=", "--query")

    try:
        data = payloads.parse_body(body)
        payloads.validate(spec.validator, data)
    except SchemaError as exc:
        click.echo(f"payload invalid for provider '{provider_name}' (HTTP 422):", err=True)
        for d in exc.detail:
            click.echo(f"  {'.'.join(str(x) for x in d['loc'])}: {d['msg']} ({d['type']})", err=True)
        raise Invalid("") from None
    except RequestError as exc:
        raise Invalid(f"payload invalid for provider '{provider_name}' (HTTP {exc.status}): {exc.message}") from None

    view = EventView(data, header_map, query_map, provider_name)
    matched = config.router.match(view)
    received = now_ts()
    event_id = new_event_id(received)
    result: dict[str, Any] = {"provider": provider_name, "matched": [r.name for r in matched], "actions": []}
    for rule in matched:
        for action_name in rule.actions:
            action = config.actions[action_name]
            delivery = Delivery(event_id, provider_name, rule.name, action_name, 1, iso_utc(received),
                                header_map, query_map, body, header_map.get("content-type", "application/json"))
            try:
                rendered = action.impl.preview(delivery)
                entry = {"rule": rule.name, "action": action_name, "type": action.type, "rendered": rendered}
            except DeliveryError as exc:
                entry = {"rule": rule.name, "action": action_name, "type": action.type, "error": exc.message}
            result["actions"].append(entry)

    redact = config.redactor
    if as_json:
        click.echo(redact(json.dumps(result, indent=2, ensure_ascii=False)))
    else:
        click.echo(f"payload: valid for provider '{provider_name}' ({spec.type})")
        click.echo(f"matched: {', '.join(result['matched']) if matched else '(no rule)'}")
        for entry in result["actions"]:
            click.echo(f"- rule {entry['rule']} -> action {entry['action']} ({entry['type']})")
            if "error" in entry:
                click.echo(f"    would fail permanently: {redact(entry['error'])}")
            else:
                text = json.dumps(entry["rendered"], indent=2, ensure_ascii=False)
                click.echo(redact("\n".join("    " + line for line in text.splitlines())))
    if expect:
        wanted, got = set(expect), set(result["matched"])
        if wanted != got:
            missing = ", ".join(sorted(wanted - got)) or "none"
            extra = ", ".join(sorted(got - wanted)) or "none"
            raise Invalid(f"expectation failed: missing {missing}; unexpected {extra}")
        click.echo("expectation met")


# --------------------------------------------------------------------------- serve / worker


@cli.command()
@click.argument("rules", type=click.Path(dir_okay=False))
@click.option("--bind", "-b", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", "-w", type=click.IntRange(1, 64), default=None,
              help="Worker processes [default: 2 x cores, at most 8].")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True, help="Threads per worker.")
@click.option("--timeout", type=click.IntRange(1, 3600), default=30, show_default=True, help="Worker timeout (s).")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Access log on stdout.")
@click.option("--no-delivery", is_flag=True, help="Serve HTTP only (run `router worker` elsewhere).")
def serve(rules: str, bind: str, workers: int | None, threads: int, timeout: int, access_log: bool,
          no_delivery: bool) -> None:
    """Run the service under gunicorn. This process is the gunicorn master: HUP reloads, TERM stops."""
    from router.web.server import run

    _load(rules)  # fail fast, with validate's messages, before any worker starts
    run(str(Path(rules).resolve()), bind=bind, workers=workers, threads=threads, timeout=timeout,
        access_log=access_log, delivery=not no_delivery)


@cli.command()
@click.argument("rules", type=click.Path(dir_okay=False), envvar="ROUTER_RULES")
@click.option("--concurrency", type=click.IntRange(1, 256), default=None, help="Deliveries in flight at once.")
def worker(rules: str, concurrency: int | None) -> None:
    """Deliver only, for deployments that split web and delivery. TERM stops after in-flight attempts."""
    import signal
    import threading

    from router import logs
    from router.web.state import RouterState

    config = _load(rules)
    logs.setup(config.redactor)
    state = RouterState(config, Path(rules))
    if concurrency:
        config.settings.delivery_concurrency = concurrency
    state.start_delivery()
    done = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        done.set()

    def reload(signum: int, frame: Any) -> None:
        try:
            state.config = load(rules)
            logs.use_redactor(state.config.redactor)
            logs.info("rules reloaded", rules=str(rules))
        except ConfigError as exc:
            logs.error("rules reload failed; keeping the old rules", problems=[str(p) for p in exc.problems])

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    logs.info("worker started", pid=os.getpid(), store=str(config.settings.store))
    while not done.wait(1.0):
        pass
    state.stop_delivery(10.0)
    logs.info("worker stopped", pid=os.getpid())


# --------------------------------------------------------------------------- store inspection


def _store(rules: str) -> tuple[Config, Store]:
    from router.store import is_postgres, open_store

    config = _load(rules)
    location = config.settings.store
    if not is_postgres(location) and not Path(location).exists():
        raise Invalid(f"no store yet at {location} (nothing received)")
    try:
        return config, open_store(location, config.settings.durability)
    except StoreError as exc:
        raise Invalid(config.redactor(f"cannot open the store: {exc}")) from None


@cli.group()
def events() -> None:
    """Inspect stored events."""


@events.command("list")
@_rules_option
@click.option("--provider", default=None, help="Only this provider's events.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events_list(rules: str, provider: str | None, limit: int, as_json: bool) -> None:
    """The newest events, with their delivery states."""
    from router.store import EventFilter

    config, store = _store(rules)
    rows = store.list_events(EventFilter(provider=provider, limit=limit))
    _print_rows(rows, as_json, ["event_id", "received_at", "provider", "matched", "deliveries"], config)


@events.command("show")
@_rules_option
@click.argument("event_id")
def events_show(rules: str, event_id: str) -> None:
    """One event: headers, payload, and every delivery with its attempts. Exit 1 when not found."""
    config, store = _store(rules)
    found = store.show_event(event_id)
    if found is None:
        raise Invalid(f"no event {event_id}")
    click.echo(config.redactor(json.dumps(found, indent=2, ensure_ascii=False, default=str)))


@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect deliveries that were given up on."""


@dead_letters.command("list")
@_rules_option
@click.option("--action", default=None, help="Only this action's dead letters.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_letters_list(rules: str, action: str | None, limit: int, as_json: bool) -> None:
    """Dead-lettered deliveries, newest first, with the reason. Replay one with `router replay JOB_ID`."""
    config, store = _store(rules)
    rows = store.list_dead(action=action, limit=limit)
    _print_rows(rows, as_json, ["job_id", "event_id", "rule", "action", "attempts", "status", "dead_at", "reason"], config)


@cli.command()
@_rules_option
@click.argument("ident", metavar="ID")
def replay(rules: str, ident: str) -> None:
    """Re-queue a dead-lettered delivery (by job id), or all dead deliveries of an event (by event id)."""
    _, store = _store(rules)
    count = store.replay(ident)
    if count == 0:
        raise Invalid(f"no dead-lettered delivery for {ident}")
    click.echo(f"re-queued {count} deliver{'y' if count == 1 else 'ies'}")


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: list[str], config: Config) -> None:
    redact = config.redactor
    if as_json:
        for row in rows:
            click.echo(redact(json.dumps(row, ensure_ascii=False, default=str)))
        return
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    widths[-1] = len(columns[-1])  # the last column runs free
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        click.echo(redact("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


@cli.command()
@_rules_option
@click.argument("destination", type=click.Path(dir_okay=False))
def backup(rules: str, destination: str) -> None:
    """Copy the store to DESTINATION while the router runs (SQLite's online backup; pg_dump for PostgreSQL)."""
    config, store = _store(rules)
    dest = Path(destination)
    if dest.exists():
        raise Invalid(f"{destination} exists; give a new file name")
    try:
        click.echo(store.backup(dest))
    except StoreError as exc:
        raise Invalid(config.redactor(str(exc))) from None


# --------------------------------------------------------------------------- sign


@cli.command()
@_rules_option
@click.option("--provider", "provider_name", required=True, help="The provider to sign as.")
@click.option("--private-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="PEM P-256 private key, to sign as an ES256 (Panjaya) provider.")
@click.option("--curl", "curl_url", default=None, metavar="URL", help="Print a curl command for this URL.")
@click.argument("payload", type=click.Path(dir_okay=False, allow_dash=True))
def sign(rules: str, provider_name: str, private_key: str | None, curl_url: str | None, payload: str) -> None:
    """Print the headers PROVIDER would send with PAYLOAD, to test locally with curl."""
    import shlex

    config = _load(rules)
    spec = config.providers.get(provider_name)
    if spec is None:
        hint = did_you_mean(provider_name, config.providers)
        raise click.UsageError(f"no provider named '{provider_name}'{hint}")
    body = sys.stdin.buffer.read() if payload == "-" else Path(payload).read_bytes()
    key = Path(private_key).read_bytes() if private_key else None
    try:
        headers = spec.impl.sign(body, key)
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc)) from None
    headers = {"Content-Type": "application/json", **headers}
    if curl_url:
        parts = ["curl", "-sS", "-X", "POST", curl_url]
        for k, v in headers.items():
            parts += ["-H", f"{k}: {v}"]
        parts += ["--data-binary", f"@{payload}"]
        click.echo(" ".join(shlex.quote(p) for p in parts))
    else:
        for k, v in headers.items():
            click.echo(f"{k}: {v}")
    if spec.token is not None:
        click.echo("# this provider also needs its token: ?token=... or X-Router-Token (not printed)", err=True)


def main() -> NoReturn:
    try:
        cli.main(prog_name="router")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug of ours: one line, not a traceback
        click.echo(f"router: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    sys.exit(0)
