"""A search bank read back (`qwq bench bank` writes it), and its Monte-Carlo labels: a state's value is the outcome of
the leaves sampled below it.

Every recorded step end (the bank's early states, and each reply's end) is one labelled hidden state: Q-max = some leaf
below is right, Q-mean = the share of right leaves below. The bank of training problems is the head's training data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import platformdirs

from qwq_local.config import APP
from qwq_local.errors import ExitCode, InputFileError
from qwq_local.jsonl import complete_lines


BANK_FILE = "bank.jsonl"


def arrays_root(env: dict[str, str] | None = None) -> Path:
    """Where banks keep their bulky arrays (QWQ_BANK_ARRAYS overrides): the user cache, never the repo."""
    env = dict(os.environ) if env is None else env
    if env.get("QWQ_BANK_ARRAYS"):
        return Path(env["QWQ_BANK_ARRAYS"])
    return Path(platformdirs.user_cache_dir(APP)) / "bank"


def read_bank(path: Path, *, repair: bool = False) -> dict[str, dict[str, Any]]:
    """A bank's records by problem id; a last line still being written is skipped (`repair`: see `complete_lines`)."""
    if path.is_dir():
        path = path / BANK_FILE
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(complete_lines(path, repair=repair), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            _check_record(record)
            records[str(record["problem_id"])] = record
        except (ValueError, KeyError, TypeError):
            raise InputFileError(f"{path}:{number}: not a bank line", ExitCode.BAD_DATA) from None
    return records


def _check_record(record: Any) -> None:
    """The shape every reader of a bank relies on: a tree of nodes and the leaves on it (ValueError if not)."""
    depth = {node["id"]: node["depth"] for node in record["nodes"]}
    if len(depth) < len(record["nodes"]):
        raise ValueError("two nodes share an id")
    ids = set(depth)
    for node in record["nodes"]:  # a root at depth 0, a child one deeper than its parent: a tree, no cycle
        parent = node["parent"]
        if not (_is_int(node["id"]) and _is_int(node["depth"]) and _is_int(node["n_tokens"])
                and node["depth"] == (0 if parent is None else depth.get(parent, -2) + 1)
                and isinstance(node.get("stats", {}), dict)):
            raise ValueError(node)
    for leaf in record["leaves"]:
        if not (leaf["node"] in ids and isinstance(leaf["correct"], bool) and _is_int(leaf["tokens"])
                and (leaf["answer"] is None or isinstance(leaf["answer"], str))
                and isinstance(leaf.get("stats", {}), dict)):
            raise ValueError(leaf)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def leaves_below(record: Mapping[str, Any]) -> dict[int, list[bool]]:
    """Node id -> the correctness of every leaf in its subtree (a leaf's list is its own outcome)."""
    parents = {n["id"]: n["parent"] for n in record["nodes"]}
    below: dict[int, list[bool]] = {n["id"]: [] for n in record["nodes"]}
    for leaf in record["leaves"]:
        node: int | None = leaf["node"]
        while node is not None:
            below[node].append(bool(leaf["correct"]))
            node = parents[node]
    return below


FEATURES = {"last": "hidden", "mean": "hidden_mean", "mid": "hidden_mid", "mid_mean": "hidden_mid_mean"}


def feature_keys(features: str) -> list[str]:
    """The arrays that `features` names: one or more of FEATURES joined by + (`last+mid_mean`)."""
    names = features.split("+")
    if not all(name in FEATURES for name in names):
        raise ValueError(f"name one or more of {', '.join(FEATURES)} joined by +, not {features!r}")
    return [FEATURES[name] for name in names]


def load_hidden(record: Mapping[str, Any], arrays_root: Path, features: str = "last") -> np.ndarray:
    """A problem's recorded hidden states [nodes, width] as float32, from its arrays in the user cache: the last
    layer's state at each step's last token (`last`) or its mean over the step's tokens (`mean`), the same of a
    middle layer (`mid`, `mid_mean`), or several side by side (`last+mid_mean`)."""
    file = arrays_root / str(record.get("arrays") or "")
    if not record.get("arrays") or not file.is_file():
        raise InputFileError(f"problem {record['problem_id']}: its arrays ({file}) are not in the cache; "
                             "rerun `qwq bench bank` with the same --results to rebuild them", ExitCode.FILE_NOT_FOUND)
    keys = feature_keys(features)
    with np.load(file) as arrays:
        if any(key not in arrays.files for key in keys):
            raise InputFileError(f"problem {record['problem_id']}: its arrays ({file}) predate the steps' mean and "
                                 "middle-layer states; rerun `qwq bench bank` with the same --results to add them",
                                 ExitCode.FILE_NOT_FOUND)
        return np.concatenate([arrays[key].astype(np.float32) for key in keys], axis=1)


def bank_states(records: Iterable[Mapping[str, Any]], arrays_root: Path,
                hidden: Mapping[str, np.ndarray] | None = None, features: str = "last"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y_max, y_mean, groups) over every recorded state with a hidden state and leaves below it; `hidden`:
    the problems' hidden states already loaded, by problem id (else read from `arrays_root`, the `features` named)."""
    xs: list[np.ndarray] = []
    y_max: list[float] = []
    y_mean: list[float] = []
    groups: list[str] = []
    for record in records:
        states = hidden[str(record["problem_id"])] if hidden is not None else load_hidden(record, arrays_root, features)
        for node, outcomes in leaves_below(record).items():
            if not outcomes or states.shape[1] == 0 or not np.isfinite(states[node]).all():
                continue
            xs.append(states[node])
            y_max.append(float(any(outcomes)))
            y_mean.append(sum(outcomes) / len(outcomes))
            groups.append(str(record["problem_id"]))
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(0), np.zeros(0, dtype=str)
    return np.stack(xs), np.asarray(y_max), np.asarray(y_mean), np.asarray(groups, dtype=str)
