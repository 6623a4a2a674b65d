"""`snakemake --lint` finds nothing to say about the workflow, with the default config and with
the test config: a rule file that grows its own functions (they belong in common.smk), or a
comment in common.smk that reads like a rule's header, fails here rather than in review."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", [[], ["--configfile", ".test/config.yaml"]], ids=["config", "test-config"])
def test_snakemake_lint_is_clean(extra):
    # `python -m snakemake`: the Snakemake of the interpreter running the tests, not whatever
    # `snakemake` is first on PATH.
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    output = run.stdout + run.stderr
    # --lint exits 1 when it has lints, but only "Lints for" tells them from other warnings.
    assert run.returncode == 0 and "lints for" not in output.lower(), output
