"""One writer per run directory (the lock), leftovers in it, and text from files printed
safely."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from jaxcnn import _fs
from jaxcnn import checkpoint as ckpt
from jaxcnn.cli import EXIT_BAD_INPUT, main
from jaxcnn.errors import JaxcnnError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--spec", "conv(4,3) flatten softmax", "--batch-size", "64", "--validation",
         "0", "--num-devices", "1", "--epochs", "1", "--quiet", "--json"]

# Holds the lock on argv[1] until its stdin closes (or it is killed).
HOLDER = """
import sys
from jaxcnn import _fs
lock = _fs.DirectoryLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def _holder(workdir):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_at_once_naming_the_holder_and_a_stale_lock_is_taken_over(
        tmp_path, capsys):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    holder = _holder(workdir)
    try:
        assert main([*TRAIN, "--workdir", workdir]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("jaxcnn: error: the run directory")
        assert f"process {holder.pid} on host {socket.gethostname()} since " in err[-1]
        assert "Wait for that run to finish" in err[-1] and "--workdir" in err[-1]
        # Nothing was written by the refused run; the holder's lock file is intact.
        assert not ckpt.has_checkpoints(workdir)
        assert _fs.lock_holder(workdir)["pid"] == holder.pid
        # With checkpoints off the run directory is locked all the same.
        assert main([*TRAIN, "--workdir", workdir, "--set", "checkpoint.enabled=false"]) == 2
        assert "is in use by process" in capsys.readouterr().err
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the kernel drops the flock
        holder.wait()
    assert _fs.lock_holder(workdir)["pid"] == holder.pid  # stale
    assert main([*TRAIN, "--workdir", workdir]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["workdir"] == workdir and out["epochs"] == 1
    # Released (and the lock file removed) when the run ended; no probe files left.
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "history.csv",
                                           "history.jsonl", "learning_curves.png",
                                           "meta.json", "summary.json"]
    assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n.startswith(".")]


def test_lock_is_released_on_error_and_held_by_one_at_a_time(tmp_path):
    d = str(tmp_path)
    with pytest.raises(RuntimeError):
        with ckpt.lock_workdir(d):
            assert _fs.lock_holder(d)["pid"] == os.getpid()
            with pytest.raises(ckpt.CheckpointError, match="is in use by process"):
                ckpt.lock_workdir(d).acquire()
            raise RuntimeError("boom")
    assert os.listdir(d) == []
    with ckpt.lock_workdir(d):  # free again
        pass
    # An unreadable or foreign lock file still locks nothing by itself.
    with open(os.path.join(d, _fs.LOCK_NAME), "w") as f:
        f.write("\x1b[31mnot json")
    assert _fs.lock_holder(d) == {}
    with ckpt.lock_workdir(d):
        assert _fs.lock_holder(d)["pid"] == os.getpid()


def test_write_probe_is_removed_even_when_writing_fails(tmp_path, monkeypatch):
    assert _fs.writable_dir_problem(str(tmp_path)) is None
    assert os.listdir(tmp_path) == []

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, *args, **kwargs):
            self.f = real_fdopen(fd, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(_fs.os, "fdopen", FullDisk)
    assert _fs.writable_dir_problem(str(tmp_path)) == "No space left on device"
    assert os.listdir(tmp_path) == []


def test_step_directories_must_be_valid_step_numbers(tmp_path):
    d = str(tmp_path / "checkpoints")
    os.makedirs(os.path.join(d, "007"))  # not a name Orbax writes: ignored
    assert not ckpt.has_checkpoints(str(tmp_path))
    os.makedirs(os.path.join(d, "1" * 23))
    assert not ckpt.has_checkpoints(str(tmp_path))
    for read_only in (False, True):
        with pytest.raises(ckpt.CheckpointError, match="1{23} is not a checkpoint step.*move it"):
            ckpt.Checkpoints(d, read_only=read_only)
    os.rmdir(os.path.join(d, "1" * 23))
    os.makedirs(os.path.join(d, str(2**31)))  # beyond the int32 step counter
    with pytest.raises(ckpt.CheckpointError, match="2147483648 is not a checkpoint step"):
        ckpt.Checkpoints(d)


def test_printable_escapes_control_characters():
    assert _fs.printable("digit 7") == "digit 7"
    assert _fs.printable("café ☕ 猫") == "café ☕ 猫"
    assert _fs.printable("\x1b[2J\x1b]0;pwned\x07x\r\n") == "\\x1b[2J\\x1b]0;pwned\\x07x\\r\\n"
    assert _fs.printable("a\u202eb\u2028c\x85") == "a\\u202eb\\u2028c\\x85"
    assert _fs.printable(7) == "7"
    with pytest.raises(JaxcnnError):  # the lock's error type is a JaxcnnError
        with _fs.DirectoryLock(os.path.join(ROOT, "no", "such", "dir")):
            pass


def test_lock_survives_sigkill_of_holder_immediately(tmp_path):
    """A killed holder's lock is free at once (no timeout, no pid check needed)."""
    d = str(tmp_path)
    holder = _holder(d)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.lock_workdir(d).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with ckpt.lock_workdir(d):
        assert _fs.lock_holder(d)["pid"] == os.getpid()
    assert os.listdir(d) == []
