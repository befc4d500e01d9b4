"""Pallas kernels behind ssm_jax.ops: one folder per kernel family (Mosaic GPU, Mosaic TPU).

Never imports Flax or experiments; ssm_jax.ops imports a kernel module only when its
implementation is requested.
"""
