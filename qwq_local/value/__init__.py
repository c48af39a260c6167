"""Process-reward scorers: the Q-value head, self-evaluation and rule checks."""

from qwq_local.value.combine import SCORER_NAMES, WeightedScorer, build_scorer
from qwq_local.value.rules import RulesScorer
from qwq_local.value.selfeval import SelfEvalScorer

__all__ = ["SCORER_NAMES", "RulesScorer", "SelfEvalScorer", "WeightedScorer", "build_scorer"]
