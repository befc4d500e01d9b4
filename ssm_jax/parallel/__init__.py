"""Sharding helpers: logical axis rules -> ``PartitionSpec`` / ``NamedSharding`` for model states,
the rules table the ops read (:func:`use_rules`), and context (sequence) parallelism
(:mod:`ssm_jax.parallel.context`)."""

from ssm_jax.parallel import context, rules
from ssm_jax.parallel.rules import *  # noqa: F403  (the names in rules.__all__)

__all__ = [*rules.__all__, "context"]
