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

# Outputs go to <repo>/outputs wherever run.py is started from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from optsweep.config import register_resolvers  # noqa: E402
from optsweep.errors import UserError  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from optsweep.training.checkpointing import Interrupted
    from optsweep.training.train import train

    print(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        return train(cfg)
    except UserError as error:
        # In a sweep the sweeper records the failure and goes on; alone, one sentence and exit status 2.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"\nerror: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as interrupted:  # SIGTERM / Ctrl-C: checkpoint saved, run marked KILLED
        print(f"\n{interrupted}", file=sys.stderr)
        sys.exit(128 + interrupted.signum)


if __name__ == "__main__":
    main()
