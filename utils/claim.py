"""One holder per folder: a claim file made atomically (safe on NFS), kept alive by a heartbeat.

A claim is a small JSON file (host, boot id, pid and its start tick, SLURM job / array ids, start time, a
random token). It is written whole into a unique temporary file first, then hard-linked to the claim's
name: the link either makes the claim or fails because one exists, and the temporary file's link count
(2 after a successful link) settles an NFS reply that was lost and retried. Where a filesystem has no
hard links, O_CREAT | O_EXCL makes it instead. No reliance on flock.

While held, a daemon thread touches the claim every HEARTBEAT_S seconds. A claim is *stale*, and another
process may take it over (with one warning line), when
- its holder ran on this host (same host name and boot) and that process is gone (or its pid now belongs
  to another process), or the host has rebooted since; or
- its heartbeat is older than STALE_S seconds (a holder on another host that died, or hangs).
A takeover happens under a short guard file (`<claim>.takeover`, made the same way): the stale claim is
re-read there and a new claim renamed over it, so two takers never replace a fresh claim and the claim
never goes missing for a third process to make. Release removes the claim only while it is still this
holder's (same token), then the folders made for it if they are empty. Nothing here knows what the
folder holds.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import random
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HEARTBEAT_S = 30  # the holder touches its claim this often
STALE_S = 300  # a claim untouched this long is stale: its holder died on another host, or hangs
GUARD_STALE_S = 60  # a takeover guard older than this was left by a taker that died within the takeover
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")

HOST = socket.gethostname()


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start tick) of a process from /proc (Linux), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], fields[19]


BOOT = _boot_id()


def _process_alive(pid: int, start_tick: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, tick = stat
    return state not in ("Z", "X") and (start_tick is None or tick == start_tick)  # a reused pid is not the holder


@dataclass
class Holder:
    """What a claim file says about its holder, and when it last heard from it (the file's mtime)."""
    path: Path
    mtime: float
    ino: int
    info: dict = field(default_factory=dict)  # empty: unreadable (a claim still being written by O_EXCL)

    @property
    def identity(self) -> str:
        return self.info.get("token") or f"inode {self.ino}"

    @property
    def pid(self) -> int | None:
        return self.info.get("pid")

    def describe(self, now: float | None = None) -> str:
        """host, pid, SLURM ids, start time and the heartbeat's age, in a few words."""
        now = time.time() if now is None else now
        if not self.info:
            return f"an unreadable claim ({self.path}), heartbeat {now - self.mtime:.0f} s ago"
        i = self.info
        slurm = f", SLURM job {i['SLURM_JOB_ID']}" if i.get("SLURM_JOB_ID") else ""
        if i.get("SLURM_ARRAY_JOB_ID"):
            slurm += f" (array task {i['SLURM_ARRAY_JOB_ID']}_{i.get('SLURM_ARRAY_TASK_ID', '?')})"
        return (f"host {i.get('host')} pid {i.get('pid')}{slurm}, since {i.get('started', '?')}, "
                f"heartbeat {max(0.0, now - self.mtime):.0f} s ago")

    def stale_reason(self, stale_s: float = STALE_S, now: float | None = None) -> str | None:
        """Why this claim may be taken over, or None while its holder lives."""
        now = time.time() if now is None else now
        i = self.info
        if i.get("host") == HOST and i.get("pid"):
            if BOOT and i.get("boot") and i["boot"] != BOOT:
                return f"{HOST} has restarted since"
            if (not i.get("boot") or i["boot"] == BOOT) and not _process_alive(int(i["pid"]), i.get("pid_start")):
                return f"process {i['pid']} on {HOST} is gone"
        age = now - self.mtime
        if age > stale_s:
            return f"no heartbeat for {age:.0f} s (stale after {stale_s:.0f} s)"
        return None


class ClaimHeld(Exception):
    """The folder is claimed by a live holder; str() is one line naming it."""

    def __init__(self, path, holder: Holder):
        self.path, self.holder = Path(path), holder
        super().__init__(f"{self.path} is held by {holder.describe()}")


def read(path) -> Holder | None:
    """The claim at `path`, or None when there is none."""
    path = Path(path)
    try:
        st = os.stat(path)
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        info = info if isinstance(info, dict) else {}
    except ValueError:
        info = {}
    return Holder(path, st.st_mtime, st.st_ino, info)


def live_holder(path, stale_s: float = STALE_S) -> Holder | None:
    """The holder of the claim at `path` if it is live (neither missing nor stale), else None."""
    holder = read(path)
    return holder if holder is not None and holder.stale_reason(stale_s) is None else None


def _write_temp(path: Path, text: str) -> Path:
    """`text` in a new file beside `path`, unique to this process (removed by its maker; one a crash left is
    found by utils.io.remove_stale_temps as `.*.tmp` when `path`'s name starts with a dot)."""
    tmp = path.with_name(f"{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "x") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def _create(path: Path, text: str) -> bool:
    """Make `path` hold `text` unless it exists (True: made by this call). Written whole into a unique
    temporary file, then hard-linked to `path`; the link count decides (NFS: a retried link may report
    EEXIST although it was made). O_CREAT | O_EXCL where hard links are not supported."""
    tmp = _write_temp(path, text)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as err:
            if err.errno == errno.ENOENT:
                return False  # the temporary file was removed meanwhile: the caller looks again
            if err.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                return _create_excl(path, text)  # no hard links on this filesystem
            raise
        try:
            return os.stat(tmp).st_nlink == 2
        except FileNotFoundError:
            return False
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _create_excl(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return True


_HELD: set = set()  # the claims this process holds (released at exit, and by release_held)


class Claim:
    """A claim on one folder: `Claim(path).acquire()` or `with Claim(path):`. acquire() raises ClaimHeld
    naming a live holder, takes a stale claim over with one warning line (through `say`), and starts the
    heartbeat; release() stops it and removes the claim while it is still this one."""

    def __init__(self, path, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S, say=None):
        self.path = Path(path)
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.token = None
        self.started = None  # the claim file's mtime when made (the filesystem's clock)
        self._stop = threading.Event()
        self._thread = None
        self._made_dirs = []

    def _content(self) -> str:
        tick = _proc_stat(os.getpid())
        info = {"host": HOST, "boot": BOOT, "pid": os.getpid(), "pid_start": tick[1] if tick else None,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "start_time": time.time(), "token": self.token,
                **{k: os.environ[k] for k in SLURM_VARS if os.environ.get(k)}}
        return json.dumps(info)

    def acquire(self, timeout_s: float = 30.0) -> "Claim":
        self.token = secrets.token_hex(8)
        self._made_dirs = [d for d in [self.path.parent, *self.path.parent.parents] if not d.exists()]
        _HELD.add(self)  # first: an interrupt (SIGTERM, Ctrl-C) from here on still releases what this made
        try:
            took_over = self._make(time.monotonic() + timeout_s)
            self.started = os.stat(self.path).st_mtime
        except BaseException:
            self.release()  # removes the claim only if this call made it
            raise
        if took_over:
            holder, why = took_over
            self.say(f"warning: took over the stale claim {self.path} of {holder.describe()}: {why}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"claim heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return self

    def _make(self, deadline: float) -> tuple | None:
        """Make the claim (or take a stale one over); None, or (holder, why) of the claim taken over."""
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if _create(self.path, self._content()):
                    return None
            except FileNotFoundError:  # its folder was just removed (an empty one, by a releasing holder)
                if time.monotonic() > deadline:
                    raise
                continue
            holder = read(self.path)
            if holder is not None:
                why = holder.stale_reason(self.stale_s)
                if why is None:
                    raise ClaimHeld(self.path, holder)
                if self._take_over(holder):
                    return holder, why
            if time.monotonic() > deadline:  # another process keeps taking it over or releasing it
                raise ClaimHeld(self.path, holder) if holder else TimeoutError(f"{self.path}: cannot be claimed")
            time.sleep(0.05 + 0.1 * random.random())

    def _take_over(self, holder: Holder) -> bool:
        """Replace `holder`'s stale claim by this one, under the takeover guard: re-read there (still the same
        claim, still stale), then renamed over it, so the claim never goes missing for another process to
        make. True when this process holds it now; False when another is taking it over, or it changed."""
        guard = self.path.with_name(self.path.name + ".takeover")
        if not _create(guard, self._content()):
            try:
                if time.time() - os.stat(guard).st_mtime > GUARD_STALE_S:
                    guard.unlink(missing_ok=True)  # its taker died within the takeover
            except FileNotFoundError:
                pass
            return False
        tmp = None
        try:
            now = read(self.path)
            if now is None or now.identity != holder.identity:
                return False  # gone or replaced meanwhile: look again
            if now.stale_reason(self.stale_s) is None:
                return False  # alive again (a heartbeat came): look again
            tmp = _write_temp(self.path, self._content())
            try:
                os.replace(tmp, self.path)
            except FileNotFoundError:
                pass  # NFS: a retried rename whose first attempt was done
            return self.is_mine()
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            guard.unlink(missing_ok=True)

    def is_mine(self) -> bool:
        holder = read(self.path)
        return holder is not None and holder.info.get("token") == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = read(self.path)
            if holder is None or holder.info.get("token") != self.token:
                self.say(f"warning: the claim {self.path} of this process (pid {os.getpid()}) was "
                         + (f"taken over by {holder.describe()}" if holder else "removed"))
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if it is still this one, then the folders that acquire()
        made for it if they are empty (a run that never started leaves no folder behind)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self in _HELD:
            if self.is_mine():
                self.path.unlink(missing_ok=True)
            _HELD.discard(self)
            for folder in self._made_dirs:  # deepest first
                try:
                    folder.rmdir()
                except OSError:  # not empty (the run's files, another claim), or gone: keep the rest
                    break

    def __enter__(self) -> "Claim":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def release_held() -> None:
    """Release every claim this process holds (also run at exit)."""
    for held in list(_HELD):
        held.release()


atexit.register(release_held)


@contextlib.contextmanager
def scope():
    """Release, on leaving the block however it ends, every claim acquired within it (and only those)."""
    before = set(_HELD)
    try:
        yield
    finally:
        for held in list(_HELD - before):
            held.release()
