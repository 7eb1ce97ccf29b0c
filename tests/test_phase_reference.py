"""qsmnet.phase's echo fit + V-SHARP against an independent chain (scripts/reference_chain.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from qsmnet.phase import fit_field, vsharp
from qsmnet.physics import hz_to_ppm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from reference_chain import reference_local_field  # noqa: E402
from test_phase import _bfr_case, _grid, _nrmse  # noqa: E402


def test_local_field_no_worse_than_the_reference_chain(rng):
    total, local, mask, g = _bfr_case()
    # a tenth of the test field: per-echo spatial unwrapping (the reference) needs neighbour phase
    # differences below pi at the last echo (the full field has up to 23 rad next to the air sphere),
    # plus a linear (harmonic) background of 0.06 ppm per voxel that wraps several times
    total, local = total / 10 + 0.06 * torch.tensor(_grid(mask.shape)[0], dtype=torch.float32), local / 10
    te = np.array([0.004, 0.009, 0.014, 0.019])
    b0, radii = 3.0, (6.0, 4.0, 2.0)
    hz = total.numpy().astype(np.float64) * 42.577478 * b0
    x = _grid(mask.shape)
    phi0 = 0.8 + 0.05 * x[0] - 0.03 * x[1]  # smooth receiver offset
    inside = np.where(mask, 1.0, 0.03)
    mag = (
        inside * np.exp(-20.0 * te)[:, None, None, None] * (1 + 0.01 * rng.standard_normal((4, *mask.shape)))
    )
    phase = np.angle(np.exp(1j * (2 * np.pi * hz * te[:, None, None, None] + phi0)))
    phase = np.where(mask, phase, rng.uniform(-np.pi, np.pi, phase.shape))
    assert np.ptp((2 * np.pi * hz * te[-1] + phi0)[mask]) > 4 * np.pi  # it does wrap
    f, _, _ = fit_field(
        torch.tensor(phase, dtype=torch.float32), torch.tensor(mag, dtype=torch.float32), te, mask
    )
    ours, er = vsharp(hz_to_ppm(f, b0), mask, g.voxel_size, radii_mm=radii)
    ref, er_ref = reference_local_field(phase, mag, te, b0, g.voxel_size, mask, radii_mm=radii)
    common = er.numpy() & er_ref
    assert common.sum() > 0.5 * mask.sum()
    e_ref = _nrmse(ref, local, common)
    e_ours = _nrmse(ours.numpy(), local, common)
    assert e_ref < 0.8  # the reference chain works (V-SHARP on the exact total field: 0.76)
    assert e_ours <= 1.02 * e_ref + 0.005
    # Laplacian unwrapping: exact up to a harmonic function, which V-SHARP removes
    lap, er_lap = reference_local_field(phase, mag, te, b0, g.voxel_size, mask, unwrap="laplacian",
                                        radii_mm=radii)  # fmt: skip
    both = er_lap & er_ref
    assert both.sum() > 0.5 * mask.sum()
    assert _nrmse(lap, local, both) < 1.05 * _nrmse(ref, local, both) + 0.01
