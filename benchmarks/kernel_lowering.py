"""Lower every kernel family for its chip on any machine, and fingerprint the lowered kernels.

Interpret mode (how the kernels run on a CPU) never lowers them to Mosaic: a change can pass every
interpret-mode test and still fail to lower on the chip, and a trace-time refactor meant to emit
the same kernels cannot be checked without the chip. This module lowers each case of
:data:`CASES` -- forward, and the gradient of a loss through it -- under
``pallas_kernels.target.compiled_for(platform)`` for the chip it names ("gpu": Mosaic GPU
custom calls, "tpu": Mosaic TPU custom calls), on whatever machine runs it; nothing is executed.

``fingerprint`` is a SHA-256 of the lowered module (the kernels' serialized Mosaic modules
included, source locations dropped): equal fingerprints on two commits mean the compiled kernels
are the same, so the GPU/TPU timings measured on one still hold for the other::

    python -m benchmarks.kernel_lowering --json before.json      # on the old commit
    python -m benchmarks.kernel_lowering --json after.json       # on the new one
    python -m benchmarks.kernel_lowering --compare before.json after.json
    python -m benchmarks.kernel_lowering --json now.json && \
        python -m benchmarks.kernel_lowering --compare benchmarks/results/kernel_fingerprints.json now.json

``benchmarks/results/kernel_fingerprints.json``: the kernels that passed the Mosaic GPU tests on an
H100 on 2026-12-07 (jax 0.11.2). They equal the tested commit's (529d751): this module run on that
checkout, whose code read ``jax.default_backend()`` where it now reads ``target.backend()``, with
that function patched to return the target. Fingerprints depend on the jax version.

``tests/pallas_kernels/test_lowering.py`` lowers the same cases in CI (each must hold its
custom calls).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
from jax._src.interpreters import mlir  # an MLIR context with JAX's dialects, to read the kernels
from jax._src.lib import mosaic_gpu_dialect, tpu as tpu_dialect
from jaxlib.mlir import ir

from pallas_kernels import target
from ssm_jax.ops import hydra, selective_scan, ssd

__all__ = ["CASES", "CUSTOM_CALLS", "Case", "fingerprint", "lower"]

# The custom-call target of each chip's kernels in the lowered module.
CUSTOM_CALLS = {"gpu": "mosaic_gpu_v2", "tpu": "tpu_custom_call"}
# Mosaic TPU lowers for one chip generation, read from the device -- or, without one, from the
# abstract mesh's device: the v5e the TPU kernels' tilings were written for.
TPU_DEVICE_KIND = "TPU v5 lite"
_IMPL = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of an op: its shapes (b, l and the op's own letters), dtype and options."""

    op: str  # "selective_scan" | "ssd" | "hydra"
    dims: tuple[tuple[str, int], ...]
    dtype: str = "bfloat16"
    options: tuple[str, ...] = ()  # of: D, z, dt_bias, initial_state, segment_ids, final_state

    @property
    def name(self) -> str:
        dims = "".join(f"{k}{v}" for k, v in self.dims)
        return f"{self.op}_{dims}_{self.dtype}" + "".join(f"+{o}" for o in self.options)


_ALL_SCAN = ("D", "z", "dt_bias", "initial_state", "segment_ids", "final_state")
CASES = (
    Case("selective_scan", (("b", 2), ("l", 256), ("d", 128), ("g", 1), ("n", 16))),
    Case("selective_scan", (("b", 2), ("l", 300), ("d", 256), ("g", 2), ("n", 16)), options=_ALL_SCAN),
    Case("selective_scan", (("b", 1), ("l", 128), ("d", 128), ("g", 1), ("n", 16)), dtype="float32", options=_ALL_SCAN),
    Case("selective_scan", (("b", 1), ("l", 128), ("d", 128), ("g", 1), ("n", 256)), options=("D", "z")),
    Case("ssd", (("b", 2), ("l", 256), ("h", 2), ("p", 64), ("g", 1), ("n", 128))),
    Case("ssd", (("b", 2), ("l", 300), ("h", 4), ("p", 64), ("g", 2), ("n", 64)), options=_ALL_SCAN),
    Case("ssd", (("b", 1), ("l", 128), ("h", 2), ("p", 16), ("g", 1), ("n", 16)), options=("D", "z", "dt_bias")),
    Case("ssd", (("b", 1), ("l", 128), ("h", 2), ("p", 128), ("g", 1), ("n", 256)), options=("D",)),
    Case("hydra", (("b", 2), ("l", 256), ("h", 2), ("p", 64), ("g", 1), ("n", 64)), options=("D", "dt_bias", "segment_ids")),
)


