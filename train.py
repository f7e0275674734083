"""Train one recommender: `python train.py model=ease data=ml100k` (see README.md)."""

import warnings

import hydra
from omegaconf import DictConfig

# conf/hydra/launcher/{joblib,submitit_slurm}.yaml replace the plugins' defaults under the same
# names; Hydra validates them against the plugins' schemas (wanted) and warns that it does so
warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from recozoo.train import run  # imported late so `--help` and tab completion stay fast

    return run(cfg)


if __name__ == "__main__":
    main()
