"""Solve one problem: plain generation on the chat engine, or a search on a KV tree -> SolveResult."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol, Sequence, TextIO

from qwq_local.app import runtime
from qwq_local.app.search import SearchSetup
from qwq_local.config import Sampling, Settings
from qwq_local.errors import ExitCode, InputFileError, read_regular_file
from qwq_local.problems.prompts import build_question, detect_format
from qwq_local.dialog.guard import Intervention
from qwq_local.dialog.think import CLOSE, OPEN, split_at_close
from qwq_local.search.answer import extract_final_answer
from qwq_local.search.protocol import LMStats, SearchProgress, SearchResult, StepLM


def read_problem(source: str, stdin: TextIO | None = None) -> str:
    """The problem text from a file or `-` (stdin); missing, unreadable, not a file, not UTF-8 or empty: user errors."""
    if source == "-":
        stdin = stdin or sys.stdin
        binary = getattr(stdin, "buffer", None)
        data: bytes | str = binary.read() if binary is not None else stdin.read()
        where = "standard input"
    else:
        data = read_regular_file(Path(source), "problem file")
        where = source
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        text.encode("utf-8")  # a text stream decoded with surrogateescape holds bad bytes as surrogates
    except UnicodeError:
        raise InputFileError(f"{where} is not UTF-8 text", ExitCode.EMPTY_INPUT) from None
    if not text.strip():
        raise InputFileError(f"{where} is empty: write the problem in it", ExitCode.EMPTY_INPUT)
    return text


@dataclass(frozen=True)
class SearchStats:
    """How a search found its reply: work done, KV held, answers met, why it stopped."""

    expansions: int
    nodes: int
    generated_tokens: int
    evaluated_tokens: int
    peak_kv_tokens: int
    terminal_answers: list[str | None]
    terminal_values: list[float]
    chosen_path: list[int]
    scorer: str
    complete: bool
    stop_reason: str
    widened: int = 0  # the last `widened` finished paths are A*'s replies from the question (--widen)


@dataclass
class SolveResult:
    """One problem answered: the reply split into thinking and answer, its costs, and the search's stats and tree."""

    model: str
    strategy: str
    format: str
    answer: str
    final_answer: str | None
    thinking: str
    prompt_tokens: int
    thinking_tokens: int
    answer_tokens: int
    seconds: float
    decode_seconds: float
    search: SearchStats | None = None
    tree: list[dict[str, Any]] = field(default_factory=list)  # every explored node (SearchTree.as_dicts())
    # direct: "stop" (the reply ended), "length" (--max-tokens or the context) or "interrupted" (Ctrl-C); a search
    # says why it stopped (SearchResult.stop_reason)
    stop_reason: str = "stop"
    thinking_cut: str | None = None  # "budget" or "loop": the thinking was closed early (--think-budget, loop guard)

    @property
    def generated_tokens(self) -> int:
        return self.search.generated_tokens if self.search else self.thinking_tokens + self.answer_tokens

    @property
    def complete(self) -> bool:
        return self.search.complete if self.search else True

    def to_json(self) -> dict[str, Any]:
        """What `qwq solve --json` prints (the tree goes to --trace, not here)."""
        out: dict[str, Any] = {
            "model": self.model,
            "strategy": self.strategy,
            "format": self.format,
            "answer": self.answer,
            "final_answer": self.final_answer,
            "thinking": self.thinking,
            "tokens": {"prompt": self.prompt_tokens, "thinking": self.thinking_tokens,
                       "answer": self.answer_tokens},
            "stop_reason": self.stop_reason,
            "thinking_cut": self.thinking_cut,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": (round(self.generated_tokens / self.decode_seconds, 2)
                                  if self.decode_seconds > 0 else 0.0),
        }
        if self.search is not None:
            out.update(asdict(self.search))
        return out


class SearchPolicy(StepLM, Protocol):
    """A StepLM a solve runs on: it also says how long a prompt and a text are in tokens."""

    def prompt_tokens(self, question: str) -> list[int]: ...

    def count_tokens(self, text: str) -> int: ...


class SearchWatch(Protocol):
    """What a front end hears while a search runs (the live progress line)."""

    def policy_ready(self, generated_tokens: Callable[[], int]) -> None:
        """The policy is made; `generated_tokens()` reads its running count at any time."""
        ...

    def search(self, progress: SearchProgress) -> None:
        """The prompt was read, or one more expansion is done."""
        ...


PolicyFactory = Callable[[SearchSetup, Sampling, Sequence[Any]], ContextManager[SearchPolicy]]
"""policies(setup, sampling, earlier messages) -> a context holding a fresh policy for one search."""


