"""The paper's memory column as data: model + optimizer GB per method and size, and its conventions.

Glentis, Li, Han, Hong, "A Minimalist Optimizer Design for LLM Pretraining", arXiv 2506.16659 (v2): the
main comparison table (LLaMA 60M-1B on C4, memory in parentheses after each perplexity) and the 7B table.
"""

from __future__ import annotations

BYTES_PER_ELEMENT = 2  # bf16, as the paper counts weights and states
GB = 1e9

PAPER_SOURCE = (
    "Glentis, Li, Han, Hong, 'A Minimalist Optimizer Design for LLM Pretraining', arXiv 2506.16659 (v2): "
    "the main comparison table (LLaMA 60M-1B on C4, model + optimizer memory in parentheses) and the 7B "
    "table"
)
PAPER_MODELS = ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b")


def _sizes(m60: float, m130: float, m350: float, m1b: float, m7b: float | None = None) -> dict[str, float]:
    row = dict(zip(PAPER_MODELS, (m60, m130, m350, m1b)))
    if m7b is not None:
        row["llama_7b"] = m7b
    return row


# GB, as printed in the paper. Keys are registry names.
PAPER_MEMORY_GB: dict[str, dict[str, float]] = {
    "adam": _sizes(0.35, 0.81, 2.21, 8.04),
    "stable_spam": _sizes(0.35, 0.81, 2.21, 8.04),
    "muon": _sizes(0.23, 0.54, 1.47, 5.36, 26.95),
    "galore": _sizes(0.28, 0.61, 1.59, 4.76),
    "fira": _sizes(0.28, 0.61, 1.59, 4.76),
    "swan": _sizes(0.25, 0.46, 1.00, 3.20),
    "apollo": _sizes(0.28, 0.61, 1.59, 4.76, 16.14),
    "apollo_mini": _sizes(0.25, 0.46, 1.00, 3.20, 14.53),
    "scale": _sizes(0.15, 0.32, 0.80, 2.81, 13.74),
}
# The paper's "Adam" is torch Adam with weight decay 0; AdamW keeps exactly the same two moments.
PAPER_MEMORY_GB["adamw"] = PAPER_MEMORY_GB["adam"]

# The rank each low-rank cell of the paper's table corresponds to (projector + two moments per hidden matrix).
PAPER_MEMORY_RANK = {"llama_60m": 128, "llama_130m": 256, "llama_1b": 512}

# The paper's table order (the report lists its rows in it; other registry names come after).
PAPER_ORDER = (
    "adam",
    "adamw",
    "stable_spam",
    "muon",
    "galore",
    "fira",
    "swan",
    "apollo",
    "apollo_mini",
    "scale",
    "sgd",
)
