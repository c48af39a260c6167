"""Final-answer extraction and the normal form answers vote with."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from qwq_local.search.answer import (
    boxed_answers,
    extract_final_answer,
    find_explicit_answer,
    normalize_for_vote,
    split_thinking,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{3} then \\boxed{4}", "4"),
        ("\\boxed{\\left(\\frac{a}{b}\\right)^{2}}.", "\\left(\\frac{a}{b}\\right)^{2}"),
        ("\\fbox{7}", "7"),
        ("answer: \\boxed 5.", "5"),
        ("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),
        ("She has 72 clips.\n#### 72", "72"),
        ("#### 1,000\nmore text 5", "1,000"),
        ("So the answer is 42.", "42"),
        ("The final answer is: $\\frac{3}{4}$", "\\frac{3}{4}"),
        ('{"answer": "C"}', "C"),
        ("There are 3 cats and 5 dogs, 8 animals", "8"),
        ("It costs $1,250.50 in total.", "1,250.50"),
        ("negative: -17", "-17"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


def test_boxed_beats_hashes_and_answer_is() -> None:
    assert extract_final_answer("the answer is 3\n#### 4\n\\boxed{5}") == "5"
    assert extract_final_answer("the answer is 3\n#### 4") == "4"


def test_empty_and_unclosed_boxes_are_skipped() -> None:
    assert extract_final_answer("put it in \\boxed{} as asked: \\boxed{9}") == "9"
    assert boxed_answers("\\boxed{12") == []
    assert extract_final_answer("\\boxed{} then 12") == "12"


def test_answer_part_comes_after_think() -> None:
    text = "<think>\nmaybe 41, or \\boxed{40}\n</think>\nThe total is 42."
    assert extract_final_answer(text) == "42"
    assert extract_final_answer("<think>\n7 then 8\n</think>\n\\boxed{9}") == "9"


def test_thinking_is_used_only_for_a_stated_answer() -> None:
    assert extract_final_answer("<think>so \\boxed{40}</think>\nDone.") == "40"
    assert extract_final_answer("<think>it is 40</think>\nDone.") is None
    assert extract_final_answer("no think tag: 3 then 5", allow_last_number=False) is None


def test_answer_is_needs_an_answer_like_phrase() -> None:
    assert find_explicit_answer("the answer is not obvious, so let us think") is None
    assert find_explicit_answer("the answer is yes") == "yes"
    assert find_explicit_answer("The answer is (B).") == "(B)"


def test_split_thinking() -> None:
    assert split_thinking("<think>\nhmm\n</think>\n\nok") == ("\nhmm\n", "\n\nok")
    assert split_thinking("hmm\n</think>ok") == ("hmm\n", "ok")
    assert split_thinking("all answer") == ("", "all answer")
    assert split_thinking("a</think>b</think>c") == ("a", "b</think>c")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("$1,000$", "1000"),
        ("18.0", "18"),
        ("18.50", "18.5"),
        ("\\text{5}", "5"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("10\\!000", "10000"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\boxed{7}", "7"),
        ("7.", "7"),
    ],
)
def test_equal_answers_vote_together(a: str, b: str) -> None:
    assert normalize_for_vote(a) == normalize_for_vote(b)


@pytest.mark.parametrize(("a", "b"), [("1.05", "1.5"), ("(1,2)", "(12)"), ("-3", "3"), ("\\pi", "\\Pi")])
def test_different_answers_stay_apart(a: str, b: str) -> None:
    assert normalize_for_vote(a) != normalize_for_vote(b)


@given(st.text())
def test_extraction_never_crashes(text: str) -> None:
    answer = extract_final_answer(text)
    assert answer is None or isinstance(answer, str)
    assert isinstance(normalize_for_vote(text), str)
    thinking, rest = split_thinking(text)
    assert rest in text


@given(st.lists(st.sampled_from(["\\boxed{", "}", "{", "\\", "1", " ", "</think>", "####", "answer is ", "\n"])))
def test_extraction_never_crashes_on_latex_soup(pieces: list[str]) -> None:
    text = "".join(pieces)
    answer = extract_final_answer(text)
    assert answer is None or (answer and answer == answer.strip() and answer in text)
    assert isinstance(normalize_for_vote(text), str)
