"""`jaxcnn predict` tells what it did ("predict tells what it did").

Every conversion applied to an input (resize, rescale, channels, inversion) is
reported per input, in ``--json`` and on stderr; float arrays in [0, 255] are
rescaled as documented; inputs far from the training images (inverted, nearly
constant, much darker or brighter) get a warning naming the cause and the fix,
and ``--invert`` flips them.
"""

import json

import numpy as np
import pytest

from jaxcnn.cli import main
from jaxcnn.errors import DataError
from jaxcnn.inference import (TrainingImages, input_warnings, load_inputs, predict_files,
                              report_lines)

SHAPE = (8, 8, 1)  # the digits images (float32 in [0, 1], light on dark, mean 0.31)
DIGITS = TrainingImages.from_meta(
    {"train_images": {"min": 0.0, "max": 1.0, "mean": [0.305], "image_std": 0.377}},
    scale=1.0, mean=[0.305], std=[0.376])


@pytest.fixture
def run_dir(tiny_digits_run):
    """A tiny trained run on the digits, with checkpoints (conftest.py's ``tiny_digits_run``)"""
    return tiny_digits_run


@pytest.fixture(scope="module")
def digits():
    from jaxcnn.data import load_dataset

    return load_dataset("digits").test.images  # (360, 8, 8, 1) float32 in [0, 1]


