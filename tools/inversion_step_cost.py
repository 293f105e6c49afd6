"""What portable numerics cost per inversion step, by member architecture (results/README, "Zoo builds").

One step = forward + backward to the pixels of a batch of 32x32 images through a 5-class member in
eval mode (the core of a dfprotonet / dfmaml / PURER inversion step), on the CPU, at one thread.
MKL fixes its numerics branch at its first call in a process, so each (numerics, architecture) pair
runs in a fresh child process; the pairs are interleaved ``--rounds`` times, because timings drift
between processes and with other work on the machine.

    python tools/inversion_step_cost.py --archs conv4 resnet10 resnet18 --batch 150 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def one_process(numerics: str, arch: str, batch: int, steps: int) -> float:
    """Median seconds per step over ``steps`` timed steps (after one untimed) in this process."""
    import torch

    from zoos.architectures import build_model
    from zoos.numerics import enable_portable_numerics, member_numerics

    torch.set_num_threads(1)
    if numerics == "portable":
        enable_portable_numerics()
    model = build_model(arch, 5, 32, 3, torch.Generator().manual_seed(0)).eval().requires_grad_(False)
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    seconds = []
    with member_numerics(numerics, torch.device("cpu")):
        for _ in range(steps + 1):
            started = time.perf_counter()
            model(images).logsumexp(1).sum().backward()
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def _span(seconds: list[float]) -> str:
    """``lo-hi`` milliseconds over the rounds (one number when they agree)."""
    return "-".join(f"{1000 * s:.0f}" for s in sorted({min(seconds), max(seconds)}))


def main(argv: list[str] | None = None) -> None:
    """Print a Markdown table of native and portable ms/step per architecture (or run one child)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["conv4", "resnet10", "resnet18"])
    parser.add_argument("--batch", type=int, default=150, help="images per step (dfprotonet: 5 classes x 30)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="child processes per (numerics, arch)")
    parser.add_argument("--child", nargs=2, metavar=("NUMERICS", "ARCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(one_process(*args.child, args.batch, args.steps))
        return
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for arch in args.archs:
            for numerics in ("native", "portable"):
                command = [sys.executable, __file__, "--child", numerics, arch]
                command += ["--batch", str(args.batch), "--steps", str(args.steps)]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                times.setdefault((arch, numerics), []).append(float(out.split()[-1]))
    print(f"| arch | native ms/step | portable ms/step | portable / native (batch {args.batch}, 1 thread) |")
    print("|---|---|---|---|")
    for arch in args.archs:
        native, portable = times[(arch, "native")], times[(arch, "portable")]
        ratio = statistics.median(portable) / statistics.median(native)
        print(f"| {arch} | {_span(native)} | {_span(portable)} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
