"""Datasets, patching and the LightningDataModule. Imports sim, io and physics."""

from .sample import QSMSample, collate

__all__ = ["QSMSample", "collate"]
