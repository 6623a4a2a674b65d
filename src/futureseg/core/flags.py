"""The command-line flags the verbs share: argparse types (comma lists, NAME=PATH pairs, JSON
objects), the run and optimisation flags of every trainer on `training.fit`, and `given`.

Below both the `futureseg` command (cli.py) and the core modules that add trainer flags
(core/dense.py), so that no floor of the house reaches up to the command.
"""

from __future__ import annotations

import argparse


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
