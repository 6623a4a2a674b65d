# Stages 3-4: the segmentation training set (real + generated frames, blur, frameskip),
# segmenter training (U-Net or Mask R-CNN), masks of the predicted frame 21 (route
# `frames`) and of the true frames 21 and 10 (the references every route is scored by).

A = config["augment"]
S = config["segmenter"]
SEGMENTER = S[S["model"]]  # the selected segmenter's settings
# Mask R-CNN paints instances above this score; a U-Net has no threshold (argmax)
SCORE_THRESHOLD = SEGMENTER.get("score_threshold", 0.5)
TRAINING_SETTINGS = {k: v for k, v in SEGMENTER.items() if k != "score_threshold"}
# one class per connected foreground component of every mask (segmenter.object_vote): it
# shapes the masks (rules segment*, pseudo_label), not the weights
OBJECT_VOTE = "--object-vote" if S["object_vote"] else ""


rule make_seg_frames:
    input:
        data=DATA,
        checked=DATA_CHECK,
        # the predictor's frames of train videos, unless the generated source is off
        frames=[f"{RESULTS}/predictor/frames_train.npy"] if A["generated"] else [],
    output:
        directory(f"{RESULTS}/segframes"),
    params:
        generated=lambda wildcards, input: (
            f"--generated --frames {input.frames}" if A["generated"] else "--no-generated"
        ),
        frameskip=A["frameskip"],
        blur_prob=A["blur_prob"],
        blur_sigma=csv(A["blur_sigma"]),
        seed=A["seed"],
    resources:
        runtime=res("make_seg_frames")["runtime"],
        mem_mb=res("make_seg_frames")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
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
        seed=S["seed"],
        checkpoint_every=S["checkpoint_every"],
        checkpoints=f"{RESULTS}/segmenter/checkpoints",
    threads: res("train_segmenter")["threads"]
    resources:
        runtime=res("train_segmenter")["runtime"],
        mem_mb=res("train_segmenter")["mem_mb"],
        gpu=res("train_segmenter")["gpu"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/train_segmenter.log",
    shell:
        "futureseg train-segmenter --root {input.data} --seg-frames {input.seg_frames}"
        " --mean-std {input.mean_std}"
        " --out {output.model} --metrics {output.metrics} --checkpoints {params.checkpoints}"
        " --model {params.model} {params.flags} --seed {params.seed}"
        " --checkpoint-every {params.checkpoint_every} --threads {threads} 2> {log}"


rule segment:
    input:
        model=f"{RESULTS}/segmenter/model.pt",
        val_frames=f"{RESULTS}/predictor/frames_val.npy",
    output:
        val=f"{RESULTS}/segmenter/masks_val.npy",
    params:
        score_threshold=SCORE_THRESHOLD,
        object_vote=OBJECT_VOTE,
    threads: res("segment")["threads"]
    resources:
        runtime=res("segment")["runtime"],
        mem_mb=res("segment")["mem_mb"],
        gpu=res("segment")["gpu"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/segment.log",
    shell:
        "futureseg segment --model {input.model} --val-frames {input.val_frames} --out-val {output.val}"
        " --score-threshold {params.score_threshold} {params.object_vote} --threads {threads} 2> {log}"


# What every route is measured against: the segmenter on the true frame 21 (oracle) and on
# the true frame 10 (segmented copy-last: what a user can submit without forecasting).
rule segment_references:
    input:
        data=DATA,
        checked=DATA_CHECK,
        model=f"{RESULTS}/segmenter/model.pt",
    output:
        val_oracle=f"{RESULTS}/segmenter/masks_val_oracle.npy",
        val_frame10=f"{RESULTS}/segmenter/masks_val_frame10.npy",
    params:
        score_threshold=SCORE_THRESHOLD,
        object_vote=OBJECT_VOTE,
    threads: res("segment")["threads"]
    resources:
        runtime=res("segment")["runtime"],
        mem_mb=res("segment")["mem_mb"],
        gpu=res("segment")["gpu"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/segment_references.log",
    shell:
        "futureseg segment --root {input.data} --model {input.model}"
        " --out-val-oracle {output.val_oracle} --out-val-frame10 {output.val_frame10}"
        " --score-threshold {params.score_threshold} {params.object_vote} --threads {threads} 2> {log}"


rule segment_hidden_shard:
    input:
        model=f"{RESULTS}/segmenter/model.pt",
        frames=f"{RESULTS}/predictor/hidden_shards/frames_{{scatteritem}}.npy",
    output:
        f"{RESULTS}/segmenter/hidden_shards/masks_{{scatteritem}}.npy",
    params:
        score_threshold=SCORE_THRESHOLD,
        object_vote=OBJECT_VOTE,
    threads: res("segment")["threads"]
    resources:
        runtime=res("segment")["runtime"],
        mem_mb=res("segment")["mem_mb"],
        gpu=res("segment")["gpu"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/segment_hidden_{{scatteritem}}.log",
    shell:
        "futureseg segment --model {input.model} --hidden-frames {input.frames} --out-hidden {output}"
        " --score-threshold {params.score_threshold} {params.object_vote} --threads {threads} 2> {log}"


# Hidden-set masks of any route, gathered from its shards (route frames: segmenter/,
# masks: forecaster/, direct: direct/, motion: motion/).
rule gather_hidden_masks:
    input:
        lambda wildcards: gather.hidden(f"{RESULTS}/{wildcards.stage}/hidden_shards/masks_{{scatteritem}}.npy"),
    output:
        f"{RESULTS}/{{stage}}/masks_hidden.npy",
    wildcard_constraints:
        stage="segmenter|forecaster|direct|motion",
    resources:
        runtime=res("gather_hidden_masks")["runtime"],
        mem_mb=res("gather_hidden_masks")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/gather_hidden_masks_{{stage}}.log",
    shell:
        "futureseg gather-shards --shards {input} --out {output} 2> {log}"
