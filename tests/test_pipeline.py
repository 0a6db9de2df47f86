"""Input pipeline: on-device vs streaming, keyed augmentation, shuffling, evaluation coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.data import (Augment, Prefetcher, Preprocess, Split, augment_batch, augment_key,
                         choose_pipeline, from_arrays, load_synthetic, resolve_augment)
from jaxcnn.models import build_model
from jaxcnn.training import Callback, create_train_state, evaluate, fit, split_keys
from jaxcnn.training._fit import _jit_permutation

SPEC = "conv(4,3) maxpool(2) flatten dropout(0.5) softmax"


def _leaves_equal(a, b):
    return all(bool((x == y).all()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _fit(ds, pipeline, augment=None, epochs=2, state=None, history=None, **kw):
    keys = split_keys(3)
    if state is None:
        state = create_train_state(build_model(SPEC, ds.num_classes), ds.image_shape,
                                   optax.adam(1e-3), keys.init)
    return fit(state, ds, keys=keys, epochs=epochs, batch_size=32,
               preprocess=Preprocess.fit(ds.train.images), progress=False, pipeline=pipeline,
               augment=augment, history=history, **kw)


@pytest.fixture(scope="module")
def rgb():
    return load_synthetic("synthetic:12x12x3:4:200")


@pytest.mark.parametrize("augment", [None, Augment(2, True)])
def test_stream_matches_device_bit_for_bit(rgb, augment):
    a = _fit(rgb, "device", augment)
    b = _fit(rgb, "stream", augment)
    assert (a.pipeline, b.pipeline) == ("device", "stream")
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert _leaves_equal(a.state.params, b.state.params)


def test_auto_streams_when_the_budget_is_too_small(rgb):
    assert _fit(rgb, "auto", epochs=1, memory_budget=1000).pipeline == "stream"
    assert _fit(rgb, "auto", epochs=1, memory_budget=10**9).pipeline == "device"
    assert choose_pipeline("device", 10**12, 1) == "device"


def test_stream_resume_matches_straight_run(rgb):
    aug = Augment(2, True)
    straight = _fit(rgb, "stream", aug, epochs=2)

    class StopAt(Callback):
        def on_step_end(self, state, step):
            return step == 8  # mid-epoch (6 steps per epoch)

    first = _fit(rgb, "stream", aug, epochs=2, callbacks=[StopAt()])
    assert int(first.state.step) == 8
    resumed = _fit(rgb, "device", aug, epochs=2, state=first.state)
    assert _leaves_equal(straight.state.params, resumed.state.params)


def test_augmentation_is_keyed_and_does_what_it_says():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 6, 6, 3), dtype=np.uint8))
    aug = Augment(2, True)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a, b, c = augment_batch(x, k1, aug), augment_batch(x, k1, aug), augment_batch(x, k2, aug)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert bool((a == b).all()) and not bool((a == c).all())
    flipped = np.asarray(augment_batch(x, k1, Augment(0, True)))
    xs = np.asarray(x)
    for i in range(len(xs)):  # each image is either itself or its mirror
        assert (flipped[i] == xs[i]).all() or (flipped[i] == xs[i, :, ::-1]).all()
    assert any((flipped[i] != xs[i]).any() for i in range(len(xs)))
    cropped = np.asarray(augment_batch(x, k1, Augment(2, False)))
    for i in range(len(xs)):  # a shifted window of the zero-padded image
        padded = np.pad(xs[i], ((2, 2), (2, 2), (0, 0)))
        assert any((cropped[i] == padded[dy:dy + 6, dx:dx + 6]).all()
                   for dy in range(5) for dx in range(5))
    assert resolve_augment(True, (28, 28, 1), crop_padding=0, flip=False) is None
    assert resolve_augment(False, (32, 32, 3)) is None


def test_augment_key_is_independent_of_the_other_streams():
    keys = split_keys(0)
    data = [jax.random.key_data(k) for k in (keys.init, keys.data, keys.dropout)]
    ak = jax.random.key_data(augment_key(keys))
    assert all(not bool((ak == d).all()) for d in data)


def test_shuffle_is_deterministic_and_reshuffles_each_epoch():
    keys, other = split_keys(0), split_keys(1)
    p0 = np.asarray(_jit_permutation(keys.data, 0, 100))
    assert (p0 == np.asarray(_jit_permutation(split_keys(0).data, 0, 100))).all()
    assert sorted(p0.tolist()) == list(range(100))
    assert not (p0 == np.asarray(_jit_permutation(keys.data, 1, 100))).all()
    assert not (p0 == np.asarray(_jit_permutation(other.data, 0, 100))).all()


def test_prefetcher_order_early_close_and_errors():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10)
    perms = {e: np.random.default_rng(e).permutation(10) for e in range(3)}
    with Prefetcher(x, y, perms.__getitem__, 3, 3, 2, 5, jax.devices()[0]) as feed:
        got = [np.asarray(b[1]).tolist() for b in feed]
    # Steps 2..6: epoch 0 batch 2, epoch 1 batches 0-2, epoch 2 batch 0.
    want = [perms[e][i * 3:(i + 1) * 3].tolist()
            for e, i in ((0, 2), (1, 0), (1, 1), (1, 2), (2, 0))]
    assert got == want
    feed = Prefetcher(x, y, perms.__getitem__, 3, 3, 0, 1000, jax.devices()[0], depth=1)
    next(iter(feed))
    feed.close()
    assert not feed._thread.is_alive()

    def broken(epoch):
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        with Prefetcher(x, y, broken, 3, 3, 0, 2, jax.devices()[0]) as feed:
            list(feed)


@pytest.mark.parametrize("n,batch", [(37, 8), (5, 8), (64, 8), (101, 25)])
def test_evaluate_counts_every_example_once(n, batch):
    rng = np.random.default_rng(n)
    ds = from_arrays(rng.random((n + 8, 4, 4, 1)), np.arange(n + 8) % 3,
                     rng.random((n, 4, 4, 1)), np.arange(n) % 3)
    state = create_train_state(build_model("flatten softmax", 3), (4, 4, 1),
                               optax.adam(1e-3), jax.random.key(0))
    pre = Preprocess.fit(ds.train.images)
    m = evaluate(state, ds.test, pre, batch_size=batch)
    logits = state.apply_fn({"params": state.params}, pre(ds.test.images), train=False)
    want_acc = float((np.asarray(logits).argmax(-1) == ds.test.labels).mean())
    assert m["count"] == n
    assert m["accuracy"] == pytest.approx(want_acc, abs=1e-6)
    m8 = evaluate(state, Split(ds.test.images, ds.test.labels), pre, batch_size=batch,
                  mesh=jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",)))
    assert m8["count"] == n and m8["accuracy"] == pytest.approx(want_acc, abs=1e-6)


def test_stream_matches_device_on_a_mesh(rgb):
    from jaxcnn.sharding import make_mesh

    mesh = make_mesh(8)
    a = _fit(rgb, "device", Augment(2, True), epochs=1, mesh=mesh)
    b = _fit(rgb, "stream", Augment(2, True), epochs=1, mesh=mesh)
    assert _leaves_equal(a.state.params, b.state.params)
