"""The same contract on a CUDA GPU: parity with torch.nn.GRU (cuDNN) for every backend and
input form, the paper's formulation against the CPU, and sequences longer than cuDNN
takes. Skipped, visibly, on machines without a GPU."""

import pytest
import torch
from helpers import BACKENDS_CUDA, FORMS, assert_close
from test_parity_torch import run_pair

import flashgru

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("no_tf32")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", BACKENDS_CUDA)
def test_cuda_matches_torch(backend, form, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for layers, bi in [(1, False), (2, True)]:
        (o_ref, h_ref, g_ref), (o, h, g) = run_pair(
            backend, layers, bi, False, True, form, True, (9, 3, 5, 13), dtype, device="cuda")
        assert_close("output", o_ref, o, tol)
        assert_close("h_n", h_ref, h, tol)
        for name in g_ref:
            assert_close(name, g_ref[name], g[name], tol, rtol=tol)


@pytest.mark.parametrize("reset_after", [False, True])
def test_cuda_matches_cpu(reset_after):
    torch.manual_seed(0)
    cpu = flashgru.GRU(5, 7, 2, bidirectional=True, reset_after=reset_after,
                       dtype=torch.float64)
    gpu = flashgru.GRU(5, 7, 2, bidirectional=True, reset_after=reset_after, device="cuda",
                       dtype=torch.float64)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(11, 4, 5, dtype=torch.float64)
    (o1, h1), (o2, h2) = cpu(x), gpu(x.cuda())
    assert_close("output", o1, o2.cpu(), 1e-12)
    assert_close("h_n", h1, h2.cpu(), 1e-12)
    g = gpu.gates(x.cuda())
    assert_close("gates h vs output", o2, torch.cat(list(g.h[-1]), -1), 1e-12)
    cell = flashgru.GRUCell(5, 7, reset_after=reset_after, dtype=torch.float64)
    h = torch.randn(4, 7, dtype=torch.float64)
    assert_close("cell", cell(x[0], h), cell.cuda()(x[0].cuda(), h.cuda()).cpu(), 1e-12)


def test_sequences_longer_than_cudnn_takes():
    """T = 65536 (cuDNN refuses T ≥ 65536): auto runs it, forward and backward, and agrees
    with torch.nn.GRU on the CPU in float64."""
    steps = 65536
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 4, dtype=torch.float64)
    gru = flashgru.GRU.from_torch(ref).float().cuda()
    expected = "triton" if flashgru.BACKENDS["triton"].missing() is None else "torch"
    # (batch 2, as the call below: at batch 1 so small a state goes to "parallel")
    assert gru.which_backend(torch.empty(steps, 2, 3, device="cuda")).name == expected
    x = torch.randn(steps, 2, 3, dtype=torch.float64)
    out_ref, h_ref = ref(x)
    (out_ref[-100:].sum() + h_ref.sum()).backward()
    out, h_n = gru(x.float().cuda())
    (out[-100:].sum() + h_n.sum()).backward()
    assert_close("h_n", h_ref.float(), h_n.cpu(), 1e-4)
    assert_close("output", out_ref.float(), out.detach().cpu(), 1e-4)
    for name, p in ref.named_parameters():
        got = dict(gru.named_parameters())[name].grad.cpu()
        assert_close("d" + name, p.grad.float(), got, 1e-3, rtol=1e-4)
