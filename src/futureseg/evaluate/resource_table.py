"""`futureseg resource-table`: where the time goes, and how close each job runs to its limits.

Every rule writes Snakemake's benchmark file (`benchmark:`) to `<results>/benchmarks/`, named
`RULE.tsv`, or `RULE.WILDCARDS.tsv` for a rule with wildcards (a dot, which no rule name has,
ends the rule's name: rule names hold underscores). This verb puts each job's wall time, CPU
time and peak memory (max_rss, and max_pss: the pages its processes share counted once)
beside its rule's resources request (threads, mem_mb, runtime in minutes, gpu) and the
fraction of mem_mb (max_pss's, where measured) and runtime it used, as CSV and an HTML table.

A rule without a benchmark file (a stage run by hand, or one this config does not run) gets
one row with its request and empty measurements; a benchmark file that is not Snakemake's
stops the verb with the file named.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import math
from pathlib import Path

from futureseg.core.errors import ConfigError, DataError
from futureseg.core.io import atomic_path

# The columns of Snakemake's benchmark TSV that the table reads: wall seconds, peak resident
# memory (MB) and CPU seconds (user + system) of the job's processes.
MEASURED = ("s", "cpu_time", "max_rss")
# The request keys of a rule (--requests): what Snakemake and the SLURM profile ask for.
REQUESTED = ("threads", "mem_mb", "runtime", "gpu")
# (header, key) of the table's columns, in order.
COLUMNS = (
    ("rule", "rule"),
    ("job", "job"),
    ("time (s)", "s"),
    ("CPU time (s)", "cpu_time"),
    ("peak memory (MB)", "max_rss"),
    ("peak memory, shared pages once (MB)", "max_pss"),
    ("threads", "threads"),
    ("mem_mb", "mem_mb"),
    ("runtime (min)", "runtime"),
    ("gpu", "gpu"),
    ("memory used", "mem_used"),
    ("runtime used", "runtime_used"),
)


def read_benchmark(path) -> dict[str, float | None]:
    """{s, cpu_time, max_rss, max_pss} of one benchmark file; with several records
    (Snakemake's `repeat`), each column's largest, the one that meets the limits first. None
    where Snakemake could not measure (NA: a job faster than its sampling) or, for max_pss
    (the proportional set size: pages shared between a job's processes, such as a data
    loader's forked workers, counted once, as a SLURM cgroup charges them), where the file
    has no such column."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable benchmark file ({exc})") from None
    header = lines[0].split("\t") if lines else []
    missing = [name for name in MEASURED if name not in header]
    if missing:
        raise DataError(f"{path}: not a Snakemake benchmark file (its header has no column {', '.join(missing)})")
    if len(lines) < 2:
        raise DataError(f"{path}: benchmark file without a record (a header only)")
    read = (*MEASURED, *(["max_pss"] if "max_pss" in header else []))
    values = {name: [] for name in (*MEASURED, "max_pss")}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataError(f"{path}: line {number} has {len(cells)} columns, the header {len(header)}")
        for name in read:
            text = cells[header.index(name)].strip()
            if text in ("NA", "-"):  # Snakemake's "not measured" and "None"
                continue
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{path}: line {number}, column {name}: {text!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise DataError(f"{path}: line {number}, column {name}: {text!r} is not a measurement")
            values[name].append(value)
    return {name: max(found) if found else None for name, found in values.items()}


def benchmark_files(folder) -> dict[str, list[tuple[str, Path]]]:
    """{rule: [(job's wildcards, path), ...]} of the benchmark files in `folder` (none when it
    does not exist yet), each rule's sorted by wildcards."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(Path(folder).glob("*.tsv")):
        rule, _, job = path.name.removesuffix(".tsv").partition(".")
        found.setdefault(rule, []).append((job, path))
    return found


def extrapolate(points, at: float) -> float:
    """A figure measured at two or more sizes, [(size, value), ...] (size: the fraction of the
    real split counts a run had), on the least-squares line through them at size `at`; never
    below the largest value measured (two noisy points can slope down; no job needs less at a
    larger size). The scale benchmark's extrapolation to the real dataset (docs/results.md)."""
    sizes = [float(size) for size, _ in points]
    values = [float(value) for _, value in points]
    if len(set(sizes)) < 2:
        raise ValueError(f"extrapolate: need measurements at two sizes or more, got sizes {sizes}")
    mean_size, mean_value = sum(sizes) / len(sizes), sum(values) / len(values)
    slope = (sum((x - mean_size) * (y - mean_value) for x, y in zip(sizes, values))
             / sum((x - mean_size) ** 2 for x in sizes))
    return max(mean_value + slope * (at - mean_size), max(values))


def check_requests(requests) -> dict[str, dict]:
    if not isinstance(requests, dict) or not requests:
        raise ConfigError(f"--requests: expected a JSON object {{rule: {{{', '.join(REQUESTED)}}}}}, got {requests!r}")
    for rule, request in requests.items():
        if not isinstance(request, dict) or set(request) != set(REQUESTED):
            raise ConfigError(f"--requests: rule {rule}: expected the keys {', '.join(REQUESTED)}, got {request!r}")
    return requests


def _fraction(used, limit):
    return None if used is None or not limit else used / limit


def rows(benchmarks_folder, requests: dict) -> list[dict]:
    """One row per job of each rule of `requests` (in its order), or one empty row for a rule
    without a benchmark file. Benchmark files of other rules (the table's own, a rule since
    renamed) are not shown."""
    files = benchmark_files(benchmarks_folder)
    table = []
    for rule, request in check_requests(requests).items():
        for job, path in files.get(rule) or [("", None)]:
            measured = read_benchmark(path) if path is not None else dict.fromkeys((*MEASURED, "max_pss"))
            # what a SLURM cgroup charges: pages the job's processes share (a data loader's
            # forked workers) once; max_rss counts them once per process
            peak = measured["max_pss"] if measured["max_pss"] is not None else measured["max_rss"]
            runtime_s = request["runtime"] * 60 if request["runtime"] else None
            table.append({"rule": rule, "job": job, **measured, **request,
                          "mem_used": _fraction(peak, request["mem_mb"]),
                          "runtime_used": _fraction(measured["s"], runtime_s)})
    return table


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key in ("mem_used", "runtime_used"):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def to_csv(table: list[dict]) -> str:
    """Raw numbers (fractions as fractions), empty where not measured."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([key for _, key in COLUMNS])
    for row in table:
        writer.writerow(["" if row[key] is None else round(row[key], 4) if isinstance(row[key], float) else row[key]
                         for _, key in COLUMNS])
    return out.getvalue()


def to_html(table: list[dict], folder) -> str:
    measured = [row for row in table if row["s"] is not None]
    total = sum(row["s"] for row in measured)
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in COLUMNS)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(key, row[key]))}</td>" for _, key in COLUMNS) + "</tr>"
        for row in table
    )
    note = (f"{len(measured)} jobs measured, {total:.0f} s of job time in all, from Snakemake's benchmark files in "
            f"{folder}. Memory used: peak resident memory over mem_mb; runtime used: wall time over runtime. "
            "A rule without a benchmark file (run by hand, or not run by this config) has an empty row.")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>resources</title>'
        "<style>body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:2px 6px} td{text-align:right} td:nth-child(-n+2){text-align:left}"
        "</style></head><body>\n"
        f"<p>{html.escape(note)}</p>\n<table>\n<tr>{head}</tr>\n{body}\n</table>\n</body></html>\n"
    )


def run(benchmarks_folder, requests: dict, out_csv, out_html) -> list[dict]:
    """Read everything, then write both tables (each renamed into place)."""
    table = rows(benchmarks_folder, requests)
    texts = ((out_csv, to_csv(table)), (out_html, to_html(table, benchmarks_folder)))
    with contextlib.ExitStack() as stack:
        for path, text in texts:
            stack.enter_context(atomic_path(path)).write_text(text, encoding="utf-8")
    return table


VERB = "resource-table"
HELP = "each job's benchmark (time, CPU time, peak memory) beside its rule's resources request, as CSV and HTML"


def add_arguments(parser) -> None:
    from futureseg.core.flags import json_object

    parser.add_argument("--benchmarks", required=True, help="folder of Snakemake's benchmark files (RULE[.WILDCARDS].tsv)")
    parser.add_argument("--requests", type=json_object, required=True,
                        help='each rule\'s request as JSON, in table order: {"RULE": {"threads": 2, "mem_mb": 4000, '
                             '"runtime": 30, "gpu": 0}, ...}')
    parser.add_argument("--csv", required=True, help="CSV table to write")
    parser.add_argument("--html", required=True, help="HTML table to write")


def main(args) -> None:
    table = run(args.benchmarks, args.requests, args.csv, args.html)
    measured = sum(row["s"] is not None for row in table)
    print(f"{len(table)} rows ({measured} measured) -> {args.csv}, {args.html}")
