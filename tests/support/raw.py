"""HTTP spoken by hand over a socket: requests that no well-behaved client would send, trickles,
and connections held open across a signal."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.servers import RouterServer

# Every status the router documents for POST /hooks/<provider> (README "How an event flows").
DOCUMENTED_STATUSES = frozenset({200, 400, 401, 403, 404, 405, 408, 413, 414, 422, 431, 501, 503})


@dataclass
class RawResponse:
    status: int | None  # None: the server closed (or reset) without answering
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""
    elapsed: float = 0.0
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def _parse_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        return None, {}, b""
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        body = body[: int(length)]
    return int(m.group(1)), headers, body


def host_port(server: RouterServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def raw_request(server: RouterServer, head: bytes, parts: Iterable[bytes | float] = (), *,
                read_timeout: float = 15.0, source: str | None = None, keep_sending: bool = False) -> RawResponse:
    """Send `head` (request line and headers, ending in a blank line), then each of `parts`: bytes are
    sent, a float pauses that many seconds (a trickle). Reads the answer until the server closes the
    connection or `read_timeout` passes. A send failing because the server already answered and
    closed is expected (it refused early) and is not an error here.

    With `keep_sending`, `parts` may be long: sending stops as soon as an answer arrives."""
    started = time.monotonic()
    sock = socket.create_connection(host_port(server), timeout=read_timeout,
                                     source_address=(source, 0) if source else None)
    received = b""
    error = ""
    try:
        sock.sendall(head)
        for part in parts:
            if keep_sending:
                sock.setblocking(False)
                try:
                    chunk = sock.recv(65536)
                    if chunk:
                        received += chunk
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    break
                finally:
                    sock.setblocking(True)
                    sock.settimeout(read_timeout)
            if isinstance(part, float):
                time.sleep(part)  # a trickling client, not a test wait
                continue
            try:
                sock.sendall(part)
            except OSError:  # the server answered early and closed: stop sending, read the answer
                break
        end = time.monotonic() + read_timeout
        while time.monotonic() < end:
            sock.settimeout(max(0.05, end - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                error = "read timed out"
                break
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            if not chunk:
                break
            received += chunk
            status, headers, body = _parse_response(received)
            length = headers.get("content-length")
            if status is not None and length is not None and length.isdigit() \
                    and len(body) >= int(length) and "close" not in headers.get("connection", "close"):
                break  # a complete answer on a kept-alive connection
    finally:
        sock.close()
    status, headers, body = _parse_response(received)
    return RawResponse(status, headers, body, received, time.monotonic() - started, error)


def post_head(path: str, headers: dict[str, str] | None = None, *, content_length: int | None = None,
              chunked: bool = False, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def open_request(url: str, path: str, head_body: bytes, total_length: int, *,
                 content_type: str = "application/json") -> socket.socket:
    """Open a connection and send a POST's headers and the first bytes of its body; return the socket."""
    host, port = url.rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {total_length}\r\nConnection: close\r\n\r\n").encode("ascii")
    sock.sendall(head + head_body)
    return sock


def read_response(sock: socket.socket) -> tuple[int | None, dict[str, str], bytes]:
    """Read until the server closes; the answer's status (None if there was none), headers and body."""
    data = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return _parse_response(data)


def _server_side_inode(client: socket.socket) -> str | None:
    """The inode of the server's end of a loopback connection, from /proc/net/tcp."""
    cport = client.getsockname()[1]
    sport = client.getpeername()[1]
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = row.split()
        local, remote, inode = parts[1], parts[2], parts[9]
        if int(local.split(":")[1], 16) == sport and int(remote.split(":")[1], 16) == cport and inode != "0":
            return inode
    return None


def accepted_by(client: socket.socket, pids: list[int]) -> int | None:
    """The PID (among `pids`) that has accept()ed this connection, or None while it waits in the backlog."""
    inode = _server_side_inode(client)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None
