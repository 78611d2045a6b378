"""Starting and stopping a job's child so that it never outlives its daemon.

The daemon forks a small *shepherd* (no new interpreter, so the start stays fast) that:

* starts a new session, so it leads a fresh process group that the app and its children join;
* asks the kernel for ``SIGUSR1`` when its parent (the daemon) dies, via
  ``prctl(PR_SET_PDEATHSIG)`` — tied to the forking *thread*, so the daemon forks from its main
  thread and runs no other threads;
* points stdin at /dev/null and stdout+stderr at the job log, closes every other descriptor
  (database files, GPU locks), then starts the app with ``posix_spawn`` (no shell);
* ignores SIGTERM/SIGINT itself, so the daemon's ``killpg(SIGTERM)`` reaches only the app's
  side, and exits with the app's status (re-raising the app's fatal signal on itself);
* on its parent's death: SIGTERM to the group, a grace period, then SIGKILL to the group;
* is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a descendant that left the group with
  ``setsid`` (a daemonizing tool, a stray server) is still re-parented to the shepherd when its
  own parent dies, so when the app ends, or on the daemon's last-resort ``SIGUSR2``, the shepherd
  SIGKILLs every descendant it has, setsid'd ones included, and nothing outlives the job.

The daemon cancels with SIGTERM to the group; after a grace period it asks the shepherd (SIGUSR2)
to SIGKILL every descendant and itself, then SIGKILLs the group; after the shepherd ends it
SIGKILLs whatever is left in the group (before reaping it, so the group id cannot have been reused).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import time
from pathlib import Path

from expctl.files import write_atomically

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DEATH_SIGNAL = signal.SIGUSR1
KILL_ALL_SIGNAL = signal.SIGUSR2  # the daemon asks the shepherd to SIGKILL every descendant
_LIBC = ctypes.CDLL(None, use_errno=True)


# Signals the app gets back at their default disposition (the shepherd ignores or handles them;
# Python itself ignores SIGPIPE and SIGXFSZ).
_DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGPIPE, signal.SIGXFSZ, PARENT_DEATH_SIGNAL, KILL_ALL_SIGNAL)


def _set_parent_death_signal(signum: int) -> None:
    if _LIBC.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _children_of(pid: int) -> list[int]:
    """Live children of ``pid`` (a scan of /proc: works without CONFIG_PROC_CHILDREN)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def _kill_descendants(timeout_s: float = 10.0) -> None:
    """In the shepherd (a subreaper): SIGKILL and reap every descendant. A killed child's own
    children are re-parented to us, so the loop goes on until none is left."""
    me = os.getpid()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        children = _children_of(me)
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


