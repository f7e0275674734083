"""``make bench`` (``python -m bench`` from the repository root): recozoo's speed and quality side
by side with RecBole 1.2.1, and how its cost grows with data (`bench.__main__` lists the
sections). These are scripts beside the package, not part of it: they import recozoo and run
``train.py`` from this checkout. A benchmark measures and writes figures (bench/results.md,
bench/results.json); it asserts nothing."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The checkout this ``bench`` folder sits in (it holds ``train.py`` and ``conf/``, which the
    bench runs as users do)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "train.py").is_file() or not (root / "conf").is_dir():
        raise FileNotFoundError(f"train.py and conf/ not found in {root}: the bench runs from a "
                                "checkout of recozoo (`make bench`, or `python -m bench` in it)")
    return root
