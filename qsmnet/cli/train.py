"""``qsmnet-train``: train a network from the Hydra configs in ``conf/``.

Examples::

    qsmnet-train experiment=lpcnn_brain trainer.max_steps=2000
    qsmnet-train experiment=unet_brain init_from=unet trainer=gpu
    qsmnet-train -m model=lpcnn,modl optimizer.lr=1e-3,3e-4 debug=fast_dev_run
    qsmnet-train --cfg job          # print the composed config

All the work is in :func:`qsmnet.training.train`; this module only hands it the config.
"""

from __future__ import annotations

from pathlib import Path

import hydra

#: The repository's ``conf/`` folder, found from this file (independent of the working directory).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg) -> float | None:
    from qsmnet.training import train

    metrics = train(cfg)
    # Returned for Hydra sweepers that optimise a value (e.g. Optuna); plain runs ignore it.
    val = metrics.get("val/nrmse")
    return None if val is None else float(val)


if __name__ == "__main__":
    main()
