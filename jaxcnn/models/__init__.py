"""Models: layers written down as specs (and spec text), the :class:`Sequential` and
:class:`Residual` containers built from them, the model zoo, and a Keras-like
:func:`summary`.

* :mod:`jaxcnn.models._spec`: :class:`LayerSpec`, the spec text grammar and its parser;
* :mod:`jaxcnn.models._sequential`: :class:`Sequential`, :class:`Residual`, layer names;
* :mod:`jaxcnn.models._zoo`: :data:`ZOO`, :func:`resnet_spec`, :func:`cifar_speed_spec`,
  :func:`build_model`;
* :mod:`jaxcnn.models._summary`: :func:`summary`, :func:`min_input_size`,
  :func:`memory_budget`.

Example:
  >>> s = summary(build_model("conv(8, 3) maxpool(2) flatten softmax", 10), (8, 8, 1))
  >>> s.params
  810
"""

from jaxcnn.models._spec import (LAYER_TYPES, MAX_SIZE, TAKES_TRAIN, LayerSpec, parse_spec,
                                 to_spec)
from jaxcnn.models._sequential import (Residual, Sequential, has_batch_norm, layer_names,
                                       residual)
from jaxcnn.models._zoo import (DEFAULT_MODEL, ZOO, build_model, cifar_speed_spec, model_spec,
                                resnet_spec)
from jaxcnn.models._summary import (LayerRow, ModelSummary, memory_budget, min_input_size,
                                    summary)

__all__ = [
    "DEFAULT_MODEL", "LAYER_TYPES", "LayerRow", "LayerSpec", "ModelSummary", "Residual",
    "Sequential", "TAKES_TRAIN", "ZOO", "MAX_SIZE", "build_model", "cifar_speed_spec",
    "has_batch_norm", "residual", "resnet_spec", "layer_names", "memory_budget",
    "min_input_size", "model_spec", "parse_spec", "summary", "to_spec",
]
