"""The baseline without search: one whole reply, sampled once."""

from __future__ import annotations

from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.replies import sample_replies
from qwq_local.search.tree import SearchTree


def direct(question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None = None) -> SearchResult:
    """Sample one whole reply (StepStop with no delimiter); `scorer` is unused."""
    tree = SearchTree(lm)
    budget = Budget(config, lm)
    try:
        leaves, stop_reason = sample_replies(question, 1, config, lm, tree, budget)
        chosen = leaves[0] if leaves else tree.nodes[0]
        return tree.result(
            "direct",
            chosen,
            terminals=[leaf for leaf in leaves if leaf.terminal],
            expansions=budget.expansions,
            stop_reason=stop_reason,
            end_think=config.stop.end_think,
        )
    finally:
        tree.release_all()
