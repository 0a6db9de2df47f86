"""Sweeps: a grid of config overrides times seeds, resumable, collected into one table.

A sweep is a base :class:`~jaxcnn.config.Config`, a list of *points* (each a
dict of dotted-key overrides, as for :func:`jaxcnn.config.override`) and a list
of seeds. Every (point, seed) pair is a *cell*: one call of
:func:`jaxcnn.run.train_and_evaluate` writing its own run directory under the
sweep's results directory. A cell is finished when its ``cell.json`` exists
and records the same resolved config, so running an interrupted sweep again
skips the finished cells and runs only the rest; changing the base config or a
point re-runs the cells it changes.

A cell whose loss becomes NaN or Inf (a learning rate that is too high) is not
an error for a sweep: it is recorded with ``status="diverged"`` and the
epochs it finished, because "this setting diverges" is a result.

Example:
  >>> import tempfile
  >>> base = override(Config(), {"model.name": "conv(4,3) maxpool(2) flatten softmax",
  ...                            "train.epochs": 1, "train.num_devices": 1})
  >>> result = run_sweep(base, grid({"data.batch_size": [64, 128]}), seeds=[0],
  ...                    results_dir=tempfile.mkdtemp())
  >>> [row["point"]["data.batch_size"] for row in result.rows]
  [64, 128]
  >>> agg = result.aggregate()
  >>> len(agg), agg[0]["n"], 0.0 <= agg[0]["test_accuracy_mean"] <= 1.0
  (2, 1, True)
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxcnn import distributed, provenance
from jaxcnn.config import Config, override
from jaxcnn.data import Dataset, Preprocess, load_dataset
from jaxcnn.errors import ConfigError, JaxcnnError, NonFiniteLossError
from jaxcnn.training import Callback

log = logging.getLogger("jaxcnn")

Point = Mapping[str, Any]

#: Summary metrics averaged by :meth:`SweepResult.aggregate` when present.
METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "final_train_loss",
           "final_train_accuracy", "train_seconds", "images_per_s", "params", "flops_per_image")

CELL_FILE = "cell.json"


def grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of config axes, as a list of points.

    Args:
      axes: ``{"section.field": [values...]}``; the first axis varies slowest.

    Returns:
      One ``{"section.field": value}`` dict per combination.

    Raises:
      ConfigError: an axis with no values.

    Example:
      >>> grid({"optimizer.learning_rate": [1e-3, 1e-2], "data.batch_size": [32]})
      [{'optimizer.learning_rate': 0.001, 'data.batch_size': 32}, {'optimizer.learning_rate': 0.01, 'data.batch_size': 32}]
    """
    for key, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"sweep axis {key!r} must be a list of values; got {values!r}. "
                              f"Write {{{key!r}: [{values!r}]}} for a single value.")
        if len(list(values)) == 0:
            raise ConfigError(f"sweep axis {key!r} has no values; give at least one")
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(axes[k]) for k in keys))]


def point_key(point: Point) -> str:
    """A canonical text form of a point (sorted keys, JSON), used to group seeds.

    Example:
      >>> point_key({"b.x": 1, "a.y": "s"})
      '{"a.y": "s", "b.x": 1}'
    """
    return json.dumps(dict(point), sort_keys=True, default=str)


def cell_name(point: Point, seed: int) -> str:
    """The directory name of a cell: a stable hash of the point, then the seed.

    The hash depends only on the point's content, not on its position in the
    grid, so adding points to a sweep keeps the finished cells.

    Example:
      >>> cell_name({"train.epochs": 2}, 3)
      'p-08aa188c28-s3'
    """
    digest = hashlib.sha1(point_key(point).encode()).hexdigest()[:10]
    return f"p-{digest}-s{seed}"


class _Recorder(Callback):
    """Keeps the history records of finished epochs, so a diverged cell still has them.

    With ``train_split`` it also evaluates the whole training split in
    evaluation mode (no dropout) at the end of each epoch: the running
    training accuracy of the history is measured *with* dropout on, so it
    understates how well the model fits its training data.
    """

    def __init__(self, train_split=None, preprocess=None, batch_size: int = 500):
        self.history: list[dict] = []
        self.train_split, self.preprocess, self.batch_size = train_split, preprocess, batch_size

    def on_epoch_end(self, state, record):
        record = dict(record)
        if self.train_split is not None:
            from jaxcnn.training import evaluate

            m = evaluate(state, self.train_split, self.preprocess, self.batch_size)
            record |= {"train_eval_loss": m["loss"], "train_eval_accuracy": m["accuracy"]}
        self.history.append(record)


