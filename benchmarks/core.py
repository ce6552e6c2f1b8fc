"""Time flashgru's backends against torch.nn.GRU on the same weights and input, in one
process, and print a markdown table of times and ratios (a benchmark, not a test).

    python benchmarks/core.py                   # CPU, the DESIGN.md grid
    python benchmarks/core.py --device cuda     # GPU (CUDA events, TF32 off)
    python benchmarks/core.py --grid 1,64,64    # one point: B,T,H
"""

import argparse

import torch

from flashgru.cli.bench import DESIGN_GRID, markdown, run_grid


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid", nargs="*", help="points B,T,H (default: the DESIGN grid)")
    args = parser.parse_args(argv)
    grid = [tuple(map(int, p.split(","))) for p in args.grid] if args.grid else DESIGN_GRID
    device = torch.device(args.device)
    print(markdown(run_grid(grid, device, args.repeats), device))


if __name__ == "__main__":
    main()
