"""Optuna sweeps through Hydra multirun; the Hydra plugin is hydra_plugins.optsweep_optuna_sweeper.

context.py        what a training job asks about its trial (pruning callback, MLflow parent, failure reason)
pruning.py        the Lightning callback that reports val/loss and raises optuna.TrialPruned
core.py           the sweep loop; search_space.py, mlflow_parent.py, guards.py and _locks.py are its parts
"""
