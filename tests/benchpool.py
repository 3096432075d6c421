"""The bench smoke runs (tests/unit/test_bench_*.py), started in the background when the session
begins, one at a time, so they overlap the tests that use one CPU (tests/bpf, the rest of
tests/unit) instead of adding their minutes after them. Never beside tests/e2e: before an e2e test
the pool lets the running bench finish and starts no other until a non-e2e test comes (an e2e test
may count the host's iperf3 servers or share its CPU-bound timing windows).

A bench module declares BENCH_JOB = job(tmp: Path) -> value: the whole bench run and its
leftover checks, exactly what its module fixture did; the fixture returns `result(module)`, the
job's value or its exception (an assertion, a pytest.skip) raised again in the test. Jobs start
their processes through `popen`: niced (the foreground tests keep their CPU), and known to the
pool, so a session that ends early (-x, Ctrl-C) stops them with SIGINT (the benches clean up in
`finally`), then SIGKILL after a grace period.

API (tests/conftest.py drives it):
    start(jobs)          {module name: job}, in this order, in a background thread
    pause() / resume()   finish the running job and hold the rest / go on
    result(module)       wait for that job (run it here when it was never scheduled)
    popen(argv, **kw)    subprocess.Popen, known to stop()
    run_json(argv, cwd)  a bench CLI's JSON, its success and no leftover netns/pins checked
    stop()               end the session's jobs, remove their temporary directory
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

GRACE = 60          # s a bench gets to clean up after SIGINT
NICE = 10           # the benches' niceness, above the test session's


class _Pool:
    def __init__(self):
        self.cond = threading.Condition()
        self.jobs: dict[str, object] = {}
        self.queue: list[str] = []
        self.done: dict[str, tuple[bool, object]] = {}
        self.running: str | None = None
        self.paused = False
        self.stopping = False
        self.procs: set[subprocess.Popen] = set()
        self.thread: threading.Thread | None = None
        self.tmp: Path | None = None

    def _tmpdir(self, name: str) -> Path:
        if self.tmp is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="dpbench-pool-"))
        d = self.tmp / name.rsplit(".", 1)[-1]
        d.mkdir()
        return d

    def _run(self, name: str) -> None:
        try:
            value = (True, self.jobs[name](self._tmpdir(name)))
        except BaseException as e:       # noqa: BLE001 - a skip or an assertion, raised later
            value = (False, e)
        with self.cond:
            self.done[name] = value
            self.running = None
            self.cond.notify_all()

    def _worker(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and (self.paused or self.running is not None or
                                             not self.queue):
                    if not self.queue:
                        return
                    self.cond.wait()
                if self.stopping:
                    return
                name = self.running = self.queue.pop(0)
            self._run(name)

    def start(self, jobs: dict) -> None:
        with self.cond:
            self.jobs.update(jobs)
            self.queue += [n for n in jobs if n not in self.done and n not in self.queue]
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._worker, name="benchpool", daemon=True)
            self.thread.start()

    def pause(self) -> None:
        with self.cond:
            self.paused = True
            while self.running is not None:
                self.cond.wait()

    def resume(self) -> None:
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def result(self, name: str, job=None):
        with self.cond:
            if job is not None:
                self.jobs.setdefault(name, job)
            here = name not in self.done and self.running != name
            if here:                    # not started yet, or never scheduled: run it here
                if name in self.queue:
                    self.queue.remove(name)
                while self.running is not None:        # one bench at a time
                    self.cond.wait()
                self.running = name
        if here:
            self._run(name)
        with self.cond:
            while name not in self.done:
                self.cond.wait()
            return self._value(name)

    def _value(self, name: str):
        ok, value = self.done[name]
        if not ok:
            raise value
        return value

    def popen(self, argv, **kw) -> subprocess.Popen:
        # niced: the foreground tests (the critical path) keep their CPU, the bench takes the
        # rest; its children (a lab's agents) inherit it. nice execs: p.pid is the bench's pid
        p = subprocess.Popen(["nice", "-n", str(NICE), *argv], **kw)
        with self.cond:
            self.procs.add(p)
        return p

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.queue.clear()
            procs = [p for p in self.procs if p.poll() is None]
            self.cond.notify_all()
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.thread is not None:
            self.thread.join(timeout=GRACE)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


POOL = _Pool()
start, pause, resume, result, popen, stop = (POOL.start, POOL.pause, POOL.resume, POOL.result,
                                             POOL.popen, POOL.stop)


def run_json(argv, cwd, timeout: float = 900):
    """Run a bench's CLI (`--json`) through `popen`; check it succeeded and left no netns and no
    pin directory named after its pid (dpbench-<pid>-...: other labs may come and go); return
    its JSON."""
    import json
    import os

    from datapath import netns
    p = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    finally:
        p.kill()
    assert p.returncode == 0, stderr[-3000:]
    assert not [n for n in netns.list_names() if n.startswith(f"dpbench-{p.pid}-")]
    assert not [d for d in os.listdir("/sys/fs/bpf") if d.startswith(f"dpbench-{p.pid}-")]
    return json.loads(stdout)
