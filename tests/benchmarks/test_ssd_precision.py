"""benchmarks.ssd_precision: the float32 error it reports separates the 16-bit kernel from XLA."""

from benchmarks import ssd_precision


def test_kernel_rounds_float32_and_xla_does_not():
    err = ssd_precision.main(b=1, l=64, h=2, p=64, n=64)
    assert 1e-4 < err["pallas_gpu"] < 2e-2, err  # bf16 operands
    assert err["xla"] < 1e-5, err  # float32 products at HIGHEST precision
