"""Every LRA and LM config: the full config validates; its smoke variant builds the model and a batch."""

from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs.lra import base as lra_base
from experiments.data import registry
from ssm_jax.models import LanguageModel, LanguageModelConfig, SequenceClassifier, SequenceClassifierConfig
from ssm_jax.models.counting import param_count

LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
LM_ARCHS = ("mamba", "mamba2", "s4d", "transformer", "hybrid")
# state-spaces/s4 configs/experiment/lra/s4-*.yaml: model.norm is batch everywhere; model.prenorm
# is false on ListOps and CIFAR only.
S4_PRENORM = {"listops": False, "text": True, "retrieval": True, "image": False, "pathfinder": True, "pathx": True}
LM_MILLIONS = {"mamba": 129.2, "mamba2": 129.0, "s4d": 123.3, "transformer": 123.6, "hybrid": 123.4}  # the docstring's


def _n_params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("task", LRA_TASKS)
def test_lra_full_configs_validate(task):
    module = importlib.import_module(f"experiments.configs.lra.{task}")
    for mixer in lra_base.MIXERS:
        c = module.get_config(f"mixer={mixer}")
        cfg = SequenceClassifierConfig.from_dict(c.model.to_dict())
        p = lra_base.S4_PUBLISHED[task]
        assert (cfg.d_model, cfg.n_layers) == (p["d_model"], p["n_layers"])
        assert c.data.batch_size == p["batch_size"] and c.optim.lr == p["lr"] and c.total_steps == p["total_steps"]
        assert cfg.dual_encoder == (task == "retrieval")
        assert cfg.pooling == "mean" and cfg.dropout == p["dropout"]
        if mixer in ("s4", "s4d"):
            sub = cfg.mixer_config(mixer)
            assert sub.d_state == p["d_state"] and sub.bidirectional and sub.lr == p["ssm_lr"]
            assert (cfg.norm, cfg.prenorm) == ("batch", S4_PRENORM[task]) and c.optim.clip_norm == 0.0
            assert (sub.activation, sub.postact) == ("gelu", "glu")
            # configs/model/layer/s4.yaml: softplus dt; n_ssm 1 except on the Pathfinder tasks;
            # tied dropout on Image (the one task with dropout).
            assert sub.dt_transform == "softplus" and sub.n_ssm == (None if task in ("pathfinder", "pathx") else 1)
            assert sub.tie_dropout == cfg.tie_dropout == (task == "image")
            # Real-valued pixels through a linear encoder on the pixel tasks (state-spaces/s4's data).
            assert cfg.encoder == ("linear" if task in ("image", "pathfinder", "pathx") else "embed")
            if cfg.encoder == "linear":
                assert (cfg.pixel_mean, cfg.pixel_std) == lra_base.S4_PIXEL_NORM[task]
            # state-spaces/s4's layer.lr: {dt: null, A, B} on the token tasks, a number (dt, A, B, C) on
            # the pixel tasks; no weight decay on dt, A, B; C and D keep the optimizer's.
            at_ssm_lr = {"listops": "AB", "text": "AB", "retrieval": "AB"}.get(task, "dtABC")
            groups = c.optim.ssm_param_groups.to_dict()
            for role, hp in groups.items():
                assert hp["lr"] == (p["ssm_lr"] if role in at_ssm_lr and role != "D" else None), (role, hp)
                assert hp["weight_decay"] == (0.0 if role in ("dt", "A", "B") else None), (role, hp)
                assert hp.get("decay_vectors", False) == (role == "D"), (role, hp)  # s4's D is decayed
            assert set(groups) == {"dt", "A", "B", "C", "D"}
            smoke = SequenceClassifierConfig.from_dict(module.get_config(f"mixer={mixer},smoke").model.to_dict())
            assert (smoke.norm, smoke.prenorm) == (cfg.norm, cfg.prenorm)  # smoke runs the same block design
        else:  # their own blocks: pre-norm RMSNorm, clipped, one SSM group
            assert (cfg.norm, cfg.prenorm) == ("rms", True) and c.optim.clip_norm == 1.0
            assert not c.optim.ssm_param_groups and cfg.encoder == "embed"
    assert "S4D-LegS" in module.__doc__ and "python -m experiments.run" in module.__doc__
    assert f"configs/experiment/lra/s4-{p['file']}.yaml" in module.__doc__  # the docstring names its source
    with pytest.raises(ValueError, match="mixer must be one of"):
        module.get_config("mixer=rnn")


def _forward(model, batch, task):
    model.eval()
    if task == "retrieval":
        return model(batch["inputs1"], batch["inputs2"], mask1=batch["mask1"], mask2=batch["mask2"])
    return model(batch["inputs"], mask=batch["mask"])


