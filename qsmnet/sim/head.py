"""A whole head at real size: brain (MNI152, :func:`qsmnet.sim.brain.brain_phantom` at scale 1),
CSF, skull, scalp, air sinuses, mastoids and the air around it, with white-matter anisotropy.

nilearn's MNI152 T1 template is skull-stripped (zero outside the brain), so the head is built
around the brain mask on the output grid, in the brain's own (deformed, rotated) template
coordinates: extra-cerebral CSF within 2.5 mm of the brain, a bone shell from 2.5 to 9 mm, scalp
(soft tissue) to 13 mm, plus a face and a neck (ellipsoids below the brain, soft tissue); air
cavities are ellipsoids at MNI coordinates (frontal, sphenoid, maxillary sinuses, mastoids),
kept outside the brain and CSF. Values, relative to water (= CSF = 0):

==================  =====  ===================  ===========================================
tissue              label  chi (ppm)            notes
==================  =====  ===================  ===========================================
brain                1-17  brain_phantom's
extra-cerebral CSF    10    0
soft tissue, scalp    18    -0.05 .. +0.05
bone (skull)          19    -2.5 .. -1.5
sinus air             20    +9.4                 air (+0.36) minus water (-9.05)
mastoid air           21    +9.4
haemorrhage           22    +0.5 .. +1.5         ``haemorrhages`` ellipsoids of 4-10 mm
outside (air)          0    +9.4
==================  =====  ===================  ===========================================

White matter is anisotropic: chi_tensor = chi I + aniso (v v^T - I/3) with aniso = delta_chi x
WM fraction (delta_chi 0.01-0.02 ppm, chi_par > chi_perp); the fibre direction v is the
eigenvector of the smallest eigenvalue of the structure tensor of the WM fraction (the direction
along which the WM map changes least: along WM blades and tracts). ``chi`` (the truth of the
benchmark) is the mean of the tensor. A microstructure (hollow-cylinder) frequency offset
``micro_ppm x WM x sin^2(theta)`` (theta the fibre-B0 angle) is returned as a local,
non-convolutional term, see :func:`microstructure_offset`, and so is ``offset``: a multi-scale
(0.8-2.5 mm) random texture of std ``offset_texture`` (0.002-0.004 ppm) in grey and white
matter, standing for the heterogeneity of exchange and microstructure shifts that no scalar chi
explains (its amplitude is set so that the residual's mid-band share, 0.1-0.3 cycles/mm, comes
near the real field's, docs/realism.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .brain import LABELS as BRAIN_LABELS
from .brain import NUCLEI, brain_phantom
from .textures import as_rng, smooth_random_field

HEAD_LABELS = {**BRAIN_LABELS, "soft_tissue": 18, "bone": 19, "sinus": 20, "mastoid": 21, "haemorrhage": 22}
#: Air relative to water (ppm): +0.36 - (-9.05).
CHI_AIR = 9.4
HEAD_CHI_RANGES = {
    "soft_tissue": (-0.05, 0.05),
    "bone": (-2.5, -1.5),
    "haemorrhage": (0.5, 1.5),
    "delta_chi": (0.015, 0.025),
    "micro": (-0.006, -0.002),
    "offset_texture": (0.002, 0.004),
}
#: Head-phantom settings whose realistic tier matches the real 3 T field's figures (issue 15),
#: fitted jointly on benchmark v2's two healthy heads with scripts/realism_components.py
#: (docs/realism.md): grey minus white matter chi 0.048 ppm in every head (a fixed contrast, not a
#: factor: the drawn contrast spans 0.02-0.08 ppm, 4x, between heads), deep grey nuclei and veins
#: x1.5, and the texture offset split into a fine (0.6-1 mm, 0.0044 ppm) and a mid-scale (3-5 mm,
#: 0.0025 ppm) part; acquire it at :data:`REAL_FIELD_SNR`.
REAL_FIELD_PROFILE = {"tissue_contrast": 0.048, "nuclei_scale": 1.5, "vein_scale": 1.5,
                      "offset_textures": (((0.6, 1.0), 0.0044), ((3.0, 5.0), 0.0025))}
#: SNR of the acquisition that goes with :data:`REAL_FIELD_PROFILE` (the noise keeps its share
#: of the residual above 0.3 cycles/mm next to the stronger field).
REAL_FIELD_SNR = 21.0
#: Air cavities: MNI centre (mm, x mirrored when the entry says so) and semi-axes (mm).
CAVITIES = {
    "frontal": ((0.0, 73.0, 2.0), (13.0, 5.0, 9.0), False),
    "sphenoid": ((0.0, 12.0, -36.0), (10.0, 9.0, 8.0), False),
    "maxillary": ((33.0, 38.0, -55.0), (11.0, 15.0, 14.0), True),
    "mastoid": ((48.0, -32.0, -42.0), (9.0, 11.0, 10.0), True),
}
#: Soft-tissue ellipsoids below the brain (MNI centre, semi-axes, mm).
FACE_NECK = (((0.0, 35.0, -45.0), (62.0, 50.0, 45.0)), ((0.0, -25.0, -90.0), (55.0, 55.0, 55.0)))
#: Per-tissue (M0, R2* 1/s) at 3 T for the signal; R2* of iron-rich tissue grows with chi.
TISSUE_SIGNAL = {
    "white_matter": (0.70, 21.0),
    "grey_matter": (0.85, 15.0),
    "csf": (1.0, 2.0),
    "vein": (0.6, 60.0),
    "soft_tissue": (0.6, 30.0),
    "bone": (0.05, 300.0),
    "sinus": (0.0, 0.0),
    "mastoid": (0.0, 0.0),
    "haemorrhage": (0.5, 80.0),
    "calcification": (0.3, 100.0),
    "microbleed": (0.3, 150.0),
    "deep_grey": (0.8, 20.0),
}
DEFAULT_HEAD_SHAPE = (192, 224, 192)


@dataclass
class HeadPhantom:
    """The result of :func:`head_phantom`; all (X, Y, Z) float32 unless said.

    Attributes:
        chi: whole-head mean susceptibility (ppm, water = 0; air +9.4 inside and outside).
        brain_chi: ``chi`` inside the brain mask, 0 elsewhere.
        mask: brain mask (0/1).
        head: head mask (0/1; everything that is not the outer air).
        labels: int16 tissue labels (:data:`HEAD_LABELS`, 0 outside).
        aniso: chi_par - chi_perp (ppm), 0 outside white matter.
        fibre: (3, X, Y, Z) unit fibre direction (voxel axes).
        wm: white-matter fraction in [0, 1].
        micro_ppm: amplitude of the hollow-cylinder offset (ppm).
        offset: (X, Y, Z) non-convolutional texture offset (ppm), in grey and white matter.
        m0, r2star: proton density (a.u.) and R2* (1/s) at 3 T.
        info: drawn values.
    """

    chi: torch.Tensor
    brain_chi: torch.Tensor
    mask: torch.Tensor
    head: torch.Tensor
    labels: torch.Tensor
    aniso: torch.Tensor
    fibre: torch.Tensor
    wm: torch.Tensor
    micro_ppm: float
    offset: torch.Tensor
    m0: torch.Tensor
    r2star: torch.Tensor
    info: dict = field(default_factory=dict)


def _ellipsoid(p: torch.Tensor, centre, semi) -> torch.Tensor:
    u = (p - torch.as_tensor(centre, dtype=p.dtype)) / torch.as_tensor(semi, dtype=p.dtype)
    return u.square().sum(-1) <= 1.0


def fibre_directions(
    wm: torch.Tensor, voxel_size: Sequence[float], sigma_grad_mm: float = 1.5, sigma_tensor_mm: float = 3.0
) -> torch.Tensor:
    """Unit fibre directions (3, X, Y, Z) from the structure tensor of the WM fraction ``wm``:
    the eigenvector of its smallest eigenvalue (computed where ``wm > 0.05``; (0, 0, 1) elsewhere)."""
    from scipy import ndimage

    vs = np.asarray(voxel_size, dtype=np.float64)
    w = ndimage.gaussian_filter(wm.numpy().astype(np.float32), sigma_grad_mm / vs)
    g = np.gradient(w, *vs)
    sel = wm.numpy() > 0.05
    comps = {}
    for a in range(3):
        for b in range(a, 3):
            comps[a, b] = ndimage.gaussian_filter(g[a] * g[b], sigma_tensor_mm / vs)[sel]
    t = np.empty((int(sel.sum()), 3, 3), dtype=np.float64)
    for (a, b), c in comps.items():
        t[:, a, b] = t[:, b, a] = c
    _, vec = np.linalg.eigh(t)
    out = np.zeros((3, *wm.shape), dtype=np.float32)
    out[2] = 1.0
    out[:, sel] = vec[:, :, 0].T
    return torch.from_numpy(out)


def microstructure_offset(
    wm: torch.Tensor, fibre: torch.Tensor, b0_dir: Sequence[float], micro_ppm: float
) -> torch.Tensor:
    """Hollow-cylinder (myelin water) frequency offset ``micro_ppm * wm * sin^2(theta)`` (ppm).

    In the hollow-cylinder fibre model (Wharton & Bowtell, PNAS 2012) the myelin and axonal water
    pools of a fibre at angle theta to B0 are shifted by terms proportional to sin^2(theta), a
    local offset not produced by any convolution of a scalar chi.
    """
    b = torch.as_tensor(b0_dir, dtype=torch.float32)
    b = b / b.norm()
    cos = (fibre * b[:, None, None, None]).sum(0)
    return float(micro_ppm) * wm * (1.0 - cos.square())


def head_phantom(
    shape: Sequence[int] = DEFAULT_HEAD_SHAPE,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    seed=None,
    *,
    haemorrhages: int = 0,
    delta_chi: float | None = None,
    micro_ppm: float | None = None,
    centre_mni: Sequence[float] | None = None,
    tissue_scale: float = 1.0,
    tissue_contrast: float | None = None,
    nuclei_scale: float = 1.0,
    vein_scale: float = 1.0,
    offset_textures: Sequence[tuple[Sequence[float], float]] | None = None,
    **brain_kwargs,
) -> HeadPhantom:
    """A random whole head at real size (see the module docstring).

    Args:
        shape: (X, Y, Z) grid; at 1 mm, 192 x 224 x 192 holds the whole head above the chin.
        voxel_size: mm per voxel.
        seed: int, SeedSequence or numpy Generator.
        haemorrhages: number of haemorrhages (ellipsoids of 4-10 mm semi-axes, +0.5..+1.5 ppm).
        delta_chi: WM anisotropy chi_par - chi_perp (ppm; default drawn in 0.015-0.025).
        micro_ppm: hollow-cylinder offset amplitude (ppm; default drawn in -0.006..-0.002).
        centre_mni: MNI point at the grid centre (default: the brain's centre, 12 mm lower so the
            skull base and sinuses are in).
        tissue_scale: factor on the brain's grey/white matter chi and its texture (everything
            but the nuclei, veins, calcifications and microbleeds; haemorrhages come after). 1
            keeps :func:`brain_phantom`'s values.
        tissue_contrast: instead of ``tissue_scale``: the grey minus white matter chi (ppm) the
            factor brings this head's drawn values to (they span 0.02-0.08 ppm between heads);
            :data:`REAL_FIELD_PROFILE` sets it.
        nuclei_scale: factor on the seven deep grey nuclei's chi (iron; default 1).
        vein_scale: factor on the veins' chi (their 0.4-1 mm radii lose contrast to partial
            volume at 1 mm; default 1).
        offset_textures: the non-convolutional texture offset as ``[(scales_mm, std_ppm), ...]``,
            one equal-weight texture per entry (default None: one 0.8-2.5 mm texture of std drawn
            in ``HEAD_CHI_RANGES["offset_texture"]``).
        **brain_kwargs: passed to :func:`brain_phantom` (e.g. ``deform_mm``, ``max_rot_deg``).
    """
    from scipy import ndimage

    rng = as_rng(seed)
    shape = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size)
    if centre_mni is None:
        from .brain import _template

        c = _template()[2]
        centre_mni = (float(c[0]), float(c[1]), float(c[2]) - 12.0)
    br = brain_phantom(shape, vs, rng, scale=1.0, centre_mni=centre_mni, **brain_kwargs)
    p = br.info.pop("template_mm")
    mask = br.mask
    brain = mask.numpy() > 0
    d_brain = ndimage.distance_transform_edt(~brain, sampling=vs).astype(np.float32)
    soft = d_brain <= 13.0
    for c, a in FACE_NECK:
        soft |= _ellipsoid(p, c, a).numpy()
    soft = ndimage.binary_closing(soft, iterations=2) | soft
    head = ndimage.binary_fill_holes(soft)
    d_out = ndimage.distance_transform_edt(head, sampling=vs).astype(np.float32)
    vals = {k: float(rng.uniform(*r)) for k, r in HEAD_CHI_RANGES.items()}
    if delta_chi is not None:
        vals["delta_chi"] = float(delta_chi)
    if micro_ppm is not None:
        vals["micro"] = float(micro_ppm)

    labels = br.labels.clone()
    chi = br.chi.clone()
    if tissue_contrast is not None:
        if float(tissue_scale) != 1.0:
            raise ValueError("give tissue_scale or tissue_contrast, not both")
        drawn = br.info["values_ppm"]
        tissue_scale = float(tissue_contrast) / (drawn["grey_matter"] - drawn["white_matter"])
    if float(tissue_scale) != 1.0:
        kept = ("caudate", "globus_pallidus", "putamen", "red_nucleus", "dentate", "substantia_nigra",
                "thalamus", "vein", "calcification", "microbleed")
        keep = torch.isin(labels, torch.tensor([BRAIN_LABELS[k] for k in kept], dtype=labels.dtype))
        chi = torch.where(keep, chi, chi * float(tissue_scale))
    nuclei = [BRAIN_LABELS[k] for k in NUCLEI]
    for ids, k in ((nuclei, nuclei_scale), ([BRAIN_LABELS["vein"]], vein_scale)):
        if float(k) != 1.0:
            chi = torch.where(torch.isin(labels, torch.tensor(ids, dtype=labels.dtype)), chi * float(k), chi)
    region = lambda sel: torch.from_numpy(np.ascontiguousarray(sel))  # noqa: E731
    csf = head & ~brain & (d_brain <= 2.5)
    bone = head & ~brain & (d_brain > 2.5) & (d_brain <= 9.0) & (d_out > 4.0)
    tissue = head & ~brain & ~csf & ~bone
    labels[region(csf)] = HEAD_LABELS["csf"]
    labels[region(tissue)] = HEAD_LABELS["soft_tissue"]
    labels[region(bone)] = HEAD_LABELS["bone"]
    chi[region(tissue)] = vals["soft_tissue"]
    chi[region(bone)] = vals["bone"]
    outside_brain = head & (d_brain > 2.5) & (d_out > 2.0)
    for name, (c, a, mirror) in CAVITIES.items():
        for side in (1.0, -1.0) if mirror else (1.0,):
            cc = np.array([side * c[0], c[1], c[2]]) + rng.normal(0, 2.0, size=3)
            aa = np.array(a) * rng.uniform(0.8, 1.2, size=3)
            sel = region(_ellipsoid(p, cc, aa).numpy() & outside_brain)
            labels[sel] = HEAD_LABELS["mastoid" if name == "mastoid" else "sinus"]
            chi[sel] = CHI_AIR
    chi[region(~head)] = CHI_AIR
    labels[region(~head)] = 0

    n_h = int(haemorrhages)
    if n_h:
        inside = np.argwhere(brain & (d_brain < 0.1) & (labels.numpy() != HEAD_LABELS["csf"]))
        coords = np.stack(
            np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, vs, strict=True)], indexing="ij"), -1
        )
        for _ in range(n_h):
            cvox = inside[int(rng.integers(len(inside)))] * np.asarray(vs)
            semi = rng.uniform(4.0, 10.0, size=3)
            sel = (((coords - cvox) / semi) ** 2).sum(-1) <= 1.0
            sel &= brain
            v = float(rng.uniform(*HEAD_CHI_RANGES["haemorrhage"]))
            chi[region(sel)] = v
            labels[region(sel)] = HEAD_LABELS["haemorrhage"]

    wm = br.info.pop("wm_weight") * (labels == HEAD_LABELS["white_matter"]).float()
    fibre = fibre_directions(wm, vs)
    aniso = vals["delta_chi"] * wm
    m0, r2s = _signal_maps(labels, chi)
    tissue_frac = (labels == HEAD_LABELS["white_matter"]) | (labels == HEAD_LABELS["grey_matter"])
    if offset_textures is None:
        tex = vals["offset_texture"] * smooth_random_field(shape, vs, rng, scales_mm=(0.8, 1.5, 2.5))
    else:
        tex = sum(float(std) * smooth_random_field(shape, vs, rng, tuple(sc), (1.0,) * len(sc))
                  for sc, std in offset_textures)
        vals["offset_texture"] = [[list(sc), float(std)] for sc, std in offset_textures]
    offset = tex * tissue_frac.float()
    brain_t = torch.from_numpy(brain.astype(np.float32))
    info = {
        **br.info,
        "phantom": "head",
        "head_values_ppm": vals,
        "haemorrhages": n_h,
        "centre_mni": list(centre_mni),
        "tissue_scale": float(tissue_scale),
        "tissue_contrast": None if tissue_contrast is None else float(tissue_contrast),
        "nuclei_scale": float(nuclei_scale),
        "vein_scale": float(vein_scale),
    }
    return HeadPhantom(
        chi=chi.contiguous(),
        brain_chi=(chi * brain_t).contiguous(),
        mask=brain_t,
        head=torch.from_numpy(head.astype(np.float32)),
        labels=labels,
        aniso=aniso,
        fibre=fibre,
        wm=wm,
        micro_ppm=vals["micro"],
        offset=offset,
        m0=m0,
        r2star=r2s,
        info=info,
    )


def _signal_maps(labels: torch.Tensor, chi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M0 and R2* (1/s, 3 T) per voxel from the labels (iron-rich nuclei: R2* = 20 + 150 chi)."""
    m0 = torch.zeros(labels.shape, dtype=torch.float32)
    r2 = torch.zeros(labels.shape, dtype=torch.float32)
    deep = [
        HEAD_LABELS[k]
        for k in (
            "caudate",
            "globus_pallidus",
            "putamen",
            "red_nucleus",
            "dentate",
            "substantia_nigra",
            "thalamus",
        )
    ]
    for name, (a, b) in TISSUE_SIGNAL.items():
        ids = deep if name == "deep_grey" else [HEAD_LABELS[name]]
        for i in ids:
            sel = labels == i
            m0[sel] = a
            r2[sel] = b + (150.0 * chi[sel].clamp_min(0) if name == "deep_grey" else 0.0)
    return m0, r2
