"""Pre-flight check: what a run needs from this machine and this cluster, before it spends hours.

`futureseg doctor` prints one line per check, each OK, WARN or FAIL: torch and its CUDA build,
the NVIDIA driver and whether it runs that build (CUDA minor-version compatibility), the GPUs
torch sees, the SLURM partitions, account and QoS the workflow will send jobs to, the dataset
(check-data's check of every file) and the disk a run at the real size writes. It prints every
line, then exits non-zero when any is FAIL; `--out` gets the same lines, written only when none
is.

Run it on the login node (it checks SLURM, the dataset and the disk from there; the driver and
GPUs there are not the compute nodes') and as a short GPU job, where they are:
`snakemake --profile slurm -f doctor` (rule doctor, README "Before a real run").
"""

from __future__ import annotations

import csv
import getpass
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from futureseg.core import data
from futureseg.core.errors import DataError, FuturesegError
from futureseg.core.io import atomic_path

OK, WARN, FAIL = "OK", "WARN", "FAIL"

# NVIDIA's CUDA minor-version compatibility (docs.nvidia.com/deploy/cuda-compatibility, "Minor
# Version Compatibility", table 1): since CUDA 11 a build for CUDA X.y runs on any driver of at
# least the first release of family X, e.g. a torch built for CUDA 12.6 on driver 535 (Linux).
# Before CUDA 11 each release needed its own toolkit's driver (table 2). Newer drivers always run
# older builds (backward compatibility).
MIN_DRIVER_BY_MAJOR = {13: (580,), 12: (525, 60, 13), 11: (450, 80, 2)}
MIN_DRIVER_BEFORE_11 = {(10, 2): (440, 33), (10, 1): (418, 39), (10, 0): (410, 48)}

# the scale benchmark's rows that a run on a real Dataset_Student does not run
NOT_IN_A_REAL_RUN = {"synth_dataset"}  # the real dataset is given, not generated
DISK_COLUMN = "disk_mb@real"


@dataclass(frozen=True)
class Check:
    status: str  # OK, WARN or FAIL
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.what}: {self.detail}"


def version_tuple(text: str) -> tuple[int, ...]:
    """'580.65.06' → (580, 65, 6); ValueError when `text` is not dotted numbers."""
    if not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        raise ValueError(f"{text!r} is not a version number")
    return tuple(int(part) for part in text.strip().split("."))


def minimum_driver(cuda: str) -> tuple[int, ...] | None:
    """The oldest Linux driver that runs a build for CUDA `cuda` ('12.6'), or None when the table
    does not know that version (older than 10.0, or a CUDA major newer than 13)."""
    version = version_tuple(cuda)
    major, minor = version[0], (version[1] if len(version) > 1 else 0)
    if major >= 11:
        return MIN_DRIVER_BY_MAJOR.get(major)
    return MIN_DRIVER_BEFORE_11.get((major, minor))


def driver_supports(cuda: str, driver: str) -> bool | None:
    """Whether NVIDIA driver `driver` ('580.65.06') runs code built for CUDA `cuda` ('13.0');
    None when the table does not know `cuda`."""
    needed = minimum_driver(cuda)
    return None if needed is None else version_tuple(driver) >= needed


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(f"{part:02d}" if index == 2 else str(part) for index, part in enumerate(version))


def run_command(argv: list[str]) -> tuple[int, str] | None:
    """(exit status, stdout and stderr) of a short command; None when it is not installed. The
    one way this module runs sinfo, sacctmgr and nvidia-smi (tests replace it)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip()) or "no output"


# ------------------------------------------------------------------------------------ torch, GPUs


def in_gpu_job() -> bool:
    """Whether SLURM gave this job GPUs: there a missing GPU is a FAIL, elsewhere (a login node, a
    laptop) a WARN."""
    from futureseg.core.training import slurm_gpus

    return bool(slurm_gpus())


def pinned_torch() -> str | None:
    """The torch version futureseg's install pins (pyproject.toml: torch==X), if it can be read."""
    from importlib import metadata

    try:
        requires = metadata.requires("futureseg") or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requires:
        found = re.fullmatch(r"torch\s*==\s*([\w.]+)\s*", requirement.split(";")[0])
        if found:
            return found.group(1)
    return None


