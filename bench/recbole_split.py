"""RecBole 1.2.1's own per-user random 8:1:1 split of ml-100k at a given seed, written as
``train.tsv``/``valid.tsv``/``test.tsv`` (``user_id item_id timestamp``, MovieLens tokens and unix
seconds) for ``split=preset``, so recozoo is scored on exactly the rows RecBole trains and tests
on with that seed (``run_recbole.py --seed <seed>``).

Runs inside RecBole's virtual environment, not recozoo's (`bench.peers.RecBolePeer`):

    <recbole venv>/bin/python bench/recbole_split.py <out dir> <seed> <data root>

``<data root>/ml-100k/ml-100k.inter`` is the atomic file RecBole reads. The protocol settings are
those of the peer's general models (RecBole's defaults: ``RS`` 8:1:1, random order, grouped by
user, full ranking); the split depends on them and on the seed only.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

PROTOCOL = {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user",
                          "mode": "full"}}


def _restore_numpy_aliases() -> None:
    """RecBole 1.2.1 reads NumPy names that NumPy 2 removed (np.float, np.int, ...)."""
    for name, value in (("bool", np.bool_), ("int", np.int_), ("float", np.float64),
                        ("complex", np.complex128), ("object", np.object_), ("str", np.str_),
                        ("long", np.int_), ("unicode", np.str_)):
        if name not in np.__dict__:
            setattr(np, name, value)


def raw_times(inter_file: Path) -> dict[tuple[str, str], int]:
    """(user token, item token) -> unix seconds, from the atomic file (RecBole normalises its
    own copy of the timestamps)."""
    with inter_file.open() as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = [name.split(":")[0] for name in next(rows)]
        user, item, time = (header.index(c) for c in ("user_id", "item_id", "timestamp"))
        return {(row[user], row[item]): int(float(row[time])) for row in rows}


def export(out: Path, seed: int, data_root: Path) -> None:
    _restore_numpy_aliases()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    Config.compatibility_settings = lambda self: None  # aliases restored above
    config = Config(model="BPR", dataset="ml-100k", config_dict={
        "seed": seed, "reproducibility": True, "use_gpu": False, "gpu_id": "",
        "state": "ERROR", "show_progress": False, **PROTOCOL})
    config["data_path"] = str(data_root / "ml-100k")
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    times = raw_times(data_root / "ml-100k" / "ml-100k.inter")
    out.mkdir(parents=True, exist_ok=True)
    for part, loader in zip(("train", "valid", "test"), data_preparation(config, dataset)):
        inter = loader._dataset.inter_feat
        users = dataset.id2token(dataset.uid_field, inter[dataset.uid_field].numpy())
        items = dataset.id2token(dataset.iid_field, inter[dataset.iid_field].numpy())
        with (out / f"{part}.tsv").open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["user_id", "item_id", "timestamp"])
            writer.writerows((u, i, times[(str(u), str(i))]) for u, i in zip(users, items))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    export(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
