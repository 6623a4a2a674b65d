"""`futureseg doctor`, the pre-flight check: its lines on this machine, the driver/CUDA table, the
SLURM checks (with sinfo and sacctmgr faked), the disk check, and rule doctor."""

import os
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from futureseg import cli
from futureseg.core import training
from futureseg.data import doctor
from pipeline_helpers import REPO, merged, snakemake, planned_jobs, tiny_config, write_config


@pytest.fixture
def outside_slurm_gpu_job(monkeypatch):
    """The tests' own environment as a login node's: no SLURM GPU allocation."""
    for name in training.SLURM_GPU_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(training.ALLOW_CPU_VARIABLE, "0")


def fake_commands(folder: Path, scripts: dict[str, str]) -> dict:
    """Executables named like the keys (bash bodies), first on PATH: the environment to run with."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/bash\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {k: v for k, v in os.environ.items() if k not in training.SLURM_GPU_VARIABLES}
    return {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}", training.ALLOW_CPU_VARIABLE: "0"}


# a SLURM with one partition, debug (the default, with GPUs), and no accounting database
SINFO = """case "$*" in
  "-h -o %P") echo "debug*" ;;
  "-h -p debug -o %P|%G|%a") echo "debug|gpu:2|up" ;;
esac"""


def commands(table: dict):
    """A run_command stand-in: argv → (status, output) from `table` (keyed by the argv joined),
    None for a command whose program is not in it (not installed)."""

    def run(argv):
        key = " ".join(argv)
        if key in table:
            return table[key]
        return None if not any(k.split()[0] == argv[0] for k in table) else (0, "")

    return run


# ---------------------------------------------------------------------------------- this machine


def test_the_verb_runs_here_and_reports_torch(tiny_dataset, tmp_path, monkeypatch, capsys, outside_slurm_gpu_job):
    # no nvidia-smi, no SLURM: what a laptop has; the GPUs torch sees are this machine's
    monkeypatch.setattr(doctor, "run_command", commands({}))
    out = tmp_path / "doctor" / "report.txt"
    argv = ["doctor", "--root", str(tiny_dataset), "--results", str(tmp_path / "results"), "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split(None, 1)[0] in ("OK", "WARN") and f"torch: {torch.__version__}" in printed[0]
    assert f"CUDA build {torch.version.cuda}" in printed[0] or torch.version.cuda is None
    assert printed[1].startswith("WARN NVIDIA driver: no nvidia-smi here")
    assert [line.split(":")[0].split(None, 1)[1] for line in printed] == [
        "torch", "NVIDIA driver", "GPUs", "SLURM", "dataset", "disk"]
    assert printed[3] == "OK   SLURM: no SLURM here (no sinfo): a local run"
    assert printed[4].startswith(f"OK   dataset: {tiny_dataset}: train 3, val 2, unlabeled 2, hidden 2 videos, frames 32x48")
    assert printed[5].startswith("OK   disk: ") and "GB free on the filesystem of" in printed[5]
    # the report holds the same lines, written atomically
    assert out.read_text().splitlines() == printed
    assert [p.name for p in out.parent.iterdir()] == ["report.txt"]


def test_any_fail_exits_non_zero_after_every_line_and_writes_no_report(dataset_copy, tmp_path, monkeypatch, capsys,
                                                                       outside_slurm_gpu_job):
    monkeypatch.setattr(doctor, "run_command", commands({}))
    (dataset_copy / "val" / "video_00003" / "image_4.png").unlink()
    out = tmp_path / "report.txt"
    assert cli.main(["doctor", "--root", str(dataset_copy), "--results", str(tmp_path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[-2].startswith("FAIL dataset: ") and "image_4.png" in lines[-2]
    assert lines[-1].startswith("OK   disk: ")  # the check after the failure still ran
    assert captured.err.strip() == f"futureseg doctor: error: 1 of 6 checks failed (dataset); {out} not written"
    assert not list(tmp_path.glob("*report*"))


# ------------------------------------------------------------------------------ driver and CUDA


@pytest.mark.parametrize("cuda, driver, supported", [
    ("13.0", "580.65.06", True),
    ("13.2", "580.65.06", True),     # minor-version compatibility within CUDA 13
    ("13.0", "575.57.08", False),    # a CUDA 12.9 driver
    ("12.6", "525.60.13", True),
    ("12.8", "535.104.05", True),    # a cu128 build on a CUDA 12.2 driver
    ("12.6", "525.60.11", False),
    ("12.6", "470.82.01", False),
    ("12.6", "580.65.06", True),     # newer drivers run older builds
    ("11.8", "450.80.02", True),
    ("11.8", "450.51.06", False),
    ("10.2", "440.33.01", True),     # before CUDA 11: the toolkit's own driver
    ("10.2", "418.39", False),
    ("9.2", "396.26", None),         # older than the table
    ("14.0", "600.10", None),        # newer than the table
])
def test_driver_supports_the_cuda_minor_version_compatibility_table(cuda, driver, supported):
    assert doctor.driver_supports(cuda, driver) is supported


def test_driver_check_names_the_driver_and_what_it_needs(monkeypatch, outside_slurm_gpu_job):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    smi = "nvidia-smi --query-gpu=driver_version --format=csv,noheader"
    old = doctor.driver_check(False, commands({smi: (0, "535.104.05\n535.104.05")}))
    assert old.line() == ("FAIL NVIDIA driver: 535.104.05 is too old for torch's CUDA 13.0 build (needs >= 580): "
                          "install a torch built for an older CUDA (README, Install) or ask for a newer driver")
    assert doctor.driver_check(False, commands({smi: (0, "580.82.07")})).line() == (
        "OK   NVIDIA driver: 580.82.07 runs torch's CUDA 13.0 build (needs >= 580)")
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    assert "(needs >= 525.60.13)" in doctor.driver_check(False, commands({smi: (0, "550.54.15")})).line()
    # nvidia-smi there but no driver: a WARN on a login node, a FAIL in a GPU job
    broken = commands({smi: (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")})
    assert doctor.driver_check(False, broken).status == "WARN"
    assert doctor.driver_check(True, broken).line().startswith("FAIL NVIDIA driver: nvidia-smi failed (exit 9)")
    assert doctor.driver_check(True, commands({})).line() == "FAIL NVIDIA driver: no nvidia-smi here"


def test_a_cpu_only_or_untested_torch_is_reported(monkeypatch):
    monkeypatch.setattr(doctor, "pinned_torch", lambda: "2.14.1")
    monkeypatch.setattr(torch, "__version__", "2.14.1+cpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert doctor.torch_check(False).line().startswith("WARN torch: 2.14.1+cpu is a CPU-only build")
    assert doctor.torch_check(True).status == "FAIL"  # in a SLURM GPU job
    monkeypatch.setattr(torch, "__version__", "2.13.0+cu126")
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    assert doctor.torch_check(False).line() == (
        "WARN torch: 2.13.0+cu126, CUDA build 12.6; not the tested torch==2.14.1: reinstall it (README, Install)")
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu126")
    assert doctor.torch_check(True).line() == "OK   torch: 2.14.1+cu126, CUDA build 12.6"


def test_a_gpu_job_without_gpus_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert doctor.gpu_check(True, allow_cpu=False).line().startswith("FAIL GPUs: SLURM gave this job GPUs but torch")
    assert doctor.gpu_check(True, allow_cpu=True).status == "WARN"
    assert doctor.gpu_check(False, allow_cpu=False).status == "WARN"
    Props = namedtuple("Props", "name total_memory")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props(f"NVIDIA H200 #{i}", 141 * 2**30))
    assert doctor.gpu_check(True, allow_cpu=False).line() == (
        "OK   GPUs: 2: 0 NVIDIA H200 #0 (141.0 GiB), 1 NVIDIA H200 #1 (141.0 GiB)")


# ------------------------------------------------------------------------------------------ SLURM


def test_a_partition_that_does_not_exist_is_a_fail_naming_it(tmp_path):
    # the real command on PATH, with an sinfo that lists nothing (no such partition)
    env = fake_commands(tmp_path / "bin", {"sinfo": "exit 0"})
    result = subprocess.run([sys.executable, "-m", "futureseg", "doctor", "--partition", "nosuch",
                             "--results", str(tmp_path)], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert ("FAIL SLURM partition: nosuch does not exist (`sinfo -h -p nosuch` lists nothing; `sinfo -s` lists the "
            "partitions)") in result.stdout.splitlines()
    assert result.stdout.splitlines()[0].split(":")[0].endswith("torch")
    assert result.stderr.strip().splitlines()[-1].startswith("futureseg doctor: error: 1 of ")


def test_slurm_checks(tmp_path):
    listing = {"sinfo -h -o %P": (0, "debug*\ncpu\ngpu\ndown")}
    partitions = {"sinfo -h -p cpu -o %P|%G|%a": (0, "cpu|(null)|up"),
                  "sinfo -h -p gpu -o %P|%G|%a": (0, "gpu|gpu:a100:4|up\ngpu|gpu:a100:4(S:0-1)|up"),
                  "sinfo -h -p debug -o %P|%G|%a": (0, "debug|(null)|up"),
                  "sinfo -h -p down -o %P|%G|%a": (0, "down|gpu:1|inact")}
    accounting = {"sacctmgr -nP show assoc user=ann account=acme format=account": (0, "acme"),
                  "sacctmgr -nP show assoc user=ann account=other format=account": (0, ""),
                  "sacctmgr -nP show qos name=normal format=name": (0, "normal")}
    run = commands({**listing, **partitions, **accounting})

    def lines(**named):
        return [check.line() for check in doctor.slurm_checks(**named, run=run, user="ann")]

    assert lines(partition="cpu", gpu_partition="gpu", account="acme", qos="normal") == [
        "OK   SLURM partition: cpu exists",
        "OK   SLURM GPU partition: gpu exists, GPUs gpu:a100:4, gpu:a100:4(S:0-1)",
        "OK   SLURM account: acme exists",
        "OK   SLURM QoS: normal exists",
    ]
    # the GPU jobs go to `partition` when no gpu_partition is named, else the default partition
    assert lines(partition="cpu")[0].startswith("WARN SLURM partition: cpu takes the GPU jobs but lists no GPUs")
    assert lines()[0].startswith("WARN SLURM partition: none named, so the default one: debug takes the GPU jobs")
    assert lines(gpu_partition="gpu")[:2] == ["OK   SLURM partition: none named, so the default one: debug exists",
                                              "OK   SLURM GPU partition: gpu exists, GPUs gpu:a100:4, gpu:a100:4(S:0-1)"]
    assert lines(gpu_partition="down")[1] == "WARN SLURM GPU partition: down exists but is inact: its jobs wait"
    assert lines(gpu_partition="gpus")[1].startswith("FAIL SLURM GPU partition: gpus does not exist")
    assert lines(gpu_partition="gpu", account="other")[-1] == (
        "FAIL SLURM account: other: user ann has no association with it (`sacctmgr show assoc user=ann` lists yours)")
    assert lines(gpu_partition="gpu", qos="high")[-1] == "FAIL SLURM QoS: high: no such QoS (`sacctmgr show qos` lists them)"
    # a cluster without an accounting database (slurm/local-cluster.sh): not checked
    no_db = commands({**listing, **partitions, "sacctmgr -nP show assoc user=ann account=acme format=account":
                      (1, "You are not running a supported accounting_storage plugin")})
    found = doctor.slurm_checks(gpu_partition="gpu", account="acme", run=no_db, user="ann")[-1]
    assert found.status == "WARN" and "acme: not checked, sacctmgr failed (exit 1" in found.detail
    # no SLURM at all
    assert [c.line() for c in doctor.slurm_checks(run=commands({}))] == ["OK   SLURM: no SLURM here (no sinfo): a local run"]
    assert [c.line() for c in doctor.slurm_checks(partition="cpu", account="acme", run=commands({}))] == [
        "WARN SLURM: no SLURM here (no sinfo): cpu, acme not checked; run this on the cluster's login node"]


# ------------------------------------------------------------------------------------------ disk


SCALE = """rule,job,disk_mb@0.01,disk_mb@real,memory
synth_dataset,,7.0,7000.0,streams
cache_frames,train,1.0,100.0,streams
cache_frames,val,1.0,50.5,streams
check_data,,0.0,0.0,streams
"""


def test_disk_check_against_the_scale_table(tmp_path, monkeypatch):
    scale = tmp_path / "scale.csv"
    scale.write_text(SCALE)
    # every job a real run runs, the synthetic dataset aside
    assert doctor.disk_need_mb(scale) == pytest.approx(150.5)
    usage = namedtuple("usage", "total used free")
    seen = []

    def disk_usage(path, free_mb):
        seen.append(Path(path))
        return usage(10**12, 0, free_mb * 10**6)

    results = tmp_path / "results" / "not" / "made"  # a results folder not made yet: its filesystem
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: disk_usage(path, 100))
    short = doctor.disk_check(results, scale)
    assert short.line() == (f"FAIL disk: only 0.1 GB free on the filesystem of {results}; a real run writes 0.2 GB "
                            f"({scale}: disk_mb@real summed, synth_dataset aside): free space, or point `results` "
                            "elsewhere")
    assert seen[-1] == tmp_path
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: disk_usage(path, 200))
    assert doctor.disk_check(results, scale).status == "OK"
    assert doctor.disk_check(results).line().endswith("(no --scale-csv: a real run's need not checked)")
    # a table that is not the scale benchmark's: a FAIL naming the file and what it lacks
    scale.write_text("rule,job,disk_mb@0.01\nsynth_dataset,,7.0\n")
    assert doctor.disk_check(results, scale).line() == (
        f"FAIL disk: {scale}: expected a CSV with columns rule and disk_mb@real (bench/scale_table.py writes it)")
    scale.write_text(SCALE.replace("50.5", "lots"))
    assert doctor.disk_check(results, scale).line() == f"FAIL disk: {scale}: line 4: disk_mb@real 'lots' is not a number"
    assert doctor.disk_check(results, tmp_path / "none.csv").line().startswith(
        f"FAIL disk: {tmp_path / 'none.csv'}: cannot read the scale table")


# ------------------------------------------------------------------------------------------- rule


def doctor_command(workdir: Path, override: dict) -> str:
    commands = snakemake(workdir, "--dry-run", "--printshellcmds", "doctor", override=override).stdout
    found = [line for line in commands.splitlines() if "futureseg doctor" in line]
    assert len(found) == 1, commands[-3000:]
    return found[0].split("futureseg doctor", 1)[1]


def test_rule_doctor_is_a_named_target_with_the_configs_settings(tmp_path, tiny_dataset):
    config = tiny_config()
    write_config(tmp_path, config)
    assert "doctor" not in planned_jobs(tmp_path)  # not part of rule all
    # the synthetic dataset: its splits, no real-size disk need
    assert " ".join(doctor_command(tmp_path, {}).split()) == (
        "--root resources/synthetic --splits train,val,unlabeled,hidden --workers 1 --results results"
        " --out results/doctor/report.txt > results/logs/doctor.log 2>&1")
    # a real dataset and where the jobs go: every named setting reaches the verb
    real = {"data": {"root": str(tiny_dataset)},
            "resources": {"slurm": {"partition": "cpu", "gpu_partition": "gpu", "account": "acme", "qos": None}}}
    line = doctor_command(tmp_path, real)
    assert f"--root {tiny_dataset} " in line
    assert f"--scale-csv {REPO / 'docs' / 'scale.csv'} " in line
    assert "--partition cpu --gpu-partition gpu --account acme " in line and "--qos" not in line


def test_rule_doctor_runs_and_writes_its_report(tmp_path):
    write_config(tmp_path, tiny_config())
    env = fake_commands(tmp_path / "bin", {"sinfo": SINFO, "nvidia-smi": "echo 999.99.99"})
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
               "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "doctor"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "results" / "doctor" / "report.txt").read_text().splitlines()
    assert report[0].split(":")[0] in ("OK   torch", "WARN torch")
    assert "OK   SLURM partition: none named, so the default one: debug exists, GPUs gpu:2" in report
    assert report[-2].startswith("OK   dataset: resources/synthetic: train 3, val 2, unlabeled 2, hidden 2 videos")
