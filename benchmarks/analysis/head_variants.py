"""Which Q-value head to train on a bank of training problems, and is it a better value than the label-free ones?
(issue 20, "a Q-value head trained on thousands of states ... features chosen on the bank")

Every variant is cross-fitted (`qwq bench choose --head-folds`): each problem is valued by a head trained on the other
folds' states, so every number below is held out. Per variant: the within-problem AUC of its value at the leaves, how
often its top leaf is right in mixed problems against a random pick, and the same for its sum (z-scores) with the tail
confidence, the best label-free value; then the vote weighted by each, against the plain vote. In seconds:

    python benchmarks/analysis/head_variants.py benchmarks/runs/bank-gsm8k-train-qwen2.5-coder-0.5b

`--features mean` trains on the steps' mean hidden states instead of their last token's (`mid`, `mid_mean`: a middle
layer's; `last+mid_mean`: side by side); `-n N` keeps the first N problems (those whose arrays have them, while
`qwq bench bank` adds them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qwq_local.bench.choose import evaluate, from_records
from qwq_local.bench.choose_run import cross_fitted_head_signals
from qwq_local.value.bank_labels import read_bank

VARIANTS = {  # name: (kind, Q label, L2)
    "linear max": ("linear", "max", 1e-4),
    "linear mean": ("linear", "mean", 1e-4),
    "linear max l2=0.1": ("linear", "max", 0.1),
    "linear max l2=1": ("linear", "max", 1.0),
    "mlp max": ("mlp", "max", 1e-4),
    "mlp mean": ("mlp", "mean", 1e-4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bank", type=Path, nargs="+")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--features", default="last", help="last, mean, mid, mid_mean, or several joined by +")
    parser.add_argument("-n", "--limit", type=int, default=None)
    args = parser.parse_args()
    records = [r for bank in args.bank for r in list(read_bank(bank).values())[:args.limit]]
    signals = ["tail_conf", "head", "tail_conf+head", "tail_conf+head*0.5"]
    choosers = ["vote", "wvote:tail_conf", "wvote:head", "wvote:tail_conf+head", "wvote:tail_conf+head*0.5"]
    print(f"{len(records)} problems, {args.folds} folds, features: {args.features}")
    print(f"{'variant':<22} {'signal':<20} {'AUC':>6} {'top':>6} {'random':>6} {'ratio':>6} {'mixed':>5}")
    for name, (kind, target, l2) in VARIANTS.items():
        extra = cross_fitted_head_signals(records, args.folds, kind=kind, target=target, l2=l2,
                                          features=args.features)
        reports, signal_reports, _ = evaluate(from_records(records, extra), choosers, signals)
        for s in signal_reports:
            if s.auc is None or s.top_right is None or s.random_right is None:
                continue
            print(f"{name:<22} {s.name:<20} {s.auc:>6.3f} {100 * s.top_right:>5.1f}% {100 * s.random_right:>5.1f}% "
                  f"{s.top_right / s.random_right:>6.2f} {s.mixed:>5}")
        print(" " * 23 + " · ".join(f"{r.name} {r.correct}" for r in reports))


if __name__ == "__main__":
    main()
