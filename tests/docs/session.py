"""One persistent bash session that runs a page's commands in order, like a reader's terminal.

Shell state carries over between commands (variables, `cd`, `$!`). Background commands write
to their own log, which is read back once their shown output had time to appear.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

COMMAND_TIMEOUT = 120.0
BACKGROUND_WAIT = 30.0


class ShellSession:
    def __init__(self, cwd: Path, env: dict[str, str], logs: Path) -> None:
        self.logs = logs
        self.count = 0
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.background: list[Path] = []

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Run one command to its end; its exit status and what it printed (both streams)."""
        self.count += 1
        marker = f"__doc_end_{self.count}__"
        script = f"{command}\nprintf '\\n{marker} %d\\n' $?\n"
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(script.encode())
        self.process.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"`{command}` did not finish within {timeout:g}s")
            raw = self.process.stdout.readline()
            if not raw:
                raise AssertionError(f"the shell ended while running `{command}`")
            line = raw.decode(errors="replace")
            if line.startswith(marker):
                if out and out[-1] == "\n":
                    out.pop()
                return int(line.split()[1]), "".join(out)
            out.append(line)

    def start(self, command: str) -> Path:
        """Start a command in the background; its output goes to a log file of its own."""
        log = self.logs / f"background-{len(self.background) + 1}.log"
        command = command.rstrip()
        if command.endswith("&"):
            command = command[:-1].rstrip()
        self.run(f"{command} >{log} 2>&1 &")
        self.background.append(log)
        return log

    def close(self) -> None:
        """End the shell and everything it started (its process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
