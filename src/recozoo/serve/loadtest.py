"""A bounded load test of the recommendation service on localhost.

``python -m recozoo.serve.loadtest run=<run folder> [requests=400] [clients=16] [time_cap=60]``

Starts the service (`ServerProcess`), then sends a fixed number of ``POST /predict`` requests
(known users' ids, and every fourth request a new user's history) twice: from one client, one
request at a time (latency without batching), and from ``clients`` concurrent clients (the
server batches their requests). Each phase stops early at ``time_cap`` seconds. Reports p50,
p99 and the largest latency in milliseconds, requests per second and the count of non-200 answers, and returns
them (``make bench`` calls `load_test`).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a program: thread settings before torch is imported
    from recozoo.runtime import configure_process

    configure_process()

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests as requests_lib
from omegaconf import MISSING

from recozoo.cli import parse_settings
from recozoo.serve.loading import load_catalog
from recozoo.serve.process import ServerProcess
from recozoo.serve.run_files import RunLoadError, check_run


@dataclass
class LoadTestSettings:
    """Load-test the recommendation service on localhost: one client, then many.

    Args:
        run: a run folder, a checkpoint in one, or a fusion folder.
        requests: requests per phase.
        clients: concurrent clients of the batched phase.
        time_cap: seconds per phase at most.
        k: list length asked for.
        max_batch_size / batch_timeout: the server's request batching.
        accelerator: the server's ``accelerator``.
        startup_timeout: seconds the server may take to become healthy.
    """

    run: str = MISSING
    requests: int = 400
    clients: int = 16
    time_cap: float = 60.0
    k: int = 10
    max_batch_size: int = 16
    batch_timeout: float = 0.005
    accelerator: str = "auto"
    startup_timeout: float = 300.0


def request_bodies(run: str | Path, n: int, k: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` request bodies: known users' ids, and every fourth one a new user's history (the
    last five items of a random known user)."""
    catalog = load_catalog(run)
    rng = np.random.default_rng(seed)
    users = rng.integers(0, catalog.n_users, n)
    bodies = []
    for i, user in enumerate(users.tolist()):
        if i % 4 == 3:
            history = catalog.item_ids[catalog.user_history(user)[-5:]].tolist()
            bodies.append({"history": history, "k": k})
        else:
            bodies.append({"user_id": str(catalog.user_ids[user]), "k": k})
    return bodies


def _phase(url: str, bodies: list[dict[str, Any]], clients: int, time_cap: float
           ) -> dict[str, float]:
    """Send ``bodies`` from ``clients`` threads; at most ``time_cap`` seconds."""
    deadline = time.perf_counter() + time_cap
    chunks = [bodies[i::clients] for i in range(clients)]

    def client(chunk: list[dict[str, Any]]) -> tuple[list[float], int]:
        latencies, failures = [], 0
        with requests_lib.Session() as session:
            for body in chunk:
                if time.perf_counter() > deadline:
                    break
                start = time.perf_counter()
                try:
                    ok = session.post(url, json=body, timeout=30).status_code == 200
                except requests_lib.RequestException:
                    ok = False
                latencies.append(time.perf_counter() - start)
                failures += not ok
        return latencies, failures

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, chunks))
    elapsed = time.perf_counter() - start
    latencies = np.array([x for lat, _ in results for x in lat]) * 1000.0
    return {"clients": clients, "requests": len(latencies),
            "failures": int(sum(f for _, f in results)), "seconds": round(elapsed, 3),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
            "max_ms": round(float(latencies.max()), 2) if len(latencies) else None,
            "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else None}


def load_test(run: str | Path, requests: int = 400, clients: int = 16, time_cap: float = 60.0,
              k: int = 10, max_batch_size: int = 16, batch_timeout: float = 0.005,
              accelerator: str = "auto", startup_timeout: float = 300.0,
              log_file: str | Path | None = None, verbose: bool = True) -> dict[str, Any]:
    """Start the service on ``run``, measure a single client and ``clients`` concurrent ones,
    stop it; returns (and, when ``verbose``, prints) the figures.

    Returns:
        ``{"run", "model", "n_items", "n_users", "max_batch_size", "batch_timeout",
        "startup_seconds", "single": {...}, "batched": {...}}`` where each phase has
        ``clients, requests, failures, seconds, p50_ms, p99_ms, max_ms, rps``.
    """
    check_run(run)
    bodies = request_bodies(run, requests, k)
    start = time.perf_counter()
    with ServerProcess(run, startup_timeout=startup_timeout, log_file=log_file,
                       accelerator=accelerator, max_batch_size=max_batch_size,
                       batch_timeout=batch_timeout) as server:
        startup = time.perf_counter() - start
        url = server.url + "/predict"
        _phase(url, bodies[: min(20, len(bodies))], 1, time_cap)  # warm-up
        single = _phase(url, bodies, 1, time_cap)
        batched = _phase(url, bodies, clients, time_cap)
        model = requests_lib.post(url, json=bodies[0], timeout=30).json().get("model")
    catalog = load_catalog(run)
    figures = {"run": str(run), "model": model, "n_items": catalog.n_items,
               "n_users": catalog.n_users, "max_batch_size": max_batch_size,
               "batch_timeout": batch_timeout, "startup_seconds": round(startup, 1),
               "single": single, "batched": batched}
    if verbose:
        print(format_figures(figures))
    return figures


def format_figures(figures: dict[str, Any]) -> str:
    """The figures as a small Markdown table."""
    frame = pd.DataFrame([{"phase": name, **figures[name]} for name in ("single", "batched")])
    head = (f"load test: {figures['model']} ({figures['n_items']} items, {figures['n_users']} "
            f"users), max_batch_size={figures['max_batch_size']}, batch_timeout="
            f"{figures['batch_timeout']}s, server ready in {figures['startup_seconds']}s")
    return head + "\n" + frame.to_string(index=False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings = parse_settings(LoadTestSettings, sys.argv[1:] if argv is None else argv,
                              prog="python -m recozoo.serve.loadtest")
    try:
        return load_test(settings.run, requests=settings.requests, clients=settings.clients,
                         time_cap=settings.time_cap, k=settings.k,
                         max_batch_size=settings.max_batch_size,
                         batch_timeout=settings.batch_timeout, accelerator=settings.accelerator,
                         startup_timeout=settings.startup_timeout)
    except RunLoadError as error:
        raise SystemExit(f"recozoo.serve.loadtest: {error}") from None


if __name__ == "__main__":
    main()
