"""`jaxcnn predict` on hostile and careless inputs (issue 15, "Images").

Every bad file ends in one ``jaxcnn: error:`` line naming the file, exit 2:
images are decoded as PNG or JPEG only (whatever the suffix), within a pixel
limit, and ``.npy`` arrays are checked (header, size, dtype, values) before
they are used. Good inputs give the same batch as before.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from jaxcnn.cli import EXIT_BAD_INPUT, main
from jaxcnn.errors import DataError
from jaxcnn.inference import MAX_IMAGE_PIXELS, read_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)  # the digits images the run below is trained on (float32 in [0, 1])


@pytest.fixture
def run_dir(tiny_digits_run):
    """A tiny trained run on the digits (float images), with checkpoints (conftest.py's ``tiny_digits_run``)"""
    return tiny_digits_run


def _predict_error(run_dir, path, capsys):
    """Runs `jaxcnn predict` on ``path``; returns its one error line (exit 2 asserted)."""
    capsys.readouterr()
    assert main(["predict", "--workdir", run_dir, str(path)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert lines and lines[-1].startswith("jaxcnn: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[-1]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _bomb_png(width: int, height: int, *, data: bool) -> bytes:
    """An 8-bit grayscale PNG declaring ``width`` x ``height``; with ``data``, every
    row really compressed (a decompression bomb: ~1000:1), else no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    z = zlib.compressobj(9)
    if data:
        row = bytes(width + 1)  # filter byte + zeros
        body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    else:
        body = z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def _write_npy_header(path, descr: str, shape, payload: bytes = b"") -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
        f.write(payload)


# ---------------------------------------------------------------------------
# Images: PNG and JPEG only, whatever the suffix


def test_postscript_named_png_never_reaches_another_decoder(run_dir, tmp_path, capsys,
                                                           monkeypatch):
    from PIL import Image

    Image.init()
    called = []

    def spy(*args, **kwargs):
        called.append(args)
        raise AssertionError("the EPS plugin was consulted")

    # Any plugin other than PNG/JPEG consulted would fail the test.
    for fmt in list(Image.OPEN):
        if fmt not in ("PNG", "JPEG"):
            monkeypatch.setitem(Image.OPEN, fmt, (spy, spy))
    ps = tmp_path / "drawing.png"
    ps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
                  "0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
    line = _predict_error(run_dir, ps, capsys)
    assert "drawing.png" in line and "not a PNG or JPEG image" in line
    assert "whatever the suffix" in line
    assert called == []
    with pytest.raises(DataError, match="not a PNG or JPEG"):
        read_inputs([str(ps)], SHAPE, stored_as_uint8=False)


def test_other_formats_are_refused_whatever_the_suffix(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    img.save(tmp_path / "a.gif", format="GIF")
    os.rename(tmp_path / "a.gif", tmp_path / "gif.jpg")
    with pytest.raises(DataError, match="gif.jpg.*not a PNG or JPEG"):
        read_inputs([str(tmp_path / "gif.jpg")], SHAPE, stored_as_uint8=False)
    # A JPEG named .png is still a JPEG: read, not refused.
    img.save(tmp_path / "jpeg.png", format="JPEG")
    batch, names = read_inputs([str(tmp_path / "jpeg.png")], SHAPE, stored_as_uint8=True)
    assert batch.shape == (1, 8, 8, 1) and batch.dtype == np.uint8 and names == ["jpeg.png"]


@pytest.mark.parametrize("pixels", ["warning", "error"])
def test_decompression_bombs_are_refused_before_decoding(run_dir, tmp_path, capsys, pixels):
    # Above Pillow's warning threshold (it would go on decoding) and above its error one.
    side = 10_000 if pixels == "warning" else 20_000
    assert side * side > MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(side, side, data=False))
    line = _predict_error(run_dir, path, capsys)
    assert "bomb.png" in line and "too large" in line and f"{side * side} pixels" in line


def test_damaged_images_name_the_file(run_dir, tmp_path, capsys):
    from PIL import Image

    good = tmp_path / "good.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(good)  # incompressible: the pixel data is most of the file
    data = good.read_bytes()
    cases = {
        "truncated.png": data[: len(data) // 2],          # cut inside the pixel data
        "header_only.png": data[:33],                     # signature + IHDR, nothing else
        "garbage.jpg": b"\xff\xd8\xff\xe0" + os.urandom(200),
        "empty.png": b"",
        "bad_crc.png": data[:29] + bytes([data[29] ^ 0xFF]) + data[30:],
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(DataError) as e:
            read_inputs([str(tmp_path / name)], SHAPE, stored_as_uint8=False)
        assert name in str(e.value), e.value
    assert "truncated.png" in _predict_error(run_dir, tmp_path / "truncated.png", capsys)


# ---------------------------------------------------------------------------
# .npy arrays: header, dtype and values checked


def test_npy_values_outside_the_input_range_are_refused(run_dir, tmp_path, capsys):
    nan = np.full((8, 8), 0.5, np.float32)
    nan[3, 4] = np.nan
    inf = np.zeros((2, 8, 8), np.float64)
    inf[1, 2, 3] = -np.inf
    cases = {
        "nan.npy": (nan, "holds nan at index (3, 4)"),
        "inf.npy": (inf, "holds -inf at index (1, 2, 3)"),
        "huge.npy": (np.full((8, 8), 1e300), "too large for float32"),
        "complex.npy": (np.zeros((8, 8), np.complex64), "complex values"),
        "text.npy": (np.full((8, 8), "7"), "holds text"),
        "bytes.npy": (np.full((8, 8), b"7"), "holds text"),
        "dates.npy": (np.zeros((8, 8), "datetime64[s]"), "dates or times"),
        "records.npy": (np.zeros((8, 8), [("a", "f4"), ("b", "f4")]), "structured"),
    }
    np.save(tmp_path / "objects.npy", np.full((8, 8), None, object), allow_pickle=True)
    cases["objects.npy"] = (None, "Python objects")
    for name, (array, expected) in cases.items():
        if array is not None:
            np.save(tmp_path / name, array)
        with pytest.raises(DataError) as e:
            read_inputs([str(tmp_path / name)], SHAPE, stored_as_uint8=False)
        assert name in str(e.value) and expected in str(e.value), e.value
    for name in ("nan.npy", "complex.npy"):  # the command: one line, exit 2
        assert cases[name][1] in _predict_error(run_dir, tmp_path / name, capsys)


def test_npy_rules_for_a_uint8_model(tmp_path):
    """Integers are pixel values 0..255; nothing wraps or is clipped."""
    p = str(tmp_path / "x.npy")
    wraps = np.full((8, 8), 100, np.int64)
    wraps[2, 5] = -7  # astype(uint8) would make it 249
    np.save(p, wraps)
    with pytest.raises(DataError, match=r"x\.npy' holds -7 at index \(2, 5\).*within 0\.\.255"):
        read_inputs([p], SHAPE, stored_as_uint8=True)
    np.save(p, np.full((8, 8), 256, np.int32))
    with pytest.raises(DataError, match=r"holds 256 at index \(0, 0\) \(and 63 more\)"):
        read_inputs([p], SHAPE, stored_as_uint8=True)
    np.save(p, np.full((8, 8), 300.0, np.float32))
    with pytest.raises(DataError, match=r"holds 300\.0 .*\[0, 255\]"):
        read_inputs([p], SHAPE, stored_as_uint8=True)
    np.save(p, np.full((8, 8), -3.0))
    with pytest.raises(DataError, match=r"holds -3\.0"):
        read_inputs([p], SHAPE, stored_as_uint8=True)
    nan = np.zeros((8, 8), np.float16)
    nan[7, 7] = np.nan
    np.save(p, nan)
    with pytest.raises(DataError, match=r"holds nan at index \(7, 7\).*finite"):
        read_inputs([p], SHAPE, stored_as_uint8=True)


def _old_rule(x, as_uint8):
    """The conversion before the checks (for arrays inside the range), with the rules of
    test_predict_report.py: bool is black/white; for a float model, integers are pixel
    values and floats with a maximum above 1 are [0, 255], both scaled by 1/255."""
    if x.dtype == np.bool_:
        x = x.astype(np.float32) * (255 if as_uint8 else 1)
    if not as_uint8 and x.dtype.kind in "iu":
        x = x.astype(np.float32) / 255.0
    elif not as_uint8 and float(np.max(x)) > 1:
        x = (x.astype(np.float64) / 255).astype(np.float32)
    elif as_uint8 and np.issubdtype(x.dtype, np.floating):
        scale = 255.0 if x.size and float(np.nanmax(x)) <= 1.0 else 1.0
        x = np.clip(np.round(x * scale), 0, 255).astype(np.uint8)
    return x.astype(np.uint8 if as_uint8 else np.float32)


@pytest.mark.parametrize("as_uint8", [False, True])
def test_good_npy_inputs_convert_as_before(tmp_path, as_uint8):
    rng = np.random.default_rng(0)
    arrays = {
        "uint8": rng.integers(0, 256, (3, 8, 8), dtype=np.uint8),
        "int64": rng.integers(0, 256, (8, 8, 1)),
        "unit_float32": rng.random((2, 8, 8, 1), dtype=np.float32),
        "pixel_float64": rng.random((8, 8)) * 255,
        "float16": rng.random((8, 8)).astype(np.float16),
        "bool": rng.random((8, 8)) > 0.5,
        "big_endian": rng.random((8, 8)).astype(">f4"),
    }
    for name, x in arrays.items():
        p = str(tmp_path / f"{name}.npy")
        np.save(p, x)
        batch, _ = read_inputs([p], SHAPE, stored_as_uint8=as_uint8)
        expected = _old_rule(x.reshape(-1, 8, 8, 1), as_uint8)
        assert batch.dtype == expected.dtype, name
        np.testing.assert_array_equal(batch, expected, err_msg=name)


def test_npy_files_that_are_not_plain_arrays(run_dir, tmp_path, capsys):
    np.savez(tmp_path / "archive.npz", x=np.zeros((8, 8), np.float32))
    os.rename(tmp_path / "archive.npz", tmp_path / "archive.npy")
    line = _predict_error(run_dir, tmp_path / "archive.npy", capsys)
    assert "archive.npy" in line and ".npz archive" in line
    (tmp_path / "text.npy").write_text("0 1 2 3\n")
    np.save(tmp_path / "cut.npy", np.zeros((4, 8, 8), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-100])
    np.save(tmp_path / "none.npy", np.zeros((0, 8, 8), np.float32))
    np.save(tmp_path / "shape.npy", np.zeros((8, 9), np.float32))
    (tmp_path / "bad_header.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4}    \n")
    cases = {"text.npy": "not a .npy file", "cut.npy": "truncated", "none.npy": "holds no images",
             "shape.npy": "shape (8, 9)", "bad_header.npy": "as a .npy array"}
    for name, expected in cases.items():
        with pytest.raises(DataError) as e:
            read_inputs([str(tmp_path / name)], SHAPE, stored_as_uint8=False)
        assert name in str(e.value) and expected in str(e.value), e.value


def test_npy_header_declaring_terabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "tera.npy"
    _write_npy_header(path, "<f4", (2 ** 36, 8, 8), payload=bytes(1024))
    with pytest.raises(DataError, match=r"tera\.npy' is truncated.*17,592,186,044,416 bytes"):
        read_inputs([str(path)], SHAPE, stored_as_uint8=False)


# Under an address-space limit, so that a regression (decoding the bomb, allocating
# what a header declares) fails the test instead of exhausting the machine.
_LIMITED = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from jaxcnn.errors import DataError
    from jaxcnn.inference import read_inputs
    for path in sys.argv[1:]:
        try:
            read_inputs([path], (8, 8, 1), stored_as_uint8=False)
        except DataError as e:
            print("refused:", e)
        else:
            print("accepted:", path)
""")
MEMORY_LIMIT = 3 * 2 ** 30


def test_bombs_are_refused_within_bounded_memory(tmp_path):
    # ~1000:1: 92 MB of pixels in ~90 KB (just over the limit); decoding it as RGB and
    # resizing would take some 400 MB, the .npy header declares 16 TB.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(9_600, 9_600, data=True))
    assert bomb.stat().st_size < 500_000
    tera = tmp_path / "tera.npy"
    _write_npy_header(tera, "<f8", (2 ** 35, 8, 8), payload=bytes(4096))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED.format(limit=MEMORY_LIMIT), str(bomb), str(tera)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused:") for line in lines), proc.stdout
    assert "too large" in lines[0] and "truncated" in lines[1]


def test_predict_still_works_and_escapes_names(run_dir, tmp_path, capsys):
    from PIL import Image

    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    name = "odd\x1b[31mname.png"
    Image.fromarray((x * 255).round().astype(np.uint8)).save(tmp_path / name)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["predict", "--workdir", run_dir, str(tmp_path / name),
                 str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.startswith("odd\\x1b[31mname.png: ")
    assert main(["predict", "--workdir", run_dir, str(tmp_path / "x.npy"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert rows[0]["input"] == "x.npy" and len(rows[0]["top_k"]) == 3

