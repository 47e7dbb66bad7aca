"""Progress bars a person can read: one bar per stage of a job, and per-call bars only
outside a stage.

Library code asks for a bar with :func:`bar` (k-means iterations, training epochs, kNN
chunks). Outside a stage that is a tqdm bar of its own. Inside :func:`stage` (the
application's steps of a long job: features, training, each detector, evaluation) it is
not drawn: the call's work is added to the stage's one bar, where each call counts as one
step, advanced as the call reports its fraction done.
"""
from __future__ import annotations

import contextlib

_stage_bar = None  # the open stage's bar (one stage at a time, process-wide)


def _current():
    return _stage_bar


class _StagePart:
    """A call's bar inside a stage: its ``total`` units are one step of the stage bar."""

    def __init__(self, stage_bar, total):
        self.stage_bar, self.total, self.n = stage_bar, max(total or 0, 0), 0
        stage_bar.total += 1
        stage_bar.refresh()

    def update(self, n=1):
        if self.total:
            step = min(n, self.total - self.n) / self.total
            self.stage_bar.update(step)
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        if self.total and self.n < self.total:  # a call that ended early still counts whole
            self.stage_bar.update((self.total - self.n) / self.total)
        elif not self.total:
            self.stage_bar.update(1)
        self.n = self.total

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def bar(total, desc, *, unit="it", enabled=True, leave=True):
    """A progress bar for one call's loop (``update``, ``close``, ``n``, context manager):
    tqdm outside a stage (drawn when ``enabled``), one step of the stage's bar inside one."""
    stage_bar = _current()
    if enabled and stage_bar is not None:
        return _StagePart(stage_bar, total)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave)


@contextlib.contextmanager
def stage(desc, *, enabled=True):
    """One bar for a stage of a job; the bars of the calls made inside it become its steps.
    Stages do not nest: an inner stage is a step of the outer one."""
    if _current() is not None or not enabled:
        with bar(1, desc, enabled=enabled) as part:
            yield part
        return
    from tqdm.auto import tqdm

    global _stage_bar
    # total grows by one step a call; the stage itself is the first step, done at its end
    with tqdm(total=1, desc=desc, unit="step", bar_format=STAGE_FORMAT) as stage_bar:
        _stage_bar = stage_bar
        try:
            yield stage_bar
        finally:
            _stage_bar = None
            stage_bar.n = stage_bar.total
            stage_bar.refresh()


STAGE_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} steps [{elapsed}]"
