"""``qsmnet info FILE``: what a NIfTI file holds and how qsmnet will read its geometry."""

from __future__ import annotations

HELP = "show shape, voxel size, B0 direction, obliquity, value range and guessed units of a NIfTI file"


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE", help="a .nii or .nii.gz file")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def describe(path) -> dict:
    """Summary of a NIfTI file as plain Python values (what ``--json`` prints)."""
    import numpy as np

    from qsmnet.io import guess_units, load_nifti
    from qsmnet.physics import is_oblique

    vol = load_nifti(path, what="input")
    g = vol.geometry
    d = vol.data
    finite = d[np.isfinite(d)]
    nonzero = finite[finite != 0]

    def stats(v):
        if v.size == 0:
            return None
        return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean(dtype=np.float64))}

    first = d.reshape(d.shape[:3] + (-1,))[..., 0]  # units are guessed from the first volume
    sform_code = int(vol.header.get_sform(coded=True)[1] or 0)
    qform_code = int(vol.header.get_qform(coded=True)[1] or 0)
    return {
        "file": str(vol.path),
        "shape": [int(s) for s in d.shape],
        "dtype": str(vol.header.get_data_dtype()),
        "voxel_size_mm": [round(v, 6) for v in g.voxel_size],
        "b0_dir_voxel": [round(c, 6) for c in g.b0_dir],
        "b0_tilt_deg": round(g.tilt_deg, 4),
        "oblique": is_oblique(vol.affine),
        "affine": np.round(vol.affine, 6).tolist(),
        "sform_code": sform_code,
        "qform_code": qform_code,
        "values": stats(finite),
        "values_nonzero": stats(nonzero),
        "nonzero_voxels": int(nonzero.size),
        "nonfinite_voxels": int(d.size - finite.size),
        "guessed_units": guess_units(first, first != 0),
    }


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def run(args) -> int:
    info = describe(args.file)
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    vs = " x ".join(_fmt(v) for v in info["voxel_size_mm"])
    b0 = ", ".join(f"{c:+.4f}" for c in info["b0_dir_voxel"])
    lines = [
        f"file:          {info['file']}",
        f"shape:         {' x '.join(str(s) for s in info['shape'])}",
        f"data type:     {info['dtype']}",
        f"voxel size:    {vs} mm",
        f"B0 direction:  ({b0}) in voxel axes, tilted {info['b0_tilt_deg']:.2f} deg from the k axis",
        f"oblique:       {'yes' if info['oblique'] else 'no'} (sform code {info['sform_code']}, "
        f"qform code {info['qform_code']})",
    ]
    for key, label in (("values", "all voxels"), ("values_nonzero", "nonzero voxels")):
        s = info[key]
        if s is None:
            lines.append(f"values ({label}): none")
        else:
            lines.append(
                f"values ({label}): min {_fmt(s['min'])}, max {_fmt(s['max'])}, mean {_fmt(s['mean'])}"
            )
    lines.append(f"nonzero voxels: {info['nonzero_voxels']}")
    if info["nonfinite_voxels"]:
        lines.append(f"non-finite voxels: {info['nonfinite_voxels']}")
    lines.append(f"guessed units: {info['guessed_units']} (a heuristic from the value range)")
    print("\n".join(lines))
    return 0
