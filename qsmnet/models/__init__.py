"""Networks: plain ``nn.Module``s answering ``net(field, mask, geometry) -> chi`` (ppm).

Imports physics only (never lightning or data). See :mod:`qsmnet.models.common` for the call
signature and scaling conventions, :mod:`qsmnet.models.io` for shipped weights.
"""

from .cascade import QSMCascade
from .common import ResidualCNN, make_operator, tikhonov
from .unet import QSMUNet
from .unrolled import LPCNN, MoDL, VarNet

__all__ = ["LPCNN", "MoDL", "QSMCascade", "QSMUNet", "ResidualCNN", "VarNet", "make_operator", "tikhonov"]
