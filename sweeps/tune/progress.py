"""Progress lines with an ETA for the long phases (search, retrain, report), and the time each phase took.

Ray's status table says what runs, not when it will end; these lines say that, from the rate measured so far.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from ray.tune import Callback

from fer_core.errors import FerError
from sweeps.config.settings import fmt_duration


class Phases:
    """Wall time per phase, in order (``lines``/``to_dict`` for the summary and report), added to the
    ``earlier`` seconds of the runs of the driver that worked on the experiment before; ``save`` (if given)
    records them at each phase's end and, inside ``ticking``, every ``every_s`` seconds while one runs."""

    def __init__(self, t0: float | None = None, earlier: dict | None = None, save=None, every_s: float = 5.0):
        self.t0 = time.monotonic() if t0 is None else t0
        self._mark, self.seconds = self.t0, dict(earlier or {})
        self._before = sum(self.seconds.values())
        self._save, self._saved, self.every_s = save, self.t0, every_s

    def end(self, name: str) -> float:
        """Close phase ``name`` now (it began where the previous one ended); returns its seconds."""
        now = time.monotonic()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
        self._mark = now
        if self._save:
            self._save(self.seconds)
        return self.seconds[name]

    def tick(self, name: str) -> None:
        """Record the phases so far, ``name`` running, if ``every_s`` has passed since the last record: a
        killed driver's time then still counts when the experiment is resumed."""
        now = time.monotonic()
        if self._save and now - self._saved >= self.every_s:
            self._saved = now
            self._save({**self.seconds, name: self.seconds.get(name, 0.0) + now - self._mark})

    @contextlib.contextmanager
    def ticking(self, name: str):
        """Record the phases every ``every_s`` seconds while phase ``name`` runs, from a thread of the
        driver's own: Tune restores the callbacks pickled with a run, so a callback cannot be the clock."""
        stop = threading.Event()

        def loop():
            warned = False
            while not stop.wait(self.every_s):
                try:
                    self.tick(name)
                    warned = False
                except (OSError, FerError) as e:  # e.g. the storage is down: try again at the next tick
                    if not warned:
                        print(
                            f"[sweeps] WARNING: could not record the phase times ({e}); trying again",
                            file=sys.stderr,
                            flush=True,
                        )
                    warned = True

        thread = threading.Thread(target=loop, name=f"phases-{name}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    @property
    def total(self) -> float:
        return self._before + time.monotonic() - self.t0

    def to_dict(self) -> dict:
        return {**{k: round(v, 1) for k, v in self.seconds.items()}, "total": round(self.total, 1)}

    def line(self) -> str:
        parts = [f"{k} {fmt_duration(v)}" for k, v in self.seconds.items()]
        return "Time: " + ", ".join(parts) + f"; total {fmt_duration(self.total)}"


# The progress line of each phase of this driver run. Tune pickles its callbacks with the experiment and a
# restore runs those copies (Tuner.restore takes no callbacks): a copy forwards each result to the line here.
_LINES: dict[str, EpochProgress] = {}


class EpochProgress(Callback):
    """A Tune callback printing ``[sweeps] retrain: 5/12 epochs, 40s elapsed, ETA 56s`` as epochs report.
    ``total_epochs`` over all trials may be an estimate; ``deadline`` is a ``time.time()`` the phase stops
    at (or None); at most one line per ``every_s`` seconds, and always the last epoch's. Made by this run it
    is the phase's line; a copy restored from the experiment forwards to it, so a resumed run prints its
    own total and deadline."""

    def __init__(self, phase: str, total_epochs: float, deadline: float | None = None):
        self.phase, self.total, self.deadline, self.every_s = phase, total_epochs, deadline, 15.0
        self.t0, self.done, self.last = time.time(), 0, 0.0
        _LINES[phase] = self

    def __setstate__(self, state):  # a restored copy: this run's line, when it made one, prints instead
        self.__dict__.update(state)

    def setup(self, **info) -> None:
        # Called by Tune when fit() starts, also after a restore: the clock starts here.
        line = _LINES.get(self.phase, self)
        line.t0, line.done, line.last = time.time(), 0, 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        _LINES.get(self.phase, self).epoch_reported()

    def epoch_reported(self) -> None:
        self.done += 1
        now = time.time()
        total = max(self.total, self.done)
        if now - self.last < self.every_s and self.done < total:
            return
        self.last = now
        eta = (total - self.done) * (now - self.t0) / self.done
        if self.deadline is not None:
            eta = min(eta, max(0.0, self.deadline - now))
        approx = "~" if self.total != int(self.total) or self.deadline else ""
        print(
            f"[sweeps] {self.phase}: {self.done}/{approx}{int(round(total))} epochs, "
            f"{fmt_duration(now - self.t0)} elapsed, ETA {approx}{fmt_duration(eta)}",
            flush=True,
        )


class Steps:
    """``[sweeps] report 2/5: plots (12s elapsed, ETA 18s)`` for a phase of ``total`` known steps."""

    def __init__(self, phase: str, total: int):
        self.phase, self.total, self.done, self.t0 = phase, total, 0, time.monotonic()

    def __call__(self, what: str) -> None:
        elapsed = time.monotonic() - self.t0
        eta = f", ETA {fmt_duration(elapsed / self.done * (self.total - self.done))}" if self.done else ""
        self.done += 1
        print(
            f"[sweeps] {self.phase} {self.done}/{self.total}: {what} ({fmt_duration(elapsed)} elapsed{eta})",
            flush=True,
        )
