"""Test setup shared by tests/ and the doctests in jaxcnn/.

Gives the CPU backend 8 devices (before JAX starts), so sharding and
multi-device checkpoint code runs in CI without accelerators.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# Many tests compile the same small programs; a compilation cache shared by the
# session (and by its subprocesses, through the environment) compiles each once.
_CACHE = os.path.join(os.path.dirname(__file__), ".pytest_cache", "xla")
os.environ.setdefault("JAXCNN_COMPILATION_CACHE", _CACHE)
from jaxcnn.compilation_cache import enable_compilation_cache# noqa: E402

enable_compilation_cache(os.environ["JAXCNN_COMPILATION_CACHE"])

collect_ignore = ["jaxcnn/__main__.py", "experiments", "docs"]


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory):
    """A tiny trained run on the digits (float images), with checkpoints; read-only.

    Shared by the predict tests: one epoch of a 4-filter model, so that
    ``jaxcnn predict --workdir`` has a real run directory to load.
    """
    from jaxcnn.config import Config, override
    from jaxcnn.run import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("tiny_digits_run"))
    cfg = override(Config(), {"model.name": "conv(4,3) maxpool(2) flatten softmax",
                              "data.batch_size": 256, "data.validation_fraction": 0.0,
                              "train.epochs": 1, "train.num_devices": 1})
    train_and_evaluate(cfg, workdir, progress=False)
    return workdir
