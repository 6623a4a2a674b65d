# Stage 5: IoU of every route beside the oracle, segmented copy-last and copy-last; the
# hidden-set submission of the submitted route; the report's figures.


# routes that forecast all of frames 11…21 (their temporal IoU is reported)
SEQUENCES = {"masks": f"{RESULTS}/forecaster/sequence_val.npy", "motion": f"{RESULTS}/motion/sequence_val.npy",
             "dynamics": f"{RESULTS}/dynamics/sequence_val.npy"}
# The segmenter's masks of val's input frames 0…10, where a route starts from them: their
# IoU and temporal IoU beside the truth's are reported
VAL_PSEUDO_LABELS = [f"{RESULTS}/pseudo/val.npy"] if {"masks", "motion", "dynamics"} & set(ROUTES) else []
# route dynamics' references: its model on the true masks, and the ceiling of moving what was seen
DYNAMICS_REFERENCES = {"dynamics_truth": f"{RESULTS}/dynamics/masks_val_truth.npy",
                       "placement_oracle": f"{RESULTS}/dynamics/masks_val_placement_oracle.npy"}


rule score:
    input:
        data=DATA,
        checked=DATA_CHECK,
        routes=[f"{ROUTE_DIRS[route]}/masks_val.npy" for route in ROUTES],
        sequences=[SEQUENCES[route] for route in ROUTES if route in SEQUENCES],
        oracle=f"{RESULTS}/segmenter/masks_val_oracle.npy",
        segmented_copy_last=f"{RESULTS}/segmenter/masks_val_frame10.npy",
        motion_truth=f"{RESULTS}/motion/masks_val_truth.npy",
        # the placement ceiling whatever routes run; the learnt model's truth when it runs
        placement_oracle=DYNAMICS_REFERENCES["placement_oracle"],
        dynamics_truth=[DYNAMICS_REFERENCES["dynamics_truth"]] if "dynamics" in ROUTES else [],
        pseudo_labels=VAL_PSEUDO_LABELS,
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
    params:
        routes=lambda wildcards, input: " ".join(f"--route {r}={p}" for r, p in zip(ROUTES, input.routes)),
        sequences=" ".join(f"--sequence {r}={p}" for r, p in SEQUENCES.items() if r in ROUTES),
        submit=SUBMIT,
        dynamics_truth=lambda wildcards, input: f"--dynamics-truth {input.dynamics_truth}" if input.dynamics_truth else "",
        pseudo_labels=lambda wildcards, input: f"--pseudo-labels {input.pseudo_labels}" if input.pseudo_labels else "",
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/score.tsv",
    log:
        f"{RESULTS}/logs/score.log",
    shell:
        "futureseg score --root {input.data} {params.routes} {params.sequences} --submit {params.submit}"
        " --oracle {input.oracle} --segmented-copy-last {input.segmented_copy_last} --motion-truth {input.motion_truth}"
        " --placement-oracle {input.placement_oracle} {params.dynamics_truth} {params.pseudo_labels}"
        " --out {output.scores} --table {output.table} --per-class {output.per_class}"
        " --plot-per-class {output.plot_per_class} --plot-confusion {output.plot_confusion} 2> {log}"


# The submitted route's hidden masks: eval.submit's, or with `best` every route's (score
# picks the one with the highest val IoU and records it in scores.json).
SUBMIT_CANDIDATES = ROUTES if SUBMIT == "best" else [SUBMIT]


