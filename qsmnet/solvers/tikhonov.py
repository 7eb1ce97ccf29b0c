"""Closed-form L2-regularised inversion (Tikhonov; the literature's CFL2, Bilgic et al. 2014).

    chi = argmin ||A chi - f||^2 + lam ||R chi||^2  =  F^-1[ D / (D^2 + lam |R(k)|^2) F f ]

with R the identity (``|R|^2 = 1``) or the periodic gradient (``|R|^2`` = the Laplacian symbol of
:func:`qsmnet.physics.linalg.gradient_kernel`, in 1/mm^2, plus an optional identity ``floor``). One
FFT pair; the k = 0 mean is left at zero. The closed form fits the field on the whole (periodic)
grid, zero outside the mask, so a brain that fills its grid couples to its own periodic copies: the
solver zero-pads each axis to 1.5x the mask's extent first (``pad``; docs/regularisation.md).

The pure gradient penalty vanishes at low k, where the filter's gain near the magic-angle cone
reaches ``1 / (2 sqrt(lam) |k|)``: the lowest frequencies of the field (background remnants on real
data) pass almost unregularised, and which of them the grid samples decides part of the answer (10
voxels more padding along B0 moved a head's nRMSE by 9.5 points). ``floor`` > 0 bounds that gain by
``1 / (2 sqrt(lam floor))``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from qsmnet.physics import Geometry

from . import select
from .base import Problem, finish, prepare, safe_reciprocal, sub_problem
from .lam import PILOT_LAMBDA, as_lambda, balanced_lambda, lambda_summary
from .registry import register
from .strong import fit_on_support, strong_support

#: Tikhonov's sweep for the choosers: lambda 1e-3 .. 3 (mm^2), 25 weights, all in k-space.
SWEEP = (1e-3, 3.0, 25)

_REGULARISERS = ("gradient", "identity")
#: default zero padding: each axis at least (1 + PAD) x the mask's extent along it.
PAD = 0.5
#: identity term added to the gradient regulariser's symbol (1/mm^2): ||grad chi||^2 + FLOOR ||chi||^2,
#: i.e. the gradient penalty above ~sqrt(FLOOR) / (2 pi) cycles/mm and the identity below. 0 (the pure
#: gradient) until ``lam="auto"`` is recalibrated for a floor: 0.1 (0.05 cycles/mm) removes the grid
#: dependence and lowers the best nRMSE on benchmark v2, but its best lambda is 1.5-10x below auto's
#: (docs/regularisation.md, "Tikhonov's low frequencies").
FLOOR = 0.0
#: Tikhonov's ``"model"`` weight (gradient regulariser) under model error, in mm^2:
#: lambda = PER_RHO x min(rho, RHO_CAP) x sqrt(largest voxel / smallest voxel), rho the cone power.
#: On 21 realistic heads and brains (benchmark v2, 160^3 brains, a 0.6 mm crop, a pipeline local
#: field; rho 0.075-0.86) it lands within 0.45-2.2x the per-case best weight and 3.6 % of its nRMSE
#: (the former frequency-balance floor: 0.32-3.2x, up to +6.8 %); docs/regularisation.md.
PER_RHO = 0.3
#: Above RHO_CAP the cone power is mostly error localised at the mask edge (background removal) and
#: echo-fit noise, which a global weight should not follow: a pipeline field of a 208^3 head had rho
#: 0.86 and its best weight 0.066, 0.3 x rho would be 3.6x that.
RHO_CAP = 0.4
#: identity-regulariser lambda per gradient-regulariser lambda (|grad|^2 ~ 1/mm^2 at mid frequencies).
_IDENTITY_PER_GRADIENT = 1.0
#: The Wiener balance (``lam="wiener"``, behind ``"auto"`` for the gradient regulariser under model
#: error): the shell of |k| it reads, as fractions of the finest axis' Nyquist frequency (0.06-0.12
#: cycles/mm at 1 mm and at 1 x 1 x 2 mm), and the |D(k)| bounds of its cone (the field there is
#: error) and of its far region (the field there is mostly the dipole field of chi). Measured on 67
#: whole heads with a real background removal, benchmark v2's and 58 training heads'
#: (docs/regularisation.md, session 27).
WIENER_SHELL = (0.12, 0.24)
WIENER_CONE = 0.05
WIENER_FAR = 0.3


def _penalty(p: Problem, regulariser: str, floor: float) -> torch.Tensor:
    """``|R(k)|^2`` on ``p``'s rfft grid: the Laplacian symbol plus ``floor``, or ones."""
    return p.laplacian() + floor if regulariser == "gradient" else torch.ones_like(p.op.kernel)


def _filter(p: Problem, lam: torch.Tensor, regulariser: str, floor: float) -> torch.Tensor:
    d = p.op.kernel
    return d * safe_reciprocal(d * d + lam * _penalty(p, regulariser, floor))


