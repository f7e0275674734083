"""Re-rankers for the long tail, applied to the top-N candidates of any model.

``rerank=<none, tail_slots, xquad, calibrated, mmr>`` on the command line (conf/rerank/), weight
``rerank.weight``. Each takes (B, N) candidate items and scores, the users' histories and
`ItemFacts`, and returns a re-ordered (B, K) list; the evaluation path, the fusion ensemble and
the serving ``tail_boost`` and ``tail_slots`` options all call them the same way.
"""

from recozoo.rerank.base import ItemFacts, Reranker
from recozoo.rerank.calibrated import Calibrated
from recozoo.rerank.mmr import MMR
from recozoo.rerank.tail_slots import TailSlots
from recozoo.rerank.xquad import XQuAD

__all__ = ["MMR", "Calibrated", "ItemFacts", "Reranker", "TailSlots", "XQuAD"]
