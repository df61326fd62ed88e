"""optsweep's Optuna sweeper for Hydra multirun (`hydra/sweeper=optuna`).

Hydra finds plugins by scanning the `hydra_plugins` namespace package and importing every module in it,
for every run, sweep or not: the modules here are therefore kept light (dataclasses and a thin Sweeper
class); the work, with its optuna / mlflow imports, lives in `optsweep.sweeper`.
"""
