"""The paper's memory column (model + optimizer), measured from the optimizers that train.

For each optimizer x model, the model is built on the meta device (shapes only: nothing is allocated), the
optimizer is built the way a training run builds it (``conf/optimizer/<name>.yaml`` with
``conf/paper/hparams/<name>_<model>.yaml`` on top, composed by Hydra and instantiated, then completed with
the model), every parameter gets a meta gradient and the optimizer takes ONE step, which creates its lazy
state. The step runs on a copy of the model with a single decoder layer, whose state stands for every
layer (they all have the same shapes; ``full_depth`` steps the whole model, same numbers, much slower; see
``MetaModels``). Three numbers are then shown side by side:

- ``measured``: weights + every state tensor the optimizer actually holds;
- ``paper rule``: the paper's own accounting (its memory paragraph: weights and states in bf16) applied to
  the same model's real parameter split (``optsweep.optim.groups``) and the run's hyperparameters (e.g. the
  projection rank);
- ``paper``: the published number.

Conventions, the paper's: every element, weight or state, counts 2 bytes (pure bf16 training, no fp32
master copy); GB = 1e9 bytes; gradients and activations are not counted; scalar step counters (0-d tensors
or Python numbers, at most one per parameter tensor: a few hundred bytes) are not counted.

One job per module: ``paper`` (the published numbers), ``rules`` (the paper's counting rule per optimizer,
and why a cell differs), ``compose`` (the model and optimizer as training builds them from conf/),
``measure`` (state after one step on the meta device), ``rows`` (the three numbers per optimizer x model),
``render`` (markdown, CSV, console).
"""

from optsweep.report.memory.compose import (
    ConfigComposer,
    ModelChoice,
    OptimizerSetup,
    optimizer_setup,
    parse_model,
)
from optsweep.report.memory.measure import MetaModels, measure_state, meta_model, state_elements
from optsweep.report.memory.paper import (
    BYTES_PER_ELEMENT,
    GB,
    PAPER_MEMORY_GB,
    PAPER_MEMORY_RANK,
    PAPER_MODELS,
    PAPER_ORDER,
    PAPER_SOURCE,
)
from optsweep.report.memory.render import print_table, render_csv, render_markdown
from optsweep.report.memory.rows import MemoryRow, default_optimizers, memory_rows
from optsweep.report.memory.rules import EXPLANATIONS, STATE_RULES, explain, paper_rule_elements

__all__ = [
    "BYTES_PER_ELEMENT",
    "EXPLANATIONS",
    "GB",
    "PAPER_MEMORY_GB",
    "PAPER_MEMORY_RANK",
    "PAPER_MODELS",
    "PAPER_ORDER",
    "PAPER_SOURCE",
    "STATE_RULES",
    "ConfigComposer",
    "MemoryRow",
    "MetaModels",
    "ModelChoice",
    "OptimizerSetup",
    "default_optimizers",
    "explain",
    "measure_state",
    "memory_rows",
    "meta_model",
    "optimizer_setup",
    "paper_rule_elements",
    "parse_model",
    "print_table",
    "render_csv",
    "render_markdown",
    "state_elements",
]