@dataclasses.dataclass
class SweepResult:
    """The rows of a sweep, one per cell, and what produced them.

    Attributes:
      rows: one dict per cell: ``point`` (its overrides), ``seed``, ``status``
        (``ok`` or ``diverged``), the run's summary metrics (``test_accuracy``,
        ``test_loss``, ``val_accuracy``, ``train_seconds``, ``images_per_s``,
        ``params``, ...), ``flops_per_image``, ``final_train_loss``,
        ``final_train_accuracy``, ``history`` (per-epoch records), ``workdir``
        and ``resumed`` (True when the cell was read back, not run).
      base_config: the base config as a dict.
      seeds: the seeds of the sweep.
      points: the points of the sweep, in order.

    Example:
      >>> r = SweepResult(rows=[{"point": {"a.b": 1}, "seed": 0, "status": "ok",
      ...                        "test_accuracy": 0.5}], base_config={}, seeds=[0],
      ...                 points=[{"a.b": 1}])
      >>> r.aggregate()[0]["test_accuracy_mean"]
      0.5
    """

    rows: list[dict]
    base_config: dict
    seeds: list[int]
    points: list[dict]

    def aggregate(self, metrics: Sequence[str] = METRICS) -> list[dict]:
        """Mean, standard deviation, min and max of each metric per point, over seeds.

        The standard deviation is the sample one (``ddof=1``; 0 for one
        seed). Diverged cells count in ``diverged`` and are left out of the
        statistics of metrics they lack.

        Args:
          metrics: the row fields to summarise (those missing everywhere are skipped).

        Returns:
          One dict per point, in sweep order: ``point``, ``n`` (cells),
          ``diverged`` (how many of them diverged), and ``<metric>_mean``,
          ``<metric>_std``, ``<metric>_min``, ``<metric>_max``.

        Example:
          >>> rows = [{"point": {}, "seed": s, "status": "ok", "test_accuracy": a}
          ...         for s, a in enumerate([0.9, 1.0])]
          >>> agg = SweepResult(rows, {}, [0, 1], [{}]).aggregate(["test_accuracy"])[0]
          >>> round(agg["test_accuracy_mean"], 3), round(agg["test_accuracy_std"], 4)
          (0.95, 0.0707)
        """
        groups: dict[str, list[dict]] = {}
        order = [point_key(p) for p in self.points]
        for row in self.rows:
            groups.setdefault(point_key(row["point"]), []).append(row)
        order += [k for k in groups if k not in order]
        out = []
        for key in order:
            rows = groups.get(key)
            if not rows:
                continue
            agg: dict[str, Any] = {"point": dict(rows[0]["point"]), "n": len(rows),
                                   "diverged": sum(r.get("status") == "diverged" for r in rows)}
            for metric in metrics:
                values = [float(r[metric]) for r in rows
                          if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
                if not values:
                    continue
                mean = sum(values) / len(values)
                var = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)
                       if len(values) > 1 else 0.0)
                agg |= {f"{metric}_mean": mean, f"{metric}_std": math.sqrt(var),
                        f"{metric}_min": min(values), f"{metric}_max": max(values)}
            out.append(agg)
        return out

    def to_dict(self, *, history: bool = True, **extra: Any) -> dict:
        """The sweep as one JSON-ready dict: config, seeds, versions, rows and aggregate.

        Args:
          history: keep each row's per-epoch history.
          extra: more top-level entries (e.g. a description).

        Example:
          >>> d = SweepResult([], {}, [0], []).to_dict(name="empty")
          >>> sorted(d)[:4]
          ['aggregate', 'base_config', 'created', 'device']
        """
        rows = [r if history else {k: v for k, v in r.items() if k != "history"}
                for r in self.rows]
        return {
            **extra,
            "base_config": self.base_config,
            "points": self.points,
            "seeds": self.seeds,
            "rows": rows,
            "aggregate": self.aggregate(),
            "versions": provenance.versions(),
            "device": provenance.device_info(),
            "git_commit": provenance.git_commit(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def write_json(self, path: str, **extra: Any) -> str:
        """Writes :meth:`to_dict` to ``path`` (directories are created); returns ``path``.

        Example:
          >>> import tempfile
          >>> p = SweepResult([], {}, [0], []).write_json(os.path.join(tempfile.mkdtemp(), "r.json"))
          >>> json.load(open(p))["seeds"]
          [0]
        """
        _write_json(path, self.to_dict(**extra))
        return path

    def write_csv(self, path: str) -> str:
        """Writes one CSV row per cell (point fields, seed, status, scalar metrics).

        Example:
          >>> import tempfile
          >>> rows = [{"point": {"a.b": 1}, "seed": 0, "status": "ok", "test_accuracy": 0.5}]
          >>> p = SweepResult(rows, {}, [0], []).write_csv(os.path.join(tempfile.mkdtemp(), "r.csv"))
          >>> open(p).read().splitlines()
          ['a.b,seed,status,test_accuracy', '1,0,ok,0.5']
        """
        flat = []
        for row in self.rows:
            rec = dict(row["point"])
            rec |= {k: v for k, v in row.items()
                    if k != "point" and (v is None or isinstance(v, (int, float, str, bool)))}
            flat.append(rec)
        keys: list[str] = []
        for rec in flat:
            keys += [k for k in rec if k not in keys]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(flat)
        return path


def run_sweep(
    base: Config,
    points: Sequence[Point],
    seeds: Sequence[int],
    results_dir: str,
    *,
    dataset: Dataset | None = None,
    progress: bool = False,
    eval_train: bool = False,
    on_cell: Callable[[dict], None] | None = None,
) -> SweepResult:
    """Runs every (point, seed) cell not already finished in ``results_dir``.

    Cells run one at a time in grid order, seeds innermost. Each cell's config
    is ``override(base, {**point, "train.seed": seed})``; its run directory is
    ``results_dir/<cell_name>`` (see :func:`cell_name`) and holds everything
    :func:`jaxcnn.run.train_and_evaluate` writes plus ``cell.json``, the row.

    Args:
      base: the config every cell starts from.
      points: the grid points (dicts of dotted-key overrides; :func:`grid`
        builds a cartesian product). ``train.seed`` is set by ``seeds``.
      seeds: the seeds to run each point with.
      results_dir: the sweep's directory (created).
      dataset: train every cell on this dataset instead of loading
        ``data.dataset`` (loaded datasets are otherwise shared between cells
        with the same name, validation fraction, seed and data directory).
      progress: show each cell's progress bar on stderr.
      eval_train: also evaluate the whole training split without dropout at
        the end of every epoch; each row's history then has
        ``train_eval_loss`` and ``train_eval_accuracy`` (for train/test gaps).
      on_cell: called with each row as soon as its cell is finished or read back.

    Returns:
      A :class:`SweepResult` with one row per cell, in order.

    Raises:
      ConfigError: no points or no seeds, a point that sets ``train.seed``,
        or an override that is not a valid config key or value (all checked
        before the first cell runs).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> base = override(Config(), {"model.name": "flatten softmax", "train.epochs": 1,
      ...                            "train.num_devices": 1})
      >>> first = run_sweep(base, [{}], seeds=[0], results_dir=d)
      >>> again = run_sweep(base, [{}], seeds=[0], results_dir=d)
      >>> first.rows[0]["resumed"], again.rows[0]["resumed"]
      (False, True)
    """
    from jaxcnn.run import train_and_evaluate, write_history  # run imports are heavier

    points = [dict(p) for p in points]
    seeds = [int(s) for s in seeds]
    if not points:
        raise ConfigError("a sweep needs at least one point; pass [{}] to run the base config")
    if not seeds:
        raise ConfigError("a sweep needs at least one seed, e.g. seeds=[0, 1, 2]")
    if any("train.seed" in p for p in points):
        raise ConfigError("sweep points must not set train.seed; pass the seeds as seeds=[...]")
    cells = []
    for point in points:
        for seed in seeds:
            cells.append((point, seed, override(base, {**point, "train.seed": seed})))
    os.makedirs(results_dir, exist_ok=True)

    datasets: dict[tuple, Dataset] = {}
    rows = []
    for i, (point, seed, cfg) in enumerate(cells):
        workdir = os.path.join(results_dir, cell_name(point, seed))
        row = _read_cell(workdir, cfg)
        if row is not None:
            row["resumed"] = True
            log.info("sweep cell %d/%d %s seed %d: finished before, skipped", i + 1, len(cells),
                     point_key(point), seed)
        else:
            log.info("sweep cell %d/%d %s seed %d", i + 1, len(cells), point_key(point), seed)
            if distributed.is_primary():  # in a job, process 0 writes the results
                _clear_stale(workdir, cfg)
            distributed.barrier(f"sweep cell {i} ready")
            ds = dataset
            if ds is None:
                dkey = (cfg.data.dataset, cfg.data.validation_fraction, seed, cfg.data.data_dir)
                if dkey not in datasets:
                    datasets[dkey] = load_dataset(
                        cfg.data.dataset, validation_fraction=cfg.data.validation_fraction,
                        seed=seed, data_dir=cfg.data.data_dir)
                ds = datasets[dkey]
            recorder = _Recorder()
            if eval_train:
                recorder = _Recorder(ds.train, Preprocess.fit(ds.train.images,
                                                              normalize=cfg.data.normalize),
                                     cfg.data.eval_batch_size)
            t0 = time.perf_counter()
            try:
                summary = train_and_evaluate(cfg, workdir, dataset=ds, progress=progress,
                                             callbacks=[recorder])
                status = "ok"
            except NonFiniteLossError as e:
                if distributed.is_primary():
                    write_history(workdir, recorder.history)
                summary = {"diverged_step": e.step, "epochs": len(recorder.history),
                           "total_seconds": time.perf_counter() - t0, "workdir": workdir,
                           "seed": seed}
                status = "diverged"
                log.info("sweep cell %s seed %d diverged at step %d", point_key(point), seed,
                         e.step)
            row = _make_row(point, seed, status, summary, recorder.history, workdir, cfg)
            if distributed.is_primary():
                _write_json(os.path.join(workdir, CELL_FILE), row)
            row["resumed"] = False
        rows.append(row)
        if on_cell is not None:
            on_cell(row)
    return SweepResult(rows, base.to_dict(), seeds, points)


def _make_row(point, seed, status, summary, history, workdir, cfg: Config) -> dict:
    meta_path = os.path.join(workdir, "meta.json")
    flops = params = None
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            model = json.load(f).get("model", {})
        flops, params = model.get("flops_per_image"), model.get("params")
    row = {"point": dict(point), "seed": seed, "status": status}
    row |= {k: v for k, v in summary.items() if k not in ("model", "seed")}
    row.setdefault("params", params)
    row["flops_per_image"] = flops
    if history:
        row["final_train_loss"] = history[-1]["loss"]
        row["final_train_accuracy"] = history[-1]["accuracy"]
    row["history"] = history
    row["workdir"] = workdir
    row["config"] = cfg.to_dict()
    return row


def _read_cell(workdir: str, cfg: Config) -> dict | None:
    """The finished row of a cell, or None if it must (re)run."""
    path = os.path.join(workdir, CELL_FILE)
    try:
        with open(path) as f:
            row = json.load(f)
    except (OSError, ValueError):
        return None
    if not _same_config(row.get("config"), cfg):
        log.info("sweep cell %s was run with another config; running it again", workdir)
        return None
    return row


def _same_config(stored, cfg: Config) -> bool:
    """Whether a stored config dict describes ``cfg``.

    Compared as configs, not as JSON: a field added to jaxcnn since the cell
    ran takes its default, which is what the cell ran with, so the cell still
    counts as finished; a field that no longer exists makes it stale.
    """
    try:
        return Config.from_dict(stored) == cfg
    except (JaxcnnError, TypeError, AttributeError):
        return False


def _clear_stale(workdir: str, cfg: Config) -> None:
    """Empties a cell directory left by a different config, so nothing of it is reused.

    A directory of the same config (a cell interrupted mid-run) is kept: a
    run that checkpoints resumes from it.
    """
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            same = _same_config(json.load(f), cfg)
    except (OSError, ValueError):
        same = not os.path.isdir(workdir) or not os.listdir(workdir)
    if not same:
        shutil.rmtree(workdir)


def load_sweep(results_dir: str) -> list[dict]:
    """Every finished cell row found in a results directory (any order).

    Example:
      >>> import tempfile
      >>> load_sweep(tempfile.mkdtemp())
      []
    """
    rows = []
    if not os.path.isdir(results_dir):
        return rows
    for name in sorted(os.listdir(results_dir)):
        path = os.path.join(results_dir, name, CELL_FILE)
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    return rows


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(obj):
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


__all__ = [
    "CELL_FILE", "METRICS", "SweepResult", "cell_name", "grid", "load_sweep", "point_key",
    "run_sweep",
]
