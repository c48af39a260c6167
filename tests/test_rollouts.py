"""Q* rollout labels over the StepLM protocol (scripted fake LM): Q = max and mean over rollouts."""

from __future__ import annotations

import numpy as np
import pytest

from qwq_local.value.rollouts import RolloutConfig, label_problem
from tests.fakes import ScriptedLM

SCRIPT = {
    (): ["Step A\n\n"],
    ("Step A\n\n",): ["Step B\n\n", ("B so 4", True), ("so 3", True)],
    ("Step A\n\n", "Step B\n\n"): [("so 3", True), ("so 4", True)],
}


def right(text: str) -> bool:
    return text.rstrip().endswith("3")


def test_labels_every_step_of_the_trajectory_and_frees_every_branch() -> None:
    lm = ScriptedLM(SCRIPT, hidden=np.ones(4, dtype=np.float32))
    labels = label_problem(lm, "q", right, RolloutConfig(rollouts=3, terminal=False))
    assert [lab.step_text for lab in labels] == ["Step A\n\n", "Step B\n\n", "so 3"]
    assert [lab.terminal for lab in labels] == [False, False, True]  # the trajectory's last step ends the reply
    assert labels[0].correct == [False, False, True] and labels[0].q_max == 1.0
    assert labels[0].q_mean == pytest.approx(1 / 3)
    assert labels[1].correct == [True, False] and labels[1].q_mean == 0.5
    assert labels[2].correct == [True]  # the reply ended here: its own answer
    whole = [c for c in lm.sample_calls if c.stop.delimiter is None]
    assert [c.k for c in whole] == [3, 3]  # M rollouts from each unfinished step, one call each
    assert not lm.live  # every branch released, rollouts included


def test_step_limit_and_missing_hidden_states() -> None:
    lm = ScriptedLM(SCRIPT, hidden=None)
    assert label_problem(lm, "q", right, RolloutConfig(rollouts=2, max_steps=1)) == []
    assert len(lm.sample_calls) == 2  # one trajectory step, then its rollouts
    assert not lm.live
    with pytest.raises(ValueError):
        RolloutConfig(rollouts=0)


def test_each_rollout_end_is_labelled_with_its_own_outcome() -> None:
    lm = ScriptedLM(SCRIPT, hidden=np.ones(4, dtype=np.float32))
    labels = label_problem(lm, "q", right, RolloutConfig(rollouts=3))
    assert [(lab.step_index, lab.step_text, lab.terminal, lab.correct) for lab in labels] == [
        (0, "Step A\n\n", False, [False, False, True]),
        (0, "Step B\n\n", True, [False]), (0, "B so 4", True, [False]), (0, "so 3", True, [True]),
        (1, "Step B\n\n", False, [True, False]),
        (1, "so 3", True, [True]), (1, "so 4", True, [False]),
        (2, "so 3", True, [True]),
    ]
    assert len(lm.sample_calls) == 3 + 2  # no sampling added for them: three trajectory steps, two rollout calls
    assert not lm.live
