"""Data: sources -> Interactions -> preprocessing -> split -> RecDataModule."""

from recozoo.data.datamodule import DatasetInfo, EvalBatch, RecDataModule, TrainView
from recozoo.data.interactions import EVENT_CODES, EVENT_NAMES, Interactions, ItemData
from recozoo.data.preprocess import EmptyDatasetError, Preprocessing
from recozoo.data.split import LeaveOneOut, RandomRatioSplit, SplitIndices, TemporalRatioSplit

__all__ = [
    "DatasetInfo", "EvalBatch", "RecDataModule", "TrainView", "EVENT_CODES", "EVENT_NAMES",
    "Interactions", "ItemData", "EmptyDatasetError", "Preprocessing", "LeaveOneOut",
    "RandomRatioSplit", "SplitIndices", "TemporalRatioSplit",
]
