"""The summary of experiments/gpu_bench.sh: one table per step, and the key figures.

Reads every <step>.jsonl that `jaxcnn bench --out` wrote into the output directory and
writes summary.md (the tables of `jaxcnn bench`, per step, and a short list of the
figures the script is for) and summary.json (the merged rows, as jaxcnn.bench.aggregate
gives them, and the key figures), then prints summary.md.

Command:   python experiments/gpu_bench.py OUTDIR      # gpu_bench.sh runs it at the end
Hardware:  any (it only reads files).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from jaxcnn.bench import aggregate, format_table, read_jsonl  # noqa: E402


def _ok(rows, **match):
    return [r for r in rows if r.get("status") == "ok"
            and all(r.get(k) == v for k, v in match.items())]


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def key_figures(steps: dict[str, list[dict]]) -> list[str]:
    """One line per figure the script is for, from the merged rows of each step."""
    lines = []

    def fmt_rate(r):
        util = r.get("utilisation")
        return (f"{_rate(r['images_per_s'])} images/s"
                + (f", {100 * util:.1f} % of peak" if util else "")
                + (f", compile {r['compile_seconds']:.1f} s" if r.get("compile_seconds") else ""))

    for name in ("a_cifar_speed_vs_torch", "d_resnet18_cifar_vs_torch"):
        agg = steps.get(name)
        if not agg:
            continue
        for r in _ok(agg):
            ratio = (f" (jaxcnn / torch {r['ratio']:.2f}x)"
                     if r["framework"] != "jaxcnn" and r.get("ratio") else "")
            lines.append(f"{name}: {r['framework']} {r['model']} batch {r['batch_size']} "
                         f"{r['dtype']}: {fmt_rate(r)}{ratio}")
    for r in _ok(steps.get("b_resnet50_bf16", [])):
        lines.append(f"b_resnet50_bf16: {r['model']} batch {r['batch_size']} {r['dtype']}: "
                     f"{fmt_rate(r)}")
    for model in ("cifar_speed", "keras_convnet"):
        one = {r["batch_size"]: r for r in _ok(steps.get(f"c_{model}_spc1", []))}
        eight = {r["batch_size"]: r for r in _ok(steps.get(f"c_{model}_spc8", []))}
        for b in sorted(set(one) & set(eight)):
            lines.append(f"c_{model}: batch {b}: steps per call 1 {_rate(one[b]['images_per_s'])}, "
                         f"8 {_rate(eight[b]['images_per_s'])} images/s "
                         f"(8 / 1: {eight[b]['images_per_s'] / one[b]['images_per_s']:.2f}x)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="the directory gpu_bench.sh wrote")
    args = p.parse_args(argv)
    steps, tables, problems = {}, [], []
    names = sorted({os.path.splitext(os.path.basename(f))[0]
                    for pattern in ("*.jsonl", "*.log")
                    for f in glob.glob(os.path.join(args.outdir, pattern))})
    for name in names:
        rows, why = [], "no rows"
        path = os.path.join(args.outdir, f"{name}.jsonl")
        if os.path.exists(path):
            try:
                rows = read_jsonl(path)
            except Exception as e:  # noqa: BLE001
                why = str(e)
        if rows:
            steps[name] = aggregate(rows)
            tables.append(f"### {name}\n\n{format_table(rows, markdown=True)}\n")
            continue
        log = os.path.join(args.outdir, f"{name}.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                tail = [line.strip() for line in f.read().strip().splitlines()[-3:]]
            why += "; log ends: " + " | ".join(tail)
        problems.append(f"{name}: {why}")
    figures = key_figures(steps)
    text = ["# gpu_bench summary", "", f"Output directory: {args.outdir}", "",
            "## Key figures", "", *(f"* {line}" for line in figures or ["(none)"]), ""]
    if problems:
        text += ["## Steps without results", "", *(f"* {line}" for line in problems), ""]
    text += ["## Tables", "", *tables]
    md = "\n".join(text)
    with open(os.path.join(args.outdir, "summary.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.outdir, "summary.json"), "w") as f:
        json.dump({"key_figures": figures, "problems": problems, "steps": steps}, f, indent=1,
                  default=str)
        f.write("\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
