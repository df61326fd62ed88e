"""SCALE: Stochastic Column-normalized Last-layer momEntum (Glentis, Li, Han, Hong; arXiv 2506.16659).

SGD with two changes, and nothing else:

1. every matrix update is normalised per output unit by its RMS (the paper's "column normalisation");
2. the output layer (``lm_head``), whose gradient is the noisiest, keeps a first-order momentum (an EMA).

The 1-D weights (RMSNorm gains) are trained with AdamW at their own learning rate ``adam_lr``. The optimizer
state is therefore the lm_head momentum plus AdamW's two moments of the 1-D weights: about one vocab x hidden
matrix, which is why SCALE needs 35-45% of Adam's memory.

The arithmetic follows the authors' released optimizer (OptimAI-Lab/Minimalist_LLM_Pretraining,
``mem_eff_pt/pt_scale/scale_optimizer.py``), including its AdamW for the 1-D weights (eps added to sqrt(v)
before the bias correction, which is folded into the step size), with two deliberate differences that do
not change the method: row statistics are computed in fp32 and the update is applied in one fused,
fp32-accurate op (the authors divide in the parameter's dtype, i.e. in bf16 for the published runs); and the
role of a weight comes from :mod:`optsweep.optim.groups` rather than from module names (the authors' code
matches "embed_tokens"; every other non-hidden matrix gets momentum).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from optsweep.optim.aux_adam import adam_lr_groups, aux_adamw_step
from optsweep.optim.base import closure_loss
from optsweep.optim.groups import ROLES, infer_role
from optsweep.optim.newton_schulz import orthogonalize
from optsweep.optim.sharding import all_reduce_sharded, full_tensor, keep_local, local, sharded_dims

NORMALIZATIONS = ("column", "row", "sign", "newton_schulz", "none")
MOMENTUM_ON = ("last", "none", "all")
MATRIX_ROLES = ("hidden", "embedding", "output")

RMS_FLOOR = 1e-8
_MEAN_SQUARE_FLOOR = RMS_FLOOR**2  # clamping RMS at 1e-8 == clamping the mean square at 1e-16

# On CPU the update walks matrices in blocks of this many elements (2 MB in fp32; 2^18-2^20 measured
# alike): a block read for the statistic is still in cache when the update reads it again, and no
# full-size temporary is allocated (on these machines its page faults cost more than the arithmetic).
_CPU_BLOCK = 1 << 19
_COMPILE_CHUNK = 8  # matrices per compiled call


# ------------------------------------------------------------- the algorithm, as the paper writes it
def rms(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Root mean square over ``dims`` (kept for broadcasting), in fp32, floored at ``RMS_FLOOR``."""
    return x.float().square().mean(dim=dims, keepdim=True).sqrt().clamp_min(RMS_FLOOR)


