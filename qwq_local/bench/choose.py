"""`qwq bench choose`: every chooser and value signal judged on the same recorded bank, in seconds.

A chooser picks one answer from a problem's leaves: `vote` (plain majority), `top:SIG` (the leaf a signal values
most), `wvote:SIG[^B]` (each leaf votes with weight exp(B·z), z its signal's z-score over the bank: weighted best-of-N,
arXiv 2408.03314 section 5.1; B = 1 by default), `filter:SIG@ETA` (DeepConf offline, arXiv 2508.15260: the vote among the top ETA
fraction of leaves by the signal). Signals are the leaves' log-prob statistics (`qwq_local.bench.bank.summarize`),
`short` (fewer tokens), `rules` (the path's arithmetic: 1 checked and right, 0 nothing to check, -1 wrong), or any
signal a caller adds (a Q-value head's value of the leaf's end state); `SIG*W+SIG*W` combines z-scores
(`tail_conf+head*0.5`). A chooser ending in `!SIG` first drops the leaves whose raw SIG is below 0, unless that
drops all of them: `wvote:tail_conf!rules` vetoes wrong arithmetic.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from qwq_local.search.answer import normalize_for_vote
from qwq_local.value.rules import check_arithmetic

STAT_SIGNALS = ("mean_logprob", "mean_conf", "low_conf", "tail_conf", "neg_entropy", "certainty")
DEFAULT_CHOOSERS = ("vote", "wvote:tail_conf", "wvote:low_conf", "wvote:mean_conf", "filter:tail_conf@0.5",
                    "filter:low_conf@0.5", "top:tail_conf", "top:low_conf")


@dataclass(frozen=True)
class Leaf:
    """What a chooser sees of one reply: its answer, whether it is right, its signals, its tree position."""

    answer: str | None
    correct: bool
    signals: Mapping[str, float | None]
    tokens: int
    node: int


@dataclass(frozen=True)
class BankProblem:
    problem_id: str
    leaves: tuple[Leaf, ...]
    parents: Mapping[int, int | None]  # node id -> parent, to count the tokens of a subset of leaves
    node_tokens: Mapping[int, int]
    generated_tokens: int


def from_records(records: Sequence[Mapping[str, Any]],
                 extra: Callable[[Mapping[str, Any]], Sequence[Mapping[str, float]]] | None = None
                 ) -> list[BankProblem]:
    """Bank lines as choosers see them; `extra(record)` adds signals per leaf (e.g. a head's values)."""
    problems = []
    for record in records:
        added = extra(record) if extra else [{} for _ in record["leaves"]]
        leaves = []
        by_id = {n["id"]: n for n in record["nodes"]}
        for leaf, more in zip(record["leaves"], added):
            signals: dict[str, float | None] = dict(leaf.get("stats") or {})
            signals["short"] = -float(leaf["tokens"])
            signals["rules"] = _rules(by_id, int(leaf["node"]))
            signals.update(more)
            leaves.append(Leaf(leaf["answer"], bool(leaf["correct"]), signals, int(leaf["tokens"]), int(leaf["node"])))
        nodes = record["nodes"]
        problems.append(BankProblem(
            str(record["problem_id"]), tuple(_spread(leaves, {n["id"]: n["parent"] for n in nodes})),
            {n["id"]: n["parent"] for n in nodes}, {n["id"]: int(n["n_tokens"]) for n in nodes},
            int(record.get("generated_tokens", 0)),
        ))
    return problems


def _rules(by_id: Mapping[int, Mapping[str, Any]], leaf: int) -> float:
    """The arithmetic of a leaf's whole path (its steps' texts, root first): 1 right, 0 nothing checked, -1 wrong."""
    texts: list[str] = []
    node: int | None = leaf
    while node is not None and node in by_id:
        texts.append(str(by_id[node].get("text") or ""))
        node = by_id[node]["parent"]
    verdict = check_arithmetic("".join(reversed(texts)))
    return 0.0 if verdict is None else 1.0 if verdict else -1.0


def _spread(leaves: list[Leaf], parents: Mapping[int, int | None]) -> list[Leaf]:
    """Leaves ordered so that the first m of them come from branches as far apart as the tree allows."""
    def ancestry(node: int) -> list[int]:
        chain = [node]
        while parents.get(chain[-1]) is not None:
            chain.append(parents[chain[-1]])  # type: ignore[arg-type]
        return chain[::-1]

    def key(leaf: Leaf) -> tuple[int, ...]:
        chain = ancestry(leaf.node)
        ranks = []
        for depth, node in enumerate(chain):
            siblings = sorted(n for n, p in parents.items() if p == (chain[depth - 1] if depth else None))
            ranks.append(siblings.index(node))
        return tuple(reversed(ranks))

    return sorted(leaves, key=key)


# ----------------------------------------------------------------------------- choosers
Chooser = Callable[[Sequence[Leaf], "Scales"], "Leaf | None"]


@dataclass(frozen=True)
class Scales:
    """Each signal's mean and spread over the whole bank, so that weights do not depend on its units."""

    mean: Mapping[str, float]
    std: Mapping[str, float]

    def z(self, name: str, value: float | None) -> float | None:
        if value is None or name not in self.mean:
            return None
        return (value - self.mean[name]) / (self.std[name] or 1.0)

    def value(self, terms: Terms, leaf: Leaf) -> float | None:
        """A leaf's signal as a z-score, or a weighted sum of z-scores; None if one is missing or not finite."""
        total = 0.0
        for name, weight in terms:
            z = self.z(name, leaf.signals.get(name))
            if z is None or not math.isfinite(z):
                return None
            total += weight * z
        return total


Terms = tuple[tuple[str, float], ...]  # a signal expression, parsed: (name, weight) pairs
_NAME = re.compile(r"[A-Za-z_]\w*")


def parse_signal(spec: str) -> Terms:
    """`tail_conf+head*0.5` -> (("tail_conf", 1.0), ("head", 0.5))."""
    terms = []
    for term in spec.split("+"):
        name, star, weight_text = term.partition("*")
        try:
            weight = float(weight_text) if star else 1.0
        except ValueError:
            weight = math.nan
        if not _NAME.fullmatch(name) or not math.isfinite(weight):
            raise ValueError(f"signal {spec!r}: write SIGNAL or SIGNAL*WEIGHT+SIGNAL*WEIGHT (tail_conf+head*0.5)")
        terms.append((name, weight))
    return tuple(terms)


@dataclass(frozen=True)
class ChooserSpec:
    """`KIND[:SIGNAL][^SHARPNESS][@ETA][!VETO]`, parsed once."""

    kind: str  # vote | top | wvote | filter
    signal: Terms = ()
    sharpness: float = 1.0
    eta: float = 0.5
    veto: str | None = None  # leaves whose raw VETO signal is below 0 are dropped first

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.signal} | ({self.veto} if self.veto else set())


