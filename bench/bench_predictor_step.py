"""Time one training step (forward + backward + AdamW) of a frame predictor on CPU or GPU.

    python bench/bench_predictor_step.py                      # SimVP-gSTA, batch 4, 2 threads
    python bench/bench_predictor_step.py --translator incepu
    python bench/bench_predictor_step.py --model convlstm       # 4 x 128 hidden, patch 4 (OpenSTL default)

Defaults are the OpenSTL parity config: clips (11, 3, 160, 240), hid_S=64, hid_T=256,
N_S=4, N_T=8. Reference: OpenSTL's SimVP-gSTA takes about 32 s per such step on
2 CPU threads of the development machine; ours should be no slower.
"""

import argparse
import statistics
import time

import torch

from futureseg.models.predictors import build, count_parameters


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("simvp", "convlstm"), default="simvp")
    parser.add_argument("--translator", choices=("gsta", "incepu"), default="gsta")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--num-hidden", default="128,128,128,128", help="convlstm hidden channels per layer"
    )
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    in_shape = (11, 3, args.height, args.width)
    if args.model == "simvp":
        model = build("simvp", in_shape, dict(hid_S=64, hid_T=256, N_S=4, N_T=8, translator=args.translator))
        label = f"simvp-{args.translator}"
    else:
        num_hidden = tuple(int(n) for n in args.num_hidden.split(","))
        model = build("convlstm", in_shape, dict(patch_size=4, num_hidden=num_hidden))
        label = "convlstm"
    device = torch.device(args.device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, *in_shape, device=device)
    y = torch.randn(args.batch, *in_shape, device=device)

    def step():
        """Returns (wall seconds, process CPU seconds): on a shared machine the CPU time is the steadier."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x, target=y, sampling_ratio=0.5), y)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start

    print(
        f"{label}: {count_parameters(model):,} params, batch {args.batch}, clips {in_shape}, "
        f"{args.threads} threads, {device}"
    )
    wall, cpu = step()
    print(f"warm-up step: {wall:.2f} s (cpu {cpu:.2f} s)")
    walls, cpus = zip(*(step() for _ in range(args.steps)))
    print(f"steps: {', '.join(f'{t:.2f}' for t in walls)} s (cpu {', '.join(f'{t:.2f}' for t in cpus)} s)")
    print(f"median: {statistics.median(walls):.2f} s/step (cpu {statistics.median(cpus):.2f} s/step)")


if __name__ == "__main__":
    main()
