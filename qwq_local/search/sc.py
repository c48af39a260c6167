"""Self-consistency: N whole replies, the most common final answer wins."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from qwq_local.search.answer import normalize_for_vote
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.replies import SampledReplies
from qwq_local.search.tree import Node


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common normalised answer (None answers do not vote); ties go to the first seen."""
    keys = [normalize_for_vote(a) for a in answers if a is not None]
    if not keys:
        return None
    counts = Counter(keys)
    return max(counts, key=lambda key: (counts[key], -keys.index(key)))


def vote(leaves: Sequence[Node]) -> Node | None:
    """The first reply that gives the majority answer; each reply's g and f become its answer's vote share."""
    winner = majority([leaf.answer for leaf in leaves])
    votes = Counter(normalize_for_vote(leaf.answer) for leaf in leaves if leaf.answer is not None)
    for leaf in leaves:
        share = votes[normalize_for_vote(leaf.answer)] / len(leaves) if leaf.answer is not None else 0.0
        leaf.g = leaf.f = share
    backers = [leaf for leaf in leaves if leaf.answer is not None and normalize_for_vote(leaf.answer) == winner]
    return backers[0] if backers else (leaves[0] if leaves else None)


def self_consistency(
    question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None = None
) -> SearchResult:
    """Sample `config.n_samples` replies and return the first one that gives the majority answer."""
    with SampledReplies(question, config, lm) as replies:
        return replies.result("sc", vote(replies.leaves))