def auto_lambda(p: Problem, regulariser: str = "gradient") -> torch.Tensor:
    """Per-sample lambda (B, 1, 1, 1, 1) from the field's noise (see :mod:`qsmnet.solvers.lam`)."""
    chi0 = pilot(p)
    lam = balanced_lambda(p, chi0, "l2")
    return lam if regulariser == "gradient" else lam * _IDENTITY_PER_GRADIENT


def kspace_sweep(p: Problem, regulariser: str = "gradient", grid=SWEEP, floor: float = FLOOR) -> select.Sweep:
    """The closed-form solutions over a lambda grid, evaluated in k-space (one rfftn in all).

    Misfit ``||D chi_hat - f_hat|| / ||f_hat||`` and penalty ``||R chi_hat||^2`` by Parseval (on
    the whole grid, not the mask), cone ratio from ``|chi_hat|``. Batch of one.
    """
    d = p.op.kernel[0, 0]
    r2 = _penalty(p, regulariser, floor)[0, 0]
    f_hat = torch.fft.rfftn(p.field[0, 0])
    fn = f_hat.abs().square().sum().sqrt().clamp_min(1e-30)
    masks = select.frequency_masks(p)
    rec = select.Sweep()
    for lam in select.log_grid(*grid):
        chi_hat = f_hat * (d * safe_reciprocal(d * d + lam * r2))
        mis = float((d * chi_hat - f_hat).abs().square().sum().sqrt() / fn)
        pen = float((r2 * chi_hat.abs().square()).sum())
        rec.add(lam, mis, pen, select.band_amplitudes(chi_hat, masks, spectrum=True))
    return rec


def model_weight(q: Problem, regulariser: str, rho: float | None = None) -> float:
    """The ``"model"`` weight of one sample (batch of one); ``rho``: its cone power, if known.

    Without model error (cone power ``rho`` <= :data:`~qsmnet.solvers.select.RHO0`, the white-noise
    benchmark) the noise balance times the model-error factor. With it, for the gradient
    regulariser, :data:`PER_RHO` x min(``rho``, :data:`RHO_CAP`) x sqrt(largest / smallest voxel
    size) (mm^2), and the noise balance is not computed: on whole heads and brains it is unreliable
    (3-29x below the best weight on benchmark v2's axial heads) and the best weight grows with the
    model error's share of the field (docs/regularisation.md, "Tikhonov's weight follows the model
    error"). The identity regulariser keeps the earlier rule there: at least the frequency-balance
    weight of a k-space sweep.
    """
    rho = select.cone_power(q) if rho is None else rho
    if rho > select.RHO0 and regulariser == "gradient":
        vox = q.geometries[0].voxel_size
        return PER_RHO * min(rho, RHO_CAP) * math.sqrt(max(vox) / min(vox))
    lam = float(auto_lambda(q, regulariser).flatten()[0]) * select.model_error_factor(q, rho)
    if rho <= select.RHO0:
        return lam
    return max(lam, select.choose(kspace_sweep(q, regulariser), "freq"))


def wiener_weight(q: Problem, regulariser: str = "gradient", floor: float = FLOOR,
                  band: tuple[float, float] | None = None) -> float | None:
    """The ``"wiener"`` weight of one sample (batch of one; mm^2 for the gradient regulariser), or None
    where the shell holds no cone or no far frequency (a tiny grid) or no dipole signal.

    ``band``: the shell's |k| bounds in cycles/mm (default :data:`WIENER_SHELL` x the finest axis'
    Nyquist frequency).

    In the shell :data:`WIENER_SHELL` of |k|, the field's mean power on the magic-angle cone
    (``|D| <`` :data:`WIENER_CONE`), where a dipole field has none, estimates the error's power
    ``S_e``; far from the cone (``|D| >`` :data:`WIENER_FAR`) ``S_chi = mean((|F f|^2 - S_e) / D^2)``
    estimates chi's. The weight ``S_e / (S_chi mean |R(k)|^2)`` is the one at which the closed form
    ``D / (D^2 + lam |R|^2)`` is the Wiener filter of that shell. It reads the error where the field
    has it, so it follows both the error's amplitude and the signal's (a haematoma's strong dipole
    lowers it) without a fitted constant; on white noise alone (``rho <= RHO0``) it is too high at
    low noise, and ``"auto"`` keeps the noise balance there.
    """
    d = q.op.kernel[0, 0]
    power = torch.fft.rfftn(q.field[0, 0]).abs().square()
    k, _ = select.spatial_frequency(q)
    if band is None:
        nyq = max(0.5 / v for v in q.geometries[0].voxel_size)
        band = (WIENER_SHELL[0] * nyq, WIENER_SHELL[1] * nyq)
    shell = (k >= band[0]) & (k < band[1])
    cone, far = shell & (d.abs() < WIENER_CONE), shell & (d.abs() > WIENER_FAR)
    if not bool(cone.any()) or not bool(far.any()):
        return None
    s_e = power[cone].mean()
    s_chi = ((power[far] - s_e).clamp_min(0) / d[far].square()).mean()
    r2 = _penalty(q, regulariser, floor)[0, 0][far].mean()
    if not float(s_chi) > 0:
        return None
    return float(s_e / (s_chi * r2))


