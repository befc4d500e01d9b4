"""Parity with the PyTorch reference models, and save -> load round trips.

The fixtures (``fixtures/<name>/``: config.json, weights, ``expected.npz``) were written by
``make_fixtures.py``: random transformers / mamba_ssm-layout checkpoints and the float32 logits
that PyTorch computed from them. ``fixtures/saved/<name>`` is what ``save_hf_checkpoint`` wrote
from those checkpoints and transformers then loaded, reproducing the same logits.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from ssm_jax.interop import load_hf_checkpoint, read_state_dict, save_hf_checkpoint
from ssm_jax.models import LanguageModel, LanguageModelConfig, Mamba2Config, MambaConfig
from tests.numerics import assert_close

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINTS = ("hf_mamba", "hf_mamba_tied_bin", "hf_mamba2", "hf_mamba2_tied", "mamba_ssm_mamba1", "mamba_ssm_mamba2_mlp")
RESAVED = ("hf_mamba", "hf_mamba_tied_bin", "hf_mamba2", "hf_mamba2_tied", "mamba_ssm_mamba1")


@functools.cache
def _loaded(name: str) -> LanguageModel:
    return load_hf_checkpoint(FIXTURES / name)


@functools.cache
def _expected(name: str) -> tuple[np.ndarray, np.ndarray]:
    e = np.load(FIXTURES / name / "expected.npz")
    return e["input_ids"], e["logits"]


def _resolved(config: LanguageModelConfig) -> LanguageModelConfig:
    """``dt_rank="auto"`` spelled out (transformers stores the number)."""
    return config.replace(mamba=config.mamba.replace(dt_rank=config.mamba.resolved_dt_rank(config.d_model)))


def _params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_logits_match_pytorch(name):
    model = _loaded(name)
    ids, want = _expected(name)
    assert_close(model(jnp.asarray(ids)), want, name=f"{name} logits")


def test_checkpoint_facts():
    """Layouts that the logits alone would not show: vocabulary padding, ties, groups, MLP width."""
    m = _loaded("mamba_ssm_mamba1")  # 37 tokens padded to 40 rows by mamba_ssm, tied
    assert (m.config.vocab_size, m.embedding.embedding.shape, m.lm_head) == (37, (40, 16), None)
    m = _loaded("mamba_ssm_mamba2_mlp")  # d_intermediate=100 -> GatedMLP width 128, untied
    assert (m.config.d_intermediate, m.lm_head.kernel.shape) == (128, (16, 40))
    m = _loaded("hf_mamba2")  # transformers does not pad
    assert (m.config.mamba2.ngroups, m.embedding.embedding.shape) == (2, (37, 16))


def test_vocab_padding_on_load():
    """A padded table has zero rows past the vocabulary and gives the same logits."""
    model = load_hf_checkpoint(FIXTURES / "hf_mamba2_tied", pad_vocab_size_multiple=16)
    table = np.asarray(model.embedding.embedding[...])
    assert table.shape == (48, 16)
    np.testing.assert_array_equal(table[:37], np.asarray(_loaded("hf_mamba2_tied").embedding.embedding[...]))
    np.testing.assert_array_equal(table[37:], 0.0)
    ids, want = _expected("hf_mamba2_tied")
    assert_close(model(jnp.asarray(ids)), want, name="padded hf_mamba2_tied logits")


def test_bfloat16_compute():
    ids, want = _expected("hf_mamba2")
    model = load_hf_checkpoint(FIXTURES / "hf_mamba2", dtype="bfloat16")
    assert model.embedding.embedding[...].dtype == jnp.float32  # parameters stay float32
    assert_close(model(jnp.asarray(ids)), want, tol=3e-2, name="bf16 logits")


@pytest.mark.parametrize("name", RESAVED)
def test_save_writes_the_files_transformers_loaded(name, tmp_path):
    """``save_hf_checkpoint`` writes exactly ``fixtures/saved/<name>`` (loaded by transformers in
    make_fixtures.py with the reference logits), and loading it back gives identical params and logits."""
    model = _loaded(name)
    save_hf_checkpoint(model, tmp_path)
    verified = FIXTURES / "saved" / name
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((verified / "config.json").read_text())
    got, want = load_file(tmp_path / "model.safetensors"), load_file(verified / "model.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)

    back = load_hf_checkpoint(tmp_path, pad_vocab_size_multiple=model.config.pad_vocab_size_multiple)
    assert _resolved(back.config) == _resolved(model.config)
    p0, p1 = _params(model), _params(back)
    assert p0.keys() == p1.keys()
    v = model.config.vocab_size
    for path in p0:
        a, b = p0[path], p1[path]
        if path[0] == "embedding":
            a, b = a[:v], b[:v]  # rows past the vocabulary are not saved (transformers has none)
        elif path[0] == "lm_head":
            a, b = a[:, :v], b[:, :v]
        np.testing.assert_array_equal(b, a, err_msg=str(path))
    ids, _ = _expected(name)
    np.testing.assert_array_equal(np.asarray(back(jnp.asarray(ids))), np.asarray(model(jnp.asarray(ids))))


def test_round_trip_of_a_native_model(tmp_path):
    """A model built here (padded vocabulary, biases, no conv bias, untied) survives save -> load.

    (Mixer sizes and input shape as in hf_mamba2, so the compiled scans are reused.)"""
    config = LanguageModelConfig(
        vocab_size=50, d_model=16, n_layers=2, mixer="mamba2", tie_embeddings=False,
        mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=2, chunk_size=4, bias=True, conv_bias=False),
    )
    model = LanguageModel(config, rngs=nnx.Rngs(3))
    save_hf_checkpoint(model, tmp_path, extra_config={"eos_token_id": 7})
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 7
    back = load_hf_checkpoint(tmp_path, pad_vocab_size_multiple=8)
    assert back.config == config
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 11)))
    np.testing.assert_array_equal(np.asarray(back(ids)), np.asarray(model(ids)))


def test_save_then_load_gives_an_equal_config(tmp_path):
    """Issue 19: the round trip turned pad_vocab_size_multiple 8 into 1 and dt_rank 'auto' into 2.
    The fields transformers has no key for travel under config.json's "ssm_jax"."""
    mamba = LanguageModelConfig(vocab_size=50, d_model=32, n_layers=2, mixer="mamba", mamba=MambaConfig(d_state=4))
    mamba2 = LanguageModelConfig(vocab_size=50, d_model=16, n_layers=2, mixer="mamba2", dtype="bfloat16",
                                 mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=2, chunk_size=4, impl="xla",
                                                     A_init_range=(2.0, 4.0)))
    for i, config in enumerate((mamba, mamba2)):
        model = LanguageModel(config, rngs=nnx.Rngs(0))
        save_hf_checkpoint(model, tmp_path / str(i))
        back = load_hf_checkpoint(tmp_path / str(i))
        assert back.config == config, (back.config, config)
        ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (1, 5)))
        np.testing.assert_array_equal(np.asarray(back(ids)), np.asarray(model(ids)))
    saved = json.loads((tmp_path / "0" / "config.json").read_text())
    assert saved["ssm_jax"] == {"pad_vocab_size_multiple": 8, "mamba": {"dt_rank": "auto"}}
    assert saved["time_step_rank"] == 2  # transformers still reads the resolved number
    # The loader's own arguments still win.
    assert load_hf_checkpoint(tmp_path / "1", dtype="float32", impl="scan").config == mamba2.replace(
        dtype="float32", mamba2=mamba2.mamba2.replace(impl="scan"))
    # A file edited after saving contradicts its "ssm_jax" fields: refused, naming the keys.
    (tmp_path / "0" / "config.json").write_text(json.dumps({**saved, "hidden_size": 48}))
    with pytest.raises(ValueError, match=r"`ssm_jax` contradicts the file's transformers fields \['time_step_rank'\]"):
        load_hf_checkpoint(tmp_path / "0")
    # A fixture from transformers itself has no "ssm_jax": loaded as before.
    assert "ssm_jax" not in json.loads((FIXTURES / "saved" / "hf_mamba" / "config.json").read_text())


