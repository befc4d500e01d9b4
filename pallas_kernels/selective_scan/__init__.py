"""Mamba-1 selective scan kernels: Mosaic GPU (api.py, mosaic_gpu.py, blocks.py; README.md) and
Mosaic TPU (api_tpu.py, mosaic_tpu.py, blocks_tpu.py)."""
