import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import checkpoint as ckpt
from jaxcnn import sharding as shd
from jaxcnn.cli import EXIT_BAD_INPUT, EXIT_PREEMPTED, main
from jaxcnn.config import CheckpointConfig, Config, override
from jaxcnn.errors import ConfigError
from jaxcnn.run import train_and_evaluate
from jaxcnn.training import Callback, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dropout is in the model so that resuming must also continue the key stream.
SPEC = "conv(8,3) maxpool(2) flatten dropout(0.5) softmax"
STEPS_PER_EPOCH = 22  # 1,437 digits // 64


def _config(epochs=2, devices=1, **extra):
    # Every epoch saved, however short (these tests count on each epoch's checkpoint).
    updates = {"model.name": SPEC, "data.batch_size": 64, "data.validation_fraction": 0.0,
               "checkpoint.min_interval_seconds": 0, "train.epochs": epochs, "train.num_devices": devices, **extra}
    return override(Config(), updates)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state, step):
        return step >= self.step


def _latest(directory):
    with ckpt.Checkpoints(directory, read_only=True) as c:
        return c.latest_step()


def _arrays(workdir, which="latest"):
    r = ckpt.load(workdir, which, sharding="numpy")
    return r.step, jax.tree.leaves(ckpt.state_arrays(r.state))


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    out = train_and_evaluate(_config(), workdir, progress=False)
    return workdir, out


def _subprocess_env(devices=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


# ---------------------------------------------------------------------------
# Exact resume


@pytest.mark.parametrize("stop,pipeline", [(STEPS_PER_EPOCH, "device"),
                                           (STEPS_PER_EPOCH + 9, "device"),
                                           (STEPS_PER_EPOCH + 9, "stream")],
                         ids=["epoch_boundary", "mid_epoch", "mid_epoch_streaming"])
def test_stopped_and_resumed_run_is_bit_identical(stop, pipeline, reference, tmp_path):
    ref_dir, ref_out = reference
    workdir = str(tmp_path / "run")
    cfg = _config(**{"data.pipeline": pipeline})
    first = train_and_evaluate(cfg, workdir, progress=False, callbacks=[StopAt(stop)])
    assert first["stopped_early"]
    assert _latest(ckpt.checkpoint_dir(workdir)) == stop
    out = train_and_evaluate(cfg, workdir, progress=False)
    step, leaves = _arrays(workdir)
    ref_step, ref_leaves = _arrays(ref_dir)
    assert step == ref_step == 2 * STEPS_PER_EPOCH
    _assert_identical(leaves, ref_leaves)
    assert out["test_accuracy"] == ref_out["test_accuracy"]
    # The history continues: one record per epoch, as in one go.
    history = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["step"] for r in history] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_checkpoint_meta_holds_config_preprocess_metrics_and_versions(reference):
    ref_dir, _ = reference
    r = ckpt.load(ref_dir, "latest")
    assert Config.from_dict(r.meta["config"]) == _config()
    assert r.meta["preprocess"] == json.load(open(os.path.join(ref_dir, "meta.json")))["preprocess"]
    assert r.meta["metrics"]["step"] == r.step and "loss" in r.meta["metrics"]
    assert {"jax", "flax", "optax", "orbax"} <= set(r.meta["versions"])
    assert r.meta["dataset"]["name"] == "digits" and len(r.meta["history"]) == 2
    summary = json.load(open(os.path.join(ref_dir, "summary.json")))
    from jaxcnn.host_memory import host_memory_state
    assert summary["host_memory"] == host_memory_state()  # a small step: left as it was


def test_keep_last_and_best():
    import tempfile

    with ckpt.Checkpoints(tempfile.mkdtemp(), keep=2, keep_best=1, best_metric="val_loss",
                          async_save=True) as c:
        for step, loss in [(1, 0.3), (2, 0.9), (3, 0.8), (4, 0.7)]:
            c.save(step, {"step": jnp.array(step)}, meta={}, metrics={"val_loss": loss})
        c.save(5, {"step": jnp.array(5)}, meta={})  # mid-epoch: no metric, never "best"
        c.wait()
        assert c.steps() == [1, 4, 5] and c.best_step() == 1 and c.latest_step() == 5


# ---------------------------------------------------------------------------
# Another device layout


