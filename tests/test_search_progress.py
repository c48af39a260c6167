"""A search reports its progress as it goes, and Ctrl-C answers with the best path found so far."""

from __future__ import annotations

from typing import Any

import pytest

from qwq_local.search.astar import astar
from qwq_local.search.beam import beam_search
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import SearchProgress
from qwq_local.search.sc import self_consistency
from tests.fakes import FixedScorer, ScriptedLM, script_from_tree

TREE = {
    "A w": {"A1 w": {"A1 so \\boxed{3}": None}, "A2 w": {"A2 so \\boxed{4}": None}},
    "B w": {"B1 w": {"B1 so \\boxed{7}": None}},
}
SCORES = {"A w": 0.9, "B w": 0.6, "A1 w": 0.8, "A2 w": 0.4, "B1 w": 0.7}


def interrupt_at(call: int) -> Any:
    """An on_sample hook that raises KeyboardInterrupt on sample call number `call` (1-based), as Ctrl-C would."""
    calls = [0]

    def hook() -> None:
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt

    return hook


def test_astar_reports_each_expansion_with_best_f_and_finished_paths() -> None:
    seen: list[SearchProgress] = []
    lm = ScriptedLM(script_from_tree(TREE))
    config = SearchConfig(candidates=2, trajectories=2, lam=1.0, agg="min", progress=seen.append)
    result = astar("q", config, lm, FixedScorer(SCORES))
    assert seen[0] == SearchProgress("astar", 0, 1, 0, None, 0)  # the prompt is read: progress before any step
    assert [p.expansions for p in seen] == list(range(result.expansions + 1))
    assert seen[1].nodes == 3 and seen[1].best_f == pytest.approx(0.9 + 0.9) and seen[1].finished == 0
    assert seen[-1].finished == 2 and seen[-1].nodes == result.nodes
    assert seen[-1].generated_tokens == lm.stats.generated_tokens > 0


def test_ctrl_c_in_astar_answers_with_the_best_path_so_far() -> None:
    # the third call (expanding A1) is interrupted: nothing finished, the best open path is A -> A1
    lm = ScriptedLM(script_from_tree(TREE), on_sample=interrupt_at(3))
    result = astar("q", SearchConfig(candidates=2, trajectories=2, finish_partial=True), lm, FixedScorer(SCORES))
    assert result.stop_reason == "interrupted" and not result.complete
    assert result.text == "A wA1 w" and len(lm.sample_calls) == 3  # the partial path: no completions were sampled
    assert lm.live == set()


def test_ctrl_c_after_a_finished_path_in_astar_answers_with_it() -> None:
    lm = ScriptedLM(script_from_tree(TREE), on_sample=interrupt_at(4))
    result = astar("q", SearchConfig(candidates=2, trajectories=2), lm, FixedScorer(SCORES))
    assert result.stop_reason == "interrupted" and result.complete and result.final_answer == "3"


def test_ctrl_c_in_beam_search_answers_with_the_best_path_so_far() -> None:
    seen: list[SearchProgress] = []
    lm = ScriptedLM(script_from_tree(TREE), on_sample=interrupt_at(3))
    result = beam_search("q", SearchConfig(candidates=2, trajectories=2, beam_width=2, progress=seen.append), lm,
                         FixedScorer(SCORES))
    assert result.stop_reason == "interrupted" and result.text.startswith("A w")
    assert [p.expansions for p in seen] == [0, 1, 2] and seen[-1].best_f == pytest.approx(0.8)
    assert lm.live == set()


def test_ctrl_c_while_replies_are_sampled_gives_an_empty_interrupted_result() -> None:
    lm = ScriptedLM({(): [("\\boxed{1}", True)]}, on_sample=interrupt_at(1))
    result = self_consistency("q", SearchConfig(n_samples=2), lm)
    assert result.stop_reason == "interrupted" and result.text == "" and not result.complete
    assert lm.live == set()


class CutShortLM(ScriptedLM):
    """Ctrl-C during its first sample call, which hands back the replies as far as they got, as the KV tree does."""

    def sample(self, branch: int, k: int, stop: Any) -> list[Any]:
        from dataclasses import replace

        from qwq_local.search.protocol import Interrupted

        got = super().sample(branch, k, stop)
        if len(self.sample_calls) == 1:
            raise Interrupted([[replace(c, finished=False) for c in got]])
        return got


def test_ctrl_c_while_replies_are_sampled_votes_among_them_as_far_as_they_got() -> None:
    script = {(): [("so far it is \\boxed{5} and", True), ("I get \\boxed{6} but", True),
                   ("again \\boxed{5}, so", True)]}
    lm = CutShortLM(script)
    result = self_consistency("q", SearchConfig(n_samples=3, thinking=False), lm)
    assert result.stop_reason == "interrupted"  # (each stated an answer, which ends a reply that does not think)
    assert result.final_answer == "5" and result.text == "so far it is \\boxed{5} and"
    assert len(lm.sample_calls) == 1 and lm.live == set()  # nothing sampled after the Ctrl-C


def test_a_progress_that_is_not_callable_is_refused() -> None:
    with pytest.raises(ValueError, match="progress"):
        SearchConfig(progress=3)  # type: ignore[arg-type]
