"""Mesh shapes (-1 fills) and the distributed start-up's argument checks."""

from __future__ import annotations

import ml_collections
import pytest

from experiments import mesh


def _m(data, fsdp, tensor):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_minus_one_fills_the_remaining_devices():
    assert mesh.resolve_mesh_shape(_m(-1, 1, 1), 8) == (8, 1, 1)
    assert mesh.resolve_mesh_shape(_m(2, -1, 2), 8) == (2, 2, 2)
    assert mesh.resolve_mesh_shape(_m(1, 2, -1), 8) == (1, 2, 4)
    assert mesh.resolve_mesh_shape(_m(2, 2, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize(
    "sizes, match",
    [((-1, -1, 1), "at most one -1"), ((3, -1, 1), "does not divide 8"), ((2, 2, 1), "uses 4 devices; there are 8"), ((0, 1, 1), "positive")],
)
def test_bad_mesh_shapes_raise(sizes, match):
    with pytest.raises(ValueError, match=match):
        mesh.resolve_mesh_shape(_m(*sizes), 8)


def test_make_mesh_axes_on_this_host():
    m = mesh.make_mesh(_m(-1, 1, 1))
    assert m.axis_names == ("data", "fsdp", "tensor") and m.shape["data"] >= 1


def test_distributed_needs_all_three_settings(monkeypatch):
    for var in (mesh.ENV_COORDINATOR, mesh.ENV_NUM_PROCESSES, mesh.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert mesh.initialize_distributed() is False  # a single-process run
    assert mesh.initialize_distributed("localhost:1", 1, 0) is False  # one process: nothing to start
    with pytest.raises(ValueError, match="give all of.*num_processes=None"):
        mesh.initialize_distributed("localhost:1234")
    monkeypatch.setenv(mesh.ENV_NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match="process_id=None"):
        mesh.initialize_distributed("localhost:1234")
