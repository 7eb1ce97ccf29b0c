"""The typed sample that every dataset yields and every model, solver and metric consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qsmnet.physics import Geometry


@dataclass
class QSMSample:
    """One volume, or a batch of volumes of one shape, with their acquisition geometries.

    Attributes:
        field: local field in ppm, (1, X, Y, Z) for one sample or (B, 1, X, Y, Z) for a batch.
        mask: brain mask (float 0/1), same shape as ``field``.
        geometry: one :class:`Geometry` per sample (a tuple of length B for a batch).
        chi: true susceptibility in ppm, same shape as ``field``, or None when unknown.
        meta: free-form extras (e.g. noise level, phantom seed), merged into lists when batched.
        init: optional precomputed initial estimate of chi in ppm (e.g. TV computed on the whole
            volume before a patch was cut), same shape as ``field``; networks with an expensive
            initial estimate take it instead of recomputing it (see ``QSMUNet``).
    """

    field: torch.Tensor
    mask: torch.Tensor
    geometry: tuple[Geometry, ...]
    chi: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    init: torch.Tensor | None = None

    def to(self, device) -> QSMSample:
        """A copy with the tensors on ``device``."""
        return QSMSample(
            self.field.to(device),
            self.mask.to(device),
            self.geometry,
            None if self.chi is None else self.chi.to(device),
            self.meta,
            None if self.init is None else self.init.to(device),
        )

    def __len__(self) -> int:
        return len(self.geometry)


def collate(samples: list[QSMSample]) -> QSMSample:
    """Stack single samples ((1, X, Y, Z) tensors) into one batch ((B, 1, X, Y, Z)); use as a
    DataLoader's ``collate_fn``. Lightning moves the batch to the device through ``QSMSample.to``."""
    has_chi = all(s.chi is not None for s in samples)
    has_init = all(s.init is not None for s in samples)
    keys = set().union(*(s.meta for s in samples))
    return QSMSample(
        field=torch.stack([s.field for s in samples]),
        mask=torch.stack([s.mask for s in samples]),
        geometry=tuple(g for s in samples for g in s.geometry),
        chi=torch.stack([s.chi for s in samples]) if has_chi else None,
        meta={k: [s.meta.get(k) for s in samples] for k in keys},
        init=torch.stack([s.init for s in samples]) if has_init else None,
    )
