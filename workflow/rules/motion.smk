# Route `motion`: each object of the segmented frame 10 moved by its own motion (training-free,
# a CPU job), the same motion on the true masks (the reference `motion_truth`), and the mask
# forecaster's motion priors of its training videos (forecaster.prior: motion).

M = config["motion"]
# Its input functions motion_frames and frames_flag are in common.smk: a rule file with its
# own functions fails `snakemake --lint` (tests/test_lint.py).


rule extrapolate:
    input:
        masks=f"{RESULTS}/pseudo/val.npy",
        frames=motion_frames("val"),
    output:
        masks=f"{RESULTS}/motion/masks_val.npy",
        sequence=f"{RESULTS}/motion/sequence_val.npy",
    params:
        motion=json.dumps(M),
        frames=frames_flag,
    threads: rule_threads("extrapolate")
    resources:
        **rule_resources("extrapolate"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/extrapolate.tsv",
    log:
        f"{RESULTS}/logs/extrapolate.log",
    shell:
        "futureseg extrapolate --masks {input.masks} {params.frames} --motion-config '{params.motion}'"
        " --out {output.masks} --out-sequence {output.sequence} 2> {log}"


rule extrapolate_hidden_shard:
    input:
        masks=f"{RESULTS}/pseudo/hidden.npy",
        frames=motion_frames("hidden"),
    output:
        masks=temp(f"{RESULTS}/motion/hidden_shards/masks_{{scatteritem}}.npy"),
        # the forecaster's prior of the same hidden shard
        sequence=intermediate(f"{RESULTS}/motion/hidden_shards/sequence_{{scatteritem}}.npy"),
    params:
        motion=json.dumps(M),
        frames=frames_flag,
        shard=shard_arg,
    threads: rule_threads("extrapolate_hidden_shard")
    resources:
        **rule_resources("extrapolate_hidden_shard"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/extrapolate_hidden_shard.{{scatteritem}}.tsv",
    log:
        f"{RESULTS}/logs/extrapolate_hidden_{{scatteritem}}.log",
    shell:
        "futureseg extrapolate --masks {input.masks} {params.frames} --motion-config '{params.motion}'"
        " --shard {params.shard} --out {output.masks} --out-sequence {output.sequence} 2> {log}"


rule motion_truth:
    input:
        data=DATA,
        checked=DATA_CHECK,
        frames=motion_frames("val"),
    output:
        f"{RESULTS}/motion/masks_val_truth.npy",
    params:
        motion=json.dumps(M),
        frames=frames_flag,
    threads: rule_threads("motion_truth")
    resources:
        **rule_resources("motion_truth"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/motion_truth.tsv",
    log:
        f"{RESULTS}/logs/motion_truth.log",
    shell:
        "futureseg extrapolate --root {input.data} --split val {params.frames} --motion-config '{params.motion}'"
        " --out {output} 2> {log}"


rule motion_prior:
    input:
        data=DATA,
        checked=DATA_CHECK,
        # train's true masks, the other training splits' pseudo-labels
        masks=lambda wildcards: [] if wildcards.split == "train" else f"{RESULTS}/pseudo/{wildcards.split}.npy",
        frames=lambda wildcards: motion_frames(wildcards.split),
    output:
        intermediate(f"{RESULTS}/motion/sequence_{{split}}.npy"),
    wildcard_constraints:
        split="train|unlabeled",
    params:
        motion=json.dumps(M),
        frames=frames_flag,
        masks=lambda wildcards, input: f"--masks {input.masks}" if input.masks else f"--root {input.data} --split train",
    threads: rule_threads("motion_prior")
    resources:
        **rule_resources("motion_prior"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/motion_prior.{{split}}.tsv",
    log:
        f"{RESULTS}/logs/motion_prior_{{split}}.log",
    shell:
        "futureseg extrapolate {params.masks} {params.frames} --motion-config '{params.motion}'"
        " --out-sequence {output} 2> {log}"
