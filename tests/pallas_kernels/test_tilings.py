"""Every kernel family's tiling dataclass refuses a bad field on construction, naming it."""

from __future__ import annotations

import pytest

from pallas_kernels.selective_scan.blocks import SelectiveScanBlocks
from pallas_kernels.selective_scan.blocks_tpu import SelectiveScanTPUBlocks
from pallas_kernels.ssd.blocks import SSDBlocks
from pallas_kernels.ssd.blocks_tpu import SSDTPUBlocks

BAD_FIELDS = [
    # Mosaic GPU selective scan
    (SelectiveScanBlocks, dict(n=12, states_per_thread=4), "power of two"),
    (SelectiveScanBlocks, dict(n=512, states_per_thread=16), "8..256"),
    (SelectiveScanBlocks, dict(n=16, states_per_thread=32), "exceeds n"),
    (SelectiveScanBlocks, dict(n=256, states_per_thread=8), "channels per block"),
    (SelectiveScanBlocks, dict(n=16, states_per_thread=4, chunk=20), "multiple of 8"),
    (SelectiveScanBlocks, dict(n=16, states_per_thread=4, chunk=64, unroll=3), "unroll"),
    (SelectiveScanBlocks, dict(n=16, states_per_thread=4, chunk=64, save_interval=48), "save_interval"),
    # Mosaic GPU SSD
    (SSDBlocks, dict(chunk=32), "`chunk` must be 64"),
    (SSDBlocks, dict(block_p=128), "`block_p` must be 64"),
    (SSDBlocks, dict(fwd_nbuf=3), "`fwd_nbuf` must be None, 1 or 2"),
    # Mosaic TPU selective scan
    (SelectiveScanTPUBlocks, dict(block_l=100), "`block_l` must be a positive multiple of 128"),
    (SelectiveScanTPUBlocks, dict(block_d=64), "`block_d` must be a positive multiple of 128"),
    (SelectiveScanTPUBlocks, dict(unroll=0), "`unroll` must be a positive int"),
    # Mosaic TPU SSD
    (SSDTPUBlocks, dict(chunk=64), "`chunk` must be a positive multiple of 128"),
    (SSDTPUBlocks, dict(heads_per_block=0), "`heads_per_block` must be None or a positive int"),
]


@pytest.mark.parametrize("cls,fields,match", BAD_FIELDS, ids=[f"{c.__name__}-{'-'.join(f)}" for c, f, _ in BAD_FIELDS])
def test_bad_field_is_refused(cls, fields, match):
    with pytest.raises(ValueError, match=match):
        cls(**fields)
