"""The router against what a team would run instead, on the same job, in one run.

    python benchmarks/peers.py [--duration 6] [--rounds 3] [--quick]

The job: receive a signed event, verify it, check the payload, match one condition, append the
event to a file. Peers, all up at once on 127.0.0.1 and measured in interleaved rounds (the
median of the rounds is reported, figure by figure), so drift in this shared machine's load falls
on all of them alike:

- floor-sync: a bare Flask "OK" under gunicorn, 2 sync workers (what gunicorn can do at all);
  floor-gthread: the same with 2 gthread workers x 8 threads, for reference;
- handler: the twenty-line Flask handler (benchmarks/handler_app.py: hmac or ES256, jsonschema,
  the condition, append + fdatasync per event), 2 sync workers;
- webhook: adnanh/webhook (Debian package `webhook`), waiting for its append command
  (include-command-output-in-response), HMAC only (it has no ES256);
- router: `router serve rules.yaml` with its defaults (one worker per core, delivery on,
  durability fsync, access log off), a `file` action appending each matched event;
  router-...-no-delivery: the same with `--no-delivery` (ingest alone, its own store).

A router figure counts only where delivery keeps up: after each router run the lines that reached
its file are counted, and the time the backlog then takes to drain; a drain over 2 s is reported.
Load comes from wrk (Debian package `wrk`). Every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from run import HERE, PY, Load, Proc, free_port, load, machine, wait_http, wait_http_post

SECRET = "bench-peers-secret"
BODY = json.dumps({"event": "version_failed", "asset_id": "asset-5", "version_id": "ver-19b2",
                   "version_locale": "es-ES"}).encode()
SCHEMA = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "required": ["event", "asset_id"],
          "properties": {"event": {"type": "string"}, "asset_id": {"type": "string"}}}
SYNC = [PY, "-m", "gunicorn", "-w", "2", "-k", "sync", "--backlog", "2048", "--timeout", "60", "--log-level",
        "warning"]
GTHREAD = [PY, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8", "--backlog", "2048", "--timeout",
           "60", "--log-level", "warning"]
DRAIN_LIMIT = 2.0  # seconds: a router run whose backlog takes longer to reach the file does not count


@dataclass
class Peer:
    name: str
    url: str
    out: Path | None = None  # the file it appends to, where it counts what was delivered
    runs: dict[tuple[str, int], list[Load]] = field(default_factory=dict)
    drains: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    lost: dict[tuple[str, int], int] = field(default_factory=dict)


def lines(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def wait_answering(url: str, deadline: float = 60.0) -> None:
    """Until the server answers at all (any status)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def signed(sig: str, key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    if sig == "es256":
        return {"X-Signature": key.sign(BODY, ec.ECDSA(hashes.SHA256())).hex()}
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()}


