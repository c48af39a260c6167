"""Accuracy against generated tokens, one labelled point per strategy, as a PNG (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from qwq_local.bench.accuracy import AccuracyReport
from qwq_local.errors import ExitCode, QwqError, UsageError

NO_MATPLOTLIB = "--plot needs matplotlib, which is not installed: pip install 'qwq-local[bench]' (or run without --plot)"


def check_can_plot(path: Path) -> None:
    """Fail before a long run, not after it, when the plot could not be written."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise QwqError(NO_MATPLOTLIB, ExitCode.MISSING_DEPENDENCY)
    if path.is_dir():
        raise UsageError(f"--plot {path}: a directory, not a .png file")


def plot_accuracy(report: AccuracyReport, path: Path, title: str | None = None) -> Path:
    """Write the report's accuracy (Wilson 95% error bars) against mean generated tokens to `path`;
    `title` (data set, model) is followed by the problem count."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise QwqError(NO_MATPLOTLIB, ExitCode.MISSING_DEPENDENCY) from None
    figure = Figure(figsize=(9, 4.5), dpi=120)
    FigureCanvasAgg(figure)  # Agg without touching pyplot's global backend
    axes = figure.add_subplot()
    tokens = [s.mean_tokens for s in report.scores]
    for score in report.scores:  # labelled in the legend, not beside the points, which often sit close together
        accuracy = 100 * score.accuracy
        errors = [[accuracy - 100 * score.ci_low], [100 * score.ci_high - accuracy]]
        axes.errorbar([score.mean_tokens], [accuracy], yerr=errors, fmt="o", capsize=4,
                      label=f"{score.strategy}: {accuracy:.1f}% · {score.mean_tokens:,.0f} tok")
    if tokens and min(tokens) > 0 and max(tokens) / min(tokens) > 20:
        axes.set_xscale("log")
    top = max((100 * s.ci_high for s in report.scores), default=100.0)
    axes.set_ylim(0, min(100.0, 10 * (top // 10 + 1)))
    axes.set_xlabel("mean generated tokens per problem")
    axes.set_ylabel("accuracy (%)")
    counted = f"{report.problems} problems, 95% Wilson intervals"
    axes.set_title(f"{title} · {counted}" if title else counted)
    axes.grid(alpha=0.3)
    if report.scores:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
