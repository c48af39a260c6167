"""The small LM protocol the search core runs on: the engine implements it, tests fake it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class StepStop:
    """Where a sampled step ends.

    Inside the thinking (or, for models that do not think, anywhere) a step ends at
    `delimiter` once it has at least `min_tokens` tokens, or at `max_tokens`. A step that
    reaches `end_think` ends right after it; from then on the answer is one final step that
    runs to EOS (or `max_tokens`). `delimiter=None` samples a whole reply in one step.
    """

    delimiter: str | None = "\n\n"
    min_tokens: int = 4
    max_tokens: int = 256
    end_think: str = "</think>"


@dataclass
class Candidate:
    """One sampled next step from a branch; `branch` continues after it until released.

    `text` is the step exactly as sampled, its ending delimiter (or `</think>`) included, so the
    texts of a path joined with "" give the reply as the model wrote it.
    """

    text: str
    branch: int
    n_tokens: int
    finished: bool  # the reply ended (EOS, or the token limit of the whole reply)
    logprob: float = 0.0  # sum of the step's token log-probabilities
    hidden: Any = None  # policy hidden state at the step's last token (numpy array) or None
    hidden_mean: Any = None  # the mean of the policy's hidden states over the step's tokens, or None
    hidden_mid: Any = None  # a middle layer's state at the step's last token (where the LM taps one), or None
    hidden_mid_mean: Any = None  # ... and its mean over the step's tokens
    # Per sampled token, from the model's own distribution (temperature 1), for confidence scorers:
    # the chosen token's log-prob and DeepConf's token confidence, -mean log-prob of the top-k tokens.
    token_logprobs: list[float] = field(default_factory=list)
    token_confidences: list[float] = field(default_factory=list)
    # Where the full distribution is at hand: the entropy of the renormalised top-k, and self-certainty
    # (arXiv 2502.18581: the KL divergence of uniform from the distribution, -mean log(V·p) over the vocabulary).
    token_entropies: list[float] = field(default_factory=list)
    token_certainties: list[float] = field(default_factory=list)


@dataclass
class LMStats:
    """Counters an LM keeps for reports: tokens sampled, tokens llama.cpp evaluated, KV peak."""

    generated_tokens: int = 0
    evaluated_tokens: int = 0
    peak_kv_tokens: int = 0


class StepLM(Protocol):
    """A policy that samples reasoning steps from branches of one shared prefix tree."""

    stats: LMStats

    def open(self, question: str) -> int:
        """Evaluate the prompt for `question` (chat template applied); return the root branch."""
        ...

    def sample(self, branch: int, k: int, stop: StepStop) -> list[Candidate]:
        """Sample `k` next steps from `branch` together (one batched decode per token)."""
        ...

    def release(self, branch: int) -> None:
        """Free a branch the search no longer needs (its KV cells may be reused)."""
        ...

    def yes_probability(self, prompt: str) -> float:
        """P("Yes") / (P("Yes") + P("No")) for the first token of the reply to `prompt`."""
        ...


class Interrupted(KeyboardInterrupt):
    """Ctrl-C inside a sample call, carrying what had been sampled: per request, its candidates as far as they got
    (unfinished, their branches live), so that a strategy can answer with the best so far."""

    def __init__(self, candidates: list[list[Candidate]]) -> None:
        super().__init__()
        self.candidates = candidates


def sample_many(lm: StepLM, requests: Sequence[tuple[int, int]], stop: StepStop) -> list[list[Candidate]]:
    """`k` next steps from each `(branch, k)`: in one batched decode where the LM has `sample_many` (the KV
    tree), else one `sample` call per branch."""
    many = getattr(lm, "sample_many", None)
    if many is not None:
        return many(requests, stop)
    return [lm.sample(branch, k, stop) for branch, k in requests]


class Scorer(Protocol):
    """A process reward: how likely `candidate`, after `steps`, leads to a correct answer."""

    name: str

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        """Return a value in [0, 1]."""
        ...


@dataclass
class SearchResult:
    """What any strategy returns: the chosen reply and how it was found."""

    text: str  # the whole chosen reply (thinking and answer) as the model wrote it
    final_answer: str | None
    strategy: str
    expansions: int = 0
    nodes: int = 0
    terminal_answers: list[str | None] = field(default_factory=list)
    terminal_values: list[float] = field(default_factory=list)  # g of each finished path, in the same order
    widened: int = 0  # of the finished paths, how many (the last ones) A* added from the question (--widen)
    chosen_path: list[int] = field(default_factory=list)  # node ids from root to the chosen leaf
    tree: list[dict[str, Any]] = field(default_factory=list)  # every node: id, parent, text, g, h, f, ...
    complete: bool = True  # False: no reply finished within the budget; `text` is the best partial one
    # "done", "expansions", "tokens", "time", "exhausted" (nothing left to expand) or "interrupted" (Ctrl-C)
    stop_reason: str = ""


@dataclass(frozen=True)
class SearchProgress:
    """What a search has done so far, reported after the prompt is read and after each expansion."""

    strategy: str
    expansions: int
    nodes: int
    finished: int  # paths that reached an answer
    best_f: float | None  # the best open (or finished) path's f; None before anything was scored
    generated_tokens: int
