"""Thinking folding: the streaming think parser (any split parses like the whole reply) and the guard."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwq_local.dialog.guard import BUDGET_TEXT, LOOP_TEXT, Intervention, LoopRule
from qwq_local.dialog.think import (
    Segment,
    ThinkParser,
    parse_reply,
    split_thinking,
    strip_thinking,
)


def reference(text: str, starts_in_thinking: bool) -> tuple[str, str, str]:
    """Non-streaming statement of the rules: (answer before thinking, thinking, answer after)."""
    if starts_in_thinking:
        body = text.lstrip()
        lead = text[: len(text) - len(body)]
        rest = lead + body[len("<think>") :] if body.startswith("<think>") else text
        at = rest.find("</think>")
        return ("", rest, "") if at < 0 else ("", rest[:at], rest[at + len("</think>") :])
    start = text.find("<think>")
    if start < 0:
        return text, "", ""
    before, rest = text[:start], text[start + len("<think>") :]
    at = rest.find("</think>")
    return (before, rest, "") if at < 0 else (before, rest[:at], rest[at + len("</think>") :])


def expected_segments(text: str, starts_in_thinking: bool) -> list[Segment]:
    before, thinking, after = reference(text, starts_in_thinking)
    out: list[Segment] = []
    for seg in (Segment("answer", before), Segment("thinking", thinking), Segment("answer", after)):
        if seg.text and out and out[-1].kind == seg.kind:
            out[-1] = Segment(seg.kind, out[-1].text + seg.text)
        elif seg.text:
            out.append(seg)
    return out


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


# Text built from tag fragments so splits land inside tags and near-miss tags are common.
ATOMS = ["<think>", "</think>", "<", "</", "think", ">", "<thin", "</thi", "\n", " ", "a", "ok", "é", "思"]
replies = st.lists(st.sampled_from(ATOMS), max_size=30).map("".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=400), max_size=20)


@settings(max_examples=400)
@given(text=replies, cuts=cut_lists, starts=st.booleans())
def test_any_split_parses_like_the_whole_reply(text: str, cuts: list[int], starts: bool) -> None:
    whole = parse_reply([text], starts_in_thinking=starts)
    split = parse_reply(pieces_of(text, cuts), starts_in_thinking=starts)
    assert split == whole


@settings(max_examples=400)
@given(text=replies, cuts=cut_lists, starts=st.booleans())
def test_segments_follow_the_documented_rules(text: str, cuts: list[int], starts: bool) -> None:
    assert parse_reply(pieces_of(text, cuts), starts_in_thinking=starts) == expected_segments(text, starts)


plain = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=40)


@given(thinking=plain, answer=plain, cuts=cut_lists)
def test_thinking_and_answer_reconstruct_the_reply_minus_tags(thinking: str, answer: str, cuts: list[int]) -> None:
    text = f"<think>{thinking}</think>{answer}"
    for starts in (False, True):
        segments = parse_reply(pieces_of(text, cuts), starts_in_thinking=starts)
        assert "".join(s.text for s in segments) == thinking + answer
        assert split_thinking(text, starts_in_thinking=starts) == (thinking, answer)


@given(thinking=plain, answer=plain, cuts=cut_lists)
def test_qwq_reply_without_opening_tag(thinking: str, answer: str, cuts: list[int]) -> None:
    text = f"{thinking}</think>{answer}"
    segments = parse_reply(pieces_of(text, cuts), starts_in_thinking=True)
    assert "".join(s.text for s in segments if s.kind == "thinking") == thinking
    assert "".join(s.text for s in segments if s.kind == "answer") == answer


def test_tag_split_across_pieces_is_held_back() -> None:
    parser = ThinkParser()
    assert parser.feed("<th") == []
    assert parser.feed("ink>\nhmm </") == [Segment("thinking", "\nhmm ")]
    assert parser.in_thinking
    assert parser.feed("think") == []
    assert parser.feed(">\n\n42") == [Segment("answer", "\n\n42")]
    assert parser.thinking_closed and not parser.in_thinking
    assert parser.close() == []


def test_near_miss_tag_is_released_as_text() -> None:
    parser = ThinkParser(starts_in_thinking=True)
    assert parser.feed("a </thin") == [Segment("thinking", "a ")]
    assert parser.feed("g>") == [Segment("thinking", "</thing>")]


def test_unfinished_thinking_is_flushed_on_close() -> None:
    parser = ThinkParser()
    parser.feed("<think>\nstill going </thi")
    assert parser.close() == [Segment("thinking", "</thi")]


def test_stray_closing_tag_in_answer_is_kept_as_text() -> None:
    assert split_thinking("<think>t</think>a</think>b") == ("t", "a</think>b")


def test_reply_without_thinking_is_all_answer() -> None:
    assert parse_reply(["Hello", " there"]) == [Segment("answer", "Hello there")]
    assert not ThinkParser().saw_thinking


def test_text_before_opening_tag_is_answer() -> None:
    assert parse_reply(["Sure. <think>x</think>y"]) == [
        Segment("answer", "Sure. "),
        Segment("thinking", "x"),
        Segment("answer", "y"),
    ]


def test_engine_repeating_the_opening_tag_of_a_thinking_model() -> None:
    assert split_thinking("<think>\nhm</think>\n\nA", starts_in_thinking=True) == ("\nhm", "\n\nA")
    assert split_thinking("hm</think>A", starts_in_thinking=True) == ("hm", "A")


def test_strip_thinking_keeps_only_the_final_answer() -> None:
    assert strip_thinking("<think>\nlong reasoning\n</think>\n\nThe answer is 4.") == "The answer is 4."
    assert strip_thinking("<think>\ninterrupted before the end") == ""
    assert strip_thinking("no thinking at all ") == "no thinking at all"


# --- The thinking budget and loop guard (render/guard.py) -------------------------------------


def drive(guard: Intervention, words: list[str]) -> tuple[str | None, int]:
    """Feed words one token at a time, as the engine would; return (forced text, tokens at it)."""
    text = ""
    for n, word in enumerate(words, start=1):
        text += word
        forced = guard(text, n)
        if forced is not None:
            return forced, n
    return None, len(words)


def varied_words(n: int) -> list[str]:
    return [f"w{i * 7919 % 10007} " for i in range(n)]


def test_budget_closes_thinking_at_the_budget() -> None:
    guard = Intervention(budget=50)
    forced, at = drive(guard, varied_words(200))
    assert forced == BUDGET_TEXT and at == 50
    assert forced.rstrip().endswith("</think>") and forced.endswith("</think>\n\n")
    assert guard.reason == "budget" and guard.at_tokens == 50
    assert "50" in (guard.note() or "")


def test_guard_fires_once() -> None:
    guard = Intervention(budget=3)
    assert guard("a b c", 3) == BUDGET_TEXT
    assert guard("a b c d", 4) is None


def test_no_budget_and_varied_thinking_never_intervenes() -> None:
    guard = Intervention()
    assert drive(guard, varied_words(3000)) == (None, 3000)
    assert guard.reason is None and guard.note() is None


def test_repeated_phrase_is_a_loop() -> None:
    guard = Intervention()
    loop = ["so", "the", "answer", "is", "seven", "because", "three", "plus", "four", "is", "seven", "and"]
    words = varied_words(100) + [w + " " for w in loop] * 20
    forced, at = drive(guard, words)
    assert forced == LOOP_TEXT
    assert guard.reason == "loop" and "repeated" in guard.detail
    assert at < len(words)


def test_repeated_paragraph_is_a_loop() -> None:
    guard = Intervention(loops=LoopRule(ngram_repeats=10_000))  # paragraphs only
    para = "Let me check the second case again, maybe I made an arithmetic slip.\n\n"
    text, fired = "", None
    for i in range(5):
        text += f"Other thought number {i} about the geometry of it.\n\n" + para
        fired = fired or guard(text, i + 1)
    assert fired == LOOP_TEXT
    assert guard.detail == "a paragraph repeated 3 times"


def test_short_interjections_may_repeat() -> None:
    guard = Intervention()
    text = ""
    for i in range(30):
        text += f"Wait.\n\nCase {i * 31 % 97} gives {i * i} which differs from before.\n\n"
        assert guard(text, i + 1) is None


def test_degenerate_single_word_repetition_is_a_loop() -> None:
    guard = Intervention()
    forced, _ = drive(guard, ["the "] * 200)
    assert forced == LOOP_TEXT


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Intervention(budget=0)


def test_the_tally_counts_thinking_until_it_closes_and_forced_words_as_thinking() -> None:
    from qwq_local.dialog.think import ThinkTally

    tally = ThinkTally(True, started=0.0)
    for piece in ["Let", " me", "</", "think>", "\n\n", "42"]:
        tally.token(piece)
    assert (tally.n_think, tally.n_answer, tally.in_think) == (4, 2, False)
    assert tally.thinking == "Let me</think>" and tally.think_end is not None
    forced = ThinkTally(True, started=0.0)
    forced.token("hmm")
    forced.forced("\n</think>\n\n", 3)
    assert (forced.n_think, forced.in_think) == (4, False)
    assert ThinkTally(False, started=0.0).thinking_seconds(5.0, thinks=False) == 0.0
    assert ThinkTally(True, started=1.0).thinking_seconds(5.0, thinks=True) == 4.0  # still thinking: up to now
