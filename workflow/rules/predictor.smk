# Stage 2: self-supervised frame prediction (a model of futureseg.models.predictors), then
# predicted frames.

P = config["predictor"]


rule train_predictor:
    input:
        caches=expand(f"{RESULTS}/cache/{{split}}.npy", split=P["train_splits"]),
        val_cache=f"{RESULTS}/cache/val.npy",
        mean_std=f"{RESULTS}/data/mean_std.json",
    output:
        model=f"{RESULTS}/predictor/model.pt",
        metrics=report(
            f"{RESULTS}/predictor/metrics.csv",
            caption="../report/predictor_metrics.rst",
            category="Frame prediction",
        ),
    params:
        # one dict: Snakemake compares a job's params as a set of values, so two int settings
        # swapped (epochs 2, batch_size 1 → 1, 2) as separate params would read as unchanged.
        # Only the selected model's section: editing the other one reruns nothing.
        settings={key: P[key] for key in ("model", "epochs", "batch_size", "lr", "weight_decay", "seed",
                                          "checkpoint_every")} | {"model_config": P[P["model"]]},
        model_config=json.dumps(P[P["model"]]),
        checkpoints=f"{RESULTS}/predictor/checkpoints",
        max_steps=MAX_STEPS_FLAG,
    threads: rule_threads("train_predictor")
    resources:
        **rule_resources("train_predictor"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/train_predictor.tsv",
    log:
        f"{RESULTS}/logs/train_predictor.log",
    # --gpus from the job's own resources: more than one runs a process per GPU (torch DDP,
    # launched by the verb), the global batch staying predictor.batch_size
    shell:
        "futureseg train-predictor --cache {input.caches} --val-cache {input.val_cache}"
        " --mean-std {input.mean_std} --out {output.model} --metrics {output.metrics}"
        " --checkpoints {params.checkpoints} --model {params.settings[model]} --model-config '{params.model_config}'"
        " --epochs {params.settings[epochs]} --batch-size {params.settings[batch_size]} --lr {params.settings[lr]}"
        " --weight-decay {params.settings[weight_decay]} --seed {params.settings[seed]}"
        " --checkpoint-every {params.settings[checkpoint_every]}"
        " {params.max_steps} --gpus {resources.gpu} --threads {threads} 2> {log}"


rule predict_frames:
    input:
        model=f"{RESULTS}/predictor/model.pt",
        cache=f"{RESULTS}/cache/{{split}}.npy",
    output:
        frames=intermediate(f"{RESULTS}/predictor/frames_{{split}}.npy"),
        ids=intermediate(f"{RESULTS}/predictor/frames_{{split}}.json"),
    wildcard_constraints:
        split="train|val",
    params:
        frames=kept_frames,
    threads: rule_threads("predict_frames")
    resources:
        **rule_resources("predict_frames"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/predict_frames.{{split}}.tsv",
    log:
        f"{RESULTS}/logs/predict_frames_{{split}}.log",
    shell:
        "futureseg predict-frames --model {input.model} --cache {input.cache}"
        " --out {output.frames} --frames {params.frames} --threads {threads} 2> {log}"


rule predict_hidden_shard:
    input:
        model=f"{RESULTS}/predictor/model.pt",
        cache=f"{RESULTS}/cache/hidden.npy",
    output:
        frames=intermediate(f"{RESULTS}/predictor/hidden_shards/frames_{{scatteritem}}.npy"),
        ids=intermediate(f"{RESULTS}/predictor/hidden_shards/frames_{{scatteritem}}.json"),
    params:
        frames=csv(P["keep_frames"]),
        shard=shard_arg,
    threads: rule_threads("predict_hidden_shard")
    resources:
        **rule_resources("predict_hidden_shard"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/predict_hidden_shard.{{scatteritem}}.tsv",
    log:
        f"{RESULTS}/logs/predict_hidden_{{scatteritem}}.log",
    shell:
        "futureseg predict-frames --model {input.model} --cache {input.cache} --out {output.frames}"
        " --frames {params.frames} --shard {params.shard} --threads {threads} 2> {log}"
