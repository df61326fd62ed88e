"""The CUDA paths: pure-bf16 training, SCALE's compiled update, fused AdamW, every optimizer in bf16, MFU.

Run where a GPU is present (``python -m pytest -q tests/test_gpu.py``); skipped on CPU-only machines, where
the same code paths are covered in fp32 by the other tests.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_run_e2e import mlflow_runs, run

from optsweep.models.llama import ModelSpec, build_llama
from optsweep.optim.groups import state_bytes
from optsweep.optim.registry import OPTIMIZERS, build_optimizer
from optsweep.optim.scale import SCALE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SOAP_FP32_STATE = {"L", "R", "Q_L", "Q_R"}
TINY = ModelSpec(name="t", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=256)


def test_scale_compiled_bf16_step_is_the_fp32_formula_rounded_once():
    """On CUDA, SCALE compiles its column/row update (compile=None); in bf16 one step must equal the fp32
    formula p - lr * d / RMS(d) rounded once into bf16 (to one bf16 rounding step)."""
    torch.manual_seed(0)
    shapes = {"hidden": (96, 64), "embedding": (256, 64), "output": (256, 64)}
    params = {role: torch.randn(shape, device="cuda").to(torch.bfloat16) for role, shape in shapes.items()}
    grads = {role: torch.randn(shape, device="cuda").to(torch.bfloat16) for role, shape in shapes.items()}
    expected = {}
    for role, p in params.items():
        g = grads[role].float()
        if role == "output":
            g = 0.1 * g  # the first EMA step from a zero buffer, momentum 0.9
        dim = 0 if role == "embedding" else 1
        rms = g.square().mean(dim=dim, keepdim=True).sqrt().clamp_min(1e-8)
        expected[role] = (p.float() - 1e-2 * g / rms).to(torch.bfloat16)
    for role, g in grads.items():
        params[role].grad = g
    optimizer = SCALE([{"params": [p], "role": role} for role, p in params.items()], lr=1e-2, momentum=0.9)
    optimizer.step()
    assert optimizer._compiled_update is not None and optimizer._compile is not False  # the compiled path ran
    for role, p in params.items():
        assert p.dtype == torch.bfloat16
        torch.testing.assert_close(p.float(), expected[role].float(), rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_steps_in_pure_bf16_on_cuda(name):
    """bf16-true as in the paper: weights, gradients and optimizer state in bf16 (fused AdamW included)."""
    torch.manual_seed(0)
    model = build_llama(TINY, device="cuda").to(torch.bfloat16)
    options = {"fused": True} if name in ("adamw", "adam") else {}
    optimizer = build_optimizer(model, name, **options)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        batch = torch.randint(0, TINY.vocab_size, (4, 32), device="cuda")
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item()), (name, step)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any((p != b).any() for p, b in zip(model.parameters(), before))
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and value.numel() > 1:
                assert value.device.type == "cuda", (name, key)
                # SOAP keeps Shampoo's factors and eigenbases in fp32 by design (README); the rest is bf16
                wanted = torch.float32 if name == "soap" and key in SOAP_FP32_STATE else torch.bfloat16
                assert value.dtype == wanted, (name, key, value.dtype)
    assert (state_bytes(optimizer) > 0) == (name != "sgd")  # plain SGD (no momentum) keeps no state


def test_quickstart_on_gpu_trains_in_bf16_and_logs_mfu(tmp_path):
    result = run(tmp_path, "experiment=quickstart", "trainer=gpu", "optimizer=scale", "train.max_steps=30",
                 "train.eval_every_n_steps=30", "task_name=gpu", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = mlflow_runs(tmp_path, "gpu")
    metrics, params = runs[0].data.metrics, runs[0].data.params
    assert params["trainer.precision"] == "bf16-true"
    assert 0 < metrics["throughput/mfu"] < 1  # FLOPs per token x tokens/s against the H100/H200/A100 peak
    assert metrics["memory/peak_bytes"] > 0 and math.isfinite(metrics["val/loss"])
    val = [m.value for m in client.get_metric_history(runs[0].info.run_id, "val/loss")]
    assert val[-1] < val[0]
