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
