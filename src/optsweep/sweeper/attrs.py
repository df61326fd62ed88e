"""Names of the Optuna trial user attributes that a trial's process and the sweeper both read or write."""

RUN_ID_ATTR = "mlflow_run_id"
FAILURE_ATTR = "failure_reason"
PRUNED_ATTR = "pruned_at_step"
REPLICATE_ATTR = "replicate"  # set on the replicate study's trials (optsweep.sweeper.replicates)
REPLICATE_OF_ATTR = "replicate_of"
SWEEPER_ATTR = "sweeper"  # {"machine", "pid"} of the sweeper that took the trial (and will tell its result)
WORKER_ATTR = "worker"  # {"machine", "pid"} of the process that trained it
