"""The SLURM profile (slurm/config.yaml) on the local cluster of slurm/local-cluster.sh.

The end-to-end tests need `sbatch` and a running cluster (`bash slurm/local-cluster.sh start`);
without them they skip, unless FUTURESEG_REQUIRE_SLURM=1 (CI), where they fail instead.

Reusable helpers (tests/test_slurm_pipeline.py uses them): `run_snakemake_on_slurm(workdir, *args)`
runs snakemake with the profile in a folder and returns the SLURM jobs of that run per rule,
read back from slurmctld (`scontrol show job`, which keeps finished jobs for MinJobAge
seconds); `start_snakemake_on_slurm` / `finish_snakemake_on_slurm` do the same in two halves,
for a test that acts on the jobs while they run; `slurm_jobs(workdir)` lists them.
"""

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline_helpers import planned_resources

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm"
CLUSTER_SCRIPT = PROFILE / "local-cluster.sh"
FIXED_POLLING = Path(__file__).resolve().parent / "snakemake_fixed_polling.py"

# The flags the tests add to `snakemake --profile slurm` (slurm/README.md names them).
# Needed on a cluster without an accounting database, like the local one: sacct does not
# work there, squeue does. A real cluster keeps the plugin's default (sacct).
NO_ACCOUNTING_FLAGS = ("--slurm-status-command", "squeue")
# Speed only, for tiny jobs: the first status check 1 s after a submission instead of 40 s.
# The plugin would still back off by 10 s after every check that finds no job finished (1,
# 11, 21 s, ...), seeing each job finish 10-20 s late; the tests run snakemake through
# FIXED_POLLING, which checks every second (one squeue call). On a real cluster leave the
# defaults: they spare slurmctld.
FAST_POLLING_FLAGS = (
    "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "1",
)  # fmt: skip
LOCAL_CLUSTER_FLAGS = NO_ACCOUNTING_FLAGS + FAST_POLLING_FLAGS


def slurm_cluster_problem() -> str | None:
    """Why no SLURM cluster can run the tests' jobs here, or None when one answers."""
    hint = "start one with `bash slurm/local-cluster.sh start` (as root)"
    if shutil.which("sbatch") is None:
        return f"sbatch is not on PATH: install slurm-wlm and munge, then {hint}"
    try:
        sinfo = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 10 s: no SLURM cluster is running; {hint}"
    if sinfo.returncode != 0 or not sinfo.stdout.strip():
        return f"no SLURM cluster answers (sinfo: {sinfo.stderr.strip()[-300:]}); {hint}"
    return None


def require_slurm_cluster():
    """Skip the calling test when no SLURM cluster answers; fail instead under CI."""
    problem = slurm_cluster_problem()
    if problem:
        (pytest.fail if os.environ.get("FUTURESEG_REQUIRE_SLURM") == "1" else pytest.skip)(problem)


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
    start: str  # StartTime / EndTime, e.g. 2026-01-31T12:00:00 ("Unknown" while pending)
    end: str


def _field(record, key):
    match = re.search(rf"(?:^| ){re.escape(key)}=(\S*)", record)
    return match.group(1) if match else ""


def slurm_jobs(workdir, run_ids=None):
    """The jobs that slurmctld still knows whose working folder is `workdir` and, unless
    `run_ids` is None, whose name is one of `run_ids` (the plugin names every job of one
    snakemake run by its run id)."""
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
        if run_ids is not None and _field(record, "JobName") not in run_ids:
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
                start=_field(record, "StartTime"),
                end=_field(record, "EndTime"),
            )
        )
    return sorted(jobs, key=lambda job: job.job_id)


