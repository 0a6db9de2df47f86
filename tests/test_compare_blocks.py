"""``jaxcnn bench --compare`` for models with batch norm and residual blocks.

The request (:func:`jaxcnn.compare.request_layers`) is pure jaxcnn and always
tested. The PyTorch and Keras rebuilds are tested where those frameworks are
installed, as in tests/test_bench.py: in-process tests need the framework
importable by this interpreter; the tests that run a framework's subprocess
need it in the interpreter that runs the frameworks, which is this one unless
``JAXCNN_TEST_COMPARE_PYTHON`` names another (e.g. a separate environment with
the 'compare' extra, as docs/benchmarks.md suggests). Without them the tests
skip.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from jaxcnn import bench
from jaxcnn.cli import main
from jaxcnn.compare import ComparisonError, check_installed, request_layers, run_framework
from jaxcnn.models import build_model, layer_names, summary

# The interpreter that runs the frameworks' subprocesses.
COMPARE_PYTHON = os.environ.get("JAXCNN_TEST_COMPARE_PYTHON") or sys.executable
HAS_TORCH = importlib.util.find_spec("torch") is not None

# One of each new piece: a projection shortcut and an identity one, batch norms
# with and without scale or bias, int padding on a conv and a max pool (wider
# than torch's pool can pad by itself), an Activation layer, a scaled bias-free head.
BLOCKS = ("conv(8, 3, none, padding=1, bias=false) bn(relu) maxpool(3, 1, padding=2) "
          "residual(conv(16, 3, 2, none, padding=1, bias=false) bn(gelu) "
          "conv(16, 3, none, padding=1, bias=false) bn(use_scale=false), "
          "shortcut=conv(16, 1, 2, none, bias=false) bn(use_bias=false)) relu "
          "residual(conv(16, 3, none, padding=1x1) bn(0.6, 1e-3)) "
          "avgpool(3, 2, padding=1) flatten dense(12, none) bn1d(relu) "
          "softmax(bias=false, scale=0.5)")
BLOCKS_SHAPE = (8, 8, 3)
# Small enough for a whole `jaxcnn bench` round in seconds.
TINY_BLOCK = ("conv(4, 3, none, padding=1, bias=false) bn(relu) "
              "residual(conv(4, 3, none, padding=1, bias=false) bn, "
              "shortcut=conv(4, 1, none, bias=false) bn(use_scale=false)) relu "
              "gap softmax(bias=false, scale=0.5)")
# Published parameter counts (the same for any input size: a global pool or a
# 1x1 map precedes each head), checked on 32x32 inputs to keep the builds quick.
# Keras builds these slowly (some seconds a model), so it gets the CIFAR ones.
ZOO_COUNTS = {("resnet18", 1000): 11_689_512, ("resnet50", 1000): 25_557_032,
              ("resnet18_cifar", 10): 11_173_962, ("cifar_speed", 10): 1_971_640}
ZOO_SHAPE = (32, 32, 3)


def _needs(*frameworks):
    """Skips unless COMPARE_PYTHON has the frameworks (the project's own check)."""
    try:
        check_installed(frameworks, python=COMPARE_PYTHON)
    except ComparisonError as e:
        pytest.skip(str(e).split(";")[0])


def _walk(layers):
    for layer in layers:
        yield layer
        if layer["kind"] == "Residual":
            yield from _walk(layer["body"])
            yield from _walk(layer["shortcut"] or [])


# ---------------------------------------------------------------------------
# The request (jaxcnn only)


def test_request_describes_residual_blocks_recursively():
    model = build_model(BLOCKS, 5)
    layers = request_layers(model, BLOCKS_SHAPE)
    json.dumps(layers)  # it goes to the child as JSON
    kinds = [layer["kind"] for layer in layers]
    assert kinds == ["Conv2D", "BatchNorm", "MaxPooling2D", "Residual", "Activation",
                     "Residual", "AvgPooling2D", "Flatten", "Dense", "BatchNorm1D",
                     "SoftmaxOutput"]
    projected, identity = layers[3], layers[5]
    assert projected["args"] == {} and identity["shortcut"] is None
    assert [b["kind"] for b in projected["body"]] == ["Conv2D", "BatchNorm", "Conv2D",
                                                      "BatchNorm"]
    assert [b["kind"] for b in projected["shortcut"]] == ["Conv2D", "BatchNorm"]
    # Both branches start from the block's input and end at its output.
    assert projected["input_shape"] == [10, 10, 8]
    for branch in (projected["body"], projected["shortcut"]):
        assert branch[0]["input_shape"] == projected["input_shape"]
        assert branch[-1]["output_shape"] == projected["output_shape"] == [5, 5, 16]
        for before, after in zip(branch, branch[1:]):
            assert after["input_shape"] == before["output_shape"]
    # Parameters: per layer as jaxcnn counts them (batch statistics are not
    # parameters), a block's its branches' sum, and the total the summary's.
    body, short = projected["body"], projected["shortcut"]
    assert [b["params"] for b in body] == [8 * 9 * 16, 32, 16 * 9 * 16, 16]
    assert [b["params"] for b in short] == [8 * 16, 16]
    assert projected["params"] == sum(b["params"] for b in body + short)
    assert sum(layer["params"] for layer in layers) == summary(model, BLOCKS_SHAPE).params


def test_request_spells_out_every_argument_of_the_new_layers():
    layers = request_layers(build_model(BLOCKS, 5), BLOCKS_SHAPE)
    bn = layers[1]["args"]
    assert bn == {"momentum": 0.9, "epsilon": 1e-5, "use_scale": True, "use_bias": True,
                  "activation": "relu"}
    no_scale = layers[3]["body"][3]["args"]
    assert no_scale["use_scale"] is False and no_scale["use_bias"] is True
    assert no_scale["activation"] is None
    assert layers[5]["body"][1]["args"]["momentum"] == 0.6
    assert layers[5]["body"][1]["args"]["epsilon"] == 1e-3
    assert layers[4]["args"] == {"activation": "relu"}
    assert layers[-1]["args"] == {"num_classes": 5, "use_bias": False, "scale": 0.5}
    assert layers[2]["args"]["padding"] == 2  # an int stays an int
    assert layers[5]["body"][0]["args"]["padding"] == [1, 1]  # a pair becomes a list
    # airbench's batch norms, as the zoo writes them.
    speed = request_layers(build_model("cifar_speed", 10), ZOO_SHAPE)
    norms = [layer["args"] for layer in _walk(speed) if layer["kind"] == "BatchNorm"]
    assert len(norms) == 6 and all(
        n == {"momentum": 0.6, "epsilon": 1e-12, "use_scale": False, "use_bias": True,
              "activation": "gelu"} for n in norms)
    assert speed[-1]["args"]["use_bias"] is False
    assert speed[-1]["args"]["scale"] == pytest.approx(1 / 9)


# ---------------------------------------------------------------------------
# PyTorch, in this process


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("name,classes", list(ZOO_COUNTS))
def test_torch_counts_the_zoo_models_parameters_as_jaxcnn(name, classes):
    from jaxcnn.compare.torch_impl import build_torch_model

    model = build_model(name, classes)
    net = build_torch_model(request_layers(model, ZOO_SHAPE))
    expected = summary(model, ZOO_SHAPE).params
    assert expected == ZOO_COUNTS[name, classes]
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
def test_torch_runs_a_residual_batch_norm_model_in_train_and_eval_mode():
    import torch

    from jaxcnn.compare.torch_impl import build_torch_model

    net = build_torch_model(request_layers(build_model(BLOCKS, 5), BLOCKS_SHAPE))
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 6
    assert [m.weight is None for m in norms].count(True) == 1  # bn(use_scale=false)
    assert [m.bias is None for m in norms].count(True) == 1  # bn(use_bias=false)
    assert norms[0].momentum == pytest.approx(0.1) and norms[-2].momentum == pytest.approx(0.4)

    net.train()  # batch statistics; the running ones move
    y = net(x)
    assert y.shape == (3, 5)
    assert not torch.allclose(norms[0].running_mean, torch.zeros_like(norms[0].running_mean))
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())

    net.eval()  # running statistics: a prediction does not depend on its batch
    with torch.no_grad():
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)
    net.train()
    assert net(x[:1]).shape == (1, 5)  # one image trains too (jaxcnn allows it)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
