"""Data: sources -> Interactions -> preprocessing -> split -> RecDataModule."""

from recozoo.data.datamodule import DatasetInfo, EvalBatch, RecDataModule, TrainView
from recozoo.data.interactions import EVENT_CODES, EVENT_NAMES, Interactions, ItemData
from recozoo.data.preprocess import EmptyDatasetError, Preprocessing
from recozoo.data.split import (
    LeaveOneOut,
    PresetSplit,
    RandomRatioSplit,
    SplitIndices,
    TemporalRatioSplit,
)

__all__ = [
    "EVENT_CODES",
    "EVENT_NAMES",
    "DatasetInfo",
    "EmptyDatasetError",
    "EvalBatch",
    "Interactions",
    "ItemData",
    "LeaveOneOut",
    "Preprocessing",
    "PresetSplit",
    "RandomRatioSplit",
    "RecDataModule",
    "SplitIndices",
    "TemporalRatioSplit",
    "TrainView",
]
