"""The `futureseg` command: one verb per pipeline stage, each in the module named like it.

Verb cache-frames is module data/cache_frames.py: the verbs are grouped in packages by
stage of the DAG (data, predict, segment, forecast, evaluate) above the core and models.

Every Snakemake rule calls one verb with all its inputs, outputs and settings spelled out,
so any stage can also be run by hand. A verb module defines `VERB`, `HELP`,
`add_arguments(parser)` and `main(args)`; heavy imports (torch) stay inside its functions,
and `futureseg VERB` imports VERB's module alone, so that a job that needs no torch (the
data's, route motion's) never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from futureseg.core.errors import FuturesegError

# verb modules by stage of the DAG, in pipeline order (package.module; the verb is the
# module's name with dashes)
VERB_MODULES = (
    "data.doctor",  # the pre-flight check, before anything else runs
    "data.synth",
    "data.check_data",
    "data.mean_std",
    "data.cache_frames",
    "predict.train_predictor",
    "predict.predict_frames",
    "segment.make_seg_frames",
    "segment.train_segmenter",
    "segment.train_object_classifier",
    "segment.segment",
    "segment.pseudo_label",
    "forecast.extrapolate",
    "forecast.tracks",
    "forecast.train_dynamics",
    "forecast.dynamics",
    "forecast.train_forecaster",
    "forecast.forecast",
    "forecast.train_direct",
    "forecast.predict_direct",
    "evaluate.gather_shards",
    "evaluate.score",
    "evaluate.submission",
    "evaluate.check_submission",
    "evaluate.gather_scores",
    "evaluate.report_figures",
    "evaluate.resource_table",
)


def verb_name(module_name: str) -> str:
    """cache-frames for data.cache_frames."""
    return module_name.rsplit(".", 1)[-1].replace("_", "-")


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser of every verb, or of the one verb that `argv` starts with: a verb imports
    only its own module, not the others' (torch, scipy, OpenCV), which saves seconds at
    every start of a Snakemake job."""
    parser = argparse.ArgumentParser(prog="futureseg", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    chosen = [name for name in VERB_MODULES if argv and verb_name(name) == argv[0]]
    for name in chosen or VERB_MODULES:
        module = importlib.import_module(f"futureseg.{name}")  # VERB == verb_name(name): test_layout
        sub = verbs.add_parser(module.VERB, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv  # for a verb that re-executes itself
    try:
        args.run(args)
    except FuturesegError as exc:
        print(f"futureseg {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a permission problem: outputs stay as they were
        print(f"futureseg {args.verb}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
