"""Child processes that stop with their parent: a signal to the parent reaches the children it runs."""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class ChildProcesses:
    """The child processes a command runs, one after another or several at once. SIGTERM or SIGINT to the command
    is passed on to each running child, and the command exits (128 + the signal) once they have: a child left
    behind would go on alone (a train.py with its loader workers, orphaned). With no child running the command
    exits at once."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self.stopped_by: int | None = None

    @contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _forward(self, signum, frame) -> None:
        self.stopped_by = signum
        running = list(self.running)
        if not running:
            raise SystemExit(128 + signum)
        print(f"{signal.Signals(signum).name}: passed on to {len(running)} child process(es); waiting for them",
              file=sys.stderr, flush=True)
        for proc in running:
            proc.send_signal(signum)

    def check(self) -> None:
        """Exit as asked once the children have stopped, instead of starting another."""
        if self.stopped_by is not None:
            raise SystemExit(128 + self.stopped_by)

    def run(self, cmd: list[str], **kwargs) -> None:
        self.check()
        proc = subprocess.Popen(cmd, **kwargs)
        self.running.add(proc)
        try:
            code = proc.wait()
        finally:
            self.running.discard(proc)
        self.check()
        if code:
            raise subprocess.CalledProcessError(code, cmd)
