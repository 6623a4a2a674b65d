# Stage 5: IoU of the pipeline, the oracle and the copy-last baseline; the hidden-set
# submission; the report's figures.


rule score:
    input:
        data=DATA,
        checked=DATA_CHECK,
        pred=f"{RESULTS}/segmenter/masks_val.npy",
        oracle=f"{RESULTS}/segmenter/masks_val_oracle.npy",
    output:
        scores=report(f"{RESULTS}/eval/scores.json", caption="../report/scores_json.rst", category="Scores"),
        table=report(f"{RESULTS}/eval/scores.html", caption="../report/scores.rst", category="Scores"),
        per_class=f"{RESULTS}/eval/per_class.csv",
        plot_per_class=report(
            f"{RESULTS}/eval/per_class_iou.png", caption="../report/per_class.rst", category="Scores"
        ),
        plot_confusion=report(
            f"{RESULTS}/eval/confusion.png", caption="../report/confusion.rst", category="Scores"
        ),
    resources:
        runtime=res("score")["runtime"],
        mem_mb=res("score")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/score.log",
    shell:
        "futureseg score --root {input.data} --pred {input.pred} --oracle {input.oracle}"
        " --out {output.scores} --table {output.table} --per-class {output.per_class}"
        " --plot-per-class {output.plot_per_class} --plot-confusion {output.plot_confusion} 2> {log}"


rule submission:
    input:
        f"{RESULTS}/segmenter/masks_hidden.npy",
    output:
        f"{RESULTS}/{config['eval']['submission_name']}.pt",
    resources:
        runtime=res("submission")["runtime"],
        mem_mb=res("submission")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/submission.log",
    shell:
        "futureseg submission --masks {input} --out {output} 2> {log}"


rule report_figures:
    input:
        data=DATA,
        checked=DATA_CHECK,
        predictor_metrics=f"{RESULTS}/predictor/metrics.csv",
        segmenter_metrics=f"{RESULTS}/segmenter/metrics.csv",
        frames=f"{RESULTS}/predictor/frames_val.npy",
        masks=f"{RESULTS}/segmenter/masks_val.npy",
    output:
        curves=report(
            f"{RESULTS}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        examples=report(
            f"{RESULTS}/report/examples.png", caption="../report/examples.rst", category="Examples"
        ),
        animations=report(
            f"{RESULTS}/report/animations.html", caption="../report/animations.rst", category="Examples"
        ),
    params:
        examples=config["eval"]["report_examples"],
    resources:
        runtime=res("report_figures")["runtime"],
        mem_mb=res("report_figures")["mem_mb"],
    conda:
        "../../envs/futureseg.yaml"
    log:
        f"{RESULTS}/logs/report_figures.log",
    shell:
        "futureseg report-figures --metrics {input.predictor_metrics} {input.segmenter_metrics}"
        " --curves {output.curves} --root {input.data} --frames {input.frames}"
        " --masks {input.masks} --examples {output.examples} --animations {output.animations}"
        " --n {params.examples} 2> {log}"
