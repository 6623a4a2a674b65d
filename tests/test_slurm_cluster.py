"""The SLURM profile (slurm/config.yaml) on the local cluster of slurm/local-cluster.sh.

The end-to-end tests need `sbatch` and a running cluster (`bash slurm/local-cluster.sh start`);
without them they skip, unless FUTURESEG_REQUIRE_SLURM=1 (CI), where they fail instead.

Reusable helpers: `run_snakemake_on_slurm(workdir, *args)` runs snakemake with the profile in a
folder and returns the SLURM jobs of that run per rule, read back from slurmctld
(`scontrol show job`, which keeps finished jobs for MinJobAge seconds).
"""

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm"
CLUSTER_SCRIPT = PROFILE / "local-cluster.sh"

# What a cluster without an accounting database needs on top of the profile (sacct does not
# work there, squeue does), and short status polling so that tiny jobs are seen finishing
# within seconds rather than the plugin's default 40 s.
LOCAL_CLUSTER_FLAGS = (
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "3",
    "--seconds-between-status-checks", "3",
)  # fmt: skip


def require_slurm_cluster():
    """Skip the calling test when no SLURM cluster answers; fail instead under CI."""
    required = os.environ.get("FUTURESEG_REQUIRE_SLURM") == "1"
    give_up = pytest.fail if required else pytest.skip
    hint = "start one with `bash slurm/local-cluster.sh start` (as root)"
    if shutil.which("sbatch") is None:
        give_up(f"sbatch is not on PATH: install slurm-wlm and munge, then {hint}")
    try:
        sinfo = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        give_up(f"sinfo did not answer within 10 s: no SLURM cluster is running; {hint}")
    if sinfo.returncode != 0 or not sinfo.stdout.strip():
        give_up(f"no SLURM cluster answers (sinfo: {sinfo.stderr.strip()[-300:]}); {hint}")


@pytest.fixture(scope="module")
def slurm_cluster():
    require_slurm_cluster()


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """One job as slurmctld reports it."""

    job_id: int
    rule: str
    state: str
    partition: str
    gpus: str  # TresPerJob, e.g. "gres:gpu:1"; "" when the job asked for no GPU
    cpus: int
    restarts: int


def _field(record, key):
    match = re.search(rf"(?:^| ){re.escape(key)}=(\S*)", record)
    return match.group(1) if match else ""


def slurm_jobs(workdir, run_ids):
    """The jobs that slurmctld still knows whose working folder is `workdir` and whose name
    is one of `run_ids` (the plugin names every job of one snakemake run by its run id)."""
    out = subprocess.run(
        ["scontrol", "--oneliner", "show", "job"], capture_output=True, text=True, check=True
    ).stdout
    workdir = os.path.realpath(workdir)
    jobs = []
    for record in out.splitlines():
        if not record.startswith("JobId="):
            continue  # "No jobs in the system"
        if os.path.realpath(_field(record, "WorkDir")) != workdir:
            continue
        if _field(record, "JobName") not in run_ids:
            continue
        # The plugin's comment: rule_NAME or rule_NAME_wildcards_VALUES.
        comment = _field(record, "Comment")
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        jobs.append(
            SlurmJob(
                job_id=int(_field(record, "JobId")),
                rule=rule,
                state=_field(record, "JobState"),
                partition=_field(record, "Partition"),
                gpus=_field(record, "TresPerJob"),
                cpus=int(_field(record, "NumCPUs") or 0),
                restarts=int(_field(record, "Restarts") or 0),
            )
        )
    return sorted(jobs, key=lambda job: job.job_id)


