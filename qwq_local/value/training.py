"""Train a Q-value head on (hidden state, Q label) pairs with numpy only, and measure it on held-out problems."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qwq_local.value.qhead import KINDS, QHeadWeights, sigmoid

Params = dict[str, np.ndarray]
EpochCallback = Callable[[int, float, float], None]  # (epoch, train loss, validation loss)
_CHUNK = 4096
DEFAULT_LR = {"linear": 1e-2, "mlp": 3e-3}  # Adam step sizes that converge in tens of epochs


@dataclass
class ReliabilityBin:
    """One bin of a reliability diagram: predictions in [low, high), their mean, and the observed rate."""

    low: float
    high: float
    mean_predicted: float | None  # None for an empty bin
    mean_observed: float | None
    count: int


@dataclass
class Metrics:
    """How well predictions `p` match labels `y` (binarised at 0.5 for AUC and accuracy)."""

    n: int
    positives: int
    auc: float  # NaN when only one class is present
    brier: float
    ece: float
    accuracy: float
    log_loss: float
    reliability: list[ReliabilityBin]


@dataclass
class TrainReport:
    """What training did and how the head scores on the training and held-out problems."""

    kind: str
    hidden: int
    n_train: int
    n_val: int
    n_test: int
    n_train_groups: int
    val_groups: list[Any]  # problems whose loss chose the epoch (early stopping)
    test_groups: list[Any]  # problems seen by nothing in training: the head's reported metrics
    epochs_run: int
    best_epoch: int  # 1-based epoch whose weights were kept
    stopped_early: bool
    train_loss: list[float]  # mean (class-weighted) BCE of each epoch's minibatches
    val_loss: list[float]  # (class-weighted) BCE on the early-stopping split after each epoch
    class_weights: dict[str, float]  # sample weight of positive (y >= 0.5) and negative states
    prior_shift: float  # added to the output bias to undo class balancing (0 without balance or prior_correction)
    train: Metrics
    val: Metrics
    test: Metrics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def head_metrics(self) -> dict[str, float]:
        """The held-out numbers a head file records (`QHeadMeta.metrics`): on the test problems, which neither
        fitted the weights nor chose the epoch."""
        return {"auc": self.test.auc, "ece": self.test.ece, "brier": self.test.brier, "accuracy": self.test.accuracy}


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic; tied scores count one half. NaN without both classes."""
    positive = np.asarray(y, dtype=np.float64) >= 0.5
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each distinct score
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between predicted probability and (soft) label."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1] (the last one closed): mean prediction, mean label and count in each."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        table.append(ReliabilityBin(
            low=b / bins, high=(b + 1) / bins,
            mean_predicted=float(p[mask].mean()) if count else None,
            mean_observed=float(y[mask].mean()) if count else None,
            count=count,
        ))
    return table


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |mean prediction - mean label| over equal-width bins."""
    table = reliability_table(y, p, bins)
    n = sum(row.count for row in table)
    if n == 0:
        return math.nan
    return float(sum(
        row.count * abs(row.mean_predicted - row.mean_observed)  # type: ignore[operator]
        for row in table if row.count
    ) / n)


def evaluate(y: np.ndarray, p: np.ndarray, bins: int = 10) -> Metrics:
    """All the held-out numbers for predictions `p` against labels `y`."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    return Metrics(
        n=int(y.size),
        positives=int((y >= 0.5).sum()),
        auc=roc_auc(y, p),
        brier=brier_score(y, p),
        ece=expected_calibration_error(y, p, bins),
        accuracy=float(np.mean((p >= 0.5) == (y >= 0.5))) if y.size else math.nan,
        log_loss=float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))) if y.size else math.nan,
        reliability=reliability_table(y, p, bins),
    )


def split_by_group(
    groups: np.ndarray, val_fraction: float, seed: int, y: np.ndarray | None = None, tries: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation) with whole groups (problems) on one side; val gets ~val_fraction of groups.

    With labels `y`, up to `tries` shuffles are drawn to find one where both sides hold both classes (failing
    that, one where at least the training side does).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.reshape(-1)
    if unique.size < 2:
        raise ValueError(f"need states from at least 2 problems to hold some out, got {unique.size}")
    n_val = min(max(1, round(val_fraction * unique.size)), unique.size - 1)
    rng = np.random.default_rng(seed)
    positive = None if y is None else np.asarray(y) >= 0.5

    def mixed(rows: np.ndarray) -> bool:
        return positive is None or 0 < positive[rows].sum() < rows.size

    best, best_score = None, -1
    for _ in range(tries):
        is_val_group = np.zeros(unique.size, dtype=bool)
        is_val_group[rng.permutation(unique.size)[:n_val]] = True
        is_val = is_val_group[inverse]
        split = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        score = 2 * mixed(split[0]) + mixed(split[1])
        if score > best_score:
            best, best_score = split, score
        if score == 3:
            break
    assert best is not None
    return best


