"""Step-level A*: expansion order, budgets, the beam bound, ties, branch hygiene; its config and aggregations."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qwq_local.search.aggregate import AGGREGATES, EMPTY, get_agg
from qwq_local.search.astar import astar
from qwq_local.search.beam import beam_search
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import SearchResult, StepStop
from tests.fakes import FakeClock, FixedScorer, ScriptedLM, script_from_tree

# Root offers A (0.9) and B (0.6). Under A every path ends in the wrong answer 3; the only
# right answer, 7, lies under the weaker first step B.
TRAP = {
    "A": {"A1": {"A1 so \\boxed{3}": None}, "A2": {"A2 so \\boxed{3}": None}},
    "B": {"B1": {"B1 so \\boxed{7}": None}, "B2": {}},
}
TRAP_SCORES = {
    "A": 0.9, "B": 0.6, "A1": 0.3, "A2": 0.4, "B1": 0.8, "B2": 0.7,
    "A1 so \\boxed{3}": 0.5, "A2 so \\boxed{3}": 0.5, "B1 so \\boxed{7}": 0.9,
}


def config(**overrides: Any) -> SearchConfig:
    base: dict[str, Any] = dict(candidates=2, trajectories=1, beam=16, lam=1.0, agg="min")
    base.update(overrides)
    return SearchConfig(**base)


def run(
    tree: dict[str, Any], scores: dict[str, float] | None = None, **overrides: Any
) -> tuple[SearchResult, ScriptedLM]:
    lm = ScriptedLM(script_from_tree(tree))
    result = astar("q", config(**overrides), lm, FixedScorer(scores or {}))
    assert lm.live == set(), "every branch is released when the search ends"
    return result, lm


def full_tree(depth: int, width: int, prefix: str = "") -> dict[str, Any]:
    """Every node has `width` children of three words each, down to `depth`; the last level finishes."""
    return {
        f"{prefix}{i} w w": (full_tree(depth - 1, width, f"{prefix}{i}.") if depth > 1 else None)
        for i in range(width)
    }


def test_expands_in_f_order() -> None:
    # By hand, λ=1, g=min: after the root, f(A)=0.9+0.9=1.8, f(B)=0.6+0.6=1.2 -> expand A.
    # A's children: f(A1)=0.3+0.3=0.6, f(A2)=0.4+0.4=0.8, so B (1.2) is next.
    # B's children: f(B1)=min(.6,.8)+.8=1.4, f(B2)=.6+.7=1.3 -> expand B1, which finishes.
    result, lm = run(TRAP, TRAP_SCORES)
    assert lm.expanded_paths == [(), ("A",), ("B",), ("B", "B1")]
    assert result.expansions == 4
    nodes = {n["text"]: n for n in result.tree}
    # Once expanded, a node records h = its best child's Q-value, and f with it.
    assert nodes["A"]["h"] == pytest.approx(0.4) and nodes["A"]["f"] == pytest.approx(1.3)
    assert nodes["B1"]["h"] == pytest.approx(0.9) and nodes["B1"]["f"] == pytest.approx(1.5)
    assert nodes["B2"]["f"] == pytest.approx(1.3)


def test_finds_the_right_answer_where_greedy_fails() -> None:
    result, _ = run(TRAP, TRAP_SCORES)
    assert result.final_answer == "7"
    assert result.text == "BB1B1 so \\boxed{7}"
    assert result.complete and result.stop_reason == "done"
    assert [result.tree[i]["text"] for i in result.chosen_path] == ["", "B", "B1", "B1 so \\boxed{7}"]
    assert all(result.tree[i]["chosen"] for i in result.chosen_path)

    lm = ScriptedLM(script_from_tree(TRAP))  # greedy: one path, the best next step each time
    greedy = beam_search("q", config(beam_width=1, agg="last"), lm, FixedScorer(TRAP_SCORES))
    assert greedy.final_answer == "3"


def test_lambda_weighs_the_estimate_of_the_next_step() -> None:
    # g = mean. After A is expanded: A1 has g=(.9+.45)/2=.675, h=.45; B has g=.5, h=.5.
    # λ=0 ranks by g (A1 first); λ=10 ranks by h (B first).
    tree = {"A": {"A1": {"A1a": None}}, "B": {"B1": None}}
    scores = {"A": 0.9, "B": 0.5, "A1": 0.45, "A1a": 0.1, "B1": 0.1}
    _, greedy_g = run(tree, scores, agg="mean", lam=0.0, trajectories=2)
    _, greedy_h = run(tree, scores, agg="mean", lam=10.0, trajectories=2)
    assert greedy_g.expanded_paths[:3] == [(), ("A",), ("A", "A1")]
    assert greedy_h.expanded_paths[:3] == [(), ("A",), ("B",)]


@pytest.mark.parametrize("agg", sorted(AGGREGATES))
def test_every_aggregation_gives_consistent_g_and_f(agg: str) -> None:
    scores = {f"{p}{i} w w": 0.1 + 0.2 * i + 0.05 * len(p) for p in ("", "0.", "1.", "0.0.", "1.1.") for i in range(3)}
    result, _ = run(full_tree(3, 2), scores, agg=agg, trajectories=3, lam=0.5)
    by_id = {n["id"]: n for n in result.tree}
    for node in result.tree[1:]:
        rewards = []
        cursor = node
        while cursor["parent"] is not None:
            rewards.append(cursor["reward"])
            cursor = by_id[cursor["parent"]]
        assert node["g"] == pytest.approx(AGGREGATES[agg](rewards[::-1]))
        if not node["expanded"]:
            assert node["h"] == node["reward"]
        assert node["f"] == pytest.approx(node["g"] + 0.5 * node["h"])


def test_ties_break_by_creation_order_and_repeat_exactly() -> None:
    first, lm = run(full_tree(3, 2), trajectories=8)
    second, lm2 = run(full_tree(3, 2), trajectories=8)
    # Every score is 0.5, so every f is 1.0: nodes are expanded in the order they were created.
    assert lm.expanded_paths == [(), ("0 w w",), ("1 w w",), ("0 w w", "0.0 w w"), ("0 w w", "0.1 w w"),
                                 ("1 w w", "1.0 w w"), ("1 w w", "1.1 w w")]
    assert first == second and lm.history == lm2.history
    assert first.text == "0 w w0.0 w w0.0.0 w w"


def test_stops_after_max_expansions() -> None:
    result, lm = run(full_tree(6, 2), max_expansions=3, trajectories=10)
    assert len(lm.sample_calls) == result.expansions == 3
    assert result.stop_reason == "expansions"
    assert not result.complete
    assert result.final_answer is None


def test_stops_when_generated_tokens_run_out() -> None:
    lm = ScriptedLM(script_from_tree(full_tree(6, 2)))
    lm.stats.generated_tokens = 1000  # counted from the start of this search
    result = astar("q", config(max_generated_tokens=10, trajectories=10), lm, FixedScorer())
    # Each expansion samples 2 steps of 3 tokens: 0 < 10, 6 < 10, then 12 >= 10 stops.
    assert result.expansions == 2
    assert result.stop_reason == "tokens"
    assert lm.live == set()


def test_nodes_at_max_depth_are_not_expanded() -> None:
    result, lm = run(full_tree(6, 2), max_depth=2, trajectories=10)
    assert max(len(path) for path in lm.expanded_paths) == 1
    assert all(not n["expanded"] for n in result.tree if n["depth"] == 2)
    assert all(n["cut"] for n in result.tree if n["depth"] == 2)
    assert result.stop_reason == "exhausted"
    assert not result.complete and result.tree[result.chosen_path[-1]]["depth"] == 2


def test_stops_at_the_time_limit() -> None:
    clock = FakeClock()
    lm = ScriptedLM(script_from_tree(full_tree(6, 2)), on_sample=clock.advance)
    result = astar("q", config(time_limit=2.5, clock=clock, trajectories=10), lm, FixedScorer())
    # One second per sample call: checks at 0, 1, 2 expand; at 3 >= 2.5 the search stops.
    assert result.expansions == 3
    assert result.stop_reason == "time"
    assert lm.live == set()


def test_beam_bound_drops_the_worst_and_releases_them() -> None:
    scores = {f"{i} w w": 0.1 * (i + 1) for i in range(5)}
    result, lm = run(full_tree(3, 5), scores, candidates=5, beam=2, trajectories=3)
    assert all(call.live <= 2 for call in lm.sample_calls)
    dropped = [n for n in result.tree if n["dropped"]]
    assert [n["text"] for n in dropped][:3] == ["0 w w", "1 w w", "2 w w"]  # the worst root children
    assert all(not n["expanded"] for n in dropped)
    assert result.stop_reason == "done"


def test_returns_the_best_open_path_when_nothing_finishes() -> None:
    tree: dict[str, Any] = {"A": {"A1": {}}, "B": {"B1 the answer is 4": {}}}
    scores = {"A": 0.2, "B": 0.3, "A1": 0.9, "B1 the answer is 4": 0.8}
    # root, B (f .6 > .4), then B1 (f .3+.8): a dead end. A (f .4) is the only open node left.
    result, lm = run(tree, scores, max_expansions=3)
    assert result.stop_reason == "expansions"
    assert not result.complete
    assert result.text == "A" and result.final_answer is None
    result, _ = run(tree, scores)
    assert result.stop_reason == "exhausted"  # every path ran into a dead end
    # Dead ends keep g (h is 0: no next step): B1 (g .3) beats A1 (g .2); its stated answer is kept.
    assert result.text == "BB1 the answer is 4" and result.final_answer == "4"
    assert not result.complete


def test_finish_partial_completes_the_best_open_path_when_the_budget_runs_out() -> None:
    tree: dict[str, Any] = {"A": {"A so \\boxed{3}": None}, "B": {"B so \\boxed{7}": None}}
    scores = {"A": 0.2, "B": 0.3}
    result, lm = run(tree, scores, max_expansions=1, finish_partial=True, thinking=False)
    # The root was the one expansion; B (f .6) is the best open node and is completed as a whole reply.
    assert result.stop_reason == "expansions" and result.complete
    assert result.text == "BB so \\boxed{7}" and result.final_answer == "7"
    assert lm.sample_calls[-1].path == ("B",) and lm.sample_calls[-1].stop.delimiter is None
    assert result.terminal_answers == ["7"]  # the completed path is a finished one
    unfinished, _ = run(tree, scores, max_expansions=1, thinking=False)
    assert not unfinished.complete and unfinished.final_answer is None


def test_a_stated_answer_after_think_ends_a_path() -> None:
    tree: dict[str, Any] = {"<think>\nhmm\n\n": {"maybe \\boxed{2}\n\n": {"</think>\n\nSo": {"\\boxed{5}": {}}}}}
    result, lm = run(tree)
    assert result.complete and result.final_answer == "5"
    assert result.terminal_answers == ["5"]
    assert ("<think>\nhmm\n\n", "maybe \\boxed{2}\n\n") in lm.expanded_paths  # not an end: still thinking


def test_identical_siblings_are_merged() -> None:
    lm = ScriptedLM({(): ["same", "same", ("end", True)], ("same",): [("x", True)]})
    result = astar("q", config(candidates=3, trajectories=2), lm, FixedScorer())
    assert [n["text"] for n in result.tree if n["depth"] == 1] == ["same", "end"]
    assert lm.live == set()


def test_scores_are_clamped_and_steps_passed_to_the_scorer() -> None:
    scorer = FixedScorer({"A": 7.0, "B": float("nan")})
    lm = ScriptedLM(script_from_tree({"A": {"A1": None}, "B": None}))
    result = astar("question?", config(trajectories=2), lm, scorer)
    rewards = {n["text"]: n["reward"] for n in result.tree}
    assert rewards["A"] == 1.0 and rewards["B"] == 0.0
    assert ("question?", ("A",), "A1") in scorer.calls
    assert lm.questions == ["question?"]
    assert all(call.stop == StepStop() for call in lm.sample_calls)


def test_astar_needs_a_scorer() -> None:
    with pytest.raises(ValueError, match="scorer"):
        astar("q", config(), ScriptedLM({}), None)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    names = st.text(alphabet="abc", min_size=1, max_size=2)
    leaf: st.SearchStrategy[dict[str, Any] | None] = st.one_of(st.none(), st.just({}))
    subtree = st.recursive(leaf, lambda kids: st.dictionaries(names, kids, min_size=1, max_size=4), max_leaves=15)
    return draw(st.dictionaries(names, subtree, min_size=1, max_size=4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tree=trees(),
    scores=st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=2), st.floats(0, 1)),
    beam=st.integers(1, 4),
    k=st.integers(1, 4),
    n=st.integers(1, 4),
    max_depth=st.one_of(st.none(), st.integers(1, 4)),
    max_expansions=st.integers(1, 12),
    agg=st.sampled_from(sorted(AGGREGATES)),
    lam=st.floats(0, 5),
)
def test_astar_properties_on_random_trees(
    tree: dict[str, Any], scores: dict[str, float], beam: int, k: int, n: int,
    max_depth: int | None, max_expansions: int, agg: str, lam: float,
) -> None:
    lm = ScriptedLM(script_from_tree(tree))
    cfg = config(beam=beam, candidates=k, trajectories=n, max_depth=max_depth,
                 max_expansions=max_expansions, agg=agg, lam=lam)
    result = astar("q", cfg, lm, FixedScorer(scores))
    assert lm.live == set()
    assert all(call.live <= beam for call in lm.sample_calls)  # never more than B open nodes
    assert len(lm.sample_calls) == result.expansions <= max_expansions
    assert len(set(lm.expanded_paths)) == len(lm.expanded_paths)  # no node is expanded twice
    if max_depth is not None:
        assert all(len(path) < max_depth for path in lm.expanded_paths)
    chosen = [result.tree[i] for i in result.chosen_path]
    assert result.text == "".join(node["text"] for node in chosen)
    assert result.complete == chosen[-1]["terminal"]
    terminals = [node for node in result.tree if node["terminal"]]
    if terminals:
        assert chosen[-1]["f"] == max(node["f"] for node in terminals)
    assert astar("q", cfg, ScriptedLM(script_from_tree(tree)), FixedScorer(scores)) == result


# ---------------------------------------------------------------- config and aggregations


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("candidates", 0, "candidates"),
        ("trajectories", 0, "trajectories"),
        ("beam", 0, "beam"),
        ("lam", -1.0, "lam"),
        ("lam", math.inf, "lam"),
        ("agg", "median", "agg must be one of min, max, sum, mean, last"),
        ("max_expansions", 0, "max_expansions"),
        ("max_generated_tokens", -5, "max_generated_tokens"),
        ("max_depth", 0, "max_depth"),
        ("time_limit", 0.0, "time_limit"),
        ("n_samples", 0, "n_samples"),
        ("beam_width", 0, "beam_width"),
        ("stop", StepStop(delimiter=""), "delimiter"),
        ("stop", StepStop(max_tokens=0), "stop.max_tokens"),
        ("stop", "\n\n", "StepStop"),
    ],
)
def test_config_rejects_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchConfig(**{field: value})


def test_config_defaults() -> None:
    cfg = SearchConfig()
    assert (cfg.candidates, cfg.trajectories, cfg.beam, cfg.lam, cfg.agg) == (6, 6, 16, 1.0, "min")
    assert SearchConfig(max_expansions=None, max_depth=None).max_depth is None
    assert cfg.reply_stop().delimiter is None


@pytest.mark.parametrize(
    ("name", "rewards", "expected"),
    [
        ("min", [0.5, 0.2, 0.9], 0.2),
        ("max", [0.5, 0.2, 0.9], 0.9),
        ("sum", [0.5, 0.2, 0.9], 1.6),
        ("mean", [0.5, 0.2, 0.9], 1.6 / 3),
        ("last", [0.5, 0.2, 0.9], 0.9),
        ("prod", [0.5, 0.2, 0.9], 0.09),
    ],
)
def test_aggregations(name: str, rewards: list[float], expected: float) -> None:
    assert get_agg(name)(rewards) == pytest.approx(expected)
    assert get_agg(name)([]) == EMPTY


def test_unknown_aggregation() -> None:
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        get_agg("median")


VOTES = {"A": {"A so \\boxed{3}": None, "A again so \\boxed{3}": None},
         "B": {"B so \\boxed{7}": None, "B again so \\boxed{7}": None}}


class BatchedLM(ScriptedLM):
    """A ScriptedLM that also has the KV tree's `sample_many`, counting its calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.many_calls: list[list[tuple[int, int]]] = []

    def sample_many(self, requests: list[tuple[int, int]], stop: StepStop) -> list[list[Any]]:
        self.many_calls.append(list(requests))
        return [self.sample(branch, k, stop) for branch, k in requests]