def torch_check(gpu_job: bool) -> Check:
    import torch

    version, cuda = torch.__version__, torch.version.cuda
    status, detail = OK, f"{version}, CUDA build {cuda}"
    if cuda is None:
        status = FAIL if gpu_job else WARN
        detail = (f"{version} is a CPU-only build: the GPU rules run on the CPU or stop; install a CUDA build that "
                  "the nodes' driver supports (README, Install)")
    pinned = pinned_torch()
    if pinned and version.split("+")[0] != pinned:
        status = FAIL if status == FAIL else WARN
        detail += f"; not the tested torch=={pinned}: reinstall it (README, Install)"
    return Check(status, "torch", detail)


def driver_check(gpu_job: bool, run=run_command) -> Check:
    """The NVIDIA driver (nvidia-smi) against torch's CUDA build."""
    import torch

    cuda = torch.version.cuda
    missing = FAIL if gpu_job else WARN
    found = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if found is None:
        return Check(missing, "NVIDIA driver", "no nvidia-smi here" + ("" if gpu_job else " (no GPU on this node: "
                                                                    "run rule doctor as a GPU job to check the nodes')"))
    status, text = found
    versions = sorted(set(text.split())) if status == 0 else []
    if not versions:
        return Check(missing, "NVIDIA driver", f"nvidia-smi failed (exit {status}): {one_line(text)}")
    driver = versions[0]  # one driver per node; the oldest if nvidia-smi disagrees with itself
    try:
        supported = driver_supports(cuda, driver) if cuda else None
    except ValueError:
        return Check(WARN, "NVIDIA driver", f"{driver}: not a driver version this check can read (torch's CUDA build "
                                            f"{cuda})")
    if cuda is None:
        return Check(WARN, "NVIDIA driver", f"{driver}, unused: torch is a CPU-only build")
    needed = dotted(minimum_driver(cuda) or ())
    if supported is None:
        return Check(WARN, "NVIDIA driver", f"{driver}; torch's CUDA build {cuda} is not in the compatibility table "
                                            "this check knows (futureseg/data/doctor.py): not checked")
    if not supported:
        return Check(FAIL, "NVIDIA driver", f"{driver} is too old for torch's CUDA {cuda} build (needs >= {needed}): "
                                            "install a torch built for an older CUDA (README, Install) or ask for a "
                                            "newer driver")
    return Check(OK, "NVIDIA driver", f"{driver} runs torch's CUDA {cuda} build (needs >= {needed})")


def gpu_check(gpu_job: bool, allow_cpu: bool) -> Check:
    """The GPUs torch sees, with their memory."""
    import torch

    try:
        count = torch.cuda.device_count()
        gpus = [torch.cuda.get_device_properties(i) for i in range(count)]
    except Exception as exc:  # an unusable driver surfaces here, as whatever torch raises
        return Check(FAIL, "GPUs", f"torch cannot use the GPUs: {one_line(str(exc)) or type(exc).__name__}")
    if not gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        if not gpu_job:
            return Check(WARN, "GPUs", f"torch sees none (CUDA_VISIBLE_DEVICES={visible}): the GPU rules run on the CPU "
                                       "here; SLURM jobs get the nodes' GPUs")
        status = WARN if allow_cpu else FAIL
        return Check(status, "GPUs", f"SLURM gave this job GPUs but torch sees none (CUDA_VISIBLE_DEVICES={visible})"
                                     + ("; resources.allow_cpu runs the GPU rules on the CPU" if allow_cpu else ""))
    listed = ", ".join(f"{i} {gpu.name} ({gpu.total_memory / 2**30:.1f} GiB)" for i, gpu in enumerate(gpus))
    return Check(OK, "GPUs", f"{len(gpus)}: {listed}")


# ------------------------------------------------------------------------------------------ SLURM


