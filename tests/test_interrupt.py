"""Interruptions and determinism on the tiny CPU config (subprocesses, as users run the tools).

* Kill ``tools/assemble.py`` (which runs similarity, partition and assembly) with SIGINT or
  SIGKILL at seeded random points, check the work dir after every kill (an output that exists is
  complete and equals the uninterrupted run's; finished feature caches are never rewritten), rerun
  to completion: ``partition.json`` and ``assembly.json`` are byte-identical to the uninterrupted
  run (so also across two runs).
* ``torchrun --nproc_per_node 2`` (gloo) gives the same bytes as one process.
* Training killed after its first checkpoint resumes with ``--resume`` and does not redo stages.
"""
import glob
import json
import os
import os.path as osp
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import TINY_CONFIG as TINY, TINY_OPTS as OPTS, TINY_ROOT as ROOT, tiny_env as _env

OUTPUTS = ('partition.json', 'assembly.json')


def _assemble_cmd(work_dir):
    return [sys.executable, osp.join(ROOT, 'tools', 'assemble.py'), TINY, '--work-dir', work_dir,
            '--cfg-options', *OPTS]


def _run(cmd, timeout=240):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(cmd)} failed ({proc.returncode}):\n{out[-5000:]}'
    return out


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def _finished_caches(work_dir):
    """Finished feature caches (data + manifest) -> mtime of the data file."""
    out = {}
    for man in glob.glob(osp.join(work_dir, 'similarity_cache', 'features', '*.json')):
        npy = man[:-5] + '.npy'
        if osp.isfile(npy):
            out[npy] = os.stat(npy).st_mtime_ns
    return out


@pytest.fixture(scope='module')
def reference(tiny_reference):
    return tiny_reference


# A process that does the slow imports first, then waits for its command line on stdin: the next
# run warms up while the current one works, so each kill point costs the stage, not the imports.
# On the tiny config every stage takes milliseconds; the wrapper slows the long stages down (feature
# batches, the partitioner, proxy evaluations) and prints a marker when one starts, so that the kills
# land inside those stages rather than in start-up.
WARM = """
import json, runpy, signal, sys, time
# a job started with '&' by a non-interactive shell (nohup ... &, a CI runner) inherits SIGINT ignored;
# the runs here stand for a tool in a terminal, where Ctrl-C raises KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)
import dery.apis, dery.similarity, dery.partition, dery.proxies, dery.solvers, dery.models  # noqa
import mmpretrain, timm, rich  # noqa
from dery.partition.cover_set import CoverSetPartitioner
from dery.proxies.naswot import NASWOT
from dery.similarity.cache import FeatureCache


HOLD = []  # the mark at which this run waits for the test's 'go' line (once), then goes on


def slow(cls, name, mark, seconds):
    orig = getattr(cls, name)

    def wrapper(*args, **kwargs):
        print('MARK', mark, flush=True)
        if mark in HOLD:
            HOLD.remove(mark)
            sys.stdin.readline()
        time.sleep(seconds)
        return orig(*args, **kwargs)
    setattr(cls, name, wrapper)


slow(FeatureCache, 'write', 'features', 0.1)
slow(CoverSetPartitioner, 'partition', 'partition', 0.6)
slow(NASWOT, 'score', 'proxy', 0.3)
print('WARM', flush=True)
job = json.loads(sys.stdin.readline())
HOLD.extend(job['hold'])
sys.argv = job['argv']
runpy.run_path(sys.argv[0], run_name='__main__')
"""
# (signal, marker after which to kill, delay range): mid features, mid features again (resumed from
# the cursor), inside the partitioner, inside a proxy evaluation, later in the assembly stage. The run
# waits at its kill point's first marker until the test has read it, so the delay counts from there
# however late a loaded machine lets the test read the run's output.
KILLS = [(signal.SIGINT, 'MARK features', (0.3, 0.9)), (signal.SIGKILL, 'MARK features', (0.1, 0.5)),
         (signal.SIGINT, 'MARK partition', (0.05, 0.5)), (signal.SIGKILL, 'MARK proxy', (0.05, 0.25)),
         (signal.SIGINT, 'MARK proxy', (0.35, 0.9))]


