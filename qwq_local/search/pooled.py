"""Self-consistency and best-of-N over one set of N replies: the two choices compared on the same samples."""

from __future__ import annotations

from types import TracebackType

from qwq_local.search.bon import rank
from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.replies import replies_result, sample_replies
from qwq_local.search.sc import vote
from qwq_local.search.tree import Node, SearchTree


class SampledReplies:
    """`config.n_samples` replies sampled once, for several choosers; `close()` releases their branches.

    `vote()` gives what `self_consistency` would and `rank(scorer)` what `best_of_n` would with the same draws;
    each result's tree marks only its own choice.
    """

    def __init__(self, question: str, config: SearchConfig, lm: StepLM) -> None:
        self.question, self.config = question, config
        self.tree = SearchTree(lm)
        self.budget = Budget(config, lm)
        try:
            self.leaves, self.stop_reason = sample_replies(question, config.n_samples, config, lm, self.tree,
                                                           self.budget)
        except BaseException:
            self.tree.release_all()
            raise

    def vote(self) -> SearchResult:
        return self._result("sc", vote(self.leaves))

    def rank(self, scorer: Scorer | None) -> SearchResult:
        if scorer is None:
            raise ValueError("best-of-n needs a scorer to rank the replies (rules, self-eval or qhead)")
        return self._result("bon", rank(self.question, self.leaves, self.tree, scorer))

    def _result(self, strategy: str, chosen: Node | None) -> SearchResult:
        for node in self.tree.nodes:  # an earlier choice's marks stay in its own result's tree
            node.chosen = False
        return replies_result(self.tree, strategy, chosen, self.leaves, self.budget.expansions,
                              self.stop_reason, self.config)

    def close(self) -> None:
        self.tree.release_all()

    def __enter__(self) -> SampledReplies:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
