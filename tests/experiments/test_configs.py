"""Config modules: loading, command-line overrides, mistyped keys; one real-model run."""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from experiments import run, tasks, train
from experiments.configs import common
from experiments.configs.synthetic import mixers
from ssm_jax.models import LanguageModelConfig
from tests.experiments.conftest import REPO, losses

SYNTHETIC = sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "synthetic", "*.py")))
SYNTHETIC = [p for p in SYNTHETIC if os.path.basename(p) not in ("__init__.py", "mixers.py")]


def _load(path, arg=None):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(arg)


@pytest.mark.parametrize("path", SYNTHETIC, ids=os.path.basename)
def test_synthetic_configs_build_for_every_causal_mixer(path):
    module, _ = _load(path)
    assert "python -m experiments.run" in module.__doc__ or "make demo" in module.__doc__
    args = [""] if os.path.basename(path) == "demo.py" else [f"mixer={m}" for m in mixers.CAUSAL]
    for arg in args:
        for smoke in (False, True):
            c = module.get_config(",".join(a for a in (arg, "smoke" if smoke else "") if a) or None)
            assert c.is_locked
            cfg = tasks.of(c.data).model_config(c.model.to_dict())
            assert isinstance(cfg, LanguageModelConfig) and cfg.vocab_size == c.data.vocab_size
            if smoke:
                assert c.total_steps <= 10
    if os.path.basename(path) != "demo.py":
        with pytest.raises(ValueError, match="hydra.*bidirectional"):
            module.get_config("mixer=hydra")


def test_paper_scale_defaults():
    _, sc = _load(os.path.join(REPO, "experiments/configs/synthetic/selective_copying.py"))
    assert (sc.data.seq_len, sc.data.vocab_size, sc.data.num_tokens, sc.model.d_model, sc.model.n_layers) == (4096, 16, 16, 64, 2)
    _, ih = _load(os.path.join(REPO, "experiments/configs/synthetic/induction_heads.py"))
    assert (ih.data.seq_len, ih.data.vocab_size) == (256, 16)
    longest = ih.eval.extra["len_1048576"]
    assert longest.data.seq_len == 2**20 and longest.forward == "chunked"
    # The Mamba paper's App. E.1 optimizers: Adam, constant lr, no weight decay (the cosine / wd 0.1
    # defaults these configs had held selective copying at chance and cost length extrapolation).
    for c, lr, batch, steps in ((sc, 1e-4, 64, 400_000), (ih, 1e-3, 8, 204_800)):
        assert (c.optim.lr, c.optim.schedule, c.optim.warmup_steps, c.optim.weight_decay) == (lr, "constant", 0, 0.0)
        assert (c.data.batch_size, c.total_steps, c.model.mamba.d_state, c.model.d_intermediate) == (batch, steps, 16, 0)
    _, mq = _load(os.path.join(REPO, "experiments/configs/synthetic/mqar.py"))
    assert (mq.optim.weight_decay, mq.optim.schedule, mq.data.batch_size, mq.total_steps) == (0.1, "cosine", 256, 32 * 703)
    assert mq.early_stop.metric == "validation/accuracy" and mq.data.train_weights == (100_000, 20_000, 20_000, 20_000, 20_000)
    assert mq.data.vocab_size == 8192 and mq.data.train_settings[-1] == (256, 64)
    assert mq.eval.extra["L1024_kv256"].data.eval_settings == ((1024, 256),)


