"""Sharding helpers: logical axis rules -> ``PartitionSpec`` / ``NamedSharding`` for model states."""

from ssm_jax.parallel.rules import (
    DEFAULT_RULES,
    Rules,
    abstract_state,
    init_sharded,
    logical_spec,
    logical_to_mesh,
    logical_to_sharding,
    make_mesh,
)

__all__ = [
    "DEFAULT_RULES",
    "Rules",
    "abstract_state",
    "init_sharded",
    "logical_spec",
    "logical_to_mesh",
    "logical_to_sharding",
    "make_mesh",
]
