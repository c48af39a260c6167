"""Q-value labels by rollouts, as in Q*: sample a trajectory step by step, then finish it M times from
just after each step; Q of a step = max (optimal-Q estimate) and mean of the rollouts' correctness.

Pure Python over the StepLM protocol: the KV tree engine makes the M rollouts of a step one batch that
shares the trajectory's prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from qwq_local.search.protocol import Candidate, StepLM, StepStop


@dataclass(frozen=True)
class RolloutConfig:
    rollouts: int = 4  # M: completions sampled from just after each step
    max_steps: int = 12  # steps of the sampled trajectory
    stop: StepStop = StepStop()  # where a step ends
    reply_tokens: int = 512  # token limit of a whole reply: the trajectory so far and its rollout together
    terminal: bool = True  # label each rollout's end too (its own outcome): the states best-of-N and A* finish on

    def __post_init__(self) -> None:
        if self.rollouts < 1 or self.max_steps < 1 or self.reply_tokens < 1:
            raise ValueError("rollouts, max_steps and reply_tokens must be at least 1")


@dataclass
class StepLabel:
    step_index: int
    step_text: str
    hidden: Any  # the policy's hidden state at the step's last token
    correct: list[bool]  # one per rollout (the step's own answer when the reply ended there)
    terminal: bool = False  # a reply's end (a rollout's, `step_text` its text; or the trajectory's last step)

    @property
    def q_max(self) -> float:
        return float(any(self.correct))

    @property
    def q_mean(self) -> float:
        return sum(self.correct) / len(self.correct)


def label_problem(lm: StepLM, question: str, is_correct: Callable[[str], bool],
                  config: RolloutConfig = RolloutConfig()) -> list[StepLabel]:
    """Label every step of one sampled trajectory; steps without a hidden state are left out."""
    root = lm.open(question)
    steps: list[Candidate] = []
    held = [root]
    try:
        current = root
        for _ in range(config.max_steps):
            step = lm.sample(current, 1, config.stop)[0]
            steps.append(step)
            held.append(step.branch)
            if step.finished:
                break
            current = step.branch
        whole = StepStop(delimiter=None, min_tokens=0, max_tokens=config.reply_tokens,
                         end_think=config.stop.end_think)
        labels = []
        for i, step in enumerate(steps):
            prefix = "".join(s.text for s in steps[: i + 1])
            ends = []
            if step.finished:  # the reply ended with this step: its own answer is the only outcome
                correct = [is_correct(prefix)]
            else:
                outs = lm.sample(step.branch, config.rollouts, whole)
                correct = [is_correct(prefix + out.text) for out in outs]
                for out in outs:
                    lm.release(out.branch)
                if config.terminal:  # free labels: the hidden state at a whole reply's end, and whether it is right
                    ends = [StepLabel(i, out.text, out.hidden, [ok], terminal=True)
                            for out, ok in zip(outs, correct) if out.hidden is not None]
            if step.hidden is not None:
                labels.append(StepLabel(i, step.text, step.hidden, correct, terminal=step.finished))
            labels += ends
        return labels
    finally:
        for handle in held:
            lm.release(handle)
