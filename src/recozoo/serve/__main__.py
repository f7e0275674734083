"""``python -m recozoo.serve run=<run folder | checkpoint | fusion folder> [key=value ...]``

Starts the recommendation service (see `recozoo.serve.service`) on ``host:port`` (default
127.0.0.1:8000) until Ctrl+C or SIGTERM. Keys: see `ServeSettings` (``--help``).
"""

from __future__ import annotations

from recozoo.runtime import configure_process

configure_process()  # thread settings, before anything imports torch

import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType

from omegaconf import MISSING

from recozoo.cli import parse_settings
from recozoo.serve.run_files import RunLoadError, check_run

PROG = "python -m recozoo.serve"


@dataclass
class ServeSettings:
    """Serve a run's recommendations over HTTP: POST /predict, GET /health, GET /docs.

    Args:
        run: a run folder, a checkpoint in one, or a fusion folder.
        host: ``127.0.0.1`` (this machine only) or ``0.0.0.0`` (every interface).
        port: the TCP port to listen on.
        accelerator: ``auto`` (CUDA where present), ``cpu`` or ``cuda``.
        workers: inference worker processes per device.
        max_batch_size: requests scored together at most.
        batch_timeout: seconds a batch waits to fill.
        timeout: seconds a request may wait for its answer.
        log_level: uvicorn's log level.
    """

    run: str = MISSING
    host: str = "127.0.0.1"
    port: int = 8000
    accelerator: str = "auto"
    workers: int = 1
    max_batch_size: int = 16
    batch_timeout: float = 0.005
    timeout: float = 30.0
    log_level: str = "warning"


def _stop_on_sigterm() -> None:
    """SIGTERM ends the server as Ctrl+C does (LitServe then stops the workers it started)."""
    main_pid = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:  # a forked API server that inherited this handler
            sys.exit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ServeSettings, sys.argv[1:] if argv is None else argv, prog=PROG)
    try:
        check_run(settings.run)
    except RunLoadError as error:
        raise SystemExit(f"recozoo.serve: {error}") from None
    from recozoo.serve.service import build_server  # after the checks: litserve imports slowly

    server = build_server(settings.run, accelerator=settings.accelerator,
                          workers=settings.workers, max_batch_size=settings.max_batch_size,
                          batch_timeout=settings.batch_timeout, timeout=settings.timeout)
    _stop_on_sigterm()
    print(f"recozoo.serve: {settings.run} on http://{settings.host}:{settings.port} "
          "(POST /predict, GET /health, GET /docs)", flush=True)
    try:
        server.run(host=settings.host, port=settings.port, log_level=settings.log_level,
                   generate_client_file=False, num_api_servers=1)
    except KeyboardInterrupt:  # stopped while the workers were starting
        for worker in getattr(server, "inference_workers", []):
            worker.terminate()


if __name__ == "__main__":
    main()
