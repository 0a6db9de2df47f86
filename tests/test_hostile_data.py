"""Hostile and careless data files: every one ends in a DataError, within bounded memory.

The cases that would allocate gigabytes if a check regressed (gzip bombs, headers
declaring terabytes, huge labels, huge synthetic specs) run together in one
child process under ``RLIMIT_AS`` (:data:`LIMIT`), so a regression fails the
test instead of exhausting the machine. The rest run in-process on small
generated files.
"""

import gzip
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from jaxcnn.cli import main
from jaxcnn.data import (Preprocess, from_arrays, idx_header, infer_num_classes, load_dataset,
                         load_idx, load_npz, load_synthetic, read_idx, read_npy, write_idx)
from jaxcnn.data import _core
from jaxcnn.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1024**3
# Address space of the child: importing jaxcnn.data takes about 0.5 GiB (JAX is
# imported, no backend started); each bomb below would take more than this. The
# child's data memory budget is 2 GiB whatever the machine, so the refusals do
# not depend on how much memory the test machine has.
LIMIT = 3 * GiB


def _rng(seed=0):
    return np.random.default_rng(seed)


def _idx_dir(d, n_train=20, n_test=8, labels=None, label_dtype=np.uint8, gz=False):
    """An MNIST-format directory of 6x5 images, labels 0..3 unless given."""
    ext = ".gz" if gz else ""
    y_train = (np.arange(n_train) % 4 if labels is None else labels).astype(label_dtype)
    write_idx(os.path.join(d, f"train-images-idx3-ubyte{ext}"),
              _rng(1).integers(0, 256, (n_train, 6, 5), dtype=np.uint8))
    write_idx(os.path.join(d, f"train-labels-idx1-ubyte{ext}"), y_train)
    write_idx(os.path.join(d, f"t10k-images-idx3-ubyte{ext}"),
              _rng(2).integers(0, 256, (n_test, 6, 5), dtype=np.uint8))
    write_idx(os.path.join(d, f"t10k-labels-idx1-ubyte{ext}"),
              (np.arange(n_test) % 4).astype(label_dtype))
    return d


def _idx_header_bytes(code, dims):
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, ">u4").tobytes()


def _npz(path, **arrays):
    base = dict(x_train=_rng().integers(0, 256, (30, 7, 7), dtype=np.uint8),
                y_train=np.arange(30) % 3,
                x_test=_rng(1).integers(0, 256, (9, 7, 7), dtype=np.uint8),
                y_test=np.arange(9) % 3)
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def _npy_bytes(shape, descr="|u1", data=b""):
    """An .npy file whose header declares ``shape`` but which holds only ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


# ---------------------------------------------------------------------------
# Memory cases, in one child process under RLIMIT_AS

_CHILD = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from jaxcnn.errors import JaxcnnError
from jaxcnn.data import load_dataset, read_idx, read_npy
out = {}
for name, fn, arg in json.loads(sys.argv[2]):
    try:
        {"dataset": load_dataset, "read_idx": read_idx, "read_npy": read_npy}[fn](arg)
        out[name] = ["ok", ""]
    except JaxcnnError as e:
        out[name] = [type(e).__name__, str(e)]
    except BaseException as e:  # a regression: MemoryError, ValueError, ...
        out[name] = ["other:" + type(e).__name__, str(e)[:300]]
print(json.dumps(out))
"""