def _slurm_log_tails(workdir, lines=30):
    tails = []
    for log in sorted(Path(workdir, ".snakemake", "slurm_logs").rglob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {log}\n" + "\n".join(text))
    return "\n".join(tails)


def run_snakemake_on_slurm(workdir, *args, timeout=600):
    """Run `snakemake --profile slurm` (+ the local cluster's flags, + `args`) in `workdir`;
    fail the test with the logs when it fails. Returns {rule: [SlurmJob, ...]} of this run."""
    # A GPU machine's CUDA_VISIBLE_DEVICES would reach the jobs through sbatch --export=ALL;
    # the jobs must see only what SLURM gives them.
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    cmd = ["snakemake", "--profile", str(PROFILE), *LOCAL_CLUSTER_FLAGS, *args]
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {proc.returncode} in {workdir}\n"
            f"{output[-6000:]}\n{_slurm_log_tails(workdir)}"
        )
    run_ids = set(re.findall(r"SLURM run ID: (\S+)", output))
    assert run_ids, f"no 'SLURM run ID' in the snakemake output:\n{output[-3000:]}"
    by_rule = {}
    for job in slurm_jobs(workdir, run_ids):
        by_rule.setdefault(job.rule, []).append(job)
    return by_rule


# Three rules: a CPU job and a GPU job side by side, then one that needs both. The GPU rule
# has the name of a real GPU rule so the profile's set-resources (GPU partition) apply to it.
# Each output records the job's environment as SLURM set it.
TOY_SNAKEFILE = """
localrules: all

rule all:
    input: "report.txt"

ENV = (
    'echo "SLURM_JOB_ID=${{SLURM_JOB_ID:-none}}" > {output};'
    ' echo "CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-none}}" >> {output}'
)

rule prepare:
    output: "prepare.txt"
    threads: 1
    resources: mem_mb=200, runtime=5
    shell: ENV

rule train_predictor:
    output: "train_predictor.txt"
    threads: 1
    resources: mem_mb=200, runtime=5, gpu=1
    shell: ENV

rule report:
    input: "prepare.txt", "train_predictor.txt"
    output: "report.txt"
    threads: 1
    resources: mem_mb=200, runtime=5
    shell: ENV
"""


def _job_env(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_every_rule_runs_as_a_slurm_job_and_the_gpu_rule_gets_a_gpu(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)

    jobs = run_snakemake_on_slurm(tmp_path)

    assert sorted(jobs) == ["prepare", "report", "train_predictor"], jobs
    for rule, (job, *more) in jobs.items():
        assert not more, f"{rule} ran as {len(more) + 1} SLURM jobs: {jobs[rule]}"
        assert job.state == "COMPLETED", job
        # The command ran inside that very job.
        env = _job_env(tmp_path / f"{rule}.txt")
        assert env["SLURM_JOB_ID"] == str(job.job_id), (rule, env, job)

    gpu_job = jobs["train_predictor"][0]
    assert gpu_job.gpus.endswith("gpu:1"), gpu_job
    assert gpu_job.partition == "gpu", gpu_job  # the profile's set-resources
    assert _job_env(tmp_path / "train_predictor.txt")["CUDA_VISIBLE_DEVICES"] != "none"
    for rule in ("prepare", "report"):
        job = jobs[rule][0]
        assert job.gpus == "" and job.partition == "main", job  # default-resources
        assert _job_env(tmp_path / f"{rule}.txt")["CUDA_VISIBLE_DEVICES"] == "none"


# Checks that need no cluster.


def _workflow_rules():
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules.update(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.MULTILINE))
    return rules


def test_profile_sends_every_gpu_rule_of_the_workflow_to_the_gpu_partition():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    set_resources = profile["set-resources"]
    unknown = set(set_resources) - _workflow_rules()
    assert not unknown, f"slurm/config.yaml set-resources names rules the workflow lacks: {unknown}"
    gpu_rules = {
        rule
        for rule, spec in config["resources"].items()
        if rule != "default" and spec.get("gpu", config["resources"]["default"].get("gpu", 0))
    }
    assert gpu_rules, "config.yaml declares no GPU rule"
    for rule in gpu_rules:
        assert set_resources.get(rule, {}).get("slurm_partition") == "gpu", rule
    assert profile["default-resources"]["slurm_partition"] == "main"


def test_cluster_script_says_what_to_install_when_slurm_is_missing(tmp_path):
    # An empty PATH: none of the SLURM or munge commands exist.
    proc = subprocess.run(
        ["/bin/bash", str(CLUSTER_SCRIPT), "start"],
        env={"PATH": str(tmp_path), "FUTURESEG_SLURM_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "apt-get install slurm-wlm munge" in proc.stderr
    assert not (tmp_path / "state").exists()  # installs and writes nothing
