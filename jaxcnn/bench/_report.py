"""Results on disk and on screen: JSON lines, rounds merged, tables, plots.

No JAX: results from other machines are read, merged and drawn anywhere.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any, Iterable, Sequence

from jaxcnn._fs import writable_dir_problem
from jaxcnn.bench._config import BenchError
from jaxcnn.errors import JaxcnnError
from jaxcnn.plots import save_figure


def write_jsonl(rows: Iterable[dict[str, Any]], path: str, *, append: bool = False) -> str:
    """Writes rows as JSON lines (one object per line).

    Example:
      >>> import tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "bench.jsonl")
      >>> read_jsonl(write_jsonl([{"a": 1}, {"a": 2.5}], path))
      [{'a': 1}, {'a': 2.5}]
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "a" if append else "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    return path


def output_problem(path: str, *, create_dirs: bool = False) -> str | None:
    """Why ``path`` cannot be written, or None: checked before a benchmark runs.

    Nothing is created or changed: an existing file is opened for appending
    and closed, a new one is probed with a temporary file in its directory,
    removed at once. A missing directory is a problem unless ``create_dirs``
    (then the nearest existing parent must be writable).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> output_problem(os.path.join(d, "b.jsonl")) is None, os.listdir(d)
      (True, [])
      >>> output_problem(os.path.join(d, "no", "b.jsonl"))  # doctest: +ELLIPSIS
      "the directory '.../no' does not exist"
      >>> output_problem(d)
      'it is a directory'
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return "it is a directory"
    if os.path.exists(path):
        try:
            if os.path.isfile(path):
                open(path, "ab").close()  # appends nothing: the file is unchanged
            elif not os.access(path, os.W_OK):
                return "permission denied"
        except OSError as e:
            return e.strerror or str(e)
        return None
    directory = os.path.dirname(path)
    if create_dirs:
        while not os.path.exists(directory) and os.path.dirname(directory) != directory:
            directory = os.path.dirname(directory)
    if not os.path.exists(directory):
        return f"the directory {directory!r} does not exist"
    if not os.path.isdir(directory):
        return f"{directory!r} is not a directory"
    # The directory exists: writable_dir_problem creates nothing, it only probes.
    return writable_dir_problem(directory)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads JSON lines written by :func:`write_jsonl` (blank lines skipped).

    Raises:
      BenchError: when the file is missing or a line is not JSON.

    Example:
      >>> read_jsonl("/no/such/file.jsonl")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxcnn.bench.BenchError: cannot read /no/such/file.jsonl: ...
    """
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror}; pass a file written by "
                         "`jaxcnn bench --out FILE.jsonl`") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}, line {i} is not JSON ({e.msg}); each line must be one "
                             "object, as `jaxcnn bench --out` writes") from None
    return rows


