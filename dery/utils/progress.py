"""Progress bars of the long steps (rich: description, bar, done/total, elapsed, ETA).

``Progress(enabled)`` is a context manager; with ``enabled=False`` (another
rank than 0, ``progress=False`` in a config, tests) every call is a no-op, so
stage code calls it unconditionally::

    with Progress(get_rank() == 0) as prog:
        task = prog.add('assemble: models', len(names))
        for name in names:
            ...
            prog.advance(task)
"""

__all__ = ['Progress']


class Progress:

    def __init__(self, enabled=True):
        self._p = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as _RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._p = _RichProgress(TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), TimeRemainingColumn())

    def __enter__(self):
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()

    def add(self, desc, total, completed=0):
        return None if self._p is None else self._p.add_task(desc, total=total, completed=completed)

    def advance(self, task, n=1):
        if self._p is not None and task is not None:
            self._p.advance(task, n)

    def update(self, task, **kwargs):
        if self._p is not None and task is not None:
            self._p.update(task, **kwargs)

    def remove(self, task):
        if self._p is not None and task is not None:
            self._p.remove_task(task)
