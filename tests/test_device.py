"""The GPU verbs' device (core.training.select_device): CUDA when torch has it; else the CPU,
which a SLURM job given GPUs refuses at once (one line: what was found, the rule, the node,
what to do) unless FUTURESEG_ALLOW_CPU=1 (config resources.allow_cpu) says otherwise.

SLURM's variables are faked with monkeypatch, `scontrol` and `nvidia-smi` with scripts, and
torch is made to see no GPU, so these run the same on a machine with or without one;
tests/test_slurm_pipeline.py runs the real thing on the local cluster's fake GPUs."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from futureseg.core import training
from futureseg.core.errors import FuturesegError
from futureseg.core.training import ALLOW_CPU_VARIABLE, NoUsableGpu, select_device

REPO = Path(__file__).resolve().parents[1]
SLURM_GPU_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_GPUS": "0", "SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0",
                 "SLURMD_NODENAME": "gpu-node-7"}
# what `scontrol --oneliner show job` says of a job of snakemake-executor-plugin-slurm
SCONTROL = "#!/bin/sh\necho 'JobId=4242 JobName=0d5e Comment=rule_pseudo_label_wildcards_unlabeled Partition=gpu'\n"
NVIDIA_SMI = "#!/bin/sh\necho 'No devices were found'\nexit 6\n"


@pytest.fixture
def fake_bin(tmp_path):
    """A folder of fake `scontrol` and `nvidia-smi` (a node whose driver sees no GPU)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, script in (("scontrol", SCONTROL), ("nvidia-smi", NVIDIA_SMI)):
        (folder / name).write_text(script)
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def no_gpu(monkeypatch, fake_bin):
    """torch sees no CUDA device, no SLURM variable and no FUTURESEG_ALLOW_CPU is set, and the
    fake commands come first on PATH."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in (*training.SLURM_GPU_VARIABLES, *SLURM_GPU_JOB, ALLOW_CPU_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")
    return monkeypatch


def test_a_local_run_without_gpu_uses_the_cpu_and_says_so(no_gpu, caplog):
    with caplog.at_level(logging.INFO, logger="futureseg"):
        device = select_device(bf16_autocast=True)
    assert device == torch.device("cpu")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("device cpu: no CUDA device and no SLURM GPU allocation"), line
    assert f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})" in line and "precision fp32" in line


def test_a_slurm_gpu_job_without_a_usable_gpu_stops_naming_what_it_found(no_gpu):
    for name, value in SLURM_GPU_JOB.items():
        no_gpu.setenv(name, value)
    with pytest.raises(NoUsableGpu) as error:
        select_device(bf16_autocast=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("rule pseudo_label (unlabeled) in SLURM job 4242 on node gpu-node-7: SLURM gave it GPUs "
                              "(SLURM_JOB_GPUS=0 SLURM_GPUS_ON_NODE=1) but torch finds no usable CUDA device"), message
    for found in (f"torch {torch.__version__}", f"CUDA build {torch.version.cuda or 'none'}", "CUDA_VISIBLE_DEVICES=0",
                  "nvidia-smi: No devices were found", "resources.allow_cpu: true"):
        assert found in message, (found, message)


def test_without_scontrol_the_job_is_named_by_its_id(no_gpu, tmp_path):
    for name, value in SLURM_GPU_JOB.items():
        no_gpu.setenv(name, value)
    no_gpu.setenv("PATH", str(tmp_path / "empty"))  # neither scontrol nor nvidia-smi
    with pytest.raises(NoUsableGpu, match=r"^SLURM job 4242 on node gpu-node-7: .*nvidia-smi: not installed\)"):
        select_device(bf16_autocast=False)


def test_a_slurm_gpu_job_may_run_on_the_cpu_when_allowed(no_gpu, caplog):
    for name, value in {**SLURM_GPU_JOB, ALLOW_CPU_VARIABLE: "1"}.items():
        no_gpu.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="futureseg"):
        assert select_device(bf16_autocast=False) == torch.device("cpu")
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("device cpu: SLURM gave this job GPUs (SLURM_JOB_GPUS=0 SLURM_GPUS_ON_NODE=1)")
    assert "FUTURESEG_ALLOW_CPU=1" in record.getMessage() and "precision fp32" in record.getMessage()


@pytest.mark.parametrize("environ", [{"SLURM_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "0"},  # a CPU job, a login shell's variable
                                     {"SLURM_JOB_ID": "1", "SLURM_GPUS_ON_NODE": "0", "SLURM_JOB_GPUS": ""}],
                         ids=["cuda-visible-devices-only", "zero-gpus"])
def test_a_slurm_job_without_gpus_runs_on_the_cpu(no_gpu, environ):
    for name, value in environ.items():
        no_gpu.setenv(name, value)
    assert select_device(bf16_autocast=False) == torch.device("cpu")


def test_a_bad_allow_cpu_value_is_named(no_gpu):
    no_gpu.setenv(ALLOW_CPU_VARIABLE, "yes")
    with pytest.raises(FuturesegError, match="environment variable FUTURESEG_ALLOW_CPU='yes': expected 0 or 1"):
        select_device(bf16_autocast=False)


def _futureseg(cwd, fake_bin, *args, **environ):
    # CUDA_VISIBLE_DEVICES="" hides any real GPU: torch finds none, as on a node without a driver
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"), **SLURM_GPU_JOB,
           "CUDA_VISIBLE_DEVICES": "", **environ}
    return subprocess.run([sys.executable, "-m", "futureseg", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_verb_stops_before_reading_anything_unless_the_cpu_is_allowed(tmp_path, fake_bin):
    # segment checks its device before it opens the model: a model that does not exist shows
    # how far each run got
    args = ["segment", "--model", "missing.pt", "--val-frames", "frames_val.npy", "--out-val", "masks_val.npy"]
    work = tmp_path / "work"
    work.mkdir()
    stopped = _futureseg(work, fake_bin, *args)
    assert stopped.returncode == 2
    line = stopped.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"futureseg segment: error: rule pseudo_label \(unlabeled\) in SLURM job 4242 on node gpu-node-7: "
                        r"SLURM gave it GPUs \(SLURM_JOB_GPUS=0 SLURM_GPUS_ON_NODE=1\) but torch finds no usable CUDA "
                        r"device \(torch .*, CUDA_VISIBLE_DEVICES=, nvidia-smi: No devices were found\); stopped instead "
                        r"of running on the CPU\. .*resources\.allow_cpu: true .*", line), line
    assert "missing.pt" not in stopped.stderr and list(work.iterdir()) == []

    allowed = _futureseg(work, fake_bin, *args, FUTURESEG_ALLOW_CPU="1")
    assert allowed.returncode == 2
    assert "futureseg segment: error: missing.pt: checkpoint does not exist" in allowed.stderr, allowed.stderr
    assert "running on the CPU as FUTURESEG_ALLOW_CPU=1" in allowed.stderr


def test_the_workflow_passes_resources_allow_cpu_under_the_name_select_device_reads():
    assert f"os.environ.update({ALLOW_CPU_VARIABLE}=" in (REPO / "workflow" / "rules" / "common.smk").read_text()