def router_rules(folder: Path, pem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    key = "\n".join("      " + line for line in pem.strip().splitlines())
    text = f"""version: 1
providers:
  hmac:
    type: hmac
    secret: {SECRET}
    header: X-Hub-Signature-256
    algorithm: sha256
    encoding: hex
    prefix: "sha256="
    schema: schema.json
  es256:
    type: panjaya
    public_key: |
{key}
actions:
  archive: {{type: file, path: events.jsonl}}
rules:
  - name: failures
    when: {{event: {{regex: "failed$"}}}}
    actions: [archive]
"""
    path = folder / "rules.yaml"
    path.write_text(text)
    return path


def webhook_hooks(folder: Path, out: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "append.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{out}"\n')
    script.chmod(0o755)
    hooks = [{
        "id": "hmac",
        "execute-command": str(script),
        "command-working-directory": str(folder),
        "include-command-output-in-response": True,
        "pass-arguments-to-command": [{"source": "entire-payload"}],
        "trigger-rule": {"and": [
            {"match": {"type": "payload-hmac-sha256", "secret": SECRET,
                       "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},
            {"match": {"type": "regex", "regex": "failed$", "parameter": {"source": "payload", "name": "event"}}},
        ]},
    }]
    path = folder / "hooks.json"
    path.write_text(json.dumps(hooks))
    return path


def start_all(work: Path, key_pem: str) -> tuple[list[Proc], dict[str, Peer]]:
    procs: list[Proc] = []
    peers: dict[str, Peer] = {}

    def up(name: str, cmd: list[str], url: str, *, env: dict[str, str] | None = None, out: Path | None = None,
           post: bool = True) -> None:
        procs.append(Proc(cmd, env=env, log=work / f"{name}.log"))
        (wait_http_post if post else wait_http)(url)
        peers[name] = Peer(name, url, out)

    port = free_port()
    up("floor-sync", SYNC + ["-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "floor_app:app"],
       f"http://127.0.0.1:{port}/hooks/x")
    port = free_port()
    up("floor-gthread", GTHREAD + ["-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "floor_app:app"],
       f"http://127.0.0.1:{port}/hooks/x")
    for sig in ("hmac", "es256"):
        port = free_port()
        out = work / f"handler-{sig}.jsonl"
        env = {"HANDLER_OUT": str(out), **({"HANDLER_SECRET": SECRET} if sig == "hmac" else {"HANDLER_PUBLIC_KEY": key_pem})}
        url = f"http://127.0.0.1:{port}/hooks/{sig}"
        procs.append(Proc(SYNC + ["-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "handler_app:app"], env=env,
                          log=work / f"handler-{sig}.log"))
        wait_answering(f"http://127.0.0.1:{port}/nothing")
        peers[f"handler-{sig}"] = Peer(f"handler-{sig}", url, out)
    if shutil.which("webhook"):
        port = free_port()
        out = work / "webhook" / "out.jsonl"
        hooks = webhook_hooks(work / "webhook", out)
        procs.append(Proc(["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)],
                          log=work / "webhook.log"))
        wait_answering(f"http://127.0.0.1:{port}/")
        peers["webhook-hmac"] = Peer("webhook-hmac", f"http://127.0.0.1:{port}/hooks/hmac", out)
    port = free_port()
    rules = router_rules(work / "router", key_pem)
    # its defaults: one worker per core (2 here), the access log off, delivery on, durability fsync
    procs.append(Proc([PY, "-m", "router", "serve", str(rules), "--bind", f"127.0.0.1:{port}"],
                      env={"ROUTER_WATCH": "off"}, log=work / "router.log"))
    wait_http(f"http://127.0.0.1:{port}/healthz")
    for sig in ("hmac", "es256"):
        peers[f"router-{sig}"] = Peer(f"router-{sig}", f"http://127.0.0.1:{port}/hooks/{sig}",
                                      work / "router" / "var" / "files" / "events.jsonl")
    # ingest alone: the same, with no delivery process (its own store, so the two never share a queue)
    port = free_port()
    rules = router_rules(work / "router-ingest", key_pem)
    procs.append(Proc([PY, "-m", "router", "serve", str(rules), "--bind", f"127.0.0.1:{port}", "--no-delivery"],
                      env={"ROUTER_WATCH": "off"}, log=work / "router-ingest.log"))
    wait_http(f"http://127.0.0.1:{port}/healthz")
    for sig in ("hmac", "es256"):
        peers[f"router-{sig}-no-delivery"] = Peer(f"router-{sig}-no-delivery", f"http://127.0.0.1:{port}/hooks/{sig}")
    return procs, peers


def measure(peer: Peer, sig: str, conc: int, headers: dict[str, str], duration: int, work: Path) -> None:
    before = lines(peer.out)
    result = load(peer.url, BODY, headers, conc, duration, work)
    peer.runs.setdefault((sig, conc), []).append(result)
    if peer.out is not None and peer.name.startswith("router"):
        # the warm-up run of `load` counts too: wait for every acknowledged event to reach the file
        stop = time.monotonic()
        expected = result.requests - result.errors
        deadline = stop + 60
        got = lines(peer.out) - before
        while got < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            got = lines(peer.out) - before
        peer.drains.setdefault((sig, conc), []).append(time.monotonic() - stop)
        # settle the rest (the warm-up's events) before the next run
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke test)")
    parser.add_argument("--output", default=str(HERE / "PEERS.md"))
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2, 1
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    work = Path(tempfile.mkdtemp(prefix="router-peers-"))
    procs: list[Proc] = []
    try:
        procs, peers = start_all(work, pem)
        grid = [(sig, conc) for sig in ("hmac", "es256") for conc in (8, 32)]
        for r in range(args.rounds):
            for sig, conc in grid:
                headers = signed(sig, key)
                for name in ("floor-sync", "floor-gthread", f"handler-{sig}", f"webhook-{sig}", f"router-{sig}",
                             f"router-{sig}-no-delivery"):
                    if name in peers:
                        measure(peers[name], sig, conc, headers, args.duration, work)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        text = report(peers, grid, args)
        print(text)
        Path(args.output).write_text(text)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def median_load(runs: list[Load]) -> Load:
    """Each figure's median over the rounds, on its own: req/s, p50 and p99 (a round's p99 is one
    number of a noisy machine; the median of the rounds' p99s is the one that says something)."""
    mid = len(runs) // 2
    rps = sorted(runs, key=lambda x: x.rps)[mid]
    return Load(rps.rps, sorted(r.p50_ms for r in runs)[mid], sorted(r.p99_ms for r in runs)[mid],
                rps.requests, max(r.errors for r in runs))


def report(peers: dict[str, Peer], grid: list[tuple[str, int]], args: argparse.Namespace) -> str:
    out = ["# The router against its peers", "", machine(), "",
           f"wrk, {args.duration} s per run, {args.rounds} interleaved round(s), the median of the rounds for each "
           f"figure (non-2xx: the most of any round); "
           f"ratios are of req/s (p99: router over handler)", ""]
    for sig, conc in grid:
        floor = median_load(peers["floor-sync"].runs[(sig, conc)]).rps
        handler = median_load(peers[f"handler-{sig}"].runs[(sig, conc)]).rps
        hook = peers.get(f"webhook-{sig}")
        hook_rps = median_load(hook.runs[(sig, conc)]).rps if hook else None
        out += [f"## {sig.upper()}, c={conc}", "",
                "| peer | req/s | p50 ms | p99 ms | non-2xx | / floor-sync | / handler | / webhook | drain s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in ("floor-sync", "floor-gthread", f"handler-{sig}", f"webhook-{sig}", f"router-{sig}",
                     f"router-{sig}-no-delivery"):
            peer = peers.get(name)
            if peer is None or (sig, conc) not in peer.runs:
                continue
            m = median_load(peer.runs[(sig, conc)])
            drains = peer.drains.get((sig, conc))
            drain = statistics.median(drains) if drains else None
            drain_text = "" if drain is None else (f"{drain:.2f}" + (" (over 2 s: not counted)" if drain > DRAIN_LIMIT
                                                                    else ""))
            out.append(f"| {name} | {m.rps:,.0f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | {m.errors} | {m.rps / floor:.2f} "
                       f"| {m.rps / handler:.2f} | {m.rps / hook_rps:.2f} | {drain_text} |" if hook_rps else
                       f"| {name} | {m.rps:,.0f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | {m.errors} | {m.rps / floor:.2f} "
                       f"| {m.rps / handler:.2f} | - | {drain_text} |")
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
