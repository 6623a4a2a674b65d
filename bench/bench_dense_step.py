"""Training steps per second of the dense models: the U-Net segmenter, the mask forecaster
(route masks) and the direct U-Net, at the real data's size and at the demo's.

    python bench/bench_dense_step.py                          # all three, 160x240 and 80x120, CPU
    python bench/bench_dense_step.py --device cuda --sizes 160x240
    python bench/bench_dense_step.py --models forecaster --forecaster-config real

One step = forward, cross-entropy, backward and an AdamW update on random data of the
right kinds (frames for the U-Nets, class ids for the forecaster), the work a step of
`training.fit` does besides reading its batch. Sizes: `demo` is config.yaml's; `real` is
the README's GPU recipe (U-Net 32 base channels; mask-space SimVP hid_S 64, hid_T 512,
N_S 4, N_T 8).
"""

import argparse
import statistics
import time

import torch

from futureseg.core.dense import dense_losses
from futureseg.models import forecasters
from futureseg.models.unet import UNet, UNetConfig

CONFIGS = {
    "demo": {"unet": {"base_channels": 16, "depth": 4},
             "forecaster": {"embed_dim": 16, "hid_S": 16, "hid_T": 64, "N_S": 2, "N_T": 4}},
    "real": {"unet": {"base_channels": 32, "depth": 4},
             "forecaster": {"embed_dim": 16, "hid_S": 64, "hid_T": 512, "N_S": 4, "N_T": 8}},
}


def make_step(name, size, batch, config, device):
    """(model, a function running one training step) of one dense model."""
    height, width = size
    if name == "forecaster":
        model = forecasters.build("simvp", size, CONFIGS[config]["forecaster"])
        x = torch.randint(0, 49, (batch, 11, height, width), device=device)
        y = torch.randint(0, 49, (batch * 11, height, width), device=device)
        loss_of = lambda: dense_losses(model(x).flatten(0, 1), y)["loss"]  # noqa: E731
    else:
        channels = 3 if name == "unet" else 33
        model = UNet(UNetConfig(in_channels=channels, **CONFIGS[config]["unet"]))
        x = torch.rand(batch, channels, height, width, device=device)
        y = torch.randint(0, 49, (batch, height, width), device=device)
        loss_of = lambda: dense_losses(model(x), y)["loss"]  # noqa: E731
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet", "forecaster", "direct"],
                        choices=("unet", "forecaster", "direct"))
    parser.add_argument("--sizes", nargs="+", default=["160x240", "80x120"], help="HxW")
    parser.add_argument("--config", choices=tuple(CONFIGS), default=None,
                        help="model sizes (default: real at 160x240, demo otherwise)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"{'model':10s} {'size':8s} {'config':6s} {'batch':>5s} {'params':>10s} {'s/step':>8s} {'steps/s':>8s}")
    for size_text in args.sizes:
        size = tuple(int(v) for v in size_text.split("x"))
        config = args.config or ("real" if size == (160, 240) else "demo")
        for name in args.models:
            model, step = make_step(name, size, args.batch, config, device)
            step()  # warm-up: allocations, cuDNN autotuning
            times = []
            for _ in range(args.steps):
                started = time.perf_counter()
                step()
                times.append(time.perf_counter() - started)
            seconds = statistics.median(times)
            params = sum(p.numel() for p in model.parameters())
            print(f"{name:10s} {size_text:8s} {config:6s} {args.batch:5d} {params:10,d} {seconds:8.3f} {1 / seconds:8.2f}")


if __name__ == "__main__":
    main()