def test_8_device_checkpoint_restores_on_1_and_4_devices_and_numpy(tmp_path):
    assert len(jax.devices()) >= 8
    workdir = str(tmp_path / "run8")
    train_and_evaluate(_config(epochs=1, devices=8), workdir, progress=False)
    saved = ckpt.load(workdir, "latest", sharding="numpy")
    assert saved.meta["device"]["device_count"] == 8
    expected = jax.tree.leaves(ckpt.state_arrays(saved.state))
    assert all(isinstance(x, np.ndarray) for x in expected)
    for n in (1, 4):
        mesh = shd.make_mesh(n)
        r = ckpt.load(workdir, "latest", sharding=shd.replicated(mesh))
        leaves = jax.tree.leaves(ckpt.state_arrays(r.state))
        assert all(x.sharding.mesh.devices.size == n for x in leaves)
        _assert_identical(leaves, expected)
        # Training continues on the new layout.
        batch = jax.device_put({"image": jnp.ones((8, 8, 8, 1)), "label": jnp.arange(8) % 10},
                               shd.batch_sharding(mesh))
        state, metrics = jax.jit(train_step)(r.state, batch, jax.random.key(0))
        assert int(state.step) == r.step + 1 and np.isfinite(float(metrics["loss"]))
    # A run resumed with 4 devices continues from the 8-device checkpoint.
    out = train_and_evaluate(_config(epochs=2, devices=4), workdir, progress=False)
    assert out["steps"] == 2 * STEPS_PER_EPOCH and out["epochs"] == 2


# ---------------------------------------------------------------------------
# Preemption and crashes (subprocesses)


