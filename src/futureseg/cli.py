"""The `futureseg` command: one verb per pipeline stage, each in the module named like it.

Verb cache-frames is module data/cache_frames.py: the verbs are grouped in packages by
stage of the DAG (data, predict, segment, forecast, evaluate) above the core and models.

Every Snakemake rule calls one verb with all its inputs, outputs and settings spelled out,
so any stage can also be run by hand. A verb module defines `VERB`, `HELP`,
`add_arguments(parser)` and `main(args)`; heavy imports (torch) stay inside its functions
so that `futureseg --help` is quick.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="futureseg", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        module = importlib.import_module(f"futureseg.{name}")
        sub = verbs.add_parser(module.VERB, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a verb that re-executes itself
    try:
        args.run(args)
    except FuturesegError as exc:
        print(f"futureseg {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a permission problem: outputs stay as they were
        print(f"futureseg {args.verb}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def comma_list(text: str) -> tuple[str, ...]:
    """argparse type for comma-separated lists, e.g. --splits train,unlabeled."""
    return tuple(s for s in text.split(",") if s)


def given(args, names) -> dict:
    """The flags among `names` that were set, by name: a model setting left out takes its
    config dataclass's default rather than one the verb would keep."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def name_path(text: str) -> tuple[str, str]:
    """argparse type of --route and --sequence (score, submission, report-figures): NAME=PATH."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH, e.g. masks=results/forecaster/masks_val.npy")
    return name, path


def json_object(text: str) -> dict:
    """argparse type of --model-config: a JSON object (a model's config section)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of settings, got {text!r}")
    return value


def add_fit_arguments(parser, epochs_help: str = "epochs", batch_help: str | None = None):
    """The optimisation and run flags of every trainer on `training.fit` (the "optimisation" group,
    returned for a trainer's own additions, and the "run" group)."""
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, required=True, help=epochs_help)
    opt.add_argument("--batch-size", type=int, required=True, help=batch_help)
    opt.add_argument("--lr", type=float, required=True, help="one-cycle peak learning rate (AdamW)")
    opt.add_argument("--weight-decay", type=float, required=True)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps; also at each epoch end")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return opt


if __name__ == "__main__":
    sys.exit(main())