def _group_key(row):
    return (row.get("model"), row.get("what"), row.get("dtype"), row.get("device_kind"))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merges the rounds of each (model, what, dtype, device, framework, batch).

    Returns one summary per configuration: the median over rounds of each
    round's median step time (and the images/s, FLOP/s and utilisation it
    gives), the min and max step time over every timed round, the median
    compile time, and ``ratio``: jaxcnn's images/s over this framework's.

    Utilisation is against the highest peak any row of the same device kind
    and dtype recorded: a peak measured on the spot (CPUs) varies with the
    load of the moment, and the best measurement is the closest to the
    machine's real peak; one figure for every framework keeps them comparable.

    Example:
      >>> rows = [{"framework": "jaxcnn", "model": "m", "batch_size": 8, "status": "ok",
      ...          "step_seconds_median": t, "step_seconds_min": t, "step_seconds_max": t,
      ...          "compile_seconds": 1.0} for t in (0.1, 0.3, 0.2)]
      >>> a = aggregate(rows)[0]
      >>> a["images_per_s"], a["rounds"], a["images_per_s_min"]
      (40.0, 3, 26.666666666666668)
    """
    groups: dict[tuple, list[dict]] = {}
    best_peak: dict[tuple, float] = {}
    for row in rows:
        key = (*_group_key(row), row.get("framework"), row.get("mode"), row.get("batch_size"))
        groups.setdefault(key, []).append(row)
        if row.get("peak_flop_per_s"):
            pk = (row.get("device_kind"), row.get("dtype"))
            best_peak[pk] = max(best_peak.get(pk, 0.0), row["peak_flop_per_s"])
    out = []
    for key, members in groups.items():
        ok = [r for r in members if r.get("status") == "ok"]
        first = members[0]
        summary_row = {
            "framework": first.get("framework"), "model": first.get("model"),
            "what": first.get("what"), "dtype": first.get("dtype"), "mode": first.get("mode"),
            "batch_size": first.get("batch_size"), "device_kind": first.get("device_kind"),
            "params": first.get("params"), "rounds": len(members),
            "impl": first.get("impl"), "op_paths": first.get("op_paths"),
            "micro_batches": first.get("micro_batches"),
            "chunks": first.get("chunks"),
            "host_memory": first.get("host_memory"),
            "status": "ok" if ok else (first.get("status") or "error"),
            "error": None if ok else first.get("error"),
        }
        if ok:
            median = statistics.median(r["step_seconds_median"] for r in ok)
            b = first["batch_size"]
            flops = ok[0].get("flops_per_step")
            peak = best_peak.get((first.get("device_kind"), first.get("dtype")))
            mems = [r["peak_memory_bytes"] for r in ok if r.get("peak_memory_bytes")]
            summary_row.update(
                step_seconds_median=median,
                step_seconds_min=min(r["step_seconds_min"] for r in ok),
                step_seconds_max=max(r["step_seconds_max"] for r in ok),
                images_per_s=b / median,
                images_per_s_min=b / max(r["step_seconds_max"] for r in ok),
                images_per_s_max=b / min(r["step_seconds_min"] for r in ok),
                compile_seconds=statistics.median(r["compile_seconds"] for r in ok
                                                  if r.get("compile_seconds") is not None)
                if any(r.get("compile_seconds") is not None for r in ok) else None,
                flops_per_step=flops,
                flop_per_s=flops / median if flops else None,
                peak_flop_per_s=peak,
                utilisation=flops / median / peak if flops and peak else None,
                peak_memory_bytes=max(mems) if mems else None)
        out.append(summary_row)
    jax_speed = {(*_group_key(a), a["batch_size"]): a.get("images_per_s")
                 for a in out if a["framework"] == "jaxcnn"}
    for a in out:
        mine = jax_speed.get((*_group_key(a), a["batch_size"]))
        a["ratio"] = (mine / a["images_per_s"]) if mine and a.get("images_per_s") else None
    return out


def _fmt(value, spec: str, scale: float = 1.0, none: str = "-") -> str:
    return none if value is None else format(value / scale, spec)


def format_table(rows: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """A readable table of results (rounds merged by :func:`aggregate`).

    ``vs jaxcnn`` is jaxcnn's images/s over that row's (above 1: jaxcnn is
    faster); step times show median [min-max] over every timed round.

    Args:
      rows: result rows.
      markdown: a Markdown table per group (for docs) instead of plain text.

    Example:
      >>> table = format_table([{"framework": "jaxcnn", "model": "m", "batch_size": 8,
      ...                        "status": "oom", "error": "out of memory"}])
      >>> table.splitlines()[-1].split()[:4]
      ['jaxcnn', '-', '8', '-']
      >>> "out of memory" in table
      True
    """
    agg = aggregate(rows)
    head = ("framework", "mode/path", "batch", "compile s", "step ms median [min-max]", "images/s",
            "GFLOP/step", "GFLOP/s", "util %", "mem MB", "vs jaxcnn")
    lines_by_group: dict[tuple, list[tuple[str, ...]]] = {}
    for a in agg:
        if a["status"] != "ok":
            cells = (a["framework"], a.get("mode") or "-", str(a["batch_size"]), "-",
                     "out of memory" if a["status"] == "oom" else a["status"],
                     "-", "-", "-", "-", "-", "-")
        else:
            mode = a.get("mode") or "-"
            if a["framework"] == "jaxcnn" and a.get("impl"):
                mode = f"{mode} {a['impl']}"
            chunks, k = a.get("chunks") or 1, a.get("micro_batches") or 1
            if a["framework"] == "jaxcnn" and (k > 1 or chunks > 1):
                # e.g. "4x32" (4 micro-batches of 32), "4*4x32" (4 calls of 4 x 32)
                calls = f"{chunks}*" if chunks > 1 else ""
                mode = f"{mode} {calls}{k}x{a['batch_size'] // (k * chunks)}"
            cells = (
                a["framework"], mode, str(a["batch_size"]),
                _fmt(a["compile_seconds"], ".2f"),
                f"{a['step_seconds_median'] * 1e3:.2f} [{a['step_seconds_min'] * 1e3:.2f}-"
                f"{a['step_seconds_max'] * 1e3:.2f}]",
                f"{a['images_per_s']:,.0f}", _fmt(a["flops_per_step"], ".4g", 1e9),
                _fmt(a["flop_per_s"], ".4g", 1e9), _fmt(a["utilisation"], ".3g", 0.01),
                _fmt(a["peak_memory_bytes"], ".1f", 1e6),
                "-" if a["framework"] == "jaxcnn" else _fmt(a["ratio"], ".2f") + "x")
        lines_by_group.setdefault(_group_key(a), []).append(cells)
    notes_by_group: dict[tuple, str] = {}
    for a in agg:
        if a["framework"] == "jaxcnn" and a.get("op_paths"):
            note = "jaxcnn ops: " + a["op_paths"]
            if a.get("host_memory"):
                note += f"; host memory: {a['host_memory']}"
            notes_by_group.setdefault(_group_key(a), note)
    out = []
    for (model, what, dtype, kind), body in lines_by_group.items():
        note = notes_by_group.get((model, what, dtype, kind))
        if markdown:
            out += [f"**{model} | {what} | {dtype} | {kind}**", "",
                    "| " + " | ".join(head) + " |",
                    "|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(head))) + "|",
                    *("| " + " | ".join(cells) + " |" for cells in body), ""]
            if note:
                out += [note, ""]
            continue
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))

        out += [f"{model} | {what} | {dtype} | {kind}", line(head),
                "-" * len(line(head)), *map(line, body), *([note] if note else []), ""]
    return "\n".join(out).rstrip()


def plot_throughput(rows: Sequence[dict[str, Any]], path: str, title: str | None = None) -> str:
    """Draws images/s against batch size, one line per framework, to a PNG.

    One panel per (model, what, dtype, device); error bars span the min and
    max over every timed round. A panel with a single batch size shows a bar
    per framework instead. Out-of-memory rows are left out.

    Args:
      rows: result rows (e.g. :func:`read_jsonl` of ``--out`` files).
      path: the PNG to write.
      title: the figure's title (default: the device kind).

    Returns:
      ``path``.

    Raises:
      BenchError: no row to plot, or the file cannot be written (a full
        disk, no permission); a previous file at ``path`` is then left intact.

    Example:
      >>> import tempfile
      >>> rows = [{"framework": f, "model": "m", "what": "train", "batch_size": b,
      ...          "status": "ok", "step_seconds_median": 0.01 * b ** 0.5,
      ...          "step_seconds_min": 0.009 * b ** 0.5, "step_seconds_max": 0.011 * b ** 0.5}
      ...         for f in ("jaxcnn", "torch") for b in (32, 128)]
      >>> p = plot_throughput(rows, os.path.join(tempfile.mkdtemp(), "t.png"))
      >>> os.path.getsize(p) > 0
      True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = [a for a in aggregate(rows) if a["status"] == "ok"]
    if not agg:
        raise BenchError("no successful rows to plot; every row is out of memory or failed")
    groups: dict[tuple, list[dict]] = {}
    for a in agg:
        groups.setdefault(_group_key(a), []).append(a)
    n = len(groups)
    cols = min(n, 3)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(5.2 * cols, 4.0 * -(-n // cols)),
                             squeeze=False)
    for ax, ((model, what, dtype, kind), members) in zip(axes.flat, groups.items()):
        by_fw: dict[str, list[dict]] = {}
        for a in members:
            label = a["framework"] + ("" if a.get("mode") in (None, "step") else f" ({a['mode']})")
            by_fw.setdefault(label, []).append(a)
        ordered = sorted(by_fw.items(), key=lambda kv: kv[0] != "jaxcnn")
        batches = sorted({a["batch_size"] for a in members})
        if len(batches) == 1:
            # One batch size: a bar per framework, labelled with its images/s.
            for i, (label, (a, *_)) in enumerate(ordered):
                err = [[a["images_per_s"] - a["images_per_s_min"]],
                       [a["images_per_s_max"] - a["images_per_s"]]]
                ax.bar(i, a["images_per_s"], yerr=err, capsize=3, color=f"C{i}")
                ax.text(i, a["images_per_s"] / 2, f"{a['images_per_s']:,.0f}", ha="center",
                        fontsize=8, color="white", fontweight="bold")
            ax.set_xticks(range(len(ordered)), [label for label, _ in ordered], fontsize=8,
                          rotation=20)
            ax.set_xlabel(f"batch size {batches[0]}")
        else:
            for label, pts in ordered:
                pts.sort(key=lambda a: a["batch_size"])
                xs = [a["batch_size"] for a in pts]
                ys = [a["images_per_s"] for a in pts]
                err = [[y - a["images_per_s_min"] for y, a in zip(ys, pts)],
                       [a["images_per_s_max"] - y for y, a in zip(ys, pts)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches)
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("batch size")
            ax.legend(fontsize=8)
        ax.set_ylabel("images / s")
        ax.set_ylim(bottom=0)
        ax.set_title(" | ".join(str(v) for v in (model, what, dtype) if v is not None),
                     fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    kinds = sorted({str(k[3]) for k in groups if k[3]})
    fig.suptitle(title or ("throughput on " + ", ".join(kinds) if kinds else "throughput"))
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # A full disk leaves no partial plot and any previous one intact.
        save_figure(fig, path)
    except (OSError, JaxcnnError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).split(": ", 1)[-1]
        raise BenchError(f"cannot write the plot {path!r}: {reason}; free disk space "
                         "or choose another --png") from None
    finally:
        plt.close(fig)
    return path


__all__ = ["aggregate", "format_table", "output_problem", "plot_throughput", "read_jsonl",
           "write_jsonl"]