def _gzip_bomb(path, header, total):
    """A gzip file of ``header`` followed by ``total`` zero bytes, a few MB on disk.

    Made of identical gzip members (readers concatenate them), so it is built in
    well under a second.
    """
    block = 8 * 1024**2
    zeros = gzip.compress(bytes(block), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(header, mtime=0))
        for _ in range(-(-total // block)):
            f.write(zeros)
    return str(path)


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    """Runs every memory case in one child under RLIMIT_AS; returns {case: [kind, message]}."""
    if not hasattr(os, "fork") or sys.platform != "linux":
        pytest.skip("RLIMIT_AS is enforced on Linux only")
    d = tmp_path_factory.mktemp("hostile")
    cases = []

    # 1. gzip bomb: the header declares 10 small images, the data is 3.5 GB of zeros.
    bomb = d / "bomb"
    bomb.mkdir()
    _idx_dir(str(bomb), gz=True)
    _gzip_bomb(bomb / "train-images-idx3-ubyte.gz", _idx_header_bytes(0x08, (20, 6, 5)),
               int(3.5 * GiB))
    cases.append(("gzip_bomb", "dataset", f"idx:{bomb}"))
    # 1b. a gzip file whose header declares a terabyte (more than it can decompress to).
    tera = _gzip_bomb(d / "tera-idx3-ubyte.gz", _idx_header_bytes(0x08, (2**20, 2**10, 2**10)),
                      0)
    cases.append(("gzip_tera", "read_idx", tera))
    # 2. dimensions whose product overflows int64, raw and gzip.
    raw = d / "overflow-idx3-ubyte"
    raw.write_bytes(_idx_header_bytes(0x0C, (2**32 - 1,) * 3) + bytes(64))
    cases.append(("idx_overflow_raw", "read_idx", str(raw)))
    cases.append(("idx_overflow_gz", "read_idx", _gzip_bomb(
        d / "overflow-idx3-ubyte.gz", _idx_header_bytes(0x0E, (2**32 - 1,) * 3), 0)))
    # 3. .npy and .npz headers declaring terabytes.
    npy = d / "tera.npy"
    npy.write_bytes(_npy_bytes((2**20, 2**20, 1), data=bytes(100)))
    cases.append(("npy_tera", "read_npy", str(npy)))
    npz = _zip(d / "tera.npz", {"x_train.npy": _npy_bytes((2**20, 2**20, 1), data=bytes(100)),
                                "y_train.npy": _npy_bytes((2**20,), "<i8")})
    cases.append(("npz_tera", "dataset", f"npz:{npz}"))
    # 4. synthetic specs asking for hundreds of GB.
    cases.append(("synthetic_images", "dataset", "synthetic:100000x100000x3:10"))
    cases.append(("synthetic_classes", "dataset", "synthetic:8x8x1:1000000000"))
    cases.append(("synthetic_count", "dataset", "synthetic:8x8x1:10:1000000000"))
    # 5. one huge label sets the class count: int32 IDX labels, an npz label of 2**40.
    big = d / "biglabel"
    big.mkdir()
    labels = np.arange(20) % 4
    labels[5] = 2**31 - 1
    _idx_dir(str(big), labels=labels, label_dtype=np.int32)
    cases.append(("idx_label_2e31", "dataset", f"idx:{big}"))
    y = np.arange(30) % 3
    y[7] = 2**40
    cases.append(("npz_label_2e40", "dataset", "npz:" + _npz(d / "biglabel.npz", y_train=y)))
    # a mapping file that declares a class id of two billion.
    mapped = d / "mapped"
    mapped.mkdir()
    for split, n in (("train", 20), ("test", 8)):
        write_idx(str(mapped / f"emnist-x-{split}-images-idx3-ubyte"),
                  np.zeros((n, 6, 5), np.uint8))
        write_idx(str(mapped / f"emnist-x-{split}-labels-idx1-ubyte"),
                  (np.arange(n) % 4).astype(np.uint8))
    (mapped / "emnist-x-mapping.txt").write_text("0 48\n1 49\n2000000000 50\n")
    cases.append(("mapping_2e9", "dataset", f"idx:{mapped}"))
    # a good file still loads under the limit.
    good = d / "good"
    good.mkdir()
    cases.append(("good_idx", "dataset", f"idx:{_idx_dir(str(good), gz=True)}"))

    out = subprocess.run([sys.executable, "-c", _CHILD, str(LIMIT), json.dumps(cases)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                                  JAXCNN_DATA_MEMORY_BUDGET=str(2 * GiB)))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case,pattern", [
    ("gzip_bomb", r"train-images-idx3-ubyte.gz is longer than its header says: the header "
                  r"declares shape \(20, 6, 5\) \(600 data bytes\) but the file has more than 600"),
    ("gzip_tera", r"declares shape \(1048576, 1024, 1024\) \(1,099,511,627,776 data bytes\) but a "
                  r"gzip file of [\d,]+ bytes decompresses to at most"),
    ("idx_overflow_raw", r"truncated: the header declares shape \(4294967295, 4294967295, "
                         r"4294967295\) \([\d,]+ data bytes\) but the file has 64"),
    ("idx_overflow_gz", r"decompresses to at most"),
    ("npy_tera", r"tera.npy is truncated or damaged: its header declares shape "
                 r"\(1048576, 1048576, 1\) of uint8 \(1,099,511,627,776 data bytes\) but the file "
                 r"holds 100"),
    ("npz_tera", r"tera.npz \(x_train\) is truncated or damaged"),
    ("synthetic_images", r"'synthetic:100000x100000x3:10' \(2,560 images of 100000x100000x3\) "
                         r"would take [\d,]+ bytes \([\d,.]+ GiB\) of host memory, more than the "
                         r"data memory budget of [\d,]+ bytes"),
    ("synthetic_count", r"'synthetic:8x8x1:10:1000000000' \(1,250,000,000 images of 8x8x1\) "
                        r"would take 95,000,000,000 bytes .*JAXCNN_DATA_MEMORY_BUDGET"),
    ("synthetic_classes", r"'synthetic:8x8x1:1000000000' asks for 1,000,000,000 classes; at most "
                          r"100,000"),
    ("idx_label_2e31", r"train-labels-idx1-ubyte must be class ids below 100,000 .*found values "
                       r"from 0 to 2147483647 \(label 2147483647 at index 5\)"),
    ("npz_label_2e40", r"biglabel.npz \(y_train\) must be class ids below 100,000 .*"
                       r"\(label 1099511627776 at index 7\)"),
    ("mapping_2e9", r"emnist-x-mapping.txt, line 3: maps class 2000000000"),
])
def test_memory_cases_refused_within_the_limit(bounded, case, pattern):
    kind, message = bounded[case]
    assert kind == "DataError", (kind, message)
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_good_files_still_load_within_the_limit(bounded):
    assert bounded["good_idx"] == ["ok", ""]


