"""SGD with (Nesterov) momentum, weight decay on kernels only, the linear and
one-cycle schedules, and their train flags."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.cli import build_parser, config_from_args
from jaxcnn.config import Config, OptimizerConfig, override
from jaxcnn.errors import ConfigError
from jaxcnn.training._optimizer import build_optimizer, decay_mask, learning_rate_schedule

PARAMS = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
          "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
          "dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}


def _one_step(cfg: OptimizerConfig):
    """The parameters after one update with zero gradients (only decay moves them)."""
    tx, _ = build_optimizer(cfg, 10)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    return jax.tree.map(lambda p, u: p + u, PARAMS, updates)


@pytest.mark.parametrize("settings, decay", [
    ({"name": "adamw"}, 1e-4), ({"name": "adamw", "weight_decay": 0.1}, 0.1),
    ({"name": "sgd", "l2": 0.1}, 0.1), ({"name": "adam", "l2": 0.1, "weight_decay": 0.3}, None)])
def test_decay_shrinks_kernels_only(settings, decay):
    cfg = OptimizerConfig(learning_rate=0.5, **settings)
    new = _one_step(cfg)
    if decay is None:  # adam + l2: the penalty is a gradient, normalised by Adam's step
        for path, p in jax.tree_util.tree_leaves_with_path(new):
            assert (np.all(np.asarray(p) < 1.0) if p.ndim >= 2
                    else np.all(np.asarray(p) == 1.0)), path
        return
    shrink = 1 - 0.5 * decay  # both scale the decay by the rate
    for path, p in jax.tree_util.tree_leaves_with_path(new):
        want = shrink if p.ndim >= 2 else 1.0
        np.testing.assert_allclose(np.asarray(p), want, rtol=1e-6, err_msg=str(path))


def test_weight_decay_defaults_keep_old_behaviour():
    # Every config stores weight_decay 1e-4; only adamw uses it, and no optimiser gets an
    # L2 penalty unless asked.
    for name in ("sgd", "adam", "rmsprop", "adagrad"):
        new = _one_step(OptimizerConfig(name=name, learning_rate=0.5))
        assert all(np.all(np.asarray(p) == 1.0) for p in jax.tree.leaves(new)), name
    new = _one_step(OptimizerConfig(name="sgd", learning_rate=0.5))
    assert all(np.all(np.asarray(p) == 1.0) for p in jax.tree.leaves(new))
    assert decay_mask(PARAMS)["bn"] == {"scale": False, "bias": False}


def test_nesterov_momentum_updates():
    g = {"w": jnp.ones(())}
    results = {}
    for nesterov in (False, True):
        tx, _ = build_optimizer(OptimizerConfig(name="sgd", learning_rate=1.0, momentum=0.9,
                                                nesterov=nesterov), 10)
        state = tx.init(g)
        steps = []
        for _ in range(2):
            u, state = tx.update(g, state)
            steps.append(float(u["w"]))
        results[nesterov] = steps
    np.testing.assert_allclose(results[False], [-1.0, -1.9], rtol=1e-6)
    np.testing.assert_allclose(results[True], [-1.9, -2.71], rtol=1e-6)  # g + m * trace


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "sgd", "nesterov": True}, "optimizer.momentum > 0"),
    ({"name": "rmsprop", "momentum": 0.9, "nesterov": True}, "needs optimizer.name sgd"),
    ({"name": "adam", "momentum": 0.9}, "optimizer.b1"),
    ({"name": "sgd", "weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"schedule": "linear", "end_factor": -0.1}, "end_factor must be >= 0"),
])
def test_meaningless_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OptimizerConfig(**kwargs)


@pytest.mark.parametrize("schedule, warmup, expected", [
    # Warm-up to the peak at step 10, then halfway down (0.55) at step 55.
    ("linear", 10, [0.0, 0.5, 1.0, 0.55, 0.1]),
    ("linear", 0, [1.0, 0.955, 0.91, 0.505, 0.1]),
    ("one_cycle", 10, [0.04, 0.52, 1.0, 0.55, 0.1]),  # from 1/25, cosine both ways
    ("one_cycle", 0, [1.0, 0.994, 0.978, 0.48, 0.1]),
])
def test_schedule_shapes(schedule, warmup, expected):
    s = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, schedule=schedule,
                                               warmup_steps=warmup, end_factor=0.1), 100)
    got = [float(s(i)) for i in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(got, expected, atol=0.01)
    assert float(s(150)) == pytest.approx(0.1)  # stays at the end value


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_flags_map_to_config_keys():
    o = config_from_args(_args("--optimizer", "sgd", "--momentum", "0.9", "--nesterov",
                               "--l2", "5e-4", "--warmup-steps", "7",
                               "--schedule", "one_cycle", "--label-smoothing", "0"))
    assert (o.optimizer.momentum, o.optimizer.nesterov, o.optimizer.l2,
            o.optimizer.warmup_steps, o.optimizer.schedule, o.train.label_smoothing) == (
        0.9, True, 5e-4, 7, "one_cycle", 0.0)
    assert config_from_args(_args()) == Config()  # no flag, no change
    assert config_from_args(_args("--optimizer", "sgd", "--momentum", "0.9", "--set",
                                  "optimizer.nesterov=true", "--nesterov")).optimizer.nesterov


@pytest.mark.parametrize("argv, message", [
    (("--optimizer", "sgd", "--momentum", "0.9", "--set", "optimizer.momentum=0.5"),
     "--momentum 0.9 and --set"),
    (("--momentum", "0.9",), "optimizer.momentum applies to sgd and rmsprop, not adam"),
    (("--optimizer", "sgd", "--momentum", "0.9", "--no-nesterov", "--set",
      "optimizer.nesterov=true"), "--no-nesterov and --set"),
    (("--label-smoothing", "0.2", "--set", "train.label_smoothing=0"), "--label-smoothing 0.2"),
    (("--weight-decay", "0.1",), "use --optimizer adamw, or --l2"),
])
def test_flag_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        config_from_args(_args(*argv))


def test_old_config_without_l2_still_loads():
    old = Config().to_dict()
    del old["optimizer"]["l2"]  # written before the field existed
    assert Config.from_dict(old).optimizer.l2 == 0.0
    cfg = override(Config(), {"optimizer.l2": "5e-4", "optimizer.name": "sgd"})
    assert Config.from_json(cfg.to_json()) == cfg