def test_a_spent_budget_completes_the_best_nodes_until_n_paths_finish_in_one_batch() -> None:
    lm = BatchedLM(script_from_tree(VOTES))
    scores = {"A": 0.3, "B": 0.6, "A so \\boxed{3}": 0.5, "A again so \\boxed{3}": 0.5,
              "B so \\boxed{7}": 0.5, "B again so \\boxed{7}": 0.5}
    cfg = config(max_expansions=1, trajectories=4, completions=2, finish_partial=True, thinking=False)
    result = astar("q", cfg, lm, FixedScorer(scores))
    assert len(lm.many_calls) == 1 and [k for _, k in lm.many_calls[0]] == [2, 2]  # B first (higher f), then A
    assert sorted(result.terminal_answers) == ["3", "3", "7", "7"]
    assert result.final_answer == "7" and lm.live == set()
    three = astar("q", replace(cfg, trajectories=3), BatchedLM(script_from_tree(VOTES)), FixedScorer(scores))
    assert sorted(three.terminal_answers) == ["3", "7", "7"]  # 2 from B, the last one from A


@pytest.mark.parametrize(("how", "answer"), [("best", "7"), ("vote", "3"), ("value", "3")])
def test_finished_paths_answer_by_best_f_by_vote_or_by_value(how: str, answer: str) -> None:
    tree = {"X": {"x so \\boxed{3}": None}, "Y": {"y so \\boxed{3}": None}, "Z": {"z so \\boxed{7}": None}}
    scores = {"X": 0.6, "Y": 0.6, "Z": 0.7, "x so \\boxed{3}": 0.6, "y so \\boxed{3}": 0.6, "z so \\boxed{7}": 0.7}
    result, _ = run(tree, scores, candidates=3, trajectories=3, choose=how, agg="min", thinking=False)
    assert sorted(result.terminal_answers) == ["3", "3", "7"]
    assert result.final_answer == answer  # odds: 1.5 + 1.5 for 3 against 2.33 for 7
    values = dict(zip(result.terminal_answers, result.terminal_values, strict=True))  # recorded for offline choosers
    assert values == {"3": 0.6, "7": 0.7}


