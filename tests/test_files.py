"""Local-file datasets: IDX directories and .npz archives, including damaged files."""

import gzip
import os

import numpy as np
import pytest

from jaxcnn.data import find_idx_files, load_dataset, load_idx, load_npz, read_idx, write_idx
from jaxcnn.errors import DataError


def _images(n, h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def _write_mnist_dir(d, n_train=20, n_test=7, prefix="", gz=False, sep="-"):
    names = {}
    ext = ".gz" if gz else ""
    p = f"{prefix}-" if prefix else ""
    data = {
        ("train", "images"): _images(n_train, seed=1),
        ("train", "labels"): (np.arange(n_train) % 4).astype(np.uint8),
        ("t10k", "images"): _images(n_test, seed=2),
        ("t10k", "labels"): (np.arange(n_test) % 4).astype(np.uint8),
    }
    for (split, kind), arr in data.items():
        nd = 3 if kind == "images" else 1
        name = f"{p}{split}-{kind}{sep}idx{nd}-ubyte{ext}"
        write_idx(os.path.join(d, name), arr)
        names[split, kind] = os.path.join(d, name)
    return data, names


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_exactly(tmp_path, gz):
    data, _ = _write_mnist_dir(str(tmp_path), gz=gz)
    ds = load_dataset(f"idx:{tmp_path}")
    assert ds.name == f"idx:{tmp_path}"
    assert ds.image_shape == (6, 5, 1) and ds.num_classes == 4
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train.images[..., 0], data["train", "images"])
    np.testing.assert_array_equal(ds.test.labels, data["t10k", "labels"])
    assert ds.validation is None


def test_idx_validation_fraction_and_dot_names(tmp_path):
    _write_mnist_dir(str(tmp_path), n_train=40, sep=".")
    ds = load_dataset(f"idx:{tmp_path}", validation_fraction=0.2)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (32, 8, 7)


def test_idx_emnist_prefix_transposes_and_reads_mapping(tmp_path):
    data, _ = _write_mnist_dir(str(tmp_path), prefix="emnist-digits", gz=True)
    _write_mnist_dir(str(tmp_path), prefix="emnist-letters", gz=True)
    with open(tmp_path / "emnist-digits-mapping.txt", "w") as f:
        f.write("".join(f"{i} {ord('a') + i}\n" for i in range(4)))
    with pytest.raises(DataError, match="several prefixes.*emnist-digits.*emnist-letters"):
        load_idx(str(tmp_path))
    ds = load_idx(str(tmp_path / "emnist-digits"))
    assert ds.image_shape == (5, 6, 1)  # stored transposed, turned upright
    np.testing.assert_array_equal(ds.train.images[..., 0], data["train", "images"].transpose(0, 2, 1))
    assert ds.class_names == ("a", "b", "c", "d")
    with pytest.raises(DataError, match="no IDX files with prefix 'emnist-mnist'"):
        load_idx(str(tmp_path / "emnist-mnist"))


def test_idx_raw_file_wins_over_gz(tmp_path):
    _write_mnist_dir(str(tmp_path))
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), _images(3))
    _, files = find_idx_files(str(tmp_path))
    assert files["train", "images"].endswith("train-images-idx3-ubyte")


def test_idx_bad_magic(tmp_path):
    _, names = _write_mnist_dir(str(tmp_path))
    with open(names["train", "images"], "wb") as f:
        f.write(b"<html>not found</html>")
    with pytest.raises(DataError, match="not an IDX file.*bad magic number 3c68746d"):
        load_idx(str(tmp_path))


