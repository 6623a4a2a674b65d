"""The scale benchmark's table: every job of a pipeline run at two sizes, extrapolated to the
real Dataset_Student (1,000 train, 1,000 val, 13,000 unlabeled, 2,000 hidden videos).

Run workflow/benchmarks/scale.yaml at two sizes first (its header says how), then:

    python bench/scale_table.py \\
        --run config.yaml workflow/benchmarks/scale.yaml \\
        --run config.yaml workflow/benchmarks/scale.yaml workflow/benchmarks/scale-small.yaml \\
        --csv docs/scale.csv

Per job it reads Snakemake's benchmark file (wall time, CPU time, peak resident memory), the
sizes of the job's outputs (from `snakemake --summary`; run the benchmark with `--notemp` so
that temporary outputs are still there to be sized) and, for a training job, its step count
and mean step time (its log and metrics.csv). A run's size is the fraction of the real split
counts it had (its data/check.json); every split must be the same fraction.

At the real size, per job: each figure on the straight line through its measurements
(`resource_table.extrapolate`), except a training job's steps: the benchmark cuts training to
`max_train_steps`, so its time is that line for everything but the steps, plus the real run's
steps (the configured epochs over the real split) at the measured step time. The CSV keeps the
measurements at each size beside the extrapolation, so tests/test_resources.py redoes the
scaling against config.yaml's `resources`.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from futureseg.evaluate.resource_table import benchmark_files, extrapolate, read_benchmark

REAL = {"train": 1000, "val": 1000, "unlabeled": 13000, "hidden": 2000}
# What a row measures, in CSV and table order.
MEASURES = ("time_s", "cpu_s", "peak_mb", "disk_mb")
# The checkpoint folders of the trainers (params.checkpoints of their rules): not outputs, but
# disk that a run writes.
CHECKPOINTS = {
    "train_predictor": "predictor/checkpoints", "train_segmenter": "segmenter/checkpoints",
    "train_object_classifier": "segmenter/object_classifier_checkpoints",
    "train_forecaster": "forecaster/checkpoints", "train_direct": "direct/checkpoints",
    "train_dynamics": "dynamics/checkpoints",
}
# How a job's memory grows with the data. Jobs of these rules build their whole output in
# memory before writing it (`io.save_array`: one mask per video, 77 MB for the real hidden
# set): their peak grows by their outputs' growth. Every other job streams (`io.array_writer`
# outputs, memory-mapped inputs; tests/test_memory_limits.py runs the stages that read the
# largest caches under a data limit far below them), so what its resident memory gains
# between two sizes is not held data: the pages of memory-mapped caches it touched (the
# kernel reclaims them under a cgroup's limit) and batches filling up (the small size's val
# has 10 videos, under a batch of 16). Its real-size peak is the largest measured.
HOLDS_ITS_OUTPUTS = {"segment", "segment_hidden_shard", "segment_references", "predict_direct",
                     "predict_direct_hidden_shard", "gather_hidden_masks", "submission"}
STEPS_LINE = re.compile(r"from scratch: (\d+) steps \((\d+) epochs × (\d+) batches\)")


def merged_config(files: list[str]) -> dict:
    """The config files merged key by key, later over earlier, as Snakemake does."""
    def merge(base, over):
        for key, value in over.items():
            base[key] = merge(dict(base.get(key) or {}), value) if isinstance(value, dict) else value
        return base

    config: dict = {}
    for name in files:
        merge(config, yaml.safe_load(Path(name).read_text()) or {})
    return config


def run_size(results: Path, real: dict) -> float:
    """The fraction of the real split counts this run had, the same for every split."""
    check = json.loads((results / "data" / "check.json").read_text())
    fractions = {split: info["videos"] / real[split] for split, info in check["splits"].items()}
    low, high = min(fractions.values()), max(fractions.values())
    if high > low * 1.02:
        sys.exit(f"{results}: its splits are not one fraction of the real counts: {fractions}")
    return high


def outputs_by_rule(config_files: list[str]) -> dict[str, list[Path]]:
    """{rule: its output paths} from `snakemake --summary` (Snakemake's own record)."""
    summary = subprocess.run(["snakemake", "--nolock", "--summary", "--configfile", *config_files],
                             check=True, capture_output=True, text=True).stdout
    found: dict[str, list[Path]] = {}
    for row in csv.DictReader(summary.splitlines(), delimiter="\t"):
        found.setdefault(row["rule"], []).append(Path(row["output_file"]))
    return found


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def job_outputs(paths: list[Path], job: str, jobs_of_rule: int) -> list[Path]:
    """The outputs of one job of a rule: all of them for a rule of one job, else those whose
    name or folder carries the job's wildcard value (cache/unlabeled.npy, frames_val.npy)."""
    if jobs_of_rule == 1:
        return paths
    return [p for p in paths if job in p.parts or p.stem == job or p.stem.endswith(f"_{job}")]


def step_seconds(metrics_csv: Path) -> float | None:
    """The mean step time of a training run: its rows' step_seconds weighted by their steps."""
    if not metrics_csv.is_file():
        return None
    total, steps, previous = 0.0, 0, 0
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("step_seconds"):
                n = int(row["step"]) - previous
                total, steps = total + float(row["step_seconds"]) * n, steps + n
            previous = int(row["step"])
    return total / steps if steps else None


def measure_run(config_files: list[str], real: dict) -> tuple[float, dict]:
    """(size, {(rule, job): {measure: value, "steps": (done, real), "step_s": s}})."""
    config = merged_config(config_files)
    results = Path(config["results"])
    size = run_size(results, real)
    outputs = outputs_by_rule(config_files)
    jobs = {}
    for rule, files in benchmark_files(results / "benchmarks").items():
        if rule == "resource_table":
            continue
        for job, path in files:
            bench = read_benchmark(path)
            disk = sum(size_mb(p) for p in job_outputs(outputs.get(rule, []), job, len(files)))
            if rule in CHECKPOINTS:
                disk += size_mb(results / CHECKPOINTS[rule])
            # peak memory: the proportional set size, which counts the pages a job's processes
            # share (a data loader's forked workers) once, as a SLURM cgroup does; the resident
            # set summed over them counts those pages once per process
            peak = bench["max_pss"] if bench["max_pss"] is not None else bench["max_rss"]
            entry = {"time_s": bench["s"], "cpu_s": bench["cpu_time"], "peak_mb": peak, "disk_mb": disk}
            log = results / "logs" / f"{rule}.log"
            found = STEPS_LINE.search(log.read_text()) if rule in CHECKPOINTS and log.is_file() else None
            if found:
                done, epochs, batches = (int(g) for g in found.groups())
                metrics = next((p for p in outputs.get(rule, []) if p.name.endswith("metrics.csv")), None)
                entry["steps"] = (done, round(epochs * batches / size))
                entry["step_s"] = step_seconds(metrics) if metrics else None
            jobs[(rule, job)] = entry
    return size, jobs


def peak_at_real_size(rule: str, peaks: dict[float, float], disk: dict[float, float], disk_real: float) -> float:
    """A job's peak memory at the real size (see HOLDS_ITS_OUTPUTS); tests/test_resources.py
    reads the same columns of the CSV and redoes this."""
    largest = max(peaks)
    grown = disk_real - disk[largest] if rule in HOLDS_ITS_OUTPUTS else 0.0
    return max(peaks.values()) + max(grown, 0.0)


def at_real_size(points: dict[float, dict], measure: str) -> float | None:
    values = [(size, entry[measure]) for size, entry in points.items() if entry.get(measure) is not None]
    if len(values) < 2:
        return None
    if measure in ("time_s", "cpu_s") and all("step_s" in e and e["step_s"] for e in points.values()):
        # training: the line through the non-step part, plus the real run's steps
        largest = points[max(points)]
        done, real_steps = largest["steps"]
        busy = largest["cpu_s"] / largest["time_s"] if measure == "cpu_s" and largest["time_s"] else 1.0
        rest = [(size, value - e["steps"][0] * e["step_s"] * busy)
                for (size, value), e in zip(values, points.values())]
        return max(extrapolate(rest, 1.0), 0.0) + real_steps * largest["step_s"] * busy
    return extrapolate(values, 1.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", action="append", required=True, metavar="CONFIG",
                        help="the config files of one run (repeat for each size)")
    parser.add_argument("--real", default=",".join(f"{k}={v}" for k, v in REAL.items()),
                        help="the real split counts, split=videos,...")
    parser.add_argument("--csv", help="CSV to write: each job's measurements per size and at the real size")
    args = parser.parse_args(argv)
    real = {k: int(v) for k, v in (item.split("=") for item in args.real.split(","))}
    runs = dict(measure_run(files, real) for files in args.run)
    sizes = sorted(runs)
    if len(sizes) < 2:
        sys.exit("give runs of two sizes or more (--run ... --run ...)")
    keys = sorted({key for jobs in runs.values() for key in jobs})
    table = []
    for key in keys:
        points = {size: runs[size][key] for size in sizes if key in runs[size]}
        row = {"rule": key[0], "job": key[1]}
        for measure in MEASURES:
            for size in sizes:
                value = runs[size].get(key, {}).get(measure)
                row[f"{measure}@{size:g}"] = value
            # peak memory scales its own way (peak_at_real_size, below)
            row[f"{measure}@real"] = at_real_size(points, measure) if measure != "peak_mb" else None
        row["peak_mb@real"] = peak_at_real_size(
            key[0], {size: e["peak_mb"] for size, e in points.items() if e["peak_mb"] is not None},
            {size: e["disk_mb"] for size, e in points.items()}, row["disk_mb@real"])
        row["memory"] = "outputs" if key[0] in HOLDS_ITS_OUTPUTS else "streams"
        largest = points[max(points)]
        row["real_steps"] = largest.get("steps", (None, None))[1]
        row["step_s"] = largest.get("step_s")
        table.append(row)
    columns = list(table[0])
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, lineterminator="\n")
            writer.writeheader()
            for row in table:
                writer.writerow({k: "" if v is None else round(v, 3) if isinstance(v, float) else v
                                 for k, v in row.items()})

    def hours(seconds):
        return "" if seconds is None else f"{seconds / 3600:.2f}"

    print(f"sizes measured: {', '.join(f'{s:g}' for s in sizes)} of the real counts ({args.real})")
    print("| rule | job | time at real size (h) | CPU time (h) | peak memory (MB) | disk (GB) | steps (real) | s/step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in table:
        peak, disk, step = row["peak_mb@real"], row["disk_mb@real"], row["step_s"]
        print(f"| {row['rule']} | {row['job']} | {hours(row['time_s@real'])} | {hours(row['cpu_s@real'])} | "
              f"{'' if peak is None else f'{peak:,.0f}'} | {'' if disk is None else f'{disk / 1000:.2f}'} | "
              f"{row['real_steps'] or ''} | {'' if step is None else f'{step:.2f}'} |")

if __name__ == "__main__":
    main()
