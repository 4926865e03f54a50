"""The demo's console: rich progress bars (one per stage, one per running training job) and stage lines."""
import threading
import time

__all__ = ['UI']


class UI:
    """rich progress bars (one per running training job, one per stage) and one line per stage.

    The job bars follow the pool's shared iteration counters (``counters[slot]``:
    the iteration reached, -1 once the run is done), polled by a thread.
    """

    def __init__(self, enabled, logger, counters):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.logger = logger
        self.counters = counters
        probe = Console()
        # piped (CI, tee): no line wrapping, wide tables
        self.console = Console(highlight=False, soft_wrap=True, width=None if probe.is_terminal else 160)
        self.enabled = enabled and self.console.is_terminal
        self.progress = Progress(SpinnerColumn(), TextColumn('{task.description:<34}'), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, disable=not self.enabled, transient=False)
        self.jobs = {}  # slot -> dict(task, total, done, stage)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.stage_tasks = {}

    def __enter__(self):
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        self._refresh()
        self.progress.stop()

    def log(self, msg):
        stamp = time.strftime('%H:%M:%S')
        self.console.print(f'{stamp} - demo - INFO - {msg}')
        self.logger.info(msg)

    def stage_task(self, stage, desc, total):
        task = self.progress.add_task(desc, total=total)
        self.stage_tasks[stage] = task
        return task

    def stage_done(self, stages, name, title, t0, note, detail=None):
        """Record stage ``name`` (started at ``t0``) in ``stages`` and log ``stage TITLE: done in N s (DETAIL)``.

        ``detail`` defaults to the note; ``''`` logs no parenthesis.
        """
        stages.append(dict(name=name, seconds=time.perf_counter() - t0, note=note))
        detail = note if detail is None else detail
        self.log(f'stage {title}: done in {stages[-1]["seconds"]:.1f} s' + (f' ({detail})' if detail else ''))
        return stages[-1]

    def add_job(self, job, stage):
        """A bar for a training job (shown once it starts), advancing the bar of ``stage``."""
        with self.lock:
            self.jobs[job['slot']] = dict(name=job['name'], total=job['cfg']['train_cfg']['max_iters'], task=None,
                                          stage=stage, last=0)

    def _refresh(self):
        with self.lock:
            for slot, j in self.jobs.items():
                n = self.counters[slot]
                if n == 0 and j['task'] is None:
                    continue
                if j['task'] is None and n != 0:
                    j['task'] = self.progress.add_task(f'  {j["name"]}', total=j['total'])
                done = j['total'] if n < 0 else n
                if done != j['last']:
                    self.progress.update(j['task'], completed=done)
                    st = self.stage_tasks.get(j['stage'])
                    if st is not None:
                        self.progress.advance(st, done - j['last'])
                    j['last'] = done
                if n < 0 and j['task'] is not None and not j.get('removed'):
                    self.progress.remove_task(j['task'])
                    j['removed'] = True

    def _poll(self):
        while not self._stop.wait(0.25):
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - never kill the run for a progress bar
                pass