def pilot(p: Problem) -> torch.Tensor:
    """Gradient-regularised Tikhonov chi at :data:`~qsmnet.solvers.lam.PILOT_LAMBDA` (unmasked)."""
    return p.op.filter(p.field, _filter(p, as_lambda(PILOT_LAMBDA, p), "gradient", 0.0))


def padding(mask: torch.Tensor, pad: float) -> tuple[int, int, int]:
    """Voxels of zero padding per axis (added at the end) that make each axis at least ``1 + pad``
    times the extent of ``mask`` (B, 1, X, Y, Z; any sample) along it; zeros where it already is."""
    inside = mask.detach().flatten(0, 1).any(0)
    out = []
    for d, n in enumerate(inside.shape):
        line = inside.any(dim=tuple(a for a in range(3) if a != d)).nonzero()
        ext = int(line[-1] - line[0] + 1) if len(line) else 0
        out.append(max(0, math.ceil((1 + pad) * ext) - n))
    return tuple(out)


def pad_problem(p: Problem, pads: tuple[int, int, int]) -> Problem:
    """``p`` on a grid grown by ``pads`` voxels at the end of each axis (field and mask zero there)."""
    widths = (0, pads[2], 0, pads[1], 0, pads[0])
    f = torch.nn.functional.pad(p.field, widths)
    geoms = [Geometry(tuple(f.shape[-3:]), g.voxel_size, g.b0_dir) for g in p.geometries]
    return prepare(f, torch.nn.functional.pad(p.mask, widths), geoms)


