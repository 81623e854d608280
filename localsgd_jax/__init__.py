"""localsgd-jax: LoCal+SGD (localized Hebbian learning + SGD) for CNNs in JAX/Flax."""
