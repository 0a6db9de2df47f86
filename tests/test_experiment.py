import json
import os

import pytest

from jaxcnn.config import Config, override
from jaxcnn.errors import ConfigError
from jaxcnn.experiment import CELL_FILE, SweepResult, cell_name, grid, load_sweep, run_sweep

TINY = "conv(4, 3, padding=same) maxpool(2) flatten softmax"


@pytest.fixture
def base():
    return override(Config(), {"model.name": TINY, "train.epochs": 1, "data.batch_size": 64,
                               "train.num_devices": 1, "data.validation_fraction": 0.0})


def test_grid_is_the_cartesian_product_first_axis_slowest():
    points = grid({"optimizer.name": ["adam", "sgd"], "optimizer.learning_rate": [0.1, 0.01]})
    assert points == [
        {"optimizer.name": "adam", "optimizer.learning_rate": 0.1},
        {"optimizer.name": "adam", "optimizer.learning_rate": 0.01},
        {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1},
        {"optimizer.name": "sgd", "optimizer.learning_rate": 0.01},
    ]


@pytest.mark.parametrize("axes", [{"train.epochs": []}, {"train.epochs": 3}])
def test_grid_refuses_empty_or_scalar_axes(axes):
    with pytest.raises(ConfigError, match="train.epochs"):
        grid(axes)


def test_cell_name_depends_on_content_not_order():
    assert cell_name({"a.b": 1, "c.d": 2}, 0) == cell_name({"c.d": 2, "a.b": 1}, 0)
    assert cell_name({"a.b": 1}, 0) != cell_name({"a.b": 2}, 0)
    assert cell_name({"a.b": 1}, 0) != cell_name({"a.b": 1}, 1)


def test_bad_points_are_refused_before_anything_runs(base, tmp_path):
    with pytest.raises(ConfigError, match="train.seed"):
        run_sweep(base, [{"train.seed": 1}], [0], str(tmp_path))
    with pytest.raises(ConfigError, match="unknown config key"):
        run_sweep(base, [{"data.batch_size": 32}, {"model.nope": 1}], [0], str(tmp_path))
    with pytest.raises(ConfigError, match="seed"):
        run_sweep(base, [{}], [], str(tmp_path))
    assert os.listdir(tmp_path) == []  # the valid first point did not run


def test_sweep_runs_collects_and_resumes(base, tmp_path):
    points = grid({"data.batch_size": [32, 64]})
    ran = []
    first = run_sweep(base, points, [0], str(tmp_path), on_cell=ran.append)
    assert [r["point"]["data.batch_size"] for r in first.rows] == [32, 64]
    assert [r["resumed"] for r in ran] == [False, False]
    for row in first.rows:
        assert row["status"] == "ok" and 0.0 <= row["test_accuracy"] <= 1.0
        assert row["params"] > 0 and row["flops_per_image"] > 0
        assert len(row["history"]) == 1 and row["config"]["train"]["seed"] == 0
        assert os.path.exists(os.path.join(row["workdir"], "summary.json"))
    # Different batch sizes give different step counts: the cells really differ.
    assert first.rows[0]["steps"] == 1437 // 32 and first.rows[1]["steps"] == 1437 // 64

    # Remove one finished cell: a second run redoes only that one.
    os.remove(os.path.join(first.rows[1]["workdir"], CELL_FILE))
    mtime = os.path.getmtime(os.path.join(first.rows[0]["workdir"], "summary.json"))
    again = run_sweep(base, points, [0], str(tmp_path))
    assert [r["resumed"] for r in again.rows] == [True, False]
    assert os.path.getmtime(os.path.join(first.rows[0]["workdir"], "summary.json")) == mtime
    assert again.rows[0]["test_accuracy"] == first.rows[0]["test_accuracy"]
    # Same seed, same config: the re-run cell reproduces its result exactly.
    assert again.rows[1]["test_accuracy"] == first.rows[1]["test_accuracy"]
    assert len(load_sweep(str(tmp_path))) == 2