def test_torch_computes_what_jaxcnn_computes():
    """With jaxcnn's weights, the same logits in training and in evaluation."""
    import jax
    import jax.numpy as jnp
    import torch

    from jaxcnn.compare.torch_impl import build_torch_model

    model = build_model(BLOCKS, 5)
    x = np.random.default_rng(0).standard_normal((4, *BLOCKS_SHAPE)).astype(np.float32)
    # Jitted: three whole-model compiles beat op-by-op dispatch of every layer.
    variables = jax.jit(model.init)(jax.random.key(1), jnp.asarray(x))
    evaluate = jax.jit(lambda v, x: model.apply(v, x))
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
    net = build_torch_model(request_layers(model, BLOCKS_SHAPE))

    params = list(net.parameters())
    ours = list(_in_layer_order(model.layers, variables["params"]))
    assert len(params) == len(ours)
    with torch.no_grad():
        for p, value in zip(params, ours):
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            assert tuple(p.shape) == value.shape
            p.copy_(torch.from_numpy(np.array(value)))  # a writable, contiguous copy
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(xt).numpy(), evaluate(variables, x), atol=1e-5)
    net.train()
    with torch.no_grad():
        np.testing.assert_allclose(net(xt).numpy(), train(variables, x), atol=1e-5)


def _in_layer_order(specs, params, prefix=""):
    """jaxcnn's parameters in the order torch registers them: layer by layer (a
    block's body, then its shortcut), weight before bias. (A jitted init returns
    its dicts sorted by name, so their own order cannot be used.)"""
    for name, spec in layer_names(specs):
        layer = params.get(prefix + name)
        if layer is None:
            continue
        if spec.kind == "Residual":
            kw = spec.kwargs()
            yield from _in_layer_order(kw["body"], layer)
            yield from _in_layer_order(kw.get("shortcut") or (), layer, "shortcut_")
        else:
            yield from (np.asarray(layer[key]) for key in ("kernel", "scale", "bias")
                        if key in layer)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
