"""``split=preset``: train/validation/test rows read from files (RecBole's exported splits and its
atomic benchmark files), and the errors that name the file, the row or the column at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

from recozoo.data import Interactions, PresetSplit
from recozoo.train import build_datamodule


def interactions() -> Interactions:
    # user a: items 10, 11, 12, 13; user b: items 10, 11, 12 (external ids, as strings)
    return Interactions(user=np.array([0, 0, 0, 0, 1, 1, 1]),
                        item=np.array([0, 1, 2, 3, 0, 1, 2]),
                        timestamp=np.arange(7, dtype=float),
                        user_ids=np.array(["a", "b"]), item_ids=np.array([10, 11, 12, 13]))


def write_split(folder: Path, train, valid, test, header: str = "user_id\titem_id\ttimestamp",
                names: tuple[str, str, str] = ("train.tsv", "valid.tsv", "test.tsv")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(names, (train, valid, test)):
        lines = [header] + [f"{u}\t{i}\t0" for u, i in rows]
        (folder / name).write_text("\n".join(lines) + "\n")


def test_preset_split_reads_the_listed_rows_and_trains_on_the_rest(tmp_path):
    # train.tsv leaves out user a's first item (RecBole's sequential file lists targets only)
    write_split(tmp_path, train=[("a", 11), ("b", 10)], valid=[("a", 12), ("b", 11)],
                test=[("a", 13), ("b", 12)])
    split = PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    assert split.valid.tolist() == [2, 5]
    assert split.test.tolist() == [3, 6]
    assert split.train.tolist() == [0, 1, 4]


def test_preset_split_reads_recbole_benchmark_files_and_no_train_file(tmp_path):
    # RecBole's atomic files: typed headers (user_id:token) and <dataset>.<part>.inter names
    names = ("ml.train.inter", "ml.valid.inter", "ml.test.inter")
    write_split(tmp_path, train=[("a", 10)], valid=[("b", 12)], test=[("a", 11)],
                header="user_id:token\titem_id:token\ttimestamp:float", names=names)
    split = PresetSplit(str(tmp_path), *names)(interactions(), seed=0)
    assert (split.train.tolist(), split.valid.tolist(), split.test.tolist()) == (
        [0, 2, 3, 4, 5], [6], [1])
    (tmp_path / names[0]).unlink()
    no_train = PresetSplit(str(tmp_path), train=None, valid=names[1], test=names[2])
    assert no_train(interactions(), seed=0).train.tolist() == [0, 2, 3, 4, 5]


def test_preset_split_names_the_file_and_row_it_cannot_find(tmp_path):
    write_split(tmp_path, train=[("a", 10)], valid=[("a", 11)], test=[("b", 13)])
    with pytest.raises(ValueError, match=r"test\.tsv: 1 of 1 rows are not in the data, "
                                         r"e\.g\. user b item 13"):
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    write_split(tmp_path, train=[("a", 11)], valid=[("a", 11)], test=[("a", 12)])
    with pytest.raises(ValueError, match=r"train\.tsv: 1 rows are also held out .* user a "
                                         r"item 11"):
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    write_split(tmp_path, train=[], valid=[("a", 11)], test=[("a", 11)])
    with pytest.raises(ValueError, match=r"test\.tsv: 1 rows are also in .*valid\.tsv"):
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    write_split(tmp_path, train=[], valid=[("a", 11), ("a", 11)], test=[("a", 12)])
    with pytest.raises(ValueError, match=r"valid\.tsv: 1 rows are listed twice"):
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)


def test_preset_split_names_missing_files_columns_and_repeated_pairs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"valid file .*valid\.tsv is missing"):
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    write_split(tmp_path, train=[], valid=[("a", 11)], test=[("a", 12)],
                header="user\titem_id\ttimestamp")
    with pytest.raises(ValueError, match=r"valid\.tsv: expected columns \['user_id', 'item_id'\]"
                                         r".*missing \['user_id'\]; found \['user', 'item_id'"):
        PresetSplit(folder=str(tmp_path))(interactions(), seed=0)
    assert PresetSplit(str(tmp_path), user_column="user")(interactions(), 0).test.tolist() == [2]
    data = interactions()
    data.item[1] = 0  # user a has item 10 twice
    with pytest.raises(ValueError, match=r"repeats 1 \(user, item\) pairs, e\.g\. user a item 10"):
        PresetSplit(folder=str(tmp_path))(data, seed=0)


def test_split_preset_config_reproduces_a_split_written_to_files(make_config, tmp_path):
    reference = build_datamodule(make_config(["split=loo"]))
    reference.setup()
    data, indices = reference.data, reference.indices
    users, items = data.user_ids[data.user], data.item_ids[data.item]

    def rows(positions: np.ndarray) -> list[tuple[str, str]]:
        return list(zip(users[positions], items[positions]))

    folder = tmp_path / "splits"
    write_split(folder, rows(indices.train), rows(indices.valid), rows(indices.test))
    preset = build_datamodule(make_config(["split=preset", f"split.folder={folder}"]))
    preset.setup()
    assert preset.split.name == "preset"
    assert np.array_equal(np.sort(preset.indices.train), np.sort(indices.train))
    assert np.array_equal(preset.indices.valid, indices.valid)
    assert np.array_equal(preset.indices.test, indices.test)


def test_split_preset_config_needs_a_folder(make_config):
    with pytest.raises((MissingMandatoryValue, InstantiationException), match=r"split\.folder"):
        build_datamodule(make_config(["split=preset"]))
