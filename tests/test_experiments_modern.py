"""Smoke tests of the newer experiment scripts: they run end to end and write their results.

experiments/cifar_speed.py on a tiny synthetic 32x32x3 dataset (CIFAR-10 itself needs
tensorflow-datasets and a download), experiments/resnet_digits.py for one epoch and
one seed of two of its models, and experiments/gpu_bench.sh through `bash -n` (it needs
a GPU to mean anything; its CPU dry run is SMOKE=1, too slow for the test suite) and
its summary script on a hand-written results file. The scripts run as a user runs
them, in a subprocess; the compilation cache of the test session
(``JAXCNN_COMPILATION_CACHE``, set by conftest.py) is inherited, so a second run of
the suite compiles nothing.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, name), *args],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert out.returncode == 0, f"{name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}"
    return out


def test_cifar_speed_translation_of_airbench_hyperparameters():
    sys.path.insert(0, EXPERIMENTS)
    try:
        import cifar_speed
    finally:
        sys.path.remove(EXPERIMENTS)
    t = cifar_speed.translate(11.5, 0.85, 0.0153, 1024)
    # airbench94: lr 11.5 / (1024 * (1 + 1 / 0.15)) on a summed loss = 1.5 on a mean loss;
    # weight decay per step 0.0153 * 1024 / kilostep_scale = 0.00199.
    assert t["learning_rate"] == pytest.approx(1.5)
    assert t["l2"] == pytest.approx(0.0153 / 11.5)
    assert t["decay_per_step"] == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))
    assert cifar_speed.translate(11.5, 0.85, 0.0153, 512)["learning_rate"] == pytest.approx(0.75)


def test_cifar_speed_runs_on_synthetic_data(tmp_path):
    out = tmp_path / "out"
    # One conv group (--widths 4) instead of the docstring's smoke run's three (4,8,8): the
    # same recipe, layers and outputs, about half the compilation (on a CPU the run is
    # almost all compilation, and initialising each conv kernel compiles its own RNG).
    proc = run_script("cifar_speed.py", "--dataset", "synthetic:32x32x3:10:64", "--epochs", "1",
                      "--seeds", "1", "--batch-size", "32", "--widths", "4",
                      "--dtype", "float32", "--out", str(out))
    assert "seed 0: test" in proc.stdout
    data = json.loads((out / "cifar_speed.json").read_text())
    (row,) = data["rows"]
    assert 0.0 <= row["test_accuracy"] <= 1.0
    assert 0.0 <= row["test_accuracy_flip_tta"] <= 1.0
    # The TTA pass's own plain predictions agree with the run's evaluation.
    assert row["test_accuracy_tta_pass"] == pytest.approx(row["test_accuracy"])
    assert row["steps"] == 2 and row["train_seconds"] > 0
    cfg = row["config"]
    assert cfg["optimizer"]["name"] == "sgd" and cfg["optimizer"]["nesterov"] is True
    assert cfg["optimizer"]["momentum"] == 0.85 and cfg["optimizer"]["schedule"] == "linear"
    assert cfg["optimizer"]["learning_rate"] == pytest.approx(1.5 * 32 / 1024)
    assert cfg["train"]["label_smoothing"] == 0.2
    assert cfg["data"]["crop_padding"] == 2 and cfg["data"]["flip"] is True
    assert data["device"] and data["versions"]["jax"]
    with open(out / "cifar_speed.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert "| seed | test accuracy % |" in (out / "cifar_speed.md").read_text()


def test_resnet_digits_runs_and_checks_batch_norm(tmp_path):
    out = tmp_path / "out"
    run_script("resnet_digits.py", "--epochs", "1", "--seeds", "1",
               "--variants", "resnet-cosine,no-bn", "--out", str(out))
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"resnet_digits.{ext}").stat().st_size > 0
    data = json.loads((out / "resnet_digits.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    assert set(rows) == {"resnet, cosine decay", "resnet without BN"}
    bn, plain = rows["resnet, cosine decay"], rows["resnet without BN"]
    assert bn["has_batch_norm"] and not plain["has_batch_norm"]
    assert len(bn["test_accuracy_per_epoch"]) == 1
    assert bn["test_accuracy_per_epoch"][-1] == pytest.approx(bn["test_accuracy"])
    # Six batch norms (stem, two per block, the projection), each with momentum 0.9 as
    # recovered from its own update; with the rate decayed to 0 the running means sit
    # on the training data's, far closer than the initial statistics.
    layers = bn["bn_layers"]
    assert len(layers) == 6
    assert all(lay["momentum"] == pytest.approx(0.9, abs=1e-4) for lay in layers)
    assert bn["bn_mean_err_median"] < 0.05 < bn["bn_init_mean_err_median"]
    with open(out / "resnet_digits.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_gpu_bench_script_parses_and_is_executable():
    path = os.path.join(EXPERIMENTS, "gpu_bench.sh")
    assert os.access(path, os.X_OK)
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    out = subprocess.run([bash, "-n", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_gpu_bench_summary_reads_bench_rows(tmp_path):
    row = {"framework": "jaxcnn", "model": "cifar_speed", "what": "train", "dtype": "bfloat16",
           "mode": "step", "batch_size": 1024, "device_kind": "NVIDIA H100", "status": "ok",
           "step_seconds_median": 0.01, "step_seconds_min": 0.009, "step_seconds_max": 0.011,
           "compile_seconds": 5.0, "flops_per_step": 1e12, "peak_flop_per_s": 1e15}
    torch_row = dict(row, framework="torch", step_seconds_median=0.02)
    for name, rows in {"a_cifar_speed_vs_torch": [row, torch_row],
                       "c_cifar_speed_spc1": [row],
                       "c_cifar_speed_spc8": [dict(row, step_seconds_median=0.008)]}.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b_resnet50_bf16.log").write_text("Traceback ...\nRuntimeError: boom\n")
    out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "gpu_bench.py"),
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    text = "\n".join(summary["key_figures"])
    assert "102,400 images/s" in text and "jaxcnn / torch 2.00x" in text
    assert "(8 / 1: 1.25x)" in text
    assert any("b_resnet50_bf16" in p and "boom" in p for p in summary["problems"])
    assert (tmp_path / "summary.md").read_text().startswith("# gpu_bench summary")
