"""Baselines in the same harness as SAN."""

from .vae import VAE

__all__ = ["VAE"]
