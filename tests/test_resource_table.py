"""`futureseg resource-table` on hand-written Snakemake benchmark files: one row per job beside
its rule's request, an empty row for a rule without a file, the file named when one is bad."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from futureseg.core.errors import DataError
from futureseg.evaluate.resource_table import read_benchmark, run

REPO = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
REQUESTS = {
    "cache_frames": {"threads": 2, "mem_mb": 4000, "runtime": 30, "gpu": 0},
    "train_segmenter": {"threads": 2, "mem_mb": 16000, "runtime": 240, "gpu": 1},
    "segment": {"threads": 2, "mem_mb": 16000, "runtime": 60, "gpu": 1},  # run by hand: no benchmark file
    "segment_references": {"threads": 2, "mem_mb": 16000, "runtime": 60, "gpu": 1},
}


def write(folder, name, *records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(HEADER + "".join(records))


@pytest.fixture
def benchmarks(tmp_path):
    folder = tmp_path / "benchmarks"
    write(folder, "cache_frames.val.tsv", "12.5000\t0:00:12\t800.00\t900.00\t700.00\t750.00\t1.00\t2.00\t150.00\t18.75\n")
    write(folder, "cache_frames.train.tsv", "30.0000\t0:00:30\t1000.00\t1100.00\t900.00\t950.00\t1.00\t2.00\t190.00\t57.00\n")
    # two records (Snakemake's repeat): each column's largest
    write(folder, "train_segmenter.tsv", "7200.0000\t2:00:00\t12000.00\t1\t1\t11000.00\t1\t1\t100.00\t7000.00\n",
          "3600.0000\t1:00:00\t14000.00\t1\t1\t13000.00\t1\t1\t100.00\t3500.00\n")
    # a job faster than Snakemake's sampling: no memory or CPU figures
    write(folder, "segment_references.tsv", "0.4000\t0:00:00\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    # not a rule of the table (its own benchmark): not shown
    write(folder, "resource_table.tsv", "1.0000\t0:00:01\t100.00\t1\t1\t1\t1\t1\t1\t1\n")
    return folder


def test_each_job_beside_its_request_and_an_empty_row_for_a_rule_run_by_hand(benchmarks, tmp_path):
    table = run(benchmarks, REQUESTS, tmp_path / "report" / "resources.csv", tmp_path / "report" / "resources.html")
    assert [(row["rule"], row["job"]) for row in table] == [
        ("cache_frames", "train"), ("cache_frames", "val"), ("train_segmenter", ""), ("segment", ""),
        ("segment_references", "")]
    train = table[0]
    assert (train["s"], train["cpu_time"], train["max_rss"]) == (30.0, 57.0, 1000.0)
    # memory used: the proportional set size (shared pages once), not the summed resident sets
    assert train["max_pss"] == 950.0 and train["mem_used"] == pytest.approx(950 / 4000)
    assert train["runtime_used"] == pytest.approx(30 / 1800)
    segmenter = table[2]
    assert (segmenter["s"], segmenter["max_rss"], segmenter["cpu_time"]) == (7200.0, 14000.0, 7000.0)
    assert segmenter["runtime_used"] == pytest.approx(0.5) and segmenter["gpu"] == 1
    by_hand, fast = table[3], table[4]
    assert by_hand["s"] is by_hand["max_rss"] is by_hand["mem_used"] is None and by_hand["mem_mb"] == 16000
    assert fast["s"] == 0.4 and fast["max_rss"] is None and fast["mem_used"] is None

    with open(tmp_path / "report" / "resources.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[3] == {"rule": "segment", "job": "", "s": "", "cpu_time": "", "max_rss": "", "max_pss": "", "threads": "2",
                       "mem_mb": "16000", "runtime": "60", "gpu": "1", "mem_used": "", "runtime_used": ""}
    assert rows[2]["max_rss"] == "14000.0" and rows[2]["max_pss"] == "13000.0" and rows[2]["mem_used"] == "0.8125"
    page = (tmp_path / "report" / "resources.html").read_text()
    assert "<td>train_segmenter</td><td></td><td>7200.0</td><td>7000.0</td><td>14000.0</td><td>13000.0</td>" in page
    assert "<td>81.2%</td><td>50.0%</td>" in page and "resource_table" not in page.split("<table>")[1]


def test_no_benchmark_folder_yet_gives_empty_rows(tmp_path):
    table = run(tmp_path / "none", REQUESTS, tmp_path / "r.csv", tmp_path / "r.html")
    assert [row["s"] for row in table] == [None] * len(REQUESTS)


@pytest.mark.parametrize("text, message", [
    ("", "not a Snakemake benchmark file (its header has no column s, cpu_time, max_rss)"),
    ("wall\tmemory\n1\t2\n", "not a Snakemake benchmark file (its header has no column s, cpu_time, max_rss)"),
    (HEADER, "benchmark file without a record (a header only)"),
    (HEADER + "1.0\t0:00:01\tlots\t1\t1\t1\t1\t1\t1\t1\n", "line 2, column max_rss: 'lots' is not a number"),
    (HEADER + "1.0\t0:00:01\t100\n", "line 2 has 3 columns, the header 10"),
], ids=["empty", "other-header", "no-record", "not-a-number", "short-line"])
def test_a_malformed_benchmark_is_named(tmp_path, text, message):
    path = tmp_path / "benchmarks" / "segment.tsv"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(DataError, match=f"^{path}: ") as error:
        read_benchmark(path)
    assert message in str(error.value)
    # the verb: one line naming the file, nothing written
    proc = subprocess.run([sys.executable, "-m", "futureseg", "resource-table", "--benchmarks", str(path.parent),
                           "--requests", '{"segment": {"threads": 1, "mem_mb": 1000, "runtime": 5, "gpu": 1}}',
                           "--csv", str(tmp_path / "r.csv"), "--html", str(tmp_path / "r.html")],
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr.strip() == f"futureseg resource-table: error: {path}: {message}"
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.html").exists()
