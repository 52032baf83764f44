"""The one progress display of every ``tuneproof`` command, fed by the library's
``progress(stage, done, total)`` hook (:data:`tuneproof.types.Progress`).

On a terminal: rich bars on stderr with amount, rate and ETA. Off a terminal (a log, a pipe,
CI): plain lines on stderr, at most one per stage every few seconds plus one when the stage
finishes. Either way it records how long each stage took (first call to last).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from tuneproof.cli.common import console as _console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from tuneproof.lab.finetune import TrainingProgress

BYTES = "bytes"
"""The unit of stages counted in bytes (shown in MiB)."""

MIB = 1024 * 1024

STAGES: dict[str, tuple[str, str]] = {
    "validate": ("validating the dataset", BYTES),
    "triggers": ("drawing triggers", "pairs"),
    "signatures": ("drawing signatures", "pairs"),
    "candidates": ("drawing candidate signatures", "candidates"),
    "answers": ("writing the rest of each backdoor's answer", "tokens"),
    "write": ("writing the planted file", BYTES),
    "queries": ("querying the model", "queries"),
    "scoring": ("scoring decoy candidates", "candidates"),
    "detectors": ("running the detectors", "detectors"),
    "perplexity": ("scoring answers with the reference model", "records"),
    "training": ("training", "steps"),
}
"""Every stage name the library reports: its label and unit. A stage whose first word is
listed (the demo's 'training honest') takes that unit and keeps its own name as label."""

PLAIN_INTERVAL = 5.0
"""Seconds between two plain lines of one stage (off a terminal)."""


def stage_label(stage: str) -> tuple[str, str]:
    """The label and unit shown for ``stage`` (unknown stages: their name, no unit)."""
    if stage in STAGES:
        return STAGES[stage]
    first = stage.split(" ", 1)[0]
    if first in STAGES:
        return stage, STAGES[first][1]
    return stage, ""


@dataclass
class StageState:
    """What is known about one stage: its last figures and when it was first and last seen."""

    stage: str
    label: str
    unit: str
    done: int
    total: int
    first_done: int
    started: float
    last: float
    note: str = ""
    shown: float = 0.0
    finished: bool = False

    @property
    def seconds(self) -> float:
        """Time from the stage's first call to its last."""
        return self.last - self.started

    @property
    def rate(self) -> float | None:
        """Units per second since the stage's first call (None before any time passed)."""
        if self.seconds <= 0 or self.done <= self.first_done:
            return None
        return (self.done - self.first_done) / self.seconds


def format_amount(done: float, total: float, unit: str) -> str:
    """'512.0/1,024.0 MiB (50%)' for bytes (KiB under one MiB), '12/40 pairs' for counts."""
    if unit == BYTES:
        share = f" ({done / total:.0%})" if total > 0 else ""
        size, name = (MIB, "MiB") if total >= MIB else (1024, "KiB")
        return f"{done / size:,.1f}/{total / size:,.1f} {name}{share}"
    amount = f"{int(done):,}/{int(total):,}" if total > 0 else f"{int(done):,}"
    return f"{amount} {unit}".rstrip()


def format_rate(rate: float | None, unit: str) -> str:
    """'210 MiB/s', '0.4 pairs/s' or '' when no rate is known yet."""
    if rate is None:
        return ""
    if unit == BYTES:
        return f"{_figure(rate / MIB)} MiB/s"
    return f"{_figure(rate)} {unit or 'items'}/s"


def format_seconds(seconds: float) -> str:
    """'3 s', '12.5 s' under ten seconds, '4 min 10 s', '1 h 02 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _figure(value: float) -> str:
    """Two significant figures below 10, whole numbers above."""
    return f"{value:.2g}" if value < 10 else f"{value:,.0f}"


def format_stage_line(state: StageState) -> str:
    """One plain line: 'drawing triggers and signatures: 12/40 pairs, 0.4 pairs/s, ETA 70 s'."""
    parts = [format_amount(state.done, state.total, state.unit)]
    rate = state.rate
    if rate is not None:
        parts.append(format_rate(rate, state.unit))
    if state.note:
        parts.append(state.note)
    if state.finished:
        parts.append(f"done in {format_seconds(state.seconds)}")
    elif rate is not None and state.total > state.done:
        parts.append(f"ETA {format_seconds((state.total - state.done) / rate)}")
    separator = " " if state.unit == BYTES else ", "
    return f"{state.label}: {parts[0]}" + "".join(
        (separator if i == 1 else ", ") + part for i, part in enumerate(parts[1:], start=1)
    )


class StageProgress:
    """A :data:`tuneproof.types.Progress` hook that keeps every stage's state and timing;
    subclasses show it (:class:`PlainProgressLines`, :class:`RichProgressBars`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.stages: dict[str, StageState] = {}

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None:
        """Record ``done`` of ``total`` for ``stage`` (``note``: a live figure, the loss)."""
        now = self.clock()
        state = self.stages.get(stage)
        if state is None:
            label, unit = stage_label(stage)
            state = StageState(stage, label, unit, done, total, done, now, now, note, shown=now)
            self.stages[stage] = state
        state.done, state.total, state.last, state.note = done, total, now, note
        finished = total > 0 and done >= total
        was_finished, state.finished = state.finished, finished
        self.show(state, just_finished=finished and not was_finished)

    def training(self, stage: str = "training") -> TrainingProgress:
        """A ``progress(step, steps, loss)`` hook for fine-tuning: the loss shows as a note."""

        def on_step(step: int, steps: int, loss: float) -> None:
            self(stage, step, steps, note=f"loss {loss:.3f}")

        return on_step

    def stage_seconds(self) -> dict[str, float]:
        """Each stage seen, in order, with the time from its first call to its last."""
        return {name: state.seconds for name, state in self.stages.items()}

    def show(self, state: StageState, *, just_finished: bool) -> None:
        """Display the new state of a stage (nothing here)."""

    def close(self) -> None:
        """Stop displaying (nothing here)."""


class PlainProgressLines(StageProgress):
    """Progress for logs and pipes: one line per stage every ``interval`` seconds at most,
    plus the line when the stage finishes."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        super().__init__(clock)
        self.write = write
        self.interval = interval

    def show(self, state: StageState, *, just_finished: bool) -> None:
        """Write a line when the stage finishes or ``interval`` passed since its last one."""
        if just_finished or (not state.finished and state.last - state.shown >= self.interval):
            state.shown = state.last
            self.write(format_stage_line(state))


class RichProgressBars(StageProgress):
    """Progress on a terminal: a rich bar per stage with amount, rate, note and ETA."""

    def __init__(self, console: Console, *, transient: bool = True) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        super().__init__()
        self.bars: RichProgress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[note]}"),
            TimeRemainingColumn(),
            console=console,
            transient=transient,
        )
        self.tasks: dict[str, TaskID] = {}

    def show(self, state: StageState, *, just_finished: bool) -> None:
        """Add the stage's bar on its first call, then move it."""
        fields: dict[str, Any] = {
            "amount": format_amount(state.done, state.total, state.unit),
            "rate": format_rate(state.rate, state.unit),
            "note": state.note,
        }
        total = state.total if state.total > 0 else None
        if state.stage not in self.tasks:
            if not self.tasks:
                self.bars.start()
            self.tasks[state.stage] = self.bars.add_task(state.label, total=total, **fields)
        self.bars.update(self.tasks[state.stage], completed=state.done, total=total, **fields)

    def close(self) -> None:
        """Stop the live display."""
        self.bars.stop()


@contextmanager
def progress_display(*, transient: bool = True) -> Iterator[StageProgress]:
    """The progress hook of a command: rich bars when stderr is a terminal, plain lines
    otherwise (``transient``: bars vanish when done)."""
    err = _console(stderr=True)
    display: StageProgress = (
        RichProgressBars(err, transient=transient)
        if err.is_terminal
        else PlainProgressLines(lambda line: click.echo(line, err=True))
    )
    try:
        yield display
    finally:
        display.close()


def stage_times_line(seconds: dict[str, float], total: float) -> str:
    """'stages: validate 1.2 s, signatures 31.0 s, write 0.1 s; total 35.4 s'."""
    stages = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    return f"stages: {stages or 'none'}; total {total:.1f} s"
