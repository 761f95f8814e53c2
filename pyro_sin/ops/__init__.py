"""Tensor operations shared by several structures (pure functions, no Pyro effects)."""

from .markov import (
    ChainMarginals,
    chain_potentials,
    forward_backward,
    log_matmul_exp,
    markov_log_normalizer,
    sample_chain,
    sequential_log_matmul_exp,
)

__all__ = [
    "ChainMarginals",
    "chain_potentials",
    "forward_backward",
    "log_matmul_exp",
    "markov_log_normalizer",
    "sample_chain",
    "sequential_log_matmul_exp",
]
