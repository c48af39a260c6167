"""The search bank: a tree of replies per problem, sampled once, with every step's log-prob statistics.

Early steps branch (shape 2,2,2: two first steps, two second steps under each, two completions under each of
those), so early states get several continuations that share their prefix on the KV tree, and every state has
Monte-Carlo labels: the outcomes of the leaves below it. Choosers and value signals are then compared on the same
samples in seconds (`qwq_local.bench.choose`). Pure Python over the StepLM protocol; `bank_run` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from qwq_local.search.protocol import Candidate, StepLM, StepStop, sample_many
from qwq_local.value.confidence import lowest_window

WINDOW = 32  # tokens: DeepConf's lowest-group and tail windows, scaled to replies of a few hundred tokens
TOKEN_COLUMNS = ("logprob", "confidence", "entropy", "certainty")


@dataclass
class BankNode:
    """One sampled step (a tree step, or a leaf's whole completion) and its per-token statistics."""

    id: int
    parent: int | None  # None: a child of the prompt
    depth: int
    text: str
    n_tokens: int
    finished: bool
    tokens: np.ndarray  # (n_tokens, 4) float32: TOKEN_COLUMNS per sampled token
    hidden: Any = None  # the policy's hidden state at the step's end, or None
    hidden_mean: Any = None  # the mean of its hidden states over the step's tokens, or None
    hidden_mid: Any = None  # a middle layer's state at the step's end (where the LM taps one), or None
    hidden_mid_mean: Any = None  # ... and its mean over the step's tokens
    children: list[int] = field(default_factory=list)


def parse_shape(text: str) -> tuple[int, ...]:
    """`2,2,2` -> (2, 2, 2): children per state at each depth; the last level completes the replies."""
    try:
        shape = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"shape {text!r}: give children per level, such as 2,2,2") from None
    if not shape or any(not 1 <= k <= 16 for k in shape) or len(shape) > 6:
        raise ValueError(f"shape {text!r}: 1 to 6 levels of 1 to 16 children each")
    return shape


def leaf_count(shape: Sequence[int]) -> int:
    count = 1
    for k in shape:
        count *= k
    return count


def sample_tree(question: str, lm: StepLM, shape: Sequence[int], stop: StepStop,
                reply_stop: StepStop) -> list[BankNode]:
    """Sample the bank tree of `question`: `shape[d]` children per state at depth d, the last level to the end.

    Every level is one batched call when the LM has `sample_many` (all states' children decode together).
    """
    nodes: list[BankNode] = []
    frontier: list[tuple[int, int | None]] = [(lm.open(question), None)]  # (branch, node id)
    for depth, k in enumerate(shape):
        last = depth == len(shape) - 1
        level = sample_many(lm, [(branch, k) for branch, _ in frontier], reply_stop if last else stop)
        following: list[tuple[int, int | None]] = []
        for (branch, parent), candidates in zip(frontier, level):
            lm.release(branch)
            for cand in candidates:
                node = _node(len(nodes), parent, depth, cand)
                nodes.append(node)
                if parent is not None:
                    nodes[parent].children.append(node.id)
                if last or cand.finished:
                    lm.release(cand.branch)
                else:
                    following.append((cand.branch, node.id))
        frontier = following
    return nodes


def replay_tree(question: str, lm: Any, record: dict[str, Any]) -> list[BankNode]:
    """The nodes of a recorded bank tree with their hidden states again, each step's text decoded after its
    parent's (`lm.replay`, no sampling): the arrays of a bank whose user cache is gone, rebuilt in seconds.

    A reply that ended before the token limit ended at its end token, which sampling decodes too. The per-token
    statistics are not rebuilt (NaN); the record keeps their summaries.
    """
    limit = int(record.get("setup", {}).get("max_tokens") or 0)
    records = sorted(record["nodes"], key=lambda n: n["id"])
    has_children = {n["parent"] for n in records}
    handles: dict[int | None, int] = {None: lm.open(question)}
    reply_tokens: dict[int | None, int] = {None: 0}
    nodes = []
    for n in records:
        tokens = reply_tokens[n["parent"]] + int(n["n_tokens"])
        cand = lm.replay(handles[n["parent"]], n["text"], end=bool(n["finished"]) and not (limit and tokens >= limit))
        nodes.append(BankNode(n["id"], n["parent"], n["depth"], n["text"], int(n["n_tokens"]), bool(n["finished"]),
                              np.full((int(n["n_tokens"]), len(TOKEN_COLUMNS)), np.nan, dtype=np.float32),
                              cand.hidden, cand.hidden_mean, cand.hidden_mid, cand.hidden_mid_mean))
        if n["id"] in has_children:
            handles[n["id"]], reply_tokens[n["id"]] = cand.branch, tokens
        else:
            lm.release(cand.branch)
    for n in records:  # every state is released once its children are replayed
        if n["id"] in handles:
            lm.release(handles.pop(n["id"]))
    lm.release(handles.pop(None))
    for node in nodes:
        if node.parent is not None:
            nodes[node.parent].children.append(node.id)
    return nodes


def _node(node_id: int, parent: int | None, depth: int, cand: Candidate) -> BankNode:
    columns = (cand.token_logprobs, cand.token_confidences, cand.token_entropies, cand.token_certainties)
    n = cand.n_tokens
    table = np.full((n, len(TOKEN_COLUMNS)), np.nan, dtype=np.float32)
    for j, column in enumerate(columns):
        if len(column) == n:
            table[:, j] = column
    return BankNode(node_id, parent, depth, cand.text, n, cand.finished, table, cand.hidden, cand.hidden_mean,
                    cand.hidden_mid, cand.hidden_mid_mean)


def leaves(nodes: Sequence[BankNode]) -> list[BankNode]:
    """The nodes that end a reply, in sampling order."""
    return [node for node in nodes if not node.children]


def path(nodes: Sequence[BankNode], node: BankNode) -> list[BankNode]:
    """Root-to-`node` steps."""
    out = [node]
    while out[-1].parent is not None:
        out.append(nodes[out[-1].parent])
    return out[::-1]


def token_table(steps: Sequence[BankNode]) -> np.ndarray:
    """The per-token statistics of consecutive steps, joined."""
    tables = [step.tokens for step in steps if len(step.tokens)]
    return np.concatenate(tables) if tables else np.zeros((0, len(TOKEN_COLUMNS)), dtype=np.float32)


def summarize(table: np.ndarray, window: int = WINDOW) -> dict[str, float | None]:
    """Log-prob statistics of a run of tokens (higher is more confident for every one):

    mean_logprob, mean/lowest-window/tail DeepConf confidence, -mean top-k entropy, mean self-certainty.
    """
    if len(table) == 0:
        return {"mean_logprob": None, "mean_conf": None, "low_conf": None, "tail_conf": None,
                "neg_entropy": None, "certainty": None}
    logprob, conf, entropy, certainty = (table[:, j] for j in range(len(TOKEN_COLUMNS)))
    return {
        "mean_logprob": _mean(logprob),
        "mean_conf": _mean(conf),
        "low_conf": lowest_window(conf, window),
        "tail_conf": _mean(conf[-window:]),
        "neg_entropy": None if (m := _mean(entropy)) is None else -m,
        "certainty": _mean(certainty),
    }


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None