def test_value_vote_lets_one_sure_path_outweigh_two_doubtful_ones() -> None:
    tree = {"X": {"x so \\boxed{3}": None}, "Y": {"y so \\boxed{3}": None}, "Z": {"z so \\boxed{7}": None}}
    scores = {"X": 0.3, "Y": 0.3, "Z": 0.95, "x so \\boxed{3}": 0.3, "y so \\boxed{3}": 0.3, "z so \\boxed{7}": 0.95}
    result, _ = run(tree, scores, candidates=3, trajectories=3, choose="value", thinking=False)
    assert result.final_answer == "7"


def test_nodes_cut_at_the_depth_limit_are_completed_not_lost() -> None:
    lm = BatchedLM(script_from_tree(VOTES))
    cfg = config(max_depth=1, trajectories=2, finish_partial=True, thinking=False)
    result = astar("q", cfg, lm, FixedScorer({"A": 0.3, "B": 0.6}))
    assert result.stop_reason == "exhausted" and result.complete
    assert sorted(result.terminal_answers) == ["3", "7"] and lm.live == set()


DEEP = {"A": {"A1": {"A1 so \\boxed{3}": None}, "A2": {"A2 so \\boxed{3}": None}},
        "B": {"B1": {"B1 so \\boxed{7}": None}, "B2": {"B2 so \\boxed{3}": None}}}


