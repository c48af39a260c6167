"""Training Q-value heads with numpy: accuracy, calibration, group split, class balance, early stopping, metrics."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwq_local.errors import HeadMismatchError, InputFileError
from qwq_local.value.labels import HEADER, LabelRow, LabelStore
from qwq_local.value.qhead import QHead, QHeadMeta, sigmoid, write_head
from qwq_local.value.training import (
    brier_score,
    expected_calibration_error,
    reliability_table,
    roc_auc,
    split_by_group,
    train_head,
)

N_EMBD = 16


def synthetic(seed: int = 0, n_problems: int = 200, per_problem: int = 10, offset: float = 0.0, scale: float = 5.0):
    """Hidden states ~ N(1, 2^2) with P(y=1) = sigmoid(z*·w* - offset): separable up to logistic label noise."""
    rng = np.random.default_rng(seed)
    n = n_problems * per_problem
    X = (rng.normal(size=(n, N_EMBD)) * 2 + 1).astype(np.float32)
    w_star = rng.normal(size=N_EMBD)
    w_star *= scale / np.linalg.norm(w_star)
    y = (rng.random(n) < sigmoid((X - 1) / 2 @ w_star - offset)).astype(np.float64)
    groups = np.repeat(np.array([f"p{i}" for i in range(n_problems)]), per_problem)
    return X, y, groups


def val_mask(groups: np.ndarray, report) -> np.ndarray:
    return np.isin(groups, report.val_groups)


def train_mask(groups: np.ndarray, report) -> np.ndarray:
    return ~np.isin(groups, report.val_groups) & ~np.isin(groups, report.test_groups)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_learns_separable_data_and_calibrates(kind: str) -> None:
    X, y, groups = synthetic()
    weights, report = train_head(X, y, groups, kind=kind, hidden=16)
    assert weights.kind == kind
    assert report.test.auc > 0.9
    assert report.test.ece < 0.1
    assert report.test.accuracy > 0.8
    assert report.test.n == report.n_test and report.n_train + report.n_val + report.n_test == len(y)
    # The head's recorded numbers are those of the returned weights on the test rows, which chose nothing.
    mask = np.isin(groups, report.test_groups)
    assert roc_auc(y[mask], weights.predict(X[mask])) == pytest.approx(report.test.auc)
    assert report.head_metrics()["auc"] == report.test.auc
    assert sum(row.count for row in report.test.reliability) == report.n_test


def test_trained_head_round_trips_through_a_file(tmp_path: Path) -> None:
    X, y, groups = synthetic(seed=3)
    weights, report = train_head(X, y, groups, kind="mlp", hidden=8, epochs=5)
    metrics = report.head_metrics()
    meta = QHeadMeta(architecture="qwen2", n_embd=N_EMBD, n_problems=200, n_states=len(y), metrics=metrics)
    head = QHead.load(write_head(tmp_path / "h.gguf", weights, meta), architecture="qwen2", n_embd=N_EMBD)
    np.testing.assert_array_equal(head.predict(X), weights.predict(X))
    assert head.meta.metrics == report.head_metrics()
    json.dumps(report.to_dict())  # plain data all the way down


def test_soft_labels_are_accepted() -> None:
    X, y, groups = synthetic(seed=4)
    rng = np.random.default_rng(0)
    soft = np.clip(y * 0.8 + rng.random(len(y)) * 0.2, 0, 1)  # like q_mean over a few rollouts
    _, report = train_head(X, soft, groups, epochs=20)
    assert report.test.auc > 0.85


def test_validation_and_test_groups_never_straddle() -> None:
    X, y, groups = synthetic(seed=1, n_problems=50)
    _, report = train_head(X, y, groups, epochs=2)
    in_val, in_test = val_mask(groups, report), np.isin(groups, report.test_groups)
    assert report.n_val == int(in_val.sum()) == 10 * len(report.val_groups) == 100
    assert report.n_test == int(in_test.sum()) == 10 * len(report.test_groups) == 100
    assert not set(report.val_groups) & set(report.test_groups)
    assert report.n_train_groups + len(report.val_groups) + len(report.test_groups) == 50


def test_too_few_problems_for_three_splits() -> None:
    X, y, groups = synthetic(seed=1, n_problems=2)
    with pytest.raises(ValueError, match="at least 3 problems"):
        train_head(X, y, groups, epochs=2)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(st.integers(0, 12), min_size=2, max_size=80).filter(lambda g: len(set(g)) >= 2),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
)
def test_split_by_group_keeps_each_group_on_one_side(groups: list[int], fraction: float, seed: int) -> None:
    g = np.array(groups)
    train, val = split_by_group(g, fraction, seed, y=np.arange(len(g)) % 2)
    assert train.size and val.size
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(g)))
    assert not set(g[train].tolist()) & set(g[val].tolist())


def test_split_prefers_both_classes_on_each_side() -> None:
    groups = np.repeat(np.arange(10), 3)
    y = (groups == 7).astype(float)  # only one problem has positives
    for seed in range(20):
        train, _ = split_by_group(groups, 0.2, seed, y)
        assert y[train].sum() > 0  # the single positive problem lands in training: it cannot be on both sides
    y = ((groups == 7) | (groups == 2)).astype(float)
    for seed in range(20):
        train, val = split_by_group(groups, 0.2, seed, y)
        assert y[train].sum() > 0 and y[val].sum() > 0


def test_class_balance_on_ten_to_one_data() -> None:
    X, y, groups = synthetic(seed=2, offset=10.0, scale=8.0)
    assert 0.05 < y.mean() < 0.12  # about 10:1
    weights, report = train_head(X, y, groups)
    positive = y >= 0.5
    in_train = train_mask(groups, report)
    w_pos, w_neg = report.class_weights["positive"], report.class_weights["negative"]
    assert w_pos * positive[in_train].sum() == pytest.approx(w_neg * (~positive[in_train]).sum())
    assert w_pos > 5 * w_neg
    p = weights.predict(X)
    assert 0.02 < (p >= 0.5).mean() < 0.5  # not all one class
    assert report.test.auc > 0.9
    assert p[positive].mean() > 0.5 > p[~positive].mean()
    assert report.test.ece < 0.1  # the prior shift restores calibration under the real 10:1 ratio


def test_prior_correction_only_shifts_the_bias() -> None:
    X, y, groups = synthetic(seed=2, offset=10.0, scale=8.0)
    corrected, report = train_head(X, y, groups, epochs=10)
    balanced, plain_report = train_head(X, y, groups, epochs=10, prior_correction=False)
    in_train = train_mask(groups, report)
    n_pos = int((y[in_train] >= 0.5).sum())
    assert report.prior_shift == pytest.approx(math.log(n_pos / (in_train.sum() - n_pos)))
    assert plain_report.prior_shift == 0.0
    np.testing.assert_allclose(corrected.logits(X) - balanced.logits(X), report.prior_shift, atol=1e-5)
    assert (balanced.predict(X) >= 0.5).mean() > (corrected.predict(X) >= 0.5).mean()


def test_early_stopping_restores_the_best_epoch() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 64)).astype(np.float32)
    y = (rng.random(300) < 0.5).astype(float)  # pure noise: validation loss soon rises
    groups = np.repeat(np.arange(60), 5)
    weights, report = train_head(
        X, y, groups, kind="mlp", hidden=32, lr=1e-2, l2=0.0, epochs=200, patience=5, balance=False,
    )
    assert report.stopped_early and report.epochs_run == report.best_epoch + 5 < 200
    assert report.val_loss[report.best_epoch - 1] == min(report.val_loss) < report.val_loss[-1]
    mask = val_mask(groups, report)
    p = np.clip(weights.predict(X[mask]), 1e-12, 1 - 1e-12)
    kept_loss = float(-np.mean(y[mask] * np.log(p) + (1 - y[mask]) * np.log(1 - p)))
    assert kept_loss == pytest.approx(min(report.val_loss), abs=1e-5)


def test_training_is_deterministic_for_a_seed() -> None:
    X, y, groups = synthetic(seed=6, n_problems=40)
    a, _ = train_head(X, y, groups, kind="mlp", hidden=8, epochs=3, seed=11)
    b, _ = train_head(X, y, groups, kind="mlp", hidden=8, epochs=3, seed=11)
    for name, tensor in a.tensors().items():
        np.testing.assert_array_equal(tensor, b.tensors()[name])


def test_on_epoch_reports_each_epoch() -> None:
    X, y, groups = synthetic(seed=7, n_problems=20)
    seen: list[int] = []
    _, report = train_head(X, y, groups, epochs=4, patience=10, on_epoch=lambda e, t, v: seen.append(e))
    assert seen == [1, 2, 3, 4] == list(range(1, report.epochs_run + 1))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda X, y, g: (X, np.zeros_like(y), g), "all one class"),
        (lambda X, y, g: (X, y, np.zeros_like(g)), "at least 3 problems"),
        (lambda X, y, g: (X, y * 2, g), "in \\[0, 1\\]"),
        (lambda X, y, g: (X[:, 0], y, g), "2-D"),
        (lambda X, y, g: (X, y[:-1], g), "must both have shape"),
        (lambda X, y, g: (np.where(X > 3, np.nan, X), y, g), "NaN"),
    ],
)
def test_bad_inputs_are_refused(change, message: str) -> None:
    X, y, groups = synthetic(seed=8, n_problems=10)
    with pytest.raises(ValueError, match=message):
        train_head(*change(X, y, groups), epochs=1)


def brute_force_auc(y: list[bool], s: list[float]) -> float:
    pos = [si for yi, si in zip(y, s) if yi]
    neg = [si for yi, si in zip(y, s) if not yi]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=60))
def test_auc_equals_pairwise_count(pairs: list[tuple[bool, int]]) -> None:
    y = [p[0] for p in pairs]
    s = [p[1] / 7 for p in pairs]  # few distinct values: many ties
    if all(y) or not any(y):
        assert math.isnan(roc_auc(np.array(y), np.array(s)))
    else:
        assert roc_auc(np.array(y, dtype=float), np.array(s)) == pytest.approx(brute_force_auc(y, s))


def test_calibration_metrics_by_hand() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 1.0])
    y = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    table = reliability_table(y, p)
    assert [row.count for row in table] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 3]
    assert table[0].mean_predicted == pytest.approx(0.05) and table[0].mean_observed == pytest.approx(0.5)
    assert table[1].mean_predicted is None
    assert table[9].mean_predicted == pytest.approx((0.95 + 0.95 + 1.0) / 3) and table[9].mean_observed == 1.0
    expected = (2 * 0.45 + 1 * 0.55 + 3 * (1 - (0.95 + 0.95 + 1.0) / 3)) / 6
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2))
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


# --- the label store -------------------------------------------------------------------------------------------


def label_rows(problem: str, n: int, seed: int = 0, n_embd: int = N_EMBD) -> list[LabelRow]:
    rng = np.random.default_rng([zlib.crc32(problem.encode()), seed])
    return [
        LabelRow(problem_id=problem, step_index=i, step_text=f"step {i} of {problem}\n\n", q_max=float(i % 2),
                 q_mean=0.25 * (i % 2), n_rollouts=4, correct=[i % 2 == 1, False, False, False],
                 hidden=rng.normal(size=n_embd).astype(np.float32))
        for i in range(n)
    ]


def assert_loaded(store: LabelStore, expected: list[LabelRow]) -> None:
    X, y_max, y_mean, groups = store.load()
    assert X.dtype == np.float32 and X.shape == (len(expected), N_EMBD)
    np.testing.assert_array_equal(X, np.stack([r.hidden for r in expected]))
    assert y_max.tolist() == [r.q_max for r in expected]
    assert y_mean.tolist() == [r.q_mean for r in expected]
    assert groups.tolist() == [r.problem_id for r in expected]


def test_label_store_write_reopen_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "labels" / "states.jsonl"
    p1, p2, p3 = label_rows("p1", 3), label_rows("p2", 2), label_rows("p3", 4)
    store = LabelStore(path)
    assert store.done_problems() == set() and len(store) == 0 and store.rows() == []  # no file yet
    store.append(p1)
    store.append(p2)
    assert store.done_problems() == {"p1", "p2"}
    assert_loaded(store, p1 + p2)

    reopened = LabelStore(path)  # a resumed run
    assert reopened.done_problems() == {"p1", "p2"} and len(reopened) == 5
    reopened.append(p3)
    assert_loaded(LabelStore(path), p1 + p2 + p3)
    rows = LabelStore(path).rows()
    assert rows[0].correct == [False, False, False, False] and rows[1].correct == [True, False, False, False]
    assert rows[4].step_text == "step 1 of p2\n\n" and rows[4].n_rollouts == 4 and rows[4].step_index == 1


def test_label_store_ignores_a_torn_last_line_and_repairs_it(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"
    p1, p2 = label_rows("p1", 2), label_rows("p2", 3)
    LabelStore(path).append(p1)
    committed = path.read_bytes()
    with path.open("ab") as f:  # a crash half-way through p2's append
        f.write((p2[0].to_json() + "\n" + p2[1].to_json()[:100]).encode())
    store = LabelStore(path)
    assert store.done_problems() == {"p1"}
    assert_loaded(store, p1)
    store.append(p2)  # the resumed run redoes p2
    assert path.read_bytes().startswith(committed)
    assert all(json.loads(line) for line in path.read_bytes().splitlines())
    assert_loaded(LabelStore(path), p1 + p2)


def test_label_store_drops_rows_without_their_commit_line(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"
    p1 = label_rows("p1", 2)
    LabelStore(path).append(p1)
    with path.open("ab") as f:  # whole row lines, but the crash came before the commit line
        f.write("".join(r.to_json() + "\n" for r in label_rows("p2", 2)).encode())
    assert LabelStore(path).done_problems() == {"p1"}
    assert_loaded(LabelStore(path), p1)


def test_label_store_drops_a_batch_with_a_corrupt_line(tmp_path: Path) -> None:
    path = tmp_path / "states.jsonl"
    p1, p2, p3 = label_rows("p1", 2), label_rows("p2", 2), label_rows("p3", 1)
    store = LabelStore(path)
    for rows in (p1, p2, p3):
        store.append(rows)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = b"\x00" * (len(lines[4]) - 1) + b"\n"  # p2's first row, zeroed by a bad disk block
    path.write_bytes(b"".join(lines))
    assert LabelStore(path).done_problems() == {"p1", "p3"}
    assert_loaded(LabelStore(path), p1 + p3)


def test_label_store_recommit_keeps_the_latest_rows(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "states.jsonl")
    store.append(label_rows("p1", 2))
    newer = label_rows("p1", 3, seed=1)
    store.append(newer + label_rows("p2", 1))
    assert_loaded(LabelStore(store.path), newer + label_rows("p2", 1))


def test_label_store_marks_problems_without_states_done(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "states.jsonl")
    store.append([], problem_id="empty")
    assert LabelStore(store.path).done_problems() == {"empty"} and len(LabelStore(store.path)) == 0
    X, y_max, _, groups = LabelStore(store.path).load()
    assert X.shape[0] == y_max.size == groups.size == 0
    with pytest.raises(ValueError, match="appended as problem"):
        store.append(label_rows("p1", 1), problem_id="p2")


def test_label_store_truncates_long_steps_and_checks_sizes(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "states.jsonl")
    row = label_rows("p1", 1)[0]
    row.step_text = "x" * 2000
    store.append([row])
    assert LabelStore(store.path).rows()[0].step_text == "x" * 500
    with pytest.raises(ValueError, match="different sizes"):
        LabelStore(store.path).append(label_rows("p2", 1, n_embd=8))
    assert LabelStore(store.path).done_problems() == {"p1"}


def test_label_store_sees_appends_from_another_handle(tmp_path: Path) -> None:
    a, b = LabelStore(tmp_path / "s.jsonl"), LabelStore(tmp_path / "s.jsonl")
    a.append(label_rows("p1", 1))
    b.append(label_rows("p2", 1))
    a.append(label_rows("p3", 1))
    assert a.done_problems() == b.done_problems() == {"p1", "p2", "p3"}


def test_label_store_writers_take_turns_on_a_file_lock(tmp_path: Path) -> None:
    import threading

    from filelock import FileLock

    from qwq_local.value.labels import lock_path

    store = LabelStore(tmp_path / "s.jsonl")
    store.append(label_rows("p1", 1))
    other = FileLock(lock_path(store.path))  # another process's writer, in the middle of its append
    other.acquire()
    writer = threading.Thread(target=lambda: LabelStore(store.path).append(label_rows("p2", 1)))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and LabelStore(store.path).done_problems() == {"p1"}
    other.release()
    writer.join(10)
    assert not writer.is_alive() and LabelStore(store.path).done_problems() == {"p1", "p2"}


def test_label_store_refuses_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text('{"question": "1+1?"}\n')
    with pytest.raises(InputFileError, match="not a qwq_local label store"):
        LabelStore(path).append(label_rows("p1", 1))
    assert path.read_text() == '{"question": "1+1?"}\n'  # never truncated


def test_label_store_with_only_a_torn_header_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(HEADER[:10])
    assert LabelStore(path).done_problems() == set()
    LabelStore(path).append(label_rows("p1", 2))
    assert_loaded(LabelStore(path), label_rows("p1", 2))


def test_label_store_keeps_which_rows_end_a_reply(tmp_path: Path) -> None:
    from dataclasses import replace

    store = LabelStore(tmp_path / "s.jsonl")
    rows = label_rows("p1", 3)
    rows[2] = replace(rows[2], terminal=True)
    store.append(rows)
    lines = store.path.read_text().splitlines()
    assert ['"terminal"' in line for line in lines[1:4]] == [False, False, True]  # said only where true
    assert [r.terminal for r in LabelStore(store.path).rows()] == [False, False, True]


def test_label_store_refuses_rows_of_another_model(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    LabelStore(path).append(label_rows("old", 1))  # written before stores named their model: taken as it is
    a, b = {"file": "a.gguf", "size": 10}, {"file": "b.gguf", "size": 10}
    LabelStore(path, model=a).append(label_rows("p1", 2))
    LabelStore(path, model=a).check_model()
    assert LabelStore(path).model is None and LabelStore(path).done_problems() == {"old", "p1"}
    other = LabelStore(path, model=b)
    with pytest.raises(HeadMismatchError, match=r"holds labels of model a\.gguf \(10 bytes\), not b\.gguf"):
        other.check_model()
    with pytest.raises(HeadMismatchError):
        other.append(label_rows("p2", 1))
    assert LabelStore(path).done_problems() == {"old", "p1"}
    LabelStore(path).append(label_rows("p3", 1))  # a handle that names no model checks nothing
    with pytest.raises(HeadMismatchError):
        LabelStore(path, model=b).check_model()  # the last commit naming a model still decides


def test_stored_labels_train_a_head(tmp_path: Path) -> None:
    X, y, groups = synthetic(seed=9, n_problems=40)
    store = LabelStore(tmp_path / "s.jsonl")
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        store.append([LabelRow(str(g), int(i), "", float(y[i]), float(y[i]), 1, [bool(y[i])], X[i]) for i in idx])
    X2, y_max, _, groups2 = LabelStore(store.path).load()
    _, report = train_head(X2, y_max, groups2, epochs=30)
    assert report.val.auc > 0.85
