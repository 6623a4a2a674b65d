"""config.yaml's `resources` against the scale benchmark's measurements (docs/scale.csv,
written by bench/scale_table.py from workflow/benchmarks/scale.yaml run at two sizes).

Every rule the default config runs was measured, and each job's peak memory scaled to the
real dataset as the table scales it (the largest measured, plus the growth of the outputs of
a job that holds them in memory) fits under its rule's `mem_mb` with MARGIN to spare; a GPU
rule also has room for torch's CUDA context, which a CPU-only benchmark cannot measure.
Lowering a `mem_mb` below that, or a change that makes a stage hold more per video, fails
here once the benchmark is rerun.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from futureseg.evaluate.resource_table import extrapolate

REPO = Path(__file__).resolve().parents[1]
SCALE_CSV = REPO / "docs" / "scale.csv"
# The request must exceed the extrapolated peak by this factor: the line through two sizes
# is an estimate, and the real videos are not the synthetic ones.
MARGIN = 1.25
# Host memory of torch's CUDA context, its kernels and cuDNN/cuBLAS on a GPU node (not
# measured: the benchmark ran on CPUs); typically 1-2 GB.
CUDA_HOST_MB = 2000


@pytest.fixture(scope="module")
def requests(tmp_path_factory) -> dict:
    """Each rule's request under config.yaml, as Snakemake asks for it (the resource table's
    own --requests, from a dry run)."""
    results = tmp_path_factory.mktemp("requests")
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--nolock", "--configfile", "config.yaml",
                          "--config", f"results={results}"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr[-3000:]
    found = re.search(r"futureseg resource-table .*?--requests '(\{.*?\})'", dry.stdout)
    assert found, dry.stdout[-3000:]
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def measured() -> dict[str, list[dict]]:
    """{rule: its jobs' rows} of docs/scale.csv."""
    with open(SCALE_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row["rule"], []).append(row)
    return found


def measured_at(row: dict, measure: str) -> dict[float, float]:
    return {float(column.split("@")[1]): float(value) for column, value in row.items()
            if column.startswith(f"{measure}@") and column != f"{measure}@real" and value}


def peak_at_real_size(row: dict) -> float:
    """The largest peak measured, plus, for a job that holds its outputs in memory, their
    growth to the real size (bench/scale_table.py, HOLDS_ITS_OUTPUTS, says why streaming
    jobs do not grow)."""
    peaks, disk = measured_at(row, "peak_mb"), measured_at(row, "disk_mb")
    grown = float(row["disk_mb@real"]) - disk[max(disk)] if row["memory"] == "outputs" else 0.0
    return max(peaks.values()) + max(grown, 0.0)


def test_every_rule_of_the_default_config_was_measured(requests, measured):
    # dynamics_prior runs with forecaster.prior: dynamics only, not in the default config;
    # doctor, the pre-flight check, is no stage of a run (a target the user names)
    missing = set(requests) - set(measured) - {"dynamics_prior", "doctor"}
    assert not missing, f"rules without a scale measurement (rerun the scale benchmark): {sorted(missing)}"


def test_each_rules_memory_at_the_real_size_fits_its_request(requests, measured):
    too_small = []
    for rule, rows in measured.items():
        if rule not in requests:
            continue
        request = requests[rule]
        need = max(peak_at_real_size(row) for row in rows) * MARGIN + (CUDA_HOST_MB if request["gpu"] else 0)
        if request["mem_mb"] < need:
            too_small.append(f"{rule}: mem_mb {request['mem_mb']} < {need:.0f}")
    assert not too_small, "; ".join(too_small)


def test_the_table_extrapolates_as_the_test_does(measured):
    # the CSV's own real-size column is the same figure from the same measurements
    for rows in measured.values():
        for row in rows:
            if row["peak_mb@real"]:
                assert float(row["peak_mb@real"]) == pytest.approx(peak_at_real_size(row), rel=1e-3, abs=0.01)


def test_extrapolate_is_a_line_through_the_points_never_below_them():
    assert extrapolate([(0.05, 100.0), (0.1, 150.0)], 1.0) == pytest.approx(1050.0)
    # a slope down (noise) stops at the largest measurement
    assert extrapolate([(0.05, 300.0), (0.1, 290.0)], 1.0) == 300.0
    with pytest.raises(ValueError, match="two sizes"):
        extrapolate([(0.1, 1.0), (0.1, 2.0)], 1.0)


def test_readme_resources_table_is_the_workflows():
    """README's "Resources" table (entry → the rules that take it) is what the workflow does:
    every rule once, under its own entry in config.yaml's `resources`, else its group's
    (common.smk: RESOURCE_GROUPS), else `default`."""
    import ast

    import yaml

    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    groups = ast.literal_eval(re.search(r"(?ms)^RESOURCE_GROUPS = (\{.*?\n\})", common).group(1))
    entries = yaml.safe_load((REPO / "config.yaml").read_text())["resources"]
    rules = [name for smk in sorted((REPO / "workflow" / "rules").glob("*.smk"))
             for name in re.findall(r"(?m)^rule (\w+):", smk.read_text())]
    expected = {rule: rule if rule in entries else groups.get(rule, "default") for rule in rules}
    section = (REPO / "README.md").read_text().split("### Resources", 1)[1].split("\n#", 1)[0]
    table = {}
    for entry, names in re.findall(r"^\| `(\w+)` \| (.*) \|$", section, flags=re.MULTILINE):
        for rule in re.findall(r"`(\w+)`", names):
            assert rule not in table, f"README lists {rule} twice"
            table[rule] = entry
    assert table == expected
    # every group is a real entry of config.yaml, so a rule of a group never falls to default by mistake
    assert set(groups.values()) <= set(entries), set(groups.values()) - set(entries)
