"""One switch for implementations: every public op resolves its ``impl=`` argument here.

Each op owns a :class:`Registry`, a module constant: ``REGISTRY`` in a module with one op
(``ssm_jax.ops.ssd.REGISTRY``, ``ssm_jax.ops.s4.REGISTRY``, ...), ``<OP>_REGISTRY`` where a module
has several (``ssm_jax.ops.conv``: ``FFT_CONV_REGISTRY``, ``CAUSAL_CONV1D_REGISTRY``,
``CONV1D_REGISTRY``) and where another module imports one (``REGISTRY as SSD_REGISTRY``). An
implementation is a callable taking the op's arguments in
canonical form (validated and normalized by the public function), optionally lazily imported
from ``"module:attr"`` so that ``ssm_jax.ops`` never imports a kernel module until asked.

* ``impl="auto"`` tries the implementations that may be auto-selected on the current backend,
  highest priority first, and takes the first whose ``check`` and ``auto_check`` pass. When it
  passes over a faster implementation it logs why, once per reason.
* ``impl="<name>"`` runs that implementation or raises :class:`ImplementationUnavailableError`
  with the reason (never a silent fallback). ``auto_check`` does not apply: it states what
  ``auto`` will not trade away (e.g. float32 precision) but a caller who names the
  implementation may accept.
* Aliases such as ``"pallas"`` map to a backend-specific name (``pallas_gpu`` / ``pallas_tpu``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any, Callable, Mapping

import jax

# Not a kernel module: which chip the kernels are built for (JAX's backend, or one named by
# pallas_kernels.target.compiled_for to lower for a chip this machine lacks). jax only.
from pallas_kernels import target as kernel_target

__all__ = [
    "Implementation",
    "ImplementationUnavailableError",
    "Registry",
    "available_impls",
    "get_registry",
]

logger = logging.getLogger("ssm_jax")

# A check receives the canonical arguments (arrays may be tracers: use shapes and dtypes only)
# plus "backend" (kernel_target.backend(): jax.default_backend() unless compiled_for names
# another) and returns None if it can run, else the reason.
Check = Callable[[Mapping[str, Any]], "str | None"]


class ImplementationUnavailableError(ValueError):
    """An explicitly requested implementation cannot run on these inputs or this backend."""


def _load(target: Callable | str) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass(frozen=True)
class Implementation:
    name: str
    target: Callable | str
    check: Check | str | None = None
    # Backends ("cpu", "gpu", "tpu") on which "auto" may pick this implementation; None: all.
    # Explicit requests are governed by `check` alone (interpret modes run anywhere).
    auto_backends: tuple[str, ...] | None = None
    priority: int = 0
    # A further condition for impl="auto" only (same signature as `check`).
    auto_check: Check | str | None = None
    # The implementation splits its arguments over the mesh itself (the Pallas kernels run under
    # jax.shard_map): callers hand it the arguments as they are (see ssm_jax.ops._explicit.call).
    manual_sharding: bool = False

    def fn(self) -> Callable:
        return _load(self.target)

    def why_not(self, ctx: Mapping[str, Any]) -> str | None:
        if self.check is None:
            return None
        return _load(self.check)(ctx)

    def why_not_auto(self, ctx: Mapping[str, Any]) -> str | None:
        """Why ``impl="auto"`` does not pick this implementation (None: it may)."""
        reason = self.why_not(ctx)
        if reason is None and self.auto_check is not None:
            reason = _load(self.auto_check)(ctx)
        return reason


_REGISTRIES: dict[str, "Registry"] = {}
_LOGGED: set[tuple[str, str, str]] = set()


class Registry:
    """The implementations of one op."""

    def __init__(self, op: str):
        self.op = op
        self._impls: dict[str, Implementation] = {}
        self._aliases: dict[str, dict[str, str]] = {}
        _REGISTRIES[op] = self

    def register(
        self,
        name: str,
        target: Callable | str | None = None,
        *,
        check: Check | str | None = None,
        auto_backends: tuple[str, ...] | None = None,
        priority: int = 0,
        auto_check: Check | str | None = None,
        manual_sharding: bool = False,
    ):
        """Register ``target`` under ``name``; usable as a decorator when ``target`` is None.

        ``auto_backends=()`` means "never chosen by auto" (references such as ``"scan"``).
        """
        if name in ("auto",) or name in self._aliases:
            raise ValueError(f"{self.op}: implementation name {name!r} is reserved")

        def add(t):
            self._impls[name] = Implementation(name, t, check, auto_backends, priority, auto_check, manual_sharding)
            return t

        if target is None:
            return add
        add(target)
        return target

    def alias(self, name: str, by_backend: Mapping[str, str]) -> None:
        """``name`` resolves to ``by_backend[backend]`` (the backend of :func:`pallas_kernels.target.backend`)."""
        self._aliases[name] = dict(by_backend)

    def names(self) -> list[str]:
        return ["auto", *self._impls, *self._aliases]

    def __contains__(self, name: str) -> bool:
        return name in self._impls

    def __getitem__(self, name: str) -> Implementation:
        return self._impls[name]

    def resolve(self, impl: str, args: Mapping[str, Any]) -> tuple[str, Callable]:
        """Return ``(name, fn)`` for ``impl`` given the canonical ``args`` of a call."""
        backend = kernel_target.backend()  # JAX's, unless a target.compiled_for block names another
        ctx = {**args, "backend": backend}
        if not isinstance(impl, str):
            raise TypeError(f"{self.op}: `impl` must be a string, one of {self.names()}; got {impl!r}")
        if impl in self._aliases:
            target = self._aliases[impl].get(backend)
            if target is None:
                raise ImplementationUnavailableError(
                    f"{self.op}: impl={impl!r} has no target on backend {backend!r}; it maps "
                    f"{self._aliases[impl]}. Name one of those explicitly to run it elsewhere "
                    "(Pallas kernels run in interpret mode off their chip)."
                )
            impl = target
        if impl == "auto":
            return self._auto(ctx, backend)
        if impl not in self._impls:
            raise ValueError(f"{self.op}: unknown impl={impl!r}; expected one of {self.names()}")
        chosen = self._impls[impl]
        reason = chosen.why_not(ctx)
        if reason is not None:
            raise ImplementationUnavailableError(f"{self.op}: impl={impl!r} cannot run: {reason}")
        return impl, chosen.fn()

    def _auto(self, ctx: Mapping[str, Any], backend: str) -> tuple[str, Callable]:
        candidates = sorted(
            (i for i in self._impls.values() if i.auto_backends is None or backend in i.auto_backends),
            key=lambda i: -i.priority,
        )
        skipped = []
        for cand in candidates:
            reason = cand.why_not_auto(ctx)
            if reason is None:
                for name, why in skipped:
                    key = (self.op, name, why)
                    if key not in _LOGGED:
                        _LOGGED.add(key)
                        logger.warning("%s: impl='auto' uses %r instead of %r: %s", self.op, cand.name, name, why)
                return cand.name, cand.fn()
            skipped.append((cand.name, reason))
        raise ImplementationUnavailableError(
            f"{self.op}: no implementation can run on backend {backend!r}: "
            + "; ".join(f"{n}: {r}" for n, r in skipped)
        )


def get_registry(op: str) -> Registry:
    try:
        return _REGISTRIES[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; ops with implementations: {sorted(_REGISTRIES)}") from None


def available_impls(op: str) -> list[str]:
    """The ``impl=`` values ``op`` accepts (``"auto"``, named implementations, aliases)."""
    return get_registry(op).names()
