"""Sharding helpers: logical axis rules -> ``PartitionSpec`` / ``NamedSharding`` for model states,
and context (sequence) parallelism (:mod:`ssm_jax.parallel.context`)."""

from ssm_jax.parallel.rules import (
    DEFAULT_RULES,
    Rules,
    abstract_state,
    init_sharded,
    logical_spec,
    logical_to_mesh,
    logical_to_sharding,
    make_mesh,
    active_rules,
    context_axis,
    use_rules,
)
from ssm_jax.parallel import context

__all__ = [
    "DEFAULT_RULES",
    "Rules",
    "abstract_state",
    "active_rules",
    "context",
    "context_axis",
    "init_sharded",
    "logical_spec",
    "logical_to_mesh",
    "logical_to_sharding",
    "make_mesh",
    "use_rules",
]
