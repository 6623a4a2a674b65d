# Stage 0-1: the synthetic dataset (when data.root is unset) and the per-channel mean/std.


rule synth_dataset:
    output:
        directory(SYNTHETIC),
    params:
        synthetic=config["data"]["synthetic"],
    threads: config["data"]["workers"]
    resources:
        runtime=res("synth_dataset")["runtime"],
        mem_mb=res("synth_dataset")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{SYNTHETIC}.log",
    shell:
        "futureseg synth --out {output} --seed {params.synthetic[seed]}"
        " --height {params.synthetic[height]} --width {params.synthetic[width]}"
        " --train {params.synthetic[train]} --val {params.synthetic[val]}"
        " --unlabeled {params.synthetic[unlabeled]} --hidden {params.synthetic[hidden]}"
        " --workers {threads} 2> {log}"


rule mean_std:
    input:
        DATA,
    output:
        f"{RESULTS}/data/mean_std.json",
    params:
        splits=csv(config["data"]["mean_std_splits"]),
    threads: config["data"]["workers"]
    resources:
        runtime=res("mean_std")["runtime"],
        mem_mb=res("mean_std")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/mean_std.log",
    shell:
        "futureseg mean-std --root {input} --out {output} --splits {params.splits}"
        " --workers {threads} 2> {log}"


rule cache_frames:
    input:
        DATA,
    output:
        frames=f"{RESULTS}/cache/{{split}}.npy",
        ids=f"{RESULTS}/cache/{{split}}.json",
    threads: config["data"]["workers"]
    resources:
        runtime=res("cache_frames")["runtime"],
        mem_mb=res("cache_frames")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/cache_frames_{{split}}.log",
    shell:
        "futureseg cache-frames --root {input} --split {wildcards.split}"
        " --out {output.frames} --workers {threads} 2> {log}"
