"""The baselines A* is compared with: direct, best-of-N, self-consistency, beam search; the strategy table."""

from __future__ import annotations

from typing import Any

import pytest

from qwq_local.search.beam import beam_search
from qwq_local.search.bon import best_of_n, rank
from qwq_local.search.config import SearchConfig
from qwq_local.search.direct import direct
from qwq_local.search.replies import SampledReplies
from qwq_local.search.sc import majority, self_consistency, vote
from qwq_local.search.strategies import STRATEGIES, needs_scorer, run
from tests.fakes import FakeClock, FixedScorer, ScriptedLM, script_from_tree


def replies(*texts: str) -> ScriptedLM:
    return ScriptedLM({(): [(text, True) for text in texts]})


def config(**overrides: Any) -> SearchConfig:
    base: dict[str, Any] = dict(n_samples=4, candidates=3, beam_width=2, trajectories=2)
    base.update(overrides)
    return SearchConfig(**base)


def test_direct_samples_one_whole_reply_once() -> None:
    lm = replies("<think>\nhmm\n</think>\n\\boxed{4}")
    result = direct("q", config(max_reply_tokens=900), lm, None)
    assert len(lm.sample_calls) == 1
    call = lm.sample_calls[0]
    assert call.k == 1 and call.stop.delimiter is None and call.stop.max_tokens == 900
    assert result.text == "<think>\nhmm\n</think>\n\\boxed{4}"
    assert result.final_answer == "4" and result.strategy == "direct" and result.complete
    assert lm.live == set()


def test_direct_continues_a_reply_the_engine_paused_at_think_end() -> None:
    lm = ScriptedLM({(): [("<think>\nhmm\n</think>", False)], ("<think>\nhmm\n</think>",): [("\n\\boxed{6}", True)]})
    result = direct("q", config(), lm, None)
    assert result.text == "<think>\nhmm\n</think>\n\\boxed{6}"
    assert result.final_answer == "6" and len(lm.sample_calls) == 2
    assert lm.live == set()


def test_self_consistency_takes_the_majority() -> None:
    lm = replies("so 7", "The answer is 5", "\\boxed{7}", "#### 5.0", "\\boxed{$5$}")
    result = self_consistency("q", config(n_samples=5), lm, None)
    assert result.final_answer == "5"
    assert result.text == "The answer is 5"  # the first reply that gave it
    assert lm.sample_calls[0].k == 5 and len(lm.sample_calls) == 1
    assert result.terminal_answers == ["7", "5", "7", "5.0", "$5$"]
    assert lm.live == set()


def test_self_consistency_ties_go_to_the_first_answer_seen() -> None:
    lm = replies("\\boxed{3}", "\\boxed{4}", "\\boxed{4}", "\\boxed{3}")
    result = self_consistency("q", config(), lm, None)
    assert result.final_answer == "3" and result.chosen_path == [0, 1]
    assert majority([None, "b", "a", "a", "b"]) == "b"
    assert majority([None, None]) is None


def test_best_of_n_picks_the_best_scored_reply() -> None:
    lm = replies("r1 \\boxed{1}", "r2 \\boxed{2}", "r3 \\boxed{3}", "r4 \\boxed{4}")
    scorer = FixedScorer({"r1 \\boxed{1}": 0.2, "r2 \\boxed{2}": 0.9, "r3 \\boxed{3}": 0.9, "r4 \\boxed{4}": 0.1})
    result = best_of_n("q", config(), lm, scorer)
    assert result.final_answer == "2"  # r2 and r3 tie: the first wins
    assert [call[1] for call in scorer.calls] == [(), (), (), ()]  # each whole reply is one step
    assert len(lm.sample_calls) == 1 and lm.sample_calls[0].k == 4
    assert lm.live == set()


def test_best_of_n_needs_a_scorer() -> None:
    with pytest.raises(ValueError, match="needs a scorer"):
        best_of_n("q", config(), replies("x"), None)


