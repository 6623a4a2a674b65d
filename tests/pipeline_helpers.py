"""Running the Snakefile on a tiny synthetic dataset, shared by the end-to-end tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def merged(base: dict, override: dict) -> dict:
    """`override` merged into `base` key by key, nested sections too (as Snakemake merges
    a --configfile over the Snakefile's configfile)."""
    result = dict(base)
    for key, value in override.items():
        result[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return result


def tiny_config() -> dict:
    """config.yaml with .test/config.yaml over it: the whole chain in about a minute on 2 cores.
    The tests write it into their own folder; results and data paths are relative to it."""
    config = merged(yaml.safe_load((REPO / "config.yaml").read_text()),
                    yaml.safe_load((REPO / ".test" / "config.yaml").read_text()))
    # inside a test's own folder, the plain paths the tests look for
    config["results"] = "results"
    config["data"]["synthetic"]["folder"] = "resources/synthetic"
    return config


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(workdir: Path, *args: str, override: dict | None = None) -> list[str]:
    """The command that runs the repository's Snakefile in `workdir` on its config.yaml;
    `override` is a partial config merged on top (Snakemake merges later --configfile
    entries key by key)."""
    configfiles = [str(workdir / "config.yaml")]
    if override:
        extra = workdir / "override.yaml"
        extra.write_text(yaml.safe_dump(override))
        configfiles.append(str(extra))
    return [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
        "--configfile", *configfiles, *args,
    ]


def snakemake(workdir: Path, *args: str, override: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in `workdir` (see snakemake_command)."""
    command = snakemake_command(workdir, *args, override=override)
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, *args: str, override: dict | None = None) -> dict[str, int]:
    """Rules a dry run would execute, with their job counts ({} when nothing is to be done)."""
    output = snakemake(workdir, "--dry-run", *args, override=override).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match or match.group(1) == "total":
            break
        jobs[match.group(1)] = int(match.group(2))
    return jobs


def planned_resources(dry_run_output: str) -> list[tuple[str, dict]]:
    """(rule, {resource: value}) of every job a `snakemake -n` output plans, read from its
    `resources:` lines (rule all, which has none, left out)."""
    jobs = []
    for rule, body in re.findall(r"(?ms)^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", dry_run_output):
        found = re.search(r"^\s+resources: (.*)$", body, flags=re.MULTILINE)
        if rule != "all" and found:
            jobs.append((rule, dict(item.split("=", 1) for item in found.group(1).split(", "))))
    return jobs