class TreePolicies:
    """The PolicyFactory on a loaded model: each search gets a fresh KV tree sized for it."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @contextlib.contextmanager
    def __call__(self, setup: SearchSetup, sampling: Sampling, history: Sequence[Any] = ()) -> Iterator[Any]:
        from qwq_local.engine.kvtree import KVTree
        from qwq_local.engine.policy import TreePolicy

        config = setup.config
        n_seq = max(config.beam, 1) + max(config.candidates, config.n_samples, 1) * 2 + 4
        with KVTree(self.model, n_ctx=setup.plan.n_ctx, n_seq_max=min(n_seq, 256), kv_budget=setup.kv_budget,
                    hidden=setup.head is not None) as tree:
            policy = TreePolicy(self.model, tree, sampling, thinks=setup.plan.thinks, history=list(history),
                                think_budget=setup.think_budget)
            try:
                yield policy
            finally:
                policy.close()


@contextlib.contextmanager
def loaded_policies(plan: runtime.ModelPlan, settings: Settings) -> Iterator[PolicyFactory]:
    """Load the planned model for search only (a small chat context beside the tree) and free it after."""
    model = runtime.load(plan, settings, chat_ctx=runtime.SEARCH_ONLY_CTX)
    try:
        yield TreePolicies(model)
    finally:
        model.close()


# What the chat engine's stop reason is called in a solve's JSON (OpenAI's finish_reason words).
DIRECT_STOP = {"eos": "stop", "length": "length", "context": "length", "interrupted": "interrupted"}


def solve_direct(chat: Any, problem: str, fmt: str, sampling: Sampling,
                 on_piece: Callable[[str], None] | None = None, system: str | None = None,
                 guard: Intervention | None = None) -> SolveResult:
    """Plain generation through the chat engine (the reply streams through `on_piece`), after `system` if given.

    `guard` (a thinking budget and the loop guard) closes the thinking when it must; a budget opens the thinking
    even on a model that does not think on its own. Ctrl-C ends the reply where it is: the result says "interrupted".
    """
    from qwq_local.dialog.messages import Message

    fmt = detect_format(problem) if fmt == "auto" else fmt
    question = build_question(problem, fmt)
    pieces = []
    messages = [Message("system", system)] if system else []
    stream = chat.stream([*messages, Message("user", question)], sampling, intervene=guard,
                         think=True if guard is not None and guard.budget else None)
    interrupted = False
    try:
        for piece in stream:
            pieces.append(piece)
            if on_piece:
                on_piece(piece)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            stream.close()
        except KeyboardInterrupt:  # a second Ctrl-C while the engine stops
            interrupted = True
    text = "".join(pieces)
    stats = chat.last_stats
    thinking, answer = split_at_close(text)
    if CLOSE not in text and text.lstrip().startswith(OPEN):  # stopped inside the thinking: no answer yet
        thinking, answer = text.lstrip()[len(OPEN):], ""
    return SolveResult(
        model=chat.name, strategy="direct", format=fmt, answer=answer.strip(),
        final_answer=answer_reader(fmt)(text, CLOSE), thinking=thinking.strip(),
        prompt_tokens=stats.prompt_tokens, thinking_tokens=stats.thinking_tokens,
        answer_tokens=stats.answer_tokens, seconds=stats.seconds,
        decode_seconds=stats.seconds - stats.prefill_seconds,
        stop_reason="interrupted" if interrupted else DIRECT_STOP.get(stats.stop_reason, stats.stop_reason),
        thinking_cut=guard.reason if guard is not None else None,
    )


def solve_search(setup: SearchSetup, problem: str, fmt: str, sampling: Sampling, policies: PolicyFactory, *,
                 history: Sequence[Any] = (), watch: SearchWatch | None = None) -> SolveResult:
    """Search over reasoning steps (A*, beam, best-of-N, self-consistency) on a policy from `policies`.

    `watch` hears the search's progress and may read the policy's running token count; Ctrl-C ends the search
    with the best path found so far (stop_reason "interrupted").
    """
    from qwq_local.search.strategies import run

    setup = _reading(setup, fmt)

    def search(question: str, policy: SearchPolicy, scorer: Any, mark: Mark) -> list[Marked]:
        config = setup.config
        if watch is not None:
            watch.policy_ready(lambda: policy.stats.generated_tokens)
            config = replace(config, progress=watch.search)
        return [mark(run(setup.strategy, question, config, policy, scorer))]

    result = _on_tree(setup, problem, fmt, sampling, policies, search, history)[0]
    assert isinstance(result, SolveResult)
    return result


def solve_sc_and_bon(setup: SearchSetup, problem: str, fmt: str, sampling: Sampling, policies: PolicyFactory
                     ) -> tuple[SolveResult, SolveResult | Exception]:
    """Self-consistency and best-of-N (scored as `setup` says) from one sampling of `config.n_samples` replies.

    The vote's seconds and tokens end where it chose; a scorer's failure is returned in place of best-of-N's result,
    so that the vote stands without it.
    """
    from qwq_local.search.bon import rank
    from qwq_local.search.replies import SampledReplies
    from qwq_local.search.sc import vote

    setup = _reading(setup, fmt)

    def search(question: str, policy: SearchPolicy, scorer: Any, mark: Mark) -> list[Marked]:
        with SampledReplies(question, setup.config, policy) as replies:
            by_vote = mark(replies.result("sc", vote(replies.leaves)), "")
            try:
                return [by_vote, mark(replies.result("bon", rank(question, replies.leaves, replies.tree, scorer)))]
            except Exception as exc:
                return [by_vote, (exc, 0.0, LMStats(), "")]

    by_vote, by_score = _on_tree(setup, problem, fmt, sampling, policies, search, ())
    assert isinstance(by_vote, SolveResult)
    return by_vote, by_score


def answer_reader(fmt: str) -> Callable[[str, str], str | None]:
    """How a finished reply of format `fmt` gives its final answer: the program format's is what its program prints
    in the sandbox; every other format's is what the reply states (extract_final_answer)."""
    if fmt == "program":
        from qwq_local.problems.programs import program_answer

        return program_answer
    return extract_final_answer


