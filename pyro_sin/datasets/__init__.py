"""
Data sets of the SAN paper and the structured-VAE literature.

Every builder works on the CPU, whatever the default device, so a seed gives the
same numbers on every machine; move the tensors with ``.to(device)``.
"""

from .auto_mpg import FEATURES as AUTO_MPG_FEATURES
from .auto_mpg import auto_mpg, load_auto_mpg, shipped_auto_mpg_path
from .basic_motions import CHANNELS as BASIC_MOTIONS_CHANNELS
from .basic_motions import LabelledSequences, basic_motions, load_basic_motions
from .digits import digits, load_digits, load_mnist5k, mnist5k
from .pinwheel import LabelledSplit, make_pinwheel, noisy_pinwheel, pinwheel, split
from .sequences import SequenceData, bouncing_dot
from .switching import RegimeSequences, bouncing_ball, four_regime_dynamics, four_regime_system, random_observation_map

__all__ = [
    "AUTO_MPG_FEATURES",
    "LabelledSplit",
    "SequenceData",
    "auto_mpg",
    "bouncing_dot",
    "digits",
    "load_auto_mpg",
    "load_digits",
    "load_mnist5k",
    "make_pinwheel",
    "mnist5k",
    "noisy_pinwheel",
    "pinwheel",
    "shipped_auto_mpg_path",
    "split",
    # switching sequence benchmarks
    "RegimeSequences",
    "bouncing_ball",
    "four_regime_dynamics",
    "four_regime_system",
    "random_observation_map",
    # real multichannel sensor sequences (extra [data])
    "BASIC_MOTIONS_CHANNELS",
    "LabelledSequences",
    "basic_motions",
    "load_basic_motions",
]
