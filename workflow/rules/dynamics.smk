# Route `dynamics`: object tracks of the training videos (train's true masks, the pseudo splits'
# pseudo-labels), a dynamics model learnt from them (a GPU rule that runs on CPU too), its
# forecasts of val and hidden (hidden in shards), and the references `dynamics_truth` (the
# model on val's true masks 0…10) and `placement_oracle` (each true object of frame 10 at its
# true centroid and size: the ceiling of a route that moves what it saw).

DYN = config["dynamics"]
# the trainer's flags: every key of the section but the splits it reads
DYN_TRAINING = {key: value for key, value in DYN.items() if key != "pseudo_splits"}
DYNAMICS_MODEL = f"{RESULTS}/dynamics/model.pt"


rule tracks:
    input:
        data=DATA,
        checked=DATA_CHECK,
        # train's true masks, the other training splits' pseudo-labels
        masks=lambda wildcards: [] if wildcards.split == "train" else f"{RESULTS}/pseudo/{wildcards.split}.npy",
        frames=lambda wildcards: motion_frames(wildcards.split),
    output:
        f"{RESULTS}/dynamics/tracks_{{split}}.npz",
    wildcard_constraints:
        split="train|unlabeled",
    params:
        flow=M["flow"],
        flow_pairs=M["flow_pairs"],
        frames=frames_flag,
        masks=lambda wildcards, input: f"--masks {input.masks}" if input.masks else f"--root {input.data} --split train",
    threads: rule_threads("tracks")
    resources:
        **rule_resources("tracks"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/tracks.{{split}}.tsv",
    log:
        f"{RESULTS}/logs/tracks_{{split}}.log",
    shell:
        "futureseg tracks {params.masks} {params.frames} --flow {params.flow} --flow-pairs {params.flow_pairs}"
        " --out {output} 2> {log}"


rule train_dynamics:
    input:
        data=DATA,
        checked=DATA_CHECK,
        tracks=expand(f"{RESULTS}/dynamics/tracks_{{split}}.npz", split=["train", *DYN["pseudo_splits"]]),
        val_frames=motion_frames("val"),
    output:
        model=DYNAMICS_MODEL,
        metrics=report(
            f"{RESULTS}/dynamics/metrics.csv", caption="../report/dynamics_metrics.rst", category="Dynamics"
        ),
    params:
        settings=DYN_TRAINING,
        flags=flags(DYN_TRAINING),
        motion=json.dumps(M),
        val_frames=lambda wildcards, input: f"--val-frames {input.val_frames}" if input.val_frames else "",
        checkpoints=f"{RESULTS}/dynamics/checkpoints",
        max_steps=MAX_STEPS_FLAG,
    threads: rule_threads("train_dynamics")
    resources:
        **rule_resources("train_dynamics"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/train_dynamics.tsv",
    log:
        f"{RESULTS}/logs/train_dynamics.log",
    shell:
        "futureseg train-dynamics --tracks {input.tracks} --val-root {input.data} {params.val_frames}"
        " --motion-config '{params.motion}' {params.flags} --out {output.model} --metrics {output.metrics}"
        " --checkpoints {params.checkpoints} {params.max_steps} --threads {threads} 2> {log}"


rule dynamics:
    input:
        model=DYNAMICS_MODEL,
        masks=f"{RESULTS}/pseudo/val.npy",
        frames=motion_frames("val"),
    output:
        masks=f"{RESULTS}/dynamics/masks_val.npy",
        sequence=f"{RESULTS}/dynamics/sequence_val.npy",
    params:
        frames=frames_flag,
    threads: rule_threads("dynamics")
    resources:
        **rule_resources("dynamics"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/dynamics.tsv",
    log:
        f"{RESULTS}/logs/dynamics.log",
    shell:
        "futureseg dynamics --model {input.model} --masks {input.masks} {params.frames}"
        " --out {output.masks} --out-sequence {output.sequence} --threads {threads} 2> {log}"


rule dynamics_hidden_shard:
    input:
        model=DYNAMICS_MODEL,
        masks=f"{RESULTS}/pseudo/hidden.npy",
        frames=motion_frames("hidden"),
    output:
        masks=temp(f"{RESULTS}/dynamics/hidden_shards/masks_{{scatteritem}}.npy"),
        # the forecaster's prior of the same hidden shard (forecaster.prior: dynamics)
        sequence=intermediate(f"{RESULTS}/dynamics/hidden_shards/sequence_{{scatteritem}}.npy"),
    params:
        frames=frames_flag,
        shard=shard_arg,
    threads: rule_threads("dynamics_hidden_shard")
    resources:
        **rule_resources("dynamics_hidden_shard"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/dynamics_hidden_shard.{{scatteritem}}.tsv",
    log:
        f"{RESULTS}/logs/dynamics_hidden_{{scatteritem}}.log",
    shell:
        "futureseg dynamics --model {input.model} --masks {input.masks} {params.frames} --shard {params.shard}"
        " --out {output.masks} --out-sequence {output.sequence} --threads {threads} 2> {log}"


# forecaster.prior: dynamics: route dynamics' masks 11…21 of the forecaster's training videos
rule dynamics_prior:
    input:
        data=DATA,
        checked=DATA_CHECK,
        model=DYNAMICS_MODEL,
        # train's true masks, the other training splits' pseudo-labels
        masks=lambda wildcards: [] if wildcards.split == "train" else f"{RESULTS}/pseudo/{wildcards.split}.npy",
        frames=lambda wildcards: motion_frames(wildcards.split),
    output:
        intermediate(f"{RESULTS}/dynamics/sequence_{{split}}.npy"),
    wildcard_constraints:
        split="train|unlabeled",
    params:
        frames=frames_flag,
        masks=lambda wildcards, input: f"--masks {input.masks}" if input.masks else f"--root {input.data} --split train",
    threads: rule_threads("dynamics_prior")
    resources:
        **rule_resources("dynamics_prior"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/dynamics_prior.{{split}}.tsv",
    log:
        f"{RESULTS}/logs/dynamics_prior_{{split}}.log",
    shell:
        "futureseg dynamics --model {input.model} {params.masks} {params.frames} --out-sequence {output}"
        " --threads {threads} 2> {log}"


rule dynamics_truth:
    input:
        data=DATA,
        checked=DATA_CHECK,
        model=DYNAMICS_MODEL,
        frames=motion_frames("val"),
    output:
        f"{RESULTS}/dynamics/masks_val_truth.npy",
    params:
        frames=frames_flag,
    threads: rule_threads("dynamics_truth")
    resources:
        **rule_resources("dynamics_truth"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/dynamics_truth.tsv",
    log:
        f"{RESULTS}/logs/dynamics_truth.log",
    shell:
        "futureseg dynamics --model {input.model} --root {input.data} --split val {params.frames}"
        " --out {output} --threads {threads} 2> {log}"


rule placement_oracle:
    input:
        data=DATA,
        checked=DATA_CHECK,
    output:
        f"{RESULTS}/dynamics/masks_val_placement_oracle.npy",
    threads: rule_threads("placement_oracle")
    resources:
        **rule_resources("placement_oracle"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/placement_oracle.tsv",
    log:
        f"{RESULTS}/logs/placement_oracle.log",
    shell:
        "futureseg dynamics --placement-oracle --root {input.data} --split val --out {output} 2> {log}"
