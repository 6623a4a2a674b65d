"""Route `masks`, inference: forecast masks of frames 11…21 from the segmenter's masks of 0…10.

Input: a mask cache of `pseudo-label` (val or hidden, frames 0…10). Output: uint8
(N, H, W) masks of frame 21 (the route's answer, scored and submitted) and, when asked
(`--out-sequence`), uint8 (N, 11, H, W) of all frames 11…21, whose consecutive masks
give the route's temporal IoU. `--shard i/K` forecasts the i-th of K contiguous row
ranges, gathered afterwards by `gather-shards` (hidden-set inference).

A forecaster trained on the motion prior needs the prior of the same videos (`--prior`:
route motion's sequence of frames 11…21, of the same shard), written with the motion
settings it was trained with.
"""

from __future__ import annotations

import contextlib
import logging

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError
from futureseg.core.io import array_writer
from futureseg.core.shards import parse_shard, shard_rows

log = logging.getLogger("futureseg")
# videos forecast between two writes to the outputs
CHUNK = 256


def run(model_path, masks_path, out, out_sequence=None, shard=None, batch_size: int = 16, prior_path=None) -> int:
    from futureseg.core.dense import forecast_masks, load_mask_cache
    from futureseg.core.motion import HORIZON
    from futureseg.models import forecasters
    from futureseg.core.training import select_device

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    device = select_device(bf16_autocast=False)
    model, saved = forecasters.load(model_path)
    model.to(device)
    inputs, meta = load_mask_cache(masks_path, data.N_INPUT)
    size = tuple(saved["model_config"]["size"])
    if tuple(inputs.shape[2:]) != size:
        raise DataError(f"{masks_path}: masks are {inputs.shape[2]}x{inputs.shape[3]}, the forecaster "
                        f"{model_path} was trained on {size[0]}x{size[1]}")
    rows = shard_rows(len(inputs), shard)
    ids = list(meta["ids"])[rows.start : rows.stop]
    prior = None
    kind = saved["model_config"].get("prior")
    if kind in ("motion", "dynamics"):
        from futureseg.forecast.extrapolate import check_prior

        if prior_path is None:
            raise ConfigError(f"{model_path}: this forecaster was trained on the {kind} prior; give --prior "
                              f"(the masks of frames 11…21 of futureseg {'extrapolate' if kind == 'motion' else kind} "
                              "for the same videos)")
        prior = check_prior(prior_path, ids, saved.get(kind), kind)
    elif prior_path is not None:
        raise ConfigError(f"--prior {prior_path}: the forecaster {model_path} forecasts on copy-last, not a motion prior")
    common = {"split": meta.get("split"), "model": str(model_path), "source": str(masks_path),
              **({"prior": str(prior_path)} if prior_path else {}),
              **({"shard": list(shard)} if shard else {})}
    height, width = size
    with contextlib.ExitStack() as stack:
        # written CHUNK videos at a time into memory-mapped outputs: a split's whole sequence
        # (the real hidden set's: 845 MB) is never held in memory
        sequence = stack.enter_context(array_writer(
            out_sequence, (len(ids), HORIZON, height, width), ids,
            frame_indices=list(range(data.N_INPUT, data.N_FRAMES)), **common)) if out_sequence else None
        target = stack.enter_context(array_writer(out, (len(ids), height, width), ids,
                                                  frame_index=data.TARGET_FRAME, **common))
        for start in range(0, len(ids), CHUNK):
            stop = min(start + CHUNK, len(ids))
            chunk_prior = None if prior is None else prior[start:stop]
            predicted = forecast_masks(model, inputs[rows.start + start : rows.start + stop, : data.N_INPUT], device,
                                       batch_size, chunk_prior)
            if sequence is not None:
                sequence[start:stop] = predicted
            target[start:stop] = predicted[:, -1]
    return len(ids)


VERB = "forecast"
HELP = "forecast the masks of frames 11…21 from pseudo-labels of frames 0…10 (route masks)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model file of train-forecaster")
    parser.add_argument("--masks", required=True, help="mask cache of frames 0…10 (pseudo-label)")
    parser.add_argument("--out", required=True, help="masks of frame 21 to write (N, H, W)")
    parser.add_argument("--out-sequence", help="masks of frames 11…21 to write (N, 11, H, W)")
    parser.add_argument("--prior", help="the motion prior of the same videos (extrapolate --out-sequence), for a "
                                        "forecaster trained on it")
    parser.add_argument("--shard", type=parse_shard, default=None, help="forecast only shard i of K (i/K)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    n = run(args.model, args.masks, args.out, args.out_sequence, args.shard, args.batch_size, args.prior)
    print(f"{args.out}: {n} masks")