def split_three_ways(
    groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int, y: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, validation, test), each problem on one side; needs at least 3 problems (2 with no test
    split: `test_fraction` 0, for a caller that holds problems out itself, as cross-fitting does)."""
    if not (0 < val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction must be > 0 and test_fraction >= 0 with a sum below 1, "
                         f"got {val_fraction} and {test_fraction}")
    groups = np.asarray(groups)
    needed = 3 if test_fraction else 2
    if np.unique(groups).size < needed:
        raise ValueError(f"need states from at least {needed} problems (train, validation{', test' * (needed == 3)}), "
                         f"got {np.unique(groups).size}")
    if test_fraction:
        rest, test = split_by_group(groups, test_fraction, seed, y)
    else:
        rest, test = np.arange(groups.size), np.zeros(0, dtype=np.int64)
    train, val = split_by_group(groups[rest], val_fraction / (1 - test_fraction), seed + 1,
                                None if y is None else np.asarray(y)[rest])
    return rest[train], rest[val], test


def _group_list(groups: np.ndarray) -> list[Any]:
    return [g.item() if isinstance(g, np.generic) else g for g in np.unique(groups)]


def _class_weights(positive: np.ndarray, balance: bool) -> tuple[float, float]:
    """Sample weights (positive, negative) giving both classes equal total weight, or (1, 1)."""
    n, n_pos = positive.size, int(positive.sum())
    if not balance or n_pos in (0, n):
        return 1.0, 1.0
    return n / (2.0 * n_pos), n / (2.0 * (n - n_pos))


def _init(kind: str, n_embd: int, hidden: int, bias: float, rng: np.random.Generator) -> Params:
    if kind == "linear":
        return {"w": np.zeros(n_embd), "b": np.array([bias])}
    return {
        "w1": rng.normal(0.0, math.sqrt(2.0 / n_embd), size=(hidden, n_embd)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0.0, math.sqrt(1.0 / hidden), size=hidden),
        "b2": np.array([bias]),
    }


def _forward(params: Params, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Logits, plus the MLP's pre-activation and activation (for the backward pass)."""
    if "w" in params:
        return xs @ params["w"] + params["b"][0], None, None
    pre = xs @ params["w1"].T + params["b1"]
    act = np.maximum(pre, 0.0)
    return act @ params["w2"] + params["b2"][0], pre, act


def _bce(z: np.ndarray, y: np.ndarray, sw: np.ndarray) -> float:
    """Weighted mean binary cross-entropy from logits (stable for large |z|)."""
    return float(np.sum(sw * (np.logaddexp(0.0, z) - y * z)) / np.sum(sw))


def _gradients(params: Params, xs: np.ndarray, y: np.ndarray, sw: np.ndarray, l2: float) -> tuple[float, Params]:
    z, pre, act = _forward(params, xs)
    dz = sw * (sigmoid(z) - y) / np.sum(sw)
    loss = _bce(z, y, sw)
    if pre is None:
        return loss, {"w": xs.T @ dz + l2 * params["w"], "b": np.array([dz.sum()])}
    dpre = np.outer(dz, params["w2"]) * (pre > 0)
    return loss, {
        "w1": dpre.T @ xs + l2 * params["w1"],
        "b1": dpre.sum(axis=0),
        "w2": act.T @ dz + l2 * params["w2"],  # type: ignore[union-attr]
        "b2": np.array([dz.sum()]),
    }