def test_sampled_replies_vote_and_rank_as_sc_and_bon_would_alone() -> None:
    texts = ("r1 \\boxed{1}", "r2 \\boxed{2}", "r3 \\boxed{2}", "r4 \\boxed{4}")
    values = {"r1 \\boxed{1}": 0.2, "r2 \\boxed{2}": 0.1, "r3 \\boxed{2}": 0.3, "r4 \\boxed{4}": 0.9}
    lm = replies(*texts)
    with SampledReplies("q", config(), lm) as sampled:
        by_vote = sampled.result("sc", vote(sampled.leaves))
        by_score = sampled.result("bon", rank("q", sampled.leaves, sampled.tree, FixedScorer(values)))
        with pytest.raises(ValueError, match="needs a scorer"):
            rank("q", sampled.leaves, sampled.tree, None)
    assert len(lm.sample_calls) == 1 and lm.sample_calls[0].k == 4  # one sampling for both
    assert lm.live == set()
    alone_vote = self_consistency("q", config(), replies(*texts), None)
    alone_score = best_of_n("q", config(), replies(*texts), FixedScorer(values))
    for pooled, alone in ((by_vote, alone_vote), (by_score, alone_score)):
        assert (pooled.strategy, pooled.final_answer, pooled.text, pooled.chosen_path, pooled.terminal_answers) == (
            alone.strategy, alone.final_answer, alone.text, alone.chosen_path, alone.terminal_answers)
    assert by_vote.final_answer == "2" and by_score.final_answer == "4"
    assert [n["id"] for n in by_vote.tree if n["chosen"]] == [0, 2]  # each result marks only its own choice
    assert [n["id"] for n in by_score.tree if n["chosen"]] == [0, 4]
    assert by_vote.tree[2]["f"] == 0.5 and by_score.tree[2]["f"] == 0.1


def test_beam_search_keeps_its_width() -> None:
    tree = {
        "a": {"a1": {"a1x \\boxed{1}": None}, "a2": {}, "a3": {}},
        "b": {"b1": {"b1x \\boxed{2}": None}, "b2": {}, "b3": {}},
        "c": {"c1": {}, "c2": {}, "c3": {}},
    }
    scores = {"a": 0.9, "b": 0.8, "c": 0.1, "a1": 0.2, "b1": 0.7, "a2": 0.1, "b2": 0.6,
              "a1x \\boxed{1}": 0.9, "b1x \\boxed{2}": 0.9}
    lm = ScriptedLM(script_from_tree(tree))
    result = beam_search("q", config(agg="min", trajectories=1), lm, FixedScorer(scores, default=0.0))
    # Level 1 keeps a and b (c dropped); level 2 keeps b1 (0.7) and b2 (0.6) by min-aggregated g;
    # b1 finishes, which is the one trajectory asked for.
    assert lm.expanded_paths == [(), ("a",), ("b",), ("b", "b1")]
    # Live branches: the level still to expand plus the best 2 children so far.
    assert all(call.live <= 2 * 2 for call in lm.sample_calls)
    levels: dict[int, int] = {}
    for path in lm.expanded_paths:
        levels[len(path)] = levels.get(len(path), 0) + 1
    assert max(levels.values()) <= 2
    assert result.final_answer == "2" and result.strategy == "beam" and result.complete
    assert {n["text"] for n in result.tree if n["dropped"]} >= {"c"}
    assert lm.live == set()


def test_beam_search_respects_budgets() -> None:
    clock = FakeClock()
    tree = {"a": {"a1": {"a2": {"a3": None}}}}
    lm = ScriptedLM(script_from_tree(tree), on_sample=clock.advance)
    result = beam_search("q", config(time_limit=1.5, clock=clock), lm, FixedScorer())
    assert result.expansions == 2 and result.stop_reason == "time" and not result.complete
    assert result.text == "aa1"
    lm = ScriptedLM(script_from_tree(tree))
    result = beam_search("q", config(max_depth=2), lm, FixedScorer())
    assert lm.expanded_paths == [(), ("a",)] and result.stop_reason == "exhausted"
    assert lm.live == set()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_by_name_and_releases_everything(name: str) -> None:
    lm = ScriptedLM({(): [("x \\boxed{9}", True), ("y \\boxed{9}", True)]})
    result = run(name, "q", config(), lm, FixedScorer())
    assert result.strategy == name and result.final_answer == "9"
    assert lm.live == set()


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'dfs'; choose from astar, beam, bon, sc, direct"):
        run("dfs", "q", config(), replies("x"), None)


def test_which_strategies_need_a_scorer() -> None:
    assert [name for name in STRATEGIES if needs_scorer(name)] == ["astar", "beam", "bon"]
