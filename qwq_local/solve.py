"""`qwq solve`: read a markdown problem, answer it by plain generation or by search, report."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from qwq_local.config import Sampling
from qwq_local.errors import ExitCode, InputFileError
from qwq_local.prompts import build_question, detect_format
from qwq_local.search.answer import END_THINK, extract_final_answer, split_thinking


def read_problem(source: str, stdin: TextIO = sys.stdin) -> str:
    """The problem text from a file or `-` (stdin); missing, directory and empty are user errors."""
    if source == "-":
        text = stdin.read()
        where = "standard input"
    else:
        path = Path(source)
        if path.is_dir():
            raise InputFileError(f"{source} is a directory, not a problem file", ExitCode.IS_A_DIRECTORY)
        if not path.exists():
            raise InputFileError(f"no such file: {source}", ExitCode.FILE_NOT_FOUND)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputFileError(f"{source} is not UTF-8 text", ExitCode.EMPTY_INPUT) from None
        where = source
    if not text.strip():
        raise InputFileError(f"{where} is empty: write the problem in it", ExitCode.EMPTY_INPUT)
    return text


@dataclass
class SolveResult:
    """What `qwq solve --json` prints."""

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
    search: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        generated = self.search.get("generated_tokens", self.thinking_tokens + self.answer_tokens)
        out: dict[str, Any] = {
            "model": self.model,
            "strategy": self.strategy,
            "format": self.format,
            "answer": self.answer,
            "final_answer": self.final_answer,
            "thinking": self.thinking,
            "tokens": {"prompt": self.prompt_tokens, "thinking": self.thinking_tokens,
                       "answer": self.answer_tokens},
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(generated / self.decode_seconds, 2) if self.decode_seconds > 0 else 0.0,
        }
        out.update(self.search)
        return out


def solve_direct(chat: Any, problem: str, fmt: str, sampling: Sampling,
                 on_piece: Callable[[str], None] | None = None) -> SolveResult:
    """Plain generation through the chat engine (the reply streams through `on_piece`)."""
    from qwq_local.engine.chat import Message

    fmt = detect_format(problem) if fmt == "auto" else fmt
    question = build_question(problem, fmt)
    pieces = []
    for piece in chat.stream([Message("user", question)], sampling):
        pieces.append(piece)
        if on_piece:
            on_piece(piece)
    text = "".join(pieces)
    stats = chat.last_stats
    thinking, answer = split_thinking(text)
    return SolveResult(
        model=chat.name, strategy="direct", format=fmt, answer=answer.strip(),
        final_answer=extract_final_answer(text), thinking=thinking.strip(),
        prompt_tokens=stats.prompt_tokens, thinking_tokens=stats.thinking_tokens,
        answer_tokens=stats.answer_tokens, seconds=stats.seconds,
        decode_seconds=stats.seconds - stats.prefill_seconds,
    )


def solve_search(model: Any, problem: str, fmt: str, sampling: Sampling, strategy: str,
                 config: Any, scorer_names: list[str], *, thinks: bool, head: Any = None,
                 kv_budget: int | None = None, n_ctx: int = 8192, history: list | None = None) -> SolveResult:
    """Search over reasoning steps on the KV tree engine (A*, beam, best-of-N, self-consistency)."""
    from qwq_local.search.strategies import run

    def search(question: str, policy: Any, scorer: Any, mark: Mark) -> list[Marked]:
        return [mark(run(strategy, question, config, policy, scorer))]

    result = _on_tree(model, problem, fmt, sampling, config, scorer_names, search, thinks=thinks, head=head,
                      kv_budget=kv_budget, n_ctx=n_ctx, history=history)[0]
    assert isinstance(result, SolveResult)
    return result


def solve_sc_and_bon(model: Any, problem: str, fmt: str, sampling: Sampling, config: Any,
                     scorer_names: list[str], *, thinks: bool, head: Any = None, kv_budget: int | None = None,
                     n_ctx: int = 8192) -> tuple[SolveResult, SolveResult | Exception]:
    """Self-consistency and best-of-N from one sampling of `config.n_samples` replies (for benchmarks).

    The vote's seconds and tokens end where it chose; a scorer's failure is returned in place of best-of-N's result,
    so that the vote stands without it.
    """
    from qwq_local.search.bon import rank
    from qwq_local.search.replies import SampledReplies
    from qwq_local.search.sc import vote

    def search(question: str, policy: Any, scorer: Any, mark: Mark) -> list[Marked]:
        with SampledReplies(question, config, policy) as replies:
            by_vote = mark(replies.result("sc", vote(replies.leaves)))
            try:
                return [by_vote, mark(replies.result("bon", rank(question, replies.leaves, replies.tree, scorer)))]
            except Exception as exc:
                return [by_vote, (exc, 0.0, None)]

    by_vote, by_score = _on_tree(model, problem, fmt, sampling, config, scorer_names, search, thinks=thinks,
                                 head=head, kv_budget=kv_budget, n_ctx=n_ctx)
    assert isinstance(by_vote, SolveResult)
    by_vote.search["scorer"] = ""
    return by_vote, by_score


Marked = tuple[Any, float, Any]  # a SearchResult (or the error in its place), when it was ready, the LM's stats then
Mark = Callable[[Any], Marked]


def _on_tree(model: Any, problem: str, fmt: str, sampling: Sampling, config: Any, scorer_names: list[str],
             search: Callable[[str, Any, Any, Mark], list[Marked]], *, thinks: bool, head: Any,
             kv_budget: int | None, n_ctx: int, history: list | None = None) -> list[SolveResult | Exception]:
    """Run `search(question, policy, scorer, mark)` on a fresh KV tree; a SolveResult for each result it marked."""
    from qwq_local.engine.kvtree import KVTree
    from qwq_local.engine.policy import TreePolicy
    from qwq_local.value.combine import build_scorer

    fmt = detect_format(problem) if fmt == "auto" else fmt
    question = build_question(problem, fmt)
    start = time.perf_counter()
    n_seq = max(config.beam, 1) + max(config.candidates, config.n_samples, 1) * 2 + 4
    with KVTree(model, n_ctx=n_ctx, n_seq_max=min(n_seq, 256), kv_budget=kv_budget,
                hidden=head is not None) as tree:
        policy = TreePolicy(model, tree, sampling, thinks=thinks, history=history)
        scorer = build_scorer(scorer_names, policy, qhead=head) if scorer_names else None
        marked = search(question, policy, scorer, lambda result: (result, time.perf_counter(), policy.stats))
        policy.close()
        prompt_tokens = len(policy.prompt_tokens(question))
    return [result if isinstance(result, Exception) else
            _search_result(model, fmt, result, stats, prompt_tokens, at - start, scorer_names, thinks)
            for result, at, stats in marked]


def _search_result(model: Any, fmt: str, result: Any, stats: Any, prompt_tokens: int, seconds: float,
                   scorer_names: list[str], thinks: bool) -> SolveResult:
    thinking, answer = split_thinking(result.text)
    if thinks and END_THINK not in result.text:  # stopped by a budget inside the thinking: no answer yet
        thinking, answer = result.text, ""
    n_think = len(model.tokenize(thinking, bos=False)) if thinking else 0
    return SolveResult(
        model=model.name, strategy=result.strategy, format=fmt, answer=answer.strip(),
        final_answer=result.final_answer, thinking=thinking.strip(),
        prompt_tokens=prompt_tokens, thinking_tokens=n_think,
        answer_tokens=len(model.tokenize(answer, bos=False)) if answer else 0,
        seconds=seconds, decode_seconds=seconds,
        search={
            "expansions": result.expansions, "nodes": result.nodes,
            "generated_tokens": stats.generated_tokens, "evaluated_tokens": stats.evaluated_tokens,
            "peak_kv_tokens": stats.peak_kv_tokens, "terminal_answers": result.terminal_answers,
            "chosen_path": result.chosen_path, "scorer": "+".join(scorer_names),
            "complete": result.complete, "stop_reason": result.stop_reason,
            "_tree": result.tree,
        },
    )