def slurm_checks(partition=None, gpu_partition=None, account=None, qos=None, run=run_command,
                 user=None) -> list[Check]:
    """That the partitions, account and QoS the workflow sends jobs to exist (sinfo, sacctmgr),
    and that the GPU jobs' partition has GPUs. As config resources.slurm has it: the GPU jobs go
    to `gpu_partition`, else `partition`, else the cluster's default partition; None names
    nothing. `run` runs a command (run_command's contract)."""
    named = [name for name in (partition, gpu_partition, account, qos) if name]
    listing = run(["sinfo", "-h", "-o", "%P"])
    if listing is None:
        if not named:
            return [Check(OK, "SLURM", "no SLURM here (no sinfo): a local run")]
        return [Check(WARN, "SLURM", f"no SLURM here (no sinfo): {', '.join(named)} not checked; run this on the "
                                     "cluster's login node")]
    if listing[0] != 0:
        # SLURM installed but not answering: fatal only to a run that means to use it
        if not named:
            return [Check(WARN, "SLURM", f"sinfo failed (exit {listing[0]}: {one_line(listing[1])}): fine for a local "
                                         "run, not for --profile slurm")]
        return [Check(FAIL, "SLURM", f"sinfo failed (exit {listing[0]}): {one_line(listing[1])}; "
                                     f"{', '.join(named)} not checked")]
    checks = []
    if partition:
        checks.append(partition_check(partition, gpu_partition in (None, partition), run))
    else:
        default = next((p.rstrip("*") for p in listing[1].split() if p.endswith("*")), None)
        if default is None:
            checks.append(Check(FAIL, "SLURM partition", "none named and the cluster has no default partition "
                                                         "(sinfo marks none with *): set resources.slurm.partition"))
        else:
            check = partition_check(default, gpu_partition is None, run)
            checks.append(Check(check.status, check.what, f"none named, so the default one: {check.detail}"))
    if gpu_partition and gpu_partition != partition:
        checks.append(partition_check(gpu_partition, True, run, "SLURM GPU partition"))
    user = user or os.environ.get("USER") or getpass.getuser()
    if account:
        checks.append(sacctmgr_check("SLURM account", account,
                                     ["show", "assoc", f"user={user}", f"account={account}", "format=account"],
                                     f"user {user} has no association with it (`sacctmgr show assoc user={user}` "
                                     "lists yours)", run))
    else:
        checks.append(Check(OK, "SLURM account", "none named: sbatch's default account"))
    if qos:
        checks.append(sacctmgr_check("SLURM QoS", qos, ["show", "qos", f"name={qos}", "format=name"],
                                     "no such QoS (`sacctmgr show qos` lists them)", run))
    return checks


def partition_check(name: str, for_gpus: bool, run, what: str = "SLURM partition") -> Check:
    """That partition `name` exists and is up; `for_gpus`: that it has GPUs (the GPU jobs go there)."""
    found = run(["sinfo", "-h", "-p", name, "-o", "%P|%G|%a"])
    if found is None or found[0] != 0:
        return Check(FAIL, what, f"{name}: sinfo failed ({one_line(found[1]) if found else 'gone'})")
    rows = [line.split("|") for line in found[1].splitlines() if line.count("|") == 2]
    if not rows:
        return Check(FAIL, what, f"{name} does not exist (`sinfo -h -p {name}` lists nothing; `sinfo -s` lists "
                                 "the partitions)")
    gres = sorted({row[1] for row in rows})
    states = sorted({row[2] for row in rows})
    if "up" not in states:
        return Check(WARN, what, f"{name} exists but is {'/'.join(states)}: its jobs wait")
    if for_gpus and not any("gpu" in g for g in gres):
        return Check(WARN, what, f"{name} takes the GPU jobs but lists no GPUs (gres {', '.join(gres)}; "
                                 "`sinfo -o \"%P %G\"` shows which have): set resources.slurm.gpu_partition")
    return Check(OK, what, f"{name} exists" + (f", GPUs {', '.join(gres)}" if for_gpus else ""))


def sacctmgr_check(what: str, name: str, query: list[str], absent: str, run) -> Check:
    found = run(["sacctmgr", "-nP", *query])
    if found is None:
        return Check(WARN, what, f"{name}: no sacctmgr here, not checked")
    if found[0] != 0:
        return Check(WARN, what, f"{name}: not checked, sacctmgr failed (exit {found[0]}; a cluster without an "
                                 f"accounting database?): {one_line(found[1])}")
    if not found[1].strip():
        return Check(FAIL, what, f"{name}: {absent}")
    return Check(OK, what, f"{name} exists")


# ---------------------------------------------------------------------------------- data and disk


def dataset_check(root, splits, workers: int) -> Check:
    """check-data's check of every file of `splits` (PNG and mask headers)."""
    from futureseg.data.check_data import check_dataset

    try:
        report = check_dataset(root, splits, workers)
    except FuturesegError as exc:
        return Check(FAIL, "dataset", str(exc))
    counts = ", ".join(f"{split} {entry['videos']}" for split, entry in report["splits"].items())
    height, width = report["frame_size"]
    return Check(OK, "dataset", f"{root}: {counts} videos, frames {height}x{width}, every file checked")


