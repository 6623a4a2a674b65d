"""`futureseg check-submission`: validate a submission file against a hidden folder.

Its own module because the CLI maps one module to one verb; the checks live in
`futureseg.evaluate.submission` (`check_submission`, `problems_of`), shared with `submission --hidden`.
"""

from __future__ import annotations

import sys

from futureseg.core.errors import FuturesegError
from futureseg.evaluate.submission import check_submission, hidden_videos

VERB = "check-submission"
HELP = "check a submission tensor against the hidden split: shape, dtype, class ids, id order"


def add_arguments(parser) -> None:
    parser.add_argument("file", help="submission .pt (its ids are read from the same name .json)")
    parser.add_argument("--hidden", required=True, help="the hidden/ split folder, or the dataset root holding it")


def main(args) -> None:
    problems = check_submission(args.file, args.hidden)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        raise FuturesegError(f"{args.file}: {len(problems)} problem(s), listed above; not a valid submission")
    ids, size = hidden_videos(args.hidden)
    print(f"OK: {args.file} is a ({len(ids)}, {size[0]}, {size[1]}) tensor of class ids for the hidden videos {ids[0]}…{ids[-1]} in ascending order")
