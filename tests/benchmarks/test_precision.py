"""benchmarks.precision: the float32 errors it reports separate the 16-bit SSD kernel from XLA."""

from benchmarks import precision


def test_reports_values_and_gradients_per_impl():
    shapes = {"ssd": dict(b=1, l=64, h=2, p=64, g=1, n=64), "selective_scan": dict(b=1, l=32, d=16, n=4)}
    rows = {(r["op"], r["impl"]): r for r in precision.main(shapes)}
    assert set(rows) == {(op, impl) for op in shapes for impl in ("pallas_gpu", "xla")}
    ssd_kernel = rows["ssd", "pallas_gpu"]
    assert 1e-4 < ssd_kernel["y"] < 2e-2 and 1e-4 < ssd_kernel["grad"] < 5e-2, ssd_kernel  # bf16 operands
    for key in [("ssd", "xla"), ("selective_scan", "xla"), ("selective_scan", "pallas_gpu")]:
        assert rows[key]["y"] < 1e-5 and rows[key]["grad"] < 1e-5, rows[key]  # float32 throughout
