"""What a user sees: `python train.py` prints each message once, no advertisement, no warning a
user cannot act on, and ends with the run folder and the next commands."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT

#: Hydra's log prefix ``[2026-01-01 12:00:00,123][logger][INFO] - `` (its time differs per line)
_HYDRA_PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[[A-Z]+\] - ")


def _train_output(tmp_path: Path, *overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # train.py sets it
    result = subprocess.run(
        [sys.executable, "train.py", "data.source.n_users=150", "data.source.n_items=80",
         "data.source.sessions_per_user=3", "trainer.max_epochs=2",
         "trainer.limit_train_batches=2", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_train_prints_each_message_once_without_adverts_and_says_what_next(tmp_path):
    text = _train_output(tmp_path)
    # the same message from two handlers differs only by Hydra's prefix (with its time)
    lines = [_HYDRA_PREFIX.sub("", line).removeprefix("INFO: ").strip()
             for line in re.split(r"[\r\n]", text)]
    repeated = {line: n for line, n in Counter(l for l in lines if l).items()
                if n > 1 and not set(line) <= set("─━═│┃ ")}  # table rules may repeat
    assert repeated == {}
    assert "Seed set to 12345" in text  # the message is there, once
    assert "Tip:" not in text and "litlogger" not in text
    assert "LeafSpec" not in text
    assert f"Run folder: {tmp_path / 'run'}" in text
    assert f"python -m recozoo.serve run={tmp_path / 'run'}" in text
    assert "python train.py -m model=pop,ease,bpr" in text


def test_bpr_run_hides_the_stage_callbacks_lightning_replaces(tmp_path):
    """bpr returns its training-threads callback at every stage; Lightning's note that the
    test's instance replaces the fit's is not shown (README: Troubleshooting)."""
    text = _train_output(tmp_path, "model=bpr")
    assert "configure_callbacks" not in text and "Run folder:" in text


def test_programs_reuse_freed_memory_unless_the_user_set_malloc_themselves():
    """configure_process keeps freed blocks for reuse (recozoo.runtime.reuse_freed_memory): twenty
    12 MB tensors, one after another (after ten), mostly reuse memory already there, where glibc's
    own settings (here the user's trim threshold) fault every page of each in afresh."""
    if not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()):
        pytest.skip("glibc's malloc only")
    code = ("import resource, torch, recozoo.runtime as r\n"
            "set_ = r.reuse_freed_memory()\n"
            "for _ in range(10): torch.ones(3 << 20).sum()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(20): torch.ones(3 << 20).sum()\n"
            "print(set_, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    outcomes = {}
    for label, extra in (("ours", {}), ("user's", {"MALLOC_TRIM_THRESHOLD_": "131072"})):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **extra},
                              capture_output=True, text=True, timeout=120, check=True)
        outcomes[label] = done.stdout.split()
    pages = 20 * (12 << 20) // 4096
    assert outcomes["ours"][0] == "True" and int(outcomes["ours"][1]) < pages // 5, outcomes
    assert outcomes["user's"][0] == "False" and int(outcomes["user's"][1]) > pages // 2, outcomes


def test_reuse_freed_memory_leaves_other_systems_alone(monkeypatch):
    """Off Linux (no glibc; ``ctypes.CDLL(None)`` fails on Windows) nothing is set, and nothing
    raises: every program calls it at import."""
    from recozoo.runtime import _MALLOC_ENVIRONMENT, reuse_freed_memory

    for variable in (*_MALLOC_ENVIRONMENT, "GLIBC_TUNABLES"):  # else refused for another reason
        monkeypatch.delenv(variable, raising=False)
    for name in ("win32", "darwin"):
        monkeypatch.setattr(sys, "platform", name)
        assert reuse_freed_memory() is False


def test_one_thread_runs_torch_on_one_thread_and_gives_the_count_back():
    """recozoo.runtime.one_thread (an evaluation batch's metrics run in it): one intra-op
    thread within, the process's count after, also when the work inside raises."""
    import torch

    from recozoo.runtime import one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_programs_set_the_thread_settings_the_user_left_unset():
    """configure_process sets OMP_WAIT_POLICY, GOMP_SPINCOUNT and OPENBLAS_THREAD_TIMEOUT
    (recozoo.runtime) where the environment has none, and keeps a value the user set."""
    names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")
    code = ("import os, recozoo.runtime as r; r.configure_process(); "
            f"print(*(os.environ[name] for name in {names!r}))")
    base = {k: v for k, v in os.environ.items() if k not in names}
    for extra, expected in (({}, "PASSIVE 1000 20"),
                            ({"OPENBLAS_THREAD_TIMEOUT": "24", "OMP_WAIT_POLICY": "ACTIVE",
                              "GOMP_SPINCOUNT": "0"}, "ACTIVE 0 24")):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **extra},
                              capture_output=True, text=True, timeout=120, check=True)
        assert done.stdout.split() == expected.split()


def test_programs_give_arrow_the_system_allocator_unless_the_user_chose_one():
    """configure_process sets ARROW_DEFAULT_MEMORY_POOL (recozoo.runtime.MEMORY_SETTINGS), so the
    Parquet files of a run are built with the system's allocator; a pool the user named stays."""
    code = ("import recozoo.runtime as r; r.configure_process(); import pyarrow as pa; "
            "print(pa.default_memory_pool().backend_name)")
    base = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    for extra, expected in (({}, "system"), ({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"},
                                             "mimalloc")):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **extra},
                              capture_output=True, text=True, timeout=120, check=True)
        assert done.stdout.split() == [expected]
