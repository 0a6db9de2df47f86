"""The same model in other frameworks, for ``jaxcnn bench --compare``.

Each framework runs in a subprocess of its own (Keras chooses its backend
once, at import; separate processes also keep the frameworks' thread pools
from competing with each other). The parent sends a JSON request on stdin
describing the architecture layer by layer, the batch sizes and the timing
plan; the child builds the model, checks that its parameter count equals
jaxcnn's, times it with the same loop jaxcnn uses (``jaxcnn._timing``), and
answers with one JSON object on stdout.

Nothing here imports a framework at module level: torch, TensorFlow and Keras
are imported only inside the child process that uses them, so jaxcnn never
needs them installed.

Frameworks (names for ``--compare``):

* ``torch``: PyTorch, eager with channels_last on CPU, ``torch.compile`` on GPU.
* ``keras-tensorflow``, ``keras-jax``: Keras 3 on each backend;
  ``keras`` means both.

Example:
  >>> parse_frameworks("torch,keras")
  ['torch', 'keras-tensorflow', 'keras-jax']
"""

from jaxcnn.compare._frameworks import (FRAMEWORKS, INSTALL_HINT, ComparisonError,
                                        check_installed, check_param_counts, parse_frameworks,
                                        request_layers, run_framework)

__all__ = ["FRAMEWORKS", "INSTALL_HINT", "ComparisonError", "check_installed",
           "check_param_counts", "parse_frameworks", "request_layers", "run_framework"]