def _arguments(case: Case) -> tuple[dict, dict]:
    """``(arrays, static keywords)`` of ``case``'s call, arrays as ShapeDtypeStructs."""
    d = dict(case.dims)
    b, l, g, n = d["b"], d["l"], d["g"], d["n"]
    dt = jnp.dtype(case.dtype)
    f32 = jnp.float32
    sds = jax.ShapeDtypeStruct
    if case.op == "selective_scan":
        ch = d["d"]
        arrays = dict(x=sds((b, l, ch), dt), dt=sds((b, l, ch), dt), A=sds((ch, n), f32), B=sds((b, l, g, n), dt),
                      C=sds((b, l, g, n), dt))
        extra = dict(D=sds((ch,), f32), z=sds((b, l, ch), dt), dt_bias=sds((ch,), f32), initial_state=sds((b, ch, n), f32))
    else:
        h, p = d["h"], d["p"]
        two = (2,) if case.op == "hydra" else ()  # Hydra's [forward, backward] axis
        arrays = dict(x=sds((b, l, h, p), dt), dt=sds((b, l, *two, h), dt), A=sds((h,), f32),
                      B=sds((b, l, *two, g, n), dt), C=sds((b, l, *two, g, n), dt))
        extra = dict(D=sds((h, p), f32), z=sds((b, l, h, p), dt), dt_bias=sds((h,), f32),
                     initial_state=sds((b, h, p, n), f32))
    static = {}
    for option in case.options:
        if option in extra:
            arrays[option] = extra[option]
        elif option == "segment_ids":
            arrays["segment_ids"] = sds((b, l), jnp.int32)
        elif option == "final_state":
            static["return_final_state"] = True
        else:
            raise ValueError(f"kernel_lowering: unknown option {option!r} in {case.name}")
    if "dt_bias" in arrays:
        static["dt_softplus"] = True
    return arrays, static


def _loss(case: Case, impl: str, static: dict):
    op = {"selective_scan": selective_scan, "ssd": ssd, "hydra": hydra}[case.op]

    def loss(arrays):
        out = op(**arrays, **static, impl=impl)
        y, final = out if isinstance(out, tuple) else (out, None)
        total = jnp.sum(y.astype(jnp.float32) * jnp.cos(jnp.arange(y.shape[-1], dtype=jnp.float32)))
        return total if final is None else total + jnp.sum(final)

    return loss


def lower(case: Case, platform: str) -> dict[str, jax.stages.Lowered]:
    """``{"forward": lowered, "gradient": lowered}``: ``case`` lowered for ``platform``'s kernels."""
    if platform not in CUSTOM_CALLS:
        raise ValueError(f"kernel_lowering: platform must be one of {tuple(CUSTOM_CALLS)}; got {platform!r}")
    arrays, static = _arguments(case)
    loss = _loss(case, _IMPL[platform], static)
    floats = {k: v for k, v in arrays.items() if jnp.issubdtype(v.dtype, jnp.floating)}
    ints = {k: v for k, v in arrays.items() if k not in floats}
    with target.compiled_for(platform) as lowering_platform, _chip(platform):
        # `loss` is made fresh for each call: no trace cached for another target can be reused.
        fwd = jax.jit(loss)
        grad = jax.jit(lambda f, i: jax.grad(lambda f: loss({**f, **i}))(f))
        out = {"forward": fwd.trace(arrays).lower(lowering_platforms=(lowering_platform,)),
               "gradient": grad.trace(floats, ints).lower(lowering_platforms=(lowering_platform,))}
    return out


def _chip(platform: str):
    """Inside ``compiled_for(platform)``: the TPU generation to lower for, where there is no TPU."""
    if platform != "tpu" or not target.lowering_only():
        return contextlib.nullcontext()
    device = jax.sharding.AbstractDevice(device_kind=TPU_DEVICE_KIND, num_cores=1, platform="tpu")
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("chip",), abstract_device=device))


