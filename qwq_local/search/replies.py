"""Whole replies for the strategies that do not search steps: direct, best-of-n, self-consistency."""

from __future__ import annotations

from dataclasses import replace
from types import TracebackType

from qwq_local.search.answer import find_explicit_answer
from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Candidate, Interrupted, SearchResult, StepLM
from qwq_local.search.steps import is_terminal
from qwq_local.search.tree import Node, SearchTree


def sample_replies(
    question: str, n: int, config: SearchConfig, lm: StepLM, tree: SearchTree, budget: Budget
) -> tuple[list[Node], str]:
    """`n` whole replies sampled in one call; the last node of each, and why sampling stopped.

    A reply the engine stops before it ends (at `</think>`, say) is continued one call at a time
    while budgets allow, so each reply is the path from the root to its node.
    """
    stop = config.reply_stop()
    end_think = config.stop.end_think
    root = tree.add_root(lm.open(question))
    config.report("replies", 0, 1, 0, None, budget.generated_tokens)
    leaves: list[Node] = []
    stop_reason = "done"
    try:
        candidates = lm.sample(root.branch, n, stop)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: the replies as far as they got, if the engine kept them
        if not isinstance(interrupt, Interrupted) or not interrupt.candidates:
            return leaves, "interrupted"
        candidates, stop_reason = interrupt.candidates[0], "interrupted"
    budget.expansions += 1
    root.expanded = True
    tree.release(root)
    for candidate in candidates:
        node = tree.add_child(root, candidate, reward=None)
        before = ""  # the reply before the node's step
        while not is_terminal(candidate, before, thinking=config.thinking, end_think=end_think):
            if candidate.n_tokens == 0 or (config.max_depth is not None and node.depth >= config.max_depth):
                break
            spent = stop_reason if stop_reason == "interrupted" else budget.exhausted()
            if spent:
                stop_reason = spent
                break
            try:
                more = lm.sample(node.branch, 1, stop)
            except KeyboardInterrupt:  # the reply stays as far as it got
                stop_reason = "interrupted"
                break
            budget.expansions += 1
            node.expanded = True
            tree.release(node)
            if not more:
                break
            before += candidate.text
            candidate = more[0]
            node = tree.add_child(node, candidate, reward=None)
        text = before + candidate.text
        node.terminal = is_terminal(candidate, before, thinking=config.thinking, end_think=end_think)
        node.answer = config.read_answer(text, end_think) if node.terminal else find_explicit_answer(text)
        leaves.append(node)
        config.report("replies", budget.expansions, len(tree.nodes), sum(leaf.terminal for leaf in leaves), None,
                      budget.generated_tokens)
    return leaves, stop_reason


def whole_candidate(tree: SearchTree, leaf: Node) -> Candidate:
    """The reply ending at `leaf` as one Candidate (its last step's branch and hidden state)."""
    path = tree.path(leaf)[1:]
    last = leaf.candidate
    assert last is not None, "a reply leaf always has its candidate"
    if len(path) == 1:
        return last
    sampled = [n.candidate for n in path if n.candidate is not None]
    return replace(
        last,
        text=tree.text(leaf),
        n_tokens=sum(c.n_tokens for c in sampled),
        logprob=sum(c.logprob for c in sampled),
    )


class SampledReplies:
    """`n` (default `config.n_samples`) whole replies sampled once, for one chooser or several; `close()` releases
    their branches."""

    def __init__(self, question: str, config: SearchConfig, lm: StepLM, n: int | None = None) -> None:
        self.config = config
        self.tree = SearchTree(lm, config.read_answer)
        self.budget = Budget(config, lm)
        try:
            count = config.n_samples if n is None else n
            self.leaves, self.stop_reason = sample_replies(question, count, config, lm, self.tree, self.budget)
        except BaseException:
            self.tree.release_all()
            raise

    def result(self, strategy: str, chosen: Node | None) -> SearchResult:
        """The result of choosing `chosen` (the root when nothing was sampled); an earlier choice's marks stay
        in its own result's tree."""
        for node in self.tree.nodes:
            node.chosen = False
        return self.tree.result(
            strategy,
            chosen if chosen is not None else self.tree.nodes[0],
            terminals=[leaf for leaf in self.leaves if leaf.terminal],
            expansions=self.budget.expansions,
            stop_reason=self.stop_reason,
            end_think=self.config.stop.end_think,
        )

    def close(self) -> None:
        self.tree.release_all()

    def __enter__(self) -> SampledReplies:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