def disk_need_mb(scale_csv) -> float:
    """Disk a run on the real dataset writes, in MB: docs/scale.csv's disk_mb@real (each job's
    outputs at the real size) summed over every job but those a real run does not run (the
    synthetic dataset). keep_intermediates: false does not lower it: the run still peaks there."""
    path = Path(scale_csv)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the scale table ({exc.strerror or exc})") from None
    if not rows or DISK_COLUMN not in rows[0] or "rule" not in rows[0]:
        raise DataError(f"{path}: expected a CSV with columns rule and {DISK_COLUMN} (bench/scale_table.py writes it)")
    total = 0.0
    for number, row in enumerate(rows, start=2):
        if row["rule"] in NOT_IN_A_REAL_RUN:
            continue
        try:
            total += float(row[DISK_COLUMN] or 0)
        except ValueError:
            raise DataError(f"{path}: line {number}: {DISK_COLUMN} {row[DISK_COLUMN]!r} is not a number") from None
    return total


def existing_folder(path) -> Path:
    """`path`, or its nearest ancestor that exists (a results folder not made yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_check(results, scale_csv=None) -> Check:
    """Free space on the results folder's filesystem against a real run's need."""
    folder = existing_folder(results)
    free_mb = shutil.disk_usage(folder).free / 1e6
    where = f"{free_mb / 1e3:.1f} GB free on the filesystem of {results}"
    if scale_csv is None:
        return Check(OK, "disk", f"{where} (no --scale-csv: a real run's need not checked)")
    try:
        need_mb = disk_need_mb(scale_csv)
    except FuturesegError as exc:
        return Check(FAIL, "disk", str(exc))
    need = f"a real run writes {need_mb / 1e3:.1f} GB ({scale_csv}: {DISK_COLUMN} summed, {', '.join(sorted(NOT_IN_A_REAL_RUN))} aside)"
    if free_mb < need_mb:
        return Check(FAIL, "disk", f"only {where}; {need}: free space, or point `results` elsewhere")
    return Check(OK, "disk", f"{where}; {need}")


# -------------------------------------------------------------------------------------------- verb


def run_checks(args, run=None) -> list[Check]:
    """Every check, in the order a user fixes them: the software, the hardware, the cluster, the
    data, the disk. `run` runs the external commands (default: run_command, looked up here so
    that a test may replace it)."""
    from futureseg.core.training import cpu_allowed

    run = run or run_command
    gpu_job = in_gpu_job()
    checks = [torch_check(gpu_job), driver_check(gpu_job, run), gpu_check(gpu_job, cpu_allowed())]
    checks += slurm_checks(args.partition, args.gpu_partition, args.account, args.qos, run=run)
    if args.root is None:
        checks.append(Check(WARN, "dataset", "no --root: not checked"))
    else:
        checks.append(dataset_check(args.root, args.splits, args.workers))
    checks.append(disk_check(args.results, args.scale_csv))
    return checks


VERB = "doctor"
HELP = "pre-flight check: torch and the driver, the GPUs, SLURM partitions and account, the dataset, the disk"


def add_arguments(parser) -> None:
    from futureseg.core.flags import comma_list

    parser.add_argument("--root", help="Dataset_Student root to check (as check-data does)")
    parser.add_argument("--splits", type=comma_list, default=data.SPLITS, help="comma-separated splits [all four]")
    parser.add_argument("--workers", type=int, default=1, help="processes checking the dataset")
    parser.add_argument("--results", default="results", help="the results folder, whose filesystem needs the space")
    parser.add_argument("--scale-csv", help="docs/scale.csv: the disk a real run writes (disk_mb@real)")
    slurm = parser.add_argument_group("SLURM (config resources.slurm; unset: sbatch's defaults)")
    slurm.add_argument("--partition", help="the partition jobs go to (default: the cluster's default partition)")
    slurm.add_argument("--gpu-partition", help="the partition the GPU jobs go to (default: --partition's)")
    slurm.add_argument("--account", help="the account jobs are charged to")
    slurm.add_argument("--qos", help="the QoS jobs ask for")
    parser.add_argument("--out", help="report to write (the same lines), only when no check fails")


def main(args) -> None:
    checks = run_checks(args)
    lines = [check.line() for check in checks]
    print("\n".join(lines), flush=True)
    failed = [check.what for check in checks if check.status == FAIL]
    if failed:
        raise FuturesegError(f"{len(failed)} of {len(checks)} checks failed ({', '.join(failed)}); "
                             + (f"{args.out} not written" if args.out else "see the FAIL lines above"))
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
