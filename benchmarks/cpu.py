"""flashgru's fused CPU backend against torch.nn.GRU and onnxruntime: same weights, same
input, one process; fp32, input size = hidden size. Prints times (ms, the minimum over calls
taken in turns, see ``interleaved_ms``) and ratios.

    python benchmarks/cpu.py              # the issue's grid, forward, forward+backward, streaming
    python benchmarks/cpu.py --rounds 40
    python benchmarks/cpu.py --streaming  # one step at a time only

onnxruntime is a benchmark-only dependency (pip install onnxruntime onnx); the model is
exported with torch's legacy exporter, which emits the ONNX GRU operator.
"""

from __future__ import annotations

import argparse
import io
import time

import torch

import flashgru
from flashgru.backends import cpu_step

GRID = [(1, 256, 64), (1, 256, 256), (16, 256, 128), (64, 128, 256)]  # (B, T, H)


def interleaved_ms(cases: dict, rounds: int, block: int = 4) -> dict:
    """ms per call of each ``name: fn`` in ``cases``: the cases take turns, ``block``
    calls each, ``rounds`` times; the minimum over all calls but the first of each block.
    Taking turns lets load from other processes fall alike on every case; dropping each
    block's first call keeps out some of what the previous case leaves behind (torch's and
    onnxruntime's worker threads spin for a while after a call, which slowed the next
    case's single-threaded kernel by up to 40% on the 2-core machine)."""
    for fn in cases.values():
        fn()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            for k in range(block):
                start = time.perf_counter()
                fn()
                if k:
                    best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return best


def onnx_session(module: torch.nn.GRU, x: torch.Tensor):
    import onnxruntime

    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, input_names=["x"], dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def point(batch, steps, hidden, rounds):
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden)
    ours = flashgru.GRU.from_torch(ref, backend="cpu")
    x = torch.randn(steps, batch, hidden)
    xg = x.clone().requires_grad_()

    def train(m):
        def go():
            out, h_n = m(xg)
            (out.sum() + h_n.sum()).backward()
        return go

    with torch.no_grad():
        row = interleaved_ms({"torch fwd": lambda: ref(x), "flashgru fwd": lambda: ours(x),
                              "onnxruntime fwd": onnx_session(ref, x)}, rounds)
    row |= interleaved_ms({"torch fwd+bwd": train(ref), "flashgru fwd+bwd": train(ours)},
                          rounds)
    return row


def per_step_us(cases: dict, steps: int, blocks: int) -> dict:
    """µs per step of ``state = step(state)`` for each case ``name: (step, state)``: the
    minimum over ``blocks`` runs of ``steps`` steps each, the cases taking turns block by
    block (so that load from other processes counts least, and alike for every case)."""
    best = dict.fromkeys(cases, float("inf"))
    states = {name: step(state) for name, (step, state) in cases.items()}
    for _ in range(blocks):
        for name, (step, _) in cases.items():
            state = states[name]
            start = time.perf_counter()
            for _ in range(steps):
                state = step(state)
            best[name] = min(best[name], (time.perf_counter() - start) / steps * 1e6)
            states[name] = state
    return best


def streaming(hidden: int, input_size: int, steps: int = 100, blocks: int = 100) -> dict:
    """µs per step at B=1, float32, the state carried from step to step, same weights: the
    cells (flashgru.GRUCell runs its fast path), the GRUs with T=1 (flashgru on the cpu
    backend), and flashgru's cell kernel alone at raw addresses (no Python checks)."""
    torch.manual_seed(0)
    cell_ref = torch.nn.GRUCell(input_size, hidden)
    cell = flashgru.GRUCell(input_size, hidden)
    cell.load_state_dict(cell_ref.state_dict())
    gru_ref = torch.nn.GRU(input_size, hidden)
    gru_ref.load_state_dict({k + "_l0": v for k, v in cell_ref.state_dict().items()})
    gru = flashgru.GRU.from_torch(gru_ref, backend="cpu")
    x, h = torch.randn(1, input_size), torch.zeros(1, hidden)
    xs, hs = x.view(1, 1, input_size), h.view(1, 1, hidden)
    weights = [p.data_ptr() for p in cell.parameters()]
    out = torch.empty_like(h)

    def kernel(h_at: int) -> None:
        cpu_step._cell(x.data_ptr(), h_at, *weights, out.data_ptr(), 1, input_size, hidden,
                       True, cpu_step._LIKE[torch.float32])

    cases = {
        "torch.nn.GRUCell": (lambda h: cell_ref(x, h), h),
        "flashgru.GRUCell": (lambda h: cell(x, h), h),
        "torch.nn.GRU T=1": (lambda h: gru_ref(xs, h)[1], hs),
        "flashgru.GRU T=1": (lambda h: gru(xs, h)[1], hs),
        "flashgru cell kernel alone": (lambda h: kernel(h.data_ptr()) or h, h),
    }
    with torch.no_grad():
        return per_step_us(cases, steps, blocks)


def print_streaming(hidden: int, input_size: int) -> None:
    us = streaming(hidden, input_size)
    print(f"\nstreaming, B=1, I={input_size}, H={hidden}, fp32, µs per step with the Python "
          "call (min of 100 blocks of 100 steps):")
    print("| module | µs per step | torch.nn.GRUCell / this | torch.nn.GRU T=1 / this |")
    print("|---|---|---|---|")
    for name, t in us.items():
        print(f"| {name} | {t:.1f} | {us['torch.nn.GRUCell'] / t:.2f}× "
              f"| {us['torch.nn.GRU T=1'] / t:.2f}× |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8,
                        help="turns of 4 calls per case; the minimum is reported")
    parser.add_argument("--streaming", action="store_true", help="only the streaming case")
    args = parser.parse_args(argv)
    if args.streaming:
        print_streaming(256, 256)
        return
    print(f"# flashgru {flashgru.__version__} (cpu backend), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32; ms, the minimum over {args.rounds} turns "
          "of 4 calls (each turn's first call dropped)")
    print("| B,T,H | torch fwd | onnxruntime fwd | flashgru fwd | vs torch | vs ort "
          "| torch fwd+bwd | flashgru fwd+bwd | vs torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch, steps, hidden in GRID:
        r = point(batch, steps, hidden, args.rounds)
        fwd, train = r["flashgru fwd"], r["flashgru fwd+bwd"]
        print(f"| {batch},{steps},{hidden} | {r['torch fwd']:.2f} | {r['onnxruntime fwd']:.2f} "
              f"| {fwd:.2f} | {r['torch fwd'] / fwd:.1f}× | {r['onnxruntime fwd'] / fwd:.2f}× "
              f"| {r['torch fwd+bwd']:.1f} | {train:.2f} | {r['torch fwd+bwd'] / train:.1f}× |")
    print_streaming(256, 256)


if __name__ == "__main__":
    main()
