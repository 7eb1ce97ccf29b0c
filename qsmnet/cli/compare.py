"""``qsmnet compare``: methods x cases -> metric tables (CSV, Markdown) and PNG figures.

The options are the Hydra config ``qsmnet/conf/compare.yaml``, overridden by ``key=value`` arguments::

    qsmnet compare cases=benchmark methods=[tkd,tikhonov,tv] out_dir=compare-out
    qsmnet compare cases=/data/cases 'methods=[default,{name:tv_strong,method:tv,lam:1e-3}]'
    qsmnet compare +params.tv.iterations=100 force=true
    qsmnet compare --cfg            # print the composed config
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qsmnet import CONFIG_DIR  # the packaged Hydra configs (qsmnet/conf)

HELP = "compare methods (networks, solvers) on the benchmark set or a NIfTI folder: tables and figures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of qsmnet/conf/compare.yaml, e.g. methods=[tkd,tv] cases=benchmark "
        "out_dir=compare-out "
        "case_names=[brain1_axial_1mm_noise-low] device=cpu force=true",
    )
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    parser.add_argument("--force", action="store_true", help="same as force=true")
    parser.epilog = f"config: {CONFIG_DIR / 'compare.yaml'}"


def compose_config(overrides: list[str] | None = None, config_dir: str | Path | None = None):
    """The ``compare`` config composed with Hydra from ``config_dir`` (default: the packaged ``qsmnet/conf``)
    and ``key=value`` overrides.

    Raises:
        QSMNetError: missing config folder, or an override Hydra cannot parse or apply.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from qsmnet.errors import QSMNetError

    cdir = Path(config_dir or CONFIG_DIR)
    if not (cdir / "compare.yaml").is_file():
        raise QSMNetError(f"config {cdir / 'compare.yaml'} not found (a broken qsmnet install: reinstall it)")
    try:
        with initialize_config_dir(config_dir=str(cdir.resolve()), version_base="1.3", job_name="compare"):
            return compose(config_name="compare", overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        raise QSMNetError(" ".join(str(e).split())) from None


def run(args) -> int:
    import sys

    from omegaconf import OmegaConf

    overrides = list(args.overrides) + (["force=true"] if args.force else [])
    cfg = compose_config(overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0

    from qsmnet.compare import load_cases, run_comparison, summary_markdown
    from qsmnet.compare.core import check_out_dir
    from qsmnet.compare.methods import bind_method, normalise_methods

    # Fail fast, before any case is generated or loaded: methods, parameters, output folder.
    specs = normalise_methods(cfg.methods, cfg.params)
    for label, spec in specs.items():
        bind_method(label, spec)
    check_out_dir(cfg.out_dir, cfg.force)
    cases = load_cases(cfg.cases, names=cfg.case_names, benchmark_dir=cfg.benchmark_dir,
                       field_units=cfg.field_units, b0=cfg.b0, te=cfg.te, quiet=not cfg.progress)
    figure_cases = cfg.figure_cases
    if figure_cases is not None and not isinstance(figure_cases, str):
        figure_cases = list(figure_cases)
    res = run_comparison(specs, cases, out_dir=cfg.out_dir, device=cfg.device, figures=cfg.figures,
                         figure_cases=figure_cases, progress=cfg.progress, force=True)
    Path(cfg.out_dir, "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    print(summary_markdown(res), end="")
    print(f"wrote {len(res.rows)} results to {cfg.out_dir}/ (results.md, metrics.csv, summary.csv, roi.csv"
          + (", PNG figures" if cfg.figures else "") + ")", file=sys.stderr)
    return 0
