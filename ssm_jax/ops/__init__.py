"""The mixers as pure, jit-able, differentiable, vmap-able functions (channels-last).

The ops with several implementations (``selective_scan``, ``ssd``, ``hydra``, ``s4_kernel``,
``s4d_kernel``, ``fft_conv``, ``causal_conv1d``, ``conv1d``) take ``impl=`` ("auto", a named
implementation, or an alias such as "pallas"), resolved by :mod:`ssm_jax.ops.registry`;
``available_impls(op)`` lists what an op accepts. The step forms, the ``s4_scan`` / ``s4d_scan``
recurrences and the helpers have one implementation and no ``impl``.
"""

from ssm_jax.ops.registry import ImplementationUnavailableError, available_impls

__all__ = ["ImplementationUnavailableError", "available_impls"]

# S4 / S4D kernels and the convolutions (ssm_jax.ops.s4, .s4d, .conv; registries: `REGISTRY` of
# .s4 and .s4d, `FFT_CONV_REGISTRY`, `CAUSAL_CONV1D_REGISTRY`, `CONV1D_REGISTRY` of .conv).
from ssm_jax.ops.conv import causal_conv1d, causal_conv1d_init_state, causal_conv1d_step, conv1d, fft_conv  # noqa: E402
from ssm_jax.ops.s4 import hippo_legs, nplr_legs, s4_discretize, s4_init, s4_kernel, s4_scan, s4_step  # noqa: E402
from ssm_jax.ops.s4d import s4d_discretize, s4d_init, s4d_kernel, s4d_scan, s4d_step  # noqa: E402

__all__ += [
    "causal_conv1d", "causal_conv1d_init_state", "causal_conv1d_step", "conv1d", "fft_conv",
    "hippo_legs", "nplr_legs", "s4_discretize", "s4_init", "s4_kernel", "s4_scan", "s4_step",
    "s4d_discretize", "s4d_init", "s4d_kernel", "s4d_scan", "s4d_step",
]  # fmt: skip

# Mamba-1 selective scan (ssm_jax.ops.selective_scan; its registry: `from ssm_jax.ops.selective_scan
# import REGISTRY`, since the name `ssm_jax.ops.selective_scan` here is the function).
from ssm_jax.ops.selective_scan import selective_scan, selective_scan_ref, selective_scan_step  # noqa: E402

__all__ += ["selective_scan", "selective_scan_ref", "selective_scan_step"]

# Mamba-2 SSD and Hydra (ssm_jax.ops.ssd, .hydra; registries: `from ssm_jax.ops.ssd import REGISTRY`,
# `from ssm_jax.ops.hydra import REGISTRY`, since these names here are the functions).
from ssm_jax.ops.hydra import hydra, hydra_matrix, hydra_matrix_ref, hydra_two_pass  # noqa: E402
from ssm_jax.ops.ssd import ssd, ssd_chunked, ssd_matrix, ssd_quadratic_ref, ssd_scan_ref, ssd_step  # noqa: E402

__all__ += [
    "hydra", "hydra_matrix", "hydra_matrix_ref", "hydra_two_pass",
    "ssd", "ssd_chunked", "ssd_matrix", "ssd_quadratic_ref", "ssd_scan_ref", "ssd_step",
]  # fmt: skip
