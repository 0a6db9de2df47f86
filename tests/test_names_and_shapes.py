"""'Did you mean' for unknown names, the digits28 dataset, and models too large for their input."""

import json
import os

import numpy as np
import pytest

from jaxcnn.cli import main
from jaxcnn.config import Config, override
from jaxcnn.data import UnknownDatasetError, load_dataset, load_digits, load_digits28
from jaxcnn.errors import ConfigError, DataError, ShapeError, SpecError, did_you_mean
from jaxcnn.models import (ZOO, build_model, min_input_size, model_spec,
                           parse_spec, summary)
from jaxcnn.models._summary import _LARGER_DATASETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------
# The shared helper


def test_did_you_mean_suggests_the_closest_or_nothing():
    assert did_you_mean("digts", ["digits", "digits28", "mnist"]) == " Did you mean 'digits'?"
    assert did_you_mean("MINST", ["mnist", "kmnist"]) == " Did you mean 'mnist'?"
    assert did_you_mean("resnet", ["digits", "mnist"]) == ""
    assert did_you_mean("", ["digits"]) == ""
    assert did_you_mean("d" * 10_000, ["digits"]) == ""  # long input: no suggestion, no cost
    # A mapping matches its keys and suggests its values.
    assert did_you_mean("conv2", {"conv": "conv", "conv2d": "conv"}) == " Did you mean 'conv'?"


# ---------------------------------------------------------------------------
# Unknown names, everywhere


@pytest.mark.parametrize("name,suggestion", [
    ("digts", "digits"), ("minst", "mnist"), ("cifar", "cifar10"), ("digits_28", "digits28"),
    ("synthetc:8x8x1:3", "synthetic:8x8x1:3"),
])
def test_unknown_dataset_suggests_a_known_name(name, suggestion):
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset(name)
    message = str(err.value)
    assert message.startswith(f"unknown dataset {name!r}; known datasets: ")
    assert "digits28" in message  # the valid choices are still listed
    assert message.endswith(f" Did you mean {suggestion!r}?")


def test_unknown_dataset_far_from_any_name_gets_no_suggestion():
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset("no_such_set_qq")
    assert "Did you mean" not in str(err.value)


def test_unknown_model_suggests_a_zoo_name():
    with pytest.raises(SpecError) as err:
        build_model("keras_convnt", 10)
    assert "known models: cifar_speed, flax_cnn, keras_convnet, resnet18, resnet18_cifar, resnet50, seed_cnn" in str(err.value)
    assert str(err.value).endswith(" Did you mean 'keras_convnet'?")


@pytest.mark.parametrize("text,column,suggestion", [
    ("conv2(32,3) flatten softmax", 0, "conv"),
    ("conv(32,3) maxpooling(2) flatten softmax", 11, "maxpool"),
    ("conv(32,3) Flaten softmax", 11, "flatten"),
    ("conv(8,3) avgpooling(2) flatten softmax", 10, "avgpool"),
])
def test_unknown_layer_suggests_a_layer_and_keeps_the_caret(text, column, suggestion):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    lines = str(err.value).splitlines()
    assert lines[0].endswith(f"at position {column} of the spec")
    assert lines[2] == "  " + " " * column + "^"
    assert lines[3].startswith("known layers: act, avgpool, bn, bn1d, bn2d, conv, dense")
    assert lines[3].endswith(f" Did you mean {suggestion!r}?")


def test_unknown_layer_argument_suggests_an_argument():
    with pytest.raises(SpecError) as err:
        parse_spec("conv(32, 3, stide=2) flatten softmax")
    assert str(err.value).splitlines()[-1] == (
        "valid arguments: filters, kernel_size, strides, padding, activation, use_bias. "
        "Did you mean 'strides'?")


@pytest.mark.parametrize("key,suggestion", [
    ("train.epoch", "train.epochs"), ("optimizer.lr", "optimizer.learning_rate"),
    ("trian.epochs", "train.epochs"), ("epochs", "train.epochs"),
    ("train.batch_size", "data.batch_size"), ("data.bach_size", "data.batch_size"),
])
def test_unknown_config_key_suggests_a_key(key, suggestion):
    with pytest.raises(ConfigError) as err:
        override(Config(), {key: "3"})
    assert str(err.value).startswith(f"unknown config key {key!r}; ")
    assert str(err.value).endswith(f" Did you mean {suggestion!r}?")


def test_unknown_config_key_in_json_suggests_a_key():
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"trian": {"epochs": 3}})
    assert "valid keys: model, optimizer, data, train, checkpoint." in str(err.value)
    assert str(err.value).endswith(" Did you mean 'train'?")
    with pytest.raises(ConfigError, match=r"Did you mean 'optimizer\.learning_rate'\?$"):
        Config.from_json('{"optimizer": {"lr": 0.1}}')


def test_cli_prints_the_suggestions(capsys, tmp_path):
    for args, hint in ((["--dataset", "digts"], "Did you mean 'digits'?"),
                       (["--set", "train.epoch=3"], "Did you mean 'train.epochs'?"),
                       (["--spec", "conv2(32,3) flatten softmax"], "Did you mean 'conv'?")):
        assert main(["train", "--workdir", str(tmp_path), "--quiet", *args]) == 2
        assert hint in capsys.readouterr().err


# ---------------------------------------------------------------------------
# digits28


@pytest.fixture(scope="module")
def digits28():
    return load_digits28()