# ---------------------------------------------------------------------------
# IDX files


def test_idx_streaming_read_is_exact_for_every_dtype(tmp_path):
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        a = (np.arange(60).reshape(3, 4, 5) - 7).astype(dtype)
        for ext in ("", ".gz"):
            p = str(tmp_path / f"a-{np.dtype(dtype).name}{ext}")
            write_idx(p, a)
            b = read_idx(p)
            assert b.dtype == np.dtype(dtype) and b.flags.writeable
            np.testing.assert_array_equal(a, b)
            assert idx_header(p) == ((3, 4, 5), np.dtype(dtype))


def test_idx_gzip_longer_than_header_and_corrupt_stream(tmp_path):
    p = tmp_path / "x-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(_idx_header_bytes(0x08, (3,)) + bytes(10)))
    with pytest.raises(DataError, match=r"longer than its header says.*\(3 data bytes\) but the "
                                        r"file has more than 3 \(read no further\)"):
        read_idx(str(p))
    good = gzip.compress(_idx_header_bytes(0x08, (4000,)) + _rng().bytes(4000), mtime=0)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # damages the deflate stream or its CRC
    p.write_bytes(bytes(bad))
    with pytest.raises(DataError, match="cannot read IDX file .*damaged"):
        read_idx(str(p))


def test_idx_header_declaring_huge_shape_against_budget(tmp_path, monkeypatch):
    d = _idx_dir(str(tmp_path))
    monkeypatch.setattr(_core, "MEMORY_BUDGET_BYTES", 500)
    with pytest.raises(DataError, match=r"the IDX dataset .* would take [\d,]+ bytes .*more than "
                                        r"the data memory budget of 500 bytes"):
        load_idx(d)
    with pytest.raises(DataError, match=r"shape \(20, 6, 5\), uint8\) would take 600 bytes"):
        read_idx(os.path.join(d, "train-images-idx3-ubyte"))


