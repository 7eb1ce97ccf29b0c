"""``qsmnet-train``: train a network from the Hydra configs in ``qsmnet/conf/``.

Examples::

    qsmnet-train experiment=lpcnn_brain trainer.max_steps=2000
    qsmnet-train experiment=unet_brain init_from=unet trainer=gpu
    qsmnet-train -m model=lpcnn,modl optimizer.lr=1e-3,3e-4 debug=fast_dev_run
    qsmnet-train --cfg job          # print the composed config

All the work is in :func:`qsmnet.training.train`; this module only hands it the config.
"""

from __future__ import annotations

import hydra

from qsmnet import CONFIG_DIR as PACKAGE_CONFIG_DIR

#: The packaged Hydra configs (``qsmnet/conf``), independent of the working directory.
CONFIG_DIR = str(PACKAGE_CONFIG_DIR)


def one_line_per_message() -> None:
    """Let Lightning's messages reach Hydra's handlers (console and ``<run dir>/train.log``) once.

    Lightning gives its loggers their own stderr handlers, so under Hydra every message was
    printed twice (``INFO: ...`` and ``[time][lightning...][INFO] - ...``)."""
    import logging

    import lightning  # noqa: F401 - importing creates its loggers

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg) -> float | None:
    from qsmnet.training import train

    one_line_per_message()
    metrics = train(cfg)
    # Returned for Hydra sweepers that optimise a value (e.g. Optuna); plain runs ignore it.
    val = metrics.get("val/nrmse")
    return None if val is None else float(val)


if __name__ == "__main__":
    main()
