"""Unit tests for agent/watch.py's FileWatcher, with inotify and with the stat fallback: files
created, modified in place, replaced by a rename, deleted; a directory replaced; a ConfigMap-style
symlink swap; nothing when idle; wait() with and without a wake Event."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from agent.watch import FileWatcher

MODES = [True, False]
IDS = ["inotify", "stat"]


@pytest.fixture(params=MODES, ids=IDS)
def use_inotify(request) -> bool:
    return request.param


def setup(tmp_path: Path) -> tuple[Path, Path]:
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "a.yaml").write_text("a: 1\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("x: 1\n")
    return mdir, cfg


def settle(w: FileWatcher, want: set[str], timeout: float = 5.0,
           got: set[str] | None = None) -> set[str]:
    """poll() until every path in `want` was reported (events can arrive a little late)."""
    got = set(got or ())
    end = time.monotonic() + timeout
    while not want <= got and time.monotonic() < end:
        got |= w.poll()
        time.sleep(0.01)
    return got


def test_files_in_a_directory(tmp_path: Path, use_inotify: bool) -> None:
    mdir, cfg = setup(tmp_path)
    with FileWatcher([str(cfg), str(mdir)], use_inotify=use_inotify) as w:
        assert w.mode == ("inotify" if use_inotify else "stat")
        assert w.poll() == set() and w.poll() == set()              # idle: nothing
        a, b = str(mdir / "a.yaml"), str(mdir / "b.yaml")
        (mdir / "b.yaml").write_text("b: 1\n")                       # created
        assert b in settle(w, {b})
        with open(a, "a") as f:                                       # modified in place
            f.write("more: 2\n")
        got = settle(w, {a})
        assert a in got and str(cfg) not in got
        tmp = mdir / ".b.yaml.swp"                                    # replaced by a rename
        tmp.write_text("b: 2\nc: 3\n")
        os.replace(tmp, mdir / "b.yaml")
        assert b in settle(w, {b})
        os.unlink(a)                                                  # deleted
        assert a in settle(w, {a})
        time.sleep(0.05)
        assert w.poll() == set()


def test_config_file_edits(tmp_path: Path, use_inotify: bool) -> None:
    mdir, cfg = setup(tmp_path)
    (tmp_path / "other.txt").write_text("o")
    with FileWatcher([str(cfg), str(mdir)], use_inotify=use_inotify) as w:
        cfg.write_text("x: 22\n")
        assert settle(w, {str(cfg)}) == {str(cfg)}
        new = tmp_path / "config.yaml.new"                            # an editor's rename
        new.write_text("x: 333\n")
        os.replace(new, cfg)
        assert str(cfg) in settle(w, {str(cfg)})
        (tmp_path / "other.txt").write_text("oo")                     # a sibling: not reported
        time.sleep(0.05)
        assert w.poll() == set()


def test_symlink_swap_under_a_config_file(tmp_path: Path, use_inotify: bool) -> None:
    # a ConfigMap volume: config.yaml -> ..data/config.yaml, '..data' swapped by a rename
    for v in ("v1", "v2"):
        (tmp_path / f"..{v}").mkdir()
        (tmp_path / f"..{v}" / "config.yaml").write_text(f"version: {v}\n")
    (tmp_path / "..data").symlink_to("..v1")
    cfg = tmp_path / "config.yaml"
    cfg.symlink_to("..data/config.yaml")
    with FileWatcher([str(cfg)], use_inotify=use_inotify) as w:
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert str(cfg) in settle(w, {str(cfg)})


def test_a_replaced_directory(tmp_path: Path, use_inotify: bool) -> None:
    mdir, cfg = setup(tmp_path)
    with FileWatcher([str(mdir) + "/"], use_inotify=use_inotify) as w:
        new = tmp_path / "manifests.new"
        new.mkdir()
        (new / "z.yaml").write_text("z: 1\n")
        old = tmp_path / "manifests.old"
        os.rename(mdir, old)
        os.rename(new, mdir)
        assert str(mdir) in settle(w, {str(mdir)})
        (mdir / "y.yaml").write_text("y: 1\n")                       # the new one is watched
        assert str(mdir / "y.yaml") in settle(w, {str(mdir / "y.yaml")})
        (old / "a.yaml").write_text("gone: 1\n")                     # the old one is not
        time.sleep(0.05)
        assert str(mdir / "a.yaml") not in w.poll()
        shutil.rmtree(mdir)                                           # removed, then back
        assert str(mdir) in settle(w, {str(mdir)})
        mdir.mkdir()
        assert str(mdir) in settle(w, {str(mdir)})


def test_wait_blocks_until_a_change_or_a_wake(tmp_path: Path, use_inotify: bool) -> None:
    mdir, cfg = setup(tmp_path)
    with FileWatcher([str(cfg), str(mdir)], use_inotify=use_inotify, interval=0.02) as w:
        t0 = time.monotonic()
        assert w.wait(0.1) == set()
        assert time.monotonic() - t0 >= 0.09
        timer = threading.Timer(0.05, lambda: (mdir / "n.yaml").write_text("n: 1\n"))
        timer.start()
        got = w.wait(5.0)
        timer.join()
        assert str(mdir / "n.yaml") in settle(w, {str(mdir / "n.yaml")}, got=got)
        wake = threading.Event()                                      # the agent's wake Event
        timer = threading.Timer(0.05, wake.set)
        timer.start()
        t0 = time.monotonic()
        assert w.wait(5.0, wake) <= {str(mdir / "n.yaml")}       # (its close may come late)
        assert time.monotonic() - t0 < 4
        timer.join()
        wake.clear()
        timer = threading.Timer(0.05, lambda: cfg.write_text("x: 5\n"))
        timer.start()
        got = w.wait(5.0, wake)
        timer.join()
        assert str(cfg) in settle(w, {str(cfg)}, got=got)
    w.close()                                                         # twice: fine
    assert w.poll() == set()


def test_fileno_and_select(tmp_path: Path) -> None:
    mdir, cfg = setup(tmp_path)
    with FileWatcher([str(mdir)]) as w:
        import select
        assert select.select([w], [], [], 0)[0] == []
        (mdir / "q.yaml").write_text("q: 1\n")
        assert select.select([w], [], [], 5)[0] == [w]
        assert str(mdir / "q.yaml") in w.poll()
    with FileWatcher([str(mdir)], use_inotify=False) as w, pytest.raises(OSError):
        w.fileno()


def test_a_directory_that_does_not_exist_yet(tmp_path: Path, use_inotify: bool) -> None:
    mdir = tmp_path / "later"
    with FileWatcher([str(mdir)], use_inotify=use_inotify) as w:
        assert w.poll() == set()
        mdir.mkdir()
        assert str(mdir) in settle(w, {str(mdir)})
        (mdir / "a.yaml").write_text("a: 1\n")
        assert str(mdir / "a.yaml") in settle(w, {str(mdir / "a.yaml")})
