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