def test_idx_truncated_data_and_header(tmp_path):
    _, names = _write_mnist_dir(str(tmp_path))
    raw = open(names["train", "images"], "rb").read()
    with open(names["train", "images"], "wb") as f:
        f.write(raw[:-7])
    with pytest.raises(DataError, match="truncated.*shape \\(20, 6, 5\\).*600 data bytes.*593"):
        load_idx(str(tmp_path))
    with open(names["train", "images"], "wb") as f:
        f.write(raw[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        load_idx(str(tmp_path))
    with open(names["train", "images"], "wb") as f:
        f.write(raw + b"\0")
    with pytest.raises(DataError, match="longer than its header says"):
        load_idx(str(tmp_path))


def test_idx_truncated_gzip(tmp_path):
    _, names = _write_mnist_dir(str(tmp_path), gz=True)
    raw = open(names["t10k", "labels"], "rb").read()
    with open(names["t10k", "labels"], "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read IDX file .*t10k-labels"):
        load_idx(str(tmp_path))


def test_idx_count_mismatch(tmp_path):
    _, names = _write_mnist_dir(str(tmp_path))
    write_idx(names["train", "labels"], np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        load_idx(str(tmp_path))


def test_idx_wrong_rank_and_missing_files(tmp_path):
    _, names = _write_mnist_dir(str(tmp_path))
    write_idx(names["train", "images"].replace("idx3", "idx3"), _images(20)[:, :, :, None])
    with pytest.raises(DataError, match="image files hold \\(N, H, W\\)"):
        load_idx(str(tmp_path))
    os.remove(names["train", "images"])
    with pytest.raises(DataError, match="IDX files missing .*train-images"):
        load_idx(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"idx:{tmp_path / 'nope' / 'deeper'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no IDX files in"):
        load_idx(str(empty))


def test_idx_roundtrip_dtypes(tmp_path):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
        p = str(tmp_path / f"a-{np.dtype(dtype).name}.idx")
        write_idx(p, a)
        b = read_idx(p)
        assert b.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="IDX cannot store"):
        write_idx(str(tmp_path / "x"), np.zeros(3, np.int64))


def _keras_npz(path, **extra):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (30, 7, 7), dtype=np.uint8),
                  y_train=np.arange(30) % 3,
                  x_test=rng.integers(0, 256, (9, 7, 7), dtype=np.uint8),
                  y_test=np.arange(9) % 3)
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_npz_keras_layout(tmp_path):
    p = str(tmp_path / "mnist.npz")
    arrays = _keras_npz(p)
    ds = load_dataset(f"npz:{p}", validation_fraction=0.2)
    assert ds.name == f"npz:{p}"
    assert ds.image_shape == (7, 7, 1) and ds.num_classes == 3
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (24, 6, 9)
    np.testing.assert_array_equal(ds.test.images[..., 0], arrays["x_test"])


def test_npz_other_key_names(tmp_path):
    rng = np.random.default_rng(1)
    p = str(tmp_path / "alt.npz")
    np.savez(p, train_images=rng.random((20, 4, 4, 3)).astype(np.float32),
             train_labels=np.arange(20) % 2, test_images=rng.random((6, 4, 4, 3)),
             test_labels=np.arange(6) % 2, x_val=rng.random((5, 4, 4, 3)), y_val=np.arange(5) % 2,
             class_names=np.array(["cat", "dog"]))
    ds = load_npz(p, validation_fraction=0.5)  # the file's own validation split wins
    assert ds.image_shape == (4, 4, 3) and ds.class_names == ("cat", "dog")
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (20, 5, 6)
    assert ds.train.images.dtype == np.float32 and ds.validation.images.dtype == np.float32

    p2 = str(tmp_path / "single.npz")
    np.savez(p2, x=rng.integers(0, 256, (50, 5, 5), dtype=np.uint8), y=np.arange(50) % 5)
    ds = load_npz(p2)
    assert (len(ds.train), len(ds.test)) == (40, 10)


def test_npz_malformed(tmp_path):
    p = str(tmp_path / "bad.npz")
    np.savez(p, images_of_cats=np.zeros((3, 2, 2)))
    with pytest.raises(DataError, match="no training arrays.*accepted key pairs: x_train/y_train"):
        load_npz(p)
    _keras_npz(p, y_train=np.arange(29) % 3)
    with pytest.raises(DataError, match="train split has 30 images but 29 labels"):
        load_npz(p)
    _keras_npz(p)
    raw = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="damaged"):
        load_npz(p)
    with open(p, "wb") as f:
        f.write(gzip.compress(b"hello"))
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_npz(p)
    np.savez(p, x_train=np.array([{"a": 1}] * 3, dtype=object), y_train=np.zeros(3))
    with pytest.raises(DataError, match="Python objects"):
        load_npz(p)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_file_datasets_refuse_split_names(tmp_path):
    p = str(tmp_path / "mnist.npz")
    _keras_npz(p)
    with pytest.raises(DataError, match="fixed splits.*data.train_split=train\\[:50%\\]"):
        load_dataset(f"npz:{p}", splits={"train": "train[:50%]"})
