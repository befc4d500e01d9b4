r"""Language models at GPT-2-small scale (~125M parameters): Mamba, Mamba-2, S4D, Transformer, hybrid.

    python -m experiments.run --config=experiments/configs/lm/gpt2_small.py:arch=mamba2 \
      --workdir=runs/lm/mamba2
    # your own text and a SentencePiece model (python -c "from experiments.data.tokenizers import
    # train_sentencepiece; ..."), 50k vocabulary:
    python -m experiments.run \
      --config=experiments/configs/lm/gpt2_small.py:arch=hybrid,tokenizer=/data/sp50k.model \
      --config.data.corpus='/data/text/**/*.txt' --workdir=runs/lm/hybrid

arg: ``arch=`` mamba | mamba2 | s4d | transformer | hybrid (default mamba2); ``tokenizer=``
"byte" (default) or a SentencePiece ``.model`` path (sets the vocabulary); ``context=N`` splits
every sequence over ``N`` devices (``mesh.context``, default 1; the rest of the devices go to
``mesh.data``); ``smoke`` runs 4 steps of a 2-layer, width-32 model on 20 stdlib files in seconds.

Context parallelism (long sequences): ``arch=mamba2,context=4`` (or ``--config.mesh.context=4``)
splits the ``data.seq_len`` positions of each sequence into 4 contiguous shards, one per device;
the Mamba/Mamba-2 layers then scan their shard and exchange only states
(:mod:`ssm_jax.parallel.context`). ``seq_len`` must divide by it; attention layers (``hybrid``,
``transformer``) and S4D's FFT convolution run as GSPMD partitions them, gathering the sequence.

Architectures (sizes as in the Mamba / Mamba-2 papers' 125M rows, d_model 768):

* ``mamba``: 24 Mamba blocks (d_state 16, expand 2), no MLP -- 129.2M parameters at a 50,304 vocab;
* ``mamba2``: 24 Mamba-2 blocks (d_state 128, headdim 64) -- 129.0M;
* ``s4d``: 14 causal S4D-LegS layers (d_state 64) each followed by a gated MLP of 2,048 -- 123.3M;
* ``transformer``: 12 attention layers (12 heads, RoPE) with gated MLPs of 2,048 -- 123.6M;
* ``hybrid``: 24 layers of Mamba-2 with attention at layers 6, 12, 18, 24 (1 in 6) -- 123.4M.

With the byte tokenizer (258 ids) the embedding shrinks by ~38.4M parameters. Data: the Python
standard library's source (``data.corpus="stdlib"``, no download) split by file, packed into
1,024-token sequences with segment_ids; any file/dir/glob or ``tfds:<name>`` works instead.
Optimizer: GPT-3 125M's AdamW recipe (lr 6e-4, betas 0.9/0.95, wd 0.1, clip 1.0, cosine to 10%).
The layers run as one ``jax.lax.scan`` over stacked parameters (``model.scan_layers=True``; the
hybrid scans 4 repeats of its 6-layer period), so one block is compiled whatever the depth;
``--config.model.scan_layers=False`` loops instead, ``--config.model.remat=dots`` (or ``full``,
``dots_no_batch``) trades recomputation for activation memory.

Expected: no published numbers for this corpus; report ``validation/loss`` and bits per byte
(``experiments.data.text.bits_per_byte``; with the byte tokenizer, bpb = loss / ln 2).
"""

from experiments.configs import common

ARCHS = ("mamba", "mamba2", "s4d", "transformer", "hybrid")
D_MODEL = 768


def _arch(arch: str, *, smoke: bool) -> dict:
    """``model_config`` fields (besides vocab) for ``arch``."""
    if smoke:
        n = 2
        sizes = dict(d_model=32, n_layers=n)
        sub = {
            "mamba": dict(mamba=dict(d_state=4)),
            "mamba2": dict(mamba2=dict(d_state=8, headdim=16, chunk_size=16)),
            "s4d": dict(s4d=dict(d_state=8), d_intermediate=64),
            "transformer": dict(attention=dict(num_heads=2), d_intermediate=64),
            "hybrid": dict(mamba2=dict(d_state=8, headdim=16, chunk_size=16), attention=dict(num_heads=2),
                           layer_mixers=("mamba2", "attention")),
        }[arch]
        return {**sizes, **sub}
    if arch == "mamba":
        return dict(d_model=D_MODEL, n_layers=24, mamba=dict(d_state=16, expand=2))
    if arch == "mamba2":
        return dict(d_model=D_MODEL, n_layers=24, mamba2=dict(d_state=128, headdim=64, expand=2, chunk_size=256))
    if arch == "s4d":
        return dict(d_model=D_MODEL, n_layers=14, d_intermediate=2048, s4d=dict(d_state=64, init="legs", bidirectional=False))
    if arch == "transformer":
        return dict(d_model=D_MODEL, n_layers=12, d_intermediate=2048, attention=dict(num_heads=12))
    if arch == "hybrid":
        layers = tuple("attention" if (i + 1) % 6 == 0 else "mamba2" for i in range(24))
        return dict(d_model=D_MODEL, n_layers=24, layer_mixers=layers, attention=dict(num_heads=12),
                    mamba2=dict(d_state=128, headdim=64, expand=2, chunk_size=256))
    raise ValueError(f"lm/gpt2_small: arch must be one of {ARCHS}; got {arch!r}")


def get_config(arg=None):
    a = common.parse_arg(arg, arch="mamba2", tokenizer="byte", context=1, smoke=False)
    if a.arch not in ARCHS:
        raise ValueError(f"lm/gpt2_small: arch must be one of {ARCHS}; got {a.arch!r}")
    from experiments.data.tokenizers import get_tokenizer

    vocab_size = get_tokenizer(a.tokenizer).vocab_size
    mixer = {"transformer": "attention", "hybrid": "mamba2"}.get(a.arch, a.arch)

    c = common.base_config()
    c.seed = 0
    c.mesh.context = a.context
    c.total_steps = 20_000
    c.log_every = 50
    c.eval_every = 1_000
    c.checkpoint_every = 1_000
    c.data = dict(
        name="text",
        batch_size=64,
        corpus="stdlib",
        tokenizer=a.tokenizer,
        seq_len=1024,
        validation_fraction=0.05,
        text_key="text",
        data_dir="",
        max_documents=0,
        cache_dir="",
        num_threads=2,
    )
    c.model = common.model_config("lm", mixer=mixer, vocab_size=vocab_size, scan_layers=True,
                                  **_arch(a.arch, smoke=a.smoke))
    c.optim.lr = 6e-4
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.optim.warmup_steps = 200
    c.optim.min_lr_ratio = 0.1
    c.eval.splits = ("validation",)
    c.eval.batch_size = 64
    c.eval.num_batches = -1
    c.checkpoint.best_metric = "validation/loss"
    c.checkpoint.best_mode = "min"

    if a.smoke:
        c.data.update(dict(batch_size=4, seq_len=64, max_documents=20, num_threads=1))
        c.eval.batch_size = 4
        common.smoke_schedule(c)
    return c.lock()
