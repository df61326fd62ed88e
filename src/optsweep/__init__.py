"""optsweep: pretrain LLaMA on C4 to compare SCALE with its baselines."""

__version__ = "0.1.0"
