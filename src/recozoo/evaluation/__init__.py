"""Evaluation: ranking a model's scores (`Ranker`) and measuring the lists (`Evaluator`).

Training, the batch export and the HTTP service all rank through `Ranker`, so what is served is
what was evaluated.
"""

from recozoo.evaluation.evaluator import Evaluator, per_user_values
from recozoo.evaluation.ranking import Ranker, mask_seen

__all__ = ["Evaluator", "Ranker", "mask_seen", "per_user_values"]
