"""Train one LLaMA with one optimizer, as configured by Hydra (conf/), and return its validation loss.

    python run.py experiment=quickstart
    python run.py optimizer=scale model=llama_350m
    python run.py -m sweep=scale_lr_momentum experiment=quickstart     # Optuna sweep
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parent
# Outputs go to <repo>/outputs wherever run.py is started from (PROJECT_ROOT=/elsewhere moves them there);
# the code, its sweeps and its git commit are always this checkout's.
os.environ.setdefault("PROJECT_ROOT", str(REPO))
os.environ["OPTSWEEP_REPO"] = str(REPO)

from optsweep.config import register_resolvers
from optsweep.errors import explain
from optsweep.logs import one_line_per_event
from optsweep.preflight import check_multirun, check_values, register_schema
from optsweep.services import check_run_services, shorten_mlflow_retries

register_resolvers()
register_schema()
shorten_mlflow_retries()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    print(OmegaConf.to_yaml(cfg, resolve=True))  # imports torch only where a GPU driver is (the precision)
    check_values(cfg)  # a bad number, before torch, Lightning and MLflow are imported
    check_run_services(cfg)  # seconds, not MLflow's minutes of retries, for a server that is not there

    from optsweep.training.callbacks import Interrupted
    from optsweep.training.train import train

    one_line_per_event()  # Lightning is imported now, and nothing has logged yet

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        check_multirun(cfg, hydra_cfg)
    # A bad input raises (a sweep's sweeper records it and goes on); alone, `cli` prints it in one sentence.
    try:
        return train(cfg)
    except Interrupted as interrupted:  # SIGTERM / Ctrl-C: checkpoint saved, run marked KILLED
        print(f"\n{interrupted}", file=sys.stderr)
        sys.exit(128 + interrupted.signum)


def cli() -> None:
    """``main`` with every failure as one line at the end of stderr: a bad input (a value, a config group
    option, a key, an override, a checkpoint, the data) exits with status 2, anything else with 1. Hydra's
    own report (a trimmed traceback, exit 1) is bypassed by letting it raise; HYDRA_FULL_ERROR=1 keeps the
    traceback. The user's choice travels to relaunched ranks in OPTSWEEP_FULL_ERROR."""
    os.environ.setdefault("OPTSWEEP_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", ""))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as error:
        if os.environ["OPTSWEEP_FULL_ERROR"] == "1":
            raise
        sentence, status = explain(error)
        print(f"\nerror: {sentence}", file=sys.stderr)
        sys.exit(status)


if __name__ == "__main__":
    cli()
