# Route `masks`: pseudo-labels (the segmenter's masks of every frame), a mask forecaster
# trained on mask sequences, and its forecasts of val and hidden (hidden in shards).

F = config["forecaster"]
# forecaster.prior: motion (dynamics): the priors of its training videos (train's true masks,
# then each pseudo split's; rule motion_prior, dynamics_prior) and of val, hidden (that
# route's sequences), all under results/<prior>/
SEQUENCE_PRIOR = F["prior"] != "copy_last"
PRIOR_DIR = f"{RESULTS}/{F['prior']}"


rule pseudo_label:
    input:
        model=f"{RESULTS}/segmenter/model.pt",
        cache=f"{RESULTS}/cache/{{split}}.npy",
        object_classifier=OBJECT_CLASSIFIER,
    output:
        masks=intermediate(f"{RESULTS}/pseudo/{{split}}.npy"),
        ids=intermediate(f"{RESULTS}/pseudo/{{split}}.json"),
    wildcard_constraints:
        split="unlabeled|val|hidden",
    params:
        # every frame of the training split; only the inputs 0…10 where frame 21 is the question
        frames=lambda wildcards: 22 if wildcards.split == "unlabeled" else 11,
        # per frame, one class per object; then per video, one class per track
        votes=" ".join(flag for flag in (OBJECT_CLASS, "--track-vote" if S["track_vote"] else "") if flag),
        # a recurrent segmenter runs each video as a sequence; the verb refuses a model file of another kind
        temporal=TEMPORAL,
    threads: rule_threads("pseudo_label")
    resources:
        **rule_resources("pseudo_label"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/pseudo_label.{{split}}.tsv",
    log:
        f"{RESULTS}/logs/pseudo_label_{{split}}.log",
    shell:
        "futureseg pseudo-label --model {input.model} --cache {input.cache} --out {output.masks}"
        " --frames {params.frames} {params.votes} --temporal {params.temporal} --threads {threads} 2> {log}"


rule train_forecaster:
    input:
        data=DATA,
        checked=DATA_CHECK,
        pseudo=expand(f"{RESULTS}/pseudo/{{split}}.npy", split=F["pseudo_splits"]),
        val_pseudo=f"{RESULTS}/pseudo/val.npy",
        priors=expand(f"{PRIOR_DIR}/sequence_{{split}}.npy", split=["train", *F["pseudo_splits"]]) if SEQUENCE_PRIOR else [],
        val_prior=[f"{PRIOR_DIR}/sequence_val.npy"] if SEQUENCE_PRIOR else [],
    output:
        model=f"{RESULTS}/forecaster/model.pt",
        metrics=report(
            f"{RESULTS}/forecaster/metrics.csv",
            caption="../report/forecaster_metrics.rst",
            category="Mask forecasting",
        ),
    params:
        # only the selected model's section: editing the other one reruns nothing
        settings=selected(F),
        model_config=json.dumps(F[F["model"]]),
        checkpoints=f"{RESULTS}/forecaster/checkpoints",
        max_steps=MAX_STEPS_FLAG,
        priors=lambda wildcards, input: f"--priors {' '.join(input.priors)} --val-prior {input.val_prior}" if SEQUENCE_PRIOR else "",
    threads: rule_threads("train_forecaster")
    resources:
        **rule_resources("train_forecaster"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/train_forecaster.tsv",
    log:
        f"{RESULTS}/logs/train_forecaster.log",
    shell:
        "futureseg train-forecaster --root {input.data} --label-splits train --pseudo {input.pseudo}"
        " --val-pseudo {input.val_pseudo} --out {output.model} --metrics {output.metrics}"
        " --checkpoints {params.checkpoints} --model {params.settings[model]} --prior {params.settings[prior]} {params.priors}"
        " --model-config '{params.model_config}' --epochs {params.settings[epochs]}"
        " --iou-finetune-epochs {params.settings[iou_finetune_epochs]}"
        " --soft-iou-weight {params.settings[soft_iou_weight]} --background-weight {params.settings[background_weight]}"
        " --batch-size {params.settings[batch_size]} --patience {params.settings[patience]}"
        " --lr {params.settings[lr]} --weight-decay {params.settings[weight_decay]}"
        " --seed {params.settings[seed]} --checkpoint-every {params.settings[checkpoint_every]}"
        " {params.max_steps} --threads {threads} 2> {log}"


rule forecast:
    input:
        model=f"{RESULTS}/forecaster/model.pt",
        masks=f"{RESULTS}/pseudo/val.npy",
        prior=[f"{PRIOR_DIR}/sequence_val.npy"] if SEQUENCE_PRIOR else [],
    output:
        masks=f"{RESULTS}/forecaster/masks_val.npy",
        sequence=f"{RESULTS}/forecaster/sequence_val.npy",
    params:
        prior=lambda wildcards, input: f"--prior {input.prior}" if input.prior else "",
    threads: rule_threads("forecast")
    resources:
        **rule_resources("forecast"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/forecast.tsv",
    log:
        f"{RESULTS}/logs/forecast.log",
    shell:
        "futureseg forecast --model {input.model} --masks {input.masks} {params.prior} --out {output.masks}"
        " --out-sequence {output.sequence} --threads {threads} 2> {log}"


rule forecast_hidden_shard:
    input:
        model=f"{RESULTS}/forecaster/model.pt",
        masks=f"{RESULTS}/pseudo/hidden.npy",
        prior=[f"{PRIOR_DIR}/hidden_shards/sequence_{{scatteritem}}.npy"] if SEQUENCE_PRIOR else [],
    output:
        temp(f"{RESULTS}/forecaster/hidden_shards/masks_{{scatteritem}}.npy"),
    params:
        shard=shard_arg,
        prior=lambda wildcards, input: f"--prior {input.prior}" if input.prior else "",
    threads: rule_threads("forecast_hidden_shard")
    resources:
        **rule_resources("forecast_hidden_shard"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/forecast_hidden_shard.{{scatteritem}}.tsv",
    log:
        f"{RESULTS}/logs/forecast_hidden_{{scatteritem}}.log",
    shell:
        "futureseg forecast --model {input.model} --masks {input.masks} {params.prior} --out {output}"
        " --shard {params.shard} --threads {threads} 2> {log}"