def test_torch_refuses_an_average_of_nothing():
    from jaxcnn.compare.torch_impl import build_torch_model

    layers = request_layers(build_model("avgpool(2, 1, padding=2) flatten softmax", 2),
                            (3, 3, 1))
    with pytest.raises(ComparisonError, match="wholly in the padding"):
        build_torch_model(layers)


# ---------------------------------------------------------------------------
# The frameworks' subprocesses


def _request(spec, shape, classes, **kw):
    config = bench.BenchConfig(model=spec, input_shape=shape, num_classes=classes,
                               batch_sizes=(4,), steps=1, repeats=1, warmup=0, **kw)
    return bench.compare_request(config, [])


def test_torch_child_trains_a_residual_batch_norm_model():
    _needs("torch")
    request = _request(BLOCKS, BLOCKS_SHAPE, 5)
    answer = run_framework("torch", request, python=COMPARE_PYTHON, timeout=300)
    assert answer["params"] == request["expected_params"]
    (row,) = answer["rows"]
    assert row["status"] == "ok" and row["step_seconds"][0] > 0


@pytest.mark.parametrize("framework", ["keras-jax", "keras-tensorflow"])
def test_keras_child_trains_a_residual_batch_norm_model(framework):
    _needs(framework)
    request = _request(BLOCKS, BLOCKS_SHAPE, 5)
    # Keras counts the moving statistics too; the child compares trainable ones.
    answer = run_framework(framework, request, python=COMPARE_PYTHON, timeout=300)
    assert answer["params"] == request["expected_params"]
    (row,) = answer["rows"]
    assert row["status"] == "ok" and row["step_seconds"][0] > 0


_KERAS_COUNTS = """
import json, sys
from jaxcnn.compare import request_layers
from jaxcnn.compare.keras_impl import build_keras_model, trainable_params
from jaxcnn.models import build_model
out = []
for name, classes, shape in json.loads(sys.argv[1]):
    layers = request_layers(build_model(name, classes), shape)
    out.append(trainable_params(build_keras_model(layers, shape)))
print(json.dumps(out))
"""


def test_keras_counts_the_zoo_models_parameters_as_jaxcnn():
    import subprocess

    _needs("keras-jax")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=root, JAX_PLATFORMS="cpu")
    chosen = {key: n for key, n in ZOO_COUNTS.items() if key[1] == 10}
    models = [[name, classes, list(ZOO_SHAPE)] for name, classes in chosen]
    proc = subprocess.run([COMPARE_PYTHON, "-c", _KERAS_COUNTS, json.dumps(models)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == list(chosen.values())


def test_cli_bench_compares_a_residual_batch_norm_model_with_torch(capsys):
    _needs("torch")
    code = main(["bench", "--spec", TINY_BLOCK, "--input-shape", "4x4x1", "--classes", "3",
                 "--batch-sizes", "4", "--steps", "1", "--repeats", "1", "--warmup", "0",
                 "--peak-flops", "1e12", "--compare", "torch",
                 "--compare-python", COMPARE_PYTHON, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {row["framework"]: row for row in result["results"]}
    assert rows["torch"]["status"] == "ok" and rows["jaxcnn"]["status"] == "ok"
    assert rows["torch"]["params"] == rows["jaxcnn"]["params"]
