"""Search strategies end to end on the real tiny model through the KV tree policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwq_local.config import Sampling
from qwq_local.engine.kvtree import KVBudgetError, KVTree
from qwq_local.engine.model import LoadedModel, LoadOptions
from qwq_local.engine.policy import TreePolicy
from qwq_local.problems.prompts import build_question
from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import StepStop
from qwq_local.search.strategies import run
from qwq_local.value.combine import build_scorer

pytestmark = pytest.mark.model
QUESTION = build_question("What is 12 + 30? Reply with the number.", "math")


@pytest.fixture(scope="module")
def model(qwen_path: Path) -> LoadedModel:
    m = LoadedModel(qwen_path, LoadOptions(n_ctx=512))
    yield m
    m.close()


def policy_for(model: LoadedModel, budget: int | None = None) -> tuple[KVTree, TreePolicy]:
    tree = KVTree(model, n_ctx=4096, n_seq_max=32, kv_budget=budget)
    return tree, TreePolicy(model, tree, Sampling(temperature=0.7, seed=3, max_tokens=200), thinks=False)


def test_steps_end_at_blank_lines_and_batch_together(model: LoadedModel) -> None:
    tree, policy = policy_for(model)
    with tree:
        root = policy.open(build_question("Natalia sold 48 clips in April and half as many in May. "
                                          "How many in total?", "math"))
        kids = policy.sample(root, 3, StepStop(min_tokens=4, max_tokens=80))
        assert len(kids) == 3
        for kid in kids:  # a step stops at the token that brings its blank line, never past it
            ended_at_blank_line = "\n\n" in kid.text and kid.text.rstrip(" \t").endswith("\n")
            assert kid.finished or kid.n_tokens == 80 or ended_at_blank_line, kid.text
        # K siblings cost one decode per token position, not one per branch.
        longest = max(k.n_tokens for k in kids)
        assert tree.stats.decode_calls <= 1 + longest + 1
        policy.close()
        assert not tree.branches and tree.stats.live_cells == 0


def test_judge_reuses_its_prefix_and_matches_fresh(model: LoadedModel) -> None:
    tree, policy = policy_for(model)
    with tree:
        p1 = policy.yes_probability("Question: 2+2. Step: 2+2 = 4. Is the step correct? Answer Yes or No.")
        before = tree.stats.evaluated_tokens
        p2 = policy.yes_probability("Question: 2+2. Step: 2+2 = 5. Is the step correct? Answer Yes or No.")
        assert tree.stats.evaluated_tokens - before < 20  # only the differing tail was evaluated
        policy.close()
    tree2, fresh = policy_for(model)
    with tree2:
        q2 = fresh.yes_probability("Question: 2+2. Step: 2+2 = 5. Is the step correct? Answer Yes or No.")
        fresh.close()
    assert 0.0 <= p1 <= 1.0 and abs(p2 - q2) < 0.02


@pytest.mark.parametrize("strategy", ["astar", "sc", "bon", "beam", "direct"])
def test_strategy_runs_end_to_end(model: LoadedModel, strategy: str) -> None:
    tree, policy = policy_for(model, budget=3000)
    config = SearchConfig(candidates=2, trajectories=2, beam=4, n_samples=2, beam_width=2, max_expansions=6,
                          thinking=False, max_reply_tokens=160, stop=StepStop(min_tokens=4, max_tokens=64))
    with tree:
        scorer = None if strategy in ("sc", "direct") else build_scorer(["rules", "self-eval"], policy)
        result = run(strategy, QUESTION, config, policy, scorer)
        policy.close()
        assert result.text.strip()
        assert result.strategy == strategy
        assert tree.stats.peak_cells <= 3000
        assert not tree.branches  # every branch released
    if strategy == "astar":
        assert result.expansions >= 1 and result.nodes >= 2 and result.tree


def test_every_candidate_has_a_hidden_state_even_at_eos(model: LoadedModel) -> None:
    """A Q-value head scores finished replies too: the EOS is decoded for their hidden state."""
    tree = KVTree(model, n_ctx=2048, n_seq_max=8, hidden=True)
    policy = TreePolicy(model, tree, Sampling(temperature=0.7, seed=5, max_tokens=64), thinks=False)
    with tree:
        root = policy.open("Reply with the single word OK.")
        kids = policy.sample(root, 3, StepStop(delimiter=None, min_tokens=0, max_tokens=64))
        assert any(k.finished for k in kids)
        for kid in kids:
            assert kid.hidden is not None and kid.hidden.shape == (model.n_embd,)
        policy.close()


def test_sample_many_decodes_several_branches_together_with_token_confidences(model: LoadedModel) -> None:
    tree, policy = policy_for(model)
    with tree:
        root = policy.open(QUESTION)
        (a, b) = policy.sample(root, 2, StepStop(min_tokens=4, max_tokens=24))
        calls = tree.stats.decode_calls
        groups = policy.sample_many([(a.branch, 2), (b.branch, 1)], StepStop(min_tokens=4, max_tokens=24))
        assert [len(g) for g in groups] == [2, 1]
        longest = max(c.n_tokens for g in groups for c in g)
        assert tree.stats.decode_calls - calls <= longest + 1  # one decode per token position for all three
        for cand in (a, b, *groups[0], *groups[1]):
            assert len(cand.token_logprobs) == len(cand.token_confidences) == cand.n_tokens
            assert all(lp <= 0 for lp in cand.token_logprobs) and all(c > 0 for c in cand.token_confidences)
            assert cand.logprob == pytest.approx(sum(cand.token_logprobs))
        policy.close()


def test_default_style_astar_completes_n_paths_and_votes_by_confidence(model: LoadedModel) -> None:
    tree, policy = policy_for(model, budget=4000)
    config = SearchConfig(candidates=2, trajectories=4, beam=8, max_depth=1, completions=2, choose="value",
                          finish_partial=True, thinking=False, max_reply_tokens=120,
                          stop=StepStop(min_tokens=4, max_tokens=48))
    with tree:
        result = run("astar", QUESTION, config, policy, build_scorer("confidence", policy))
        policy.close()
        assert not tree.branches
    assert result.complete and len(result.terminal_answers) == 4
    assert result.expansions == 1  # the root; both first steps were completed twice each


def test_astar_expands_two_open_nodes_in_one_batch(model: LoadedModel) -> None:
    tree, policy = policy_for(model, budget=6000)
    config = SearchConfig(candidates=2, trajectories=8, beam=8, max_depth=2, completions=2, choose="value",
                          finish_partial=True, thinking=False, max_reply_tokens=100, expand_width=2,
                          stop=StepStop(min_tokens=4, max_tokens=32))
    with tree:
        result = run("astar", QUESTION, config, policy, build_scorer("confidence", policy))
        policy.close()
        assert not tree.branches
    depth_one = [n for n in result.tree if n["parent"] == 0]
    assert result.expansions == 1 + len([n for n in depth_one if not n["terminal"]])  # root, then both at once
    assert len(result.terminal_answers) == len(result.terminal_values) >= 2


def test_astar_widens_from_the_question_while_its_paths_disagree(model: LoadedModel) -> None:
    tree, policy = policy_for(model, budget=4000)
    question = build_question("Name a random whole number between 1 and 1000. Reply with the number only.", "math")
    config = SearchConfig(candidates=2, trajectories=4, beam=8, max_depth=1, completions=2, choose="value",
                          finish_partial=True, thinking=False, max_reply_tokens=160, widen=2, settle=1.0,
                          stop=StepStop(min_tokens=1, max_tokens=16))
    with tree:
        result = run("astar", question, config, policy, build_scorer("confidence", policy))
        policy.close()
        assert not tree.branches  # the root, held for widening, is released too
    searched = result.terminal_answers[:len(result.terminal_answers) - result.widened]  # widened paths come last
    answered = {a for a in searched if a is not None}
    assert len(searched) >= 2 and len(result.terminal_answers) == len(result.terminal_values)
    if len(answered) > 1:  # settle 1.0: once two answers differ the vote never settles, so both replies come
        assert result.widened == 2
    elif len(answered) == 1:  # all agree: settled, nothing added
        assert result.widened == 0
    else:  # no answer yet: unsettled until a reply answers
        assert result.widened >= 1
    roots = [n for n in result.tree if n["parent"] == 0]
    assert 1 + result.widened <= len(roots) <= 2 + result.widened  # the first expansion's K (a duplicate is
    # dropped), then one root child a widening reply


def test_ctrl_c_while_replies_are_sampled_keeps_them_as_far_as_they_got(model: LoadedModel,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tree, policy = policy_for(model, budget=4000)
    config = SearchConfig(n_samples=3, thinking=False, max_reply_tokens=150)
    batches = [0]
    step_batch = tree.step_batch

    def pressed_at_the_tenth_token(*args: object) -> object:  # Ctrl-C arrives between two batched tokens
        out = step_batch(*args)
        batches[0] += 1
        if batches[0] == 10:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(tree, "step_batch", pressed_at_the_tenth_token)
    with tree:
        result = run("sc", QUESTION, config, policy, None)
        policy.close()
        assert not tree.branches
    replies = [n for n in result.tree if n["parent"] == 0]
    assert result.stop_reason == "interrupted" and len(replies) == 3
    assert all(n["text"] for n in replies) and result.text in [n["text"] for n in replies]


def test_a_think_budget_closes_each_paths_thinking_for_it(model: LoadedModel) -> None:
    tree = KVTree(model, n_ctx=4096, n_seq_max=8)
    policy = TreePolicy(model, tree, Sampling(temperature=0.7, seed=5, max_tokens=120), thinks=True, think_budget=6)
    whole = StepStop(delimiter=None, max_tokens=120)
    with tree:
        replies = policy.sample(policy.open(QUESTION), 2, whole)
        steps = policy.sample(policy.open(QUESTION), 2, StepStop(min_tokens=1, max_tokens=3))  # budget spans steps
        more = [policy.sample(s.branch, 1, StepStop(min_tokens=1, max_tokens=40))[0] for s in steps]
        policy.close()
    for text in [r.text for r in replies] + [s.text + m.text for s, m in zip(steps, more, strict=True)]:
        thinking, closed, _ = text.partition("</think>")
        assert closed and len(model.tokenize(thinking, bos=False)) <= 6 + 1, text  # the budget, then the close


def test_replies_that_outgrow_the_kv_budget_together_take_turns_instead_of_failing(model: LoadedModel) -> None:
    """sc@8 of long replies in a 4,096-cell context (MATH-500): the replies in the cache go on, the rest wait parked."""
    budget = 400
    tree, policy = policy_for(model, budget=budget)
    whole = StepStop(delimiter=None, max_tokens=150)
    with tree:
        root = policy.open("Count from 1 to 500, one number a line.")
        prompt = tree.stats.live_cells
        replies = policy.sample(root, 4, whole)
        assert len(replies) == 4 and all(r.text for r in replies)
        assert sum(r.n_tokens for r in replies) + prompt > budget  # together they never fitted
        assert all(r.n_tokens == 150 or r.finished for r in replies)  # and each went to its end
        assert tree.stats.peak_cells <= budget and tree.stats.parked >= 1
        for r in replies:
            assert len(r.token_confidences) == r.n_tokens
        policy.close()
        assert not tree.branches and tree.stats.live_cells == 0


def test_a_reply_too_long_for_the_whole_kv_budget_is_a_clear_error(model: LoadedModel) -> None:
    tree, policy = policy_for(model, budget=60)
    with tree:
        root = policy.open("Count from 1 to 500, one number a line.")
        with pytest.raises(KVBudgetError, match="KV budget of 60 cells"):
            policy.sample(root, 2, StepStop(delimiter=None, max_tokens=150))
        policy.close()
