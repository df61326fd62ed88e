"""Stable-SPAM (Huang et al., arXiv 2502.17055), with the semantics of the authors' released optimizer.

Source of the semantics: github TianjinYellow/StableSPAM, ``galore_torch/stablespam.py`` (commit 6a66da1),
and the BF16 script ``scripts_BF16/stablespam.sh``. The code here is the project's own. Per parameter
tensor, at every step (t = the optimizer's global step, k = the tensor's own step, reset to 1 by MoRet):

1. AdaClip. m_max <- gamma3 m_max + (1 - gamma3) max|g|, bias-corrected by (1 - gamma3^k). Entries with
   |g| above that threshold are scaled by threshold / max|g| (sign kept; entries below are untouched).
2. AdaGN. With n = ||g|| (after clipping) and gamma = gamma1 * s(t): m_n <- gamma m_n + (1 - gamma) n,
   v_n <- gamma2 v_n + (1 - gamma2) n^2, both bias-corrected with k;
   g <- g / n * m_n_hat / (sqrt(v_n_hat) + eps).
3. Adam with beta1 * s(t) and beta2, bias correction with k, eps added to sqrt(v_hat), decoupled weight decay
   p *= 1 - lr wd applied first (wd = 0 in the published runs).
4. MoRet. When t is a multiple of ``update_proj_gap``, k is set to 1 *before* Adam's bias correction and
   the moments are zeroed *after* this step's update - the released code rebinds ``state["exp_avg"]`` to
   zeros while the update still uses the old buffers. ``reset_timing="before_update"`` zeroes them first
   instead (a textbook restart). The AdaClip/AdaGN statistics are not reset, but their bias correction uses
   k, which restarts at 1 (so the thresholds are briefly inflated after each reset, as in the released code).

s(t) = eta_min + (1 - eta_min) (1 + cos(pi t / (total_T + 1))) / 2 is the released code's CosineDecay
(torch's CosineAnnealingLR closed form with T_max = total_T + 1), s = 1 when total_T is None. Beyond
t = total_T + 1 the released formula would rise again; here s stays at eta_min (never reached by its runs).
The released C4 script does not pass --total_T: its argparse default, 20000, is that run's length, and the
README says to set it to the number of update steps, which the configs do (total_T = train.max_steps).

Every parameter gets Stable-SPAM: the released C4 script builds hidden/regular groups for "spam" but passes
``trainable_params`` (all of them, one group) to StableSPAM (main_pretrain.py, utils/setup.py L178-179).

Arithmetic: with the default ``stats_dtype="grad"`` the three scalar statistics are 0-d tensors in the
gradient's dtype, as the released code computes them, and a pure-bf16 run matches the released optimizer bit
for bit (tests/test_optim_stable_spam.py). What that means in bf16: gamma2 * v with gamma2 = 0.99999 rounds
back to v, so v_n grows like a running sum until (1 - gamma2) ||g||^2 falls below half a bf16 ulp of v_n (a
few hundred steps) and then stops tracking ||g||^2; m_max (gamma3 = 0.999) stalls the same way.
``stats_dtype="float32"`` keeps them in float32 - the algorithm as written (identical for fp32 parameters).

Differences from the released code, all deliberate:
- the global step t lives in each param group (``global_step``), so ``state_dict()`` saves it and a resumed
  run continues its cosine decay and reset schedule (the released optimizer keeps it in an attribute and
  restarts both after a resume);
- no ``.item()`` or data-dependent branch (clipping and the ||g|| > 0 guard use ``torch.where``), so a step
  runs on the meta device and does not sync with the GPU;
- ``p.grad`` is left as it was (the released code clips it in place);
- ``gamma1=-1`` (released: "use beta1") and ``amsgrad`` are not offered.

Under FSDP2, max|g| and ||g|| are all-reduced over the mesh (each rank holds some rows); everything else is
element-wise on the local shard, and the scalar statistics are identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from optsweep.optim import sharding
from optsweep.optim.base import ForModel, check_options, closure_loss

RESET_TIMINGS = ("after_update", "before_update")
STATS_DTYPES = ("grad", "float32")


def cosine_scale(step: int, total_T: int | None, eta_min: float) -> float:
    """The released code's multiplier of gamma1 and beta1 at global step ``step`` (counted from 1)."""
    if total_T is None:
        return 1.0
    period = total_T + 1
    t = min(step, period)
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * t / period)) / 2.0


def _global_abs_max(shard: Tensor, like: Tensor) -> Tensor:
    """max|g| over the whole tensor, as an fp32 0-d tensor identical on every rank."""
    if shard.numel() == 0:  # an uneven FSDP2 shard can hold no rows
        value = torch.zeros((), dtype=torch.float32, device=shard.device)
    else:
        value = torch.linalg.vector_norm(shard, ord=math.inf, dtype=torch.float32)
    if sharding.is_dtensor(like):  # over the mesh dims that shard the tensor (the shard group under HSDP)
        for mesh_dim, placement in enumerate(like.placements):
            if placement.is_shard():
                dist.all_reduce(value, op=dist.ReduceOp.MAX, group=like.device_mesh.get_group(mesh_dim))
    return value


