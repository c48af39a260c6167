"""Step-level A* in the manner of Q* (arXiv 2406.14283): best-first over states scored f = g + λ·h.

A state is the question plus the steps so far; an action is the next step. g aggregates the
process rewards (scorer values) of the path's steps; h estimates the value of the state's best
next step. When a node is expanded, its K candidate next steps are scored and h becomes the best
of them. A child that has not been expanded yet takes h = the Q-value of the action that led to
it (its own step's score): the usual practical Q* approximation, which needs no look-ahead.
"""

from __future__ import annotations

import heapq

from qwq_local.search.aggregate import get_agg
from qwq_local.search.answer import extract_final_answer
from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.steps import is_terminal
from qwq_local.search.tree import Node, SearchTree, safe_score


class AStar:
    """One A* search: an open list (heap on -f, creation order breaking ties) bounded to B nodes."""

    def __init__(self, question: str, config: SearchConfig, lm: StepLM, scorer: Scorer) -> None:
        self.question = question
        self.config = config
        self.lm = lm
        self.scorer = scorer
        self.agg = get_agg(config.agg)
        self.tree = SearchTree(lm)
        self.budget = Budget(config, lm)
        self.heap: list[tuple[float, int]] = []
        self.open: set[int] = set()
        self.terminals: list[Node] = []

    def run(self) -> SearchResult:
        try:
            root = self.tree.add_root(self.lm.open(self.question))
            root.g = root.f = self.agg([])
            self._push(root)
            stop_reason = self._search()
            return self._result(root, stop_reason)
        finally:
            self.tree.release_all()

    def _search(self) -> str:
        while self.open:
            if len(self.terminals) >= self.config.trajectories:
                return "done"
            spent = self.budget.exhausted()
            if spent:
                return spent
            self.expand(self._pop())
        return "done" if len(self.terminals) >= self.config.trajectories else "exhausted"

    def expand(self, node: Node) -> None:
        """Sample K next steps from `node` in one call, score them, and push or collect the children."""
        config = self.config
        steps = self.tree.steps(node)
        text_so_far = "".join(steps)
        candidates = self.lm.sample(node.branch, config.candidates, config.stop)
        self.budget.expansions += 1
        node.expanded = True
        self.tree.release(node)  # children continue on their own branches
        best = 0.0
        for candidate in self.tree.release_duplicates(candidates):
            q = safe_score(self.scorer, self.question, steps, candidate)
            best = max(best, q)
            child = self.tree.add_child(node, candidate, reward=q)
            child.g = self.agg(child.rewards)
            child.h = q
            child.f = child.g + config.lam * child.h
            if is_terminal(candidate, text_so_far, thinking=config.thinking, end_think=config.stop.end_think):
                child.terminal = True
                child.answer = extract_final_answer(text_so_far + candidate.text, config.stop.end_think)
                self.terminals.append(child)
                self.tree.release(child)
            elif config.max_depth is not None and child.depth >= config.max_depth:
                child.cut = True
                self.tree.release(child)
            else:
                self._push(child)
        node.h = best
        node.f = node.g + config.lam * node.h
        self._trim()

    def _push(self, node: Node) -> None:
        heapq.heappush(self.heap, (-node.f, node.id))
        self.open.add(node.id)

    def _pop(self) -> Node:
        while True:
            _, node_id = heapq.heappop(self.heap)
            if node_id in self.open:  # entries of dropped nodes are skipped here
                self.open.discard(node_id)
                return self.tree.nodes[node_id]

    def _trim(self) -> None:
        """Drop the worst open nodes (lowest f, newest first among ties) until at most B remain."""
        while len(self.open) > self.config.beam:
            worst = min((self.tree.nodes[i] for i in self.open), key=lambda n: (n.f, -n.id))
            self.open.discard(worst.id)
            worst.dropped = True
            self.tree.release(worst)

    def _finish(self, node: Node) -> Node:
        """Complete an open path as a whole reply (at most 3 calls: thinking, then the answer).

        Used when the budget ran out before any path finished, so that a search always answers.
        """
        end_think = self.config.stop.end_think
        self.open.discard(node.id)
        for _ in range(3):
            before = self.tree.text(node)
            more = self.lm.sample(node.branch, 1, self.config.reply_stop())
            node.expanded = True
            self.tree.release(node)
            if not more:
                return node
            child = self.tree.add_child(node, more[0], reward=None)
            child.g, child.h, child.f = node.g, 0.0, node.g
            if is_terminal(more[0], before, thinking=self.config.thinking, end_think=end_think):
                child.terminal = True
                child.answer = extract_final_answer(before + more[0].text, end_think)
                self.tree.release(child)
                return child
            if more[0].n_tokens == 0:
                self.tree.release(child)
                return child
            node = child
        self.tree.release(node)
        return node

    def _result(self, root: Node, stop_reason: str) -> SearchResult:
        def rank(node: Node) -> tuple[float, int]:
            return (node.f, -node.id)

        if self.terminals:
            chosen = max(self.terminals, key=rank)
        else:
            leaves = self.tree.open_leaves()  # open, cut at max depth, or dead ends
            chosen = max(leaves, key=rank) if leaves else root
            if self.config.finish_partial and chosen.id in self.open:
                chosen = self._finish(chosen)
        return self.tree.result(
            "astar",
            chosen,
            terminals=self.terminals,
            expansions=self.budget.expansions,
            stop_reason=stop_reason,
            end_think=self.config.stop.end_think,
        )


def astar(question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None) -> SearchResult:
    """Answer `question` with step-level A*; the best finished path by f wins (see the module doc)."""
    if scorer is None:
        raise ValueError("astar needs a scorer (rules, self-eval or qhead)")
    return AStar(question, config, lm, scorer).run()
