"""File-system helpers shared by the run directory and checkpoint code: the writability
check, the one-writer lock on a run directory, and escaping text read from files before
it is printed."""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import tempfile
import unicodedata

from jaxcnn.errors import JaxcnnError

log = logging.getLogger("jaxcnn")

# The lock file :class:`DirectoryLock` keeps inside a run directory while a run writes it.
LOCK_NAME = ".jaxcnn.lock"


def writable_dir_problem(directory: str) -> str | None:
    """Creates ``directory`` if needed and checks that a file can be written in it.

    Checked before training starts, so a full disk or missing permission is
    reported at once instead of losing results later. The probe file has a
    unique name (two processes may check the same directory) and is removed on
    every path, also when writing it fails.

    Returns:
      None when the directory is writable, else the reason (``strerror``).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> writable_dir_problem(d) is None, os.listdir(d)
      (True, [])
    """
    probe = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test-", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write("ok")
            f.flush()
    except OSError as e:
        return e.strerror or str(e)
    finally:
        if probe is not None:
            try:
                os.remove(probe)
            except OSError:
                pass
    return None


# -- printing text that came from a file ----------------------------------------

# Control, format (bidi overrides, zero-width), surrogate and line/paragraph separator
# characters: they move the cursor, recolour or reorder the terminal, or split a line.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text) -> str:
    """``text`` with control characters escaped, safe to print to a terminal.

    Use it for anything printed that came from a file (class names, dataset
    names stored in metadata): an ANSI escape sequence or a carriage return in
    a class name is shown as ``\\x1b`` or ``\\r`` instead of acting on the
    terminal. Ordinary text, non-ASCII letters included, is returned unchanged.

    Example:
      >>> printable("cat")
      'cat'
      >>> print(printable("\\x1b[31mred\\x1b[0m\\r"))
      \\x1b[31mred\\x1b[0m\\r
      >>> printable("chat\\u00e9 \\u202egnp")
      'chaté \\\\u202egnp'
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
            out.append(ch)
            continue
        code = ord(ch)
        out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
            f"\\x{code:02x}" if code < 0x100 else
            f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"))
    return "".join(out)


# -- one writer per run directory ---------------------------------------------------


def lock_holder(directory: str) -> dict:
    """What the lock file of ``directory`` says about its holder (``{}`` if unreadable).

    Keys: ``pid``, ``host``, ``since`` (UTC, ISO 8601).

    Example:
      >>> import tempfile
      >>> lock_holder(tempfile.mkdtemp())
      {}
    """
    try:
        with open(os.path.join(directory, LOCK_NAME), "rb") as f:
            info = json.loads(f.read(4096).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    if not isinstance(info, dict):
        return {}
    return {k: info[k] for k in ("pid", "host", "since") if isinstance(info.get(k), (int, str))}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (its lock file is empty or unreadable)"
    return (f"process {printable(holder.get('pid', '?'))} on host "
            f"{printable(holder.get('host', '?'))} since {printable(holder.get('since', '?'))}")


class DirectoryLock:
    """An exclusive lock on a run directory, so that one process at a time writes it.

    The lock is ``fcntl.flock`` on ``<directory>/.jaxcnn.lock``, which records
    the holder's pid, host and start time. The kernel releases a flock when its
    process ends, however it ends, so a lock file left by a crashed or killed
    run is recognised as stale and taken over. The file is removed on release.
    A second process fails at once, naming the holder.

    Args:
      directory: the run directory (must exist).
      error: the :class:`~jaxcnn.errors.JaxcnnError` subclass to raise.

    Raises:
      JaxcnnError: (``error``) another live process holds the lock.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> with DirectoryLock(d):
      ...     lock_holder(d)["pid"] == os.getpid()
      ...     try:
      ...         DirectoryLock(d).acquire()
      ...     except JaxcnnError as e:
      ...         print(str(e).split(":")[0])
      True
      the run directory ... is in use by process ...
      >>> os.listdir(d)
      []
    """

    def __init__(self, directory: str, *, error: type[JaxcnnError] = JaxcnnError):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.error = error
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        """Takes the lock or raises ``error`` naming the process that holds it."""
        import fcntl

        if self._fd is not None:
            return self
        for _ in range(20):  # the holder may remove the file between our open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise self.error(f"cannot create the lock file {self.path!r}: "
                                 f"{e.strerror or e}; fix the permissions of the run directory "
                                 "or choose another --workdir") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self.error(
                        f"the run directory {self.directory!r} is in use by "
                        f"{_describe(lock_holder(self.directory))}: another jaxcnn run is "
                        "writing it. Wait for that run to finish (or stop it), or choose "
                        "another --workdir") from None
                # A file system without flock (some network mounts): run unlocked.
                log.warning("cannot lock %s (%s); make sure no other run writes %s",
                            self.path, e.strerror or e, self.directory)
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if not same:  # locked a file its previous holder had just removed: retry
                os.close(fd)
                continue
            stale = lock_holder(self.directory)
            if stale:
                log.info("taking over the run directory %s: the lock of %s is stale (that "
                         "process has ended)", self.directory, _describe(stale))
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "since": datetime.datetime.now(datetime.timezone.utc)
                    .isoformat(timespec="seconds")}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            except OSError:
                pass  # a full disk: the lock holds all the same, only the note is missing
            self._fd = fd
            return self
        raise self.error(f"cannot take the lock {self.path!r}: it keeps being replaced; "
                         "choose another --workdir")

    def release(self) -> None:
        """Removes the lock file and releases the lock (nothing if not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.remove(self.path)  # while still holding it: no one can take a file in between
        except OSError:
            pass
        os.close(fd)  # releases the flock

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = [
    "LOCK_NAME", "DirectoryLock", "lock_holder", "printable", "writable_dir_problem",
]
