"""Progress of long jobs, for a person watching them: a tqdm bar on a terminal; without one (a
pipeline job's log file) a line at most every `every` seconds, and at least once a minute (a
heartbeat thread repeats the last state when one step takes longer), each with the step of steps,
the rate, the time spent and the time left:

    epoch 1/2: step 30 of 120 (25 %), 41.2 images/s, 0:00:47 spent, about 0:02:21 left; loss 0.512
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

EVERY = 30.0       # seconds between lines when steps are quick
HEARTBEAT = 60.0   # the longest a log stays silent while a job runs


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(round(seconds))))


class Progress:
    """`update()` after every step (`items`: how many images or probes it handled, for the rate);
    `close()` (or the `with` block's end) writes the last line, unless the loop was too quick to report. `terminal`: None asks the stream."""

    def __init__(self, total: int | None, desc: str, unit: str = "step", items: str | None = None,
                 every: float = EVERY, heartbeat: float = HEARTBEAT, stream=None, terminal: bool | None = None):
        self.total, self.desc, self.unit, self.items_name = total, desc, unit, items
        self.every, self.heartbeat = every, heartbeat
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.items, self.note, self.lines = 0, 0, "", 0
        self.started = self.last_line = time.monotonic()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        terminal = self.stream.isatty() if terminal is None and hasattr(self.stream, "isatty") else bool(terminal)
        self._bar = None
        if terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False)
        else:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(final_line=kind is None)  # a failing job's last line is its error, not its progress

    def update(self, steps: int = 1, items: int = 0, note: str | None = None) -> None:
        with self._lock:
            self.done += steps
            self.items += items
            if note is not None:
                self.note = note
            if self._bar is not None:
                self._bar.update(steps)
                if note:
                    self._bar.set_postfix_str(note)
            elif time.monotonic() - self.last_line >= self.every:
                self._write()

    def line(self) -> str:
        spent = time.monotonic() - self.started
        count = f"{self.unit} {self.done}" + (f" of {self.total} ({100 * self.done / self.total:.0f} %)"
                                              if self.total else "")
        parts = [f"{self.desc}: {count}"]
        if spent > 0 and (self.items or self.done):
            rate = (self.items or self.done) / spent
            parts.append(f"{rate:.1f} {self.items_name or self.unit + 's'}/s")
        parts.append(f"{_clock(spent)} spent")
        if self.total and self.done:
            parts.append(f"about {_clock(spent * (self.total - self.done) / self.done)} left")
        return ", ".join(parts) + (f"; {self.note}" if self.note else "")

    def _write(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line = time.monotonic()
        self.lines += 1

    def _heartbeat(self) -> None:
        while not self._closed.wait(min(self.heartbeat, max(self.heartbeat / 4, 0.01))):
            with self._lock:
                if not self._closed.is_set() and time.monotonic() - self.last_line >= self.heartbeat:
                    self._write()

    def close(self, final_line: bool = True) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            elif final_line and (self.lines or time.monotonic() - self.started >= self.every):
                self._write()  # the last state of a loop long enough to have been reported


def track(iterable, total: int | None, desc: str, **settings):
    """Iterate `iterable`, one step per item, with a `Progress`."""
    with Progress(total, desc, **settings) as progress:
        for item in iterable:
            yield item
            progress.update()


def counted(loader, desc: str | None, total: int | None = None, **settings):
    """A loader's (images, labels) batches, counted in the log as batches and images when `desc` names
    the pass (None: silent); `total` when fewer than the loader's length are taken."""
    if desc is None:
        yield from loader
        return
    with Progress(total or len(loader), desc, unit="batch", items="images", **settings) as progress:
        for images, labels in loader:
            yield images, labels
            progress.update(items=len(images))
