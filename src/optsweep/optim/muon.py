"""Muon (Keller Jordan, 2024) for the hidden matrices, with AdamW for everything else, in one optimizer.

Hidden matrices (attention q/k/v/o and MLP gate/up/down weights): momentum buffer B <- lerp(B, g, 1 - mu)
(mu = 0.95), Nesterov direction lerp(g, B, mu), five quintic Newton-Schulz iterations in bfloat16
(``newton_schulz.orthogonalize``), then p <- p (1 - lr wd) - lr * a(shape) * O, where a is
``adjust_lr``:

- "original": sqrt(max(1, rows / cols)) (Keller Jordan's muon.py);
- "match_rms_adamw": 0.2 sqrt(max(rows, cols)) (Moonlight, "Muon is Scalable for LLM Training"): the update
  gets AdamW's typical RMS, so Muon can reuse AdamW's learning rate.

This is torch.optim.Muon's arithmetic (checked bit for bit in tests/test_optim_muon.py), written here
because torch's Muon takes only 2-D parameters (so a second optimizer would be needed for the rest) and,
under FSDP2, issues 11-16 hidden collectives per matrix. Here each matrix is gathered once
(``sharding.full_tensor``), orthogonalised identically on every rank, and each rank keeps its own rows
(``sharding.keep_local``); the momentum buffer stays sharded like the parameter.

Embedding, lm_head and 1-D weights get AdamW (betas (0.9, 0.95), eps 1e-10: Keller Jordan's auxiliary Adam)
at the group lr ``adamw_lr`` (default: the same lr), so the scheduler scales both. Weight decay is decoupled
and applied to every group; it is 0 by default (torch.optim.Muon defaults to 0.1).

Plain param groups work too: a group without a "role" sends its 2-D (and higher) tensors to Muon and the
rest to AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from optsweep.optim import sharding
from optsweep.optim.functional import adamw_
from optsweep.optim.groups import infer_role, role_groups, split_parameters
from optsweep.optim.newton_schulz import orthogonalize

ADJUST_LR = ("original", "match_rms_adamw")
NS_DTYPES = ("bfloat16", "float32")


def lr_adjustment(rule: str, rows: int, cols: int) -> float:
    """Multiplier of the learning rate for an orthogonalised (rows x cols) update."""
    if rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr must be one of {ADJUST_LR}, got {rule!r}")


def aux_adamw_step(
    state: dict,
    params: Iterable[Tensor],
    lr: float,
    betas: Sequence[float],
    eps: float,
    weight_decay: float,
) -> None:
    """AdamW on the parameters a matrix method leaves out (shared by Muon and SWAN).

    State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq`` (shaped like the parameter, so sharded
    under FSDP2). Math runs on local shards: AdamW is element-wise.
    """
    by_step: dict[int, list[Tensor]] = {}
    for p in params:
        st = state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["step"] += 1
        by_step.setdefault(st["step"], []).append(p)
    for step, group in by_step.items():  # one bucket unless parameters started at different steps
        adamw_(
            [sharding.local(p) for p in group],
            [sharding.local(p.grad) for p in group],
            [sharding.local(state[p]["exp_avg"]) for p in group],
            [sharding.local(state[p]["exp_avg_sq"]) for p in group],
            step=step, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay,
        )


def split_by_role(group: dict, params: Iterable[Tensor], matrix_role: str = "hidden"):
    """(matrix params, other params) of a group, by its "role" or, without one, by each tensor's ndim."""
    role = group.get("role")
    matrices, others = [], []
    for p in params:
        (matrices if (role or infer_role(p)) == matrix_role else others).append(p)
    return matrices, others


class Muon(torch.optim.Optimizer):
    """Muon on hidden matrices + AdamW on embeddings, lm_head and 1-D weights. See the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "bfloat16",
        adjust_lr: str = "original",
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.95),
        eps: float = 1e-10,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if adjust_lr not in ADJUST_LR:
            raise ValueError(f"adjust_lr must be one of {ADJUST_LR}, got {adjust_lr!r}")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {NS_DTYPES}, got {ns_dtype!r}")
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                    "ns_dtype": ns_dtype, "adjust_lr": adjust_lr, "weight_decay": weight_decay,
                    "betas": tuple(betas), "eps": eps}
        super().__init__(params, defaults)

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        lr: float = 0.02,
        adamw_lr: float | None = None,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "bfloat16",
        adjust_lr: str = "original",
        weight_decay: float = 0.0,
        adamw_betas: Sequence[float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
    ) -> Muon:
        aux = {"lr": lr if adamw_lr is None else adamw_lr}
        groups = role_groups(split_parameters(model), {"embedding": aux, "output": aux, "vector": aux})
        return cls(groups, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype,
                   adjust_lr=adjust_lr, weight_decay=weight_decay, betas=adamw_betas, eps=adamw_eps)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            matrices, others = split_by_role(group, (p for p in group["params"] if p.grad is not None))
            for p in matrices:
                self._muon_update(p, group)
            aux_adamw_step(self.state, others, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                           weight_decay=group["weight_decay"])
        return loss

    def _muon_update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        mu = group["momentum"]
        buf.lerp_(p.grad, 1 - mu)  # element-wise: fine on sharded DTensors
        direction = p.grad.lerp(buf, mu) if group["nesterov"] else buf
        full = sharding.full_tensor(direction)  # the one all-gather of this matrix
        matrix = full.reshape(full.size(0), -1)  # conv-like weights flatten their trailing dims
        ortho = orthogonalize(matrix, steps=group["ns_steps"], dtype=getattr(torch, group["ns_dtype"]))
        lr = group["lr"]
        scale = lr_adjustment(group["adjust_lr"], matrix.size(0), matrix.size(1))
        param = sharding.local(p)
        if group["weight_decay"]:
            param.mul_(1 - lr * group["weight_decay"])
        param.add_(sharding.keep_local(ortho.reshape(full.shape), p), alpha=-lr * scale)