def test_save_refuses_what_transformers_cannot_express(tmp_path):
    with pytest.raises(ValueError, match=r"save_hf_checkpoint: `d_intermediate`=128 is not supported"):
        save_hf_checkpoint(_loaded("mamba_ssm_mamba2_mlp"), tmp_path)
    with pytest.raises(ValueError, match=r"`extra_config` keys \['state_size'\] are not allowed"):
        save_hf_checkpoint(_loaded("hf_mamba"), tmp_path, extra_config={"state_size": 3})
    with pytest.raises(TypeError, match="must be an ssm_jax LanguageModel"):
        save_hf_checkpoint(object(), tmp_path)


def _copy_with(tmp_path: Path, name: str, edit) -> Path:
    """Copy safetensors fixture ``name`` to ``tmp_path`` with ``edit(tensors)`` applied."""
    shutil.copy(FIXTURES / name / "config.json", tmp_path / "config.json")
    tensors = load_file(FIXTURES / name / "model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    """Issue 19: special token ids a model cannot embed or emit are named on load and save."""
    shutil.copytree(FIXTURES / "hf_mamba", tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    for key, value, shown in (("eos_token_id", 37, "[37]"), ("pad_token_id", -1, "[-1]"), ("bos_token_id", [0, 40], "[40]")):
        (tmp_path / "c" / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ValueError, match=rf"load_hf_checkpoint: config.json `{key}`={re.escape(repr(value))} is not a "
                                             rf"token id of this model: {re.escape(shown)} outside \[0, vocab_size=37\)"):
            load_hf_checkpoint(tmp_path / "c")
    with pytest.raises(ValueError, match=r"save_hf_checkpoint: extra_config: config.json `eos_token_id`=99 is not a token id"):
        save_hf_checkpoint(_loaded("hf_mamba"), tmp_path / "s", extra_config={"eos_token_id": 99})


def test_sharded_checkpoint(tmp_path):
    tensors = load_file(FIXTURES / "hf_mamba2" / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / file, metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(FIXTURES / "hf_mamba2" / "config.json", tmp_path / "config.json")
    assert read_state_dict(tmp_path).keys() == tensors.keys()
    a, b = _params(_loaded("hf_mamba2")), _params(load_hf_checkpoint(tmp_path))
    for path in a:
        np.testing.assert_array_equal(b[path], a[path], err_msg=str(path))


def test_safetensors_reader_matches_the_safetensors_package():
    got = read_state_dict(FIXTURES / "hf_mamba2")
    want = load_file(FIXTURES / "hf_mamba2" / "model.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_bad_safetensors_file(tmp_path):
    shutil.copy(FIXTURES / "hf_mamba" / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        load_hf_checkpoint(tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(ValueError, match=r"tensor `w` .* data_offsets \[0, 8\] that do not fit shape \[4\]"):
        load_hf_checkpoint(tmp_path)


def test_bfloat16_checkpoint(tmp_path):
    """A bf16 checkpoint loads into float32 parameters holding the bf16 values."""
    import ml_dtypes

    def to_bf16(t):
        for k in t:
            t[k] = t[k].astype(ml_dtypes.bfloat16)

    model = load_hf_checkpoint(_copy_with(tmp_path, "hf_mamba", to_bf16))
    got = _params(model)[("layers", 1, "mixer", "x_proj", "kernel")]
    want = load_file(FIXTURES / "hf_mamba" / "model.safetensors")["backbone.layers.1.mixer.x_proj.weight"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16).astype(np.float32).T)


@pytest.mark.parametrize("edit, error, message", [
    (lambda t: t.pop("backbone.layers.1.mixer.D"), ValueError, r"missing tensors \['backbone.layers.1.mixer.D'\]"),
    (lambda t: t.update(extra=np.zeros(3, np.float32)), ValueError, r"unexpected tensors \['extra'\]"),
    (lambda t: t.update({"backbone.layers.0.mixer.x_proj.weight": np.zeros((5, 32), np.float32)}), ValueError,
     r"`backbone.layers.0.mixer.x_proj.weight` has shape \(5, 32\); config.json implies \(11, 32\)"),
    (lambda t: t.update({"backbone.layers.0.mixer.conv1d.weight": np.zeros((32, 4), np.float32)}), ValueError,
     r"expected a depthwise Conv1d weight \(c, 1, k\)"),
    (lambda t: t.update({"lm_head.weight": np.zeros((36, 16), np.float32)}), ValueError,
     r"`lm_head.weight` has shape \(36, 16\); expected \(37, 16\)"),
    (lambda t: t.update({"backbone.norm_f.weight": np.zeros(16, np.int32)}), ValueError, r"has dtype int32"),
])
def test_mismatched_tensors_are_named(tmp_path, edit, error, message):
    with pytest.raises(error, match=message):
        load_hf_checkpoint(_copy_with(tmp_path, "hf_mamba", edit))


def test_tied_head_must_equal_the_embedding(tmp_path):
    def add_head(t):
        t["lm_head.weight"] = t["backbone.embeddings.weight"] + 1.0

    with pytest.raises(ValueError, match="ties the embeddings, but `lm_head.weight` differs"):
        load_hf_checkpoint(_copy_with(tmp_path, "hf_mamba2_tied", add_head))


def test_layer_errors_are_prefixed(tmp_path):
    config = json.loads((FIXTURES / "hf_mamba2" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_groups": 3}))
    shutil.copy(FIXTURES / "hf_mamba2" / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"load_hf_checkpoint: config.json describes a model .* `ngroups`=3 must divide"):
        load_hf_checkpoint(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_checkpoint(tmp_path)
    shutil.copy(FIXTURES / "hf_mamba" / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights in"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["hf_mamba", "mamba_ssm_mamba2_mlp"])
def test_scanned_model_loads_and_saves_the_per_layer_tensors(name, tmp_path):
    """``scan_layers=True``: the per-layer reference tensors are stacked on load (same logits as
    PyTorch) and unstacked on save (the same files as the unscanned model writes); the saved
    config keeps ``scan_layers``, so loading it back gives the scanned model again."""
    model = _loaded(name)
    scanned = load_hf_checkpoint(FIXTURES / name, scan_layers=True, remat="full")
    assert scanned.config == model.config.replace(scan_layers=True, remat="full")
    assert scanned.layers[0].mixer.in_proj.kernel.shape[0] == model.config.n_layers
    ids, want = _expected(name)
    assert_close(scanned(jnp.asarray(ids)), want, name=f"{name} logits, scanned")
    if name not in RESAVED:
        return  # an MLP block has no transformers layout
    save_hf_checkpoint(model, tmp_path / "loop")
    save_hf_checkpoint(scanned, tmp_path / "scan")
    got, want = load_file(tmp_path / "scan" / "model.safetensors"), load_file(tmp_path / "loop" / "model.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    saved = json.loads((tmp_path / "scan" / "config.json").read_text())
    assert saved["ssm_jax"]["scan_layers"] is True and saved["ssm_jax"]["remat"] == "full"
    back = load_hf_checkpoint(tmp_path / "scan", pad_vocab_size_multiple=model.config.pad_vocab_size_multiple)
    assert _resolved(back.config) == _resolved(scanned.config)
    p0, p1 = _params(scanned), _params(back)
    assert p0.keys() == p1.keys()
    for path in p0:
        if path[0] == "layers":
            np.testing.assert_array_equal(p1[path], p0[path], err_msg=str(path))
    assert not load_hf_checkpoint(tmp_path / "scan", scan_layers=False).config.scan_layers
