"""``python -m recozoo.data.sources data=<name> [overrides]``: load, clean and print a dataset's
statistics (users, items, interactions, the top-20% items' share of interactions).

Composes the same config as ``train.py``, so the numbers are those a training run sees after
the source's cleaning and ``data.preprocess`` (dedupe, k-core).
"""

from __future__ import annotations

from recozoo.runtime import configure_process

configure_process()  # thread settings and warning filters

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recozoo.cli import HELP_FLAGS
from recozoo.data.sources.base import dataset_statistics, format_statistics

HELP = """usage: python -m recozoo.data.sources [key=value ...]

Load, clean and print a dataset's statistics (users, items, interactions, the head's share of
training interactions), as a training run with the same arguments would see it.

The arguments are train.py's (Hydra overrides, key=value), run from the repository root:
  data=shop  (one of conf/data/*.yaml: shop, ml100k, ml1m, online_retail, amazon, atomic, table)
      the dataset.
  data.path=null  (a file or folder)
      a local copy of the data (required by atomic, table, online_retail and amazon).
  data.preprocess.kcore=<the dataset's default>  (int)
      the k-core filter; any other data.* key of conf/data/ works the same way.
  eval.head_share=0.2  (float)
      the top share of items by training count that forms the head.
"""


def main(overrides: list[str]) -> dict[str, float]:
    """Statistics of the dataset ``overrides`` select (printed and returned)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    conf = Path.cwd() / "conf"
    if not conf.is_dir():
        raise SystemExit(f"run from the repository root: no conf/ folder in {Path.cwd()}")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    raw = instantiate(cfg.data.source).load()
    print(format_statistics(f"{raw.name} as loaded", dataset_statistics(raw)))
    data, _ = instantiate(cfg.data.preprocess)(raw)
    stats = dataset_statistics(data, cfg.eval.head_share)
    print(format_statistics(f"{data.name} after preprocessing", stats))
    print(f"| {data.name} | {stats['users']:,} | {stats['items']:,} | "
          f"{stats['interactions']:,} | {stats['head_interaction_share']:.1%} |")
    return stats


if __name__ == "__main__":
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print(HELP)
        raise SystemExit(0)
    main(sys.argv[1:])
