"""tensorflow-datasets without TensorFlow: mocked and really prepared data, offline errors, CLI."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxcnn.cli import main
from jaxcnn.config import Config, override
from jaxcnn.data import (Preprocess, SourceImages, default_data_dir, list_prepared,
                         load_dataset, load_tfds, prepare_tfds)
from jaxcnn.data._tfds import detect_features
from jaxcnn.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


class JaxcnnTinyShapes(tfds.core.GeneratorBasedBuilder):
    """A real (unmocked) tfds builder; PIL images are encoded without TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")
    SIZES = {"train": 40, "validation": 12, "test": 10}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "picture": tfds.features.Image(shape=(8, 8, 1)),
                "kind": tfds.features.ClassLabel(names=["circle", "square", "star"]),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("picture", "kind"))

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s, n) for s, n in self.SIZES.items()}

    def _generate_examples(self, split, n):
        images = _tiny_images(n, seed=len(split))
        for i in range(n):
            yield i, {"picture": Image.fromarray(images[i]), "kind": i % 3, "id": f"{split}{i}"}


class JaxcnnTinyNoVal(JaxcnnTinyShapes):
    """The same data without a validation split of its own."""

    SIZES = {"train": 40, "test": 10}


class JaxcnnNeedsTf(tfds.core.GeneratorBasedBuilder):
    """Yields NumPy images, which tfds encodes with TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 1)),
            "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            yield i, {"image": np.zeros((4, 4, 1), np.uint8), "label": i % 2}


class JaxcnnUnreachable(JaxcnnNeedsTf):
    """Downloads from a host that never resolves (.invalid is reserved, RFC 2606)."""

    url_infos = {"https://jaxcnn-test.invalid/data.tar.gz": None}


class JaxcnnTextOnly(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
        return {}

    def _generate_examples(self):
        yield from ()


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    out = prepare_tfds("jaxcnn_tiny_shapes", d)
    assert out["splits"] == {"train": 40, "validation": 12, "test": 10}
    return d


# --- mocked tfds (tfds.testing.mock_data patches the data_source path; no TensorFlow)


def test_mock_mnist_shapes_metadata_and_carved_validation():
    with tfds.testing.mock_data(num_examples=50):
        ds = load_dataset("mnist", validation_fraction=0.2, data_dir="/nonexistent")
    assert ds.name == "mnist"
    assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    assert ds.metadata()["splits"] == {"train": 40, "validation": 10, "test": 50}
    assert len(ds.class_names) == 10
    assert 0 <= ds.train.labels.min() and ds.train.labels.max() < 10


def test_mock_cifar10_and_tfds_prefix():
    with tfds.testing.mock_data(num_examples=16):
        ds = load_dataset("cifar10")
        ds2 = load_dataset("tfds:cifar10")
    assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
    assert ds.train.images.dtype == np.uint8 and ds.validation is None
    np.testing.assert_array_equal(ds.train.images, ds2.train.images)


def test_train_mnist_end_to_end_under_mock(tmp_path, capsys):
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=64):
        code = main(["train", "--dataset", "mnist", "--epochs", "1", "--batch-size", "16",
                     "--spec", "conv(4,3) maxpool(2) flatten softmax", "--num-devices", "1",
                     "--validation", "0.25", "--data-dir", str(tmp_path / "tfds"),
                     "--workdir", str(workdir), "--quiet", "--json"])
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta = json.loads((workdir / "meta.json").read_text())
    splits = meta["dataset"]["splits"]
    assert splits["train"] + splits["validation"] == 64 and splits["validation"] >= 10
    assert out["dataset"] == "mnist" and out["test_examples"] == 64
    assert out["steps"] == splits["train"] // 16 and "val_accuracy" in out
    assert meta["dataset"]["image_shape"] == [28, 28, 1]
    assert meta["dataset"]["num_classes"] == 10
    assert meta["augment"] is None  # off by default for digits
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["data_dir"] == str(tmp_path / "tfds")


def test_cifar_like_data_augments_by_default():
    from jaxcnn.run import prepare as prepare_run

    with tfds.testing.mock_data(num_examples=8):
        # 8 images of 10 classes: too few to hold any out for validation.
        run = prepare_run(override(Config(), {"data.dataset": "cifar10", "data.batch_size": 4,
                                              "data.validation_fraction": 0.0,
                                              "train.num_devices": 1}))
    assert run.meta()["augment"] == {"crop_padding": 4, "flip": True}
    # The dataset's metadata sized the model: 32x32x3 input, 10 outputs.
    assert run.meta()["model"]["params"] > 0
    logits = run.model.apply({"params": run.state.params}, np.zeros((1, 32, 32, 3), np.float32))
    assert logits.shape == (1, 10)


def test_mock_data_too_small_to_hold_out_validation():
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(DataError, match=r"data.validation_fraction=0.1 of 8 training images "
                                            r"holds out no validation image"):
            load_dataset("cifar10", validation_fraction=0.1)


# --- really prepared data, read through tfds.data_source (ArrayRecord)


def test_prepared_data_loads_exactly(prepared_dir):
    ds = load_dataset("jaxcnn_tiny_shapes", data_dir=prepared_dir, validation_fraction=0.1)
    assert ds.class_names == ("circle", "square", "star")
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 3
    # The dataset's own validation split is used rather than a carved one.
    assert ds.metadata()["splits"] == {"train": 40, "validation": 12, "test": 10}
    # Record order in ArrayRecord is tfds's shuffled order: compare as sets of examples.
    want = {(img.tobytes(), i % 3) for i, img in enumerate(_tiny_images(40, seed=len("train")))}
    got = {(img[..., 0].tobytes(), int(y)) for img, y in zip(ds.train.images, ds.train.labels)}
    assert got == want


def test_prepared_split_syntax(prepared_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", prepared_dir)
    assert default_data_dir() == prepared_dir
    ds = load_dataset("jaxcnn_tiny_shapes",
                      splits={"train": "train[:50%]", "validation": "train[50%:]",
                              "test": "test[:4]"})
    assert ds.metadata()["splits"] == {"train": 20, "validation": 20, "test": 4}
    with pytest.raises(DataError, match="cannot read split 'dev'.*splits here: test, train, "
                                        "validation"):
        load_tfds("jaxcnn_tiny_shapes", splits={"test": "dev"})


def test_data_list_and_prepare_cli(prepared_dir, capsys):
    found = list_prepared(prepared_dir)
    assert [(d["name"], d["version"], d["readable"]) for d in found] == [
        ("jaxcnn_tiny_shapes", "1.0.0", True)]
    assert found[0]["splits"] == {"train": 40, "validation": 12, "test": 10}
    assert main(["data", "list", "--data-dir", prepared_dir]) == 0
    assert "jaxcnn_tiny_shapes" in capsys.readouterr().out
    # Preparing again finds the data and does not rebuild it.
    assert main(["data", "prepare", "jaxcnn_tiny_shapes", "--data-dir", prepared_dir,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["splits"]["test"] == 10


def test_features_detection_errors():
    with pytest.raises(DataError, match="needs one Image and one ClassLabel feature.*text \\(Text\\)"):
        detect_features(tfds.builder("jaxcnn_text_only").info, "jaxcnn_text_only")
    f = detect_features(tfds.builder("jaxcnn_tiny_shapes").info)
    assert (f.image, f.label) == ("picture", "kind")


# --- offline behaviour and errors


def test_not_prepared_fails_fast_with_the_commands(tmp_path, capsys):
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "'mnist' is not prepared in " + str(tmp_path) in msg
    assert f"jaxcnn data prepare mnist --data-dir {tmp_path}" in msg
    assert f"--data-dir {tmp_path}" in msg and f"TFDS_DATA_DIR={tmp_path}" in msg
    assert os.listdir(tmp_path) == [] or "downloads" not in os.listdir(tmp_path)
    assert main(["train", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path)]) == 2
    assert "jaxcnn data prepare fashion_mnist" in capsys.readouterr().err


def test_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'no_such_set_qq'"):
        load_dataset("no_such_set_qq")
    with pytest.raises(DataError, match="unknown dataset 'no_such_set_qq'"):
        load_dataset("tfds:no_such_set_qq")


def _has_tensorflow():
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


@pytest.mark.skipif(_has_tensorflow(), reason="needs an environment without TensorFlow")
def test_prepare_that_needs_tensorflow_names_the_extra(tmp_path):
    with pytest.raises(DataError, match='needs TensorFlow.*tensorflow-datasets\\[tensorflow\\]'):
        prepare_tfds("jaxcnn_needs_tf", str(tmp_path))


def test_import_jaxcnn_does_not_import_tfds():
    code = "import sys, jaxcnn; print('tensorflow_datasets' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.stdout.strip() == "False", p.stderr


# --- normalisation statistics: computed on train, stored with the run, reused


def test_normalisation_stats_stored_and_reused(tmp_path):
    from jaxcnn.run import prepare as prepare_run, train_and_evaluate
    from jaxcnn.training import predict

    cfg = override(Config(), {"data.dataset": "synthetic:8x8x3:3:96", "train.epochs": 1,
                              "data.batch_size": 16, "data.validation_fraction": 0.25,
                              "model.name": "conv(4,3) flatten softmax",
                              "train.num_devices": 1})
    run = prepare_run(cfg)
    ds = run.dataset
    assert run.preprocess == Preprocess.fit(ds.train.images)
    both = np.concatenate([ds.train.images, ds.validation.images])
    assert run.preprocess != Preprocess.fit(both)  # validation data not used
    train_and_evaluate(cfg, str(tmp_path / "run"), progress=False)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    stored = Preprocess.from_dict(meta["preprocess"])
    assert stored == run.preprocess
    probs = predict(run.state, ds.test.images[:5], stored)
    np.testing.assert_array_equal(probs, predict(run.state, ds.test.images[:5], run.preprocess))


def test_prepare_fails_fast_when_the_download_host_is_unreachable(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="download host is unreachable.*jaxcnn-test.invalid.*"
                                        "jaxcnn data prepare jaxcnn_unreachable"):
        prepare_tfds("jaxcnn_unreachable", str(tmp_path))
    assert time.perf_counter() - t0 < 30


def test_cli_data_flags_reach_the_config(tmp_path):
    from jaxcnn.cli import build_parser, config_from_args

    def cfg(*extra):
        return config_from_args(build_parser().parse_args(["train", *extra])).data

    assert cfg().augment is None and cfg().data_dir is None
    assert cfg("--augment", "on").augment is True
    assert cfg("--augment", "off").augment is False
    assert cfg("--augment", "off", "--augment", "auto").augment is None
    assert cfg("--data-dir", str(tmp_path)).data_dir == str(tmp_path)


def test_images_decoded_on_demand_train_like_images_in_memory(prepared_dir, tmp_path):
    import jax
    import optax

    from jaxcnn.models import build_model
    from jaxcnn.training import create_train_state, evaluate, fit, split_keys

    eager = load_tfds("jaxcnn_tiny_shapes", data_dir=prepared_dir, in_memory=True,
                      splits={"validation": "validation"})
    lazy = load_tfds("jaxcnn_tiny_shapes", data_dir=prepared_dir, in_memory=False,
                     splits={"validation": "validation"})
    assert isinstance(lazy.train.images, SourceImages)
    assert lazy.metadata() == eager.metadata()
    np.testing.assert_array_equal(np.asarray(lazy.test.images), eager.test.images)
    np.testing.assert_array_equal(lazy.train.labels, eager.train.labels)
    pre = Preprocess.fit(lazy.train.images)
    assert pre == Preprocess.fit(eager.train.images)
    keys = split_keys(0)

    def train(ds, pipeline):
        state = create_train_state(build_model("conv(4,3) flatten softmax", 3), (8, 8, 1),
                                   optax.adam(1e-2), keys.init)
        return fit(state, ds, keys=keys, epochs=2, batch_size=8, preprocess=pre,
                   progress=False, pipeline=pipeline)

    a, b, c = train(eager, "device"), train(lazy, "stream"), train(lazy, "device")
    for other in (b, c):
        assert all(bool((x == y).all()) for x, y in
                   zip(jax.tree.leaves(a.state.params), jax.tree.leaves(other.state.params)))
    assert evaluate(b.state, lazy.test, pre, batch_size=4) == evaluate(a.state, eager.test, pre,
                                                                        batch_size=4)
    prepare_tfds("jaxcnn_tiny_no_val", str(tmp_path))
    carved = [load_tfds("jaxcnn_tiny_no_val", data_dir=str(tmp_path), in_memory=m,
                        validation_fraction=0.25) for m in (True, False)]
    assert carved[0].metadata()["splits"] == {"train": 30, "validation": 10, "test": 10}
    assert carved[1].metadata() == carved[0].metadata()
    assert isinstance(carved[1].validation.images, SourceImages)
    np.testing.assert_array_equal(np.asarray(carved[1].validation.images),
                                  carved[0].validation.images)


def test_embedded_digits_are_scikit_learns_digits_and_split():
    # jaxcnn/data/digits.npz is scikit-learn's copy of the UCI digits, split as the
    # embedded dataset documents; rebuild both from scikit-learn and compare exactly.
    sk_datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    from jaxcnn.data import load_digits

    bunch = sk_datasets.load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0)
    ds = load_digits()
    np.testing.assert_array_equal(ds.train.images, x_train)
    np.testing.assert_array_equal(ds.test.images, x_test)
    np.testing.assert_array_equal(ds.train.labels, y_train)
    np.testing.assert_array_equal(ds.test.labels, y_test)


def test_loading_the_default_dataset_imports_no_heavy_package():
    # `jaxcnn train` starts in seconds: the embedded digits need neither scikit-learn
    # nor TensorFlow.
    code = ("import sys; from jaxcnn.data import load_dataset; load_dataset('digits'); "
            "print(sorted(m for m in ('sklearn', 'tensorflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
