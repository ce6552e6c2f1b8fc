"""reset_after=False (and True) against oracles nobody here wrote: the ONNX GRU operator
in onnx's reference evaluator (float64) and in onnxruntime (float32).

ONNX stacks gates z, r, h (ours: r, z, n), takes W (D, 3H, I), R (D, 3H, H),
B (D, 6H) = [Wb, Rb], and returns Y (T, D, B, H) and Y_h (D, B, H).
"""

import numpy as np
import pytest
import torch
from helpers import BACKENDS, BACKENDS_RESET_BEFORE, assert_close

import flashgru

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def _onnx_gates(w: torch.Tensor) -> torch.Tensor:
    """Our r, z, n blocks along dim 0 → ONNX's z, r, h."""
    r, z, n = w.chunk(3, dim=0)
    return torch.cat([z, r, n])


def onnx_inputs(gru: flashgru.GRU, x, h0, lengths):
    suffixes = ["", "_reverse"] if gru.bidirectional else [""]
    p = dict(gru.named_parameters())
    w = torch.stack([_onnx_gates(p["weight_ih_l0" + s]) for s in suffixes])
    r = torch.stack([_onnx_gates(p["weight_hh_l0" + s]) for s in suffixes])
    b = torch.stack([torch.cat([_onnx_gates(p["bias_ih_l0" + s]),
                                _onnx_gates(p["bias_hh_l0" + s])]) for s in suffixes])
    arrays = dict(X=x, W=w, R=r, B=b, initial_h=h0)
    feeds = {k: v.detach().numpy() for k, v in arrays.items()}
    feeds["sequence_lens"] = lengths.numpy().astype(np.int32)
    return feeds


def onnx_model(hidden, bidirectional, linear_before_reset, dtype):
    elem = TensorProto.DOUBLE if dtype == torch.float64 else TensorProto.FLOAT
    node = helper.make_node(
        "GRU", ["X", "W", "R", "B", "sequence_lens", "initial_h"], ["Y", "Y_h"],
        hidden_size=hidden, direction="bidirectional" if bidirectional else "forward",
        linear_before_reset=linear_before_reset,
    )
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens"
                                            else elem, None) for n in names]
    outputs = [helper.make_tensor_value_info(n, elem, None) for n in ("Y", "Y_h")]
    graph = helper.make_graph([node], "gru", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # what opset 14 needs; newer onnx writes IRs older runtimes refuse
    return model


def ours(gru, x, h0, lengths):
    """Our output in ONNX's layouts: Y (T, D, B, H), Y_h (D, B, H)."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = gru(packed, h0)
    out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.size(0))[0]
    steps, batch, _ = out.shape
    return out.view(steps, batch, -1, gru.hidden_size).transpose(1, 2), h_n


def _setup(reset_after, bidirectional, dtype, backend, equal_lengths=False):
    torch.manual_seed(3)
    steps, batch, isz, hsz = 7, 4, 5, 6
    gru = flashgru.GRU(isz, hsz, bidirectional=bidirectional, reset_after=reset_after,
                       backend=backend, dtype=dtype)
    with torch.no_grad():  # weights larger than the default init, so gates saturate too
        for p in gru.parameters():
            p.uniform_(-1.5, 1.5)
    x = torch.randn(steps, batch, isz, dtype=dtype)
    h0 = torch.randn(1 + bidirectional, batch, hsz, dtype=dtype)
    lengths = torch.full((batch,), steps) if equal_lengths else torch.tensor([7, 3, 5, 1])
    return gru, x, h0, lengths


def _backends(reset_after):
    return BACKENDS_RESET_BEFORE if not reset_after else BACKENDS


@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_onnx_reference_evaluator_float64(reset_after, bidirectional):
    """Full-length sequences only: onnx's evaluator ignores sequence_lens."""
    from onnx.reference import ReferenceEvaluator

    for backend in _backends(reset_after):
        gru, x, h0, lengths = _setup(reset_after, bidirectional, torch.float64, backend,
                                     equal_lengths=True)
        model = onnx_model(gru.hidden_size, bidirectional, int(reset_after), torch.float64)
        y, y_h = ReferenceEvaluator(model).run(None, onnx_inputs(gru, x, h0, lengths))
        got_y, got_h = ours(gru, x, h0, lengths)
        assert_close(f"{backend} Y", torch.from_numpy(y), got_y.detach(), 1e-12)
        assert_close(f"{backend} Y_h", torch.from_numpy(y_h), got_h.detach(), 1e-12)


@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("equal_lengths", [True, False], ids=["full", "sequence_lens"])
def test_onnxruntime_float32(reset_after, bidirectional, equal_lengths):
    ort = pytest.importorskip("onnxruntime")
    for backend in _backends(reset_after):
        gru, x, h0, lengths = _setup(reset_after, bidirectional, torch.float32, backend,
                                     equal_lengths)
        model = onnx_model(gru.hidden_size, bidirectional, int(reset_after), torch.float32)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        y, y_h = session.run(None, onnx_inputs(gru, x, h0, lengths))
        got_y, got_h = ours(gru, x, h0, lengths)
        assert_close(f"{backend} Y", torch.from_numpy(y), got_y.detach(), 1e-5)
        assert_close(f"{backend} Y_h", torch.from_numpy(y_h), got_h.detach(), 1e-5)
