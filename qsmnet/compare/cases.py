"""Where comparison cases come from: the fixed benchmark set (cached), a NIfTI folder, or the demo phantom."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from qsmnet.errors import QSMNetError

from .core import Case, as_case

#: ``cases=`` value that selects the fixed simulated benchmark set.
BENCHMARK = "benchmark"


def benchmark_cache_dir() -> Path:
    """Folder of the cached benchmark set: ``$QSMNET_CACHE/benchmark``, else
    ``$XDG_CACHE_HOME/qsmnet/benchmark``, else ``~/.cache/qsmnet/benchmark``."""
    root = os.environ.get("QSMNET_CACHE")
    if root:
        return Path(root) / "benchmark"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "qsmnet" / "benchmark"


def ensure_benchmark(root: str | os.PathLike | None = None, quiet: bool = False) -> Path:
    """The benchmark folder, generated with :func:`qsmnet.sim.benchmark.make_benchmark` when its
    ``cases.json`` is missing (a partial earlier attempt is overwritten). Returns the folder."""
    root = Path(root) if root else benchmark_cache_dir()
    if not (root / "cases.json").exists():
        from qsmnet.sim.benchmark import make_benchmark

        if not quiet:
            print(f"qsmnet: generating the benchmark set in {root} (once; about a minute)", file=sys.stderr)
        make_benchmark(root, force=True, progress=None if quiet else
                       (lambda msg: print(f"qsmnet: {msg}", file=sys.stderr)))
    return root


def load_cases(
    source: str | os.PathLike,
    names: Sequence[str] | None = None,
    benchmark_dir: str | os.PathLike | None = None,
    field_units: str = "ppm",
    b0: float | None = None,
    te: float | None = None,
    quiet: bool = False,
) -> list[Case]:
    """Cases for a comparison.

    Args:
        source: ``"benchmark"`` (the fixed simulated set, generated into ``benchmark_dir`` or
            :func:`benchmark_cache_dir` on first use), or a folder of field/mask[/chi/labels]
            NIfTIs in any layout :class:`qsmnet.data.NiftiFolderDataset` accepts.
        names: only these cases (benchmark names, or folder case names), in this order.
        benchmark_dir: where the benchmark set lives.
        field_units, b0, te: units of folder fields (``ppm``, ``hz`` with ``b0``, ``rad`` with
            ``b0`` and ``te``).
        quiet: no messages on stderr.

    Raises:
        QSMNetError: a missing folder, no cases, or unknown case names.
    """
    names = None if names is None else [str(n) for n in names]
    if str(source) == BENCHMARK:
        from qsmnet.data import load_benchmark

        return [as_case(item) for item in load_benchmark(ensure_benchmark(benchmark_dir, quiet), names)]
    from qsmnet.data import NiftiFolderDataset

    if not Path(source).is_dir():
        raise QSMNetError(f"cases={source}: not 'benchmark' and not an existing folder of NIfTIs")
    ds = NiftiFolderDataset(source, field_units=field_units, b0=b0, te=te)
    idx = list(range(len(ds)))
    if names is not None:
        missing = [n for n in names if n not in ds.names]
        if missing:
            raise QSMNetError(f"case(s) {missing} not found under {source}; found {ds.names}")
        idx = [ds.names.index(n) for n in names]
    return [as_case(ds[i], i) for i in idx]


def demo_case(size: int = 64, voxel_mm: float = 1.5, seed: int = 7, noise_ppm: float = 0.002) -> Case:
    """The embedded demo input: a seeded brain phantom on a ``size``^3 grid of ``voxel_mm``
    isotropic voxels (the brain fitted to the field of view), axial B0, and its simulated local
    field with Gaussian noise of ``noise_ppm`` std (ppm). Labels are the qsm-ci ids."""
    import numpy as np

    from qsmnet.physics import Geometry
    from qsmnet.sim import simulate
    from qsmnet.sim.brain import brain_phantom

    if size < 16:
        raise QSMNetError(f"demo size {size} is too small; use at least 16")
    shape = (size, size, size)
    geom = Geometry(shape, (voxel_mm,) * 3, (0.0, 0.0, 1.0))
    ph = brain_phantom(shape, geom.voxel_size, np.random.default_rng([seed, 0]))
    sim = simulate(ph.chi, ph.mask, geom, np.random.default_rng([seed, 1]), noise_std=noise_ppm)
    return Case(f"brain{size}", sim.field.float(), ph.mask > 0, geom, ph.chi.float(), ph.labels.long())


def write_case_nifti(case: Case, out_dir: str | os.PathLike, force: bool = False) -> dict:
    """Write a case's field, mask, chi and labels as NIfTIs (affine from its geometry) into
    ``out_dir``, so it can be fed to ``qsmnet predict`` or ``qsmnet compare cases=<folder>``."""
    from qsmnet.sim.benchmark import write_case

    arrays = {"field": case.field, "mask": case.mask.float(), "chi": case.chi,
              "labels": None if case.labels is None else case.labels.float()}
    return write_case(out_dir, arrays, case.geometry, {"Case": case.name}, force=force)
