# Route `direct`: one U-Net from the 11 stacked input frames to the mask of frame 21.

D = config["direct"]


rule train_direct:
    input:
        data=DATA,
        checked=DATA_CHECK,
        cache=f"{RESULTS}/cache/train.npy",
        val_cache=f"{RESULTS}/cache/val.npy",
        mean_std=f"{RESULTS}/data/mean_std.json",
        # unlabeled's frames and the segmenter's mask of their frame 21, when asked for
        pseudo=[f"{RESULTS}/cache/unlabeled.npy", f"{RESULTS}/pseudo/unlabeled.npy"] if D["pseudo_labels"] else [],
    output:
        model=f"{RESULTS}/direct/model.pt",
        metrics=report(
            f"{RESULTS}/direct/metrics.csv", caption="../report/direct_metrics.rst", category="Direct route"
        ),
    params:
        settings=D,
        pseudo=lambda wildcards, input: (
            f"--pseudo-cache {input.pseudo[0]} --pseudo {input.pseudo[1]}" if input.pseudo else ""
        ),
        flags=flags({k: v for k, v in D.items() if k not in ("pseudo_labels", "seed", "checkpoint_every")}),
        checkpoints=f"{RESULTS}/direct/checkpoints",
        max_steps=MAX_STEPS_FLAG,
    threads: rule_threads("train_direct")
    resources:
        **rule_resources("train_direct"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/train_direct.tsv",
    log:
        f"{RESULTS}/logs/train_direct.log",
    shell:
        "futureseg train-direct --root {input.data} --cache {input.cache} --label-splits train {params.pseudo}"
        " --val-cache {input.val_cache} --mean-std {input.mean_std} --out {output.model}"
        " --metrics {output.metrics} --checkpoints {params.checkpoints} {params.flags}"
        " --seed {params.settings[seed]} --checkpoint-every {params.settings[checkpoint_every]}"
        " {params.max_steps} --threads {threads} 2> {log}"


rule predict_direct:
    input:
        model=f"{RESULTS}/direct/model.pt",
        cache=f"{RESULTS}/cache/val.npy",
    output:
        f"{RESULTS}/direct/masks_val.npy",
    threads: rule_threads("predict_direct")
    resources:
        **rule_resources("predict_direct"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/predict_direct.tsv",
    log:
        f"{RESULTS}/logs/predict_direct.log",
    shell:
        "futureseg predict-direct --model {input.model} --cache {input.cache} --out {output}"
        " --threads {threads} 2> {log}"


rule predict_direct_hidden_shard:
    input:
        model=f"{RESULTS}/direct/model.pt",
        cache=f"{RESULTS}/cache/hidden.npy",
    output:
        temp(f"{RESULTS}/direct/hidden_shards/masks_{{scatteritem}}.npy"),
    params:
        shard=shard_arg,
    threads: rule_threads("predict_direct_hidden_shard")
    resources:
        **rule_resources("predict_direct_hidden_shard"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/predict_direct_hidden_shard.{{scatteritem}}.tsv",
    log:
        f"{RESULTS}/logs/predict_direct_hidden_{{scatteritem}}.log",
    shell:
        "futureseg predict-direct --model {input.model} --cache {input.cache} --out {output}"
        " --shard {params.shard} --threads {threads} 2> {log}"
