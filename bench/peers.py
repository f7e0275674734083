"""The reference library side of ``make bench``: RecBole 1.2.1 through the peer scripts.

The scripts live outside the project, in ``<shared>/peers/recbole`` (README.md there); they are
called as they are, in their own virtual environment, and print one JSON line per run. This
module only finds them, runs them as subprocesses and reads their JSON. It also exports
RecBole's exact ml-100k train/validation/test splits (``export_splits.py``) so that recozoo is
evaluated on the very same rows (``split=preset``, `recozoo.data.PresetSplit`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.process import ProcessResult, run_process
from recozoo.runtime import THREAD_SETTINGS

#: RecBole's split folders written by export_splits.py, by recozoo split name
RECBOLE_SPLIT_FOLDERS = {"random": "general_RO_811", "loo": "sequential_TO_LOO"}
#: the ml-100k atomic files RecBole reads
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


class PeerError(RuntimeError):
    """A peer run that failed or printed no result."""


@dataclass
class RecBolePeer:
    """RecBole 1.2.1 as installed by ``<shared>/peers/recbole/setup.sh``.

    Args:
        scripts: the folder holding ``run_recbole.py`` and ``export_splits.py``.
        python: the interpreter of RecBole's virtual environment.
        data: the ml-100k atomic files (``<shared>/data/ml-100k``; identical to the copy inside
            the RecBole wheel, which the runner checks by sha256).
        scratch: where RecBole's data copy, logs, checkpoints and the exported splits go.
    """

    scripts: Path
    python: Path
    data: Path
    scratch: Path

    @classmethod
    def find(cls, shared: Path, scratch: Path) -> tuple[RecBolePeer | None, str]:
        """The peer under ``shared``, or None and the reason it cannot run."""
        scripts = shared / "peers" / "recbole"
        venv = Path(os.environ.get("RECOZOO_RECBOLE_VENV",
                                   "~/.cache/recozoo-peers/recbole/venv")).expanduser()
        python = venv / "bin" / "python"
        data = shared / "data" / "ml-100k"
        if not (scripts / "run_recbole.py").is_file():
            return None, f"no RecBole peer scripts in {scripts}"
        if not python.is_file():
            return None, (f"RecBole's virtual environment {venv} is missing: run "
                          f"`bash {scripts / 'setup.sh'}` (or set RECOZOO_RECBOLE_VENV)")
        if not (data / "ml-100k.inter").is_file():
            return None, f"no ml-100k atomic files in {data}"
        return cls(scripts=scripts, python=python, data=data, scratch=scratch), ""

    def _env(self, threads: int) -> dict[str, str]:
        env = dict(os.environ, RECBOLE_SCRATCH=str(self.scratch), **THREAD_SETTINGS,
                   CUDA_VISIBLE_DEVICES="")  # recozoo's thread settings on both sides
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        return env

    def prepare_data(self) -> None:
        """Put ml-100k where the peer scripts read it (``<scratch>/data/ml-100k``)."""
        target = self.scratch / "data" / "ml-100k"
        target.mkdir(parents=True, exist_ok=True)
        for name in ML100K_FILES:
            if not (target / name).exists():
                shutil.copyfile(self.data / name, target / name)

    def export_splits(self, threads: int = 1) -> Path:
        """RecBole's exact splits of both protocols as TSV (``<scratch>/splits/<protocol>/``);
        reuses an earlier export."""
        out = self.scratch / "splits"
        if not all((out / folder / "test.tsv").exists()
                   for folder in RECBOLE_SPLIT_FOLDERS.values()):
            self.prepare_data()
            result = run_process([str(self.python), str(self.scripts / "export_splits.py"),
                                  str(out)], env=self._env(threads), cwd=self.scratch)
            if result.returncode != 0:
                raise PeerError(f"export_splits.py failed (exit {result.returncode}):\n"
                                f"{result.tail()}")
        return out

    def run(self, model: str, epochs: int, threads: int, stopping_step: int = 10,
            time_budget: float | None = None, seed: int = 2020) -> dict[str, Any]:
        """One RecBole run (``run_recbole.py``); its JSON result plus ``peak_rss_mb`` and
        ``wall_seconds_process``."""
        self.prepare_data()
        out = self.scratch / "results" / f"{model}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        command = [str(self.python), str(self.scripts / "run_recbole.py"), "--model", model,
                   "--epochs", str(epochs), "--stopping-step", str(stopping_step),
                   "--seed", str(seed), "--threads", str(threads),
                   "--data-root", str(self.scratch / "data"),
                   "--work-dir", str(self.scratch / "work"), "--json-out", str(out)]
        if time_budget is not None:
            command += ["--time-budget", str(time_budget)]
        result = run_process(command, env=self._env(threads), cwd=self.scratch,
                             log=self.scratch / "results" / f"{model}.log")
        if result.returncode != 0 or not out.exists():
            raise PeerError(f"run_recbole.py --model {model} failed (exit {result.returncode}):"
                            f"\n{result.tail()}")
        figures = json.loads(out.read_text())
        return {**figures, **_process_figures(result)}


def _process_figures(result: ProcessResult) -> dict[str, Any]:
    return {"peak_rss_mb": round(result.peak_rss_mb, 1),
            "wall_seconds_process": round(result.seconds, 2)}


def peer_venv(variable: str, name: str) -> Path:
    """A peer's virtual environment: ``$<variable>`` if set, else
    ``~/.cache/recozoo-peers/<name>/venv`` (beside RecBole's)."""
    return Path(os.environ.get(variable, f"~/.cache/recozoo-peers/{name}/venv")).expanduser()


def imports(python: Path, module: str) -> bool:
    """Whether ``python`` exists and imports ``module``."""
    if not python.is_file():
        return False
    return subprocess.run([str(python), "-c", f"import {module}"],
                          capture_output=True, check=False).returncode == 0


def ensure_peer(venv: Path, module: str, requirement: str, log: Path, install: bool,
                say: Callable[[str], None], retries: tuple[tuple[str, ...], ...] = ((),)
                ) -> tuple[Path | None, str]:
    """The interpreter of a peer's ``venv`` once it imports ``module``, creating the environment
    with pip on first use (``install``, see `install_venv`); or None and the reason it cannot
    run (pip's own words when the install fails)."""
    python = venv / "bin" / "python"
    if imports(python, module):
        return python, ""
    if not install:
        return None, f"no {requirement.split('==')[0]} in {venv} (install=false)"
    say(f"  creating {venv} with {requirement} (first use)")
    reason = install_venv(venv, requirement, module, log, retries=retries)
    return (None, reason) if reason else (python, "")


@dataclass
class PipPeer:
    """A peer library installed with pip in its own virtual environment (never recozoo's);
    subclasses name the requirement, the module that proves the install, and the environment.

    Args:
        python: the environment's interpreter.
        scratch: where exported splits, lists, logs and JSON results go.
    """

    python: Path
    scratch: Path

    requirement: ClassVar[str]
    module: ClassVar[str]
    venv_variable: ClassVar[str]  # environment variable that overrides the venv's folder
    retries: ClassVar[tuple[tuple[str, ...], ...]] = ((),)  # see `install_venv`

    @classmethod
    def venv(cls) -> Path:
        """``$<venv_variable>``, else ``~/.cache/recozoo-peers/<module>/venv``."""
        return peer_venv(cls.venv_variable, cls.module)

    @classmethod
    def find(cls, scratch: Path, install: bool = True,
             say: Callable[[str], None] = print) -> tuple[Any, str]:
        """The peer, creating its environment with pip on first use (``install``); or None and
        the reason it cannot run (pip's own words when the install fails)."""
        python, reason = ensure_peer(cls.venv(), cls.module, cls.requirement,
                                     scratch / "install.log", install, say, cls.retries)
        return (cls(python=python, scratch=scratch), "") if python else (None, reason)


def install_venv(venv: Path, requirement: str, module: str, log: Path,
                 retries: tuple[tuple[str, ...], ...] = ((),)) -> str:
    """Create ``venv`` and pip-install ``requirement`` into it (never into recozoo's), trying
    each extra set of requirements of ``retries`` in turn until ``module`` imports; "" on
    success, else why it failed (pip's last lines and the log's path)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    python = venv / "bin" / "python"
    for command in ([base, "-m", "venv", str(venv)],
                    [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"]):
        result = run_process(command, log=log)
        if result.returncode != 0:
            return f"could not create {venv}: {result.tail(5)}"
    for extra in retries:
        result = run_process([str(python), "-m", "pip", "install", "-q", requirement, *extra],
                             log=log)
        if result.returncode == 0 and imports(python, module):
            return ""
    return (f"pip could not install {requirement} into {venv} (log {log}):\n"
            f"{result.tail(10)}")