def test_sigterm_saves_exits_75_and_restart_resumes(reference, tmp_path):
    ref_dir, _ = reference
    workdir = tmp_path / "pre"
    cmd = [sys.executable, "-m", "jaxcnn", "train", "--spec", SPEC, "--batch-size", "64",
           "--validation", "0", "--num-devices", "1", "--quiet", "--workdir", str(workdir)]
    proc = subprocess.Popen([*cmd, "--epochs", "2000"], cwd=ROOT, env=_subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ckpt.has_checkpoints(str(workdir)) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "preempted" in err and "SIGTERM" in err
    saved = _latest(ckpt.checkpoint_dir(str(workdir)))
    assert saved >= STEPS_PER_EPOCH
    # Restart with a horizon just past the save (the schedule is constant, so the
    # number of epochs does not change the updates).
    epochs = saved // STEPS_PER_EPOCH + 1
    p = subprocess.run([*cmd, "--epochs", str(epochs), "--json"], cwd=ROOT, env=_subprocess_env(),
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert f"resuming from the checkpoint at step {saved}" in p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["steps"] == epochs * STEPS_PER_EPOCH
    uninterrupted = str(tmp_path / "one_go")
    train_and_evaluate(_config(epochs=epochs), uninterrupted, progress=False)
    _assert_identical(_arrays(str(workdir))[1], _arrays(uninterrupted)[1])


KILL_SCRIPT = """
import os, signal, sys
from jaxcnn.config import Config, override
from jaxcnn.run import train_and_evaluate
from jaxcnn.training import Callback

class KillDuringSave(Callback):
    def on_step_end(self, state, step):
        if step == {kill_at}:  # the checkpoint callback has just started saving this step
            os.kill(os.getpid(), signal.SIGKILL)

cfg = override(Config(), {{"model.name": "conv(64,3) flatten dense(512) softmax",
                          "data.batch_size": 64, "data.validation_fraction": 0.0,
                          "train.epochs": 2, "train.num_devices": 1,
                          "checkpoint.every_steps": 10,
                          "checkpoint.min_interval_seconds": 0}})
train_and_evaluate(cfg, sys.argv[1], progress=False, callbacks=[KillDuringSave()])
"""


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    workdir = str(tmp_path / "killed")
    script = tmp_path / "kill.py"
    # Saves at steps 10, 20, 22 (end of epoch 1) and 30; killed while step 30 is written.
    script.write_text(KILL_SCRIPT.format(kill_at=30))
    p = subprocess.run([sys.executable, str(script), workdir], cwd=ROOT, env=_subprocess_env(),
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == -signal.SIGKILL, p.stderr
    cdir = ckpt.checkpoint_dir(workdir)
    leftovers = ckpt.leftover_temporary_dirs(cdir)
    assert [os.path.basename(d).split(".")[0] for d in leftovers] == ["30"]
    assert _latest(cdir) == 22
    cfg = override(Config(), {"model.name": "conv(64,3) flatten dense(512) softmax",
                              "data.batch_size": 64, "data.validation_fraction": 0.0,
                              "train.epochs": 2, "train.num_devices": 1,
                              "checkpoint.every_steps": 10,
                              "checkpoint.min_interval_seconds": 0})
    out = train_and_evaluate(cfg, workdir, progress=False)
    assert out["steps"] == 2 * STEPS_PER_EPOCH
    assert ckpt.leftover_temporary_dirs(cdir) == []
    history = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
    assert [r["epoch"] for r in history] == [1, 2]


# ---------------------------------------------------------------------------
# Bad input


def test_corrupt_checkpoint_names_step_path_and_previous_step(reference, tmp_path):
    import shutil

    workdir = str(tmp_path / "corrupt")
    shutil.copytree(reference[0], workdir)
    last = os.path.join(ckpt.checkpoint_dir(workdir), str(2 * STEPS_PER_EPOCH))
    for dirpath, _, files in os.walk(os.path.join(last, "state")):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.getsize(path) > 100:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ckpt.CheckpointError) as e:
        train_and_evaluate(_config(epochs=3), workdir, progress=False)
    msg = str(e.value)
    assert f"step {2 * STEPS_PER_EPOCH}" in msg and last in msg
    assert f"step {STEPS_PER_EPOCH} is the previous complete checkpoint" in msg
    # Broken metadata JSON is reported the same way.
    meta_file = os.path.join(last, "meta", "metadata")
    with open(meta_file, "w") as f:
        f.write('{"config": {')
    with pytest.raises(ckpt.CheckpointError, match=f"step {STEPS_PER_EPOCH} is the previous"):
        ckpt.load(workdir, "latest")
    # The previous step still serves.
    assert ckpt.load(workdir, STEPS_PER_EPOCH).step == STEPS_PER_EPOCH


def test_resume_with_another_model_refuses_and_force_new_starts_over(reference, tmp_path, capsys):
    import shutil

    workdir = str(tmp_path / "mismatch")
    shutil.copytree(reference[0], workdir)
    args = ["train", "--workdir", workdir, "--quiet", "--batch-size", "64", "--num-devices", "1",
            "--validation", "0", "--epochs", "1", "--spec", "conv(4,3) flatten softmax", "--seed", "5"]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "model.name" in err and "train.seed" in err and "--force-new" in err
    assert main([*args, "--force-new", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["workdir"] == workdir + "-2" and out["steps"] == STEPS_PER_EPOCH
    # The original checkpoints are untouched.
    assert _arrays(workdir)[0] == 2 * STEPS_PER_EPOCH
    # Other data under the same name is refused too (its size moves the data position).
    from jaxcnn.data import from_arrays, load_dataset

    digits = load_dataset("digits")
    fewer = from_arrays(digits.train.images[:1000], digits.train.labels[:1000],
                        digits.test.images, digits.test.labels, num_classes=10, name="digits")
    with pytest.raises(ckpt.ResumeMismatchError, match="dataset.splits.train: 1437 .* 1000"):
        train_and_evaluate(_config(), workdir, dataset=fewer, progress=False)


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path):
    from jaxcnn.errors import NonFiniteLossError

    workdir = str(tmp_path / "nan")
    cfg = _config(**{"optimizer.name": "sgd", "optimizer.learning_rate": 1e9,
                     "checkpoint.every_steps": 1, "checkpoint.keep": 100,
                     "checkpoint.min_interval_seconds": 0})
    with pytest.raises(NonFiniteLossError) as e:
        train_and_evaluate(cfg, workdir, progress=False)
    with ckpt.Checkpoints(ckpt.checkpoint_dir(workdir), read_only=True) as c:
        assert c.steps() == list(range(1, e.value.step))
    r = ckpt.load(workdir, "latest", sharding="numpy")
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(ckpt.state_arrays(r.state)))


def test_unwritable_workdir_raises_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ckpt.CheckpointError, match="cannot write checkpoints"):
        ckpt.Checkpoints(str(blocker / "checkpoints"))


FULL_DISK_SCRIPT = """
import resource, signal, sys
import jax, jax.numpy as jnp
from jaxcnn import checkpoint as ckpt

c = ckpt.Checkpoints(sys.argv[1], async_save=True)
c.save(1, {"w": jnp.ones(10)}, meta={})
c.wait()
# A file-size limit makes the background write fail as a full disk would.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
c.save(2, {"w": jax.random.normal(jax.random.key(0), (1_000_000,))}, meta={})
try:
    c.wait()
except ckpt.CheckpointError as e:
    print("CheckpointError:", e)
"""


def test_failed_background_save_raises_and_keeps_last_good_checkpoint(tmp_path):
    d = str(tmp_path / "c")
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_SCRIPT)
    p = subprocess.run([sys.executable, str(script), d], cwd=ROOT, env=_subprocess_env(),
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert "CheckpointError: saving step 2 to" in p.stdout
    assert "the last complete checkpoint is step 1" in p.stdout
    with ckpt.Checkpoints(d) as c:  # opening it for writing cleans up the partial step 2
        assert c.steps() == [1]
    assert ckpt.leftover_temporary_dirs(d) == []


def test_vanished_checkpoint_directory_raises_on_save(tmp_path):
    import shutil

    d = str(tmp_path / "c")
    with pytest.raises(ckpt.CheckpointError, match="cannot write checkpoints"):
        with ckpt.Checkpoints(d, async_save=False) as c:
            c.save(1, {"w": jnp.ones(3)}, meta={})
            shutil.move(d, d + ".moved")
            open(d, "w").close()
            c.save(2, {"w": jnp.ones(3)}, meta={})
    with ckpt.Checkpoints(d + ".moved", read_only=True) as c:
        assert c.steps() == [1]


def test_checkpoint_config_validation_and_round_trip():
    cfg = override(Config(), {"checkpoint.every_steps": "50", "checkpoint.async_save": "false"})
    assert cfg.checkpoint == CheckpointConfig(every_steps=50, async_save=False)
    assert Config.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="checkpoint.keep must be"):
        override(Config(), {"checkpoint.keep": 0})
    with pytest.raises(ConfigError, match="best_metric must be one of"):
        override(Config(), {"checkpoint.best_metric": "f1"})