def test_idx_zero_images(tmp_path):
    d = str(tmp_path)
    _idx_dir(d)
    write_idx(os.path.join(d, "t10k-images-idx3-ubyte"), np.zeros((0, 6, 5), np.uint8))
    write_idx(os.path.join(d, "t10k-labels-idx1-ubyte"), np.zeros(0, np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte holds no images \(its header "
                                        r"declares shape \(0, 6, 5\)\)"):
        load_idx(d)


def test_idx_labels_checked_with_file_and_index(tmp_path):
    d = str(tmp_path)
    labels = np.arange(20) % 10
    labels[13] = 1000
    _idx_dir(d, labels=labels, label_dtype=np.int16)
    with pytest.raises(DataError, match=r"label 1000 at index 13 of .*train-labels-idx1-ubyte "
                                        r"would make 1,001 classes, but only 11 distinct labels "
                                        r"occur \(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1000\)"):
        load_idx(d)
    write_idx(os.path.join(d, "train-labels-idx1-ubyte"),
              np.r_[np.arange(19) % 4, np.nan].astype(np.float32))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte must be integer class ids; "
                                        r"label nan at index 19 is not a number"):
        load_idx(d)
    write_idx(os.path.join(d, "train-labels-idx1-ubyte"), (np.arange(20) % 4 - 1).astype(np.int8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte must be class ids >= 0; found "
                                        r"values from -1 to 2 \(label -1 at index 0\)"):
        load_idx(d)


def test_idx_labels_checked_against_the_mapping(tmp_path):
    for split, n in (("train", 20), ("test", 8)):
        write_idx(str(tmp_path / f"emnist-x-{split}-images-idx3-ubyte"),
                  np.zeros((n, 6, 5), np.uint8))
        write_idx(str(tmp_path / f"emnist-x-{split}-labels-idx1-ubyte"),
                  (np.arange(n) % 4).astype(np.uint8))
    (tmp_path / "emnist-x-mapping.txt").write_text("0 48\n1 49\n2 50\n")
    with pytest.raises(DataError, match=r"emnist-x-train-labels-idx1-ubyte must lie in \[0, 3\); "
                                        r"found values from 0 to 3 \(label 3 at index 3\)"):
        load_idx(str(tmp_path))
    (tmp_path / "emnist-x-mapping.txt").write_text("0 48\n1 49\n2 50\n3 51\n9 1114112\n")
    with pytest.raises(DataError, match=r"line 5: maps class 9 to character code 1114112"):
        load_idx(str(tmp_path))


def test_idx_missing_directory_is_named(tmp_path, capsys):
    missing = tmp_path / "mnist"
    with pytest.raises(DataError, match=r"idx dataset directory .*mnist does not exist"):
        load_dataset(f"idx:{missing}")
    _idx_dir(str(tmp_path))
    with pytest.raises(DataError, match=r"is a file, not a directory; give the directory"):
        load_dataset(f"idx:{tmp_path / 'train-images-idx3-ubyte'}")
    with pytest.raises(DataError, match=r"no idx dataset directory given"):
        load_dataset("idx:")
    code = main(["train", "--dataset", f"idx:{missing}", "--epochs", "1",
                 "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "jaxcnn: error: idx dataset directory" in err
    assert "does not exist" in err and "Traceback" not in err


def test_good_files_load_as_before(tmp_path):
    # EMNIST-like: 62 classes, int32 labels, gzip, no mapping file
    d = tmp_path / "byclass"
    d.mkdir()
    _idx_dir(str(d), n_train=124, n_test=62, labels=np.arange(124) % 62, label_dtype=np.int32,
             gz=True)
    write_idx(str(d / "t10k-labels-idx1-ubyte.gz"), (np.arange(62) % 62).astype(np.int32))
    ds = load_idx(str(d))
    assert ds.num_classes == 62 and ds.train.labels.dtype == np.int32
    # a compressed npz with one unsplit x/y pair and float images
    p = str(tmp_path / "c.npz")
    rng = _rng()
    np.savez_compressed(p, x=rng.random((100, 5, 5, 3)).astype(np.float32),
                        y=np.arange(100) % 100 // 10)
    ds = load_npz(p, validation_fraction=0.25)
    assert ds.num_classes == 10 and (len(ds.train), len(ds.validation), len(ds.test)) == (60, 20, 20)


# ---------------------------------------------------------------------------
# .npz and .npy files


@pytest.mark.parametrize("value,pattern", [
    (np.array([["abc"] * 7] * 7), r"\(x_train\) has dtype <U3 \(strings\); images and "
                                  r"labels must be integer or floating-point arrays"),
    (np.zeros((7, 7), np.complex64), r"has dtype complex64 \(complex numbers\)"),
    (np.zeros((7, 7), bool), r"has dtype bool \(booleans\)"),
    (np.zeros((7, 7), "datetime64[s]"), r"has dtype datetime64\[s\] \(dates\)"),
])
def test_npz_non_numeric_arrays_name_the_dtype(tmp_path, value, pattern):
    p = _npz(tmp_path / "bad.npz", x_train=np.stack([value] * 30))
    with pytest.raises(DataError, match=pattern):
        load_npz(p)


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    p = _npz(tmp_path / "obj.npz", y_train=np.array([{"a": 1}] * 30, dtype=object))
    with pytest.raises(DataError, match=r"\(y_train\) holds Python objects \(pickled arrays, "
                                        r"dtype object\); jaxcnn never unpickles"):
        load_npz(p)
    p2 = _zip(tmp_path / "obj2.npz", {"x_train.npy": _npy_bytes((3, 2, 2), "|O", b"\x80\x04"),
                                      "y_train.npy": _npy_bytes((3,), "<i8", bytes(24))})
    with pytest.raises(DataError, match=r"\(x_train\) holds Python objects"):
        load_npz(p2)


def test_npz_labels_with_value_and_index(tmp_path):
    y = np.arange(30) % 10
    y[12] = 1000
    with pytest.raises(DataError, match=r"label 1000 at index 12 of .*l.npz \(y_train\) would make "
                                        r"1,001 classes"):
        load_npz(_npz(tmp_path / "l.npz", y_train=y, y_test=np.arange(9) % 10))
    y = (np.arange(30) % 3).astype(np.float64)
    y[4] = np.nan
    with pytest.raises(DataError, match=r"\(y_train\) must be integer class ids; label nan at "
                                        r"index 4 is not a number"):
        load_npz(_npz(tmp_path / "l.npz", y_train=y))
    y[4] = 1.5
    with pytest.raises(DataError, match=r"label 1.5 at index 4 is not a whole number"):
        load_npz(_npz(tmp_path / "l.npz", y_train=y))
    y[4] = -2
    with pytest.raises(DataError, match=r"\(y_train\) must be class ids >= 0; found values from "
                                        r"-2 to 2 \(label -2 at index 4\)"):
        load_npz(_npz(tmp_path / "l.npz", y_train=y))
    y[4] = 1e300
    with pytest.raises(DataError, match=r"found values from 0 to 1e\+300 \(label 1e\+300 at "
                                        r"index 4\)"):
        load_npz(_npz(tmp_path / "l.npz", y_train=y))
    # declared by class_names: a label beyond them is refused, not added as a class
    y = np.arange(30) % 3
    y[29] = 3
    with pytest.raises(DataError, match=r"\(y_train\) must lie in \[0, 3\); found values from 0 "
                                        r"to 3 \(label 3 at index 29\)"):
        load_npz(_npz(tmp_path / "l.npz", y_train=y, class_names=np.array(["a", "b", "c"])))
    # whole-number float labels still load
    ds = load_npz(_npz(tmp_path / "l.npz", y_train=(np.arange(30) % 3).astype(np.float32)))
    assert ds.num_classes == 3 and ds.train.labels.dtype == np.int32


def test_npz_zero_images_and_renamed_files(tmp_path):
    p = _npz(tmp_path / "z.npz", x_test=np.zeros((0, 7, 7), np.uint8), y_test=np.zeros(0))
    with pytest.raises(DataError, match=r"z.npz \(x_test\) holds no images \(shape \(0, 7, 7\)\)"):
        load_npz(p)
    npy = tmp_path / "data.npz"
    np.save(str(npy) + ".npy", np.zeros((3, 4)))
    os.replace(str(npy) + ".npy", npy)
    with pytest.raises(DataError, match=r"is a single .npy array, not an .npz archive"):
        load_npz(str(npy))
    with pytest.raises(DataError, match=r"is a directory; give the path of a .npz file"):
        load_npz(str(tmp_path))
    renamed = tmp_path / "batch.npy"
    renamed.write_bytes(open(_npz(tmp_path / "a.npz"), "rb").read())
    with pytest.raises(DataError, match=r"batch.npy is an .npz archive \(several named arrays\), "
                                        r"not a .npy array"):
        read_npy(str(renamed))


def test_npz_member_lying_about_its_size(tmp_path):
    p = _zip(tmp_path / "lie.npz", {"x_train.npy": _npy_bytes((30, 7, 7), data=bytes(10)),
                                    "y_train.npy": _npy_bytes((30,), "<i8", bytes(240))})
    with pytest.raises(DataError, match=r"\(x_train\) is truncated or damaged: its header declares "
                                        r"shape \(30, 7, 7\) of uint8 \(1,470 data bytes\) but the "
                                        r"file holds 10"):
        load_npz(p)
    p = _zip(tmp_path / "lie.npz", {"x_train.npy": b"\x93NUMPY\x01\x00\xff\xff{'descr': ",
                                    "y_train.npy": _npy_bytes((30,), "<i8", bytes(240))})
    with pytest.raises(DataError, match=r"\(x_train\) is not a readable .npy array"):
        load_npz(p)


def test_npz_against_the_memory_budget(tmp_path, monkeypatch):
    p = _npz(tmp_path / "m.npz")
    monkeypatch.setattr(_core, "MEMORY_BUDGET_BYTES", 1000)
    with pytest.raises(DataError, match=r"the arrays of .*m.npz would take [\d,]+ bytes"):
        load_npz(p)


def test_read_npy(tmp_path):
    p = str(tmp_path / "x.npy")
    for a in (np.arange(12, dtype=np.uint8).reshape(3, 4), np.ones((2, 2), ">f8")):
        np.save(p, a)
        np.testing.assert_array_equal(read_npy(p), a)
    for a, pattern in ((np.array(["a"]), r"dtype <U1 \(strings\); arrays must hold integers"),
                       (np.array([1j]), r"dtype complex128 \(complex numbers\)"),
                       (np.array([None]), r"holds Python objects .*np.save\(path, array\)")):
        np.save(p, a, allow_pickle=True)
        with pytest.raises(DataError, match=pattern):
            read_npy(p)
    with open(p, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DataError, match="is not a readable .npy array"):
        read_npy(p)
    with pytest.raises(DataError, match="no such file"):
        read_npy(str(tmp_path / "missing.npy"))


# ---------------------------------------------------------------------------
# Class counts, empty splits, synthetic specs, the budget itself


@pytest.mark.parametrize("labels,k", [
    (np.arange(62), 62),                      # EMNIST byclass
    (np.arange(100), 100),                    # CIFAR-100
    (np.arange(1, 27), 27),                   # EMNIST letters: 1..26, no 0
    (np.array([0, 1]), 2),
    (np.array([0, 5]), 6),
])
def test_real_label_sets_pass_the_class_count_rule(labels, k):
    assert infer_num_classes((np.repeat(labels, 2), "y")) == k


@pytest.mark.parametrize("labels,pattern", [
    (np.r_[np.arange(10), 1000], r"label 1000 at index 10 of y would make 1,001 classes"),
    (np.array([0, 255] * 5), r"label 255 at index 1 of y would make 256 classes, but only 2 "),
    (np.arange(1000) * 20, r"label 19980 at index 999 of y would make 19,981 classes, but only "
                           r"1,000 distinct labels occur \(0, 20, 40, .*, \.\.\. \(1,000 values\)\)"),
])
def test_stray_labels_are_refused(labels, pattern):
    with pytest.raises(DataError, match=pattern):
        infer_num_classes((labels, "y"))


def test_from_arrays_class_counts():
    x = _rng().random((40, 4, 4))
    y = np.arange(40) % 4
    with pytest.raises(DataError, match="num_classes=1,000,000 is more than the 100,000"):
        from_arrays(x, y, num_classes=10**6)
    with pytest.raises(DataError, match="num_classes must be an integer; got 3.5"):
        from_arrays(x, y, num_classes=3.5)
    ds = from_arrays(x, y, class_names=list("abcdef"))  # declared: 6 classes, 4 present
    assert ds.num_classes == 6 and ds.class_names == tuple("abcdef")
    with pytest.raises(DataError, match=r"y_train must be class ids below 100,000"):
        from_arrays(x, np.r_[y[:-1], 10**12])
    with pytest.raises(DataError, match=r"x_train must be integer or floating-point pixels; got "
                                        r"dtype complex128"):
        from_arrays(x.astype(complex), y)


def test_empty_splits_are_refused_with_the_fix():
    x = _rng().random((8, 4, 4))
    y = np.arange(8) % 4
    with pytest.raises(DataError, match=r"x_train is empty \(0 images"):
        from_arrays(x[:0], y[:0], num_classes=4)
    with pytest.raises(DataError, match=r"data.validation_fraction=0.9 holds out all 8 training "
                                        r"images as validation, leaving none to train on"):
        from_arrays(x, y, x, y, validation_fraction=0.9)
    with pytest.raises(DataError, match=r"data.validation_fraction=0.1 of 8 training images holds "
                                        r"out no validation image.*or set it to 0"):
        from_arrays(x, y, x, y, validation_fraction=0.1)
    with pytest.raises(DataError, match=r"test_fraction=0.2 of 8 training images holds out no "
                                        r"test image"):
        from_arrays(x, y)


def test_synthetic_specs_within_bounds():
    ds = load_synthetic("synthetic:8x8x1:3:40")
    assert ds.num_classes == 3 and len(ds.train) == 40
    with pytest.raises(DataError, match="bad synthetic dataset"):
        load_synthetic("synthetic:8x8x1:1e400")
    with pytest.raises(DataError, match="bad synthetic dataset"):
        load_synthetic("synthetic:8x8x1:3:" + "9" * 5000)


def test_memory_budget_constant_and_override(monkeypatch):
    assert 0 < _core.MEMORY_BUDGET_BYTES <= _core.MEMORY_BUDGET_CAP
    monkeypatch.setenv(_core.MEMORY_BUDGET_ENV, "64e9")
    assert _core._memory_budget() == 64 * 10**9
    monkeypatch.setenv(_core.MEMORY_BUDGET_ENV, "lots")
    assert 0 < _core._memory_budget() <= _core.MEMORY_BUDGET_CAP
    _core.check_memory(_core.MEMORY_BUDGET_BYTES, "exactly the budget")


@pytest.mark.parametrize("d,pattern", [
    ({"scale": 1.0, "mean": [0.0], "std": [0.0]}, r"std=\[0.0\] are not valid"),
    ({"scale": 1.0, "mean": [float("nan")], "std": [1.0]}, r"mean=\[nan\] are not valid"),
    ({"scale": 1.0, "mean": [0.0, 0.0], "std": [1.0]}, r"one mean and one std per channel"),
    ({"scale": -1.0, "mean": [0.0], "std": [1.0]}, r"scale=-1.0 are not valid"),
    ({"scale": "x", "mean": [0.0], "std": [1.0]}, r"they need scale, mean and std numbers"),
    ({"mean": [0.0]}, r"KeyError"),
    ([1, 2], r"TypeError"),
])
def test_stored_preprocessing_is_validated(d, pattern):
    with pytest.raises(DataError, match=pattern):
        Preprocess.from_dict(d)