def parse_chooser(spec: str) -> ChooserSpec:
    """A chooser spec, or ValueError saying how to write one."""
    body, bang, veto = spec.partition("!")
    if bang and not _NAME.fullmatch(veto):
        raise ValueError(f"chooser {spec!r}: the veto is one signal name, as in wvote:tail_conf!rules")
    kind, _, rest = body.partition(":")
    if kind == "vote" and not rest:
        return ChooserSpec("vote", veto=veto or None)
    rest, _, sharp_text = rest.partition("^")
    signal, _, eta_text = rest.partition("@")
    if not signal or kind not in ("top", "wvote", "filter") or (eta_text and kind != "filter") or (
            sharp_text and kind != "wvote"):
        raise ValueError(f"chooser {spec!r}: write vote, top:SIGNAL, wvote:SIGNAL[^SHARPNESS] or filter:SIGNAL@ETA")
    try:
        sharpness = float(sharp_text) if sharp_text else 1.0
    except ValueError:
        raise ValueError(f"chooser {spec!r}: SHARPNESS must be a number such as 2") from None
    try:
        eta = float(eta_text) if eta_text else 0.5
    except ValueError:
        raise ValueError(f"chooser {spec!r}: ETA must be a fraction such as 0.5") from None
    if not 0 < eta <= 1:
        raise ValueError(f"chooser {spec!r}: ETA must be in (0, 1]")
    return ChooserSpec(kind, parse_signal(signal), sharpness, eta, veto or None)


def bank_scales(problems: Sequence[BankProblem]) -> Scales:
    values: dict[str, list[float]] = {}
    for problem in problems:
        for leaf in problem.leaves:
            for name, value in leaf.signals.items():
                if value is not None and math.isfinite(value):
                    values.setdefault(name, []).append(value)
    mean = {k: sum(v) / len(v) for k, v in values.items()}
    std = {k: math.sqrt(sum((x - mean[k]) ** 2 for x in v) / len(v)) for k, v in values.items()}
    return Scales(mean, std)


def weighted_vote(leaves: Sequence[Leaf], weights: Sequence[float]) -> Leaf | None:
    """The first leaf of the answer with the largest total weight (leaves without an answer do not vote)."""
    totals: Counter[str] = Counter()
    first: dict[str, Leaf] = {}
    for leaf, weight in zip(leaves, weights):
        if leaf.answer is None:
            continue
        key = normalize_for_vote(leaf.answer)
        totals[key] += weight
        first.setdefault(key, leaf)
    if not totals:
        return leaves[0] if leaves else None
    order = list(first)
    best = max(order, key=lambda key: (totals[key], -order.index(key)))
    return first[best]


