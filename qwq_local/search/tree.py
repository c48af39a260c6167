"""The search tree every strategy builds: nodes, their paths, and the LM branches they hold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from qwq_local.search.answer import extract_final_answer, find_explicit_answer
from qwq_local.search.protocol import Candidate, Scorer, SearchResult, StepLM
from qwq_local.search.steps import is_terminal


@dataclass
class Node:
    """One state: the question plus the steps on the path from the root to here."""

    id: int
    parent: int | None
    depth: int
    text: str  # this node's step ("" for the root)
    branch: int
    rewards: tuple[float, ...] = ()  # the scorer's value of each step on the path
    reward: float | None = None  # this step's value (None for the root and unscored replies)
    g: float = 0.0
    h: float = 0.0
    f: float = 0.0
    finished: bool = False
    terminal: bool = False
    expanded: bool = False
    dropped: bool = False  # pushed out of the open list by the beam bound
    cut: bool = False  # at the depth limit, so never expanded
    chosen: bool = False
    answer: str | None = None
    candidate: Candidate | None = None


def safe_score(scorer: Scorer, question: str, steps: Sequence[str], candidate: Candidate) -> float:
    """The scorer's value clamped to [0, 1]; NaN counts as 0."""
    value = float(scorer.score(question, steps, candidate))
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


class SearchTree:
    """All nodes of one search; releases each LM branch exactly once."""

    def __init__(self, lm: StepLM, read_answer: Callable[[str, str], str | None] = extract_final_answer) -> None:
        self.lm = lm
        self.read_answer = read_answer  # a finished reply's final answer (SearchConfig.read_answer)
        self.nodes: list[Node] = []
        self._holding: set[int] = set()  # ids of nodes whose branch is still live

    def add_root(self, branch: int) -> Node:
        return self._add(Node(id=len(self.nodes), parent=None, depth=0, text="", branch=branch))

    def add_child(self, parent: Node, candidate: Candidate, reward: float | None) -> Node:
        rewards = parent.rewards + ((reward,) if reward is not None else ())
        node = Node(
            id=len(self.nodes),
            parent=parent.id,
            depth=parent.depth + 1,
            text=candidate.text,
            branch=candidate.branch,
            rewards=rewards,
            reward=reward,
            finished=candidate.finished,
            candidate=candidate,
        )
        return self._add(node)

    def add_step(self, parent: Node, candidate: Candidate, reward: float | None, text_so_far: str, *,
                 thinking: bool, end_think: str) -> Node:
        """The child `candidate` makes of `parent`; when it ends the reply it is terminal, with its answer, and its
        branch is freed (A*, beam search and A*'s completions share this bookkeeping)."""
        child = self.add_child(parent, candidate, reward)
        if is_terminal(candidate, text_so_far, thinking=thinking, end_think=end_think):
            child.terminal = True
            child.answer = self.read_answer(text_so_far + candidate.text, end_think)
            self.release(child)
        return child

    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        self._holding.add(node.id)
        return node

    def path(self, node: Node) -> list[Node]:
        """The nodes from the root to `node`."""
        path = [node]
        while path[-1].parent is not None:
            path.append(self.nodes[path[-1].parent])
        return path[::-1]

    def steps(self, node: Node) -> list[str]:
        """The step texts on the path to `node`."""
        return [n.text for n in self.path(node)[1:]]

    def text(self, node: Node) -> str:
        """The reply so far at `node`: its steps joined as the model wrote them."""
        return "".join(self.steps(node))

    def open_leaves(self) -> list[Node]:
        """Unfinished paths still worth reporting: childless, not terminal, not dropped, not the root."""
        parents = {n.parent for n in self.nodes}
        return [
            n for n in self.nodes[1:] if n.id not in parents and not n.terminal and not n.dropped
        ]

    def release(self, node: Node) -> None:
        """Free `node`'s branch, once."""
        if node.id in self._holding:
            self._holding.discard(node.id)
            self.lm.release(node.branch)

    def release_all(self) -> None:
        for node_id in sorted(self._holding):
            self.release(self.nodes[node_id])

    def release_duplicates(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates with distinct (text, finished); the branches of repeats are released."""
        seen: set[tuple[str, bool]] = set()
        kept: list[Candidate] = []
        for candidate in candidates:
            key = (candidate.text, candidate.finished)
            if key in seen:
                self.lm.release(candidate.branch)
            else:
                seen.add(key)
                kept.append(candidate)
        return kept

    def as_dicts(self) -> list[dict[str, Any]]:
        return [
            {
                "id": n.id,
                "parent": n.parent,
                "depth": n.depth,
                "text": n.text,
                "reward": n.reward,
                "g": n.g,
                "h": n.h,
                "f": n.f,
                "terminal": n.terminal,
                "finished": n.finished,
                "expanded": n.expanded,
                "dropped": n.dropped,
                "cut": n.cut,
                "chosen": n.chosen,
                "answer": n.answer,
            }
            for n in self.nodes
        ]

    def result(
        self,
        strategy: str,
        chosen: Node,
        *,
        terminals: Sequence[Node],
        expansions: int,
        stop_reason: str,
        end_think: str,
    ) -> SearchResult:
        """The SearchResult for `chosen`; a non-terminal choice gives only an answer stated outright."""
        path = self.path(chosen)
        for node in path:
            node.chosen = True
        text = self.text(chosen)
        if chosen.terminal:
            answer = chosen.answer if chosen.answer is not None else self.read_answer(text, end_think)
        else:
            answer = find_explicit_answer(text)
        return SearchResult(
            text=text,
            final_answer=answer,
            strategy=strategy,
            expansions=expansions,
            nodes=len(self.nodes),
            terminal_answers=[n.answer for n in terminals],
            terminal_values=[round(n.g, 6) for n in terminals],
            chosen_path=[n.id for n in path],
            tree=self.as_dicts(),
            complete=chosen.terminal,
            stop_reason=stop_reason,
        )