def test_several_open_nodes_expand_in_one_batched_call_to_the_same_tree() -> None:
    scores = {"A": 0.6, "B": 0.4, "A1": 0.5, "A2": 0.5, "B1": 0.5, "B2": 0.5}
    cfg = config(candidates=2, trajectories=4, max_depth=2, finish_partial=True, thinking=False, choose="vote")
    one, wide = BatchedLM(script_from_tree(DEEP)), BatchedLM(script_from_tree(DEEP))
    narrow_result = astar("q", cfg, one, FixedScorer(scores))
    wide_result = astar("q", replace(cfg, expand_width=2), wide, FixedScorer(scores))
    assert [c.path for c in one.sample_calls[:3]] == [c.path for c in wide.sample_calls[:3]] == [(), ("A",), ("B",)]
    assert [[k for _, k in call] for call in one.many_calls] == [[1, 1, 1, 1]]  # the completions only
    assert [[k for _, k in call] for call in wide.many_calls] == [[2, 2], [1, 1, 1, 1]]  # A and B in one batch
    assert sorted(wide_result.terminal_answers) == sorted(narrow_result.terminal_answers) == ["3", "3", "3", "7"]
    assert wide_result.expansions == narrow_result.expansions == 3 and wide_result.final_answer == "3"
    assert one.live == set() and wide.live == set()
    capped = astar("q", replace(cfg, expand_width=8, max_expansions=2), BatchedLM(script_from_tree(DEEP)),
                   FixedScorer(scores))
    assert capped.expansions == 2  # the width never overspends the expansions budget