def make_chooser(spec: str) -> Chooser:
    """A chooser from `vote`, `top:SIG`, `wvote:SIG[^B]`, `filter:SIG@ETA`, each optionally ending in `!VETO`."""
    parsed = parse_chooser(spec)
    chooser = _chooser(parsed)
    veto = parsed.veto
    if veto is None:
        return chooser

    def vetoed(leaves: Sequence[Leaf], scales: Scales) -> Leaf | None:
        kept = [leaf for leaf in leaves if not (leaf.signals.get(veto) or 0.0) < 0]  # a missing signal keeps it
        return chooser(kept or leaves, scales)

    return vetoed


def _chooser(spec: ChooserSpec) -> Chooser:
    if spec.kind == "vote":
        return lambda leaves, scales: weighted_vote(leaves, [1.0] * len(leaves))

    def value(leaf: Leaf, scales: Scales) -> float:
        z = scales.value(spec.signal, leaf)
        return -math.inf if z is None else z

    if spec.kind == "top":
        return lambda leaves, scales: max(leaves, key=lambda leaf: value(leaf, scales), default=None)
    if spec.kind == "wvote":
        def weighted(leaves: Sequence[Leaf], scales: Scales) -> Leaf | None:
            values = [value(leaf, scales) for leaf in leaves]
            return weighted_vote(leaves, [0.0 if v == -math.inf else math.exp(min(spec.sharpness * v, 60.0))
                                          for v in values])

        return weighted

    def filtered(leaves: Sequence[Leaf], scales: Scales) -> Leaf | None:
        keep = max(1, math.ceil(spec.eta * len(leaves)))
        ranked = sorted(range(len(leaves)), key=lambda i: -value(leaves[i], scales))[:keep]
        kept = [leaves[i] for i in sorted(ranked)]
        return weighted_vote(kept, [1.0] * len(kept))

    return filtered


