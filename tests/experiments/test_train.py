"""The trainer in-process on TinyLM: outputs, exact resume, gradient accumulation, config guard."""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct

import numpy as np
import pytest

from experiments import checkpointing, plot, train
from experiments.metrics import read_metrics
from tests.experiments.conftest import losses, tiny_config


def test_outputs_of_a_run(tiny_reference):
    w = tiny_reference
    train_records = read_metrics(w, "train")
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    for r in train_records:
        assert {"loss", "accuracy", "seq_accuracy", "perplexity", "bits_per_token", "tokens_per_sec", "lr"} <= set(r)
        assert np.isclose(r["perplexity"], np.exp(r["loss"]))
        assert np.isclose(r["bits_per_token"], r["loss"] / np.log(2))
        assert r["tokens_per_sec"] > 0 and 0 <= r["accuracy"] <= 1
    assert [r["step"] for r in read_metrics(w, "validation")] == [3, 6]
    assert [r["step"] for r in read_metrics(w, "odd_batch")] == [6]  # extra evals: at the end
    (events,) = glob.glob(os.path.join(w, "tensorboard", "events.out.tfevents.*"))
    scalars = _tensorboard_scalars(events)
    for r in train_records:
        assert np.isclose(scalars[("train/loss", r["step"])], r["loss"])
    assert np.isclose(scalars[("validation/accuracy", 6)], read_metrics(w, "validation")[-1]["accuracy"])
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["3", "6"]
    info = json.load(open(os.path.join(w, "run_info.json")))
    assert info["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1, "context": 1} and info["parameters"] == 8 * 16 + 16 + 16 * 16 + 16 * 8
    with open(os.path.join(w, "config.json")) as f:
        assert json.load(f)["total_steps"] == 6


def _tensorboard_scalars(path: str) -> dict[tuple[str, int], float]:
    """{(tag, step): value} read back from a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = {}
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            out[(v.tag, event.step)] = v.simple_value
    return out


def test_plot_writes_png(tiny_reference, tmp_path):
    out = plot.plot(tiny_reference, str(tmp_path / "curves.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out) > 10_000


def test_plot_gives_each_split_one_colour_in_every_panel(tiny_reference):
    # train has grad_norm alone; validation and odd_batch only have the evaluated metrics, so a
    # per-panel colour order would give train another colour in the grad_norm panel.
    fig = plot.figure(read_metrics(tiny_reference))
    colours: dict[str, set] = {}
    panels = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
            panels.setdefault(ax.get_title(), set()).add(line.get_label())
    assert panels["grad_norm"] == {"train"} and panels["loss"] == {"train", "validation", "odd_batch"}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({c.pop() for c in colours.values()}) == 3  # and the splits differ from each other


def test_plot_names_a_missing_run_directory(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"plot: .*nope does not exist; expected the --workdir of a run"):
        plot.plot(missing)
    with pytest.raises(FileNotFoundError, match=r"plot: .* has no metrics.jsonl"):
        plot.plot(str(tmp_path))
    with pytest.raises(SystemExit) as e:  # the command line: the message, exit status 2, no traceback
        plot.main([missing])
    assert e.value.code == 2 and "nope does not exist" in capsys.readouterr().err


def test_resume_equals_uninterrupted_run(tiny, tiny_reference, tmp_path, capsys):
    # A workdir holding only the step-3 checkpoint: the run that stopped there.
    w = str(tmp_path / "resumed")
    os.makedirs(os.path.join(w, "checkpoints"))
    shutil.copy(os.path.join(tiny_reference, "config.json"), w)
    shutil.copytree(os.path.join(tiny_reference, "checkpoints", "3"), os.path.join(w, "checkpoints", "3"))
    metrics = train.train_and_evaluate(tiny_config(), w)
    # Said on stdout (issue 19: an INFO log that absl hides).
    assert f"Resuming {w} from its checkpoint at step 3 (training to step 6)" in capsys.readouterr().out
    ref = losses(tiny_reference)
    got = losses(w)
    assert sorted(got) == [4, 5, 6]
    for step in got:
        assert got[step] == ref[step], (step, got[step], ref[step])  # bit for bit
    assert losses(w, "validation")[6] == losses(tiny_reference, "validation")[6]
    assert metrics["step"] == 6 and not metrics["preempted"]


def test_rerunning_a_finished_run_reports_it_without_writing_rows(tiny, tiny_reference, tmp_path, capsys):
    """Issue 19: a rerun appended a second copy of the last evaluation to metrics.jsonl."""
    w = str(tmp_path / "w")
    shutil.copytree(tiny_reference, w)
    before = open(os.path.join(w, "metrics.jsonl")).read()
    m = train.train_and_evaluate(tiny_config(), w)
    assert open(os.path.join(w, "metrics.jsonl")).read() == before  # not a row more
    out = capsys.readouterr().out
    assert f"Resuming {w} from its checkpoint at step 6 (it is finished: nothing to train)" in out
    assert f"{w}: the run ended at step 6; reporting its recorded evaluation\n" in out
    for split in ("validation", "odd_batch", "train"):
        row = read_metrics(tiny_reference, split)[-1]
        for k in ("loss", "accuracy"):
            assert m[f"{split}/{k}"] == row[k], (split, k)
    assert m["step"] == 6 and not m["preempted"]


def test_evaluation_data_settings_fail_at_setup(tiny, tmp_path):
    """Only the dataset can tell that eval_examples=0 is wrong: every evaluation's dataset is
    built at setup, so it fails before training instead of after the last step (issue 19)."""
    bad = tiny_config()
    bad.eval.extra.odd_batch.data.eval_examples = 0
    with pytest.raises(ValueError, match="num_examples must be positive; got 0"):
        train.train_and_evaluate(bad, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1")) and not read_metrics_or_none(str(tmp_path))


def read_metrics_or_none(w):
    return read_metrics(w) if os.path.exists(os.path.join(w, "metrics.jsonl")) else None


def test_the_final_checkpoint_is_saved_before_the_final_evaluation(tiny, tiny_reference, tmp_path, monkeypatch):
    """Issue 19: the final save came after the final evaluation, so a failing evaluation lost the
    trained state and every rerun trained and failed again."""
    from experiments import metrics

    w = str(tmp_path)
    write = metrics.MetricWriter.write

    def failing(self, step, split, m):  # the final odd_batch evaluation fails (say, out of memory)
        if split == "odd_batch":
            raise RuntimeError("odd_batch evaluation failed")
        return write(self, step, split, m)

    with monkeypatch.context() as mp:
        mp.setattr(metrics.MetricWriter, "write", failing)
        with pytest.raises(RuntimeError, match="odd_batch evaluation failed"):
            train.train_and_evaluate(tiny_config(), w)
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["3", "6"]
    assert [r["step"] for r in read_metrics(w, "validation")] == [3, 6] and not read_metrics(w, "odd_batch")
    # Fixed, the rerun trains nothing and evaluates only what the failed run did not record.
    m = train.train_and_evaluate(tiny_config(), w)
    assert [r["step"] for r in read_metrics(w, "train")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_metrics(w, "validation")] == [3, 6]
    assert [r["step"] for r in read_metrics(w, "odd_batch")] == [6]
    assert m["odd_batch/loss"] == losses(tiny_reference, "odd_batch")[6]
    assert m["validation/loss"] == losses(tiny_reference, "validation")[6]


def test_a_changed_schedule_is_refused_unless_allowed(tiny, tmp_path, capsys):
    """Issue 19: a larger total_steps silently changed the cosine schedule mid-run."""
    from experiments import checkpointing, optim

    cosine = {"optim.min_lr_ratio": 0.0, "optim.warmup_steps": 2}
    w = str(tmp_path)
    train.train_and_evaluate(tiny_config(**cosine), w)
    recorded = open(os.path.join(w, "config.json")).read()
    with pytest.raises(checkpointing.IncompatibleConfigError,
                       match=r"total_steps changed from 6 \(recorded in .*config.json\) to 12: optim.schedule='cosine' "
                             r"decays over total_steps, so 6 of the 6 remaining steps change learning rate \(step 7: 0 -> "
                             r".*--config.total_steps=6, or pass --config.allow_schedule_change=True"):
        train.train_and_evaluate(tiny_config(total_steps=12, **cosine), w)
    assert open(os.path.join(w, "config.json")).read() == recorded  # the refusal changed nothing
    assert [r["step"] for r in read_metrics(w, "train")] == [1, 2, 3, 4, 5, 6]
    capsys.readouterr()
    m = train.train_and_evaluate(tiny_config(total_steps=12, allow_schedule_change=True, **cosine), w)
    assert m["step"] == 12
    assert "allow_schedule_change=True: resuming at step 6 with the new schedule; total_steps changed from 6" in capsys.readouterr().out
    c = tiny_config(total_steps=12, **cosine)
    lr = {r["step"]: r["lr"] for r in read_metrics(w, "train")}
    np.testing.assert_allclose(lr[7], float(optim.make_schedule(c.optim, 12, c.optim.lr)(6)), rtol=1e-6)
    assert json.load(open(os.path.join(w, "config.json")))["total_steps"] == 12
    # The old length again: the run is past it; refused, the record kept (it said "step 12 of 6").
    with pytest.raises(checkpointing.IncompatibleConfigError,
                       match=r"holds a checkpoint at step 12, past total_steps=6: rerun with --config.total_steps=12"):
        train.train_and_evaluate(tiny_config(**cosine), w)
    assert json.load(open(os.path.join(w, "config.json")))["total_steps"] == 12


def test_gradient_accumulation_matches_full_batch(tiny, tiny_reference, tmp_path):
    train.train_and_evaluate(tiny_config("accum=4", total_steps=3), str(tmp_path))
    ref, got = losses(tiny_reference), losses(str(tmp_path))
    np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [ref[s] for s in (1, 2, 3)], rtol=2e-5)


def test_steps_per_call_equals_one_step_per_call(tiny, tiny_reference, tmp_path):
    # 4 steps a call, cut at every log (2, 4, 6) and eval/checkpoint step (3, 6): calls of 2, 1, 1
    # and 2 steps; the same six steps, the same evaluations and checkpoints.
    w = str(tmp_path)
    train.train_and_evaluate(tiny_config(steps_per_call=4, log_every=2), w)
    ref, got = losses(tiny_reference), losses(w)
    assert sorted(got) == [2, 4, 6]
    for step in (2, 4, 6):  # windows of two steps: the mean of the reference's two rows
        np.testing.assert_allclose(got[step], (ref[step - 1] + ref[step]) / 2, rtol=1e-6)
    assert losses(w, "validation") == losses(tiny_reference, "validation")
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["3", "6"]


def test_early_stop_ends_the_run_and_a_rerun_reports_it(tiny, tiny_reference, tmp_path):
    w = str(tmp_path)
    stop = {"early_stop.metric": "validation/loss", "early_stop.mode": "min", "early_stop.threshold": 1e3}
    m = train.train_and_evaluate(tiny_config(**stop), w)
    assert m["step"] == 3 and m["stopped_early"] and not m["preempted"]
    assert losses(w) == {s: losses(tiny_reference)[s] for s in (1, 2, 3)}
    assert [r["step"] for r in read_metrics(w, "odd_batch")] == [3]  # the end-of-run evaluations ran
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["3"]
    assert json.load(open(os.path.join(w, "early_stop.json")))["step"] == 3
    again = train.train_and_evaluate(tiny_config(**stop), w)  # no further training
    assert again["step"] == 3 and again["stopped_early"]
    assert sorted(losses(w)) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"config.early_stop.metric must be \"\" or one of \['validation/loss', .*; got 'validation/acc'"):
        train.train_and_evaluate(tiny_config(**{"early_stop.metric": "validation/acc"}), str(tmp_path / "bad"))


def test_token_ids_outside_the_models_vocabulary_are_refused(tiny, tmp_path):
    """Issue 19: the data's ids (vocabulary 8) past the model's vocab_size 6 are named, at the
    first train batch, instead of training on NaN (or clamped) embeddings."""
    c = tiny_config(**{"model.vocab_size": 6})
    with pytest.raises(ValueError, match=r"train batch of step 1: `inputs` holds token ids outside \[0, 6\) \(the "
                                         r"model's vocab_size\): \[6, 7\] at \d+ positions"):
        train.train_and_evaluate(c, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))


def test_steps_per_call_must_be_positive(tiny, tmp_path):
    with pytest.raises(ValueError, match="steps_per_call must be a positive int; got 0"):
        train.train_and_evaluate(tiny_config(steps_per_call=0), str(tmp_path))


def test_incompatible_config_is_refused(tiny, tiny_reference, tmp_path):
    w = str(tmp_path / "w")
    shutil.copytree(tiny_reference, w)
    with pytest.raises(checkpointing.IncompatibleConfigError, match=r"model\.d_model: 16 \(workdir\) != 32"):
        train.train_and_evaluate(tiny_config(**{"model.d_model": 32}), w)
    with pytest.raises(checkpointing.IncompatibleConfigError, match=r"optim\.lr"):
        train.train_and_evaluate(tiny_config(**{"optim.lr": 1e-3}), w)
    # Logging / evaluation / schedule length may change: a finished run reports its evaluation.
    metrics = train.train_and_evaluate(tiny_config(eval_every=2), w)
    assert metrics["step"] == 6
    assert metrics["validation/loss"] == losses(tiny_reference, "validation")[6]


def test_config_diff_names_only_keys_that_matter():
    old = tiny_config().to_dict()
    new = tiny_config(log_every=5, total_steps=99, **{"mesh.data": 2, "eval.batch_size": 4, "seed": 1}).to_dict()
    assert checkpointing.config_diff(old, new) == {"seed": (0, 1)}
    # Reader threads change no batch: a run resumes with more of them, or from before the key.
    threads = {**old, "data": {**old["data"], "num_threads": 4}}
    assert checkpointing.config_diff(old, threads) == {}
    assert checkpointing.config_diff(threads, {**threads, "data": {**old["data"], "num_threads": 1}}) == {}
    assert checkpointing.config_diff(old, {**old, "data": {**old["data"], "seq_len": 7}}) != {}


def test_config_recorded_before_a_key_existed_resumes_only_under_its_old_meaning():
    new = tiny_config().to_dict()
    old = {**new, "model": {k: v for k, v in new["model"].items() if k not in ("norm", "prenorm")}}
    assert checkpointing.config_diff(old, new) == {}
    post = {**new, "model": {**new["model"], "prenorm": False, "norm": "layer"}}
    assert checkpointing.config_diff(old, post) == {"model.norm": ("rms", "layer"), "model.prenorm": (True, False)}


def test_load_model_reproduces_the_trainers_evaluation(tiny, tiny_reference):
    import jax.numpy as jnp

    from experiments import tasks
    from experiments.data import registry

    model, config, step = train.load_model(tiny_reference)
    assert step == 6 and config.model.d_model == 16
    total = None
    for batch in registry.build(config.data, split="validation", seed=config.seed, global_batch_size=config.eval.batch_size):
        sums = tasks.LanguageModeling().sums_of_logits(model(jnp.asarray(batch["inputs"])), batch, config.model.vocab_size)
        total = sums if total is None else {k: total[k] + sums[k] for k in sums}
    got = tasks.LanguageModeling().finalize(total)
    ref = read_metrics(tiny_reference, "validation")[-1]
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
    assert got["accuracy"] == ref["accuracy"]
    model3, _, step3 = train.load_model(tiny_reference, step=3)
    assert step3 == 3 and not np.allclose(model3.w_in[...], model.w_in[...])


def test_evaluate_a_checkpoint_equals_the_rows_the_run_logged(tiny, tiny_reference, tmp_path, capsys):
    # experiments.evaluate runs the config's evaluations on a checkpoint: every evaluation the
    # run logged at steps 3 and 6 (validation, and the replicated odd-batch test split).
    from experiments import evaluate

    compared = []
    for step in (3, 6):
        got_step, got = evaluate.evaluate_checkpoint(tiny_reference, step=step)
        assert got_step == step and sorted(got) == ["odd_batch", "validation"]
        for name, metrics in got.items():
            ref = {r["step"]: r for r in read_metrics(tiny_reference, name)}.get(step)
            if ref is None:  # the extra evaluation runs at the end only
                continue
            np.testing.assert_allclose(metrics["loss"], ref["loss"], rtol=1e-5, err_msg=f"{name} at {step}")
            assert metrics["accuracy"] == ref["accuracy"]
            compared.append((name, step))
    assert sorted(compared) == [("odd_batch", 6), ("validation", 3), ("validation", 6)]
    # The CLI: the latest checkpoint, one named evaluation, one batch, a JSON file.
    out = tmp_path / "eval.json"
    evaluate.main([f"--workdir={tiny_reference}", "--eval=validation", "--num_batches=1", f"--json={out}"])
    row = json.loads(out.read_text())
    assert row["step"] == 6 and list(row) == ["step", "validation"] and "step 6 validation: " in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"--eval \['test'\] not among the run's evaluations \['odd_batch', 'validation'\]"):
        evaluate.evaluate_checkpoint(tiny_reference, names=["test"])
    with pytest.raises(ValueError, match="--num_batches must be -1"):
        evaluate.evaluate_checkpoint(tiny_reference, num_batches=0)


def test_evaluate_at_data_settings_the_run_never_tested(tiny, tiny_reference, tmp_path, capsys):
    """``--data=key=value``: a trained model at a new length or size without a config edit. The
    data are a function of (seed, split, index): 8 examples of the validation split are its first
    batch of 8, so ``eval_examples=8`` must equal ``--num_batches=1``."""
    from experiments import evaluate

    _, first_batch = evaluate.evaluate_checkpoint(tiny_reference, names=["validation"], num_batches=1)
    _, eight = evaluate.evaluate_checkpoint(tiny_reference, names=["validation"], data={"eval_examples": "8"})
    assert eight["validation"] == first_batch["validation"]
    _, longer = evaluate.evaluate_checkpoint(tiny_reference, names=["validation"], data={"seq_len": "32"})
    _, recorded = evaluate.evaluate_checkpoint(tiny_reference, names=["validation"])
    assert longer["validation"]["loss"] != recorded["validation"]["loss"]
    row = evaluate.main([f"--workdir={tiny_reference}", "--eval=validation", "--data=seq_len=32"])
    assert row["data"] == {"seq_len": "32"} and row["validation"] == longer["validation"]
    for data, match in (({"seq_lenn": "8"}, r"--data=seq_lenn=...: the evaluation's data has no key 'seq_lenn'"),
                        ({"seq_len": "abc"}, r"--data=seq_len=abc: not a int \(the key's type; recorded value 16\)"),
                        ({"seq_len": "4"}, r"config.eval.splits: evaluation 'validation'.*need 1 <= num_tokens")):
        with pytest.raises(ValueError, match=match):
            evaluate.evaluate_checkpoint(tiny_reference, names=["validation"], data=data)
    with pytest.raises(SystemExit):
        evaluate.main([f"--workdir={tiny_reference}", "--data=seq_len"])
    assert "--data takes KEY=VALUE" in capsys.readouterr().err


def test_keeps_the_latest_and_the_best_checkpoint(tiny, tmp_path):
    w = str(tmp_path)
    train.train_and_evaluate(
        # "Best" = the highest loss here: an early step, so it differs from the latest.
        tiny_config(checkpoint_every=1, eval_every=1, **{"checkpoint.keep": 1, "checkpoint.best_metric": "validation/loss",
                                                         "checkpoint.best_mode": "max"}), w)
    val = losses(w, "validation")
    best = max(val, key=val.get)
    assert best != 6, val
    assert sorted(int(s) for s in os.listdir(os.path.join(w, "checkpoints"))) == [best, 6]


def test_mfu_uses_the_chips_bf16_peak_and_the_models_flops():
    from types import SimpleNamespace

    from experiments import metrics

    assert metrics.device_peak_flops(SimpleNamespace(device_kind="NVIDIA H200")) == 989e12
    assert metrics.device_peak_flops(SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")) == 989e12
    assert metrics.device_peak_flops(SimpleNamespace(device_kind="TPU v5 lite")) == 197e12
    assert metrics.device_peak_flops(SimpleNamespace(device_kind="TPU v5p")) == 459e12
    assert metrics.device_peak_flops(SimpleNamespace(device_kind="cpu")) is None
    stats = [SimpleNamespace(memory_stats=lambda: {"peak_bytes_in_use": 5}), SimpleNamespace(memory_stats=lambda: {"peak_bytes_in_use": 9})]
    assert metrics.device_memory(stats) == 9 and metrics.device_memory([SimpleNamespace(memory_stats=lambda: None)]) is None


def test_train_rows_carry_mfu_where_the_chip_peak_is_known(tmp_path, monkeypatch):
    import importlib.util

    from experiments import metrics, tasks
    from ssm_jax.models import counting
    from tests.experiments.conftest import REPO

    monkeypatch.setattr(metrics, "device_peak_flops", lambda device: 1e12)
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "experiments/configs/synthetic/demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    c = demo.get_config("smoke")
    train.train_and_evaluate(c, str(tmp_path))
    rows = read_metrics(str(tmp_path), "train")
    fpt = counting.flops_per_token(tasks.LanguageModeling().model_config(c.model.to_dict()), int(c.data.seq_len))
    for r in rows:
        np.testing.assert_allclose(r["mfu"], fpt * r["tokens_per_sec"] / 1e12, rtol=1e-9)


def test_deterministic_sets_xlas_flag_before_jax_starts(tiny, tmp_path, monkeypatch):
    from experiments import run

    on = tiny_config(deterministic=True)
    assert run.xla_flags_for(on, "--a") == f"--a {train.DETERMINISTIC_FLAG}"
    assert run.xla_flags_for(on, "--xla_gpu_deterministic_ops=false") == "--xla_gpu_deterministic_ops=false"  # the user's
    assert run.xla_flags_for(tiny_config(), "--a") == "--a"
    # A GPU backend started without the flag: refused before anything is built or written.
    monkeypatch.setattr(train.jax, "default_backend", lambda: "gpu")
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.raises(ValueError, match=r"needs XLA_FLAGS=--xla_gpu_deterministic_ops=true before JAX starts"):
        train.train_and_evaluate(on, str(tmp_path / "gpu"))
    assert not os.path.exists(tmp_path / "gpu")


def test_deterministic_run_through_the_cli(tmp_path):
    # experiments.run puts the flag into XLA_FLAGS; XLA aborts at start on a flag it does not know,
    # so this run finishing shows the flag is one of jaxlib's.
    from tests.experiments.conftest import run_tiny_cli

    w = str(tmp_path / "w")
    run_tiny_cli(w, "--config.deterministic=True", "--config.total_steps=2", "--config.eval_every=2")
    assert [r["step"] for r in read_metrics(w, "train")] == [1, 2]
    with open(os.path.join(w, "config.json")) as f:
        assert json.load(f)["deterministic"] is True


# ----------------------------------------------------------------------------------------------
# Rows after hard stops, partial windows, continuing a stopped run, a run that saved nothing
# ----------------------------------------------------------------------------------------------


def test_a_run_killed_after_its_checkpoint_keeps_no_row_twice(tiny, tiny_reference, tmp_path):
    """SIGKILL / out of memory after step 5's rows but with checkpoint 3 the newest: the rerun
    trains steps 4-6 again; their old rows (and a line cut off mid-write) are dropped, not doubled."""
    w = str(tmp_path / "w")
    os.makedirs(os.path.join(w, "checkpoints"))
    shutil.copy(os.path.join(tiny_reference, "config.json"), w)
    shutil.copytree(os.path.join(tiny_reference, "checkpoints", "3"), os.path.join(w, "checkpoints", "3"))
    rows = [r for r in read_metrics(tiny_reference) if r["step"] <= 5]
    with open(os.path.join(w, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write('{"step": 6, "split": "tra')  # killed while writing
    train.train_and_evaluate(tiny_config(), w)
    key = lambda rows: [(r["step"], r["split"], r["loss"]) for r in rows]  # noqa: E731 (timings differ)
    assert key(read_metrics(w)) == key(read_metrics(tiny_reference))


def test_metrics_files_with_a_cut_off_last_line_read_and_a_bad_line_names_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "spl')
    assert read_metrics(str(tmp_path)) == [{"step": 1, "split": "train", "loss": 1.0}]
    path.write_text('{"step": 1, "spl\n{"step": 2, "split": "train", "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1: not a JSON record"):
        read_metrics(str(tmp_path))


def test_a_stop_between_train_rows_logs_the_steps_since_the_last_row(tiny, tiny_reference, tmp_path, monkeypatch):
    """log_every=4, stopped after step 3: steps 1-3 get a row at 3 (they were in no row: the
    resumed run's row at 4 averaged step 4 alone), then rows at 4 and 6."""
    from experiments import stopping

    w = str(tmp_path)
    with monkeypatch.context() as mp:
        mp.setattr(stopping.StopSignals, "reached", lambda self, step: step == 3)
        assert train.train_and_evaluate(tiny_config(log_every=4), w)["preempted"]
    train.train_and_evaluate(tiny_config(log_every=4), w)
    ref, got = losses(tiny_reference), losses(w)
    assert sorted(got) == [3, 4, 6]
    np.testing.assert_allclose([got[3], got[4], got[6]],
                               [np.mean([ref[1], ref[2], ref[3]]), ref[4], np.mean([ref[5], ref[6]])], rtol=1e-6)


def test_an_early_stopped_run_trains_on_when_the_rule_changes(tiny, tiny_reference, tmp_path):
    """The docs say: rerun with --config.early_stop.metric= to train on. It used to report the
    old stop and train nothing."""
    w = str(tmp_path)
    stop = {"early_stop.metric": "validation/loss", "early_stop.mode": "min", "early_stop.threshold": 1e3}
    assert train.train_and_evaluate(tiny_config(**stop), w)["stopped_early"]
    stricter = train.train_and_evaluate(tiny_config(**{**stop, "early_stop.threshold": 1e-9}), w)
    assert stricter["step"] == 6 and not stricter["stopped_early"]
    assert losses(w) == losses(tiny_reference)


def test_a_run_that_saved_nothing_reruns_with_a_corrected_config(tiny, tmp_path):
    """A run that failed before its first checkpoint left config.json: the corrected rerun was
    refused as 'a different config'."""
    w = str(tmp_path)
    bad = tiny_config(**{"model.vocab_size": 6})  # refused at the first train batch (ids up to 7)
    with pytest.raises(ValueError, match="token ids outside"):
        train.train_and_evaluate(bad, w)
    assert os.path.exists(os.path.join(w, "config.json")) and not checkpointing.has_checkpoint(w)
    assert train.train_and_evaluate(tiny_config(), w)["step"] == 6


def test_late_failing_evaluation_settings_fail_at_setup_naming_the_entry(tiny, tmp_path):
    bad_split = tiny_config()
    bad_split.eval.extra.odd_batch.split = "nosuch"
    with pytest.raises(ValueError, match=r"config.eval.extra.odd_batch: evaluation 'odd_batch' \(split 'nosuch'.*"
                                         r"split must be one of"):
        train.train_and_evaluate(bad_split, str(tmp_path / "a"))
    bad_len = tiny_config()
    with bad_len.unlocked():
        bad_len.eval.extra.odd_batch.data.seq_len = 4  # selective copying needs seq_len >= 2 num_tokens
    with pytest.raises(ValueError, match=r"config.eval.extra.odd_batch: .*need 1 <= num_tokens <= seq_len / 2"):
        train.train_and_evaluate(bad_len, str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"config.profile.start_step must be a step before total_steps=6; got 6"):
        train.train_and_evaluate(tiny_config(**{"profile.num_steps": 2, "profile.start_step": 6}), str(tmp_path / "c"))
    assert not any(os.path.exists(os.path.join(tmp_path, d, "checkpoints")) for d in "abc")


def test_the_run_summary_prints_commands_that_paste(tmp_path):
    from experiments import run

    w = str(tmp_path / "a b")
    text = run._summary({"step": 4, "validation/accuracy": 0.5, "validation/loss": 1.0}, w, 60.0, 4)
    assert f"python -m experiments.plot '{w}'" in text and f"--logdir '{w}/tensorboard'" in text
    assert "held-out validation: accuracy 50.0%, loss 1.0000" in text
