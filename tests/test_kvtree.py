"""KV tree equivalence on the real tiny models: forks, batches, prunes and parking change nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwq_local.engine.kvtree import KVTree, hidden_states
from qwq_local.engine.model import LoadedModel, LoadOptions

pytestmark = pytest.mark.model

PROMPT = "<|im_start|>user\nWrite three short facts about the moon.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def qwen(qwen_path: Path) -> LoadedModel:
    model = LoadedModel(qwen_path, LoadOptions(n_ctx=256))
    yield model
    model.close()


def greedy(tree: KVTree, branches: list, n: int) -> list[list[int]]:
    """Decode `n` greedy tokens for all branches together, one batch per token."""
    out: list[list[int]] = [[] for _ in branches]
    for _ in range(n):
        rows = [(b, int(np.argmax(b.logits))) for b in branches]
        for i, (_, tok) in enumerate(rows):
            out[i].append(tok)
        tree.step_batch(rows, [True] * len(rows))
    return out


def fresh_logits(model: LoadedModel, prompt: list[int], suffix: list[int]) -> np.ndarray:
    """A fresh single-sequence context fed the same tokens in the same chunks (llama.cpp's CPU
    kernels round differently for different batch shapes, so chunking is held equal)."""
    with KVTree(model, n_ctx=512, n_seq_max=2) as fresh:
        branch = fresh.root(prompt)
        fresh.extend([(branch, suffix)])
        return branch.logits


def test_forked_branch_equals_fresh_context(qwen: LoadedModel) -> None:
    prompt = qwen.tokenize(PROMPT)
    a, b = qwen.tokenize("The moon", bos=False), qwen.tokenize("Our only natural satellite", bos=False)
    with KVTree(qwen, n_ctx=1024, n_seq_max=8) as tree:
        root = tree.root(prompt)
        left, right = tree.fork(root), tree.fork(root)
        tree.extend([(left, a)])
        tree.extend([(right, b)])
        for branch, suffix in ((left, a), (right, b)):
            ref = fresh_logits(qwen, prompt, suffix)
            assert np.max(np.abs(branch.logits - ref)) < 1e-4
            assert int(np.argmax(branch.logits)) == int(np.argmax(ref))
        assert tree.stats.evaluated_tokens == len(prompt) + len(a) + len(b)
        assert tree.stats.distinct_tokens == tree.stats.evaluated_tokens


def test_greedy_continuation_of_fork_equals_fresh(qwen: LoadedModel) -> None:
    prompt = qwen.tokenize(PROMPT)
    with KVTree(qwen, n_ctx=1024, n_seq_max=8) as tree:
        root = tree.root(prompt)
        child = tree.fork(root)
        [forked] = greedy(tree, [child], 12)
    with KVTree(qwen, n_ctx=1024, n_seq_max=2) as fresh:
        [alone] = greedy(fresh, [fresh.root(prompt)], 12)
    assert forked == alone


def test_prune_then_refork_gives_the_same(qwen: LoadedModel) -> None:
    prompt = qwen.tokenize(PROMPT)
    with KVTree(qwen, n_ctx=1024, n_seq_max=4) as tree:
        root = tree.root(prompt)
        first = tree.fork(root)
        [one] = greedy(tree, [first], 10)
        live_before = tree.stats.live_cells
        tree.prune(first)
        assert tree.stats.live_cells == live_before - 10
        second = tree.fork(root)
        [two] = greedy(tree, [second], 10)
    assert one == two


def test_batched_branches_equal_each_alone(qwen: LoadedModel) -> None:
    prompt = qwen.tokenize(PROMPT)
    starts = [qwen.tokenize(s, bos=False) for s in ("1.", "First,", "The moon")]
    with KVTree(qwen, n_ctx=2048, n_seq_max=8) as tree:
        root = tree.root(prompt)
        kids = [tree.fork(root) for _ in starts]
        for kid, start in zip(kids, starts):
            tree.extend([(kid, start)])
        together = greedy(tree, kids, 10)
    for start, expected in zip(starts, together):
        with KVTree(qwen, n_ctx=1024, n_seq_max=2) as alone:
            branch = alone.root(prompt)
            alone.extend([(branch, start)])
            [got] = greedy(alone, [branch], 10)
        assert got == expected


@pytest.mark.parametrize("recompute_max", [0, 10_000])
def test_evicted_branches_continue_the_same(qwen: LoadedModel, recompute_max: int) -> None:
    """Under a tight budget branches are parked (or dropped and recomputed) and come back intact."""
    prompt = qwen.tokenize(PROMPT)
    starts = [qwen.tokenize(s, bos=False) for s in ("1.", "First,", "The moon")]
    with KVTree(qwen, n_ctx=2048, n_seq_max=8) as roomy:
        root = roomy.root(prompt)
        kids = [roomy.fork(root) for _ in starts]
        roomy.extend(list(zip(kids, starts)))
        expected = [greedy(roomy, [k], 12)[0] for k in kids]
        expected += [greedy(roomy, [k], 6)[0] for k in kids]
    budget = len(prompt) + 45
    with KVTree(qwen, n_ctx=2048, n_seq_max=8, kv_budget=budget, recompute_max_tokens=recompute_max) as tight:
        root = tight.root(prompt)
        kids = [tight.fork(root) for _ in starts]
        for kid, start in zip(kids, starts):
            tight.extend([(kid, start)])
        got = [greedy(tight, [k], 12)[0] for k in kids]
        got += [greedy(tight, [k], 6)[0] for k in kids]  # brings evicted branches back
        assert tight.stats.peak_cells <= budget
        if recompute_max == 0:
            assert tight.stats.parked > 0 and tight.stats.restored > 0
        else:
            assert tight.stats.recomputed_tokens > 0
    assert got == expected


def test_hidden_state_equals_separate_embedding_pass(qwen: LoadedModel) -> None:
    prompt = qwen.tokenize(PROMPT)
    with KVTree(qwen, n_ctx=1024, n_seq_max=4, hidden=True) as tree:
        root = tree.root(prompt)
        kids = [tree.fork(root), tree.fork(root)]
        rows = [(kids[0], qwen.tokenize("The", bos=False)[0]), (kids[1], qwen.tokenize("1", bos=False)[0])]
        tree.step_batch(rows, [True, True])
        for kid, (_, tok) in zip(kids, rows):
            ref = hidden_states(qwen, prompt + [tok], split=len(prompt))[-1]
            assert kid.hidden is not None
            assert np.allclose(kid.hidden, ref, atol=1e-4), np.max(np.abs(kid.hidden - ref))
            one_batch = hidden_states(qwen, prompt + [tok])[-1]
            cosine = kid.hidden @ one_batch / (np.linalg.norm(kid.hidden) * np.linalg.norm(one_batch))
            assert cosine > 0.99


def test_step_mean_is_the_mean_of_the_step_tokens_states(qwen: LoadedModel) -> None:
    prompt = qwen.tokenize(PROMPT)
    step = qwen.tokenize(" The moon is", bos=False)
    with KVTree(qwen, n_ctx=1024, n_seq_max=4, hidden=True) as tree:
        root = tree.root(prompt)
        sampled, replayed = tree.fork(root), tree.fork(root)
        for j, tok in enumerate(step):  # as generation decodes a step: a row a token, at rest on the last
            tree.step_batch([(sampled, tok)], [j == len(step) - 1])
            assert (sampled.hidden_mean is None) == (j < len(step) - 1)
        tree.extend([(replayed, step[:-1])], pool=True, rest=False)  # as a bank's replay decodes a step's text
        assert replayed.logits is None and replayed.hidden_mean is None
        tree.extend([(replayed, step[-1:])])
        rows = hidden_states(qwen, prompt + step, split=len(prompt))
        for branch in (sampled, replayed):
            assert branch.hidden_mean is not None and branch.pooled == 0 and branch.pool is None
            cosine = branch.hidden_mean @ rows.mean(0) / (np.linalg.norm(branch.hidden_mean) *
                                                          np.linalg.norm(rows.mean(0)))
            assert cosine > 0.999, cosine
            assert np.allclose(branch.hidden, rows[-1], atol=0.05)
            assert not np.allclose(branch.hidden_mean, branch.hidden, atol=0.05)  # a mean, not the last state
        # A child's step starts afresh: its mean covers its own tokens only.
        child = tree.fork(sampled)
        tree.step_batch([(child, step[0])], [True])
        assert np.array_equal(child.hidden_mean, child.hidden)


def test_a_tapped_middle_layer_follows_each_branch_through_a_shared_batch(qwen: LoadedModel) -> None:
    prompt = qwen.tokenize(PROMPT)
    layer = qwen.n_layer // 2
    tokens = [qwen.tokenize(" The", bos=False)[0], qwen.tokenize("1", bos=False)[0]]
    alone = []
    for tok in tokens:  # each branch in a tree of its own
        with KVTree(qwen, n_ctx=1024, n_seq_max=2, hidden=True, tap_layer=layer) as tree:
            kid = tree.fork(tree.root(prompt))
            tree.step_batch([(kid, tok)], [True])
            alone.append(kid.mid)
    with KVTree(qwen, n_ctx=1024, n_seq_max=4, hidden=True, tap_layer=layer) as tree:
        root = tree.root(prompt)
        kids = [tree.fork(root), tree.fork(root)]
        tree.step_batch(list(zip(kids, tokens)), [True, True])
        for kid, ref, other in zip(kids, alone, alone[::-1]):
            assert kid.mid is not None and kid.mid.shape == (qwen.n_embd,)
            assert np.allclose(kid.mid, ref, atol=1e-3), np.max(np.abs(kid.mid - ref))
            assert not np.allclose(kid.mid, other, atol=0.1)  # its own row, not its neighbour's
            assert np.sqrt(np.mean(kid.mid ** 2)) == pytest.approx(1.0, abs=1e-3)  # RMS-normalised
            assert np.array_equal(kid.mid_mean, kid.mid)  # a one-token step
        # The step mean of the tap layer, replayed: pooled rows of every token.
        step = qwen.tokenize(" The moon is", bos=False)
        replayed = tree.fork(root)
        tree.extend([(replayed, step[:-1])], pool=True, rest=False)
        tree.extend([(replayed, step[-1:])])
        assert replayed.mid_mean is not None and not np.allclose(replayed.mid_mean, replayed.mid, atol=0.05)
    with KVTree(qwen, n_ctx=1024, n_seq_max=2, hidden=True) as tree:  # no tap: no middle states
        kid = tree.fork(tree.root(prompt))
        tree.step_batch([(kid, tokens[0])], [True])
        assert kid.mid is None and kid.mid_mean is None and kid.hidden is not None
