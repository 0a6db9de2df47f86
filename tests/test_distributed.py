"""Multi-process training on one machine: several ``jaxcnn train`` processes on localhost,
joined by JAX's distributed runtime and its CPU (gloo) collectives.

Known-answer tests: a job of P processes with D CPU devices each must end with the
parameters of one process with P*D devices (same data order, same keys), up to float
reduction order. CPU collectives have had silent wrong-result bugs, so the comparison is
on the parameters themselves, not on a loss going down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxcnn.checkpoint import load

# One worker runs this module under pytest-xdist, so its module fixtures (each a job of
# several processes) run once.
pytestmark = pytest.mark.xdist_group("distributed")

# Small and quick, with dropout (keys) and a validation split (sharded evaluation).
SPEC = "conv(4,3) maxpool(2) dropout(0.25) flatten softmax"
BASE = ["train", "--spec", SPEC, "--batch-size", "64", "--validation", "0.1", "--quiet",
        "--json", "--micro-batches", "1", "--set", "checkpoint.keep=5"]
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for name in ("JAXCNN_COORDINATOR", "JAXCNN_NUM_PROCESSES", "JAXCNN_PROCESS_ID",
                 "JAXCNN_DISTRIBUTED"):
        env.pop(name, None)
    return env


def _start(processes: int, devices: int, args: list[str], *, port: int | None = None,
           extra: dict[int, list[str]] | None = None) -> list[subprocess.Popen]:
    """Starts ``processes`` jaxcnn processes of one job (one plain process when 1)."""
    port = port or _free_port()
    procs = []
    for i in range(processes):
        job = ([] if processes == 1 else
               ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                "--process-id", str(i), "--distributed-timeout", "60"])
        cmd = [sys.executable, "-m", "jaxcnn", *args, *job, *(extra or {}).get(i, [])]
        procs.append(subprocess.Popen(cmd, env=_env(devices), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _run(processes: int, devices: int, args: list[str], **kw) -> list[tuple[int, str, str]]:
    results = _finish(_start(processes, devices, args, **kw))
    for i, (rc, _, err) in enumerate(results):
        assert rc == 0, f"process {i} exited {rc}:\n{err[-3000:]}"
    return results


def _params(workdir: str, step="latest") -> dict:
    r = load(workdir, step, sharding="numpy")
    return r.step, r.state.params


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    import jax

    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def _history(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "history.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, two devices, two epochs: the answer the jobs must give."""
    workdir = str(tmp_path_factory.mktemp("one_process") / "run")
    _run(1, 2, [*BASE, "--epochs", "2", "--workdir", workdir])
    return workdir


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Two processes of one device each, one epoch."""
    workdir = str(tmp_path_factory.mktemp("two_processes") / "run")
    results = _run(2, 1, [*BASE, "--epochs", "1", "--workdir", workdir])
    return workdir, results


def test_two_processes_match_one_process_with_two_devices(reference, two_process_run):
    workdir, results = two_process_run
    step, params = _params(workdir)
    hist = _history(workdir)
    ref_hist = _history(reference)
    ref_step, ref_params = _params(reference, hist[-1]["step"])
    assert step == ref_step == hist[-1]["step"]
    _assert_close(params, ref_params)
    for mine, ref in zip(hist, ref_hist):  # aggregated over processes, every example once
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-5), key
    # Process 0 speaks for the job; process 1 prints no results and writes nothing.
    summary = json.loads(results[0][1].strip().splitlines()[-1])
    assert summary["test_examples"] == 360 and summary["steps"] == step
    assert not [line for line in results[1][1].splitlines()  # (gloo's own note may be there)
                if line.startswith(("{", "test accuracy", "test_accuracy"))]
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["test_accuracy"] == summary["test_accuracy"]


def test_checkpoint_of_two_processes_continues_in_one(reference, two_process_run, tmp_path):
    """Saved by two processes (one device each), resumed by one process with one device:
    the second epoch ends where the uninterrupted one-process run does."""
    src, _ = two_process_run
    workdir = str(tmp_path / "run")
    import shutil

    shutil.copytree(src, workdir)
    _run(1, 1, [*BASE, "--epochs", "2", "--workdir", workdir])
    step, params = _params(workdir)
    ref_step, ref_params = _params(reference)
    assert step == ref_step
    _assert_close(params, ref_params)


def test_two_by_two_streaming_matches_one_by_four(tmp_path):
    """Two processes of two devices, each reading only its rows (streaming pipeline),
    against one process of four devices with the split on the device."""
    ref, job = str(tmp_path / "one"), str(tmp_path / "job")
    args = [*BASE, "--epochs", "1"]
    _run(1, 4, [*args, "--workdir", ref])
    _run(2, 2, [*args, "--workdir", job, "--set", "data.pipeline=stream"])
    (s1, p1), (s2, p2) = _params(ref), _params(job)
    assert s1 == s2
    _assert_close(p1, p2)


def test_sigterm_to_every_process_saves_once_and_resumes_exactly(reference, tmp_path):
    workdir = str(tmp_path / "run")
    args = [*BASE, "--epochs", "2", "--workdir", workdir, "--set", "checkpoint.every_steps=4"]
    procs = _start(2, 1, args)
    ckpts = os.path.join(workdir, "checkpoints")
    deadline = time.monotonic() + TIMEOUT
    # Preempt once training is under way: after the first periodic save.
    while time.monotonic() < deadline and not os.path.isdir(os.path.join(ckpts, "4")):
        assert all(p.poll() is None for p in procs), _finish(procs)
        time.sleep(0.1)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    results = _finish(procs)
    assert [rc for rc, _, _ in results] == [75, 75], [err[-2000:] for _, _, err in results]
    assert "preempted" in results[0][2]
    saved = json.loads(open(os.path.join(workdir, "summary.json")).read()) if os.path.exists(
        os.path.join(workdir, "summary.json")) else None
    assert saved is None  # stopped before the end: no summary yet
    _run(2, 1, args)
    step, params = _params(workdir)
    ref_step, ref_params = _params(reference)
    assert step == ref_step
    _assert_close(params, ref_params)


def test_batch_size_that_does_not_divide_the_job_names_the_nearest_sizes(tmp_path):
    results = _finish(_start(2, 1, ["train", "--spec", SPEC, "--batch-size", "33",
                                    "--epochs", "1", "--workdir", str(tmp_path / "r")]), 120)
    for rc, _, err in results:
        assert rc == 2, err[-2000:]
        assert "does not divide evenly over the 2 devices of 2 processes" in err
        assert "e.g. 32 or 34" in err


def test_missing_coordinator_fails_in_bounded_time():
    t0 = time.monotonic()
    rc, _, err = _finish([subprocess.Popen(
        [sys.executable, "-m", "jaxcnn", "train", "--coordinator", f"localhost:{_free_port()}",
         "--num-processes", "2", "--process-id", "1", "--distributed-timeout", "2"],
        env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)], 60)[0]
    assert rc == 2, err[-2000:]
    assert "could not reach the coordinator at localhost:" in err and "within 2s" in err
    assert time.monotonic() - t0 < 45


@pytest.mark.parametrize("flags, message", [
    (["--num-processes", "2", "--process-id", "2"], "process id 2 is out of range for 2"),
    (["--num-processes", "2"], "missing --process-id"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator must be HOST:PORT"),
])
def test_bad_process_settings_fail_at_once(flags, message):
    cmd = [sys.executable, "-m", "jaxcnn", "train", *flags]
    if "--coordinator" not in flags:
        cmd += ["--coordinator", f"localhost:{_free_port()}"]
    rc, _, err = _finish([subprocess.Popen(cmd, env=_env(1), stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)], 60)[0]
    assert rc == 2 and message in err, err[-2000:]


def test_a_failing_process_stops_the_others_with_its_exit_code(tmp_path):
    """Process 1 fails on its own (an unknown dataset) while process 0 trains: process 0
    stops too, with the same exit code and a message naming process 1."""
    results = _finish(_start(2, 1, [*BASE, "--epochs", "1", "--workdir", str(tmp_path / "r")],
                             extra={1: ["--dataset", "no_such_dataset_xyz"]}), 120)
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc1 == 2 and "unknown dataset" in err1, err1[-2000:]
    assert rc0 == 2, err0[-2000:]
    assert "process 1 of 2 failed (exit 2)" in err0 and "unknown dataset" in err0


def test_eval_in_two_processes_counts_every_test_example_once(two_process_run):
    workdir, results = two_process_run
    train_summary = json.loads(results[0][1].strip().splitlines()[-1])
    out = _run(2, 1, ["eval", "--workdir", workdir, "--latest", "--json"])
    got = json.loads(out[0][1].strip().splitlines()[-1])
    assert got["test_examples"] == 360
    assert got["test_accuracy"] == pytest.approx(train_summary["test_accuracy"], abs=1e-6)
    assert got["test_loss"] == pytest.approx(train_summary["test_loss"], rel=1e-5)
