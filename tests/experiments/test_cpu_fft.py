"""The trainer's command line avoids jaxlib 0.11.2's CPU FFT deadlock (two concurrent FFTs on the
XLA intra-op pool, each waiting on tasks queued behind the other)."""

from __future__ import annotations

import os
import subprocess
import sys

from experiments import backend_flags
from tests import xla_flags

# Two independent FFT convolutions and their gradients in one program: at these sizes ducc0
# parallelizes each FFT, and on a 2-core CPU the program never finished without the flag.
PROGRAM = """
import jax, jax.numpy as jnp
def conv(x, k):
    n = 2 * x.shape[-1]
    return jnp.fft.irfft(jnp.fft.rfft(x, n=n) * jnp.fft.rfft(k, n=n), n=n)[..., : x.shape[-1]].sum()
x, k = jnp.ones((32, 256, 4096)), jnp.ones((256, 4096))
g = jax.jit(jax.grad(lambda x, k: conv(x, k) + conv(2 * x, 3 * k), argnums=(0, 1)))
for _ in range(2):
    jax.block_until_ready(g(x, k))
print("done")
"""


def test_the_flag_is_added_unless_set():
    assert backend_flags.xla_flags_without_cpu_fft_deadlock("") == backend_flags.CPU_FFT_FLAG
    assert backend_flags.xla_flags_without_cpu_fft_deadlock("--xla_force_host_platform_device_count=4") == (
        "--xla_force_host_platform_device_count=4 " + backend_flags.CPU_FFT_FLAG)
    mine = "--xla_cpu_multi_thread_eigen=true"
    assert backend_flags.xla_flags_without_cpu_fft_deadlock(mine) == mine


def test_concurrent_ffts_finish_under_the_trainers_flags():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=backend_flags.xla_flags_without_cpu_fft_deadlock(xla_flags.flags()))
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("done"), proc.stderr[-2000:]
