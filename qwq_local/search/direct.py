"""The baseline without search: one whole reply, sampled once."""

from __future__ import annotations

from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.replies import SampledReplies


def direct(question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None = None) -> SearchResult:
    """Sample one whole reply (StepStop with no delimiter); `scorer` is unused."""
    with SampledReplies(question, config, lm, n=1) as replies:
        return replies.result("direct", replies.leaves[0] if replies.leaves else None)