def test_digits28_is_the_digits_upsampled(digits28):
    digits = load_digits()
    assert digits28.name == "digits28"
    assert digits28.image_shape == (28, 28, 1) and digits28.num_classes == 10
    for small, big in ((digits.train, digits28.train), (digits.test, digits28.test)):
        assert big.images.dtype == small.images.dtype == np.float32
        np.testing.assert_array_equal(big.labels, small.labels)
        assert 0.0 <= big.images.min() and big.images.max() <= 1.0
        # Bilinear upsampling keeps each image's mean brightness close to the original's.
        np.testing.assert_allclose(big.images.mean(axis=(1, 2, 3)),
                                   small.images.mean(axis=(1, 2, 3)), atol=0.05)


def test_digits28_by_name_with_validation():
    ds = load_dataset("digits28", validation_fraction=0.1)
    assert ds.metadata()["splits"] == {"train": 1295, "validation": 142, "test": 360}
    with pytest.raises(DataError, match="fixed splits"):
        load_dataset("digits28", splits={"train": "train[:50%]"})


def test_digits28_is_documented():
    with open(os.path.join(ROOT, "docs", "datasets.md")) as f:
        assert "| `digits28` |" in f.read()


@pytest.mark.parametrize("model", ["keras_convnet", "flax_cnn"])
def test_mnist_models_train_one_epoch_on_digits28(model, tmp_path, capsys):
    code = main(["train", "--model", model, "--dataset", "digits28", "--epochs", "1",
                 "--batch-size", "512", "--num-devices", "1", "--workdir", str(tmp_path),
                 "--quiet", "--json", "--set", "checkpoint.enabled=false",
                 "--set", "data.validation_fraction=0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["epochs"] == 1 and 0.0 <= result["test_accuracy"] <= 1.0


# ---------------------------------------------------------------------------
# The smallest input a model accepts


_SPECS = [
    *ZOO,
    "conv(4, 5x3, strides=2) maxpool(3, strides=2) conv(4, 3, padding=same, strides=3) "
    "avgpool(2x1) flatten softmax(2)",
    "conv(4, 3) conv(4, 3) maxpool(4) conv(4, 7) gap softmax(2)",
    "avgpool(3, strides=1, padding=same) maxpool(2, padding=same) flatten softmax(2)",
]


@pytest.mark.parametrize("spec", _SPECS)
def test_min_input_size_is_exact(spec):
    model = build_model(spec, 2 if "softmax(2)" in spec else 10)
    h, w = min_input_size(model)
    assert min_input_size(model_spec(spec)) == (h, w)
    summary(model, (h, w, 1), budget_bytes=2**40)  # fits
    summary(model, (h + 3, w + 5, 3), budget_bytes=2**40)  # and so does anything larger
    for smaller in ((h - 1, w), (h, w - 1)):
        if min(smaller) >= 1:
            with pytest.raises(ShapeError, match=f"needs images of at least {h}x{w}"):
                summary(model, (*smaller, 1), budget_bytes=2**40)


def test_model_too_large_for_its_input_names_model_size_and_datasets():
    with pytest.raises(ShapeError) as err:
        summary(build_model("keras_convnet", 10), (8, 8, 1))
    message = str(err.value)
    assert message.startswith("keras_convnet needs images of at least 10x10; the input is 8x8x1.")
    assert "--dataset digits28 (the embedded 8x8 digits upsampled to 28x28" in message
    assert "--input-shape 28x28x1" in message
    # The layer that does not fit is still named.
    assert "max_pooling2d_2': pool window 2x2 is larger than its input feature map 1x1" in message
    assert "\n" not in message
    # A caller that knows what the images are (a dataset's name) says so.
    with pytest.raises(ShapeError, match=r"^keras_convnet needs images of at least 10x10; "
                                         r"digits is 8x8x1\. "):
        summary(build_model("keras_convnet", 10), (8, 8, 1), input_name="digits")


def test_model_needing_more_than_any_dataset_asks_for_that_size():
    model = build_model("conv(4, 3) conv(4, 3) maxpool(4) conv(4, 9) flatten", 10)
    with pytest.raises(ShapeError) as err:
        summary(model, (28, 28, 3))
    assert str(err.value).startswith(
        "the model needs images of at least 40x40; the input is 28x28x3. Use a dataset of "
        "images of at least 40x40, or --input-shape 40x40x3 (summary, bench).")


def test_other_shape_errors_are_unchanged():
    # A Dense layer on a feature map fails at any size: not a size problem.
    with pytest.raises(ShapeError, match="^Dense 'dense_1': expects"):
        summary(build_model("conv(4, 3) dense(8)", 10), (8, 8, 1))


def test_suggested_datasets_have_the_sides_the_message_gives(digits28):
    sides = dict((name, side) for name, side, _ in _LARGER_DATASETS)
    assert digits28.image_shape[:2] == (sides["digits28"],) * 2
    assert sides["mnist"] == 28 and sides["cifar10"] == 32  # the tfds datasets' image sides


def test_cli_train_and_summary_say_what_fits(capsys, tmp_path):
    assert main(["train", "--model", "keras_convnet", "--workdir", str(tmp_path), "--quiet"]) == 2
    assert "keras_convnet needs images of at least 10x10" in capsys.readouterr().err
    assert main(["summary", "--model", "keras_convnet", "--input-shape", "9x12x1"]) == 2
    assert "keras_convnet needs images of at least 10x10; the input is 9x12x1" in (
        capsys.readouterr().err)
