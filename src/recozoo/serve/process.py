"""`ServerProcess`: the service started as ``python -m recozoo.serve`` in a child process on a
free localhost port, waited for until healthy, and stopped (tests and the load test use it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import requests


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Context manager running the recommendation service on ``127.0.0.1:<free port>``.

    Args:
        run: a run folder, a checkpoint in one, or a fusion folder.
        startup_timeout: seconds to wait for ``GET /health`` to answer 200.
        log_file: where the server's output goes (discarded when None).
        **settings: further ``key=value`` settings of ``python -m recozoo.serve``.

    Example:
        >>> with ServerProcess("logs/runs/ease") as server:
        ...     requests.post(server.url + "/predict", json={"user_id": "u1"}).json()
    """

    def __init__(self, run: str | Path, startup_timeout: float = 300.0,
                 log_file: str | Path | None = None, **settings: object):
        self.run, self.startup_timeout, self.log_file = str(run), startup_timeout, log_file
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> Self:
        args = [sys.executable, "-m", "recozoo.serve", f"run={self.run}", "host=127.0.0.1",
                f"port={self.port}", *(f"{k}={v}" for k, v in self.settings.items())]
        self._log = open(self.log_file, "ab") if self.log_file else None  # closed in stop()
        # its own process group, so that stop() can end the workers too if it must; the thread
        # settings are the service's own (recozoo.runtime)
        self.process = subprocess.Popen(args, stdout=self._log or subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"recozoo.serve exited with code {self.process.returncode} "
                                   f"before it was healthy (log: {self.log_file})")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"recozoo.serve was not healthy within {self.startup_timeout}s "
                           f"(log: {self.log_file})")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a graceful shutdown of the server and its workers), then SIGKILL to
        whatever of the server's process group is left after at most ``timeout`` seconds."""
        if self._log is not None:
            self._log.close()  # the child keeps its own copy of the descriptor
            self._log = None
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of the group outlived the graceful shutdown (none, normally)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()
