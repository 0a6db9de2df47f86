"""Training: the train state, the optimiser, the pure steps, evaluation and ``fit``.

The heart of the library is two pure functions:

* :func:`train_step` ``(state, batch, key) -> (state, metrics)``: forward,
  softmax cross-entropy on the logits, backward and the optimiser update.
* :func:`eval_step` ``(state, batch) -> metrics``.

They are plain functions, so a user can ``jax.jit`` them into a loop of their
own (docs/custom_loop.md). :func:`fit` is the loop jaxcnn provides: a plan
resolved once (:func:`plan_fit`), a batch source (the split on the device, or
a streaming thread), the compiled step (:class:`TrainProgram`, under an
:class:`ExecutionPolicy` that ``jaxcnn bench`` shares) and callbacks
(progress bar, early stopping, checkpoints).

Randomness comes only from explicit keys. :func:`split_keys` turns the seed
into independent ``init``, ``data`` and ``dropout`` keys; the dropout key of
step ``n`` is ``fold_in(dropout_key, n)`` and the order of epoch ``e`` is
drawn from ``fold_in(data_key, e)``, so a run resumed at any step draws the
same masks and batches as one run straight through.

Modules (private; import from here): ``_state`` (state, keys,
:func:`build_state`), ``_optimizer``, ``_steps``, ``_policy``, ``_program``,
``_evaluate``, ``_callbacks``, ``_fit``.

Example:
  >>> from jaxcnn.config import Config
  >>> built = build_state(Config(), (8, 8, 1), 10, steps_per_epoch=40)
  >>> int(built.state.step)
  0
"""

from jaxcnn.training._callbacks import Callback, EarlyStopping, ProgressBar, format_record
from jaxcnn.training._evaluate import (compiled_eval, compiled_predict, evaluate, merge_metrics,
                                       predict)
from jaxcnn.training._fit import FitPlan, FitResult, fit, plan_fit
from jaxcnn.training._optimizer import build_optimizer, learning_rate_schedule, make_optimizer
from jaxcnn.training._policy import (ExecutionPolicy, jit_with, resolve_micro_batches,
                                     resolve_policy, resolve_steps_per_call)
from jaxcnn.training._program import TrainProgram
from jaxcnn.training._state import (BuiltState, Keys, ModelApply, TrainState, build_state,
                                    create_train_state, split_keys)
from jaxcnn.training._steps import (accumulate_gradients, apply_update, cross_entropy, eval_step,
                                    train_step)

__all__ = [
    "BuiltState", "Callback", "EarlyStopping", "ExecutionPolicy", "FitPlan", "FitResult", "Keys",
    "ModelApply", "ProgressBar", "TrainProgram", "TrainState", "accumulate_gradients",
    "apply_update", "build_optimizer", "build_state", "compiled_eval", "compiled_predict", "create_train_state", "cross_entropy", "eval_step",
    "evaluate", "fit", "format_record", "jit_with", "learning_rate_schedule", "make_optimizer",
    "merge_metrics", "plan_fit", "predict", "resolve_micro_batches", "resolve_policy",
    "resolve_steps_per_call", "split_keys", "train_step",
]
