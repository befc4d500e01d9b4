"""Mosaic GPU interpret mode with several simulated CPU devices (tests only).

Call :func:`per_device_state` in a process that runs Mosaic GPU kernels in interpret mode under a
multi-device ``jax.shard_map`` (the sharded-kernel and context-parallel checks).
"""

from __future__ import annotations


def per_device_state() -> None:
    """Two repairs of jax 0.11.2's Mosaic GPU interpreter for several simulated devices, which run
    their shards concurrently while the interpreter's state is one module-global object:

    * each kernel ends by asserting that no barrier is allocated anywhere -- on *every* device, so
      one device's check sees another's live barriers (`Barrier remains allocated at key
      HostAllocationKey(..., device_id=3, ...)`). It is an internal consistency check (each
      barrier is still checked when it is deallocated); skipped here.
    * ``cluster_finished`` resets per-cluster state "since clusters are executed sequentially",
      including the wgmma accumulator ids of *every* device's threads: another device mid-kernel
      then reuses an id still allocated (`KeyError: HostAllocationKey(..., buffer_id=-100)`).
      The ids are only required to be unique, so the counters are kept across clusters.

    (2026-12, jax 0.11.2; single-device interpret tests run the interpreter unchanged.)
    """
    from jax._src.pallas.mosaic_gpu.interpret import shared_memory

    cls = shared_memory.GPUSharedMemory
    cls.assert_no_barriers_allocated = lambda self: None
    reset = cls.reset_per_cluster_state

    def reset_keeping_ids(self):
        ids = getattr(self, "next_regs_id", None)
        reset(self)
        if ids is not None:
            with self.lock:
                self.next_regs_id = ids

    cls.reset_per_cluster_state = reset_keeping_ids
