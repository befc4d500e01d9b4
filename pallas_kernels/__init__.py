"""Pallas kernels behind ssm_jax.ops, one folder per kernel family, each with two backends:

* ``selective_scan/`` -- Mamba-1 selective scan (``ssm_jax.ops.selective_scan``):
  ``mosaic_gpu.py`` (Mosaic GPU, Hopper; ``impl="pallas_gpu"``, entry ``api.py``) and
  ``mosaic_tpu.py`` (Mosaic TPU; ``impl="pallas_tpu"``, entry ``api_tpu.py``).
* ``ssd/`` -- Mamba-2 SSD (``ssm_jax.ops.ssd``; Hydra's two passes run on it): ``mosaic_gpu.py``
  (``impl="pallas_gpu"``, entry ``api.py``) and ``mosaic_tpu.py`` (``impl="pallas_tpu"``, entry
  ``api_tpu.py``).

On the CPU backend both run in their Pallas interpret mode. Shared pieces: ``gpu_common``,
``tpu_common``, ``_prepare`` (operand preparation), ``_sharding`` (``jax.shard_map`` under a mesh),
``_vjp``; ``target`` (the chip they are built for: JAX's backend, or one named to lower for a chip
this machine lacks). Never imports Flax or experiments; ssm_jax.ops imports a kernel module only when its
implementation is requested.
"""