# ---------------------------------------------------------------------------
# eval and predict


def test_eval_and_predict_commands(reference, tmp_path, capsys):
    from PIL import Image

    workdir, out = reference
    assert main(["eval", "--workdir", workdir, "--latest", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 2 * STEPS_PER_EPOCH
    assert result["test_accuracy"] == pytest.approx(out["test_accuracy"], abs=1e-6)
    assert main(["eval", "--workdir", workdir, "--step", "7"]) == EXIT_BAD_INPUT
    assert "available steps" in capsys.readouterr().err

    from jaxcnn.data import load_dataset

    test = load_dataset("digits").test
    np.save(tmp_path / "three.npy", (test.images[:3] * 255).round().astype(np.uint8))
    Image.fromarray((test.images[0, ..., 0] * 255).astype(np.uint8)).save(tmp_path / "one.png")
    files = [str(tmp_path / "three.npy"), str(tmp_path / "one.png")]
    assert main(["predict", "--workdir", workdir, *files, "--top-k", "2", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = pred["predictions"]
    assert [r["input"] for r in rows] == ["three.npy[0]", "three.npy[1]", "three.npy[2]", "one.png"]
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
               for r in rows)
    # The PNG of an image holds the same digit as the array (8-bit rounding aside).
    assert rows[3]["top_k"][0]["index"] == rows[0]["top_k"][0]["index"]
    assert main(["predict", "--workdir", workdir, files[1]]) == 0
    assert capsys.readouterr().out.startswith("one.png: ")


# ---------------------------------------------------------------------------
# Damage: checksums, stored metadata, clean messages


def _copy_run(reference, tmp_path, name):
    import shutil

    workdir = str(tmp_path / name)
    shutil.copytree(reference[0], workdir)
    return workdir


def _step_dir(workdir, step=2 * STEPS_PER_EPOCH):
    return os.path.join(ckpt.checkpoint_dir(workdir), str(step))


def _edit_meta(workdir, edit, step=2 * STEPS_PER_EPOCH):
    path = os.path.join(_step_dir(workdir, step), "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    edit(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


def _flip_bytes_in_largest_array_file(step_dir):
    files = [os.path.join(dp, n) for dp, _, names in os.walk(os.path.join(step_dir, "state"))
             for n in names]
    biggest = max(files, key=os.path.getsize)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(8)
        f.seek(size // 2)
        f.write(bytes(b ^ 0x5A for b in chunk))
    return biggest


def test_flipped_bytes_in_a_saved_array_are_refused_by_eval_and_resume(reference, tmp_path,
                                                                         capsys):
    workdir = _copy_run(reference, tmp_path, "flipped")
    _flip_bytes_in_largest_array_file(_step_dir(workdir))
    assert main(["eval", "--workdir", workdir, "--latest"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"jaxcnn: error: checkpoint at step {2 * STEPS_PER_EPOCH} ")
    assert f"pass --step {STEPS_PER_EPOCH} to eval/predict" in err
    with pytest.raises(ckpt.CheckpointError, match=f"step {2 * STEPS_PER_EPOCH}"):
        train_and_evaluate(_config(epochs=3), workdir, progress=False)
    assert ckpt.load(workdir, STEPS_PER_EPOCH).step == STEPS_PER_EPOCH  # the other step serves


def test_array_checksum_mismatch_names_step_and_array_and_old_checkpoints_still_load(
        reference, tmp_path):
    d = str(tmp_path / "c")
    with ckpt.Checkpoints(d, async_save=False) as c:
        c.save(1, {"params": {"w": jnp.arange(4.0)}, "step": jnp.array(1)}, meta={})
        c.save(2, {"params": {"w": jnp.arange(4.0) + 1}, "step": jnp.array(2)}, meta={})
    meta_file = os.path.join(d, "2", "meta", "metadata")
    meta = json.load(open(meta_file))
    assert meta["array_checksums"]["algorithm"] == "sha256"
    assert sorted(meta["array_checksums"]["arrays"]) == ["params/w", "step"]
    dtype, digest = meta["array_checksums"]["arrays"]["params/w"].split(":")
    meta["array_checksums"]["arrays"]["params/w"] = f"{dtype}:{'0' * len(digest)}"
    json.dump(meta, open(meta_file, "w"))
    with ckpt.Checkpoints(d, read_only=True) as c:
        with pytest.raises(ckpt.CheckpointError) as e:
            c.restore(2)
        assert c.restore(1)[0]["params"]["w"].tolist() == [0, 1, 2, 3]
    msg = str(e.value)
    assert "step 2" in msg and "damaged" in msg and "params/w" in msg
    assert "step 1 is the previous complete checkpoint" in msg
    # A checkpoint written before checksums existed restores as before.
    workdir = _copy_run(reference, tmp_path, "old")
    _edit_meta(workdir, lambda m: m.pop("array_checksums"))
    assert ckpt.load(workdir, "latest").step == 2 * STEPS_PER_EPOCH


@pytest.mark.parametrize("edit,field", [
    (lambda m: m["preprocess"].update(std=[0.0]), r"preprocess.std\[0\] = 0.0"),
    (lambda m: m["preprocess"].update(mean=[float("nan")]), r"preprocess.mean\[0\] = nan"),
    (lambda m: m["preprocess"].update(std=[1.0, 1.0]), "preprocess.std has 2 values"),
    (lambda m: m["dataset"].update(num_classes=2**40), "dataset.num_classes = 1099511627776"),
    (lambda m: m["dataset"].update(class_names=[7] * 10), r"dataset.class_names\[0\]"),
    (lambda m: m["dataset"].update(class_names=["a"]), "has 1 names for 10 classes"),
    (lambda m: m["dataset"].update(image_shape=[8, 8]), "dataset.image_shape = \\[8, 8\\]"),
    (lambda m: m["dataset"].update(image_shape=[16, 16, 1]), "do not fit its saved arrays"),
    (lambda m: m["dataset"].update(num_classes=11, class_names=[]), "do not fit its saved"),
    (lambda m: m.update(steps_per_epoch=-1), "steps_per_epoch = -1"),
], ids=["std0", "nan_mean", "std_len", "classes", "names_type", "names_len", "shape_rank",
        "shape_vs_arrays", "classes_vs_arrays", "steps_per_epoch"])
def test_stored_metadata_out_of_bounds_is_refused(reference, tmp_path, edit, field):
    workdir = _copy_run(reference, tmp_path, "meta")
    _edit_meta(workdir, edit)
    with pytest.raises(ckpt.CheckpointError, match=f"step {2 * STEPS_PER_EPOCH} .*{field}"):
        ckpt.load(workdir, "latest")


def test_zero_std_is_refused_on_resume_too(reference, tmp_path):
    workdir = _copy_run(reference, tmp_path, "std0")
    _edit_meta(workdir, lambda m: m["preprocess"].update(std=[0.0]))
    with pytest.raises(ckpt.CheckpointError, match=r"preprocess.std\[0\] = 0.0"):
        train_and_evaluate(_config(epochs=3), workdir, progress=False)


HUGE_SHAPE_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from jaxcnn.cli import main
sys.exit(main(["eval", "--workdir", sys.argv[1], "--latest"]))
"""


def test_huge_stored_image_shape_is_refused_before_allocating(reference, tmp_path):
    workdir = _copy_run(reference, tmp_path, "huge")
    _edit_meta(workdir, lambda m: m["dataset"].update(image_shape=[60000, 60000, 3]))
    p = subprocess.run([sys.executable, "-c", HUGE_SHAPE_SCRIPT, workdir], cwd=ROOT,
                       env=dict(_subprocess_env(), JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == EXIT_BAD_INPUT, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxcnn: error: checkpoint at step") and "dataset.image_shape" in last
    assert "Traceback" not in p.stderr


def test_class_names_are_printed_with_control_characters_escaped(reference, tmp_path, capsys):
    workdir = _copy_run(reference, tmp_path, "ansi")
    _edit_meta(workdir, lambda m: m["dataset"].update(
        class_names=[f"\x1b[31m{i}\x1b]0;title\x07" for i in range(10)]))
    np.save(tmp_path / "x.npy", np.zeros((8, 8), np.uint8))
    assert main(["predict", "--workdir", workdir, "--latest", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[31m" in out


def test_corrupt_checkpoint_message_is_the_last_line_on_stderr(reference, tmp_path):
    workdir = _copy_run(reference, tmp_path, "truncated")
    for dirpath, _, files in os.walk(os.path.join(_step_dir(workdir), "state")):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.getsize(path) > 100:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
    p = subprocess.run([sys.executable, "-m", "jaxcnn", "eval", "--workdir", workdir,
                        "--latest"], cwd=ROOT, env=dict(_subprocess_env(), JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == EXIT_BAD_INPUT, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith(f"jaxcnn: error: checkpoint at step {2 * STEPS_PER_EPOCH}")
    for noise in ("Traceback", "Task exception", "Event loop is closed", "<bound method",
                  "pybind11"):
        assert noise not in p.stderr


def test_divergence_says_which_checkpoint_is_on_disk(tmp_path, capsys):
    from jaxcnn.cli import EXIT_DIVERGED

    args = ["train", "--spec", SPEC, "--batch-size", "64", "--validation", "0", "--num-devices",
            "1", "--epochs", "1", "--quiet", "--optimizer", "sgd", "--lr", "1e9"]
    # Diverges before the first save (at the end of the epoch): nothing on disk.
    workdir = str(tmp_path / "none")
    assert main([*args, "--workdir", workdir]) == EXIT_DIVERGED
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No checkpoint was saved in" in err and "was kept" not in err
    # Saving every step: the step named is the newest on disk.
    workdir = str(tmp_path / "every")
    assert main([*args, "--workdir", workdir, "--set", "checkpoint.every_steps=1"]) == EXIT_DIVERGED
    err = capsys.readouterr().err.strip().splitlines()[-1]
    with ckpt.Checkpoints(ckpt.checkpoint_dir(workdir), read_only=True) as c:
        latest = c.latest_step()
    assert latest is not None
    assert f"The newest checkpoint on disk is step {latest} " in err, err
    # Checkpoints off: says so.
    workdir = str(tmp_path / "off")
    assert main([*args, "--workdir", workdir, "--set", "checkpoint.enabled=false"]) == EXIT_DIVERGED
    assert "Checkpoints are off" in capsys.readouterr().err


FULL_DISK_TRAIN = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # a full disk, for big files
from jaxcnn.cli import main
sys.exit(main(["train", "--spec", "conv(64,3) flatten dense(512) softmax", "--batch-size", "64",
               "--validation", "0", "--num-devices", "1", "--epochs", "1", "--quiet",
               "--workdir", sys.argv[1]]))
"""


def test_full_disk_during_a_save_ends_in_one_clean_line(tmp_path):
    workdir = str(tmp_path / "full")
    p = subprocess.run([sys.executable, "-c", FULL_DISK_TRAIN, workdir], cwd=ROOT,
                       env=dict(_subprocess_env(), JAX_PLATFORMS="cpu",
                                JAXCNN_COMPILATION_CACHE="off"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == EXIT_BAD_INPUT, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jaxcnn: error: saving step {STEPS_PER_EPOCH} to "), p.stderr
    assert "File too large" in last and "no complete checkpoint exists yet" in last
    for noise in ("Traceback", "Task exception", "Event loop is closed", "[process=",
                  "<bound method"):
        assert noise not in p.stderr, p.stderr