@register("tikhonov")
def tikhonov(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    lam: float | str = "auto",
    regulariser: str = "gradient",
    pad: float = PAD,
    floor: float = FLOOR,
    strong: float | None = None,
) -> torch.Tensor:
    """Closed-form Tikhonov (CFL2) dipole inversion.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (0), ``residual`` and the ``lambda`` used.
        lam: regularisation weight (mm^2 for the gradient regulariser), or a chooser
            (:mod:`qsmnet.solvers.select`): ``"auto"`` (default): for the gradient regulariser on a
            field with model error (cone power above :data:`~qsmnet.solvers.select.RHO0`), the
            Wiener balance (:func:`wiener_weight`, ``"wiener"``), otherwise ``"model"``;
            ``"model"``: the noise balance times the model-error factor, and where the field shows
            model error a weight proportional to its cone power (:func:`model_weight`; the default
            until session 27, the guard's reference); ``"wiener"``, ``"noise"``, ``"lcurve"``,
            ``"freq"`` (a k-space sweep of :data:`SWEEP`, one rfftn). ``info["lambda_method"]`` says
            which one ran. On whole heads the best weight is 0.02-0.22 (``docs/regularisation.md``).
        regulariser: ``"gradient"`` (default) or ``"identity"``.
        pad: zero padding before the solve (and the choice of ``lam``): each axis grows to at least
            ``1 + pad`` times the mask's extent along it; 0 solves on the circular grid as given.
            At the automatic weight 0.5 lowered the nRMSE on 9 of 11 realistic heads and brains
            (benchmark v2 mean 71.1 -> 66.5 %, a 0.86x0.86x2 mm brain 105 -> 81 %) and on all 16
            small benchmark cases (44.9 -> 39.9 %; docs/regularisation.md).
        floor: identity weight added to the gradient regulariser's symbol (1/mm^2; ignored by the
            identity regulariser, default :data:`FLOOR` = 0, the pure gradient): bounds the gain at
            low k near the cone, so the answer no longer depends on how many low frequencies the
            (padded) grid samples (0.1: nRMSE spread over +0..10 voxels of padding 0.2 instead of
            up to 9.5 points on a v2 head).
        strong: strong sources first (:mod:`qsmnet.solvers.strong`): where the closed form exceeds
            this magnitude (ppm) in a large enough region (a haematoma), chi there is fitted to the
            field on that support alone, and the closed form inverts the rest of the field. None
            (default): the closed form alone. Fields without such a region give the closed form.

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    if regulariser not in _REGULARISERS:
        raise ValueError(f"regulariser must be one of {_REGULARISERS}, got {regulariser!r}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    p = prepare(field, mask, geometry)
    pads = padding(p.mask, float(pad))
    q = pad_problem(p, pads) if any(pads) else p
    method = select.resolve(lam, accepts=("wiener",))
    if isinstance(lam, str) and lam.lower() == "auto":
        method = "auto"
    chooser = method
    rec = None
    if method == "fixed":
        lam_t = as_lambda(lam, q)
    elif method == "noise":
        lam_t = auto_lambda(q, regulariser)
    elif method in ("model", "wiener", "auto"):
        lam_t, method = _weights(q, method, regulariser, floor)
    else:
        lams, recs = [], []
        for b in range(q.field.shape[0]):
            recs.append(kspace_sweep(sub_problem(q, b), regulariser, floor=floor))
            lams.append(select.choose(recs[-1], method))
        lam_t = torch.tensor(lams, device=q.device).view(-1, 1, 1, 1, 1)
        rec = recs[0] if len(recs) == 1 else None
    filt = _filter(q, lam_t, regulariser, floor)
    chi = q.op.filter(q.field, filt)
    extra, iterations = {}, 0
    if strong is not None:
        rechoose = None
        if chooser in ("wiener", "auto"):
            # the closed form inverts the field less the strong sources' own: its balance is read there
            def rechoose(rest: Problem) -> torch.Tensor:
                return _weights(rest, chooser, regulariser, floor)[0]

        chi, voxels, iterations, lam_rest = _strong_first(q, chi, filt, float(strong), rechoose, regulariser,
                                                          floor)
        extra["strong_voxels"] = voxels
        if lam_rest is not None:
            extra["strong_lambda_detect"] = lambda_summary(lam_t)
            lam_t = lam_rest
    chi = chi[..., : p.field.shape[-3], : p.field.shape[-2], : p.field.shape[-1]]
    select.report(info, lambda_summary(lam_t), method, rec)
    return finish(p, chi, info, iterations, padding=list(pads), **extra)


def _weights(q: Problem, method: str, regulariser: str, floor: float) -> tuple[torch.Tensor, str]:
    """Per-sample weights (B, 1, 1, 1, 1) of ``"model"``, ``"wiener"`` or ``"auto"``, and the chooser(s)
    that ran (``"wiener/model"`` where a batch mixes them)."""
    picks = [_weight(sub_problem(q, b), method, regulariser, floor) for b in range(q.field.shape[0])]
    lam = torch.tensor([w for w, _ in picks], device=q.device, dtype=q.field.dtype).view(-1, 1, 1, 1, 1)
    return lam, "/".join(sorted({m for _, m in picks}))


def _weight(q: Problem, method: str, regulariser: str, floor: float) -> tuple[float, str]:
    """(weight, chooser used) of one sample for ``"model"``, ``"wiener"`` or ``"auto"``.

    ``"auto"`` is the Wiener balance for the gradient regulariser where the field carries model
    error (cone power ``rho`` > :data:`~qsmnet.solvers.select.RHO0`), else the ``"model"`` rule (on
    white noise alone, the small benchmark, that is the noise balance). ``"wiener"`` falls back to
    ``"model"`` only where the shell is empty (a tiny grid).
    """
    rho = None
    if method == "auto":
        rho = select.cone_power(q)
        method = "wiener" if regulariser == "gradient" and rho > select.RHO0 else "model"
    if method == "wiener":
        w = wiener_weight(q, regulariser, floor)
        if w is not None:
            return w, "wiener"
    return model_weight(q, regulariser, rho), "model"


def _strong_first(q: Problem, chi: torch.Tensor, filt: torch.Tensor, threshold: float, rechoose=None,
                  regulariser: str = "gradient", floor: float = FLOOR):
    """(chi, support voxels, CG iterations, weight of the rest or None): ``chi`` with the strong sources
    fitted on their support and the rest of the field re-inverted (:mod:`qsmnet.solvers.strong`).

    The rest is inverted by the same filter, or, given ``rechoose(rest problem) -> weights``, at the
    weight chosen on the rest of the field (a data-driven chooser: without the haematoma's dipole the
    rest reads like a healthy head's field, whose best weight is higher).
    """
    support = strong_support(chi * q.mask, q.mask, [math.prod(g.voxel_size) for g in q.geometries], threshold)
    voxels = int(support.sum())
    if voxels == 0:
        return chi, 0, 0, None
    xs, it = fit_on_support(q.op, q.field, q.mask, support, x0=chi)
    residual = q.field - q.mask * q.op.A(xs)
    lam_rest = None
    if rechoose is not None:
        lam_rest = rechoose(dataclasses.replace(q, field=residual))
        filt = _filter(q, lam_rest, regulariser, floor)
    rest = q.op.filter(residual, filt)
    return xs + (1 - support) * rest, voxels, it, lam_rest
