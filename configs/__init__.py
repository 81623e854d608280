"""Run configs: `get_config()` files for `train.py --config=configs/X.py`.

They ship inside the package as `localsgd_jax.configs` (pyproject.toml maps
that package to this folder; in a checkout the symlink localsgd_jax/configs
also points here), so an installed `localsgd_jax` has them and no
top-level `configs` package is installed;
configs import each other as `from localsgd_jax.configs import default`.
"""
