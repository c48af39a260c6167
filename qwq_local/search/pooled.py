"""Self-consistency and best-of-N over one set of N replies: the two choices compared on the same samples."""

from __future__ import annotations

from qwq_local.search.bon import rank
from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.replies import replies_result, sample_replies
from qwq_local.search.sc import vote
from qwq_local.search.tree import SearchTree


def sc_and_bon(question: str, config: SearchConfig, lm: StepLM,
               scorer: Scorer) -> tuple[SearchResult, SearchResult]:
    """`config.n_samples` replies sampled once; the majority's choice and the scorer's, each as its own result.

    The same as running `self_consistency` and `best_of_n` with the same draws, at the cost of one of them.
    """
    tree = SearchTree(lm)
    budget = Budget(config, lm)
    try:
        leaves, stop_reason = sample_replies(question, config.n_samples, config, lm, tree, budget)
        by_vote = replies_result(tree, "sc", vote(leaves), leaves, budget.expansions, stop_reason, config)
        for node in tree.nodes:  # the vote's marks and values stay in its own result's tree
            node.chosen = False
        chosen = rank(question, leaves, tree, scorer)
        by_score = replies_result(tree, "bon", chosen, leaves, budget.expansions, stop_reason, config)
        return by_vote, by_score
    finally:
        tree.release_all()
