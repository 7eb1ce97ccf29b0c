"""Brain-like phantoms from the MNI152 2009a template that ships inside nilearn (no download).

Tissue fractions come from the template's grey- and white-matter probability maps (CSF is the rest
of the brain mask, which is the smoothed, hole-filled GM+WM), resampled onto any grid through a
random smooth deformation and a random affine, in one ``grid_sample`` pass. No deep-grey atlas
ships with nilearn, so the nuclei are smooth ellipsoids at their MNI coordinates (both
hemispheres), perturbed per sample. Each sample draws its own tissue values:

==================  =====  ==================  ===================================================
tissue              label  chi (ppm)           notes
==================  =====  ==================  ===================================================
white matter          8    -0.045 .. -0.015    about -0.03
cortex (grey)         9    +0.005 .. +0.035    about +0.02
CSF                  10     0                  the reference
caudate               1    +0.05 .. +0.10
globus pallidus       2    +0.10 .. +0.20
putamen               3    +0.05 .. +0.12
red nucleus           4    +0.08 .. +0.16
dentate nucleus       5    +0.08 .. +0.16
substantia nigra      6    +0.10 .. +0.20
thalamus              7    +0.02 .. +0.05      little iron (literature ~0.0-0.05)
veins                11    +0.30 .. +0.50      random tubes + internal cerebral veins
calcification        16    -0.30 .. -0.10      0-3 small spheres
microbleeds          17    +0.40 .. +1.00      0-5 tiny spheres (own id, not in the challenge set)
==================  =====  ==================  ===================================================

A multi-scale texture (std 0.005-0.015 ppm) is added to grey and white matter. Labels follow the
QSM challenge 2.0 / qsm-ci ids (1-11, 16), plus 17 for microbleeds.

Size: with ``scale="fit"`` (the default, the "small brain") the brain is scaled to fill about
92 % of the field of view, capped at its real size, so e.g. a 96^3 grid at 1 mm holds a whole
brain at ~0.6x scale, cheap enough for CPU benchmarks; ``scale=1.0`` keeps the real size and crops
what does not fit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import torch

from .shapes import Phantom, paint_shape
from .textures import as_rng, grid_mm, random_rotation, smooth_random_field

LABELS = {"caudate": 1, "globus_pallidus": 2, "putamen": 3, "red_nucleus": 4, "dentate": 5,
          "substantia_nigra": 6, "thalamus": 7, "white_matter": 8, "grey_matter": 9, "csf": 10,
          "vein": 11, "calcification": 16, "microbleed": 17}

#: chi ranges (ppm) drawn per sample.
CHI_RANGES = {"white_matter": (-0.045, -0.015), "grey_matter": (0.005, 0.035), "caudate": (0.05, 0.10),
              "globus_pallidus": (0.10, 0.20), "putamen": (0.05, 0.12), "red_nucleus": (0.08, 0.16),
              "dentate": (0.08, 0.16), "substantia_nigra": (0.10, 0.20), "thalamus": (0.02, 0.05),
              "vein": (0.30, 0.50), "calcification": (-0.30, -0.10), "microbleed": (0.40, 1.00)}

#: Right-hemisphere nucleus centres (MNI mm; mirrored in x for the left) and semi-axes (mm).
NUCLEI = {
    "thalamus": ((11.0, -18.0, 7.0), (7.0, 13.0, 8.0)),
    "caudate": ((13.0, 11.0, 10.0), (4.5, 10.0, 8.0)),
    "putamen": ((25.0, 2.0, 1.0), (5.5, 14.0, 8.5)),
    "globus_pallidus": ((19.0, -3.0, -1.0), (3.5, 8.0, 4.5)),
    "substantia_nigra": ((11.0, -17.0, -12.0), (3.0, 6.5, 3.0)),
    "red_nucleus": ((5.0, -19.0, -8.0), (3.0, 3.5, 3.5)),
    "dentate": ((15.0, -57.0, -35.0), (5.5, 8.0, 5.0)),
}
#: Internal cerebral veins (MNI mm segment end points, x mirrored) and radius (mm).
DEEP_VEINS = (((2.5, 0.0, 18.0), (2.5, -30.0, 12.0)),)
_NUCLEI_BOX = ((-40.0, 40.0), (-75.0, 30.0), (-50.0, 30.0))


@functools.lru_cache(maxsize=1)
def _template():
    """Template tensors (1, 3, I, J, K) = [GM, WM, brain mask] in [0, 1], affine and brain box."""
    import nibabel as nib
    import nilearn
    from scipy import ndimage

    d = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    names = {k: os.path.join(d, f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz") for k in ("gm", "wm")}
    for k, p in names.items():
        if not os.path.exists(p):
            raise FileNotFoundError(f"nilearn's MNI152 {k} map is missing ({p}); reinstall nilearn")
    imgs = {k: nib.load(p) for k, p in names.items()}
    gm = np.asarray(imgs["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32) / 255.0
    brain = ndimage.gaussian_filter(gm + wm, 1.0) > 0.4
    brain = ndimage.binary_closing(brain, iterations=3)
    brain = np.stack([ndimage.binary_fill_holes(s) for s in brain.transpose(2, 0, 1)]).transpose(1, 2, 0)
    brain = ndimage.binary_fill_holes(brain)
    lab, n = ndimage.label(brain)
    if n > 1:
        brain = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    mask = ndimage.gaussian_filter(brain.astype(np.float32), 0.7)
    vol = torch.from_numpy(np.stack([gm, wm, mask]))[None].contiguous()
    affine = imgs["gm"].affine.astype(np.float64)
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    world = affine[:3, :3] @ np.stack([lo, hi]).T + affine[:3, 3:4]
    centre, extent = world.mean(1), np.abs(world[:, 1] - world[:, 0]) + 1.0
    return vol, affine, centre, extent


def brain_phantom(
    shape: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    seed=None,
    *,
    scale: float | str = "fit",
    deform_mm: tuple[float, float] = (1.0, 3.0),
    max_rot_deg: float = 8.0,
    n_veins: int | None = None,
    centre_mni: Sequence[float] | None = None,
    sharpen: float = 3.0,
) -> Phantom:
    """A random brain-like susceptibility phantom (see the module docstring for tissues and values).

    Args:
        shape: (X, Y, Z) grid; voxel axes i, j, k point right, anterior and superior.
        voxel_size: mm per voxel.
        seed: int, SeedSequence or numpy Generator.
        scale: "fit" (brain fills ~92 % of the field of view, at most real size) or a factor.
        deform_mm: range of the std (mm) of the smooth random displacement field.
        max_rot_deg: largest random rotation of the head.
        n_veins: number of random venous tubes (default: random, ~10-25 for a whole brain).
        centre_mni: MNI point (mm) at the grid centre (default: the brain's centre); with
            ``scale=1.0`` this zooms on a region (e.g. ``(0, -10, 0)`` for the basal ganglia).
        sharpen: exponent applied to the GM/WM/CSF probabilities before normalising them into
            fractions (the template's maps are blurred by averaging; 1 keeps them as they are).

    Returns:
        :class:`Phantom` with chi (ppm, 0 outside the brain), the brain mask, int16 labels and
        ``info`` holding the drawn values, ``wm_weight`` (the WM fraction, for anisotropy) and
        ``template_mm`` ((X, Y, Z, 3) MNI coordinates, mm, of every voxel: the head is built on it).
    """
    rng = as_rng(seed)
    shape = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size)
    vol, affine, centre, extent = _template()
    fov = np.asarray(shape) * np.asarray(vs)
    s = min(1.0, float(np.min(0.92 * fov / extent))) if scale == "fit" else float(scale)
    s_axes = s * rng.uniform(0.93, 1.07, size=3)
    rot = random_rotation(rng, max_rot_deg)
    shift = rng.uniform(-0.03, 0.03, size=3) * fov
    values = {k: float(rng.uniform(*r)) for k, r in CHI_RANGES.items()}

    # output mm -> displaced -> template (MNI) mm, for every voxel
    x = torch.stack(torch.broadcast_tensors(*grid_mm(shape, vs)), dim=-1)  # (X, Y, Z, 3)
    amp = float(rng.uniform(*deform_mm)) * s
    disp = torch.stack([smooth_random_field(shape, vs, rng, scales_mm=(15.0 * s, 30.0 * s))
                        for _ in range(3)], dim=-1)
    m = torch.as_tensor(rot / s_axes[None, :], dtype=torch.float32)  # template mm per output mm
    p = (x + amp * disp - torch.as_tensor(shift, dtype=torch.float32)) @ m.T
    p = p + torch.as_tensor(centre if centre_mni is None else centre_mni, dtype=torch.float32)
    inv = np.linalg.inv(affine)
    ijk = p @ torch.as_tensor(inv[:3, :3].T, dtype=torch.float32)
    ijk = ijk + torch.as_tensor(inv[:3, 3], dtype=torch.float32)
    n = vol.shape[2:]
    grid = torch.stack([2 * ijk[..., 2] / (n[2] - 1) - 1, 2 * ijk[..., 1] / (n[1] - 1) - 1,
                        2 * ijk[..., 0] / (n[0] - 1) - 1], dim=-1)
    smp = torch.nn.functional.grid_sample(vol, grid[None], mode="bilinear", padding_mode="zeros",
                                          align_corners=True)[0]
    gm, wm, mprob = smp[0].clamp_min(0), smp[1].clamp_min(0), smp[2]
    mask = (mprob > 0.5).to(torch.float32)
    csf = (1.0 - gm - wm).clamp_min(0)
    pw = torch.stack([wm, gm, csf]) ** float(sharpen)
    frac = pw / pw.sum(0).clamp_min(1e-6) * mask
    wm, gm, csf = frac[0], frac[1], frac[2]
    tex = smooth_random_field(shape, vs, rng, scales_mm=(1.5, 4.0, 10.0))
    tex_amp = float(rng.uniform(0.005, 0.015))
    chi = gm * values["grey_matter"] + wm * values["white_matter"] + tex_amp * tex * (gm + wm)
    cls = (frac.argmax(0) + 8).to(torch.int16)  # 8 WM, 9 GM, 10 CSF
    labels = torch.where(mask > 0, cls, torch.zeros((), dtype=torch.int16))

    # deep grey nuclei and deep veins, evaluated in template space on the voxels near them
    box = torch.ones(shape, dtype=torch.bool)
    for ax, (lo, hi) in enumerate(_NUCLEI_BOX):
        box &= (p[..., ax] >= lo) & (p[..., ax] <= hi)
    idx = box.nonzero(as_tuple=True)
    q = p[idx]
    sub_chi, sub_lab = chi[idx], labels[idx]
    for name, (c, a) in NUCLEI.items():
        for side in (1.0, -1.0):
            cc = np.array([side * c[0], c[1], c[2]]) + rng.normal(0, 1.5, size=3)
            aa = np.array(a) * rng.uniform(0.85, 1.15, size=3)
            r = torch.as_tensor(random_rotation(rng, 10.0), dtype=torch.float32)
            u = (q - torch.as_tensor(cc, dtype=torch.float32)) @ r
            u = u / torch.as_tensor(aa, dtype=torch.float32)
            rad = u.norm(dim=-1)
            w = torch.sigmoid((1.0 - rad) * float(aa.min()) / 0.3)  # ~0.3 mm edge
            val = values[name] * float(rng.uniform(0.9, 1.1))
            sub_chi = (1 - w) * sub_chi + w * (val + 0.3 * tex_amp * tex[idx])
            sub_lab = torch.where(w > 0.5, torch.tensor(LABELS[name], dtype=torch.int16), sub_lab)
    for a0, b0 in DEEP_VEINS:
        for side in (1.0, -1.0):
            a_ = torch.tensor([side * a0[0], a0[1], a0[2]], dtype=torch.float32)
            b_ = torch.tensor([side * b0[0], b0[1], b0[2]], dtype=torch.float32)
            t = (((q - a_) @ (b_ - a_)) / float((b_ - a_).square().sum())).clamp(0, 1)
            dist = (q - (a_ + t[:, None] * (b_ - a_))).norm(dim=-1)
            vein = dist <= float(rng.uniform(1.0, 1.6))
            sub_chi = torch.where(vein, torch.tensor(values["vein"]), sub_chi)
            sub_lab = torch.where(vein, torch.tensor(LABELS["vein"], dtype=torch.int16), sub_lab)
    chi[idx], labels[idx] = sub_chi, sub_lab

    # veins, calcifications and microbleeds, painted in output space inside the brain
    coords = grid_mm(shape, vs)
    inside = mask.nonzero()
    centred = lambda ijk: (ijk.numpy() - (np.asarray(shape) - 1) / 2.0) * np.asarray(vs)  # noqa: E731
    nv = int(rng.integers(10, 26) * s**2) if n_veins is None else int(n_veins)
    occ = torch.zeros(shape, dtype=torch.float32)
    for _ in range(nv if len(inside) else 0):
        pt = centred(inside[int(rng.integers(len(inside)))])
        direction = rng.standard_normal(3)
        radius = float(rng.uniform(0.4, 1.0)) * max(s, 0.5)
        for _seg in range(int(rng.integers(2, 5))):
            direction = direction / np.linalg.norm(direction) + 0.5 * rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            half = float(rng.uniform(4.0, 10.0)) * s
            mid = pt + half * direction
            r3 = _frame(direction)
            paint_shape(occ, coords, vs, "cylinder", mid, np.array([radius, radius, half + radius]), r3, 1.0)
            pt = pt + 2 * half * direction
    vein = (occ > 0) & (mask > 0)
    chi[vein] = values["vein"] * (1 + 0.1 * tex[vein])
    labels[vein] = LABELS["vein"]
    counts = {"calcification": int(rng.integers(0, 4)), "microbleed": int(rng.integers(0, 6))}
    for kind, cnt in counts.items():
        for _ in range(cnt if len(inside) else 0):
            occ.zero_()
            c = centred(inside[int(rng.integers(len(inside)))])
            rad = float(rng.uniform(1.0, 3.0) if kind == "calcification" else rng.uniform(0.5, 1.5))
            semi = np.full(3, max(rad, 0.5 * min(vs)))
            hit = paint_shape(occ, coords, vs, "ellipsoid", c, semi, np.eye(3), 1.0)
            if hit is None:
                continue
            sel = (occ > 0) & (mask > 0)
            chi[sel] = values[kind] * float(rng.uniform(0.8, 1.2))
            labels[sel] = LABELS[kind]
    chi = chi * mask
    info = {"phantom": "brain", "scale": s, "values_ppm": values, "n_veins": nv, **counts, "wm_weight": wm,
            "template_mm": p}
    return Phantom(chi=chi.contiguous(), mask=mask, labels=labels, info=info)


def _frame(axis: np.ndarray) -> np.ndarray:
    """A rotation whose third column is ``axis`` (unit)."""
    a = axis / np.linalg.norm(axis)
    t = np.array([1.0, 0, 0]) if abs(a[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(a, t)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(a, u), a], axis=1)