def why_no_answer(result: SolveResult) -> str | None:
    """For a program-format reply without a final answer, why (its program run once more in the sandbox: the error
    it ends with, a timeout, no output); None otherwise."""
    if result.format != "program" or result.final_answer is not None or not result.answer.strip():
        return None
    from qwq_local.problems.programs import run_reply_program

    return run_reply_program(result.answer).error


def _reading(setup: SearchSetup, fmt: str) -> SearchSetup:
    """`setup` whose search reads its replies' answers as format `fmt` wants (see answer_reader)."""
    reader = answer_reader(fmt)
    return setup if reader is setup.config.read_answer else replace(setup, config=replace(setup.config,
                                                                                          read_answer=reader))


Marked = tuple[Any, float, LMStats, str]  # a SearchResult (or the error in its place), when, the LM's stats, scorer
Mark = Callable[..., Marked]


def _on_tree(setup: SearchSetup, problem: str, fmt: str, sampling: Sampling, policies: PolicyFactory,
             search: Callable[[str, SearchPolicy, Any, Mark], list[Marked]],
             history: Sequence[Any]) -> list[SolveResult | Exception]:
    """Run `search(question, policy, scorer, mark)` on a fresh policy; a SolveResult for each result it marked."""
    from qwq_local.value.combine import scorer_of

    fmt = detect_format(problem) if fmt == "auto" else fmt
    question = build_question(problem, fmt)
    start = time.perf_counter()
    results: list[SolveResult | Exception] | None = None
    try:
        with policies(setup, sampling, history) as policy:
            scorer = scorer_of(setup.scorers, policy, qhead=setup.head) if setup.scorers else None

            def mark(result: SearchResult, scorer_label: str = setup.scorer_label) -> Marked:
                return result, time.perf_counter(), policy.stats, scorer_label

            marked = search(question, policy, scorer, mark)
            prompt_tokens = len(policy.prompt_tokens(question))
            results = [result if isinstance(result, Exception) else
                       _search_result(policy, setup.plan.resolved.path.name, fmt, result, stats, prompt_tokens,
                                      at - start, label, setup.plan.thinks)
                       for result, at, stats, label in marked]
    except KeyboardInterrupt:
        if results is None:
            raise
        # Ctrl-C while the tree was freed: the search had already chosen, its results stand
    return results


def _search_result(policy: SearchPolicy, model_name: str, fmt: str, result: SearchResult, stats: LMStats,
                   prompt_tokens: int, seconds: float, scorer_label: str, thinks: bool) -> SolveResult:
    thinking, answer = split_at_close(result.text)
    if thinks and CLOSE not in result.text:  # stopped by a budget inside the thinking: no answer yet
        thinking, answer = result.text, ""
    return SolveResult(
        model=model_name, strategy=result.strategy, format=fmt, answer=answer.strip(),
        final_answer=result.final_answer, thinking=thinking.strip(),
        prompt_tokens=prompt_tokens, thinking_tokens=policy.count_tokens(thinking) if thinking else 0,
        answer_tokens=policy.count_tokens(answer) if answer else 0,
        seconds=seconds, decode_seconds=seconds,
        search=SearchStats(
            expansions=result.expansions, nodes=result.nodes, generated_tokens=stats.generated_tokens,
            evaluated_tokens=stats.evaluated_tokens, peak_kv_tokens=stats.peak_kv_tokens,
            terminal_answers=result.terminal_answers,
            terminal_values=result.terminal_values, chosen_path=result.chosen_path, scorer=scorer_label,
            complete=result.complete, stop_reason=result.stop_reason, widened=result.widened,
        ),
        tree=result.tree,
        stop_reason=result.stop_reason,
    )


@dataclass(frozen=True)
class Backend:
    """Where front ends get policies for a planned model: the loaded GGUF, or in tests a scripted LM."""

    policies: Callable[[runtime.ModelPlan, Settings], ContextManager[PolicyFactory]] = loaded_policies


def backend_for(settings: Settings) -> Backend:
    """The loaded GGUF here, or the remote engine `settings.engine` names."""
    if settings.engine is None:
        return Backend()
    from qwq_local.app.remote import remote_policies

    return Backend(remote_policies)
