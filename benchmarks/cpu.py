"""flashgru's fused CPU backend against torch.nn.GRU and onnxruntime: same weights, same
input, one process; fp32, input size = hidden size. Prints times (median ms) and ratios.

    python benchmarks/cpu.py              # the issue's grid, forward, forward+backward, streaming
    python benchmarks/cpu.py --repeats 20

onnxruntime is a benchmark-only dependency (pip install onnxruntime onnx); the model is
exported with torch's legacy exporter, which emits the ONNX GRU operator.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import torch

import flashgru

GRID = [(1, 256, 64), (1, 256, 256), (16, 256, 128), (64, 128, 256)]  # (B, T, H)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def onnx_session(module: torch.nn.GRU, x: torch.Tensor):
    import onnxruntime

    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, input_names=["x"], dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def point(batch, steps, hidden, repeats):
    torch.manual_seed(0)
    ref = torch.nn.GRU(hidden, hidden)
    ours = flashgru.GRU.from_torch(ref, backend="cpu")
    x = torch.randn(steps, batch, hidden)
    xg = x.clone().requires_grad_()
    row = {}
    with torch.no_grad():
        row["torch fwd"] = median_ms(lambda: ref(x), repeats)
        row["flashgru fwd"] = median_ms(lambda: ours(x), repeats)
    row["onnxruntime fwd"] = median_ms(onnx_session(ref, x), repeats)
    for name, m in (("torch", ref), ("flashgru", ours)):
        def train(m=m):
            out, h_n = m(xg)
            (out.sum() + h_n.sum()).backward()

        row[f"{name} fwd+bwd"] = median_ms(train, repeats)
    return row


def streaming(hidden: int, repeats: int = 2000) -> dict:
    """µs per step at B=1: GRUCell and GRU with T=1 and a carried hx."""
    torch.manual_seed(0)
    cell_ref = torch.nn.GRUCell(hidden, hidden)
    cell = flashgru.GRUCell(hidden, hidden)
    cell.load_state_dict(cell_ref.state_dict())
    gru = flashgru.GRU(hidden, hidden, backend="cpu")
    x, h = torch.randn(1, hidden), torch.zeros(1, hidden)
    xs, hs = x.view(1, 1, hidden), h.view(1, 1, hidden)
    out = {}
    with torch.no_grad():
        for name, fn in (("torch.nn.GRUCell", lambda: cell_ref(x, h)),
                         ("flashgru.GRUCell", lambda: cell(x, h)),
                         ("flashgru.GRU T=1", lambda: gru(xs, hs))):
            fn()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            out[name] = (time.perf_counter() - start) / repeats * 1e6
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"# flashgru {flashgru.__version__} (cpu backend), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32; median ms")
    print("| B,T,H | torch fwd | onnxruntime fwd | flashgru fwd | vs torch | vs ort "
          "| torch fwd+bwd | flashgru fwd+bwd | vs torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch, steps, hidden in GRID:
        r = point(batch, steps, hidden, args.repeats)
        fwd, train = r["flashgru fwd"], r["flashgru fwd+bwd"]
        print(f"| {batch},{steps},{hidden} | {r['torch fwd']:.2f} | {r['onnxruntime fwd']:.2f} "
              f"| {fwd:.2f} | {r['torch fwd'] / fwd:.1f}× | {r['onnxruntime fwd'] / fwd:.2f}× "
              f"| {r['torch fwd+bwd']:.1f} | {train:.2f} | {r['torch fwd+bwd'] / train:.1f}× |")
    print("\nstreaming, B=1, H=256, µs per step (with the Python call):")
    for name, us in streaming(256).items():
        print(f"  {name}: {us:.1f}")


if __name__ == "__main__":
    main()
