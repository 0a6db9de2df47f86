"""jaxcnn: train, study and benchmark convolutional image classifiers in JAX.

The public API, each piece usable on its own:

* layers (:mod:`jaxcnn.layers`): ``Conv2D``, ``MaxPooling2D``,
  ``AvgPooling2D``, ``GlobalAvgPooling2D``, ``Dropout``, ``Flatten``,
  ``Dense``, ``SoftmaxOutput``, as Flax linen modules;
* models (:mod:`jaxcnn.models`): ``build_model`` from a zoo name, spec text
  or a list of layers, ``summary``;
* training (:mod:`jaxcnn.training`): ``create_train_state``, the pure
  ``train_step`` and ``eval_step``, ``fit``, ``evaluate``, ``predict``;
* data (:mod:`jaxcnn.data`): ``load_dataset``, ``from_arrays``;
* configs (:mod:`jaxcnn.config`) and whole runs (:mod:`jaxcnn.run`).

Example:
  >>> import jaxcnn
  >>> model = jaxcnn.build_model("keras_convnet", num_classes=10)
  >>> jaxcnn.summary(model, (28, 28, 1)).params
  34826
"""

from jaxcnn.config import Config, DataConfig, ModelConfig, OptimizerConfig, TrainConfig, override
from jaxcnn.data import Dataset, Preprocess, from_arrays, load_dataset
from jaxcnn.errors import (ConfigError, DataError, JaxcnnError, NonFiniteLossError, ShapeError,
                           SpecError)
from jaxcnn.layers import (AvgPooling2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPooling2D,
                           MaxPooling2D, SoftmaxOutput)
from jaxcnn.models import Sequential, build_model, parse_spec, summary, to_spec
from jaxcnn.training import (TrainState, create_train_state, eval_step, evaluate, fit,
                          make_optimizer, predict, split_keys, train_step)
from jaxcnn.run import train_and_evaluate

__version__ = "0.1.0"

__all__ = [
    "AvgPooling2D", "Config", "ConfigError", "Conv2D", "DataConfig", "DataError", "Dataset",
    "Dense", "Dropout", "Flatten", "GlobalAvgPooling2D", "JaxcnnError", "MaxPooling2D",
    "ModelConfig", "NonFiniteLossError", "OptimizerConfig", "Preprocess", "Sequential",
    "ShapeError", "SoftmaxOutput", "SpecError", "TrainConfig", "TrainState", "build_model",
    "create_train_state", "eval_step", "evaluate", "fit", "from_arrays", "load_dataset",
    "make_optimizer", "override", "parse_spec", "predict", "split_keys", "summary", "to_spec",
    "train_and_evaluate", "train_step",
]
