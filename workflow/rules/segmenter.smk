# Stages 3-4: the segmentation training set (real + generated frames, blur, frameskip),
# Mask R-CNN training, and masks of the predicted frame 21.

A = config["augment"]
S = config["segmenter"]


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
        backend=S["backend"],
        backbone=S["backbone"],
        fpn_channels=S["fpn_channels"],
        box_head_dim=S["box_head_dim"],
        mask_head_channels=S["mask_head_channels"],
        rpn_post_nms_train=S["rpn_post_nms_train"],
        box_batch_per_image=S["box_batch_per_image"],
        epochs=S["epochs"],
        batch_size=S["batch_size"],
        lr=S["lr"],
        warmup_steps=S["warmup_steps"],
        seed=S["seed"],
        checkpoint_every=S["checkpoint_every"],
        min_fragment=S["min_fragment"],
        score_threshold=S["score_threshold"],
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
        " --backend {params.backend} --backbone {params.backbone} --fpn-channels {params.fpn_channels}"
        " --box-head-dim {params.box_head_dim} --mask-head-channels {params.mask_head_channels}"
        " --rpn-post-nms-train {params.rpn_post_nms_train} --box-batch-per-image {params.box_batch_per_image}"
        " --epochs {params.epochs}"
        " --batch-size {params.batch_size} --lr {params.lr} --warmup-steps {params.warmup_steps}"
        " --seed {params.seed}"
        " --checkpoint-every {params.checkpoint_every} --min-fragment {params.min_fragment}"
        " --score-threshold {params.score_threshold} --threads {threads} 2> {log}"


rule segment:
    input:
        data=DATA,
        checked=DATA_CHECK,
        model=f"{RESULTS}/segmenter/model.pt",
        val_frames=f"{RESULTS}/predictor/frames_val.npy",
    output:
        val=f"{RESULTS}/segmenter/masks_val.npy",
        val_oracle=f"{RESULTS}/segmenter/masks_val_oracle.npy",
        val_frame10=f"{RESULTS}/segmenter/masks_val_frame10.npy",
    params:
        score_threshold=S["score_threshold"],
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
        "futureseg segment --root {input.data} --model {input.model}"
        " --val-frames {input.val_frames} --out-val {output.val}"
        " --out-val-oracle {output.val_oracle} --out-val-frame10 {output.val_frame10}"
        " --score-threshold {params.score_threshold} --threads {threads} 2> {log}"


rule segment_hidden_shard:
    input:
        model=f"{RESULTS}/segmenter/model.pt",
        frames=f"{RESULTS}/predictor/hidden_shards/frames_{{scatteritem}}.npy",
    output:
        f"{RESULTS}/segmenter/hidden_shards/masks_{{scatteritem}}.npy",
    params:
        score_threshold=S["score_threshold"],
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
        " --score-threshold {params.score_threshold} --threads {threads} 2> {log}"


rule gather_hidden_masks:
    input:
        gather.hidden(f"{RESULTS}/segmenter/hidden_shards/masks_{{scatteritem}}.npy"),
    output:
        f"{RESULTS}/segmenter/masks_hidden.npy",
    resources:
        runtime=res("gather_hidden_masks")["runtime"],
        mem_mb=res("gather_hidden_masks")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/gather_hidden_masks.log",
    shell:
        "futureseg gather-shards --shards {input} --out {output} 2> {log}"
