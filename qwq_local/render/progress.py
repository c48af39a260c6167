"""A progress bar on stderr for long services (head labelling): the events they report, drawn by rich."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from qwq_local.app.train import TrainEvents


@contextlib.contextmanager
def counting(label: str) -> Iterator[TrainEvents]:
    """Events that draw `label` [bar] done/total note ETA on stderr (plain lines when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeRemainingColumn(), console=console, transient=False, disable=not sys.stderr.isatty()) as bar:
        task: list[int] = []

        def start(total: int) -> None:
            task.append(bar.add_task(label, total=total, note=""))

        def advance(note: str) -> None:
            if task:
                bar.update(task[-1], advance=1, note=note)

        def say(line: str) -> None:
            if bar.disable:
                print(line, file=sys.stderr, flush=True)
            else:
                bar.console.print(line, markup=False, highlight=False)

        yield TrainEvents(say=say, start=start, advance=advance)