rule submission:
    input:
        scores=f"{RESULTS}/eval/scores.json",
        masks=[f"{ROUTE_DIRS[route]}/masks_hidden.npy" for route in SUBMIT_CANDIDATES],
        # the hidden split the tensor must fit (count, ids and order, frame size), checked
        # before anything is written
        data=DATA,
        checked=DATA_CHECK,
    output:
        tensor=f"{RESULTS}/{config['eval']['submission_name']}.pt",
        # its ids sidecar: declared, so that Snakemake removes a previous run's before the job
        # and a failed job leaves neither file
        ids=f"{RESULTS}/{config['eval']['submission_name']}.json",
    params:
        routes=lambda wildcards, input: " ".join(f"--route {r}={p}" for r, p in zip(SUBMIT_CANDIDATES, input.masks)),
        dtype=config["eval"]["submission_dtype"],
    threads: rule_threads("submission")
    resources:
        **rule_resources("submission"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/submission.tsv",
    log:
        f"{RESULTS}/logs/submission.log",
    shell:
        "futureseg submission {params.routes} --scores {input.scores} --hidden {input.data}/hidden"
        " --dtype {params.dtype} --out {output.tensor} 2> {log}"


# The report's figures, whatever routes run: the training curves (the frame predictor's when
# it trains: route frames, or generated frames for the segmenter; the segmenter's, which every
# route needs; the object classifier's when it is used; the mask forecaster's, the direct
# U-Net's and the dynamics model's when their routes run), and the val examples: every route's
# mask of frame 21 beside the truth, the masks of frames 11…21 of the routes in SEQUENCES,
# route frames' predicted frames, the submitted route (scores.json) marked.
rule report_figures:
    input:
        data=DATA,
        checked=DATA_CHECK,
        # every trainer that runs: its folder names its stage (--metrics STAGE=CSV below)
        metrics=[
            *([f"{RESULTS}/predictor/metrics.csv"] if "frames" in ROUTES or config["augment"]["generated"] else []),
            f"{RESULTS}/segmenter/metrics.csv",
            *([f"{RESULTS}/segmenter/object_classifier_metrics.csv"] if OBJECT_CLASSIFIER else []),
            *([f"{RESULTS}/forecaster/metrics.csv"] if "masks" in ROUTES else []),
            *([f"{RESULTS}/direct/metrics.csv"] if "direct" in ROUTES else []),
            *([f"{RESULTS}/dynamics/metrics.csv"]
              if "dynamics" in ROUTES or ("masks" in ROUTES and F["prior"] == "dynamics") else []),
        ],
        scores=f"{RESULTS}/eval/scores.json",
        routes=[f"{ROUTE_DIRS[route]}/masks_val.npy" for route in ROUTES],
        sequences=[SEQUENCES[route] for route in ROUTES if route in SEQUENCES],
        frames=[f"{RESULTS}/predictor/frames_val.npy"] if "frames" in ROUTES else [],
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
        # each CSV as STAGE=CSV (its trainer: the folder its rule writes it in, the object
        # classifier's beside the segmenter's) and the models config.yaml picks, which title the panels
        curves=lambda wildcards, input: " ".join(
            f"--metrics {stage}={path}" + (f" --model {stage}={model}" if model else "")
            for path in input.metrics
            for stage in ["object_classifier" if Path(path).name == "object_classifier_metrics.csv"
                          else Path(path).parent.name]
            for model in [{"predictor": P["model"], "segmenter": S["model"], "forecaster": F["model"]}.get(stage)]
        ),
        routes=lambda wildcards, input: " ".join(f"--route {r}={p}" for r, p in zip(ROUTES, input.routes)),
        sequences=lambda wildcards, input: " ".join(
            f"--sequence {r}={p}" for r, p in zip([r for r in ROUTES if r in SEQUENCES], input.sequences)
        ),
        frames=lambda wildcards, input: f"--frames {input.frames}" if input.frames else "",
        examples=config["eval"]["report_examples"],
    threads: rule_threads("report_figures")
    resources:
        **rule_resources("report_figures"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/report_figures.tsv",
    log:
        f"{RESULTS}/logs/report_figures.log",
    shell:
        "futureseg report-figures {params.curves} --curves {output.curves} --root {input.data}"
        " {params.routes} {params.sequences} {params.frames} --scores {input.scores}"
        " --examples {output.examples} --animations {output.animations} --n {params.examples} 2> {log}"


# Where the time goes: every job's benchmark (wall time, CPU time, peak memory) beside its
# rule's resources request and the fraction of mem_mb and runtime it used. Its inputs are the
# other final outputs, so it runs last; it reads the benchmark folder itself (a rule without
# a benchmark file, run by hand, gets an empty row). The requests are a param: changing them
# reruns this table alone.
rule resource_table:
    input:
        scores=rules.score.output.scores,
        submission=rules.submission.output.tensor,
        figures=rules.report_figures.output.examples,
    output:
        table=report(f"{RESULTS}/report/resources.html", caption="../report/resources.rst", category="Resources"),
        csv=f"{RESULTS}/report/resources.csv",
    params:
        benchmarks=f"{RESULTS}/benchmarks",
        requests=lambda wildcards: json.dumps(resource_requests()),
    threads: rule_threads("resource_table")
    resources:
        **rule_resources("resource_table"),
    conda:
        "../../envs/futureseg.yaml"
    benchmark:
        f"{RESULTS}/benchmarks/resource_table.tsv",
    log:
        f"{RESULTS}/logs/resource_table.log",
    shell:
        "futureseg resource-table --benchmarks {params.benchmarks} --requests '{params.requests}'"
        " --csv {output.csv} --html {output.table} 2> {log}"
