"""Step-level A* in the manner of Q* (arXiv 2406.14283): best-first over states scored f = g + λ·h.

A state is the question plus the steps so far; an action is the next step. g aggregates the
process rewards (scorer values) of the path's steps; h estimates the value of the state's best
next step. When a node is expanded, its K candidate next steps are scored and h becomes the best
of them. A child that has not been expanded yet takes h = the Q-value of the action that led to
it (its own step's score): the usual practical Q* approximation, which needs no look-ahead.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import replace

from qwq_local.search.aggregate import get_agg
from qwq_local.search.answer import normalize_for_vote
from qwq_local.search.budget import Budget
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Candidate, Scorer, SearchResult, StepLM, sample_many
from qwq_local.search.tree import Node, SearchTree, safe_score


class AStar:
    """One A* search: an open list (heap on -f, creation order breaking ties) bounded to B nodes."""

    def __init__(self, question: str, config: SearchConfig, lm: StepLM, scorer: Scorer) -> None:
        self.question = question
        self.config = config
        self.lm = lm
        self.scorer = scorer
        self.agg = get_agg(config.agg)
        self.tree = SearchTree(lm, config.read_answer)
        self.budget = Budget(config, lm)
        self.heap: list[tuple[float, int]] = []
        self.open: set[int] = set()
        self.terminals: list[Node] = []
        self.cut: list[Node] = []  # at the depth limit: never expanded, but completed when paths are short
        self.widened = 0  # finished paths added by widening (the last ones in self.terminals)

    def run(self) -> SearchResult:
        try:
            root = self.tree.add_root(self.lm.open(self.question))
            root.g = root.f = self.agg([])
            self._push(root)
            self._report()
            try:
                stop_reason = self._search()
                if self.config.finish_partial and len(self.terminals) < self.config.trajectories:
                    self._complete(self.config.trajectories - len(self.terminals))
                self._widen(root)
            except KeyboardInterrupt:  # Ctrl-C: answer with the best path found so far
                stop_reason = "interrupted"
            return self._result(root, stop_reason)
        finally:
            self.tree.release_all()

    def _report(self) -> None:
        scored = [self.tree.nodes[i].f for i in self.open] + [n.f for n in self.terminals]
        self.config.report("astar", self.budget.expansions, len(self.tree.nodes), len(self.terminals),
                           max(scored) if len(self.tree.nodes) > 1 and scored else None,
                           self.budget.generated_tokens)

    def _search(self) -> str:
        while self.open:
            if len(self.terminals) >= self.config.trajectories:
                return "done"
            spent = self.budget.exhausted()
            if spent:
                return spent
            self.expand(*self._pop_best(self._width()))
        return "done" if len(self.terminals) >= self.config.trajectories else "exhausted"

    def expand(self, *nodes: Node) -> None:
        """Sample K next steps from each of `nodes` (one batched call for all), score them, push or collect them."""
        config = self.config
        if len(nodes) == 1:
            sampled = [self.lm.sample(nodes[0].branch, config.candidates, config.stop)]
        else:
            sampled = sample_many(self.lm, [(node.branch, config.candidates) for node in nodes], config.stop)
        for node, candidates in zip(nodes, sampled):
            self._expanded(node, candidates)
        self._trim()
        self._report()

    def _expanded(self, node: Node, candidates: list[Candidate]) -> None:
        config = self.config
        steps = self.tree.steps(node)
        text_so_far = "".join(steps)
        self.budget.expansions += 1
        node.expanded = True
        if not (node.parent is None and config.widen):  # the root stays for widening
            self.tree.release(node)  # children continue on their own branches
        best = 0.0
        for candidate in self.tree.release_duplicates(candidates):
            q = safe_score(self.scorer, self.question, steps, candidate)
            best = max(best, q)
            child = self._child(node, candidate, q, text_so_far)
            if child.terminal:
                continue
            if config.max_depth is not None and child.depth >= config.max_depth:
                child.cut = True
                if config.finish_partial:
                    self.cut.append(child)
                else:
                    self.tree.release(child)
            else:
                self._push(child)
        node.h = best
        node.f = node.g + config.lam * node.h

    def _child(self, node: Node, candidate: Candidate, q: float, text_so_far: str) -> Node:
        """A scored child: g aggregates the path's rewards, h is its own step's value until it is expanded."""
        config = self.config
        child = self.tree.add_step(node, candidate, q, text_so_far, thinking=config.thinking,
                                   end_think=config.stop.end_think)
        child.g = self.agg(child.rewards)
        child.h = q
        child.f = child.g + config.lam * child.h
        if child.terminal:
            self.terminals.append(child)
        return child

    def _push(self, node: Node) -> None:
        heapq.heappush(self.heap, (-node.f, node.id))
        self.open.add(node.id)

    def _pop_best(self, count: int) -> list[Node]:
        """The `count` open nodes of highest f (fewer when fewer are open), taken off the open list."""
        nodes = []
        while self.heap and len(nodes) < count:
            _, node_id = heapq.heappop(self.heap)
            if node_id in self.open:  # entries of dropped nodes are skipped here
                self.open.discard(node_id)
                nodes.append(self.tree.nodes[node_id])
        return nodes

    def _width(self) -> int:
        """How many open nodes the next call expands: `expand_width`, within the expansions left."""
        width = self.config.expand_width
        if self.config.max_expansions is not None:
            width = min(width, self.config.max_expansions - self.budget.expansions)
        return max(1, width)

    def _trim(self) -> None:
        """Drop the worst open nodes (lowest f, newest first among ties) until at most B remain."""
        while len(self.open) > self.config.beam:
            worst = min((self.tree.nodes[i] for i in self.open), key=lambda n: (n.f, -n.id))
            self.open.discard(worst.id)
            worst.dropped = True
            self.tree.release(worst)

    def _complete(self, wanted: int) -> None:
        """Complete the best open (or depth-cut) paths to the end until `wanted` more paths have finished.

        The budget has run out: as the beam search of search-and-learn and REBASE do, the best unfinished nodes
        are finished as whole replies, `config.completions` from each, in one batched call, so that the answer is
        chosen among N finished paths rather than read off one partial path.
        """
        per = self.config.completions
        pool = [self.tree.nodes[i] for i in self.open] + self.cut
        pool.sort(key=lambda n: (-n.f, n.id))
        requests: list[tuple[Node, int]] = []
        for node in pool[: math.ceil(wanted / per)]:
            k = min(per, wanted - sum(k for _, k in requests))
            requests.append((node, k))
            self.open.discard(node.id)
        self._finish(requests)

    def _widen(self, root: Node) -> None:
        """While the finished paths' vote is unsettled, add up to `widen` whole replies sampled from the root.

        The tree's paths share their first steps, which saves tokens and costs diversity; where they disagree, fresh
        replies from the question itself are what the tree lacks (adaptive-consistency's stopping rule, arXiv
        2305.11860, on the search's value-weighted vote). Where they agree, no tokens are spent.
        """
        for _ in range(self.config.widen):
            if self._settled() or self.budget.exhausted(expansions=False):  # whole replies expand nothing
                return
            before = len(self.terminals)
            self._finish([(root, 1)], keep=root.id)
            self.widened += len(self.terminals) - before

    def _settled(self) -> bool:
        """Whether the leading answer holds `settle` of the finished paths' vote (weighted as `choose` weighs)."""
        totals = vote_totals(self.terminals, self.config.choose)
        whole = sum(totals.values())
        return whole > 0 and max(totals.values()) >= self.config.settle * whole

    def _finish(self, requests: list[tuple[Node, int]], keep: int | None = None) -> None:
        """Sample `k` whole replies from each (node, k) of `requests` in one batched call; node `keep` stays held."""
        pending = requests
        for _ in range(3):  # an engine may pause at </think>: the answer follows in a second call
            if not pending:
                break
            sampled = sample_many(self.lm, [(node.branch, k) for node, k in pending], self.config.reply_stop())
            following: list[tuple[Node, int]] = []
            for (node, _), candidates in zip(pending, sampled):
                before = self.tree.text(node)
                steps = self.tree.steps(node)
                node.expanded = True
                if node.id != keep:
                    self.tree.release(node)
                for candidate in candidates:
                    q = safe_score(self.scorer, self.question, steps, candidate)
                    child = self._child(node, candidate, q, before)
                    if child.terminal:
                        continue
                    if candidate.n_tokens > 0:
                        following.append((child, 1))
                    else:
                        self.tree.release(child)
            pending = following
            self._report()

    def _result(self, root: Node, stop_reason: str) -> SearchResult:
        if self.terminals:
            chosen = choose_terminal(self.terminals, self.config.choose)
        else:
            leaves = self.tree.open_leaves()  # open, cut at max depth, or dead ends
            chosen = max(leaves, key=_rank) if leaves else root
        return replace(self.tree.result(
            "astar",
            chosen,
            terminals=self.terminals,
            expansions=self.budget.expansions,
            stop_reason=stop_reason,
            end_think=self.config.stop.end_think,
        ), widened=self.widened)


def _rank(node: Node) -> tuple[float, int]:
    """Higher f first; among equals the older node."""
    return (node.f, -node.id)


def value_weight(value: float, power: float = 1.0) -> float:
    """A finished path's vote in a value-weighted vote: the odds g / (1 - g) of its value, to the power `power`."""
    g = min(max(value, 1e-6), 1 - 1e-6)
    return (g / (1 - g)) ** power


def vote_totals(terminals: list[Node], how: str) -> dict[str, float]:
    """Each answer's vote among the finished paths: 1 a path (`vote`), else the odds of its value."""
    totals: dict[str, float] = defaultdict(float)
    for node in terminals:
        if node.answer is not None:
            totals[normalize_for_vote(node.answer)] += 1.0 if how == "vote" else value_weight(node.g)
    return totals


def choose_terminal(terminals: list[Node], how: str) -> Node:
    """The finished path A* answers with: the best by f, or the best of the answer with the most votes, each path
    voting with 1 (`vote`) or with the odds g / (1 - g) of its value (`value`: weighted best-of-N, arXiv 2408.03314
    section 5.1; with the confidence scorer, the weight exp((c - center) / scale) of `qwq bench choose` wvote)."""
    if how == "best":
        return max(terminals, key=_rank)
    totals = vote_totals(terminals, how)
    if not totals:
        return max(terminals, key=_rank)
    order = [normalize_for_vote(n.answer) for n in terminals if n.answer is not None]
    winner = max(totals, key=lambda key: (totals[key], -order.index(key)))
    return max((n for n in terminals if n.answer is not None and normalize_for_vote(n.answer) == winner), key=_rank)


def astar(question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None) -> SearchResult:
    """Answer `question` with step-level A*; the best finished path by f wins (see the module doc)."""
    if scorer is None:
        raise ValueError("astar needs a scorer (rules, self-eval or qhead)")
    return AStar(question, config, lm, scorer).run()
