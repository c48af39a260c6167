"""Step-level beam search as in huggingface/search-and-learn: keep the best B paths at every depth."""

from __future__ import annotations

from qwq_local.search.aggregate import get_agg
from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.tree import Node, SearchTree, safe_score


def _rank(node: Node) -> tuple[float, int]:
    """Higher g first, earlier creation first among ties."""
    return (node.g, -node.id)


class BeamSearch:
    """One beam search: every kept node is expanded by K steps, the best `beam_width` children stay."""

    def __init__(self, question: str, config: SearchConfig, lm: StepLM, scorer: Scorer) -> None:
        self.question = question
        self.config = config
        self.lm = lm
        self.scorer = scorer
        self.agg = get_agg(config.agg)
        self.tree = SearchTree(lm, config.read_answer)
        self.budget = Budget(config, lm)
        self.terminals: list[Node] = []

    def run(self) -> SearchResult:
        try:
            root = self.tree.add_root(self.lm.open(self.question))
            self.config.report("beam", 0, 1, 0, None, self.budget.generated_tokens)
            try:
                stop_reason = self._search(root)
            except KeyboardInterrupt:  # Ctrl-C: answer with the best path found so far
                stop_reason = "interrupted"
            if self.terminals:
                chosen = max(self.terminals, key=_rank)
            else:
                leaves = self.tree.open_leaves()  # unexpanded, cut at max depth, or dead ends
                chosen = max(leaves, key=_rank) if leaves else root
            return self.tree.result(
                "beam",
                chosen,
                terminals=self.terminals,
                expansions=self.budget.expansions,
                stop_reason=stop_reason,
                end_think=self.config.stop.end_think,
            )
        finally:
            self.tree.release_all()

    def _stop(self) -> str | None:
        if len(self.terminals) >= self.config.trajectories:
            return "done"
        return self.budget.exhausted()

    def _search(self, root: Node) -> str:
        level = [root]
        while level:
            pool: list[Node] = []
            for node in level:
                stop_reason = self._stop()
                if stop_reason:
                    return stop_reason
                pool = self._keep_best(pool + self.expand(node))
                scored = [n.g for n in pool + self.terminals]
                self.config.report("beam", self.budget.expansions, len(self.tree.nodes), len(self.terminals),
                                   max(scored) if scored else None, self.budget.generated_tokens)
            level = pool
        return "done" if len(self.terminals) >= self.config.trajectories else "exhausted"

    def _keep_best(self, pool: list[Node]) -> list[Node]:
        """The best `beam_width` of `pool`; the rest are dropped now, so their KV is freed early."""
        pool = sorted(pool, key=_rank, reverse=True)
        for node in pool[self.config.beam_width :]:
            node.dropped = True
            self.tree.release(node)
        return pool[: self.config.beam_width]

    def expand(self, node: Node) -> list[Node]:
        """Sample K steps from `node`; collect finished and too-deep children, return the open ones."""
        config = self.config
        end_think = config.stop.end_think
        steps = self.tree.steps(node)
        text_so_far = "".join(steps)
        candidates = self.lm.sample(node.branch, config.candidates, config.stop)
        self.budget.expansions += 1
        node.expanded = True
        self.tree.release(node)
        children: list[Node] = []
        for candidate in self.tree.release_duplicates(candidates):
            q = safe_score(self.scorer, self.question, steps, candidate)
            child = self.tree.add_step(node, candidate, q, text_so_far, thinking=config.thinking, end_think=end_think)
            child.g = child.f = self.agg(child.rewards)
            if child.terminal:
                self.terminals.append(child)
            elif config.max_depth is not None and child.depth >= config.max_depth:
                child.cut = True
                self.tree.release(child)
            else:
                children.append(child)
        return children


def beam_search(question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None) -> SearchResult:
    """Beam search over steps: width `beam_width`, K candidates per node, best finished path by g wins.

    Stops after `trajectories` finished paths, when no node is left, or when a budget runs out.
    Nodes rank by the aggregated reward g alone (h = 0, f = g).
    """
    if scorer is None:
        raise ValueError("beam search needs a scorer (rules, self-eval or qhead)")
    return BeamSearch(question, config, lm, scorer).run()