def _predict(run_dir, files, capsys, *flags):
    """Runs `jaxcnn predict --json`; returns (predictions, stderr lines)."""
    capsys.readouterr()
    assert main(["predict", "--workdir", run_dir, *map(str, files), "--json", *flags]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    return out, captured.err.strip().splitlines()


def _png(path, pixels, mode=None):
    from PIL import Image

    Image.fromarray(pixels, mode).save(path) if mode else Image.fromarray(pixels).save(path)
    return path


def test_a_png_of_another_size_reports_the_resize(run_dir, digits, tmp_path, capsys):
    pixels = np.round(digits[0, ..., 0] * 255).astype(np.uint8)
    big = np.repeat(np.kron(pixels, np.ones((4, 4), np.uint8))[..., None], 3, axis=-1)
    path = _png(tmp_path / "digit.png", big)  # 32x32 RGB
    out, err = _predict(run_dir, [path], capsys)
    row = out["predictions"][0]
    assert row["original"] == {"file": "digit.png", "format": "PNG", "mode": "RGB",
                               "shape": [32, 32, 3], "dtype": "uint8",
                               "range": [int(pixels.min()), int(pixels.max())],
                               "taken_as": [0, 255]}
    conv = row["conversions"]
    assert conv["resize"]["from"] == [32, 32] and conv["resize"]["to"] == [8, 8]
    assert conv["resize"]["method"] == "bilinear" and conv["resize"]["aspect_kept"]
    assert conv["rescale"]["from"] == [0, 255] and conv["rescale"]["to"] == [0, 1]
    assert conv["channels"] == "RGB -> grey" and conv["invert"] is None
    line = ("digit.png: resized 32x32 -> 8x8 (bilinear), rescaled uint8 [0, 255] -> [0, 1], "
            "RGB -> grey")
    assert conv["text"] == line.split(": ", 1)[1]
    assert err == [line] and row["warnings"] == []
    assert out["training_images"]["statistics_from"] == "train_images"
    assert out["training_images"]["range"] == [0, 1] and out["notes"] == []


def test_many_inputs_with_the_same_conversions_share_one_line(run_dir, digits, tmp_path,
                                                             capsys):
    pixels = np.round(digits[1, ..., 0] * 255).astype(np.uint8)
    wide = np.kron(pixels, np.ones((2, 3), np.uint8))  # 16x24: not the model's aspect
    paths = [_png(tmp_path / f"{i}.png", wide) for i in range(4)]
    np.save(tmp_path / "same.npy", digits[1, ..., 0])
    _, err = _predict(run_dir, [*paths, tmp_path / "same.npy"], capsys)
    assert err == ["0.png, 1.png and 2 more: resized 16x24 -> 8x8 (bilinear, stretched), "
                   "rescaled uint8 [0, 255] -> [0, 1]"]  # same.npy: nothing done, no line


def test_float_npy_in_0_255_predicts_as_the_same_image_in_0_1(run_dir, digits, tmp_path,
                                                             capsys):
    np.save(tmp_path / "unit.npy", digits[2, ..., 0])
    np.save(tmp_path / "pixels.npy", digits[2, ..., 0].astype(np.float64) * 255)
    out, err = _predict(run_dir, [tmp_path / "unit.npy", tmp_path / "pixels.npy"], capsys)
    unit, pixels = out["predictions"]
    assert [t["index"] for t in unit["top_k"]] == [t["index"] for t in pixels["top_k"]]
    np.testing.assert_allclose([t["probability"] for t in unit["top_k"]],
                               [t["probability"] for t in pixels["top_k"]], rtol=1e-5)
    assert unit["conversions"]["rescale"] is None and unit["original"]["taken_as"] == [0, 1]
    assert pixels["conversions"]["rescale"]["factor"] == pytest.approx(1 / 255)
    assert err == ["pixels.npy: rescaled float64 [0, 255] -> [0, 1] (max 255 > 1)"]
    assert unit["warnings"] == pixels["warnings"] == []


def test_an_inverted_digit_is_flagged_and_invert_fixes_it(run_dir, digits, tmp_path, capsys):
    x = digits[3, ..., 0]
    np.save(tmp_path / "digit.npy", x)
    np.save(tmp_path / "dark.npy", 1.0 - x)  # dark on light
    _png(tmp_path / "dark.png", np.round((1.0 - x) * 255).astype(np.uint8))
    out, err = _predict(run_dir, [tmp_path / "digit.npy", tmp_path / "dark.npy",
                                  tmp_path / "dark.png"], capsys)
    original, dark, dark_png = out["predictions"]
    mean = float((1.0 - x).mean())
    expected = (f"dark.npy looks inverted (dark on light; the training images are light on "
                f"dark): its mean {mean:.2f} vs training mean 0.31; pass --invert to flip it")
    assert dark["warnings"] == [expected] and f"warning: {expected}" in err
    assert dark_png["warnings"] and "dark.png looks inverted" in dark_png["warnings"][0]
    assert original["warnings"] == []

    out, err = _predict(run_dir, [tmp_path / "dark.npy", tmp_path / "dark.png"], capsys,
                        "--invert")
    fixed, fixed_png = out["predictions"]
    assert fixed["warnings"] == fixed_png["warnings"] == []
    assert fixed["conversions"]["invert"] == "1 - x"
    assert not any(line.startswith("warning:") for line in err)
    assert "dark.npy: inverted (1 - x)" in err
    for row in (fixed, fixed_png):
        assert row["top_k"][0]["index"] == original["top_k"][0]["index"]
    np.testing.assert_allclose([t["probability"] for t in fixed["top_k"]],
                               [t["probability"] for t in original["top_k"]], rtol=1e-4)
    # --invert on a digit that was fine: the warning says to drop it.
    out, _ = _predict(run_dir, [tmp_path / "digit.npy"], capsys, "--invert")
    assert out["predictions"][0]["warnings"][0].endswith("drop --invert")


def test_test_digits_get_no_warning_and_inverted_ones_all_do(run_dir, digits, tmp_path):
    np.save(tmp_path / "test.npy", digits)
    np.save(tmp_path / "inverted.npy", 1.0 - digits)
    rows = predict_files(run_dir, [str(tmp_path / "test.npy"), str(tmp_path / "inverted.npy")],
                         k=1)["predictions"]
    normal, inverted = rows[:len(digits)], rows[len(digits):]
    assert [r["warnings"] for r in normal] == [[]] * len(digits)
    assert all(len(r["warnings"]) == 1 and "looks inverted" in r["warnings"][0]
               for r in inverted)
    lines = report_lines({"predictions": inverted})
    assert len(lines) == 21 and lines[-1].startswith(f"warning: {len(digits) - 20} more")


# ---------------------------------------------------------------------------
# The rules, without a run


def test_float_range_rule(tmp_path):
    p = str(tmp_path / "x.npy")
    x = np.linspace(0, 1, 64).reshape(8, 8)
    for values, taken_as in ((x, [0, 1]), (x * 255, [0, 255]), (x * 1.5, [0, 255])):
        np.save(p, values)
        batch, (report,) = load_inputs([p], SHAPE, DIGITS)
        assert report.original["taken_as"] == taken_as
        np.testing.assert_allclose(batch[0, ..., 0], values / taken_as[1], rtol=1e-6)
    for bad, shown in ((x - 0.5, r"\[-0\.5, 0\.5\]"), (x * 300, r"\[0, 300\]")):
        np.save(p, bad)
        with pytest.raises(DataError, match=r"x\.npy' holds .* these lie in " + shown
                           + r": pass the image before standardisation"):
            load_inputs([p], SHAPE, DIGITS)
    np.save(p, np.full((8, 8), 300))  # integers are pixel values 0..255
    with pytest.raises(DataError, match=r"holds 300 .*within 0\.\.255"):
        load_inputs([p], SHAPE, DIGITS)
    np.save(p, np.arange(64).reshape(8, 8) * 4)
    batch, (report,) = load_inputs([p], SHAPE, DIGITS)
    assert report.describe() == "rescaled int64 [0, 255] -> [0, 1]"
    np.testing.assert_allclose(batch.ravel(), np.arange(64) * 4 / 255, rtol=1e-6)


def test_training_range_decides_the_target(tmp_path):
    p = str(tmp_path / "x.npy")
    np.save(p, np.full((8, 8), 0.5))
    uint8 = TrainingImages.from_meta({}, scale=1 / 255, mean=[0.2], std=[0.3])
    pixels = TrainingImages.from_meta({"train_images": {"min": 0, "max": 255, "mean": [60.0],
                                                        "image_std": 50.0}}, 1.0, [0.0], [1.0])
    batch, (r,) = load_inputs([p], SHAPE, uint8)
    assert batch.dtype == np.uint8 and int(batch.max()) == 128
    assert r.describe() == "rescaled float64 [0, 1] -> uint8 [0, 255]"
    batch, (r,) = load_inputs([p], SHAPE, pixels)
    assert batch.dtype == np.float32 and float(batch.max()) == 127.5
    assert r.describe() == "rescaled float64 [0, 1] -> [0, 255]" and r.mean == 0.5
    batch, (r,) = load_inputs([p], SHAPE, uint8, invert=True)
    assert int(batch.max()) == 127 and r.inverted == "255 - x"
    # A run with data.normalize off and no stored statistics: nothing to compare with.
    bare = TrainingImages.from_meta({}, scale=1.0, mean=[0.0], std=[1.0])
    assert (bare.full_scale, bare.mean) == (1.0, None)
    # Training data in another range (standardised): arrays as they are, no --invert.
    other = TrainingImages.from_meta({"train_images": {"min": -2.0, "max": 3.0, "mean": [0.0],
                                                       "image_std": 1.0}}, 1.0, [0.0], [1.0])
    np.save(p, np.full((8, 8), -1.5))
    batch, (r,) = load_inputs([p], SHAPE, other)
    assert float(batch.min()) == -1.5 and r.rescale is None and r.warnings == []
    with pytest.raises(DataError, match=r"cannot invert.*\[-2, 3\].*invert the arrays yourself"):
        load_inputs([p], SHAPE, other, invert=True)
    # An edited train_images entry is ignored, not trusted.
    bad = TrainingImages.from_meta({"train_images": {"min": "x"}}, 1.0, [0.3], [0.4])
    assert bad.source == "preprocess" and bad.mean == 0.3


def test_channel_and_bit_depth_conversions_are_reported(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    _png(tmp_path / "rgba.png", rgba)
    _png(tmp_path / "grey.png", np.full((8, 8), 77, np.uint8))
    wide = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    _png(tmp_path / "wide.png", wide)  # 16-bit: Pillow's 8-bit conversion would saturate it
    _, reports = load_inputs([str(tmp_path / "rgba.png")], SHAPE, DIGITS)
    assert reports[0].channels == "RGBA -> grey (alpha dropped)"
    batch, reports = load_inputs([str(tmp_path / "grey.png")], (8, 8, 3), DIGITS)
    assert reports[0].channels == "grey -> RGB" and batch.shape == (1, 8, 8, 3)
    batch, (r,) = load_inputs([str(tmp_path / "wide.png")], SHAPE, DIGITS)
    assert r.original["dtype"] == "uint16" and r.original["taken_as"] == [0, 65535]
    assert r.describe() == "rescaled uint16 [0, 65535] -> [0, 1]" and r.channels is None
    np.testing.assert_allclose(batch[0, ..., 0], wide / 65535, atol=1e-6)


def test_warning_rule():
    # digits-like training images: light on dark, mean 0.31, typical pixel std 0.38
    assert input_warnings("a", 0.30, 0.35, 0.31, 0.38) == []
    assert "looks inverted (dark on light" in input_warnings("a", 0.70, 0.35, 0.31, 0.38)[0]
    assert input_warnings("a", 0.0, 0.01, 0.31, 0.38)[0].startswith("a is nearly constant")
    dark = input_warnings("raw.npy", 0.02, 0.05, 0.31, 0.38, values_max=16)[0]
    assert "much darker" in dark and "reach only 16" in dark and "divide it by 16" in dark
    assert "much brighter" in input_warnings("a", 0.45, 0.3, 0.1, 0.38, )[0]
    # Training images without a polarity (natural photos, mean near 0.5): never "inverted".
    assert input_warnings("a", 0.45, 0.2, 0.52, 0.25) == []
    assert "looks inverted" not in " ".join(input_warnings("a", 0.85, 0.2, 0.45, 0.25))
    assert input_warnings("a", 0.9, 0.0, None, None) == []  # nothing stored: no check