def test_command_line_overrides_and_mistyped_keys():
    path = os.path.join(REPO, "experiments/configs/synthetic/demo.py")
    argv = ["prog", f"--config={path}:smoke", "--config.optim.lr=0.5", "--config.data.seq_len=48"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    assert fv.config.optim.lr == 0.5 and fv.config.data.seq_len == 48 and fv.config.total_steps == 4
    run.check_overrides(argv)  # valid keys pass
    with pytest.raises(flags.IllegalFlagValueError, match=r"optim has no key 'lrr'\. Did you mean --config\.optim\.lr\?.*weight_decay"):
        run.check_overrides(["prog", f"--config={path}", "--config.optim.lrr=1"])
    with pytest.raises(flags.IllegalFlagValueError, match=r"the config has no key 'totl_steps'.*total_steps"):
        run.check_overrides(["prog", f"--config={path}", "--config.totl_steps=1"])
    # In a notebook: the locked config refuses new keys, naming the present ones.
    c = _load(path)[1]
    with pytest.raises(AttributeError, match="lrr.*Did you mean"):
        c.optim.lrr = 1.0


def test_parse_arg_and_model_config_errors():
    a = common.parse_arg("mixer=s4,smoke,d_model=32", mixer="mamba", smoke=False, d_model=64)
    assert (a.mixer, a.smoke, a.d_model) == ("s4", True, 32)
    with pytest.raises(ValueError, match=r"'mixr' is not one of \['mixer'\]"):
        common.parse_arg("mixr=s4", mixer="mamba")
    with pytest.raises(ValueError, match=r"'d_model' takes int values \(default 64\); got 'abc'"):
        common.parse_arg("d_model=abc", d_model=64)
    with pytest.raises(ValueError, match="unknown mamba field.*d_stat"):
        common.model_config("lm", mixer="mamba", vocab_size=8, d_model=8, n_layers=1, mamba=dict(d_stat=4))
    with pytest.raises(ValueError, match="bidirectional"):
        common.model_config("lm", mixer="hydra", vocab_size=8, d_model=8, n_layers=1)


def test_pathfinder_size_arg_is_parsed_with_the_others():
    """``size=abc`` gave a bare int() error, and a misspelled arg listed the valid ones without ``size``."""
    from experiments.configs import load

    assert load("experiments/configs/lra/pathfinder.py:size=64,mixer=s4d,smoke").data.name == "lra_pathfinder64"
    assert load("experiments/configs/lra/pathfinder.py").data.name == "lra_pathfinder32"
    for arg, match in (("size=abc", r"'size' takes int values \(default 32\); got 'abc'"),
                       ("sizee=64", r"'sizee' is not one of \['data', 'mixer', 'size', 'smoke'\]"),
                       ("size=48", r"'size' must be one of \(32, 64, 128, 256\); got 48")):
        with pytest.raises(ValueError, match=match):
            load(f"experiments/configs/lra/pathfinder.py:{arg}")


def test_mqar_sweep_args_name_what_is_wrong():
    from experiments.configs.synthetic import mqar

    names = [n for n, _, _ in mqar.get_sweep("widths=64+128,mixers=mamba2,lrs=0.01,seeds=0+1")]
    assert names == ["mamba2_d64_lr0.01_s0", "mamba2_d64_lr0.01_s1", "mamba2_d128_lr0.01_s0", "mamba2_d128_lr0.01_s1"]
    with pytest.raises(ValueError, match=r"'widths' takes '\+'-separated int values; got '64\+abc'"):
        mqar.get_sweep("widths=64+abc")
    with pytest.raises(ValueError, match=r"'lrs' takes '\+'-separated float values"):
        mqar.get_sweep("lrs=1e-3+fast")
    with pytest.raises(ValueError, match=r"'seeds' takes '\+'-separated int values; got ''"):
        mqar.get_sweep("seeds=")  # an empty axis would expand to no runs at all
    with pytest.raises(ValueError, match="mqar: mixer must be one of"):
        mqar.get_sweep("mixers=mamba+mamab")


def _every_config():
    """(name, config) for every config module, every mixer / arch, full and smoke."""
    from experiments.configs.lra import base as lra_base
    from experiments.configs.lm import gpt2_small

    for path in SYNTHETIC:
        module, _ = _load(path)
        args = [""] if os.path.basename(path) == "demo.py" else [f"mixer={m}" for m in mixers.CAUSAL]
        for arg in args:
            for smoke in ("", "smoke"):
                spec = ",".join(a for a in (arg, smoke) if a)
                yield f"{os.path.basename(path)}:{spec}", module.get_config(spec or None)
    for task in ("listops", "text", "retrieval", "image", "pathfinder", "pathx"):
        module, _ = _load(os.path.join(REPO, f"experiments/configs/lra/{task}.py"))
        for mixer in lra_base.MIXERS:
            for smoke in ("", ",smoke"):
                yield f"lra/{task}:mixer={mixer}{smoke}", module.get_config(f"mixer={mixer}{smoke}")
    for arch in gpt2_small.ARCHS:
        for smoke in ("", ",smoke"):
            yield f"lm/gpt2_small:arch={arch}{smoke}", gpt2_small.get_config(f"arch={arch}{smoke}")


def test_every_config_passes_the_trainers_checks():
    from experiments import config_checks

    names = []
    for name, c in _every_config():
        task = config_checks.check_experiment(c)
        task.model_config(c.model.to_dict())
        names.append(name)
    assert len(names) > 50, names


@pytest.mark.parametrize("key, value, match", [
    ("eval.extra.odd_batch.forward", "bogus", r"config.eval.extra.odd_batch.forward must be one of \('parallel', 'chunked'\); got 'bogus'"),
    ("eval.extra.odd_batch.chunk_size", 0, r"config.eval.extra.odd_batch.chunk_size must be a positive int; got 0"),
    ("eval.extra.odd_batch.num_batches", 0, r"num_batches must be -1 \(the whole split\) or a positive int; got 0"),
    ("eval.batch_size", 0, r"config.eval.batch_size must be a positive int; got 0"),
    ("log_every", 0, r"config.log_every must be a positive int; got 0"),
    ("optim.lr", -1.0, r"config.optim.lr must be a float in \(0.0, inf\); got -1.0"),
    ("optim.schedule", "linear", r"config.optim.schedule must be one of \('cosine', 'constant'\); got 'linear'"),
    ("optim.b2", 1.0, r"config.optim.b2 must be a float in \[0.0, 1.0\); got 1.0"),
    ("early_stop.mode", "up", r"config.early_stop.mode must be one of \('max', 'min'\); got 'up'"),
    ("checkpoint.best_metric", "test/accuracy", r"config.checkpoint.best_metric must be \"\" or one of \['validation/loss'.*got 'test/accuracy'"),
    ("checkpoint.keep", 0, r"config.checkpoint.keep must be a positive int; got 0"),
    ("data.batch_size", -8, r"config.data.batch_size must be a positive int; got -8"),
    ("optim.ssm_param_groups", {"Z": {"lr": 1.0}}, r"config.optim.ssm_param_groups must be keyed by roles among \['A', 'B', 'C', 'D', 'dt'\]; got 'Z'"),
    ("optim.ssm_param_groups", {"A": {"lr": -1.0}}, r"config.optim.ssm_param_groups.A.lr must be None \(optim.lr\) or a positive float; got -1.0"),
    ("optim.ssm_param_groups", {"A": {"rate": 1.0}}, r"config.optim.ssm_param_groups.A must be a dict with keys lr, weight_decay and/or decay_vectors"),
    ("optim.ssm_param_groups", {"D": {"decay_vectors": 1}}, r"config.optim.ssm_param_groups.D.decay_vectors must be a bool; got 1"),
])
def test_bad_experiment_settings_fail_at_setup_naming_the_key(key, value, match, tmp_path):
    """Checked before anything is built or written (issue 19): an eval.extra entry is otherwise
    first read after the last step."""
    from tests.experiments.conftest import tiny_config

    c = tiny_config()
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    with c.ignore_type():
        node[leaf] = value
    w = tmp_path / "w"
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(c, str(w))
    assert not w.exists()  # nothing written: no config.json, no checkpoints


def test_extra_eval_data_overrides_must_name_data_keys(tmp_path):
    from tests.experiments.conftest import tiny_config

    c = tiny_config()
    c.eval.extra.odd_batch.data = ml_collections.ConfigDict(dict(seq_length=64))  # data has seq_len
    with pytest.raises(ValueError, match=r"config.eval.extra.odd_batch.data must be overrides of existing config.data keys .*\['seq_length'\] are not keys"):
        train.train_and_evaluate(c, str(tmp_path))


def test_bad_model_fields_fail_at_setup_naming_the_field(tmp_path):
    _, c = _load(os.path.join(REPO, "experiments/configs/synthetic/induction_heads.py"), "mixer=mamba,smoke")
    c.model.mamba.d_state = -4  # --config.model.mamba.d_state=-4 (was a broadcasting error)
    with pytest.raises(ValueError, match=r"config.model: MambaConfig: `d_state` must be a positive int; got -4"):
        train.train_and_evaluate(c, str(tmp_path / "a"))
    c.model.mamba.d_state, c.model.mamba.d_conv = 4, 0  # was "index can't contain negative values"
    with pytest.raises(ValueError, match=r"MambaConfig: `d_conv` must be a positive int; got 0"):
        train.train_and_evaluate(c, str(tmp_path / "b"))


def test_real_model_trains_and_chunked_eval_equals_parallel(tmp_path):
    """A real ssm_jax Mamba LM through the trainer; the chunked (recurrent-cache) evaluation of
    long sequences gives the same metrics as the parallel forward on the same data."""
    _, c = _load(os.path.join(REPO, "experiments/configs/synthetic/induction_heads.py"), "mixer=mamba,smoke")
    c.unlock()
    c.total_steps = 2
    c.eval.splits = ()
    c.eval.extra = ml_collections.ConfigDict()
    data = dict(seq_len=48, eval_examples=6)  # 3 chunks of 16: one compiled chunk shape
    c.eval.extra.parallel = common.extra_eval(split="test", data=data, batch_size=3, num_batches=-1)
    c.eval.extra.chunked = common.extra_eval(split="test", data=data, batch_size=3, num_batches=-1, forward="chunked", chunk_size=16)
    c.checkpoint.best_metric = ""
    c.lock()
    m = train.train_and_evaluate(c, str(tmp_path / "fp32"))
    assert m["step"] == 2 and np.isfinite(m["train/loss"])
    for k in ("loss", "accuracy", "seq_accuracy"):
        np.testing.assert_allclose(m[f"chunked/{k}"], m[f"parallel/{k}"], rtol=1e-5, err_msg=k)

    # bf16 compute, fp32 parameters: the same first steps up to bf16 rounding.
    c.unlock()
    c.model.dtype = "bfloat16"
    c.eval.extra = ml_collections.ConfigDict()
    c.lock()
    train.train_and_evaluate(c, str(tmp_path / "bf16"))
    bf16, fp32 = losses(str(tmp_path / "bf16")), losses(str(tmp_path / "fp32"))
    assert sorted(bf16) == sorted(fp32) == [1, 2]
    np.testing.assert_allclose([bf16[1], bf16[2]], [fp32[1], fp32[2]], rtol=2e-2)
    assert bf16[1] != fp32[1]  # the compute dtype did change
    model, _, _ = train.load_model(str(tmp_path / "bf16"))
    dtypes = {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {np.dtype("float32")}


def test_text_lm_logs_bits_per_byte(tmp_path):
    """Language modeling on text logs bits per byte; with the byte tokenizer every scored token is
    one byte, so it equals the loss in bits."""
    _, c = _load(os.path.join(REPO, "experiments/configs/lm/gpt2_small.py"), "arch=mamba2,smoke")
    c.unlock()
    c.total_steps = 1
    c.lock()
    m = train.train_and_evaluate(c, str(tmp_path / "lm"))
    assert np.isfinite(m["validation/loss"])
    np.testing.assert_allclose(m["validation/bits_per_byte"], m["validation/loss"] / np.log(2.0), rtol=1e-6)


def test_lm_configs_scan_their_layers_and_the_checkpoint_restores_the_stacked_params(tmp_path):
    """gpt2_small turns ``scan_layers`` on; the trainer's Orbax checkpoint of the stacked
    parameters restores into the model ``load_model`` builds, which reproduces the run's loss."""
    import jax.numpy as jnp

    from experiments.data import registry

    _, c = _load(os.path.join(REPO, "experiments/configs/lm/gpt2_small.py"), "arch=mamba,smoke")
    assert c.model.scan_layers and c.model.remat == "none"
    c.unlock()
    c.total_steps = 2
    c.lock()
    m = train.train_and_evaluate(c, str(tmp_path / "lm"))
    model, config, step = train.load_model(str(tmp_path / "lm"))
    assert step == 2 and model.config.scan_layers
    assert model.layers[0].mixer.in_proj.kernel.shape == (2, 32, 128)  # 2 layers stacked
    # Restored onto the device (NumPy leaves were compiled into the scan as constants and crashed XLA).
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(model)))
    # The run's validation loss is over its first `eval.num_batches` batches (1 in smoke runs).
    assert config.eval.num_batches == 1
    task = tasks.of(config.data, "validation")
    batch = next(iter(registry.build(config.data, split="validation", seed=config.seed,
                                      global_batch_size=config.eval.batch_size)))
    sums = nnx.jit(task.sums, static_argnums=2)(model, {k: jnp.asarray(v) for k, v in batch.items()},
                                                 config.model.vocab_size)
    np.testing.assert_allclose(task.finalize(jax.device_get(sums))["loss"], m["validation/loss"], rtol=1e-4)


def test_device_out_of_memory_errors_say_what_to_do(monkeypatch):
    # What the second JAX process on a GPU printed when the first held 75% of its memory.
    blas = "INTERNAL: All backends failed to find supported configs:\n - INTERNAL: BlasLt is unavailable"
    hint = run.device_memory_hint(blas, environ={})
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" in hint and "--config.data.batch_size" in hint
    assert "set here" not in hint
    oom = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 59.38GiB"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.3" in run.device_memory_hint(oom, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3"})
    assert run.device_memory_hint("INVALID_ARGUMENT: shapes (3,) and (4,) differ", environ={}) is None

    def fails(config, workdir):
        raise jax.errors.JaxRuntimeError(blas)

    monkeypatch.setattr(train, "train_and_evaluate", fails)
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        run.train_explained(None, "unused")
    assert any("XLA_PYTHON_CLIENT_MEM_FRACTION" in n for n in info.value.__notes__)

    def wrong(config, workdir):
        raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shapes")

    monkeypatch.setattr(train, "train_and_evaluate", wrong)
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        run.train_explained(None, "unused")
    assert not getattr(info.value, "__notes__", None)
