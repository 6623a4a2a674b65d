# Stage 0-1: the synthetic dataset (when data.root is unset), the check of the dataset, the
# per-channel mean/std and the frame caches.


rule synth_dataset:
    output:
        directory(SYNTHETIC),
    params:
        synthetic=config["data"]["synthetic"],
    threads: rule_threads("synth_dataset")
    resources:
        **rule_resources("synth_dataset"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/synth_dataset.tsv",
    log:
        f"{SYNTHETIC}.log",
    shell:
        "futureseg synth --out {output} --seed {params.synthetic[seed]}"
        " --height {params.synthetic[height]} --width {params.synthetic[width]}"
        " --train {params.synthetic[train]} --val {params.synthetic[val]}"
        " --unlabeled {params.synthetic[unlabeled]} --hidden {params.synthetic[hidden]}"
        " --workers {threads} 2> {log}"


rule check_data:
    input:
        DATA,
    output:
        DATA_CHECK,
    params:
        splits=csv(DATA_SPLITS),
        files=data_fingerprint,
    threads: rule_threads("check_data")
    resources:
        **rule_resources("check_data"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/check_data.tsv",
    log:
        f"{RESULTS}/logs/check_data.log",
    shell:
        "futureseg check-data --root {input} --splits {params.splits} --out {output}"
        " --workers {threads} 2> {log}"


rule mean_std:
    input:
        data=DATA,
        checked=DATA_CHECK,
    output:
        f"{RESULTS}/data/mean_std.json",
    params:
        splits=csv(config["data"]["mean_std_splits"]),
    threads: rule_threads("mean_std")
    resources:
        **rule_resources("mean_std"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/mean_std.tsv",
    log:
        f"{RESULTS}/logs/mean_std.log",
    shell:
        "futureseg mean-std --root {input.data} --out {output} --splits {params.splits}"
        " --workers {threads} 2> {log}"


rule cache_frames:
    input:
        data=DATA,
        checked=DATA_CHECK,
    output:
        frames=intermediate(f"{RESULTS}/cache/{{split}}.npy"),
        ids=intermediate(f"{RESULTS}/cache/{{split}}.json"),
    threads: rule_threads("cache_frames")
    resources:
        **rule_resources("cache_frames"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/cache_frames.{{split}}.tsv",
    log:
        f"{RESULTS}/logs/cache_frames_{{split}}.log",
    shell:
        "futureseg cache-frames --root {input.data} --split {wildcards.split}"
        " --out {output.frames} --workers {threads} 2> {log}"


# The pre-flight check, a target to name, never part of rule all: `snakemake --profile slurm
# -f doctor` runs it as a short job on a GPU node (config resources.doctor), so that the driver
# and the GPUs it reports are the compute nodes'; -f reruns it when its report exists. It reads
# the dataset itself, not check_data's report: a bad dataset is one of its lines, after the
# others, instead of a stop before them. The disk a real run writes (the scale benchmark's
# table) is checked when the dataset is a real one.
SCALE_TABLE = str(Path(workflow.basedir) / "docs" / "scale.csv")


rule doctor:
    input:
        data=DATA,
        scale=[SCALE_TABLE] if config["data"]["root"] else [],
    output:
        f"{RESULTS}/doctor/report.txt",
    params:
        splits=csv(DATA_SPLITS),
        # the results folder, whose filesystem needs the space: the report's grandparent
        results=lambda wildcards, output: Path(output[0]).parent.parent,
        # where the jobs go (resources.slurm): each named partition, account and QoS must exist
        slurm=flags({key: value for key, value in config["resources"]["slurm"].items()
                     if key in ("partition", "gpu_partition", "account", "qos") and value}),
        scale=lambda wildcards, input: f"--scale-csv {input.scale}" if input.scale else "",
    threads: rule_threads("doctor")
    resources:
        **rule_resources("doctor"),
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/doctor.log",
    shell:
        "futureseg doctor --root {input.data} --splits {params.splits} --workers {threads}"
        " --results {params.results} {params.scale} {params.slurm} --out {output} > {log} 2>&1"
