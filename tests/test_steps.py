"""Splitting a reply into steps, and telling when a path has ended."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from qwq_local.search.protocol import Candidate
from qwq_local.search.steps import is_terminal, split_steps


def _step(text: str, finished: bool = False) -> Candidate:
    return Candidate(text=text, branch=0, n_tokens=len(text.split()), finished=finished)


def test_steps_end_after_the_delimiter() -> None:
    assert split_steps("a\n\nb\n\nc") == ["a\n\n", "b\n\n", "c"]


def test_blank_runs_stay_with_the_step_before() -> None:
    assert split_steps("a\n\n\n\nb") == ["a\n\n\n\n", "b"]
    assert split_steps("\n\na\n\nb") == ["\n\na\n\n", "b"]


def test_short_steps_join_the_next() -> None:
    assert split_steps("ok\n\nlonger step\n\nhello", min_chars=5) == ["ok\n\nlonger step\n\n", "hello"]
    # A short last step joins the one before it.
    assert split_steps("a long step\n\nhi", min_chars=5) == ["a long step\n\nhi"]


def test_long_steps_are_cut_at_a_space() -> None:
    steps = split_steps("one two three four five", max_chars=10)
    assert steps == ["one two ", "three ", "four five"]
    assert all(len(s) <= 10 for s in steps)
    assert split_steps("abcdefghij", max_chars=4) == ["abcd", "efgh", "ij"]


def test_answer_after_think_is_one_step() -> None:
    text = "<think>\nx\n\ny\n</think>\n\nThe answer\n\nis \\boxed{2}."
    assert split_steps(text) == ["<think>\nx\n\n", "y\n</think>", "\n\nThe answer\n\nis \\boxed{2}."]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="delimiter"):
        split_steps("x", delimiter="")
    with pytest.raises(ValueError, match="max_chars"):
        split_steps("x", max_chars=0)


@given(
    st.text(alphabet=st.sampled_from(list("ab \n</think>")), max_size=80),
    st.integers(0, 6),
    st.one_of(st.none(), st.integers(1, 12)),
)
def test_steps_join_back_to_the_reply(text: str, min_chars: int, max_chars: int | None) -> None:
    steps = split_steps(text, min_chars=min_chars, max_chars=max_chars)
    assert "".join(steps) == text
    assert all(steps)


def test_finished_is_terminal() -> None:
    assert is_terminal(_step("done", finished=True), "")


def test_answer_after_think_is_terminal() -> None:
    assert is_terminal(_step("</think>\n\nSo \\boxed{3}"), "<think>\nthinking\n\n")
    assert is_terminal(_step("\\boxed{3}"), "thinking\n</think>\n")
    assert not is_terminal(_step("</think>\n\n"), "thinking\n\n")


def test_boxed_inside_thinking_is_not_terminal_for_a_thinking_policy() -> None:
    assert not is_terminal(_step("maybe \\boxed{3}\n\n"), "<think>\nhmm\n\n")
    assert is_terminal(_step("so \\boxed{3}\n\n"), "hmm\n\n", thinking=False)
    assert not is_terminal(_step("so 3\n\n"), "hmm\n\n", thinking=False)
