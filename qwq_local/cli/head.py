"""`qwq train-head`, `qwq head info`, `qwq head eval`: train a Q-value head, and say what one knows."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from qwq_local.cli.root import Command, CtxOpt, GpuOpt, ModelOpt, ModelsDirOpt, app, head_app, settings_from
from qwq_local.errors import ExitCode, InputFileError

@app.command("train-head", cls=Command)
def train_head(
    model: Optional[str] = ModelOpt,
    data: str = typer.Option("gsm8k-train", "--data", help="gsm8k-train or a training FILE.jsonl."),
    problems: int = typer.Option(200, "--problems", help="The first N problems."),
    rollouts: int = typer.Option(4, "--rollouts", help="M completions from after each step."),
    out: Path = typer.Option(..., "--out", help="The head file to write (.gguf)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label store (default OUT.labels.jsonl)."),
    kind: str = typer.Option("linear", "--kind", help="linear | mlp"),
    target: str = typer.Option("max", "--target", help="Q label: max (Q*) or mean over rollouts."),
    max_steps: int = typer.Option(12, "--max-steps", help="Steps of each sampled trajectory."),
    reply_tokens: int = typer.Option(384, "--reply-tokens", help="Token limit of a whole reply: trajectory and rollouts."),
    train_only: bool = typer.Option(False, "--train-only", help="Train on the labels already stored."),
    epochs: int = typer.Option(200, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    ctx: Optional[int] = CtxOpt,
    kv_budget: Optional[str] = typer.Option(None, "--kv-budget", help="Tokens (4096) or bytes (512MiB, 2GB)."),
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    bank: list[Path] = typer.Option([], "--bank", help="Train on these search banks' states (Monte-Carlo labels) "
                                    "instead of labelling by rollouts."),
    features: str = typer.Option("last", "--features", help="With --bank: the states the head reads, last (a step's "
                                 "last token) or mean (over its tokens)."),
) -> None:
    """Label steps by rollouts (resumable) and train a Q-value head on the policy's hidden states."""
    from qwq_local.app.train import run_train_head
    from qwq_local.render.progress import counting

    settings = settings_from(model=model, temperature=temperature, ctx=ctx, gpu_layers=gpu_layers,
                             models_dir=models_dir, kv_budget=kv_budget)
    with counting("labels") as events:
        written = run_train_head(settings, data=data, problems=problems, rollouts=rollouts, out=out, labels=labels,
                                 kind=kind, target=target, max_steps=max_steps, reply_tokens=reply_tokens,
                                 train_only=train_only, seed=seed, epochs=epochs, banks=bank, events=events,
                                 features=features)
    typer.echo(written)


@head_app.command("info", cls=Command)
def head_info(path: Path = typer.Argument(..., help="A Q-value head .gguf."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """A head's metadata (backbone, layer, training data) and held-out metrics."""
    print_head_info(path, as_json)


@head_app.command("eval", cls=Command)
def head_eval(path: Path = typer.Argument(..., help="A Q-value head .gguf."),
              labels: Path = typer.Option(..., "--labels", help="A label store of `qwq train-head` (.jsonl)."),
              target: str = typer.Option("max", "--target", help="Q label: max or mean over rollouts."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """A head's AUC, Brier and calibration on stored labels, by steps and reply ends, and how it picks a reply.

    Use labels the head was not trained on (another problem range of `qwq train-head --labels`).
    """
    print_head_eval(path, labels, target, as_json)


def print_head_info(path: Path, as_json: bool) -> None:
    """A head's metadata and held-out metrics, as lines or JSON."""
    import json

    from qwq_local.value.qhead import QHead

    info = QHead.load(path).describe()
    if as_json:  # a metric that could not be computed (NaN: one class held out) is null, as JSON allows
        info["metrics"] = {k: _finite(v) for k, v in (info.get("metrics") or {}).items()}
        typer.echo(json.dumps(info, indent=2, default=str, allow_nan=False))
        return
    metrics = info.pop("metrics", {}) or {}
    info["problems"] = f"{len(info.get('problems') or ())} listed (trained on; `qwq bench choose --head` leaves them out)"
    for key, value in info.items():
        typer.echo(f"{key:>16}: {value!r}" if key == "step_delimiter" else f"{key:>16}: {value}")
    for key, value in metrics.items():
        typer.echo(f"{'held-out ' + key:>16}: {value:.4f}")


def print_head_eval(path: Path, labels: Path, target: str, as_json: bool) -> None:
    """A head's AUC, Brier and ECE on stored labels, by steps and reply ends, as a table or JSON."""
    import json

    from qwq_local.app.train import check_target
    from qwq_local.value.assess import assess
    from qwq_local.value.labels import LabelStore
    from qwq_local.value.qhead import QHead

    check_target(target)
    if not labels.is_file():
        raise InputFileError(f"label store not found: {labels}", ExitCode.FILE_NOT_FOUND)
    head = QHead.load(path)
    rows = LabelStore(labels).rows()
    if not rows:
        raise InputFileError(f"no committed labels in {labels}", ExitCode.EMPTY_INPUT)
    X = np.stack([row.hidden for row in rows])
    y = np.array([row.q_max if target == "max" else row.q_mean for row in rows])
    found = assess(head.predict(X), y, np.array([row.terminal for row in rows]),
                   np.array([row.problem_id for row in rows], dtype=str))
    c = found.choice
    if as_json:
        typer.echo(json.dumps({
            "head": str(path), "labels": str(labels), "target": target,
            "subsets": {name: {"problems": n, "states": m.n, "positives": m.positives, "auc": _finite(m.auc),
                               "brier": _finite(m.brier), "ece": _finite(m.ece)}
                        for name, (n, m) in found.subsets.items()},
            "choice": {"problems": c.problems, "head_right": c.head_right, "chance": round(c.chance, 3)},
        }, indent=2, allow_nan=False))
        return
    typer.echo(f"{path.name} on {labels.name} (Q = {target} over rollouts)")
    typer.echo(f"{'states':>9} {'problems':>9} {'n':>6} {'positive':>9} {'AUC':>6} {'Brier':>6} {'ECE':>6}")
    for name, (n, m) in found.subsets.items():
        typer.echo(f"{name:>9} {n:>9} {m.n:>6} {m.positives / m.n:>9.0%} {m.auc:>6.3f} {m.brier:>6.3f} {m.ece:>6.3f}")
    if c.problems:
        typer.echo(f"choosing a reply: the head's top one is right in {c.head_right} of {c.problems} problems with "
                   f"right and wrong replies (a random pick: {c.chance:.1f})")


def _finite(value: float) -> float | None:
    """A metric for JSON: one that could not be computed (NaN: one class only) is null."""
    import math

    return value if math.isfinite(value) else None
