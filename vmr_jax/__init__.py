"""vmr_jax: video moment retrieval in JAX/Flax.

``vmr_jax.Predictor`` (:mod:`vmr_jax.predictor`) answers queries with a trained checkpoint;
it is imported on first use, so ``import vmr_jax`` stays light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Predictor":
        from vmr_jax.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'vmr_jax' has no attribute {name!r}")