def test_a_changed_base_config_reruns_the_cell(base, tmp_path):
    run_sweep(base, [{}], [0], str(tmp_path))
    changed = override(base, {"optimizer.learning_rate": 3e-3})
    again = run_sweep(changed, [{}], [0], str(tmp_path))
    assert again.rows[0]["resumed"] is False
    assert again.rows[0]["config"]["optimizer"]["learning_rate"] == 3e-3


def test_diverged_cells_are_results_not_errors(base, tmp_path):
    cfg = override(base, {"optimizer.name": "sgd", "train.epochs": 2})
    result = run_sweep(cfg, [{"optimizer.learning_rate": 1e9}], [0], str(tmp_path))
    row = result.rows[0]
    assert row["status"] == "diverged" and row["diverged_step"] >= 1
    agg = result.aggregate()[0]
    assert agg["diverged"] == 1 and "test_accuracy_mean" not in agg
    # A diverged cell is finished too: resuming does not run it again.
    assert run_sweep(cfg, [{"optimizer.learning_rate": 1e9}], [0],
                     str(tmp_path)).rows[0]["resumed"] is True


def test_aggregate_and_files(tmp_path):
    rows = [{"point": {"x.y": p}, "seed": s, "status": "ok", "test_accuracy": p + s / 10,
             "history": [{"epoch": 1}]} for p in (1, 2) for s in (0, 1, 2)]
    result = SweepResult(rows, Config().to_dict(), [0, 1, 2], [{"x.y": 1}, {"x.y": 2}])
    agg = result.aggregate(["test_accuracy"])
    assert [a["point"] for a in agg] == [{"x.y": 1}, {"x.y": 2}]
    assert agg[0]["n"] == 3 and agg[0]["test_accuracy_mean"] == pytest.approx(1.1)
    assert agg[0]["test_accuracy_std"] == pytest.approx(0.1)
    assert (agg[1]["test_accuracy_min"], agg[1]["test_accuracy_max"]) == (2.0, 2.2)

    data = json.load(open(result.write_json(str(tmp_path / "out" / "r.json"), name="demo")))
    assert data["name"] == "demo" and data["seeds"] == [0, 1, 2]
    assert {"jax", "flax", "optax"} <= set(data["versions"])
    assert data["base_config"]["model"]["name"] == "seed_cnn"
    lines = open(result.write_csv(str(tmp_path / "r.csv"))).read().splitlines()
    assert lines[0] == "x.y,seed,status,test_accuracy" and len(lines) == 7


def test_eval_train_adds_dropout_free_training_accuracy(base, tmp_path):
    cfg = override(base, {"model.name": "flatten dropout(0.75) softmax", "train.epochs": 2,
                          "optimizer.learning_rate": 0.03,
                          "data.validation_fraction": 0.2})
    row = run_sweep(cfg, [{}], [0], str(tmp_path), eval_train=True).rows[0]
    assert [r["epoch"] for r in row["history"]] == [1, 2]
    for record in row["history"]:
        assert 0.0 <= record["train_eval_accuracy"] <= 1.0 and "val_accuracy" in record
    # With 75% of inputs dropped, the model fits its data far better than its
    # dropout-on running accuracy says.
    last = row["history"][-1]
    assert last["train_eval_accuracy"] > last["accuracy"]


def test_a_config_field_added_later_keeps_finished_cells(base, tmp_path):
    """Cells written before a new config field existed still count as finished."""
    row = run_sweep(base, [{}], [0], str(tmp_path)).rows[0]
    path = os.path.join(row["workdir"], CELL_FILE)
    stored = json.load(open(path))
    del stored["config"]["data"]["normalize"]  # as if written before the field existed
    json.dump(stored, open(path, "w"))
    assert run_sweep(base, [{}], [0], str(tmp_path)).rows[0]["resumed"] is True
    # ... unless the cell ran with a value other than the new field's default.
    changed = override(base, {"data.normalize": False})
    assert run_sweep(changed, [{}], [0], str(tmp_path)).rows[0]["resumed"] is False
