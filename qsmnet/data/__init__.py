"""Datasets, patching and the LightningDataModule. Imports sim, io and physics.

- :class:`SimulatedQSMDataset`: on-the-fly simulated samples (IterableDataset, seeded per sample).
- :class:`PrecomputedDataset`: simulated volumes with a cached classical estimate (e.g. TV), as
  patches, for networks that refine it.
- :class:`~qsmnet.data.head.HeadSimulation`: whole simulated heads after acquisition and
  background removal (``simulation: {phantom: head}`` of a PrecomputedDataset, ``conf/data/sim_head.yaml``).
- :class:`NiftiFolderDataset`: (field, mask[, chi]) NIfTI cases, BIDS derivatives accepted.
- :class:`QSMDataModule`: both, from Hydra config (``qsmnet/conf/data/*.yaml``).
- :func:`load_benchmark`: the fixed benchmark set written by ``qsmnet simulate --benchmark``.
- :class:`GridTransform`, :func:`random_transform`: physics-aware flips and axis permutations.
"""

from .augment import GridTransform, random_transform
from .precomputed import PrecomputedDataset
from .sample import QSMSample, collate
from .simulated import SimulatedQSMDataset

__all__ = [
    "GridTransform",
    "NiftiFolderDataset",
    "PrecomputedDataset",
    "QSMDataModule",
    "QSMSample",
    "SimulatedQSMDataset",
    "collate",
    "load_benchmark",
    "random_transform",
]


def __getattr__(name):  # lightning and io are imported only when these are used
    if name == "QSMDataModule":
        from .module import QSMDataModule

        return QSMDataModule
    if name == "NiftiFolderDataset":
        from .folder import NiftiFolderDataset

        return NiftiFolderDataset
    if name == "load_benchmark":
        from .benchmark import load_benchmark

        return load_benchmark
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
