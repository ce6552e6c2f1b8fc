"""scripts/gpu_probe_gemm.py: the TF32 split its three-GEMM product rests on, and that
product's error at fp32's level (on the CPU the three products run in fp32: the
arithmetic, not the tensor cores' timing, which the probe measures on a GPU)."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_probe_gemm  # noqa: E402


def test_tf32_split_is_exact_and_its_high_part_fits_tf32():
    a = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.randint(
        -30, 30, (4096,), generator=torch.Generator().manual_seed(1))
    hi, lo = gpu_probe_gemm.tf32_split(a)
    assert torch.equal(hi + lo, a)  # (lo = a - hi, exact)
    assert torch.all(hi.view(torch.int32) & 0x1FFF == 0)  # (13 low mantissa bits clear)
    nonzero = hi != 0
    assert torch.all((lo[nonzero] / hi[nonzero]).abs() <= 2.0 ** -11)  # (rounded to nearest)


def test_three_products_keep_fp32s_error():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 128, generator=g), torch.randn(128, 384, generator=g)
    want = x.double() @ w.double()
    got = gpu_probe_gemm.mm_tf32x3(x, w).double()
    # (the dropped lo·lo term is ~2^-22 of each product, summed over 128)
    assert (got - want).abs().max() <= 4e-6 * want.abs().max()
    # tf32_split's high parts alone (one TF32 product's operands) lose ~2^-11
    hi = gpu_probe_gemm.tf32_split(x)[0] @ gpu_probe_gemm.tf32_split(w)[0]
    assert (hi.double() - want).abs().max() > 1e-4 * want.abs().max()


def test_smoke_run():
    run = subprocess.run([sys.executable, "gpu_probe_gemm.py", "--smoke"], cwd=ROOT / "scripts",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "tf32x3" in run.stdout and "error" in run.stdout
