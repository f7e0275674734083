"""Train one recommender: `python train.py model=ease data=ml100k` (see README.md)."""

from recozoo.runtime import configure_process

configure_process()  # thread settings and warning filters, before anything imports torch

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from recozoo.train import run  # imported late so `--help` and tab completion stay fast

    return run(cfg)


if __name__ == "__main__":
    main()