def _slurm_log_tails(workdir, lines=30):
    tails = []
    for log in sorted(Path(workdir, ".snakemake", "slurm_logs").rglob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {log}\n" + "\n".join(text))
    return "\n".join(tails)


@dataclasses.dataclass
class SlurmRun:
    """A `snakemake --profile slurm` run: its command, exit status, output (stdout and
    stderr together), wall time, and the SLURM jobs it submitted per rule."""

    command: list
    returncode: int
    output: str
    seconds: float
    jobs: dict  # {rule: [SlurmJob, ...]}, in submission order

    @property
    def job_count(self):
        return sum(len(jobs) for jobs in self.jobs.values())


@dataclasses.dataclass
class RunningSnakemake:
    """A run of start_snakemake_on_slurm, still going."""

    process: subprocess.Popen
    command: list
    workdir: Path
    started: float  # time.monotonic()
    # its stdout and stderr, beside the workdir: a file, not a pipe, so that a run nobody reads
    # yet (test_slurm_pipeline's chain, started with the session) never blocks on a full pipe
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_snakemake_on_slurm(workdir, *args, snakemake=("snakemake",), env=None):
    """Start `snakemake --profile slurm` (+ the local cluster's flags, + `args`) in `workdir`.
    `snakemake` is the command up to its options, e.g. one that also names a Snakefile, a
    working folder and config files; `env` the environment (os.environ's by default). Wait
    for it with finish_snakemake_on_slurm."""
    # A GPU machine's CUDA_VISIBLE_DEVICES would reach the jobs through sbatch --export=ALL;
    # the jobs must see only what SLURM gives them.
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "CUDA_VISIBLE_DEVICES"}
    # the same command through the runner that polls at a fixed interval (snakemake_fixed_polling.py)
    snakemake = list(snakemake)
    options = snakemake[1:] if snakemake[:1] == ["snakemake"] else snakemake[3:]
    assert snakemake[:1] == ["snakemake"] or snakemake[1:3] == ["-m", "snakemake"], snakemake
    command = [sys.executable, str(FIXED_POLLING), *options, "--profile", str(PROFILE), *LOCAL_CLUSTER_FLAGS, *args]
    log = Path(workdir).with_name(f"{Path(workdir).name}.snakemake.log")
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    return RunningSnakemake(process, command, Path(workdir), started, log)


def _run_ids(output):
    return set(re.findall(r"SLURM run ID: (\S+)", output))


def finish_snakemake_on_slurm(run, timeout=600, check=True):
    """Wait for a RunningSnakemake; with `check`, fail the test with the logs unless it
    succeeded. Past `timeout` seconds (from its start) the run is killed and its jobs
    cancelled. Returns a SlurmRun."""
    command, workdir = " ".join(run.command), run.workdir
    try:
        run.process.wait(timeout=max(1.0, run.started + timeout - time.monotonic()))
        output = run.output()
    except subprocess.TimeoutExpired:
        output = stop_snakemake_on_slurm(run)
        pytest.fail(
            f"{command} ran past {timeout} s in {workdir}\n{output[-6000:]}\n{_slurm_log_tails(workdir)}"
        )
    seconds = time.monotonic() - run.started
    if check and run.process.returncode != 0:
        pytest.fail(
            f"{command} exited with {run.process.returncode} in {workdir}\n"
            f"{output[-6000:]}\n{_slurm_log_tails(workdir)}"
        )
    run_ids = _run_ids(output)
    assert run_ids, f"no 'SLURM run ID' in the snakemake output:\n{output[-3000:]}"
    by_rule = {}
    for job in slurm_jobs(workdir, run_ids):
        by_rule.setdefault(job.rule, []).append(job)
    return SlurmRun(run.command, run.process.returncode, output, seconds, by_rule)


def stop_snakemake_on_slurm(run):
    """Kill a RunningSnakemake (if still running) and cancel the SLURM jobs it left queued or
    running, so that a failed test leaves the cluster free; returns its output."""
    if run.process.poll() is None:
        run.process.kill()
    run.process.wait()
    output = run.output()
    for job in slurm_jobs(run.workdir, _run_ids(output) or None):
        if job.state in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "REQUEUED"):
            subprocess.run(["scancel", str(job.job_id)], capture_output=True)
    return output


def run_snakemake_on_slurm(workdir, *args, timeout=600, snakemake=("snakemake",)):
    """Run `snakemake --profile slurm` (+ the local cluster's flags, + `args`) in `workdir`;
    fail the test with the logs when it fails. Returns {rule: [SlurmJob, ...]} of this run
    (finish_snakemake_on_slurm's SlurmRun has the rest)."""
    run = start_snakemake_on_slurm(workdir, *args, snakemake=snakemake)
    return finish_snakemake_on_slurm(run, timeout=timeout).jobs


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


