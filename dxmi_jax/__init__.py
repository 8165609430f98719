"""dxmi-jax: Maximum Entropy IRL of diffusion models with energy-based models, in JAX."""

__version__ = "0.1.0"
