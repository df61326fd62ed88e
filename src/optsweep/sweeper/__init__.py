"""Optuna sweeps through Hydra multirun; the Hydra plugin is hydra_plugins.optsweep_optuna_sweeper.

context.py        what a training job asks about its trial (pruning callback, MLflow parent, failure reason)
pruning.py        the Lightning callback that reports val/loss and raises optuna.TrialPruned
core.py           the sweep loop; its parts: study.py (storage and study), trials.py (heartbeat, dead workers,
                  objective values), search_space.py, replicates.py, mlflow_parent.py, _locks.py;
                  its refusal of a strategy that relaunches the script is optsweep.preflight.multirun
"""
