"""Training-step throughput of the hyperprior codec against the CPU's matmul rate.

Prints a Markdown table (median of ``--steps`` timed steps after one warm-up):

* MACs per training step = 3 × forward MACs (``HyperpriorCodec.macs_per_pixel()["total"]`` ×
  batch × crop²). Backward ≈ 2 × forward: for every convolution one input-gradient and one
  weight-gradient convolution of the forward's size (the first layer needs no input gradient, so
  this over-counts by about 1 %). Element-wise work (GDN square roots, rounding, likelihoods,
  Adam) is not counted.
* the step's GMAC/s, a 2048² float32 matmul's GMAC/s (2048³ / time) in the same process, and
  their ratio (the project's target: ≥ 0.25).

``--profile`` adds torch.profiler's top operators of one step; ``--encode-image H W`` times
``compress`` / ``decompress`` of a random (1, 1, H, W) image (after ``update()``).

Usage: ``python benchmarks/codec_train_step.py --threads 1 --batch 8 --crop 128 --N 96 --M 128``.
"""

from __future__ import annotations

import argparse

import torch

from microcae_testing.timing import matmul_seconds, median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--N", type=int, default=96)
    parser.add_argument("--M", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--lmbda", type=float, default=0.01)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-allocator", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--encode-image", type=int, nargs=2, metavar=("H", "W"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig
    from microcae.util.runtime import configure_allocator, to_channels_last

    allocator = False if args.no_allocator else configure_allocator()
    torch.manual_seed(0)
    model = HyperpriorCodec(HyperpriorConfig(N=args.N, M=args.M))
    macs = model.macs_per_pixel()
    x = torch.rand(args.batch, 1, args.crop, args.crop)
    if not args.no_channels_last:
        model, x = to_channels_last(model), to_channels_last(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        mse = torch.mean((out["x_hat"] - x) ** 2)
        loss = args.lmbda * 255**2 * mse + out["bpp"]
        loss.backward()
        optimizer.step()

    step_s = median_seconds(step, args.steps)
    matmul = 2048**3 / matmul_seconds(args.steps) / 1e9  # GMAC/s
    step_macs = 3 * macs["total"] * args.batch * args.crop**2
    rate = step_macs / step_s / 1e9
    print(f"threads {args.threads}, batch {args.batch}, crop {args.crop}, N {args.N}, "
          f"M {args.M}, channels-last {not args.no_channels_last}, allocator {allocator}\n")
    print("| MACs/pixel enc | dec | hyper enc | hyper dec | GMAC/step | step s | step GMAC/s "
          "| matmul GMAC/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {macs['encoder']:.0f} | {macs['decoder']:.0f} | {macs['hyper_encoder']:.0f} | "
          f"{macs['hyper_decoder']:.0f} | {step_macs / 1e9:.2f} | {step_s:.3f} | {rate:.1f} | "
          f"{matmul:.1f} | {rate / matmul:.2f} |")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))

    if args.encode_image:
        h, w = args.encode_image
        model = model.eval()
        model.update()
        image = torch.rand(1, 1, h, w)
        compressed = model.compress(image)
        enc = median_seconds(lambda: model.compress(image), 3)
        dec = median_seconds(lambda: model.decompress(compressed["strings"], compressed["shape"],
                                                   compressed["image_shape"]), 3)
        print(f"\n{h}x{w}: compress {enc:.2f} s, decompress {dec:.2f} s "
              f"({len(compressed['strings'])} bytes for random pixels)")


if __name__ == "__main__":
    main()
