# Stages 3-4: the segmentation training set (real + generated frames, blur, frameskip),
# segmenter training (U-Net, ENet or Mask R-CNN) and the object classifier's, masks of the
# predicted frame 21 (route `frames`) and of the true frames 21 and 10 (the references every
# route is scored by).

A = config["augment"]
S = config["segmenter"]
SEGMENTER = S[S["model"]]  # the selected segmenter's settings
# Mask R-CNN paints instances above this score; a U-Net or ENet has no threshold (argmax)
SCORE_THRESHOLD = SEGMENTER.get("score_threshold", 0.5)
TRAINING_SETTINGS = {k: v for k, v in SEGMENTER.items() if k != "score_threshold"}
# One class per object (segmenter.object_class): it shapes the masks (rules segment*,
# pseudo_label), not the segmenter's weights. The classifier's model file is an input of
# those rules only when it is used.
OBJECT_CLASSIFIER_MODEL = f"{RESULTS}/segmenter/object_classifier.pt"
OBJECT_CLASSIFIER = [OBJECT_CLASSIFIER_MODEL] if S["object_class"] == "classifier" else []
# The recurrent segmenter (segmenter.temporal): its kind reaches train_segmenter and
# pseudo_label (which checks the model file is of that kind); its training settings
# (segmenter.recurrent) reach train_segmenter only when it is on, so editing them under
# temporal: none reruns nothing.
TEMPORAL = S["temporal"]
if TEMPORAL != "none" and S["model"] not in ("unet", "enet"):
    raise ValueError(f"config segmenter.temporal: {TEMPORAL} makes a U-Net or ENet recurrent, not segmenter.model "
                     f"{S['model']!r}; set temporal: none or model: unet | enet")
RECURRENT_FLAGS = flags(S["recurrent"]) if TEMPORAL != "none" else ""
OBJECT_CLASS = {
    "classifier": f"--object-classifier {OBJECT_CLASSIFIER_MODEL}",
    "vote": "--object-vote",
    "none": "",
}[S["object_class"]]


