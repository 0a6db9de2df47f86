"""Training on the user's own arrays, and the errors for arrays that do not fit."""

import numpy as np
import pytest

from jaxcnn.cli import main
from jaxcnn.config import Config, override
from jaxcnn.data import from_arrays
from jaxcnn.errors import DataError, ShapeError
from jaxcnn.run import prepare

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("x,y,message", [
    (RNG.random((10, 8)), RNG.integers(0, 2, 10), r"\(N, H, W, C\) or \(N, H, W\)"),
    (RNG.random((10, 8, 8, 1, 1)), RNG.integers(0, 2, 10), r"\(N, H, W, C\)"),
    (RNG.random((10, 8, 8)), RNG.integers(0, 2, 9), "9 entries but there are 10 images"),
    (RNG.random((10, 8, 8)), np.eye(2)[RNG.integers(0, 2, 10)], "argmax"),
    (RNG.random((10, 8, 8)), np.full(10, 0.5), "integer class ids"),
    (RNG.random((10, 8, 8)), np.zeros(10, int), "at least 2 classes"),
    (np.full((10, 8, 8), np.nan), RNG.integers(0, 2, 10), "NaN"),
])
def test_bad_arrays(x, y, message):
    with pytest.raises(DataError, match=message):
        from_arrays(x, y)


def test_labels_outside_the_class_range():
    with pytest.raises(DataError, match=r"\[0, 3\).*from -1"):
        from_arrays(RNG.random((10, 8, 8)), np.r_[-1, RNG.integers(0, 3, 9)], num_classes=3)
    with pytest.raises(DataError, match=r"\[0, 2\).*to 5"):
        from_arrays(RNG.random((10, 8, 8)), RNG.integers(0, 2, 10), RNG.random((4, 8, 8)),
                    [0, 1, 5, 0], num_classes=2)


def test_test_images_of_another_shape():
    with pytest.raises(DataError, match="x_test images are"):
        from_arrays(RNG.random((10, 8, 8)), RNG.integers(0, 2, 10), RNG.random((4, 9, 9)),
                    [0, 1, 1, 0])


def test_images_too_small_for_the_model_fail_before_training():
    ds = from_arrays(RNG.random((40, 6, 6)), RNG.integers(0, 2, 40))
    with pytest.raises(ShapeError, match="conv2d_2.*larger than its input feature map 2x2"):
        prepare(override(Config(), {"model.name": "keras_convnet"}), ds)


def test_diverging_run_exits_3_with_the_step(capsys, tmp_path):
    code = main(["train", "--optimizer", "sgd", "--lr", "1e12", "--epochs", "2", "--quiet",
                 "--num-devices", "1", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 3
    assert "NaN or Inf at step" in err and "Traceback" not in err
    # It says what is on disk: here, with checkpoints of the run or none saved yet.
    assert "checkpoint" in err.lower(), err
