"""vmr_jax: video moment retrieval in JAX/Flax."""

__version__ = "0.1.0"
