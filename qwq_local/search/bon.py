"""Best-of-N: N whole replies in one batched call, the one the scorer values most wins."""

from __future__ import annotations

from typing import Sequence

from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.replies import SampledReplies, whole_candidate
from qwq_local.search.tree import Node, SearchTree, safe_score


NEEDS_SCORER = "best-of-n needs a scorer to rank the replies (rules, self-eval or qhead)"


def rank(question: str, leaves: Sequence[Node], tree: SearchTree, scorer: Scorer | None) -> Node | None:
    """The best-scored reply, each whole reply scored as one step; finished ones first, ties to the earliest."""
    if scorer is None:
        raise ValueError(NEEDS_SCORER)
    for leaf in leaves:
        leaf.reward = leaf.g = leaf.f = safe_score(scorer, question, [], whole_candidate(tree, leaf))
    return max(leaves, key=lambda n: (n.terminal, n.f, -n.id)) if leaves else None


def best_of_n(question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None) -> SearchResult:
    """Sample `config.n_samples` replies, score each whole reply as one step, keep the best (first on ties)."""
    if scorer is None:  # before sampling anything
        raise ValueError(NEEDS_SCORER)
    with SampledReplies(question, config, lm) as replies:
        return replies.result("bon", rank(question, replies.leaves, replies.tree, scorer))
