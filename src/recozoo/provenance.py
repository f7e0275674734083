"""What code made a run: recozoo's version, the git commit of the checkout it runs from (and
whether that checkout's code had uncommitted changes), and the versions of the libraries its
numbers depend on. ``metrics.json`` records it (``code``), so a figure can be traced to the code
that made it and a leaderboard can tell cells made by different code apart (the panel's
``rerun_before=<commit>`` reruns the cells made before a change).

A seeded run is repeatable by the same code: the same figures to the last digit on the same
machine and thread count. A change to a model's training can move them without changing any
setting (e.g. the random stream of dropout over batches cut to their used columns), which the
settings a run records cannot show; the commit does.

This module imports nothing heavy (`recozoo.runtime`'s rule for what loads before torch).
"""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

#: the libraries whose versions can move a run's numbers
LIBRARIES: tuple[str, ...] = ("torch", "lightning", "transformers", "numpy")

#: the checkout's paths whose uncommitted changes make a run's commit not the whole story
CODE_PATHS: tuple[str, ...] = ("src", "conf", "train.py")


def package_root() -> Path:
    """The folder above ``src/recozoo`` (a checkout's root for an editable install)."""
    return Path(__file__).resolve().parents[2]


def _git_process(root: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    """``git <args>`` run in ``root``, None where git cannot run."""
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def _git(root: Path, *args: str) -> str | None:
    """``git <args>``'s output in ``root``, None where git or the checkout is not there."""
    result = _git_process(root, *args)
    return result.stdout.strip() if result is not None and result.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def code_version(root: Path | None = None) -> dict[str, Any]:
    """``{"recozoo": version, "commit": full sha or None, "dirty": bool or None, <library>:
    version, ...}``. ``commit`` is None where recozoo does not run from a git checkout (an
    installed wheel); ``dirty`` is True where the checkout's `CODE_PATHS` differ from the commit
    (uncommitted or untracked files), so the commit alone does not name the code."""
    root = package_root() if root is None else root
    commit = _git(root, "rev-parse", "HEAD") if (root / "src" / "recozoo").is_dir() else None
    dirty = None
    if commit is not None:
        status = _git(root, "status", "--porcelain", "--", *CODE_PATHS)
        dirty = None if status is None else bool(status)
    return {"recozoo": _version("recozoo"), "commit": commit, "dirty": dirty,
            **{name: _version(name) for name in LIBRARIES}}


def short_code(code: dict[str, Any] | None) -> str:
    """A run's code in a few characters: the short commit (``+dirty`` where the checkout had
    changes), ``recozoo <version>`` outside a checkout, ``unrecorded`` before runs recorded it."""
    if not code:
        return "unrecorded"
    if code.get("commit"):
        return code["commit"][:7] + ("+dirty" if code.get("dirty") else "")
    return f"recozoo {code.get('recozoo') or '?'}"


def resolve_commit(name: str, root: Path | None = None) -> str | None:
    """The full sha of the commit ``name`` (a sha, a prefix, a tag, ``HEAD~3``) names in the
    checkout, None where it names none there."""
    root = package_root() if root is None else root
    return _git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")


def is_at_or_after(commit: str | None, base: str, root: Path | None = None) -> bool | None:
    """Whether ``commit`` is ``base`` (any name git reads: a sha, a prefix, a tag, ``HEAD~3``)
    or a descendant of it in the checkout's history; None where either is not known there (a
    commit made on another machine and not fetched: git answers 128, not 0 or 1)."""
    if not commit:
        return None
    result = _git_process(package_root() if root is None else root,
                          "merge-base", "--is-ancestor", base, commit)
    return None if result is None else {0: True, 1: False}.get(result.returncode)