class Warm:
    def __init__(self):
        import threading
        self.proc = subprocess.Popen([sys.executable, '-u', '-c', WARM], cwd=ROOT, env=_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_for(self, text, timeout=180):
        """True once a line containing ``text`` was printed; False if the process ended first."""
        with self.cond:
            ok = self.cond.wait_for(lambda: any(ln is None or text in ln for ln in self.lines), timeout)
            assert ok, f'no {text!r} in {timeout}s:\n' + ''.join(ln for ln in self.lines if ln)[-3000:]
            return any(ln is not None and text in ln for ln in self.lines)

    def go(self, argv, hold=None):
        """Start the run; with ``hold``, it waits at the first marker ``hold`` until :meth:`release`."""
        self.wait_for('WARM')
        self._send(json.dumps(dict(argv=argv, hold=[hold] if hold else [])))

    def release(self):
        self._send('go')

    def _send(self, line):
        try:
            self.proc.stdin.write(line + '\n')
            self.proc.stdin.flush()
        except BrokenPipeError:  # the run has ended
            pass

    def output(self):
        self.proc.wait(timeout=180)
        self.wait_for('\0never')
        return ''.join(ln for ln in self.lines if ln)


def test_kill_and_resume_gives_identical_outputs(reference, tmp_path):
    ref_dir = reference
    ref = {name: _read(osp.join(ref_dir, name)) for name in OUTPUTS}
    work_dir = str(tmp_path / 'work')
    argv = _assemble_cmd(work_dir)[1:]
    rng = random.Random(0)
    kills, logs = [], []
    finished = {}
    nxt = Warm()
    for sig, after, delays in KILLS:
        cur, nxt = nxt, Warm()
        cur.go(argv, hold=after.split()[1])
        killed = False
        if cur.wait_for(after):
            cur.release()
            time.sleep(rng.uniform(*delays))
            if cur.proc.poll() is None:
                cur.proc.send_signal(sig)
                killed = True
        out = cur.output()
        logs.append(out)
        kills.append((sig.name, after, killed, cur.proc.returncode))
        if killed and sig == signal.SIGINT and cur.proc.returncode not in (0, -signal.SIGINT, 130):
            # SIGINT ends in KeyboardInterrupt, never in another error
            assert 'KeyboardInterrupt' in out, out[-3000:]
        # whatever a killed run left behind: a finished output is complete and final
        for name in OUTPUTS:
            path = osp.join(work_dir, name)
            if osp.isfile(path):
                assert _read(path) == ref[name], f'{name} after kill {kills[-1]} differs'
        # a finished feature cache is never rewritten by a later run
        now = _finished_caches(work_dir)
        for path, mtime in finished.items():
            assert now.get(path) == mtime, f'{path} was recomputed after kill {kills[-1]}'
        finished = now
    nxt.go(argv)
    out = nxt.output()
    assert nxt.proc.returncode == 0, out[-5000:]
    for name in OUTPUTS:
        assert _read(osp.join(work_dir, name)) == ref[name], f'{name} differs from the uninterrupted run {kills}'
    assert _finished_caches(work_dir) == finished or not finished, 'the final run recomputed feature caches'
    assert len(_finished_caches(work_dir)) == 3
    # the kills really interrupted runs, and the features resumed from a cursor or a finished cache
    assert sum(k[2] and k[3] != 0 for k in kills) >= 4, kills
    assert any('resuming the features' in log for log in logs[1:]), kills


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_partition_one_vs_two_processes_byte_identical(reference, tmp_path):
    ref_dir = reference
    work_dir = str(tmp_path / 'work')
    torchrun = osp.join(osp.dirname(sys.executable), 'torchrun')
    out = _run([torchrun, '--nproc_per_node', '2', '--master_port', str(_free_port()),
                osp.join(ROOT, 'tools', 'partition.py'), TINY, '--launcher', 'pytorch', '--work-dir', work_dir,
                '--cfg-options', *OPTS])
    assert '2 process(es)' in out, out[-3000:]
    # assembly runs on rank 0 from partition.json, so equal partitions give equal assemblies
    assert _read(osp.join(work_dir, 'partition.json')) == _read(osp.join(ref_dir, 'partition.json'))
    assert json.loads(_read(osp.join(work_dir, 'partition.json')))['seed'] == 0


def test_training_killed_resumes(reference, tmp_path):
    """SIGKILL after the first checkpoint; ``--resume`` continues from it and reuses the stages."""
    import shutil
    ref_dir = reference
    work_dir = str(tmp_path / 'work')
    shutil.copytree(ref_dir, work_dir)
    stamps = {n: os.stat(osp.join(work_dir, n)).st_mtime_ns for n in OUTPUTS + ('assembled_init.pth', )}
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), TINY, '--work-dir', work_dir, '--cfg-options',
           *OPTS, 'train_cfg.max_iters=6', 'train_cfg.val_interval=6', 'default_hooks.checkpoint.interval=2',
           'default_hooks.logger.interval=1', 'train_dataloader.batch_size=8']
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    try:
        while not osp.isfile(osp.join(work_dir, 'last_checkpoint')) and proc.poll() is None:
            assert time.monotonic() < deadline, 'training wrote no checkpoint'
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    out = _run(cmd + ['--resume'])
    assert 'resumed' in out.lower(), out[-3000:]
    assert osp.isfile(osp.join(work_dir, 'iter_6.pth')), out[-3000:]
    for name, mtime in stamps.items():
        assert os.stat(osp.join(work_dir, name)).st_mtime_ns == mtime, f'{name} was redone on resume'


