"""Tests of the benchmark harness (jaxcnn.bench, jaxcnn.compare, `jaxcnn bench`).

No timing thresholds: the tests check that every figure is there, positive
and consistent, not how fast anything runs.
"""

import importlib.util
import json
import math
import os
import types

import pytest

from jaxcnn import bench
from jaxcnn.cli import main
from jaxcnn.compare import ComparisonError, check_param_counts, parse_frameworks, request_layers
from jaxcnn.compare._child import same_padding
from jaxcnn.models import build_model, summary

# 'valid' padding: XLA's cost analysis leaves out the multiply-adds that fall on
# 'same' padding, the analytical count does not, and on tiny feature maps that
# gap exceeds 10% (4x4 maps, 3x3 kernel: 31% of the taps are padding).
TINY = "conv(4, 3) maxpool(2) conv(8, 3) flatten dense(16, relu) softmax"
SHAPE = (10, 10, 1)
PEAK = bench.Peak(1e12, "given", "a fixed peak for the tests")


def tiny_config(**kw):
    base = dict(model=TINY, input_shape=SHAPE, num_classes=3, batch_sizes=(8,), steps=2,
                repeats=2, warmup=1)
    base.update(kw)
    return bench.BenchConfig(**base)


FIGURES = ("compile_seconds", "step_seconds_median", "step_seconds_min", "step_seconds_max",
           "images_per_s", "flops_per_step", "flop_per_s", "peak_flop_per_s", "utilisation",
           "peak_memory_bytes", "params")


@pytest.fixture(scope="module")
def train_row():
    return bench.bench_one(tiny_config(), 8, peak=PEAK)


def test_every_figure_present_and_positive(train_row):
    row = train_row
    assert row["status"] == "ok" and row["error"] is None
    for key in FIGURES:
        assert row[key] is not None and row[key] > 0, key
    assert row["step_seconds_min"] <= row["step_seconds_median"] <= row["step_seconds_max"]
    assert len(row["step_seconds"]) == 2
    assert row["images_per_s"] == pytest.approx(8 / row["step_seconds_median"])
    assert row["utilisation"] == pytest.approx(row["flop_per_s"] / 1e12)
    assert row["params"] == summary(build_model(TINY, 3), SHAPE).params
    assert row["framework"] == "jaxcnn" and row["what"] == "train" and row["dtype"] == "float32"
    assert row["flops_source"] == "xla_cost_analysis"
    assert row["compilation_cache"] == "off"
    assert row["impl"] in ("xla", "fast")
    # Which path each layer took, and the XLA options that went with it.
    path = row["impl"]
    assert row["op_paths"] == f"conv2d {path},{path}; max_pool {path}"  # both convs <= 4 inputs
    from jaxcnn.ops import compiler_options
    assert row["compiler_options"] == compiler_options(row["impl_requested"])
    assert isinstance(row["device_kind"], str) and row["device_kind"]
    for lib in ("jax", "jaxlib", "flax"):
        assert row["versions"][lib]
    assert "git_commit" in row and row["peak_source"] == "given"
    assert row["micro_batches"] == 1  # batch 8: one pass
    from jaxcnn.host_memory import host_memory_state
    assert row["host_memory"] == host_memory_state()  # the malloc setting the step ran with


def test_train_steps_run_as_micro_batches_like_jaxcnn_train():
    from jaxcnn.training import resolve_micro_batches

    cfg = tiny_config(micro_batches=2)
    row = bench.bench_one(cfg, 8, peak=PEAK)
    assert row["status"] == "ok" and row["micro_batches"] == 2
    assert f"step {row['impl']} 2x4" in bench.format_table([row])
    auto = bench.bench_one(tiny_config(), 64, peak=PEAK)
    assert auto["micro_batches"] == resolve_micro_batches(64, "auto", "auto")
    with pytest.raises(bench.BenchError, match="micro_batches"):
        tiny_config(micro_batches=0)


def test_training_flops_are_about_three_forward_passes():
    # Plain autodiff (impl="xla"): a backward pass costs about two forward
    # passes. Reformulated gradients (impl="fast") may count differently.
    row = bench.bench_one(tiny_config(impl="xla", repeats=1, warmup=0), 8, peak=PEAK)
    forward = summary(build_model(TINY, 3), SHAPE).flops * 8
    assert row["impl"] == "xla"
    assert 2.0 < row["flops_per_step"] / forward < 4.0


@pytest.mark.parametrize("what", ["infer", "eval"])
def test_forward_flops_match_the_analytical_count(what):
    row = bench.bench_one(tiny_config(what=what, repeats=1, warmup=0), 16, peak=PEAK)
    analytical = summary(build_model(TINY, 3), SHAPE).flops * 16
    assert row["analytical_flops_per_step"] == analytical
    assert row["flops_per_step"] == pytest.approx(analytical, rel=0.10)


