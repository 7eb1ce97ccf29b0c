"""A loaded network wrapped as a method: ``method(field, mask, geometry, *, info=None, **params) -> chi``.

:class:`NetworkMethod` adds what inference needs around a plain ``nn.Module`` from
:mod:`qsmnet.models`: the device move, whole-volume vs sliding-window inference from a memory
estimate (:mod:`qsmnet.inference.windows`), half precision on CUDA, resampling for networks tied to
one resolution, the training ranges of B0 tilt and voxel size (for warnings) and test-time
refinement (:mod:`qsmnet.inference.refine`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from qsmnet.data.augment import FLIPS  # noqa: F401 - re-exported (the --flips order)
from qsmnet.errors import QSMNetError
from qsmnet.physics import Geometry, geometry_list

from . import windows as W
from .refine import refine_network
from .runner import run_network, whole_volume_init  # noqa: F401 - re-exported

#: Flips averaged by default: on the benchmark's brains, 4 gave most of the gain of 8 (~1 % nRMSE)
#: for a U-Net at 4x the network's (not the initial estimate's) cost.
DEFAULT_FLIPS = 4

#: Training ranges assumed when a network's metadata does not state them.
DEFAULT_MAX_TILT_DEG = 45.0
DEFAULT_VOXEL_RANGE_MM = (0.5, 3.0)


def training_ranges(meta: dict) -> dict:
    """``{"max_tilt_deg", "voxel_mm": (lo, hi), "source"}`` from a network's metadata.

    Read from ``meta["ranges"]`` when present, else from the training data config
    (``meta["train_config"]["data"]["train"]``, or each of its ``simulation`` specs for a
    precomputed dataset: ``max_tilt_deg``, ``voxel_size_range`` times ``factors``, the fine voxels a
    head simulation acquires as one), else the documented defaults (tilt <= 45 deg, voxels 0.5-3 mm).
    """
    r = meta.get("ranges") or {}
    if "max_tilt_deg" in r and "voxel_mm" in r:
        return {"max_tilt_deg": float(r["max_tilt_deg"]), "voxel_mm": tuple(r["voxel_mm"]), "source": "meta"}
    train = (((meta.get("train_config") or {}).get("data") or {}).get("train")) or {}
    # a precomputed dataset nests its simulation spec(s) under "simulation"
    sims = train.get("simulation", train)
    sims = [x for x in (sims if isinstance(sims, list) else [sims]) if isinstance(x, dict)]
    if sims and all("max_tilt_deg" in x and "voxel_size_range" in x for x in sims):
        # a head simulation acquires ``factors`` fine voxels as one (e.g. 1 x 1 x 2 mm from 1 mm)
        def acquired(x, end):
            f = x.get("factors") or (1, 1, 1)
            return [float(v) * float(k) for v, k in zip(x["voxel_size_range"][end], f, strict=True)]

        return {
            "max_tilt_deg": max(float(x["max_tilt_deg"]) for x in sims),
            "voxel_mm": (min(min(acquired(x, 0)) for x in sims), max(max(acquired(x, 1)) for x in sims)),
            "source": "training config",
        }
    return {"max_tilt_deg": DEFAULT_MAX_TILT_DEG, "voxel_mm": DEFAULT_VOXEL_RANGE_MM, "source": "default"}


def _file_version(path: Path, full: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + (h.hexdigest() if full else h.hexdigest()[:12])


class NetworkMethod:
    """A network answering the shared method call.

    Args:
        net: a network from :mod:`qsmnet.models` (``net(field, mask, geometry) -> chi``).
        meta: its metadata (``meta["model"]`` is the model config; see :mod:`qsmnet.models.io`).
        name: the method's name (shipped name or file stem).
        version: a version string (``meta["version"]``, else the weights file's hash).
        path: the weights file, if any.

    A metadata key ``voxel_size`` (3 numbers, mm) marks a network tied to one resolution: inputs
    are then resampled to it and the result back to the input grid.
    """

    def __init__(
        self,
        net: nn.Module,
        meta: dict | None = None,
        name: str = "network",
        version: str | None = None,
        path: Path | None = None,
    ):
        self.net = net.eval()
        self.meta = dict(meta or {})
        self.name = name
        self.version = version or str(self.meta.get("version") or "unversioned")
        self.path = path
        self.ranges = training_ranges(self.meta)
        vs = self.meta.get("voxel_size")
        self.fixed_voxel_size = tuple(float(v) for v in vs) if vs else None

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> NetworkMethod:
        """Load a shipped network by name or a weights file (``.safetensors`` + ``.json``, ``.ckpt``).

        Raises:
            QSMNetError: missing or unreadable weights, or a config that builds no qsmnet network.
        """
        from qsmnet.models.io import load_network, resolve_weights

        try:
            path = resolve_weights(name_or_path)
            net, meta = load_network(path)
        except FileNotFoundError as e:
            raise QSMNetError(str(e)) from None
        except QSMNetError:
            raise
        except Exception as e:  # corrupt safetensors/json/ckpt, bad config, mismatched state dict
            msg = " ".join(str(e).split())[:200]
            raise QSMNetError(
                f"cannot load network weights {name_or_path}: {type(e).__name__}: {msg}"
            ) from None
        name = str(meta.get("name") or Path(path).stem)
        if path.suffix == ".safetensors" and Path(path).parent == _weights_dir():
            name = Path(path).stem
        version = str(meta["version"]) if meta.get("version") else _file_version(path)
        return cls(net, meta, name=name, version=version, path=path)

    def describe(self) -> dict:
        """Sidecar entry: name, version, class, weights file and training ranges."""
        return {
            "name": self.name,
            "version": self.version,
            "class": type(self.net).__name__,
            "weights": str(self.path) if self.path else None,
            "weights_sha256": self.weights_sha256(),
            "training_ranges": {
                "max_tilt_deg": self.ranges["max_tilt_deg"],
                "voxel_mm": list(self.ranges["voxel_mm"]),
                "source": self.ranges["source"],
            },
        }

    def weights_sha256(self) -> str | None:
        """``"sha256:<hex>"`` of the weights file (None for a network built in memory); cached."""
        if self.path is None:
            return None
        if getattr(self, "_sha256", None) is None:
            self._sha256 = _file_version(Path(self.path), full=True)
        return self._sha256

    def check_geometry(self, geometry: Geometry) -> list[str]:
        """Warnings (one line each) for a B0 tilt or voxel size outside the training range."""
        out = []
        r = self.ranges
        if geometry.tilt_deg > r["max_tilt_deg"] + 1e-6:
            out.append(
                f"B0 is tilted {geometry.tilt_deg:.1f} deg from the slice axis, beyond the "
                f"{r['max_tilt_deg']:.0f} deg network {self.name} was trained on"
            )
        lo, hi = r["voxel_mm"]
        vs = geometry.voxel_size
        if min(vs) < lo - 1e-6 or max(vs) > hi + 1e-6:
            shown = " x ".join(f"{v:g}" for v in vs)
            out.append(
                f"voxel size {shown} mm is outside the {lo:g}-{hi:g} mm network {self.name} was trained on"
            )
        return out

    def __call__(
        self,
        field,
        mask,
        geometry: Geometry | Sequence[Geometry],
        *,
        info: dict | None = None,
        window: int | str = "auto",
        overlap: float = W.DEFAULT_OVERLAP,
        max_memory: float | None = None,
        half: bool = False,
        refine: int = 0,
        refine_lr: float = 1e-4,
        flips: int = DEFAULT_FLIPS,
        dc: float | str | None = None,
    ) -> torch.Tensor:
        """Reconstruct chi with the network.

        Args:
            field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm), tensor on any device.
            mask: same shape, non-zero inside the brain.
            geometry: a :class:`Geometry` (or one per sample) of the field's grid.
            info: filled with ``model``, ``inference`` (mode, window, memory estimate and budget in
                bytes), ``half`` and, with ``refine``, ``refine`` (steps, residual before/after).
            window: ``"auto"`` (memory estimate), ``"off"`` (whole volume) or a window edge (voxels).
            overlap: sliding-window overlap fraction.
            max_memory: memory budget in bytes (default: half the free memory of the device).
            half: float16 autocast (CUDA only; ignored on the CPU).
            refine: steps of test-time data-consistency fine-tuning on this input (0: none).
            refine_lr: Adam learning rate of ``refine``.
            flips: test-time flip averaging: the mean of the network's answers on this many
                flipped copies of the input (1, 2, 4 or 8; see :data:`FLIPS`), each with its own
                geometry (a flip of axis i negates ``b0_dir[i]``). The whole-volume estimate is
                solved once and flipped with the input.
            dc: weight ``mu`` of a final data-consistency step (:mod:`.consistency`): the answer
                becomes the minimiser of ``||M (D chi - f)||^2 + mu ||chi - chi_net||^2``; ``"auto"``:
                chosen per case (:func:`.consistency.auto_weight`, possibly no step); None (default):
                no step. ``info["dc"]`` records it.

        Returns:
            chi (ppm), the field's shape, float32, on the field's device, zero outside the mask.
        """
        f = torch.as_tensor(field, dtype=torch.float32)
        squeeze = f.dim() == 3
        f = f[None, None] if squeeze else f
        m = torch.as_tensor(mask, device=f.device)
        m = (m[None, None] if m.dim() == 3 else m).ne(0).to(torch.float32)
        geoms = geometry_list(geometry)
        if len(geoms) != 1:
            chis = [self(f[b : b + 1], m[b : b + 1], geoms[min(b, len(geoms) - 1)], window=window,
                         overlap=overlap, max_memory=max_memory, half=half, refine=refine,
                         refine_lr=refine_lr, flips=flips, dc=dc) for b in range(f.shape[0])]  # fmt: skip
            chi = torch.cat(chis)
            return chi[0, 0] if squeeze else chi
        geom = geoms[0]
        f = f * m
        self.net.to(f.device)
        half = bool(half) and f.device.type == "cuda"

        # Resample to the network's resolution if it has one.
        g_net, f_net, m_net = geom, f, m
        if self.fixed_voxel_size and tuple(geom.voxel_size) != self.fixed_voxel_size:
            g_net, f_net, m_net = resample_to(f, m, geom, self.fixed_voxel_size)

        p = W.plan(self.net, g_net.shape, f.device, window, max_memory)
        net = self.net
        extra: dict = {}
        # once, for refinement and inference
        init = whole_volume_init(self.net, f_net, m_net, g_net, None, p, overlap, half)
        if refine and refine > 0:
            net, extra = refine_network(self.net, f_net, m_net, g_net, steps=int(refine), lr=refine_lr,
                                        window=window, max_memory=max_memory, overlap=overlap,
                                        init=init)  # fmt: skip
        chi = run_network(net, f_net, m_net, g_net, p, overlap, half, init=init, flips=flips)
        if g_net is not geom:
            chi = resample_back(chi, geom.shape) * m
        if info is not None:
            info["model"] = self.describe()
            info["inference"] = {
                "mode": p["mode"],
                "window": list(p["roi"]) if p["roi"] else None,
                "overlap": overlap if p["roi"] else None,
                "memory_estimate_bytes": p["estimate_bytes"],
                "memory_budget_bytes": p["budget_bytes"],
                "resampled_to_mm": list(self.fixed_voxel_size) if g_net is not geom else None,
                "flips": int(flips),
            }
            info["half"] = half
            info["iterations"] = getattr(self.net, "iterations", None)
            info.update(extra)
        chi = chi * m
        if dc is not None:
            from .consistency import data_consistency

            chi, dc_info = data_consistency(chi, f, m, geom, dc)
            if info is not None:
                info["dc"] = dc_info
        return chi[0, 0] if squeeze else chi


def resample_to(field: torch.Tensor, mask: torch.Tensor, geometry: Geometry, voxel_size: Sequence[float]):
    """Trilinear resampling of (1, 1, X, Y, Z) ``field``/``mask`` to ``voxel_size`` (mm).

    Returns:
        (geometry on the new grid, field, mask) with the mask thresholded at 0.5.
    """
    old = zip(geometry.shape, geometry.voxel_size, voxel_size, strict=True)
    shape = tuple(max(1, round(n * v / t)) for n, v, t in old)
    vs = tuple(n * v / s for n, v, s in zip(geometry.shape, geometry.voxel_size, shape, strict=True))
    fr = nn.functional.interpolate(field, size=shape, mode="trilinear", align_corners=False)
    mr = (nn.functional.interpolate(mask, size=shape, mode="trilinear", align_corners=False) > 0.5).float()
    return geometry.with_(shape=shape, voxel_size=vs), fr * mr, mr


def resample_back(chi: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of (1, 1, x, y, z) ``chi`` back to the input grid ``shape``."""
    return nn.functional.interpolate(chi, size=tuple(shape), mode="trilinear", align_corners=False)


def _weights_dir() -> Path:
    from qsmnet.models.io import WEIGHTS_DIR

    return WEIGHTS_DIR
