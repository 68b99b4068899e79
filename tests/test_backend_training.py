"""torch.compile(backend="waferscale") on training steps: forward and backward graphs both
run on the simulated wafer, and the gradients equal eager PyTorch's.

Tolerance: 1e-6 absolute on gradients whose largest entry is ~0.2 (fp32; only the order of
sums differs).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from waferscale.kernels.attention import attention_lse


def _tiny_neox() -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=69, hidden_size=64, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=256, rotary_pct=0.25,
                        use_cache=False, max_position_embeddings=64,
                        attn_implementation="sdpa")
    return GPTNeoXForCausalLM(cfg)


def test_gpt_neox_training_step_gradients_match_eager() -> None:
    """Guards two bugs: constants folded under aot_autograd's fake mode were FakeTensors
    at run time (a crash), and torch's decomposition of the CPU flash attention returned
    probabilities where its backward reads the log-sum-exp (gradients off by 4x their
    size; see `backend.decompositions`)."""
    import waferscale.backend as backend

    model = _tiny_neox()
    eager = copy.deepcopy(model)
    ids = torch.randint(0, 69, (2, 32))
    before = len(backend.COMPILED)
    loss = torch.compile(model, backend="waferscale")(input_ids=ids, labels=ids).loss
    loss.backward()
    ref = eager(input_ids=ids, labels=ids).loss
    ref.backward()
    assert abs(float(loss) - float(ref)) < 1e-5
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        assert float((p.grad - q.grad).abs().max()) < 1e-6, name
    modes = [c.mode for c in backend.COMPILED[before:]]
    assert modes == ["pipelined", "pipelined"]          # forward and backward graphs
    # on the wafer now: the backward's sums (reduce kernel), the rotary tables built at run
    # time (sin, cos) and selects on masks built from the token ids alone
    host = {f["op"] for c in backend.COMPILED[before:] for f in c.report()["fallback_ops"]}
    assert not host & {"aten.sum.dim_IntList", "aten.where.self", "aten.sin.default",
                       "aten.cos.default", "aten.slice_scatter.default",
                       "aten._scaled_dot_product_flash_attention_for_cpu.default"}, host
    # the CPU flash attention of the forward graph runs on the attention kernel, and the
    # layer norms are GEMM prologues although the graph saves their outputs and statistics
    forward = [s.kind for s in backend.COMPILED[before].program.stages]
    assert forward.count("attention") == 1 and "layer_norm" not in forward


def test_backend_found_without_importing_waferscale() -> None:
    """The package's torch_dynamo_backends entry point: a fresh process that imports only
    torch can name the backend."""
    code = ("import torch\n"
            "f = torch.compile(lambda x: torch.relu(x) * 2, backend='waferscale')\n"
            "print(f(torch.tensor([-1.0, 3.0])).tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[0.0, 6.0]"


@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_lse_matches_the_flash_op(scale: float | None) -> None:
    """The log-sum-exp the runtime hands the flash backward is the op's own (block-wise, so
    the blocks of queries must join up: 40 rows in blocks of 16)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8) for _ in range(3))
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, True, scale=scale)[:2]
    ours = attention_lse(q, k, scale, block=16)
    assert ours.shape == lse.shape
    assert float((ours - lse).abs().max()) < 1e-5