@dataclass
class _Adam:
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: Params = field(default_factory=dict)
    v: Params = field(default_factory=dict)

    def step(self, params: Params, grads: Params) -> None:
        self.t += 1
        for name, g in grads.items():
            m = self.m[name] = self.beta1 * self.m.get(name, 0.0) + (1 - self.beta1) * g
            v = self.v[name] = self.beta2 * self.v.get(name, 0.0) + (1 - self.beta2) * g * g
            m_hat = m / (1 - self.beta1 ** self.t)
            v_hat = v / (1 - self.beta2 ** self.t)
            params[name] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _logits(params: Params, X: np.ndarray, idx: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = np.empty(idx.size)
    for start in range(0, idx.size, _CHUNK):
        rows = idx[start:start + _CHUNK]
        out[start:start + _CHUNK] = _forward(params, (X[rows] - mean) / std)[0]
    return out


def _check_inputs(X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array [states, n_embd], got shape {X.shape}")
    if y.shape != (X.shape[0],) or groups.shape != (X.shape[0],):
        raise ValueError(f"y {y.shape} and groups {groups.shape} must both have shape ({X.shape[0]},)")
    if not np.all(np.isfinite(y)) or y.min() < 0 or y.max() > 1:
        raise ValueError("labels y must be finite and in [0, 1]")
    if not np.all(np.isfinite(X)):
        raise ValueError("X holds NaN or infinite values")


def train_head(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    kind: str = "linear",
    hidden: int = 64,
    lr: float | None = None,
    epochs: int = 100,
    l2: float = 1e-4,
    batch_size: int = 256,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    patience: int = 10,
    seed: int = 0,
    balance: bool = True,
    prior_correction: bool = True,
    on_epoch: EpochCallback | None = None,
) -> tuple[QHeadWeights, TrainReport]:
    """Fit a head with Adam on class-weighted binary cross-entropy; keep the epoch with the lowest validation loss.

    Problems (`groups`) are split whole into train, validation (early stopping) and test (the reported metrics,
    untouched by training); about `val_fraction` and `test_fraction` of the problems each. Inputs are standardised
    with the training split's mean and std. With `balance`, positive (y >= 0.5) and negative states get equal total weight; with
    `prior_correction` too, the output bias is then shifted by log(n_pos / n_neg) so that the predictions are
    probabilities under the real class ratio again (without it they are as if both classes were equally common).
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    groups = np.asarray(groups)
    _check_inputs(X, y, groups, kind)
    train, val, test = split_three_ways(groups, val_fraction, test_fraction, seed, y)
    positive = y >= 0.5
    n_pos = int(positive[train].sum())
    if n_pos in (0, train.size):
        raise ValueError("the training labels are all one class: need both states that lead to a right answer "
                         "and states that do not")
    w_pos, w_neg = _class_weights(positive[train], balance)
    sw = np.where(positive, w_pos, w_neg)

    mean = X[train].mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X[train].std(axis=0, dtype=np.float64).astype(np.float32)
    std[std < 1e-6] = 1.0  # constant features: leave them centred at 0

    rng = np.random.default_rng(seed)
    prior = float(np.sum(sw[train] * y[train]) / np.sum(sw[train]))
    params = _init(kind, X.shape[1], hidden, math.log(prior / (1 - prior)), rng)
    adam = _Adam(lr if lr is not None else DEFAULT_LR[kind])
    best = {k: v.copy() for k, v in params.items()}
    best_loss, best_epoch, waited = math.inf, 0, 0
    train_losses: list[float] = []
    val_losses: list[float] = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(train)
        total = 0.0
        for start in range(0, order.size, batch_size):
            rows = order[start:start + batch_size]
            loss, grads = _gradients(params, (X[rows] - mean) / std, y[rows], sw[rows], l2)
            adam.step(params, grads)
            total += loss * rows.size
        train_losses.append(total / order.size)
        val_losses.append(_bce(_logits(params, X, val, mean, std), y[val], sw[val]))
        if on_epoch is not None:
            on_epoch(epoch, train_losses[-1], val_losses[-1])
        if val_losses[-1] < best_loss - 1e-7:
            best_loss, best_epoch, waited = val_losses[-1], epoch, 0
            best = {k: v.copy() for k, v in params.items()}
        else:
            waited += 1
            if waited >= patience:
                break

    shift = math.log(n_pos / (train.size - n_pos)) if balance and prior_correction else 0.0
    best["b" if kind == "linear" else "b2"] += shift
    weights = QHeadWeights(mean=mean, std=std, **best)
    report = TrainReport(
        kind=kind,
        hidden=hidden if kind == "mlp" else 0,
        n_train=int(train.size),
        n_val=int(val.size),
        n_test=int(test.size),
        n_train_groups=int(np.unique(groups[train]).size),
        val_groups=_group_list(groups[val]),
        test_groups=_group_list(groups[test]),
        epochs_run=len(train_losses),
        best_epoch=best_epoch,
        stopped_early=len(train_losses) < epochs,
        train_loss=train_losses,
        val_loss=val_losses,
        class_weights={"positive": w_pos, "negative": w_neg},
        prior_shift=shift,
        train=evaluate(y[train], _predict(weights, X, train)),
        val=evaluate(y[val], _predict(weights, X, val)),
        test=evaluate(y[test], _predict(weights, X, test)),
    )
    return weights, report


def _predict(weights: QHeadWeights, X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.concatenate([weights.predict(X[idx[s:s + _CHUNK]]) for s in range(0, idx.size, _CHUNK)] or [np.empty(0)])
