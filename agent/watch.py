"""File changes as an event source: the agent's config file and its manifests directory.

API:
    FileWatcher(paths, use_inotify=True, interval=0.25)
        paths: files, and directories (whose entries are watched too)
        .poll() -> set[str]      the paths changed (created, modified, deleted, renamed to or
                                 from) since the last poll, spelled as given: a file target as
                                 given, an entry of a directory target as os.path.join(directory,
                                 name), and a directory target itself when it was replaced,
                                 removed or created, or the kernel's queue overflowed (read all
                                 of it again). Never reads file contents; an idle poll costs
                                 microseconds (one non-blocking read()).
        .wait(timeout, wake=None) -> set[str]
                                 block until something changed, `wake` (a threading.Event) is
                                 set, or `timeout` seconds passed; then poll()
        .fileno() -> int         the inotify descriptor, for select() (inotify mode only; use
                                 either fileno() with poll(), or wait(), not both)
        .mode                    "inotify"; "stat" when inotify is not there (or not wanted);
                                 "inotify+stat" when some target's parent could not be watched
        .close()

With inotify (through libc, by ctypes) each target's parent directory is watched, so a file an
editor replaces by a rename, a symlink swapped under a file (a ConfigMap volume) and a directory
that is itself removed or replaced are all seen; a directory target is watched too, for its
entries. Events: IN_CLOSE_WRITE (a writer finished: not every IN_MODIFY of a long write),
IN_MOVED_TO/FROM, IN_CREATE, IN_DELETE, IN_ATTRIB (touch, chmod), IN_DELETE_SELF/IN_MOVE_SELF.
Without inotify (or for a target whose parent does not exist yet) each poll compares
(inode, mtime_ns, size, ctime_ns) of the targets and of a directory's entries with the last poll.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
import time

__all__ = ["FileWatcher"]

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# one mask for every watch: a directory is often both a target and a target's parent
_MASK = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB
         | IN_DELETE_SELF | IN_MOVE_SELF)
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_EVENT = struct.Struct("iIII")        # struct inotify_event: wd, mask, cookie, len (then name)
_READ_SIZE = 64 * 1024


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def _sig(path: str):
    """What tells a changed file from an unchanged one without reading it (None: missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


class _Target:
    """One path given to the watcher."""
    __slots__ = ("name", "abs", "parent", "base", "dir_wd", "sig", "entries", "inotify")

    def __init__(self, path: str):
        self.name = os.fspath(path).rstrip("/") or "/"      # how changes are reported
        self.abs = os.path.abspath(self.name)
        self.parent, self.base = os.path.split(self.abs)
        self.dir_wd = -1                  # the watch on the target, when it is a directory
        self.sig = _sig(self.abs)         # stat mode, and file targets' symlink swaps
        self.entries: dict[str, tuple] | None = None   # stat mode: a directory's entries
        self.inotify = False

    def scan(self) -> dict[str, tuple] | None:
        """A directory's entries and their signatures (None when not a directory)."""
        try:
            names = os.listdir(self.abs)
        except OSError:
            return None
        return {n: _sig(os.path.join(self.abs, n)) for n in names}


class FileWatcher:
    """See the module's API."""

    def __init__(self, paths, use_inotify: bool = True, interval: float = 0.25):
        self.interval = interval
        self._targets = [_Target(p) for p in paths]
        self._lock = threading.Lock()
        self._pending: set[str] = set()   # changes read by the wait thread, not yet polled
        self._fd = -1
        self._wds: dict[int, list[tuple[str, _Target]]] = {}   # wd -> ("parent"|"dir", target)
        self._thread: threading.Thread | None = None
        self._wake: threading.Event | None = None
        self._stop_r = self._stop_w = -1
        self._closed = False
        libc = _libc() if use_inotify else None
        if libc is not None:
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd >= 0:
                self._libc, self._fd = libc, fd
        for t in self._targets:
            if self._fd >= 0 and self._add(self.parent_path(t), ("parent", t)) >= 0:
                t.inotify = True
                self._sync_dir(t)
            else:
                t.entries = t.scan()
        self.mode = "inotify" if self._fd >= 0 and all(t.inotify for t in self._targets) \
            else "stat" if self._fd < 0 else "inotify+stat"

    @staticmethod
    def parent_path(t: _Target) -> str:
        return t.parent or "/"

    # ---- inotify ----
    def _add(self, path: str, role: tuple[str, _Target]) -> int:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _MASK)
        if wd < 0:
            return -1
        roles = self._wds.setdefault(wd, [])
        if role not in roles:
            roles.append(role)
        return wd

    def _drop(self, wd: int, role: tuple[str, _Target]) -> None:
        roles = self._wds.get(wd)
        if roles and role in roles:
            roles.remove(role)
            if not roles:
                del self._wds[wd]
                self._libc.inotify_rm_watch(self._fd, wd)   # EINVAL when already gone: fine

    def _sync_dir(self, t: _Target) -> bool:
        """Watch the directory now at the target's path; True when that is another one than
        before (created, replaced or removed)."""
        old = t.dir_wd
        new = -1
        if os.path.isdir(t.abs):
            new = self._add(t.abs, ("dir", t))
        if new != old and old >= 0:
            self._drop(old, ("dir", t))
        t.dir_wd = new
        return new != old

    def _read_events(self, out: set[str]) -> None:
        while True:
            try:
                buf = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not buf:
                return
            pos = 0
            while pos < len(buf):
                wd, mask, _cookie, n = _EVENT.unpack_from(buf, pos)
                pos += _EVENT.size
                name = buf[pos:pos + n].rstrip(b"\0")
                pos += n
                self._event(wd, mask, os.fsdecode(name) if name else "", out)

    def _event(self, wd: int, mask: int, name: str, out: set[str]) -> None:
        if mask & IN_Q_OVERFLOW:            # events were lost: everything may have changed
            for t in self._targets:
                if t.inotify:
                    self._sync_dir(t)
                    out.add(t.name)
            return
        for role, t in list(self._wds.get(wd, ())):
            if role == "dir":
                if name:
                    out.add(os.path.join(t.name, name))
                elif mask & _SELF_GONE:     # the directory itself went away (or moved)
                    if mask & IN_IGNORED:
                        self._wds.pop(wd, None)
                        if t.dir_wd == wd:
                            t.dir_wd = -1
                    self._sync_dir(t)
                    out.add(t.name)
            elif name == t.base:            # the target itself, in its parent
                if self._sync_dir(t) or t.dir_wd < 0 or mask & (IN_CREATE | IN_MOVED_TO):
                    out.add(t.name)
                t.sig = _sig(t.abs)
            elif name and t.dir_wd < 0:     # a sibling: a symlink swapped under a file?
                sig = _sig(t.abs)
                if sig != t.sig:
                    t.sig = sig
                    out.add(t.name)
            if role == "parent" and not name and mask & IN_IGNORED:
                self._wds.pop(wd, None)     # the parent itself is gone: fall back to stat
                t.inotify = False
                t.entries = t.scan()
                out.add(t.name)

    # ---- stat ----
    def _stat_poll(self, t: _Target, out: set[str]) -> None:
        sig = _sig(t.abs)
        entries = t.scan()
        if (sig is None) != (t.sig is None) or (sig and t.sig and sig[0] != t.sig[0]) or \
                (entries is None) != (t.entries is None):
            out.add(t.name)                 # created, removed or replaced
        elif entries is None and sig != t.sig:
            out.add(t.name)                 # a file target changed
        if entries is not None and t.entries is not None and entries != t.entries:
            for n in entries.keys() | t.entries.keys():
                if entries.get(n) != t.entries.get(n):
                    out.add(os.path.join(t.name, n))
        t.sig, t.entries = sig, entries

    # ---- API ----
    def poll(self) -> set[str]:
        out: set[str] = set()
        with self._lock:
            if self._closed:
                return out
            if self._fd >= 0:
                self._read_events(out)
            for t in self._targets:
                if not t.inotify:
                    self._stat_poll(t, out)
            if self._pending:
                out |= self._pending
                self._pending = set()
        return out

    def fileno(self) -> int:
        if self._fd < 0:
            raise OSError(errno.EOPNOTSUPP, "no inotify: the watcher polls with stat")
        return self._fd

    def wait(self, timeout: float, wake: threading.Event | None = None) -> set[str]:
        """Block until a change, `wake` being set, or `timeout`; then poll()."""
        stat_only = self._fd < 0 or any(not t.inotify for t in self._targets)
        if wake is None and not stat_only:
            changed = self.poll()
            if not changed and timeout > 0:
                try:
                    select.select([self._fd], [], [], timeout)
                except (OSError, ValueError):   # closed meanwhile
                    return set()
                changed = self.poll()
            return changed
        if not stat_only:
            self._start_thread(wake)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            changed = self.poll()
            left = deadline - time.monotonic()
            if changed or left <= 0 or self._closed:
                return changed
            step = min(left, self.interval) if stat_only else left
            if wake is not None:
                if wake.wait(step):
                    return self.poll()
            else:
                threading.Event().wait(step)

    def _start_thread(self, wake: threading.Event | None) -> None:
        """A thread blocks on the inotify descriptor and sets `wake` when something arrives,
        so the caller can sleep on its Event (set by other threads too)."""
        self._wake = wake
        if self._thread is not None:
            return
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="file-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready or self._closed:
                return
            got: set[str] = set()
            with self._lock:
                if self._closed:
                    return
                self._read_events(got)
                self._pending |= got
            if got and self._wake is not None:
                self._wake.set()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            os.close(self._stop_r)
            os.close(self._stop_w)
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "FileWatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
