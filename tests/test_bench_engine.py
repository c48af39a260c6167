"""`qwq bench engine` and `qwq bench chat` on the real tiny model: the figures they print are what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwq_local.bench.engine_bench import SearchShape, bench_chat, bench_engine
from qwq_local.bench.run import format_engine
from qwq_local.engine.model import LoadedModel, LoadOptions

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smol(smollm_path: Path) -> LoadedModel:
    model = LoadedModel(smollm_path, LoadOptions(n_ctx=1024))
    yield model
    model.close()


def test_engine_bench_tree_evaluates_each_token_once_and_naive_does_not(smol: LoadedModel) -> None:
    shape = SearchShape(prompt_tokens=60, depth=3, branching=3, step_tokens=12, expansions=4, seed=3)
    report = bench_engine(smol, shape, ks=(1, 2), steps=8)
    tree, naive = report.tree, report.naive
    assert tree["generated_tokens"] > 0 and naive["generated_tokens"] > 0
    assert tree["evaluated_tokens"] == tree["distinct_tokens"] and tree["recompute_ratio"] == 1.0
    assert abs(tree["llama_perf_evaluated"] - tree["evaluated_tokens"]) <= 1  # llama.cpp's own count agrees
    assert naive["recompute_ratio"] > 1.0  # re-prefilling the prefix of every child costs tokens
    assert tree["peak_kv_cells"] <= tree["kv_budget"] and tree["peak_kv_cells"] >= tree["distinct_tokens"] // 2
    assert [row["k"] for row in report.batched] == [1, 2]
    assert all(row["tree_tok_s"] > 0 and row["raw_tok_s"] > 0 and row["ratio"] > 0 for row in report.batched)
    assert report.peak_rss_mib > 0
    table = format_engine(report)
    assert "KV tree" in table and "naive Llama" in table and "1.000" in table


def test_chat_bench_second_turn_evaluates_only_new_tokens(smol: LoadedModel) -> None:
    report = bench_chat(smol, max_tokens=16, runs=1)
    assert report.qwq_tok_s > 0 and report.llama_cpp_tok_s > 0
    assert 0 < report.turn2_evaluated_tokens < report.turn2_prompt_tokens // 2