def _custom_calls(module: ir.Module, name: str) -> list:
    found = []

    def walk(op):
        for region in op.regions:
            for block in region:
                for inner in block:
                    if (inner.name == "stablehlo.custom_call"
                            and ir.StringAttr(inner.attributes["call_target_name"]).value == name):
                        found.append(inner)
                    walk(inner)

    walk(module.operation)
    return found


def _kernel_bytecode(call, platform: str) -> bytes:
    """The serialized Mosaic module inside one kernel's custom call."""
    if platform == "gpu":
        return ir.StringAttr(ir.DictAttr(call.attributes["mhlo.backend_config"])["module"]).value_bytes
    config = json.loads(ir.StringAttr(call.attributes["backend_config"]).value_bytes)
    return base64.b64decode(config["custom_call_config"]["body"])


def _kernel_text(bytecode: bytes) -> str:
    """A Mosaic module's text without source locations (bytecode keeps them: a moved line would
    change it) or the process's count of kernels lowered."""
    ctx = mlir.make_ir_context()
    mosaic_gpu_dialect.register_dialect(ctx)
    tpu_dialect.register_dialect(ctx)
    ctx.allow_unregistered_dialects = True
    with ctx:
        text = ir.Module.parse(bytecode).operation.get_asm(enable_debug_info=False)
    return _PER_PROCESS.sub("", text)


# A kernel attribute that counts the kernels lowered so far in the process (a dump file's name).
_PER_PROCESS = re.compile(r'mosaic_gpu\.dump_basename = "[^"]*",? ?')


# The attributes that carry a kernel's serialized module (and its hash) in the outer module, and
# the outer module's name (the jitted function's: how the harness wraps the call, not the kernels).
_KERNEL_ATTRS = re.compile(r'\b(kernel_hash|module|backend_config) = "[^"]*"')
_MODULE_NAME = re.compile(r"^module @\S+", re.MULTILINE)


def fingerprint(lowered: jax.stages.Lowered, platform: str) -> tuple[str, int]:
    """``(SHA-256 prefix, number of kernel calls)`` of a lowered call: its module and every
    kernel's Mosaic module, as text without source locations."""
    module = lowered.compiler_ir("stablehlo")
    calls = _custom_calls(module, CUSTOM_CALLS[platform])
    kernels = [_kernel_text(_kernel_bytecode(c, platform)) for c in calls]
    outer = _KERNEL_ATTRS.sub(r'\1 = ""', module.operation.get_asm(enable_debug_info=False))
    outer = _MODULE_NAME.sub("module", outer)
    digest = hashlib.sha256("\n".join([outer, *kernels]).encode()).hexdigest()[:16]
    return digest, len(calls)


def fingerprints(platforms=("gpu", "tpu")) -> dict[str, dict]:
    """``{"<platform>:<case>:<pass>": {"fingerprint", "custom_calls"}}`` over :data:`CASES`."""
    rows = {}
    for platform in platforms:
        for case in CASES:
            for kind, lowered in lower(case, platform).items():
                digest, calls = fingerprint(lowered, platform)
                rows[f"{platform}:{case.name}:{kind}"] = dict(fingerprint=digest, custom_calls=calls)
    return rows


def compare(before: dict, after: dict) -> list[str]:
    """Lines naming every case whose lowering changed, appeared or disappeared."""
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            lines.append(f"{key}: only in {'after' if a is None else 'before'}")
        elif a["fingerprint"] != b["fingerprint"]:
            lines.append(f"{key}: changed ({a['custom_calls']} -> {b['custom_calls']} kernel calls)")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_lowering", description=__doc__.split("\n\n")[0])
    p.add_argument("--platform", action="append", choices=tuple(CUSTOM_CALLS), help="repeatable; default: both")
    p.add_argument("--json", default=None, help="write the fingerprints here")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two --json files and exit")
    a = p.parse_args(argv)
    if a.compare:
        missing = [f for f in a.compare if not os.path.isfile(f)]
        if missing:
            p.error(f"--compare: no such file {missing[0]!r} (write one with --json)")
        before, after = (json.load(open(f)) for f in a.compare)
        changed = compare(before, after)
        print("\n".join(changed) if changed else f"all {len(after)} lowerings identical")
        return 1 if changed else 0
    start = time.perf_counter()
    rows = fingerprints(tuple(a.platform or CUSTOM_CALLS))
    for key, row in rows.items():
        print(f"{row['fingerprint']}  {row['custom_calls']:3d}  {key}")
    print(f"{len(rows)} lowerings in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
