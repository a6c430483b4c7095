"""Dynamical regimes of diffusion models: speciation, collapse and memorisation."""

__version__ = "0.1.0"
