"""Route `direct`, inference: the direct U-Net's mask of frame 21 for every video of a frame cache.

Output: uint8 (N, H, W) with the `io.save_array` sidecar; `--shard i/K` predicts the
i-th of K contiguous row ranges (hidden-set inference, gathered by `gather-shards`).
"""

from __future__ import annotations

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError, FuturesegError
from futureseg.core.io import save_array
from futureseg.core.shards import parse_shard, shard_rows


def run(model_path, cache_path, out, shard=None, batch_size: int = 16) -> int:
    from futureseg.core.io import load_cache
    from futureseg.models.unet import UNet, UNetConfig
    from futureseg.core.dense import direct_masks
    from futureseg.core.training import load_checkpoint, select_device

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    state = load_checkpoint(model_path)
    if state.get("kind") != "direct":
        raise FuturesegError(f"{model_path}: not a direct U-Net (no kind 'direct'); expected the --out of train-direct")
    device = select_device(bf16_autocast=False)
    model = UNet(UNetConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(device)
    frames, meta = load_cache(cache_path)
    if frames.shape[1] < data.N_INPUT:
        raise DataError(f"{cache_path}: cache holds {frames.shape[1]} frames per video, needs {data.N_INPUT}")
    rows = shard_rows(len(frames), shard)
    ids = list(meta["ids"])[rows.start : rows.stop]
    masks = direct_masks(model, frames[rows.start : rows.stop], device, batch_size)
    save_array(out, masks, ids, frame_index=data.TARGET_FRAME, split=meta.get("split"), model=str(model_path),
               **({"shard": list(shard)} if shard else {}))
    return len(ids)


VERB = "predict-direct"
HELP = "the direct U-Net's masks of frame 21 of a split (route direct)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model file of train-direct")
    parser.add_argument("--cache", required=True, help="frame cache of the split (cache-frames)")
    parser.add_argument("--out", required=True, help="masks of frame 21 to write (N, H, W)")
    parser.add_argument("--shard", type=parse_shard, default=None, help="only shard i of K (i/K)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    n = run(args.model, args.cache, args.out, args.shard, args.batch_size)
    print(f"{args.out}: {n} masks")
