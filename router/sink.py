"""`router sink`: a local destination that prints what it receives, so the quick start's forward and
slack actions have somewhere real to go. It answers 200 `ok`, Slack's success answer.

What it prints came from the network: the caller escapes control characters before the terminal
sees them (the CLI's `echo`). Bodies are read up to a limit, and each connection has a timeout.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

READ_TIMEOUT = 10.0  # seconds a client may take to send its request


def serve_sink(host: str, port: int, max_body: int, emit: Callable[[str], None]) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = READ_TIMEOUT

        def _handle(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > max_body:
                self._answer(413, b"too large\n")
                return
            body = self.rfile.read(length) if length else b""
            lines = [f"--- {self.command} {self.path}"]
            lines += [f"{k}: {v}" for k, v in self.headers.items()]
            lines.append("")
            lines.append(_pretty(body))
            emit("\n".join(lines))
            self._answer(200, b"ok")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request itself is what we print

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    emit(f"router sink: listening on http://{bound_host}:{bound_port}/ (any path; Ctrl-C stops)")
    sys.stdout.flush()

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _pretty(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", "replace")