def default_partition():
    """The cluster's default partition (`sinfo` marks it with *): where the profile, which
    names no partition, sends every job."""
    out = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, check=True).stdout
    (default,) = [name.rstrip("*") for name in out.split() if name.endswith("*")]
    return default


def test_every_rule_runs_as_a_slurm_job_and_the_gpu_rule_gets_a_gpu(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)

    jobs = run_snakemake_on_slurm(tmp_path)

    assert sorted(jobs) == ["prepare", "report", "train_predictor"], jobs
    for rule, (job, *more) in jobs.items():
        assert not more, f"{rule} ran as {len(more) + 1} SLURM jobs: {jobs[rule]}"
        assert job.state == "COMPLETED", job
        # The command ran inside that very job, in the default partition (the profile names none).
        env = _job_env(tmp_path / f"{rule}.txt")
        assert env["SLURM_JOB_ID"] == str(job.job_id), (rule, env, job)
        assert job.partition == default_partition(), job

    gpu_job = jobs["train_predictor"][0]
    assert gpu_job.gpus.endswith("gpu:1"), gpu_job
    assert _job_env(tmp_path / "train_predictor.txt")["CUDA_VISIBLE_DEVICES"] != "none"
    for rule in ("prepare", "report"):
        assert jobs[rule][0].gpus == "", jobs[rule][0]
        assert _job_env(tmp_path / f"{rule}.txt")["CUDA_VISIBLE_DEVICES"] == "none"


# Checks that need no cluster.


