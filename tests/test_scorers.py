"""Process-reward scorers: rule checks, self-evaluation, weighted combination and building them by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import pytest
from hypothesis import given, strategies as st

from qwq_local.search.protocol import Candidate
from qwq_local.value import rules
from qwq_local.value.combine import WeightedScorer, build_scorer
from qwq_local.value.rules import RulesScorer, check_arithmetic
from qwq_local.value.selfeval import OMITTED, SelfEvalScorer
from tests.fakes import FixedScorer, ScriptedLM


def step(text: str) -> Candidate:
    return Candidate(text=text, branch=0, n_tokens=len(text.split()), finished=False)


def score(text: str, steps: Sequence[str] = ()) -> float:
    return RulesScorer().score("q", list(steps), step(text))


@pytest.mark.parametrize(
    "text",
    [
        "She sold 48/2 = 24 clips in May.",
        "3 * 4 = 12",
        "$5 + $3 = $8",
        "12 x 3 = 36 and 12 × 3 = 36",
        "1,200 + 300 = 1,500",
        "2 + 3 = 1 + 4 = 5",
        "So \\(3 \\times 4 = 12\\).",
        "\\frac{48}{2} = 24",
        "10/3 = 3.33 (rounded)",
        "25% * 80 = 20",
        "Natalia sold 48/2 = <<48/2=24>>24 clips",
    ],
)
def test_right_arithmetic_scores_above_neutral(text: str) -> None:
    assert score(text) == rules.CHECKED


@pytest.mark.parametrize(
    "text",
    [
        "She sold 48/2 = 25 clips in May.",
        "3 * 4 = 13",
        "$5 + $3 = $9",
        "12 x 3 = 38",
        "1,200 + 300 = 1,600",
        "2 + 3 = 1 + 4 = 6",
        "first 2 + 2 = 4, then 3 * 3 = 10",
        "3 * 4 = 12.5",
    ],
)
def test_wrong_arithmetic_scores_zero(text: str) -> None:
    assert score(text) == rules.WRONG


@pytest.mark.parametrize(
    "text",
    [
        "half of 48 = 24",  # spoken operations are not recomputed
        "20% of 50 = 10",
        "2 times 3 + 4 = 10",
        "3x + 2 = 11",
        "x = 5",
        "print(2 + 2 == 5)",
        "Let me think about what the question asks.",
    ],
)
def test_prose_without_checkable_arithmetic_is_neutral(text: str) -> None:
    assert score(text) == rules.NEUTRAL


def test_expressions_with_variables_are_checked_only_where_numeric() -> None:
    assert check_arithmetic("2 * x + 3 = 2 * 5 + 3 = 13") is True
    assert check_arithmetic("2 * x + 3 = 2 * 5 + 3 = 14") is False


def test_arithmetic_is_never_evaluated_as_code() -> None:
    assert check_arithmetic("__import__('os').system('true') = 0") is None
    assert check_arithmetic("9**9**9 = 1") is None  # too large to compute: not judged
    assert check_arithmetic("1/0 = 1") is None


def test_a_very_long_sum_is_not_judged_rather_than_crashing() -> None:
    for terms in (1000, 1500, 2000, 5000):  # parsed, but deeper than the recursion limit to evaluate
        long_sum = "1+" * (terms - 1) + f"1 = {terms}"
        assert check_arithmetic(long_sum) is None
        assert score(f"So {long_sum}.") == rules.NEUTRAL


def test_code_that_does_not_parse_scores_low() -> None:
    assert score("Code:\n```python\ndef f(x):\n    return x +\n```\n") == rules.BAD_CODE
    assert score("def f(x):\n    return x +* 2\n") == rules.BAD_CODE
    assert score("```python\ndef f(x):\n    return x + 1\n```\n") == rules.NEUTRAL


def test_code_split_across_steps_is_judged_when_its_block_closes() -> None:
    opening = "```python\ndef f(x):\n\n"
    assert score(opening) == rules.NEUTRAL  # unfinished: judged later
    assert score("    return x + 1\n```\n", [opening]) == rules.NEUTRAL
    assert score("    return x +\n```\n", [opening]) == rules.BAD_CODE
    assert score("def f(x):\n    if x:") == rules.NEUTRAL  # a statement the next step finishes


def test_code_is_parsed_never_run(tmp_path: pytest.TempPathFactory) -> None:
    marker = f"{tmp_path}/ran"
    assert score(f"```python\nopen({marker!r}, 'w').write('x')\n```\n") == rules.NEUTRAL
    import os

    assert not os.path.exists(marker)


def test_repeated_steps_score_low() -> None:
    assert score("Wait; let me check!", ["Wait, let me check."]) == rules.REPEAT
    long = "So the total number of apples in both baskets together is twelve apples now"
    assert score(long.replace("twelve", "12"), [long.replace("now", "then")]) == rules.NEUTRAL
    assert score(long + ".", ["Intro.", long]) == rules.REPEAT
    near = "So the total number of apples in both of the baskets together is twelve apples now"
    assert score(near, [long]) == rules.REPEAT


def test_empty_step_scores_low() -> None:
    assert score("  \n\n") == rules.EMPTY


def test_rules_scorer_name() -> None:
    assert RulesScorer().name == "rules"


@given(st.text(max_size=200))
def test_rules_never_crash(text: str) -> None:
    assert 0.0 <= score(text, [text[:50]]) <= 1.0


@given(st.lists(st.sampled_from(["1", "2", ".", "+", "-", "*", "/", "=", "(", ")", " ", "x", "%", ",", "$", "^"]),
                max_size=40))
def test_arithmetic_checker_never_crashes(pieces: list[str]) -> None:
    assert check_arithmetic("".join(pieces)) in (True, False, None)


def test_self_eval_asks_the_policy_and_returns_its_probability() -> None:
    lm = ScriptedLM({}, yes=0.83)
    scorer = SelfEvalScorer(lm)
    value = scorer.score("What is 2+2?", ["First, add.\n\n"], step("2 + 2 = 4\n\n"))
    assert value == 0.83 and scorer.name == "self-eval"
    (prompt,) = lm.yes_prompts
    assert "What is 2+2?" in prompt and "Step 1: First, add." in prompt
    assert "Next step:\n2 + 2 = 4" in prompt
    assert prompt.rstrip().endswith("Answer Yes or No.")


def test_self_eval_keeps_the_latest_steps_when_the_context_is_long() -> None:
    lm = ScriptedLM({}, yes=lambda prompt: 1.7)
    scorer = SelfEvalScorer(lm, max_context_chars=40)
    steps = [f"step number {i} " + "x" * 10 for i in range(10)]
    assert scorer.score("q", steps, step("next")) == 1.0  # clamped
    prompt = lm.yes_prompts[0]
    assert OMITTED in prompt and "Step 10: step number 9" in prompt and "Step 1:" not in prompt


@dataclass
class Constant:
    value: float
    name: str = "c"
    calls: list[str] = field(default_factory=list)

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        self.calls.append(candidate.text)
        return self.value


def test_weighted_scorer_is_a_weighted_mean() -> None:
    zero = Constant(0.0, "zero")
    one = Constant(1.0, "one")
    scorer = WeightedScorer([(zero, 1.0), (one, 3.0)])
    assert scorer.name == "zero+one"
    assert scorer.score("q", [], step("s")) == pytest.approx(0.75)
    skipped = Constant(0.0, "skipped")
    assert WeightedScorer([(one, 1.0), (skipped, 0.0)]).score("q", [], step("s")) == 1.0
    assert skipped.calls == []


@pytest.mark.parametrize(
    ("parts", "message"),
    [([], "at least one"), ([(FixedScorer(), -1.0)], ">= 0"), ([(FixedScorer(), 0.0)], "not all be 0")],
)
def test_weighted_scorer_rejects_bad_weights(parts: list[tuple[FixedScorer, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedScorer(parts)


def test_build_scorer_by_name() -> None:
    lm = ScriptedLM({}, yes=0.2)
    head = FixedScorer(default=0.6, name="qhead")
    assert isinstance(build_scorer(["rules"], lm), RulesScorer)
    assert isinstance(build_scorer(["self-eval"], lm), SelfEvalScorer)
    assert build_scorer(["qhead"], lm, qhead=head) is head
    combined = build_scorer(["rules,self-eval"], lm)
    assert combined.name == "rules+self-eval"
    assert combined.score("q", [], step("Let me see.")) == pytest.approx((0.5 + 0.2) / 2)
    weighted = build_scorer(["rules:1", "qhead:3"], lm, qhead=head)
    assert weighted.score("q", [], step("Let me see.")) == pytest.approx((0.5 + 3 * 0.6) / 4)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["qhead"], "needs a trained Q-value head"),
        (["magic"], "unknown scorer 'magic'; choose from rules, self-eval, qhead"),
        ([""], "no scorer named"),
        (["rules,rules"], "named twice"),
        (["rules:heavy"], "must be a number"),
    ],
)
def test_build_scorer_errors(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_scorer(names, ScriptedLM({}))


def test_confidence_scorer_reads_the_steps_own_token_confidences() -> None:
    import math as _math

    from qwq_local.search.protocol import Candidate
    from qwq_local.value.combine import build_scorer
    from qwq_local.value.confidence import ConfidenceScorer

    sure = Candidate("a", 0, 40, False, token_confidences=[12.0] * 40)
    unsure_end = Candidate("b", 1, 40, False, token_confidences=[12.0] * 8 + [8.0] * 32)
    dip = Candidate("c", 2, 40, False, token_confidences=[8.0] * 8 + [12.0] * 32)
    tail, low, mean = (ConfidenceScorer(v, center=10.0, scale=1.0) for v in ("tail", "low", "mean"))
    assert tail.score("q", [], sure) == pytest.approx(1 / (1 + _math.exp(-2.0)))
    assert tail.score("q", [], unsure_end) < 0.5 < tail.score("q", [], dip)  # only the last 32 tokens count
    assert ConfidenceScorer().score("q", [], sure) == pytest.approx(1 / (1 + _math.exp(-(12.0 - 12.9) / 1.4)))
    assert low.confidence(dip) == pytest.approx(11.0) and low.confidence(unsure_end) == pytest.approx(8.0)
    assert mean.confidence(dip) == pytest.approx(11.2)
    assert tail.score("q", [], Candidate("d", 3, 0, True)) == 0.5  # an engine without log-probs: no opinion
    with pytest.raises(ValueError):
        ConfidenceScorer("median")
    combined = build_scorer("confidence-low+rules:0", None)
    assert combined.name == "confidence+rules"


def test_token_stats_of_a_known_distribution() -> None:
    import numpy as np

    from qwq_local.engine.policy import token_stats

    logits = np.log(np.array([0.5, 0.25, 0.25] + [1e-12] * 37, dtype=np.float64)).astype(np.float32)
    logprob, confidence, entropy, certainty = token_stats(logits, 1, k=3)
    assert logprob == pytest.approx(np.log(0.25), abs=1e-4)
    assert confidence == pytest.approx(-(np.log(0.5) + 2 * np.log(0.25)) / 3, abs=1e-4)
    assert entropy == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)), abs=1e-4)
    assert certainty == pytest.approx(-np.log(40) - np.mean(np.log(np.maximum(np.exp(logits.astype(np.float64)), 1e-45))), rel=1e-3)
