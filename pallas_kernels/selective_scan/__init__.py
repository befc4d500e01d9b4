"""Mamba-1 selective scan on Hopper in Pallas Mosaic GPU: see README.md; entry point api.selective_scan."""
