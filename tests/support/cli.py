"""The command line as a user runs it: `python -m router ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_cli(*args: str | os.PathLike, env: dict[str, str | None] | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 60, input: str | None = None) -> CliResult:
    """Run `python -m router ARGS...` as a subprocess. An env value of None removes that variable."""
    full_env = dict(os.environ)
    full_env.pop("ROUTER_RULES", None)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    proc = subprocess.run([sys.executable, "-m", "router", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