@pytest.mark.parametrize("task", LRA_TASKS)
def test_lra_smoke_builds_model_and_batch(task, tmp_path):
    module = importlib.import_module(f"experiments.configs.lra.{task}")
    for i, mixer in enumerate(lra_base.MIXERS):
        c = module.get_config(f"mixer={mixer},smoke").unlock()
        c.data.data_dir = str(tmp_path)
        cfg = SequenceClassifierConfig.from_dict(c.model.to_dict())
        assert registry.get(c.data.name).TASK == ("retrieval" if task == "retrieval" else "classification")
        batch = next(iter(registry.build(c.data, split="train", seed=0, global_batch_size=c.data.batch_size)))
        key = "inputs1" if task == "retrieval" else "inputs"
        assert batch[key].shape == (c.data.batch_size, c.data.seq_len)
        assert batch[key].max() < cfg.vocab_size and batch["label"].max() < cfg.num_classes
        # Every model is built abstractly (shapes only); one per task, rotating the mixer so each
        # mixer runs once, is initialized for real and run forward (CPU budget).
        if mixer != lra_base.MIXERS[LRA_TASKS.index(task) % len(lra_base.MIXERS)]:
            abstract = nnx.eval_shape(lambda: SequenceClassifier(cfg, rngs=nnx.Rngs(0)))
            assert _n_params(abstract) == param_count(cfg), (task, mixer)
        else:
            model = SequenceClassifier(cfg, rngs=nnx.Rngs(0))
            logits = _forward(model, jax.tree.map(np.asarray, batch), task)
            assert logits.shape == (c.data.batch_size, cfg.num_classes)
            assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_lm_configs(arch):
    module = importlib.import_module("experiments.configs.lm.gpt2_small")
    full = LanguageModelConfig.from_dict(module.get_config(f"arch={arch}").model.to_dict())
    assert full.d_model == 768 and full.vocab_size == 258  # the byte tokenizer
    # The module docstring's sizes are at a 50,304 vocabulary; the byte tokenizer saves ~38.4M.
    at_50k = LanguageModelConfig.from_dict({**module.get_config(f"arch={arch}").model.to_dict(), "vocab_size": 50304})
    assert round(param_count(at_50k) / 1e6, 1) == LM_MILLIONS[arch], param_count(at_50k)
    assert f"{LM_MILLIONS[arch]}M" in module.__doc__
    assert round((param_count(at_50k) - param_count(full)) / 1e6, 1) == pytest.approx(38.4, abs=0.1)
    c = module.get_config(f"arch={arch},smoke")
    cfg = LanguageModelConfig.from_dict(c.model.to_dict())
    batch = next(iter(registry.build(c.data, split="validation", seed=0, global_batch_size=c.data.batch_size)))
    assert batch["inputs"].shape == (4, 64) and batch["inputs"].max() < cfg.vocab_size
    if arch not in ("hybrid", "s4d"):  # the LRA test runs the other mixers forward
        abstract = nnx.eval_shape(lambda: LanguageModel(cfg, rngs=nnx.Rngs(0)))
        assert _n_params(abstract) == param_count(cfg) and cfg.n_layers == 2
    else:  # mamba2 + attention, and S4D + MLP
        model = LanguageModel(cfg, rngs=nnx.Rngs(0))
        logits = model(batch["inputs"][:, :16], segment_ids=batch["segment_ids"][:, :16])
        assert logits.shape[:2] == (4, 16) and logits.shape[2] >= cfg.vocab_size
        assert np.all(np.isfinite(np.asarray(logits)))


def test_lra_smoke_honours_data_and_keeps_its_data_in_the_workdir(tmp_path):
    """Issue 19: `listops.py:mixer=s4,data=bogus,smoke` trained on generated data (exit 0), and
    smoke data went to a fixed /tmp/ssm_jax_lra_smoke outside the workdir."""
    import json
    import os

    from experiments import train

    module = importlib.import_module("experiments.configs.lra.listops")
    with pytest.raises(ValueError, match=r"lra/listops: data must be one of \['generated', 'release'\] .*; got 'bogus'"):
        module.get_config("mixer=s4,data=bogus,smoke")
    assert module.get_config("mixer=s4,data=release,smoke").data.tfds_config == "release"
    assert module.get_config("mixer=s4,smoke").data.tfds_config == "generated"
    assert module.get_config("mixer=s4").data.tfds_config == "release"
    c = module.get_config("mixer=s4d,smoke")
    assert c.data.data_dir == "{workdir}/lra_data"
    with pytest.raises(ValueError, match=r"data.data_dir='\{workdir\}/lra_data' holds '\{workdir\}'"):
        registry.build(c.data, split="train", seed=0, global_batch_size=4)  # outside the trainer: no literal folder
    c = c.unlock()
    c.total_steps = 1
    c.progress_bar = False
    w = str(tmp_path / "run")
    m = train.train_and_evaluate(c.lock(), w)
    assert m["step"] == 1 and np.isfinite(m["validation/loss"])
    assert os.path.isdir(os.path.join(w, "lra_data", "lra_listops", "generated_n8_4_4"))
    assert json.load(open(os.path.join(w, "config.json")))["data"]["data_dir"] == "{workdir}/lra_data"
