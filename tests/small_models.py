"""Tiny mixer settings the model, stack and decoding tests share (d_state 4, head dim 4).

Chunk sizes of 3 do not divide the test lengths, so the chunked paths' padding runs too.
"""

from ssm_jax.models import AttentionConfig, HydraConfig, Mamba2Config, MambaConfig, S4Config, S4DConfig

SMALL = dict(
    mamba=MambaConfig(d_state=4, d_conv=3),
    mamba2=Mamba2Config(d_state=4, headdim=4, ngroups=2, chunk_size=3),
    hydra=HydraConfig(d_state=4, headdim=4, d_conv=3, chunk_size=3),
    s4=S4Config(d_state=4),
    s4d=S4DConfig(d_state=4),
    attention=AttentionConfig(num_heads=2),
)
