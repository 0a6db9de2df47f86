"""The command's conventions: real defaults in every --help, --version, a flag and --set
that disagree, summary's defaults, and bench checking what can fail before measuring."""

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import pytest

import jaxcnn.bench
import jaxcnn.bench._sweep
import jaxcnn.config
from jaxcnn import cli
from jaxcnn.cli import build_parser, config_from_args, main
from jaxcnn.config import Config, DataConfig, ModelConfig, OptimizerConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SUBCOMMANDS = [[], ["train"], ["summary"], ["eval"], ["predict"], ["data"], ["data", "prepare"],
               ["data", "list"], ["bench"]]


def _help(capsys, *command) -> str:
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("jaxcnn: error: "), err
    return lines[-1]


# ---------------------------------------------------------------------------
# defaults in --help


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "jaxcnn")
def test_no_help_shows_a_none_default(command, capsys):
    text = _help(capsys, *command)
    for bad in ("(default: None)", "(default: [])", "default: None"):
        assert bad not in text, f"{' '.join(command)} --help shows {bad!r}"


def test_train_help_shows_the_config_defaults(capsys):
    text = _help(capsys, "train")
    c = Config()
    for key, value in {"train.epochs": c.train.epochs, "data.batch_size": c.data.batch_size,
                       "optimizer.learning_rate": c.optimizer.learning_rate,
                       "data.validation_fraction": c.data.validation_fraction,
                       "train.seed": c.train.seed, "model.name": c.model.name,
                       "data.dataset": c.data.dataset}.items():
        assert f"(default: {value}, {key})" in text, key
    # Each default appears once, with its flag, and no line contradicts it.
    assert "(default) " not in text and f"{c.model.name} (default)" not in text
    assert re.search(r"--epochs N training epochs \(default: %d, train\.epochs\)"
                     % c.train.epochs, text)
    assert "--config < " in text or "lowest first" in text  # the precedence is stated


def test_train_help_reads_the_defaults_when_the_parser_is_built(monkeypatch, capsys):
    """The numbers come from Config(), not from the help text: change them, the help follows."""
    other = Config(model=ModelConfig(name="keras_convnet"),
                   optimizer=OptimizerConfig(learning_rate=0.0042),
                   data=DataConfig(dataset="synthetic:12x12x1:3", batch_size=48,
                                   validation_fraction=0.15),
                   train=TrainConfig(epochs=17, seed=5))
    monkeypatch.setattr(jaxcnn.config, "Config", lambda: other)
    text = _help(capsys, "train")
    for expected in ("(default: 17, train.epochs)", "(default: 48, data.batch_size)",
                     "(default: 0.0042, optimizer.learning_rate)",
                     "(default: 0.15, data.validation_fraction)", "(default: 5, train.seed)",
                     "(default: keras_convnet, model.name)",
                     "(default: synthetic:12x12x1:3, data.dataset)"):
        assert expected in text, expected


def test_summary_and_bench_help_show_their_real_defaults(capsys):
    from jaxcnn.data import load_dataset

    c = Config()
    ds = load_dataset(c.data.dataset)
    text = _help(capsys, "summary")
    assert f"(default: {c.model.name}, model.name)" in text
    assert "x".join(map(str, ds.image_shape)) in text
    assert f"else {ds.num_classes}, from the default dataset {c.data.dataset}" in text
    text = _help(capsys, "bench")
    b = jaxcnn.bench.BenchConfig()
    assert f"(default: {b.model}, sized for the default " in text
    assert f"(default: {'x'.join(map(str, b.input_shape))})" in text
    assert "(default: seed_cnn)" not in text and "seed_cnn (default)" not in text
    assert f"(default: {','.join(map(str, b.batch_sizes))})" in text


# ---------------------------------------------------------------------------
# --version


def test_version_prints_jaxcnn_and_jax(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"jaxcnn {importlib.metadata.version('jaxcnn')}"
    assert f"jax {jax.__version__}" in lines[1]


def test_version_from_a_source_checkout(monkeypatch, capsys):
    real = importlib.metadata.version

    def not_installed(name):
        if name == "jaxcnn":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit):
        main(["--version"])
    first = capsys.readouterr().out.splitlines()[0]
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
    assert first.startswith(f"jaxcnn {version} (not installed; source at ")


# ---------------------------------------------------------------------------
# a flag and --set of the same key


def _config(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_flag_and_set_that_disagree_are_an_error_naming_both(tmp_path, capsys):
    code = main(["train", "--workdir", str(tmp_path / "run"), "--quiet",
                 "--epochs", "3", "--set", "train.epochs=5"])
    assert code == 2
    line = _error_line(capsys)
    assert "--epochs 3" in line and "--set train.epochs=5" in line and "give one" in line, line
    assert not (tmp_path / "run").exists()  # refused before the run started
    with pytest.raises(jaxcnn.ConfigError, match=r"--spec 'conv\(4, 3\) flatten softmax'"):
        _config("--spec", "conv(4, 3) flatten softmax", "--set", "model.name=seed_cnn")
    with pytest.raises(jaxcnn.ConfigError, match="train.seed=1 and --set train.seed=2"):
        _config("--set", "train.seed=1", "--set", "train.seed=2")


def test_flag_and_set_that_agree_and_the_config_file_precedence(tmp_path):
    assert _config("--epochs", "3", "--set", "train.epochs=3").train.epochs == 3
    assert _config("--lr", "1e-3", "--set", "optimizer.learning_rate=0.001"
                   ).optimizer.learning_rate == 0.001
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 7, "seed": 4}, "data": {"batch_size": 16}}))
    c = _config("--config", str(path), "--epochs", "2", "--set", "train.seed=9")
    # --config < --set and flags; what neither gives comes from the file.
    assert (c.train.epochs, c.train.seed, c.data.batch_size) == (2, 9, 16)


