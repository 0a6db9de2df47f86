"""What saving every short epoch costs: `jaxcnn train` with checkpoint.min_interval_seconds 0 vs 10.

The default run's epochs take about 0.2 s; with `min_interval_seconds=0` each of its 40
epochs is saved, with the default 10 only the epochs 10 s after the last save (and the
final state). The two settings run interleaved, round after round, as fresh processes, so a
burst of load from other jobs hits both; the table gives medians over rounds and their ratio.

Command:   python experiments/bench_save_interval.py --out docs/experiments
Hardware:  2 shared CPU cores, no GPU.
Run time:  about 2 minutes (3 rounds of 2 runs).
Expected:  training takes about twice as long when every epoch is saved.

Writes <out>/save_interval.{json,md}.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import _common as C

SETTINGS = (0.0, 10.0)


def run_once(interval: float, workdir: str) -> dict:
    cmd = [sys.executable, "-m", "jaxcnn", "train", "--quiet", "--json", "--workdir", workdir,
           "--set", f"checkpoint.min_interval_seconds={interval}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=C.ROOT)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    saves = len([d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()])
    return {"min_interval_seconds": interval, "wall_seconds": wall,
            "train_seconds": summary["train_seconds"], "checkpoints_kept": saves}


def main():
    p = C.out_parser(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for interval in SETTINGS:
                row = run_once(interval, os.path.join(tmp, f"r{r}-{interval}"))
                row["round"] = r
                print(row, flush=True)
                rows.append(row)
    med = {s: {k: float(np.median([x[k] for x in rows if x["min_interval_seconds"] == s]))
               for k in ("train_seconds", "wall_seconds")} for s in SETTINGS}
    ratio = med[0.0]["train_seconds"] / med[10.0]["train_seconds"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "save_interval.json"), "w") as f:
        json.dump({"name": "save_interval", "command": " ".join(["experiments/bench_save_interval.py",
                                                                 *sys.argv[1:]]),
                   "rows": rows, "medians": {str(k): v for k, v in med.items()},
                   "train_seconds_ratio_every_epoch_vs_default": ratio,
                   "versions": C.provenance.versions(), "device": C.provenance.device_info()},
                  f, indent=1)
        f.write("\n")
    C.write_table("save_interval", args,
                  ["checkpoint.min_interval_seconds", "rounds", "train s (median)",
                   "wall s (median)", "train time vs default"],
                  [[f"{s:g}", args.rounds, f"{med[s]['train_seconds']:.2f}",
                    f"{med[s]['wall_seconds']:.2f}",
                    f"{med[s]['train_seconds'] / med[10.0]['train_seconds']:.2f}x"]
                   for s in SETTINGS],
                  note="`jaxcnn train` (the default run), fresh processes, interleaved; "
                       + C.environment_line())


if __name__ == "__main__":
    main()