class Child:
    """A started job: the shepherd's pid is also the process group id."""

    def __init__(self, pid: int, started_at: float) -> None:
        self.pid = pid
        self.started_at = started_at
        self.returncode: int | None = None
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def _exited(self) -> bool:
        """Whether the shepherd has exited (without reaping it)."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid == self.pid

    def poll(self) -> int | None:
        """The return code (negative: killed by that signal), or None while it runs."""
        if self.returncode is not None:
            return self.returncode
        if not self._exited():
            return None
        self.kill_group()  # strays of the app die with it; the zombie keeps the group id reserved
        try:
            _pid, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            self.returncode = -signal.SIGKILL
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the exit; the return code or None."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.02))

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the whole process group (ignored once it is gone)."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_group(self) -> None:
        """SIGKILL everything left in the group."""
        self.signal_group(signal.SIGKILL)

    def terminate(self, grace_s: float) -> int:
        """SIGTERM the group; after ``grace_s`` have the shepherd SIGKILL every descendant (setsid'd
        ones too) and itself, then SIGKILL the group; the return code."""
        if self.poll() is not None:
            return self.returncode  # type: ignore[return-value]
        self.signal_group(signal.SIGTERM)
        code = self.wait(grace_s)
        if code is None:
            try:
                os.kill(self.pid, KILL_ALL_SIGNAL)
            except ProcessLookupError:
                pass
            code = self.wait(5.0)
        if code is None:
            self.kill_group()
            code = self.wait(30.0)
        return code if code is not None else -signal.SIGKILL


def start(
    argv: list[str], *, env: dict[str, str], cwd: str | Path, log_path: str | Path,
    death_grace_s: float = 5.0, exit_record: str | Path | None = None, record_fields: dict | None = None,
) -> Child:
    """Start ``argv`` under a shepherd (see the module docstring); call from the main thread.

    With ``exit_record``, the shepherd writes ``{**record_fields, "returncode": N}`` there (atomically)
    as soon as the app ends by itself, before the daemon even looks: an outcome that the daemon cannot
    record (a stalled database, then its death) is not lost; a reaper commits it instead of a rerun.
    """
    record = None
    if exit_record is not None:
        head = json.dumps({**(record_fields or {}), "returncode": 0})[:-3]  # ends with '"returncode": '
        record = (os.fsencode(str(exit_record)), head.encode())
    log_fd = os.open(str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    executable = argv[0]
    environment = {str(key): str(value) for key, value in env.items()}
    parent_pid = os.getpid()
    started_at = time.time()
    pid = os.fork()
    if pid == 0:  # the shepherd: only plain system calls from here on, and always os._exit
        code = 126
        try:
            code = _shepherd(parent_pid, executable, argv, environment, str(cwd), log_fd, null_fd, death_grace_s,
                             record)
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)
    os.close(log_fd)
    os.close(null_fd)
    return Child(pid, started_at)


def _write_exit_record(record: tuple[bytes, bytes] | None, code: int) -> None:
    """The app's own exit, for a reaper (written atomically, so it is whole or absent)."""
    if record is None:
        return
    path, head = record
    try:
        write_atomically(path, head + str(code).encode() + b"}\n", durable=True)
    except OSError:
        pass  # a full or unwritable folder: the daemon still records the end in the database


def _shepherd(parent_pid: int, executable: str, argv: list[str], env: dict[str, str], cwd: str,
              log_fd: int, null_fd: int, grace_s: float, record: tuple[bytes, bytes] | None = None) -> int:
    os.setsid()
    app_pid = 0

    def on_parent_death(_signum: int, _frame: object) -> None:
        os.killpg(0, signal.SIGTERM)  # the shepherd ignores SIGTERM
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                if app_pid and os.waitpid(app_pid, os.WNOHANG)[0] == app_pid:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        _kill_descendants()  # setsid'd ones too
        os.killpg(0, signal.SIGKILL)  # the rest of the group, and the shepherd itself
        os._exit(137)

    def on_kill_all(_signum: int, _frame: object) -> None:
        _kill_descendants()
        os.kill(os.getpid(), signal.SIGKILL)  # the daemon sees "killed by SIGKILL", as before

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(PARENT_DEATH_SIGNAL, on_parent_death)
    signal.signal(KILL_ALL_SIGNAL, on_kill_all)
    _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # best effort: Linux >= 3.4
    _set_parent_death_signal(PARENT_DEATH_SIGNAL)
    if os.getppid() != parent_pid:  # the daemon died before prctl took effect
        return 137
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, 65536)
    try:  # posix_spawn (vfork-like): no copy of the shepherd's page tables, unlike fork + exec
        os.chdir(cwd)
        app_pid = os.posix_spawn(executable, argv, env, setsigdef=_DEFAULT_SIGNALS)
    except OSError as error:
        os.write(2, f"expctl: cannot start {argv[0]}: {error}\n".encode())
        return 127
    while True:
        try:
            _pid, status = os.waitpid(app_pid, 0)
            break
        except ChildProcessError:
            return 127
    code = os.waitstatus_to_exitcode(status)
    _write_exit_record(record, code)
    _kill_descendants()  # what the app left behind, in its group or not (setsid), ends with it
    if code < 0:  # mirror the app's fatal signal so the daemon sees it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code