# ----------------------------------------------------------------------------- measures
@dataclass
class ChooserReport:
    name: str
    correct: int
    total: int
    wins: int  # problems this chooser gets right and the vote wrong
    losses: int
    p_value: float  # two-sided sign test against the vote
    by_samples: list[float] = field(default_factory=list)  # accuracy with the first m leaves, m = 1 .. S
    tokens_by_samples: list[float] = field(default_factory=list)  # mean generated tokens of those m leaves

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class SignalReport:
    name: str
    mean: float | None  # over every leaf of the bank
    std: float | None
    auc: float | None  # within-problem: P(a right leaf outvalues a wrong one), over mixed problems
    top_right: float | None  # how often the top-valued leaf is right, in mixed problems
    random_right: float | None  # a random leaf's chance in the same problems
    mixed: int


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins against losses (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    low = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def evaluate(problems: Sequence[BankProblem], choosers: Sequence[str], signals: Sequence[str]
             ) -> tuple[list[ChooserReport], list[SignalReport], dict[str, float]]:
    """Every chooser's accuracy (with a sign test against the vote, and by number of samples) and every signal's
    within-problem separation, on the same leaves."""
    scales = bank_scales(problems)
    made = {name: make_chooser(name) for name in choosers}
    vote = make_chooser("vote")
    vote_right = [_right(vote(p.leaves, scales)) for p in problems]
    reports = []
    width = max((len(p.leaves) for p in problems), default=0)
    for name, chooser in made.items():
        right = [_right(chooser(p.leaves, scales)) for p in problems]
        wins = sum(r and not v for r, v in zip(right, vote_right))
        losses = sum(v and not r for r, v in zip(right, vote_right))
        by_m, tokens_m = [], []
        for m in range(1, width + 1):
            by_m.append(sum(_right(chooser(p.leaves[:m], scales)) for p in problems) / max(len(problems), 1))
            tokens_m.append(sum(subset_tokens(p, p.leaves[:m]) for p in problems) / max(len(problems), 1))
        reports.append(ChooserReport(name, sum(right), len(problems), wins, losses, sign_test(wins, losses),
                                     by_m, tokens_m))
    signal_reports = [signal_report(problems, name, scales) for name in signals]
    oracle = sum(any(leaf.correct for leaf in p.leaves) for p in problems)
    summary = {"problems": len(problems), "oracle": oracle,
               "mean_leaves": sum(len(p.leaves) for p in problems) / max(len(problems), 1),
               "mean_tokens": sum(p.generated_tokens for p in problems) / max(len(problems), 1)}
    return reports, signal_reports, summary


def separation(scored: Sequence[tuple[float | None, bool]]) -> tuple[float, float, float] | None:
    """One mixed problem's (within-problem AUC, top-valued right (ties shared), random right); None if not mixed."""
    kept = [(v, c) for v, c in scored if v is not None and math.isfinite(v)]
    right = [v for v, c in kept if c]
    wrong = [v for v, c in kept if not c]
    if not right or not wrong:
        return None
    pairs = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
    best = max(v for v, _ in kept)
    at_best = [c for v, c in kept if v == best]
    return pairs / (len(right) * len(wrong)), sum(at_best) / len(at_best), len(right) / len(kept)


def mean_separation(found: Sequence[tuple[float, float, float] | None]
                    ) -> tuple[int, float | None, float | None, float | None]:
    """(mixed problems, mean AUC, mean top right, mean random right) over the problems `separation` judged."""
    mixed = [f for f in found if f is not None]
    if not mixed:
        return 0, None, None, None
    auc, top, chance = (sum(column) / len(mixed) for column in zip(*mixed))
    return len(mixed), auc, top, chance


def signal_report(problems: Sequence[BankProblem], name: str, scales: Scales) -> SignalReport:
    terms = parse_signal(name)
    mixed, auc, top, chance = mean_separation(
        [separation([(scales.value(terms, leaf), leaf.correct) for leaf in problem.leaves]) for problem in problems])
    return SignalReport(name, scales.mean.get(name), scales.std.get(name), auc, top, chance, mixed)


def subset_tokens(problem: BankProblem, leaves: Sequence[Leaf]) -> int:
    """Tokens generated for these leaves alone: every node on their paths once (shared prefixes once)."""
    seen: set[int] = set()
    for leaf in leaves:
        node: int | None = leaf.node
        while node is not None and node not in seen:
            seen.add(node)
            node = problem.parents.get(node)
    return sum(problem.node_tokens.get(node, 0) for node in seen)


def _right(leaf: Leaf | None) -> bool:
    return bool(leaf is not None and leaf.correct)


def format_reports(reports: Sequence[ChooserReport], signals: Sequence[SignalReport], summary: Mapping[str, float]
                   ) -> str:
    n = int(summary["problems"])
    cw = max([len(r.name) for r in reports] + [24])
    sw = max([len(s.name) for s in signals] + [14])
    lines = [f"{n} problems · {summary['mean_leaves']:.1f} leaves and {summary['mean_tokens']:.0f} generated tokens "
             f"each · a right leaf in {int(summary['oracle'])} ({100 * summary['oracle'] / max(n, 1):.1f} %)", "",
             f"{'chooser':<{cw}} {'right':>6} {'acc %':>6} {'vs vote':>9} {'p':>6}"]
    for r in reports:
        lines.append(f"{r.name:<{cw}} {r.correct:>6} {100 * r.accuracy:>6.1f} {f'+{r.wins}/-{r.losses}':>9} "
                     f"{r.p_value:>6.3f}")
    lines += ["", f"{'signal':<{sw}} {'AUC':>6} {'top right':>10} {'random':>7} {'ratio':>6} {'mixed':>6} "
                  f"{'mean':>8} {'std':>7}"]
    for s in signals:
        if s.auc is None:
            lines.append(f"{s.name:<{sw}} {'-':>6}")
            continue
        ratio = s.top_right / s.random_right if s.random_right else float("nan")
        spread = f"{s.mean:>8.3f} {s.std:>7.3f}" if s.mean is not None and s.std is not None else ""
        lines.append(f"{s.name:<{sw}} {s.auc:>6.3f} {100 * s.top_right:>9.1f}% {100 * s.random_right:>6.1f}% "
                     f"{ratio:>6.2f} {s.mixed:>6} {spread}".rstrip())
    return "\n".join(lines)


def state_auc(records: Sequence[Mapping[str, Any]], signal: str, depth: int) -> tuple[float | None, int]:
    """Whether a signal of an early step (its own tokens' statistics) tells which states lead to right answers:
    over pairs of same-depth states of a problem whose Monte-Carlo values differ, how often the better state has
    the higher signal (ties 1/2). What A*'s h would have to do; (AUC, pairs)."""
    from qwq_local.value.bank_labels import leaves_below

    hits, pairs = 0.0, 0
    for record in records:
        below = leaves_below(record)
        states = [(n["stats"].get(signal), sum(below[n["id"]]) / len(below[n["id"]]))
                  for n in record["nodes"] if n["depth"] == depth and below[n["id"]] and n["stats"].get(signal)
                  is not None]
        for i, (si, vi) in enumerate(states):
            for sj, vj in states[i + 1:]:
                if vi == vj:
                    continue
                better, worse = (si, sj) if vi > vj else (sj, si)
                hits += 1.0 if better > worse else 0.5 if better == worse else 0.0
                pairs += 1
    return (hits / pairs if pairs else None), pairs