rule make_seg_frames:
    input:
        data=DATA,
        checked=DATA_CHECK,
        # the predictor's frames of train videos, unless the generated source is off
        frames=[f"{RESULTS}/predictor/frames_train.npy"] if A["generated"] else [],
    output:
        intermediate(directory(f"{RESULTS}/segframes")),
    params:
        generated=lambda wildcards, input: (
            f"--generated --frames {input.frames}" if A["generated"] else "--no-generated"
        ),
        frameskip=A["frameskip"],
        blur_prob=A["blur_prob"],
        blur_sigma=csv(A["blur_sigma"]),
        seed=A["seed"],
    threads: rule_threads("make_seg_frames")
    resources:
        **rule_resources("make_seg_frames"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/make_seg_frames.tsv",
    log:
        f"{RESULTS}/logs/make_seg_frames.log",
    shell:
        "futureseg make-seg-frames --root {input.data} --out {output}"
        " {params.generated} --frameskip {params.frameskip} --blur-prob {params.blur_prob}"
        " --blur-sigma {params.blur_sigma} --seed {params.seed} 2> {log}"


rule train_segmenter:
    input:
        data=DATA,
        checked=DATA_CHECK,
        seg_frames=f"{RESULTS}/segframes",
        mean_std=f"{RESULTS}/data/mean_std.json",
    output:
        model=f"{RESULTS}/segmenter/model.pt",
        metrics=report(
            f"{RESULTS}/segmenter/metrics.csv",
            caption="../report/segmenter_metrics.rst",
            category="Segmentation",
        ),
    params:
        model=S["model"],
        # only the selected model's section (editing the other one reruns nothing), less
        # the painting threshold: it shapes the masks (rule segment), not the weights
        settings=TRAINING_SETTINGS,
        flags=flags(TRAINING_SETTINGS),
        temporal=TEMPORAL,
        recurrent=RECURRENT_FLAGS,
        seed=S["seed"],
        checkpoint_every=S["checkpoint_every"],
        checkpoints=f"{RESULTS}/segmenter/checkpoints",
        max_steps=MAX_STEPS_FLAG,
    threads: rule_threads("train_segmenter")
    resources:
        **rule_resources("train_segmenter"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/train_segmenter.tsv",
    log:
        f"{RESULTS}/logs/train_segmenter.log",
    # --workers: Mask R-CNN's loader processes, decoding and augmenting beside the GPU (the
    # per-pixel models' trainer (U-Net, ENet) reads its frames in-process and ignores it).
    # The recurrent segmenter reads train's clips from --root and not --seg-frames (passed
    # all the same: the object classifier needs the folder in every config).
    shell:
        "futureseg train-segmenter --root {input.data} --seg-frames {input.seg_frames}"
        " --mean-std {input.mean_std}"
        " --out {output.model} --metrics {output.metrics} --checkpoints {params.checkpoints}"
        " --model {params.model} {params.flags} --temporal {params.temporal} {params.recurrent} --seed {params.seed}"
        " --checkpoint-every {params.checkpoint_every} {params.max_steps} --threads {threads}"
        " --workers {threads} 2> {log}"


# Each object's shape and material, decided from its crop and silhouette (segmenter.object_class:
# classifier): trained on the true objects of the segmenter's own training set, beside it.
rule train_object_classifier:
    input:
        data=DATA,
        checked=DATA_CHECK,
        seg_frames=f"{RESULTS}/segframes",
        mean_std=f"{RESULTS}/data/mean_std.json",
    output:
        model=OBJECT_CLASSIFIER_MODEL,
        metrics=report(
            f"{RESULTS}/segmenter/object_classifier_metrics.csv",
            caption="../report/object_classifier_metrics.rst",
            category="Segmentation",
        ),
    params:
        settings=S["object_classifier"],
        flags=flags(S["object_classifier"]),
        seed=S["seed"],
        checkpoint_every=S["checkpoint_every"],
        checkpoints=f"{RESULTS}/segmenter/object_classifier_checkpoints",
        max_steps=MAX_STEPS_FLAG,
    threads: rule_threads("train_object_classifier")
    resources:
        **rule_resources("train_object_classifier"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/train_object_classifier.tsv",
    log:
        f"{RESULTS}/logs/train_object_classifier.log",
    shell:
        "futureseg train-object-classifier --root {input.data} --seg-frames {input.seg_frames}"
        " --mean-std {input.mean_std} --out {output.model} --metrics {output.metrics}"
        " --checkpoints {params.checkpoints} {params.flags} --seed {params.seed}"
        " --checkpoint-every {params.checkpoint_every} {params.max_steps} --threads {threads} 2> {log}"


rule segment:
    input:
        model=f"{RESULTS}/segmenter/model.pt",
        val_frames=f"{RESULTS}/predictor/frames_val.npy",
        object_classifier=OBJECT_CLASSIFIER,
    output:
        val=f"{RESULTS}/segmenter/masks_val.npy",
    params:
        score_threshold=SCORE_THRESHOLD,
        object_class=OBJECT_CLASS,
    threads: rule_threads("segment")
    resources:
        **rule_resources("segment"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/segment.tsv",
    log:
        f"{RESULTS}/logs/segment.log",
    shell:
        "futureseg segment --model {input.model} --val-frames {input.val_frames} --out-val {output.val}"
        " --score-threshold {params.score_threshold} {params.object_class} --threads {threads} 2> {log}"


# What every route is measured against: the segmenter on the true frame 21 (oracle) and on
# the true frame 10 (segmented copy-last: what a user can submit without forecasting).
rule segment_references:
    input:
        data=DATA,
        checked=DATA_CHECK,
        model=f"{RESULTS}/segmenter/model.pt",
        object_classifier=OBJECT_CLASSIFIER,
    output:
        val_oracle=f"{RESULTS}/segmenter/masks_val_oracle.npy",
        val_frame10=f"{RESULTS}/segmenter/masks_val_frame10.npy",
    params:
        score_threshold=SCORE_THRESHOLD,
        object_class=OBJECT_CLASS,
    threads: rule_threads("segment_references")
    resources:
        **rule_resources("segment_references"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/segment_references.tsv",
    log:
        f"{RESULTS}/logs/segment_references.log",
    shell:
        "futureseg segment --root {input.data} --model {input.model}"
        " --out-val-oracle {output.val_oracle} --out-val-frame10 {output.val_frame10}"
        " --score-threshold {params.score_threshold} {params.object_class} --threads {threads} 2> {log}"


rule segment_hidden_shard:
    input:
        model=f"{RESULTS}/segmenter/model.pt",
        frames=f"{RESULTS}/predictor/hidden_shards/frames_{{scatteritem}}.npy",
        object_classifier=OBJECT_CLASSIFIER,
    output:
        temp(f"{RESULTS}/segmenter/hidden_shards/masks_{{scatteritem}}.npy"),
    params:
        score_threshold=SCORE_THRESHOLD,
        object_class=OBJECT_CLASS,
    threads: rule_threads("segment_hidden_shard")
    resources:
        **rule_resources("segment_hidden_shard"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/segment_hidden_shard.{{scatteritem}}.tsv",
    log:
        f"{RESULTS}/logs/segment_hidden_{{scatteritem}}.log",
    shell:
        "futureseg segment --model {input.model} --hidden-frames {input.frames} --out-hidden {output}"
        " --score-threshold {params.score_threshold} {params.object_class} --threads {threads} 2> {log}"


# Hidden-set masks of any route, gathered from its shards (route frames: segmenter/,
# masks: forecaster/, direct: direct/, motion: motion/, dynamics: dynamics/).
rule gather_hidden_masks:
    input:
        lambda wildcards: gather.hidden(f"{RESULTS}/{wildcards.stage}/hidden_shards/masks_{{scatteritem}}.npy"),
    output:
        f"{RESULTS}/{{stage}}/masks_hidden.npy",
    wildcard_constraints:
        stage="segmenter|forecaster|direct|motion|dynamics",
    threads: rule_threads("gather_hidden_masks")
    resources:
        **rule_resources("gather_hidden_masks"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/gather_hidden_masks.{{stage}}.tsv",
    log:
        f"{RESULTS}/logs/gather_hidden_masks_{{stage}}.log",
    shell:
        "futureseg gather-shards --shards {input} --out {output} 2> {log}"