# ---------------------------------------------------------------------------
# summary: the default model on the default dataset's images


def test_summary_defaults_to_the_default_model_and_dataset(capsys):
    from jaxcnn.data import load_dataset
    from jaxcnn.models import build_model, summary

    c = Config()
    ds = load_dataset(c.data.dataset)
    assert main(["summary", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tuple(out["input_shape"]) == tuple(ds.image_shape)
    assert out["params"] == summary(build_model(c.model.name, ds.num_classes),
                                    ds.image_shape).params


def test_summary_takes_shape_and_classes_from_a_dataset(capsys):
    assert main(["summary", "--spec", "conv(4, 3) flatten softmax",
                 "--dataset", "synthetic:12x12x3:4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["input_shape"] == [12, 12, 3] and out["layers"][-1]["output_shape"] == [4]
    assert main(["summary", "--dataset", "synthetic:12x12x3:4", "--input-shape", "8x8x1"]) == 2
    assert "give either --dataset or --input-shape" in _error_line(capsys)


def test_summary_says_where_a_shape_that_does_not_fit_came_from(capsys):
    code = main(["summary", "--spec", "conv(4, 3) maxpool(2) conv(4, 3) maxpool(2) flatten "
                 "softmax", "--dataset", "synthetic:6x6x1:3"])
    assert code == 2
    assert "input 6x6x1 from --dataset synthetic:6x6x1:3" in _error_line(capsys)


# ---------------------------------------------------------------------------
# bench: checks before any work


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the peak measurement or any benchmark starts."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the checks")

    monkeypatch.setattr(jaxcnn.bench, "device_peak", work)
    monkeypatch.setattr(jaxcnn.bench, "run", work)
    monkeypatch.setattr(jaxcnn.bench, "bench_one", work)
    monkeypatch.setattr(jaxcnn.bench._sweep, "bench_one", work)
    monkeypatch.setattr(jaxcnn.bench._sweep, "device_peak", work)


def test_bench_refuses_a_model_that_does_not_fit_before_any_work(capsys, no_work):
    small = "conv(4, 3) maxpool(2) conv(4, 3) maxpool(2) flatten softmax"
    assert main(["bench", "--spec", small, "--input-shape", "6x6x1"]) == 2
    line = _error_line(capsys)
    assert "cannot benchmark" in line and "6x6x1 images (--input-shape)" in line, line
    assert main(["bench", "--model", "keras_convnet", "--dataset", "digits"]) == 2
    line = _error_line(capsys)
    assert "keras_convnet on 8x8x1 images (--dataset digits)" in line, line
    with pytest.raises(jaxcnn.ShapeError):  # the library checks first too
        jaxcnn.bench._sweep.run(jaxcnn.bench.BenchConfig(model=small, input_shape=(6, 6, 1)))


def _python_without_torch() -> str:
    """An interpreter without torch (this one, when it lacks torch), else skip."""
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('torch') is not None)"])
    if probe.returncode != 0:
        pytest.skip("torch is installed in this interpreter")
    return sys.executable


def test_bench_compare_checks_the_framework_is_installed_before_any_work(capsys, no_work):
    python = _python_without_torch()
    assert main(["bench", "--spec", "flatten softmax", "--input-shape", "4x4x1",
                 "--compare", "torch", "--compare-python", python]) == 2
    line = _error_line(capsys)
    assert "--compare torch: torch is not installed in --compare-python " + python in line, line
    assert "pip install 'jaxcnn[compare]'" in line and "pip install -e '.[compare]'" in line
    # The hint's extra is the real one of pyproject.toml.
    assert re.search(r"^compare = \[", open(os.path.join(ROOT, "pyproject.toml")).read(), re.M)
    assert main(["bench", "--compare", "torch", "--compare-python", "/no/such/python"]) == 2
    assert "cannot start --compare-python /no/such/python" in _error_line(capsys)
    with pytest.raises(jaxcnn.bench.ComparisonError, match="torch is not installed"):
        jaxcnn.bench._sweep.run(jaxcnn.bench.BenchConfig(model="flatten softmax",
                                                         input_shape=(4, 4, 1)),
                                compare="torch", compare_python=python)


def test_help_formatter_leaves_switches_and_unset_options_alone():
    text = build_parser().parse_args(["train"])  # parses; the formatter is only for help
    assert text.epochs is None  # flags still override the config only when given
    assert cli._config_default("data.batch_size") == (
        f"(default: {Config().data.batch_size}, data.batch_size)")