# Under torchrun: every rank writes its pid, and each feature batch is slowed down so that a kill
# lands inside the similarity stage.
SLOW_RANK = """
import os, runpy, sys, time
open(os.path.join(sys.argv[1], 'rank%s.pid' % os.environ['RANK']), 'w').write(str(os.getpid()))
from dery.similarity import pipeline
_orig = pipeline.capture_batch


def _slow(*args, **kwargs):
    time.sleep(0.25)
    print('MARK batch rank', os.environ['RANK'], flush=True)
    return _orig(*args, **kwargs)


pipeline.capture_batch = _slow
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_torchrun_rank_killed_in_similarity_then_rerun_equals_uninterrupted(reference, tmp_path):
    """Kill rank 1 of a 2-process CPU run in the middle of the feature capture; the rerun resumes the
    features and gives the uninterrupted single-process outputs, bit for bit."""
    import numpy as np
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    wrapper = tmp_path / 'slow_rank.py'
    wrapper.write_text(SLOW_RANK)
    torchrun = osp.join(osp.dirname(sys.executable), 'torchrun')
    tool_args = [osp.join(ROOT, 'tools', 'partition.py'), TINY, '--launcher', 'pytorch', '--work-dir', work_dir,
                 '--cfg-options', *OPTS]
    proc = subprocess.Popen([torchrun, '--nproc_per_node', '2', '--master_port', str(_free_port()), str(wrapper),
                             str(tmp_path), *tool_args], cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marks, killed, lines = 0, False, []
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        lines.append(line)
        if 'MARK batch rank 1' in line:
            marks += 1
            if marks == 4:  # rank 1 is inside the 4th batch of its first model (6 batches per model)
                with open(tmp_path / 'rank1.pid') as f:
                    os.kill(int(f.read()), signal.SIGKILL)
                killed = True
        assert time.monotonic() < deadline, ''.join(lines)[-3000:]
    proc.wait(timeout=60)
    assert killed and proc.returncode != 0, ''.join(lines)[-3000:]
    assert not osp.isfile(osp.join(work_dir, 'partition.json')), 'the killed run finished'
    out = _run([torchrun, '--nproc_per_node', '2', '--master_port', str(_free_port()), *tool_args])
    assert 'resuming the features' in out, out[-3000:]
    assert _read(osp.join(work_dir, 'partition.json')) == _read(osp.join(reference, 'partition.json'))
    with np.load(osp.join(work_dir, 'similarity.npz')) as a, np.load(osp.join(reference, 'similarity.npz')) as b:
        assert np.array_equal(a['all'], b['all'])