def test_scan_mode_counts_flops_per_step_not_per_call():
    # Scan mode runs `steps` bare train_steps per call; its FLOPs are one bare step's.
    import jax
    import jax.numpy as jnp
    import optax

    from jaxcnn.training import create_train_state, train_step

    row = bench.bench_one(tiny_config(mode="scan", steps=3, repeats=2, warmup=0), 8, peak=PEAK)
    assert row["status"] == "ok" and row["images_per_s"] > 0
    state = create_train_state(build_model(TINY, 3), SHAPE, optax.adam(1e-3), jax.random.key(0))
    batch = {"image": jnp.zeros((8, *SHAPE)), "label": jnp.zeros(8, jnp.int32)}
    bare = jax.jit(train_step, compiler_options=bench.bench_policy(tiny_config(), 8).options)
    analysis = bare.lower(state, batch, jax.random.key(1)).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    assert row["flops_per_step"] == pytest.approx(analysis["flops"], rel=0.05)


def test_bfloat16_runs_and_reports_its_dtype():
    row = bench.bench_one(tiny_config(dtype="bfloat16", repeats=1, warmup=0), 8, peak=PEAK)
    assert row["status"] == "ok" and row["dtype"] == "bfloat16" and row["flops_per_step"] > 0


def test_jsonl_round_trip(train_row, tmp_path):
    path = str(tmp_path / "results.jsonl")
    bench.write_jsonl([train_row, train_row], path)
    assert bench.read_jsonl(path) == [json.loads(json.dumps(train_row))] * 2
    bench.write_jsonl([train_row], path, append=True)
    assert len(bench.read_jsonl(path)) == 3
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(bench.BenchError, match="line 2"):
        bench.read_jsonl(str(tmp_path / "bad.jsonl"))


def test_impossible_batch_becomes_an_out_of_memory_row_and_the_sweep_goes_on():
    # 2**26 images of 10x10: the compiled step needs hundreds of GB, far more
    # than any test machine has, so it is refused before anything runs.
    huge = 2 ** 26
    rows = bench.run(tiny_config(batch_sizes=(huge, 4), repeats=1, warmup=0), peak=PEAK)
    assert [r["batch_size"] for r in rows] == [huge, 4]
    oom, ok = rows
    assert oom["status"] == "oom" and "out of memory" in oom["error"]
    assert oom["compiled_memory_bytes"] > oom["memory_available_bytes"]
    assert oom["images_per_s"] is None
    assert ok["status"] == "ok" and ok["images_per_s"] > 0
    assert "out of memory" in bench.format_table(rows)


def test_comparison_refuses_mismatched_parameter_counts():
    check_param_counts(100, {"torch": 100})
    with pytest.raises(ComparisonError, match="torch has 99"):
        check_param_counts(100, {"torch": 99, "keras-jax": 100})
    # The parent checks each framework's answer too, before making rows of it.
    answer = {"framework": "torch", "framework_version": "x", "params": 7, "rows": []}
    with pytest.raises(ComparisonError, match="parameter counts differ"):
        bench.framework_rows(answer, tiny_config(), [], PEAK)


def test_framework_rows_share_flops_and_show_the_ratio(train_row):
    t = train_row["step_seconds_median"] * 2  # a framework half as fast
    answer = {"framework": "torch", "framework_version": "0", "detail": "a stand-in answer",
              "params": train_row["params"],
              "rows": [{"batch_size": 8, "status": "ok", "compile_seconds": 0.5,
                        "step_seconds": [t, t], "peak_memory_bytes": None}]}
    rows = bench.framework_rows(answer, tiny_config(), [train_row], PEAK)
    assert rows[0]["flops_per_step"] == train_row["flops_per_step"]
    assert rows[0]["images_per_s"] == pytest.approx(train_row["images_per_s"] / 2)
    agg = {a["framework"]: a for a in bench.aggregate([train_row, *rows])}
    assert agg["torch"]["ratio"] == pytest.approx(2.0)
    assert "2.00x" in bench.format_table([train_row, *rows])
    assert "| torch | step | 8 |" in bench.format_table([train_row, *rows], markdown=True)


def test_aggregate_measures_utilisation_against_the_best_recorded_peak(train_row):
    slow_peak = dict(train_row, peak_flop_per_s=0.5e12, round=1)
    (merged,) = bench.aggregate([train_row, slow_peak])
    assert merged["rounds"] == 2 and merged["peak_flop_per_s"] == 1e12
    assert merged["utilisation"] == pytest.approx(merged["flop_per_s"] / 1e12)