def dry_run_under_profile(workdir: Path, configfiles: list[Path], *args: str) -> str:
    """`snakemake --profile slurm -n` (+ `args`) of the repository's workflow in `workdir`,
    config.yaml then `configfiles` merged over it; its output."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile",
         str(PROFILE), "--configfile", str(REPO / "config.yaml"), *map(str, configfiles), "--dry-run", *args],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_profile_runs_on_any_cluster_as_shipped():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    # no partition, no account, in the profile or config.yaml: sbatch's defaults
    assert not profile.get("default-resources") and not profile.get("set-resources"), profile
    assert not any(config["resources"]["slurm"][key] for key in ("partition", "gpu_partition", "account", "qos"))


def test_one_gpu_partition_setting_reaches_every_rule_that_asks_for_a_gpu(tmp_path):
    override = tmp_path / "cluster.yaml"
    override.write_text(yaml.safe_dump({"resources": {
        "slurm": {"partition": "cpuq", "gpu_partition": "gpuq", "account": "proj", "qos": "normal",
                  "extra": "--comment=futureseg", "warn_seconds": 240},
        # a rule of a group set by its own name (it takes segment's entry otherwise), and a
        # partition of its own for one rule
        "pseudo_label": {"runtime": 900},
        "score": {"partition": "short"}}}))
    jobs = planned_resources(dry_run_under_profile(tmp_path, [override]))
    gpu_rules = {rule for rule, resources in jobs if int(resources["gpu"]) > 0}
    # the 16 GPU rules of the default config: trainers, inference, their hidden-set shards
    assert len(gpu_rules) == 16, sorted(gpu_rules)
    for rule, resources in jobs:
        expected = "gpuq" if rule in gpu_rules else "short" if rule == "score" else "cpuq"
        assert resources.get("slurm_partition") == expected, (rule, resources)
        assert resources["slurm_account"] == "proj" and resources["qos"] == "normal", (rule, resources)
        assert resources["runtime"] and resources["mem_mb"], (rule, resources)
        flags = resources["slurm_extra"].split()
        assert "--comment=futureseg" in flags, (rule, resources)
        # the trainers, and only they, ask for the warning signal before their time limit
        assert ("--signal=URG@240" in flags) == rule.startswith("train_"), (rule, resources)
    pseudo = [resources for rule, resources in jobs if rule == "pseudo_label"]
    segment = [resources for rule, resources in jobs if rule == "segment"]
    assert pseudo and all(r["runtime"] == "900" and r["mem_mb"] == segment[0]["mem_mb"] for r in pseudo), pseudo


def test_the_job_gpu_count_sets_the_processes_and_threads_of_train_predictor(tmp_path):
    override = tmp_path / "gpus.yaml"
    override.write_text(yaml.safe_dump({"resources": {"train_predictor": {"gpu": 4, "threads": 3}}}))
    output = dry_run_under_profile(tmp_path, [override], "--printshellcmds", "--cores", "64",
                                   "results/predictor/model.pt")
    command = re.search(r"futureseg train-predictor .*", output).group(0)
    # the verb starts a process per GPU of the job's own resources; each takes its threads (a
    # dry run caps a job's threads at --cores, as a SLURM job caps them at its CPUs)
    assert "--gpus 4" in command and "--threads 12" in command, command
    (resources,) = [r for rule, r in planned_resources(output) if rule == "train_predictor"]
    assert resources["gpu"] == "4", resources


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


# The cluster script's guards: it refuses to start beside a SLURM it did not start, and never
# touches processes it did not start. They need root and the SLURM tools (the script checks
# both before anything else), not a running cluster.


def _require_cluster_tools():
    if os.geteuid() != 0 or shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("needs root and slurm-wlm + munge installed (apt-get install slurm-wlm munge)")


def _cluster_script(state, *args):
    env = {"PATH": os.environ["PATH"], "FUTURESEG_SLURM_DIR": str(state)}
    return subprocess.run(["/bin/bash", str(CLUSTER_SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def fake_slurmctld(tmp_path):
    """A process named slurmctld that the script did not start (a copy of sleep)."""
    binary = tmp_path / "bin" / "slurmctld"
    binary.parent.mkdir()
    shutil.copy(shutil.which("sleep"), binary)
    process = subprocess.Popen([str(binary), "300"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process.pid}/comm").read_text().strip() != "slurmctld":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield process
    finally:
        process.kill()
        process.wait()


def test_cluster_script_refuses_to_start_beside_a_slurmctld_it_did_not_start(fake_slurmctld, tmp_path):
    _require_cluster_tools()
    state = tmp_path / "state"
    proc = _cluster_script(state, "start")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("local-cluster.sh: another SLURM is running here"), line
    assert f"slurmctld (pid {fake_slurmctld.pid})" in line and "stop it first" in line, line
    assert fake_slurmctld.poll() is None, "left running"
    assert not state.exists(), "wrote nothing, started nothing"


def test_cluster_script_stop_ends_only_what_it_started(fake_slurmctld, tmp_path):
    _require_cluster_tools()
    # A record of this script naming the same id, as after a reboot: the start time differs.
    run = tmp_path / "state" / "run"
    run.mkdir(parents=True)
    (run / "slurmctld.ours").write_text(f"{fake_slurmctld.pid} 1\n")
    proc = _cluster_script(tmp_path / "state", "stop")
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.2)
    assert fake_slurmctld.poll() is None, "stop killed a slurmctld this script did not start"


def test_cluster_script_refuses_to_start_when_a_slurm_port_is_taken(tmp_path):
    _require_cluster_tools()
    if any(Path(f"/proc/{pid}/comm").exists() and Path(f"/proc/{pid}/comm").read_text().strip() in
           ("slurmctld", "slurmd", "slurmdbd") for pid in os.listdir("/proc") if pid.isdigit()):
        pytest.skip("a SLURM daemon runs here: the script reports it before the ports")
    port = 6819  # slurmdbd's: the local cluster never uses it, so the test cannot disturb one
    with socket.socket() as listener:
        try:
            listener.bind(("127.0.0.1", port))
        except OSError:
            pytest.skip(f"port {port} is already taken")
        listener.listen()
        proc = _cluster_script(tmp_path / "state", "start")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"local-cluster.sh: port {port} (slurmdbd) is in use"), line
    assert "stop it first" in line
    assert not (tmp_path / "state").exists()
