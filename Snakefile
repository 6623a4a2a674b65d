# futureseg: predict the semantic mask of frame 22 from the first 11 frames of a video.
# `snakemake --cores all` runs the demo on the synthetic dataset; `snakemake --profile slurm`
# runs each rule as a SLURM job. See README.md.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


# Hidden-set inference runs as K parallel jobs (predict, then segment, per shard), gathered
# after segmentation; the gathered masks equal an unsharded run's.
scattergather:
    hidden=config["resources"]["hidden_shards"],


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/predictor.smk"
include: "workflow/rules/segmenter.smk"
include: "workflow/rules/motion.smk"
include: "workflow/rules/dynamics.smk"
include: "workflow/rules/forecaster.smk"
include: "workflow/rules/direct.smk"
include: "workflow/rules/eval.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/data/mean_std.json",
        f"{RESULTS}/eval/scores.json",
        f"{RESULTS}/{config['eval']['submission_name']}.pt",
        # the report's figures: every route's masks beside the truth, whatever routes run
        f"{RESULTS}/report/examples.png",
        # each job's time and peak memory beside its resources request (rule resource_table)
        f"{RESULTS}/report/resources.html",


# every rule is defined: an entry of config `resources` must name one of them (or a group)
check_resource_entries()
