"""
pyro-sin: variational message passing with structured inference networks
(SAN; Lin, Hubacher & Khan, ICLR 2018) for Pyro.
"""

# models before pgm: the families' models (in pgm) are written with the helpers of models,
# which re-exports them once its helpers are defined
from . import checkpoint, distributions, models, nn, optim, pgm
from .elbo import SINELBO
from .guide import SINGuide
from .optim import NaturalAdam
from .potential import GaussianPotential

__version__ = "0.1.0"

__all__ = [
    "GaussianPotential",
    "NaturalAdam",
    "SINELBO",
    "SINGuide",
    "checkpoint",
    "distributions",
    "models",
    "nn",
    "optim",
    "pgm",
]