def test_request_describes_every_layer_with_its_defaults():
    req = bench.compare_request(tiny_config(), [])
    assert req["expected_params"] == summary(build_model(TINY, 3), SHAPE).params
    conv = req["layers"][0]
    assert conv["args"]["activation"] == "relu" and conv["args"]["use_bias"] is True
    assert [layer["input_shape"] for layer in req["layers"][:2]] == [[10, 10, 1], [8, 8, 4]]
    assert same_padding(7, 3, 2) == (1, 1) and same_padding(6, 3, 2) == (0, 1)


def test_parse_frameworks():
    assert parse_frameworks("torch,keras") == ["torch", "keras-tensorflow", "keras-jax"]
    assert parse_frameworks(None) == []
    with pytest.raises(ComparisonError, match="unknown framework"):
        parse_frameworks("caffe")


def test_peak_table_and_fallbacks():
    assert bench.lookup_peak("NVIDIA H100 80GB HBM3", "bfloat16").flop_per_s == 989.4e12
    assert bench.lookup_peak("NVIDIA H200", "bfloat16").flop_per_s == 989.4e12
    assert bench.lookup_peak("NVIDIA H100 PCIe", "bfloat16").flop_per_s == 756e12
    assert bench.lookup_peak("NVIDIA A100-SXM4-80GB", "float32",
                             matmul_precision="highest").flop_per_s == 19.5e12
    assert bench.lookup_peak("NVIDIA L4", "bfloat16").flop_per_s == 121e12
    assert bench.lookup_peak("Tesla V100-SXM2-16GB", "float32").flop_per_s == 15.7e12
    assert bench.lookup_peak("Tesla V100-SXM2-16GB", "bfloat16") is None
    for kind, flops in (("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12),
                        ("TPU v6 lite", 918e12)):
        assert bench.lookup_peak(kind, "bfloat16").flop_per_s == flops
    # A device kind the table does not know: an unknown peak that says why.
    stranger = types.SimpleNamespace(platform="gpu", device_kind="Quantum Abacus 9000")
    peak = bench.device_peak("float32", stranger, measure=False)
    assert peak.flop_per_s is None and peak.source == "unknown"
    assert "Quantum Abacus 9000" in peak.detail


def test_measured_cpu_peak_is_positive():
    flops, n = bench.measure_matmul_peak(max_size=256, repeats=2)
    assert flops > 0 and n == 256


def test_bad_config_names_the_problem_and_the_fix():
    with pytest.raises(bench.BenchError, match="--batch-sizes"):
        bench.BenchConfig(batch_sizes=(0,))
    with pytest.raises(bench.BenchError, match="dtype"):
        bench.BenchConfig(dtype="float64")


def test_cli_bench_writes_jsonl_and_plots(tmp_path, capsys):
    out = str(tmp_path / "b.jsonl")
    code = main(["bench", "--spec", TINY, "--input-shape", "10x10x1", "--classes", "3",
                 "--batch-sizes", "4,8", "--steps", "1", "--repeats", "1", "--warmup", "0",
                 "--peak-flops", "1e12", "--out", out, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["batch_size"] for r in result["results"]] == [4, 8]
    rows = bench.read_jsonl(out)
    assert len(rows) == 2 and all(r["peak_source"] == "given" for r in rows)
    png = str(tmp_path / "b.png")
    assert main(["bench", "--plot", out, "--png", png]) == 0
    assert os.path.getsize(png) > 0
    assert main(["bench", "--compare", "caffe"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_torch_builds_the_same_parameter_count_for_every_zoo_model():
    from jaxcnn.compare.torch_impl import build_torch_model
    from jaxcnn.models import ZOO

    for name in ZOO:
        model = build_model(name, 10)
        net = build_torch_model(request_layers(model, (28, 28, 1)))
        assert sum(p.numel() for p in net.parameters()) == summary(model, (28, 28, 1)).params


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_torch_comparison_runs_side_by_side():
    rows = bench.run(tiny_config(repeats=1, warmup=0), compare="torch", peak=PEAK)
    torch_row = [r for r in rows if r["framework"] == "torch"][0]
    assert torch_row["status"] == "ok" and torch_row["images_per_s"] > 0
    assert math.isclose(torch_row["flops_per_step"], rows[0]["flops_per_step"])


def test_table_shows_the_path_each_layer_ran(train_row):
    table = bench.format_table([train_row])
    assert f"step {train_row['impl']}" in table
    assert "jaxcnn ops: " + train_row["op_paths"] in table
    xla_row = bench.bench_one(tiny_config(impl="xla", repeats=1, warmup=0), 8, peak=PEAK)
    assert xla_row["impl"] == "xla" and xla_row["compiler_options"] == {}
    assert xla_row["op_paths"] == "conv2d xla,xla; max_pool xla"


# ---------------------------------------------------------------------------
# Outputs that cannot be written (issue 15): refused before any work, or one
# clean line when the disk fills up on the way. Plots of runs too.


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("jaxcnn: error: "), err
    return lines[-1]


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the benchmark, the peak measurement or a dataset load starts."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(bench, "run", work)
    monkeypatch.setattr(bench, "device_peak", work)
    import jaxcnn.data

    monkeypatch.setattr(jaxcnn.data, "load_dataset", work)


def test_bench_refuses_an_output_it_cannot_write_before_any_work(tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("x")
    cases = {
        "/nonexistent/dir/x.jsonl": "the directory '/nonexistent/dir' does not exist",
        str(tmp_path): "it is a directory",
        str(tmp_path / "file" / "x.jsonl"): "is not a directory",
    }
    for out, expected in cases.items():
        assert main(["bench", "--dataset", "digits", "--out", out]) == 2
        line = _error_line(capsys)
        assert f"cannot write the results to {out!r}" in line and expected in line, line
    # --png (with --plot) is checked before the JSON lines are read.
    for png, expected in ((str(tmp_path / "file" / "x.png"), "is not a directory"),
                          (str(tmp_path), "it is a directory")):
        assert main(["bench", "--plot", str(tmp_path / "missing.jsonl"), "--png", png]) == 2
        line = _error_line(capsys)
        assert f"cannot write the plot to {png!r}" in line and expected in line, line
    assert sorted(os.listdir(tmp_path)) == ["file"]  # no probe file left behind


def test_output_problem_creates_and_changes_nothing(tmp_path):
    existing = tmp_path / "old.jsonl"
    existing.write_text('{"a": 1}\n')
    before = existing.stat()
    assert bench.output_problem(str(existing)) is None
    assert existing.read_text() == '{"a": 1}\n' and existing.stat().st_mtime == before.st_mtime
    assert bench.output_problem(str(tmp_path / "new" / "deeper" / "x.png"),
                                create_dirs=True) is None
    assert "does not exist" in bench.output_problem(str(tmp_path / "new" / "x.jsonl"))
    assert sorted(os.listdir(tmp_path)) == ["old.jsonl"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_bench_out_on_a_full_disk_is_one_line(capsys, monkeypatch):
    row = {"framework": "jaxcnn", "round": 0, "batch_size": 8, "status": "ok",
           "images_per_s": 1.0}

    def fake_run(config, on_row=None, **kwargs):
        on_row(dict(row))
        return [row]

    monkeypatch.setattr(bench, "run", fake_run)
    assert main(["bench", "--spec", TINY, "--input-shape", "10x10x1", "--classes", "3",
                 "--batch-sizes", "8", "--peak-flops", "1e12", "--out", "/dev/full"]) == 2
    line = _error_line(capsys)
    assert "'/dev/full'" in line and "No space left on device" in line


def _enospc(fig, fname, *args, **kwargs):
    """``Figure.savefig`` on a full disk: part of the file is written, then ENOSPC."""
    import errno

    with open(fname, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_plots_on_a_full_disk(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    from jaxcnn.errors import JaxcnnError
    from jaxcnn.plots import learning_curves

    rows = [{"framework": "jaxcnn", "model": "m", "what": "train", "batch_size": b,
             "status": "ok", "step_seconds_median": 0.01, "step_seconds_min": 0.009,
             "step_seconds_max": 0.011} for b in (8, 16)]
    jsonl = bench.write_jsonl(rows, str(tmp_path / "b.jsonl"))
    history = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}, {"epoch": 2, "loss": 0.5,
                                                             "accuracy": 0.7}]
    curves = str(tmp_path / "curves.png")
    learning_curves(history, curves)
    before = open(curves, "rb").read()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _enospc)
    with pytest.raises(JaxcnnError, match=r"curves\.png'.*No space left on device"):
        learning_curves(history, curves)
    assert open(curves, "rb").read() == before  # the previous plot is intact, no partial one
    assert main(["bench", "--plot", jsonl, "--png", str(tmp_path / "t.png")]) == 2
    assert "No space left on device" in _error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["b.jsonl", "curves.png"]


def test_run_on_a_full_disk_while_plotting_without_checkpoints(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _enospc)
    workdir = str(tmp_path / "run")
    assert main(["train", "--spec", "conv(4,3) maxpool(2) flatten softmax", "--epochs", "1",
                 "--batch-size", "256", "--num-devices", "1", "--validation", "0", "--workdir", workdir,
                 "--set", "checkpoint.enabled=false", "--quiet"]) == 2
    line = _error_line(capsys)
    assert "learning_curves.png" in line and "No space left on device" in line
    # The results were written before the plot.
    assert {"summary.json", "history.jsonl", "config.json"} <= set(os.listdir(workdir))
    assert not any(".tmp" in name for name in os.listdir(workdir))
