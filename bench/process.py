"""Run one benchmark process and measure it: wall time, exit status, peak resident memory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ProcessResult:
    """What a finished process left: exit status, wall seconds, peak RSS and its output."""

    returncode: int
    seconds: float
    peak_rss_mb: float
    output: str

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the output (for error messages)."""
        return "\n".join(self.output.splitlines()[-lines:])


def run_process(command: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
                log: str | Path | None = None, timeout: float | None = None) -> ProcessResult:
    """Run ``command`` to the end; stdout and stderr go to ``log`` (or a temporary file).

    Peak memory is the child's own maximum resident set size (``wait4``'s rusage), so each
    process is measured alone, not the largest of all children so far.
    """
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    sink = open(log, "w+") if log is not None else tempfile.TemporaryFile("w+")  # noqa: SIM115
    with sink as handle:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=handle,
                                   stderr=subprocess.STDOUT, text=True)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        handle.seek(0)
        output = handle.read()
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return ProcessResult(returncode=process.returncode, seconds=seconds,
                         peak_rss_mb=usage.ru_maxrss * scale, output=output)
