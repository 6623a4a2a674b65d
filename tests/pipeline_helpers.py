"""Running the Snakefile on a tiny synthetic dataset, shared by the end-to-end tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_config() -> dict:
    """config.yaml shrunk so the whole chain runs in about a minute on 2 cores."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"]["synthetic"].update(seed=3, height=32, width=48, train=3, val=2, unlabeled=2, hidden=2)
    config["data"]["workers"] = 1
    config["predictor"].update(epochs=1, batch_size=2, checkpoint_every=50)
    config["predictor"]["simvp"].update(hid_S=8, hid_T=16, N_S=2, N_T=2)
    # the demo trains its segmenter on real frames only; the tests exercise generated + blurred frames too
    config["augment"].update(frameskip=3, generated=True, blur_prob=0.3)
    config["segmenter"]["checkpoint_every"] = 50
    config["segmenter"]["unet"].update(base_channels=4, depth=2, epochs=1, batch_size=8)
    config["segmenter"]["maskrcnn"].update(epochs=1, batch_size=2)
    config["forecaster"].update(epochs=1, iou_finetune_epochs=1, batch_size=2, checkpoint_every=50)
    config["forecaster"]["simvp"].update(embed_dim=4, hid_S=4, hid_T=8, N_S=2, N_T=2)
    config["direct"].update(base_channels=4, depth=2, epochs=1, batch_size=2, checkpoint_every=50)
    config["eval"]["report_examples"] = 2
    for entry in config["resources"].values():
        if isinstance(entry, dict):
            entry.update(threads=1, mem_mb=1000, runtime=20)
    config["resources"]["hidden_shards"] = 2  # exercises scatter/gather
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
