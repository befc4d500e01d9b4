"""The torch-free reader of torch.save archives, against files written by torch itself."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ssm_jax.interop import read_torch_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
TENSORS_BIN = FIXTURES / "torch_zip" / "tensors.bin"


def test_every_layout_matches_torch_numpy():
    """Views (transpose, offset window, strides), shared storage, Parameter, all dtypes, 0-d, empty."""
    got = read_torch_state_dict(TENSORS_BIN)
    want = np.load(FIXTURES / "torch_zip" / "tensors.npz")
    assert sorted(got) == sorted(want.files)
    for name in want.files:
        w = want[name]
        g = got[name]
        assert g.shape == w.shape, name
        if name == "bfloat16":
            assert g.dtype.name == "bfloat16"
            g = g.astype(np.float32)  # bf16 -> fp32 is exact, as torch's .float() was
        else:
            assert g.dtype == w.dtype, name
        np.testing.assert_array_equal(g, w, err_msg=name)
    # Tensors that shared a storage come back as independent, writable copies.
    got["matrix"][0, 0] = 1e9
    assert got["transposed"][0, 0] != 1e9


def test_tied_state_dict_from_torch_save():
    sd = read_torch_state_dict(FIXTURES / "mamba_ssm_mamba1" / "pytorch_model.bin")
    np.testing.assert_array_equal(sd["lm_head.weight"], sd["backbone.embedding.weight"])
    assert sd["backbone.layers.1.mixer.conv1d.weight"].shape == (32, 1, 4)


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy the zip ``src`` to ``dst`` with ``edit(name, data) -> data | None`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def test_truncated_storage_is_refused(tmp_path):
    bad = tmp_path / "bad.bin"
    _rewrite(TENSORS_BIN, bad, lambda name, data: data[:-4] if "/data/" in name else data)
    with pytest.raises(pickle.UnpicklingError, match="bytes; expected"):
        read_torch_state_dict(bad)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_globals_other_than_tensors_are_refused(tmp_path):
    """A pickle that would call os.system on load names the global instead of running it."""
    bad = tmp_path / "exploit.bin"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"references (posix|os|nt)\.system"):
        read_torch_state_dict(bad)


def test_not_a_zip_archive(tmp_path):
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ValueError, match="not a zip archive.*torch < 1.6"):
        read_torch_state_dict(legacy)


def test_not_a_state_dict(tmp_path):
    bad = tmp_path / "list.bin"
    buf = io.BytesIO()
    pickle.dump([1, 2], buf, protocol=2)
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(ValueError, match="holds a list; expected a state dict"):
        read_torch_state_dict(bad)
