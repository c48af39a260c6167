"""Best-of-N: N whole replies in one batched call, the one the scorer values most wins."""

from __future__ import annotations

from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.replies import sample_replies, whole_candidate
from qwq_local.search.tree import SearchTree, safe_score


def best_of_n(question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None) -> SearchResult:
    """Sample `config.n_samples` replies, score each whole reply as one step, keep the best (first on ties)."""
    if scorer is None:
        raise ValueError("best-of-n needs a scorer to rank the replies (rules, self-eval or qhead)")
    tree = SearchTree(lm)
    budget = Budget(config, lm)
    try:
        leaves, stop_reason = sample_replies(question, config.n_samples, config, lm, tree, budget)
        for leaf in leaves:
            leaf.reward = leaf.g = leaf.f = safe_score(scorer, question, [], whole_candidate(tree, leaf))
        # Finished replies rank before unfinished ones, then by score, then by sampling order.
        chosen = (
            max(leaves, key=lambda n: (n.terminal, n.f, -n.id)) if leaves else tree.nodes[0]
        )
        return tree.result(
            "bon",
            chosen,
            terminals=[leaf for leaf in leaves if leaf.terminal],
            expansions=budget.expansions,
            stop_reason=stop_reason,
            end_think=config.stop.end_think,
        )
    finally:
        tree.release_all()
