"""`recozoo.provenance`: the commit and state of the checkout a run's code comes from, read
from a scratch git repository with known commits."""

from __future__ import annotations

import importlib.metadata
import subprocess

import pytest
import torch

from recozoo import provenance


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A checkout of two commits (first, second) with recozoo's layout."""
    root = tmp_path / "repo"
    (root / "src" / "recozoo").mkdir(parents=True)
    (root / "conf").mkdir()
    git(tmp_path, "init", "-q", str(root))
    commits = []
    for text in ("one", "two"):
        (root / "src" / "recozoo" / "model.py").write_text(text)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", text)
        commits.append(git(root, "rev-parse", "HEAD"))
    provenance.code_version.cache_clear()
    yield root, commits
    provenance.code_version.cache_clear()


def test_a_checkout_names_its_commit_and_whether_its_code_changed_since(checkout):
    root, (_, second) = checkout
    code = provenance.code_version(root)
    assert code["commit"] == second and code["dirty"] is False
    assert code["torch"] == torch.__version__
    assert code["recozoo"] == importlib.metadata.version("recozoo")
    assert provenance.short_code(code) == second[:7]
    (root / "notes.txt").write_text("a file outside the code does not count")
    provenance.code_version.cache_clear()
    assert provenance.code_version(root)["dirty"] is False
    (root / "src" / "recozoo" / "model.py").write_text("changed, not committed")
    provenance.code_version.cache_clear()
    code = provenance.code_version(root)
    assert code["commit"] == second and code["dirty"] is True
    assert provenance.short_code(code) == second[:7] + "+dirty"


def test_outside_a_checkout_only_the_versions_are_known(tmp_path):
    code = provenance.code_version(tmp_path)
    assert code["commit"] is None and code["dirty"] is None and code["torch"]
    assert provenance.short_code(code).startswith("recozoo ")
    assert provenance.short_code(None) == "unrecorded"


def test_a_commit_is_at_or_after_itself_and_its_ancestors_only(checkout):
    root, (first, second) = checkout
    assert provenance.is_at_or_after(second, first, root) is True
    assert provenance.is_at_or_after(first, first[:8], root) is True
    assert provenance.is_at_or_after(first, "HEAD", root) is False
    assert provenance.is_at_or_after("f" * 40, first, root) is None  # made elsewhere
    assert provenance.is_at_or_after(None, first, root) is None  # before runs recorded it
    assert provenance.resolve_commit("HEAD~1", root) == first
    assert provenance.resolve_commit("no-such-tag", root) is None