def scale_matrix_step(param: torch.Tensor, grad: torch.Tensor, buffer: torch.Tensor, *, role: str, lr: float,
                      momentum: float = 0.9, weight_decay: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SCALE step of one weight matrix (the paper's Algorithm 1), out of place: the new weight and the
    new momentum buffer. ``role``: "output" (lm_head), "hidden" or "embedding". The 1-D weights take AdamW.
    ``SCALE`` below computes exactly this for the default options, in place, fused and blocked."""
    direction = grad
    if role == "output":  # momentum on the last layer only: an EMA of the gradient, no bias correction
        buffer = momentum * buffer + (1 - momentum) * grad
        direction = buffer
    # column normalisation: one scale per output unit (a row of an nn.Linear weight, a column of the embedding)
    per_output_unit = (0,) if role == "embedding" else tuple(range(1, grad.ndim))
    update = direction.float() / rms(direction, per_output_unit)
    return (param.float() * (1 - lr * weight_decay) - lr * update).to(param.dtype), buffer


# ----------------------------------------------------------- the optimizer: the same, for a whole model
class SCALE(torch.optim.Optimizer):
    r"""SCALE, with the paper's ablations as options.

    Every param group has a ``"role"`` (see :mod:`optsweep.optim.groups`); a group without one gets
    ``infer_role`` per parameter (1-D -> ``vector``, otherwise ``hidden``). Per step, for each parameter
    with a gradient ``g`` and the group's scheduled learning rate ``lr``:

    - all roles: decoupled weight decay ``p *= 1 - lr * weight_decay`` (0 in every published run);
    - ``vector`` (1-D weights): AdamW as the authors wrote it,
      ``p -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)`` (eps on the raw sqrt(v));
      ``for_model`` gives this group ``lr = adam_lr``, so a LambdaLR schedule moves it as
      ``adam_lr * lr(t) / lr_max``;
    - ``hidden``, ``embedding``, ``output`` (matrices): direction ``d = g``, or the EMA
      ``m = momentum * m + (1 - momentum) * g`` (zero init, no bias correction) where ``momentum_on``
      asks for it; then ``p -= lr * N(d)`` with ``N`` chosen by ``normalization``.

    ``normalization`` (``RMS(x) = max(sqrt(mean(x^2)), 1e-8)`` over the named dims, computed in fp32):

    - ``"column"`` (SCALE): one scale per *output unit* of the layer. For ``hidden`` and ``output`` weights,
      stored ``(out, in)`` by ``nn.Linear``, each row is divided by its RMS over dim 1 (the inputs;
      weights with more than 2 dims: over all dims but 0). For the ``embedding`` ``(vocab, hidden)``, whose
      outputs are the hidden units, each column is divided by its RMS over dim 0, the vocabulary.
    - ``"row"``: the other dim, one scale per *input unit*: ``hidden``/``output`` columns over dim 0 (the
      output units; for lm_head that is over the vocabulary), ``embedding`` rows over dim 1 (one scale
      per token).
    - ``"sign"``: ``sign(d)``; entries are -1, 0 or +1, so the step is ``lr`` per entry.
    - ``"newton_schulz"``: Muon's orthogonalisation, ``ns_steps`` quintic iterations on the whole matrix
      (in fp32), times ``sqrt(max(rows, cols))``.
    - ``"none"``: ``d`` itself, i.e. plain SGD (with momentum where ``momentum_on`` says).

    Scale choice for the ablations: column, row and sign all give updates whose entries have RMS 1, and an
    exactly orthogonal ``rows x cols`` matrix has entry RMS ``1/sqrt(max(rows, cols))``, hence the
    ``sqrt(max(rows, cols))`` factor: every normalised variant then moves the weights by about ``lr`` per
    entry, so one learning-rate grid serves the whole "SGD + <normalisation>" ablation and only the
    direction differs. (The quintic iteration leaves singular values in roughly [0.7, 1.1], not exactly 1.)

    ``momentum_on``: ``"last"`` (SCALE) keeps momentum for the ``output`` role only, ``"all"`` for every
    matrix, ``"none"`` for no matrix (the paper's "SGD + normalisation" rows). ``momentum=0`` keeps no
    buffer either, as the EMA is then the gradient itself.

    State (created at the first step, in the parameter's dtype and device, sharded like it under FSDP2):
    ``momentum_buffer`` for each matrix with momentum, and ``step``/``exp_avg``/``exp_avg_sq`` for each
    ``vector`` parameter. Nothing for the other matrices: they are stateless.

    Sharding: with DTensor parameters sharded on dim 0 (FSDP2), a reduction over a sharded dim (the
    embedding's column RMS, the ``row`` RMS of ``hidden``/``output``) sums squares locally, all-reduces the
    sums over the shard group and divides by the global size; reductions over other dims are local;
    ``newton_schulz`` gathers the matrix, orthogonalises it on every rank and keeps the local rows.

    ``compile``: ``None`` compiles the fused column/row update with ``torch.compile`` when the parameters
    are on CUDA (the step is launch-bound there), ``True`` compiles on any device, ``False`` never. Should
    compilation fail, the optimizer warns once and continues eagerly.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        adam_betas: Sequence[float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        normalization: str = "column",
        momentum_on: str = "last",
        ns_steps: int = 5,
        compile: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "adam_betas": tuple(adam_betas),
            "adam_eps": adam_eps,
            "weight_decay": weight_decay,
            "normalization": normalization,
            "momentum_on": momentum_on,
            "ns_steps": ns_steps,
        }
        self._compile = compile
        self._compiled_update: Callable | None = None
        self._lr_tensors: dict[torch.device, torch.Tensor] = {}
        super().__init__(params, defaults)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_compile": self._compile}

    def __setstate__(self, state: dict) -> None:
        # What a pickle or deepcopy carries is the choice; compiled code and its lr tensors are rebuilt.
        super().__setstate__(state)
        self.__dict__.setdefault("_compile", None)
        self._compiled_update = None
        self._lr_tensors = {}

    @classmethod
    def for_model(cls, model: nn.Module, lr: float = 1e-3, adam_lr: float | None = None, **options) -> SCALE:
        """SCALE over ``model``'s parameters split by role; the 1-D weights get ``adam_lr`` (None: ``lr``);
        ``options``: the constructor's."""
        return cls(adam_lr_groups(model, lr, adam_lr, ("vector",)), lr=lr, **options)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_choice("normalization", group["normalization"], NORMALIZATIONS)
        _check_choice("momentum_on", group["momentum_on"], MOMENTUM_ON)
        role = group.get("role")
        if role is not None:
            _check_choice("role", role, ROLES)
        if not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"SCALE: momentum must be in [0, 1), got {group['momentum']}")
        if len(group["adam_betas"]) != 2 or not all(0.0 <= b < 1.0 for b in group["adam_betas"]):
            raise ValueError(f"SCALE: adam_betas must be two numbers in [0, 1), got {group['adam_betas']}")
        if group["lr"] < 0 or group["adam_eps"] < 0 or group["weight_decay"] < 0:
            raise ValueError("SCALE: lr, adam_eps and weight_decay must be >= 0")
        if not isinstance(group["ns_steps"], int) or group["ns_steps"] < 1:
            raise ValueError(f"SCALE: ns_steps must be a positive integer, got {group['ns_steps']}")
        for p in group["params"]:
            if (role or infer_role(p)) in MATRIX_ROLES and p.ndim < 2:
                raise ValueError(f"SCALE: a '{role}' parameter must have 2 or more dims, got shape "
                                 f"{tuple(p.shape)}; give 1-D weights the role 'vector'")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for group in self.param_groups:
            by_role: dict[str, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SCALE does not support sparse gradients")
                by_role.setdefault(group.get("role") or infer_role(p), []).append(p)
            for role, params in by_role.items():
                if role == "vector":  # AdamW as the authors wrote it: eps on the raw sqrt(v)
                    aux_adamw_step(self.state, params, group, eps_before_bias_correction=True)
                else:
                    self._matrix_step(group, role, params)
        return loss

    def _matrix_step(self, group: dict, role: str, params: list[torch.Tensor]) -> None:
        lr, beta = group["lr"], group["momentum"]
        normalization = group["normalization"]
        grads = [p.grad for p in params]
        buffers = None
        if beta > 0 and _keeps_momentum(group["momentum_on"], role):
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
        local_params = [local(p) for p in params]
        if group["weight_decay"]:
            torch._foreach_mul_(local_params, 1.0 - lr * group["weight_decay"])

        if normalization in ("column", "row"):
            dims = [reduce_dims(role, normalization, p.ndim) for p in params]
            self._normalized_update(local_params, grads, buffers, beta, dims, lr)
            return
        directions = _momentum_(grads, buffers, beta)
        if normalization == "sign":
            signs = torch._foreach_sign([local(d) for d in directions])
            torch._foreach_add_(local_params, signs, alpha=-lr)
        elif normalization == "newton_schulz":
            for p, p_local, d in zip(params, local_params, directions):
                update = orthogonalized(full_tensor(d), group["ns_steps"])
                p_local.add_(keep_local(update, p), alpha=-lr)
        else:  # "none": plain SGD
            torch._foreach_add_(local_params, [local(d) for d in directions], alpha=-lr)

    def _normalized_update(self, local_params: list[torch.Tensor], grads: list[torch.Tensor],
                           buffers: list[torch.Tensor] | None, beta: float, dims: list[tuple[int, ...]],
                           lr: float) -> None:
        """``p -= lr * d / RMS(d over dims)`` per matrix (``d``: the gradient or its EMA).

        The RMS is always fp32 and the update one fused op. Three paths, by what is fastest where:
        compiled (CUDA by default: one kernel per matrix); on CPU, when each row has its own RMS, row blocks
        that stay in cache from the momentum through the statistic to the update; otherwise whole tensors,
        all-reducing the sums of squares over a sharded dim.
        """
        sizes = [math.prod(g.shape[i] for i in dim) for g, dim in zip(grads, dims)]
        compiled, rows, whole = [], [], []
        use_compiled = self._use_compiled(local_params)
        for i, g in enumerate(grads):
            if set(dims[i]) & sharded_dims(g):
                whole.append(i)  # a reduction over the sharded dim needs a collective: not in a fused path
            elif use_compiled:
                compiled.append(i)
            elif local_params[i].device.type == "cpu" and 0 not in dims[i]:
                rows.append(i)
            else:
                whole.append(i)
        for i in rows:
            _rowwise_update_(local_params[i], local(grads[i]), None if buffers is None else local(buffers[i]),
                             beta, dims[i], sizes[i], lr)
        if buffers is not None:
            others = compiled + whole
            _momentum_([grads[i] for i in others], [buffers[i] for i in others], beta)
        directions = grads if buffers is None else buffers
        if compiled and not self._run_compiled([local_params[i] for i in compiled],
                                               [local(directions[i]) for i in compiled],
                                               tuple(dims[i] for i in compiled),
                                               tuple(sizes[i] for i in compiled), lr):
            whole += compiled
        if not whole:
            return
        inverse_rms = []
        for i in whole:
            sums = _local_sum_of_squares(local(directions[i]), dims[i])
            inverse_rms.append(all_reduce_sharded(sums, directions[i], dims[i]))
        torch._foreach_mul_(inverse_rms, [1.0 / sizes[i] for i in whole])
        torch._foreach_clamp_min_(inverse_rms, _MEAN_SQUARE_FLOOR)
        torch._foreach_rsqrt_(inverse_rms)
        # p + (-lr) * d * inv is evaluated in fp32 and rounded once into p's dtype (bf16 loses nothing more).
        params_ = [local_params[i] for i in whole]
        directions_ = [local(directions[i]) for i in whole]
        if any(_cpu_low_precision(p) for p in params_):
            for p, d, inv in zip(params_, directions_, inverse_rms):
                _cpu_addcmul_(p, d, inv, -lr)
        else:
            torch._foreach_addcmul_(params_, directions_, inverse_rms, value=-lr)

    def _use_compiled(self, local_params: list[torch.Tensor]) -> bool:
        if self._compile is False or not local_params:
            return False
        device = local_params[0].device
        if device.type == "meta":
            return False
        return self._compile is True or device.type == "cuda"

    def _run_compiled(self, params, directions, dims, sizes, lr) -> bool:
        try:
            if self._compiled_update is None:
                self._compiled_update = torch.compile(_normalized_update_fp32, dynamic=False)
            # A tensor, not a float: a Python lr would be baked into the graph and recompile every step.
            # One per device, refilled in place: no host-device copy, so no synchronisation.
            device = params[0].device
            if device not in self._lr_tensors:
                self._lr_tensors[device] = torch.zeros((), dtype=torch.float32, device=device)
            lr_tensor = self._lr_tensors[device].fill_(lr)
            # Calls over a few same-shaped matrices at a time: every decoder layer reuses the same few
            # graphs, so compilation stays short and within dynamo's recompile limit at any depth.
            alike: dict[tuple, list[int]] = {}
            for i, (p, d) in enumerate(zip(params, directions)):
                alike.setdefault((tuple(p.shape), p.dtype, d.dtype, dims[i]), []).append(i)
            for indices in alike.values():
                for start in range(0, len(indices), _COMPILE_CHUNK):
                    chunk = indices[start:start + _COMPILE_CHUNK]
                    self._compiled_update([params[i] for i in chunk], [directions[i] for i in chunk],
                                          tuple(dims[i] for i in chunk), tuple(sizes[i] for i in chunk),
                                          lr_tensor)
            return True
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to the eager path
            warnings.warn(f"SCALE: torch.compile of the update failed ({type(error).__name__}: {error}); "
                          "continuing without it", stacklevel=3)
            self._compile = False
            return False


def method_name(normalization: str = "column", momentum_on: str = "last") -> str:
    """How a comparison names this configuration: ``scale``, or the paper's ablation rows ``sgd+sign``,
    ``sgd+row``, ``sgd+newton_schulz``, ``sgd+column`` (no momentum), ``sgd`` (neither); momentum on every
    matrix is ``sgdm+...``, on the lm_head with another normalisation ``sgd-lastm+...``."""
    if (normalization, momentum_on) == ("column", "last"):
        return "scale"
    base = {"none": "sgd", "all": "sgdm", "last": "sgd-lastm"}[momentum_on]
    return base if normalization == "none" else f"{base}+{normalization}"


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"SCALE: unknown {name} {value!r}; valid values: {', '.join(choices)}")


def _momentum_(grads: list[torch.Tensor], buffers: list[torch.Tensor] | None,
               beta: float) -> list[torch.Tensor]:
    """Update the EMAs ``m = beta m + (1 - beta) g`` in place; the directions (the EMAs, or the grads)."""
    if buffers is None:
        return grads
    if buffers:
        torch._foreach_lerp_([local(b) for b in buffers], [local(g) for g in grads], 1.0 - beta)
    return buffers


def _keeps_momentum(momentum_on: str, role: str) -> bool:
    return momentum_on == "all" or (momentum_on == "last" and role == "output")


def reduce_dims(role: str, normalization: str, ndim: int) -> tuple[int, ...]:
    """The dims an RMS is taken over: ``column`` = per output unit, ``row`` = per input unit."""
    if role == "embedding":
        # (vocab, hidden): the outputs are the hidden units, the inputs the tokens.
        return (0,) if normalization == "column" else tuple(range(1, ndim))
    # nn.Linear layout (out, in, ...): the outputs are the rows.
    return tuple(range(1, ndim)) if normalization == "column" else (0,)


def _local_sum_of_squares(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """fp32 sum of squares of a plain tensor over ``dims``, keepdim."""
    if x.device.type != "cpu" or x.numel() == 0 or 0 not in dims:
        # One reduction kernel reading x once (on CUDA it reads bf16 and accumulates in fp32 directly).
        return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32).square_()
    # CPU, over the leading dim (the embedding's vocabulary): vector_norm is ~10x slower there than a
    # streaming op, and a full-size fp32 square would be a fresh allocation whose page faults cost more
    # than the arithmetic. Accumulate the squares of row blocks into one cache-sized fp32 block instead.
    rows = max(1, _CPU_BLOCK // x[0].numel())
    acc = torch.zeros((min(rows, x.shape[0]), *x.shape[1:]), dtype=torch.float32)
    for block in x.split(rows):
        block = block.float()  # CPU kernels mixing dtypes are not vectorised: upcast the block instead
        acc[: block.shape[0]].addcmul_(block, block)
    return acc.sum(dim=dims, keepdim=True)


def _cpu_low_precision(p: torch.Tensor) -> bool:
    return p.device.type == "cpu" and p.dtype != torch.float32


def _cpu_addcmul_(p: torch.Tensor, d: torch.Tensor, scale: torch.Tensor, value: float) -> None:
    """``p += value * d * scale`` for a bf16/fp16 ``p`` on CPU: in fp32, rounded once, block by block.

    CPU kernels that mix bf16 and fp32 operands fall back to a scalar loop (~10x slower); upcasting a
    cache-sized block and writing it back keeps every kernel vectorised and gives the same rounding.
    """
    if p.numel() == 0:
        return
    rows = max(1, _CPU_BLOCK // p[0].numel())
    scales = scale.split(rows) if scale.shape[0] > 1 else itertools.repeat(scale)
    for p_block, d_block, s_block in zip(p.split(rows), d.split(rows), scales):
        p32 = p_block.float()
        p32.addcmul_(d_block.float(), s_block, value=value)
        p_block.copy_(p32)


def _rowwise_update_(p: torch.Tensor, g: torch.Tensor, buffer: torch.Tensor | None, beta: float,
                     dims: tuple[int, ...], size: int, lr: float) -> None:
    """CPU, one RMS per row: EMA, statistic and update block by block, each block read from memory once.

    Done on whole tensors, the direction would be streamed from memory three times (EMA, statistic,
    update); a block of ``_CPU_BLOCK`` elements is still in cache for the second and third.
    """
    if g.numel() == 0:
        return
    rows = max(1, _CPU_BLOCK // g[0].numel())
    buffer_blocks = buffer.split(rows) if buffer is not None else itertools.repeat(None)
    # d / RMS(d) = sqrt(size) * d / ||d||: the clamp moves onto the norm and the scale into the step size.
    root = math.sqrt(size)
    for p_block, g_block, m_block in zip(p.split(rows), g.split(rows), buffer_blocks):
        d = g_block if m_block is None else m_block.lerp_(g_block, 1.0 - beta)
        # bf16: fp32 copies of the block (CPU kernels mixing dtypes are not vectorised), one rounding.
        d32 = d.float()
        norm = torch.linalg.vector_norm(d32, dim=dims, keepdim=True).clamp_min_(RMS_FLOOR * root)
        if p_block.dtype == torch.float32:
            p_block.addcdiv_(d32, norm, value=-lr * root)
        else:
            p_block.copy_(p_block.float().addcdiv_(d32, norm, value=-lr * root))


def _normalized_update_fp32(params, directions, dims, sizes, lr) -> None:
    """The column/row update as one traceable function (what ``compile`` fuses into a kernel per matrix)."""
    for p, d, dim, n in zip(params, directions, dims, sizes):
        d32 = d.float()
        inverse_rms = (d32.square().sum(dim=dim, keepdim=True) / n).clamp_min(_MEAN_SQUARE_FLOOR).rsqrt()
        p.sub_(d32 * inverse_rms * lr)


def orthogonalized(direction: torch.Tensor, steps: int) -> torch.Tensor:
    """The ``newton_schulz`` update of a full (plain) matrix, scaled to entry RMS ~1, in fp32."""
    matrix = direction.reshape(direction.shape[0], -1).float()
    update = orthogonalize(matrix, steps, dtype=torch.float32)
    update.mul_(math.sqrt(max(matrix.shape)))
    return update.reshape(direction.shape)
