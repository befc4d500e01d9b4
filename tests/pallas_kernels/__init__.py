"""Tests of the Pallas kernels (Mosaic GPU interpret mode on CPU, compiled on the chip)."""