def test_choose_and_completions_are_checked() -> None:
    with pytest.raises(ValueError, match="choose"):
        SearchConfig(choose="mean")
    with pytest.raises(ValueError, match="completions"):
        SearchConfig(completions=0)


class WideningLM(BatchedLM):
    """A BatchedLM whose whole replies sampled from the question come from `replies`, in order."""

    def __init__(self, *args: Any, replies: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies = list(replies)
        self.root_replies = 0

    def sample(self, branch: int, k: int, stop: StepStop) -> list[Any]:
        if self.paths.get(branch) == () and stop.delimiter is None:
            text = self.replies.pop(0)
            self.root_replies += 1
            self.script[()] = [(text, True)]  # the scripted LM answers the root with this reply once
            try:
                return super().sample(branch, 1, stop)
            finally:
                del self.script[()]
        return super().sample(branch, k, stop)


SPLIT = {"A": {"A so \\boxed{3}": None}, "B": {"B so \\boxed{7}": None}}


@pytest.mark.parametrize(("settle", "replies", "added", "answer"), [
    (0.6, ["R so \\boxed{7}"], 1, "7"),  # 3 against 7, one more 7 settles it (2 of 3 votes)
    (0.8, ["R so \\boxed{3}", "S so \\boxed{9}"], 2, "3"),  # never settled: both extra replies, then the vote
])
def test_unsettled_paths_widen_from_the_question(settle: float, replies: list[str], added: int, answer: str) -> None:
    lm = WideningLM(script_from_tree(SPLIT), replies=replies)
    cfg = config(candidates=2, trajectories=2, max_depth=1, finish_partial=True, thinking=False, choose="vote",
                 widen=2, settle=settle)
    result = astar("q", cfg, lm, FixedScorer({}))
    assert lm.root_replies == added == result.widened
    assert result.terminal_answers == ["3", "7", *[r[-2] for r in replies[:added]]]
    assert result.final_answer == answer and lm.live == set()


def test_settled_paths_and_spent_budgets_do_not_widen() -> None:
    agree = {"A": {"A so \\boxed{3}": None}, "B": {"B so \\boxed{3}": None}}
    cfg = config(candidates=2, trajectories=2, max_depth=1, finish_partial=True, thinking=False, choose="value",
                 widen=2)
    lm = WideningLM(script_from_tree(agree), replies=["R so \\boxed{7}"])
    assert astar("q", cfg, lm, FixedScorer({})).terminal_answers == ["3", "3"]
    assert lm.root_replies == 0 and lm.live == set()
    spent = WideningLM(script_from_tree(SPLIT), replies=["R so \\boxed{7}"])
    result = astar("q", replace(cfg, max_generated_tokens=4), spent, FixedScorer({}))
    assert spent.root_replies == 0 and len(result.terminal_answers) == 2 and spent.live == set()
    expanded = WideningLM(script_from_tree(SPLIT), replies=["R so \\boxed{7}"])  # whole replies expand nothing:
    result = astar("q", replace(cfg, max_expansions=1), expanded, FixedScorer({}))  # a spent expansions budget
    assert expanded.root_replies == 1 == result.widened and expanded.live == set()  # does not stop the widening
    plain = WideningLM(script_from_tree(SPLIT), replies=["R so \\boxed{7}"])
    astar("q", replace(cfg, widen=0), plain, FixedScorer({}))
    root = plain.history[0][2]
    assert ("release", root) in plain.history[: plain.history.index(("sample", root, 2)) + 2]  # freed at expansion


def test_widen_and_settle_are_checked() -> None:
    with pytest.raises(ValueError, match="widen"):
        SearchConfig(widen=-1)
    for bad in (0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="settle"):
            SearchConfig(settle=bad)