def _global_norm(shard: Tensor, like: Tensor) -> Tensor:
    """||g||_2 over the whole tensor, as an fp32 0-d tensor identical on every rank."""
    norm = torch.linalg.vector_norm(shard, dtype=torch.float32)
    if not sharding.is_dtensor(like):
        return norm
    sum_sq = sharding.all_reduce_sharded(norm.square(), like, tuple(range(like.ndim)))
    return sum_sq.sqrt()


class StableSPAM(ForModel, torch.optim.Optimizer):
    """Stable-SPAM: AdaClip + AdaGN + Adam with periodic moment resets (MoRet). See the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 8e-4,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        gamma1: float = 0.85,
        gamma2: float = 0.99999,
        gamma3: float = 0.999,
        update_proj_gap: int = 1000,
        total_T: int | None = 20000,
        eta_min: float = 0.5,
        reset_timing: str = "after_update",
        stats_dtype: str = "grad",
    ) -> None:
        check_options(lr, betas, unit={"gamma1": gamma1, "gamma2": gamma2, "gamma3": gamma3},
                      choices={"reset_timing": (reset_timing, RESET_TIMINGS), "stats_dtype": (stats_dtype, STATS_DTYPES)})
        if update_proj_gap < 0:
            raise ValueError(f"update_proj_gap must be >= 0 (0 disables MoRet), got {update_proj_gap}")
        if total_T is not None and total_T < 1:
            raise ValueError(f"total_T must be a positive step count or None, got {total_T}")
        defaults = {
            "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "gamma1": gamma1,
            "gamma2": gamma2, "gamma3": gamma3, "update_proj_gap": update_proj_gap, "total_T": total_T,
            "eta_min": eta_min, "reset_timing": reset_timing, "stats_dtype": stats_dtype, "global_step": 0,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            # The released code counts optimizer steps, whether or not a tensor had a gradient.
            group["global_step"] += 1
            t = group["global_step"]
            scale = cosine_scale(t, group["total_T"], group["eta_min"])
            gap = group["update_proj_gap"]
            reset = gap > 0 and t % gap == 0
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, scale, reset)
        return loss

    def _update(self, p: Tensor, group: dict, scale: float, reset: bool) -> None:
        grad = sharding.local(p.grad)
        param = sharding.local(p)
        state = self.state[p]
        if not state:
            stats_dtype = torch.float32 if group["stats_dtype"] == "float32" else grad.dtype
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            for key in ("m_max", "m_norm", "v_norm"):
                state[key] = torch.zeros((), dtype=stats_dtype, device=grad.device)
        stats_dtype = state["m_max"].dtype
        lr, eps = group["lr"], group["eps"]

        if group["weight_decay"]:
            param.mul_(1.0 - lr * group["weight_decay"])
        state["step"] += 1
        k = state["step"]

        # AdaClip: written as the released code's expressions so that stats_dtype="grad" rounds alike.
        theta = group["gamma3"]
        max_abs = _global_abs_max(grad, p.grad).to(stats_dtype)
        m_max = theta * state["m_max"] + (1 - theta) * max_abs
        threshold = m_max / (1 - theta**k)
        grad = torch.where(grad.abs() > threshold, grad / max_abs * threshold, grad)

        # AdaGN
        gamma1 = group["gamma1"] * scale
        gamma2 = group["gamma2"]
        norm = _global_norm(grad, p.grad).to(stats_dtype)
        m_norm = gamma1 * state["m_norm"] + (1 - gamma1) * norm
        v_norm = gamma2 * state["v_norm"] + (1 - gamma2) * norm**2
        m_norm_hat = m_norm / (1 - gamma1**k)
        v_norm_hat = v_norm / (1 - gamma2**k)
        target = m_norm_hat / (torch.sqrt(v_norm_hat) + eps)
        grad = torch.where(norm > 0, grad / norm * target, grad)
        state["m_max"], state["m_norm"], state["v_norm"] = m_max, m_norm, v_norm

        # MoRet + Adam
        exp_avg = sharding.local(state["exp_avg"])
        exp_avg_sq = sharding.local(state["exp_avg_sq"])
        if reset:
            k = state["step"] = 1
            if group["reset_timing"] == "before_update":
                exp_avg.zero_()
                exp_avg_sq.zero_()
        beta1 = group["betas"][0] * scale
        beta2 = group["betas"][1]
        bias_correction1 = 1 - beta1**k
        bias_correction2 = 1 - beta2**k
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        param.add_(exp_avg / denom, alpha=-lr / bias_correction1)
        if reset and group["reset_timing"] == "after_update":
            exp_avg.zero_()
            exp_avg_sq.zero_()
