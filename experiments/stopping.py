"""How a training run ends before ``total_steps``: a stop signal, or ``config.early_stop``.

Signals. SIGTERM (a preemption) and SIGINT (Ctrl-C) both mean: finish the current call (one
step, or ``steps_per_call`` steps), save a checkpoint, stop; ``train_and_evaluate`` then returns
with ``preempted=True`` and ``stop_signal`` naming the signal, and rerunning the same command
resumes. A second SIGINT gives up on saving: it raises ``KeyboardInterrupt`` at once. Without a
handler, Ctrl-C raised ``KeyboardInterrupt`` wherever the main thread was, while Orbax's and
grain's threads were running, and the process aborted (``terminate called without an active
exception``, exit 134) with nothing saved.

With several processes (``jax.distributed``), JAX's preemption notifier owns SIGTERM and agrees
on the step at which every process stops; SIGINT is forwarded to it as a SIGTERM to this process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

import jax

__all__ = ["EarlyStop", "StopSignals"]


def _say(message: str) -> None:
    # os.write, not print/logging: a handler may interrupt a write to the same stream (the
    # progress bar's), and buffered writers refuse that reentrant call.
    os.write(2, (message + "\n").encode())


class StopSignals:
    """Installs the SIGTERM / SIGINT handlers (main thread only) until :meth:`restore`."""

    def __init__(self, multiprocess: bool):
        self.multiprocess = multiprocess
        self.requested: str | None = None  # the name of the first stop signal received
        self._interrupts = 0
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal only works there; a run in a thread keeps the defaults
        if not multiprocess:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigterm(self, signum, frame):
        self.requested = self.requested or "SIGTERM"
        _say("SIGTERM: saving a checkpoint and stopping after this step")

    def _on_sigint(self, signum, frame):
        self._interrupts += 1
        if self._interrupts > 1:
            _say("second Ctrl-C: stopping now, without saving")
            self.restore()
            raise KeyboardInterrupt
        self.requested = self.requested or "SIGINT"
        _say("Ctrl-C: saving a checkpoint and stopping after this step (Ctrl-C again to stop without saving)")
        if self.multiprocess:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier: every process stops at one step

    def reached(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (collective with several processes)."""
        if self.multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested is not None

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class EarlyStop:
    """``config.early_stop``: end training once an evaluated metric reaches a threshold (Zoology
    stops MQAR runs at validation accuracy 0.99). ``DIR/early_stop.json`` records the stop, so
    rerunning a stopped run reports it instead of training on."""

    def __init__(self, workdir: str, cfg):
        self.metric = str(cfg.metric)
        self.threshold = float(cfg.threshold)
        if cfg.mode not in ("max", "min"):
            raise ValueError(f"train: early_stop.mode must be 'max' or 'min'; got {cfg.mode!r}")
        self.mode = cfg.mode
        self.path = os.path.join(workdir, "early_stop.json")

    def reached(self, metrics: dict[str, float]) -> bool:
        if not self.metric:
            return False
        if self.metric not in metrics:
            raise ValueError(
                f"train: early_stop.metric {self.metric!r} is not an evaluated metric; evaluated: {sorted(metrics)}"
            )
        value = metrics[self.metric]
        return value >= self.threshold if self.mode == "max" else value <= self.threshold

    def record(self, step: int, metrics: dict[str, float]) -> None:
        if jax.process_index() == 0:
            with open(self.path, "w") as f:
                json.dump({"step": step, "metric": self.metric, "value": metrics[self.metric], "threshold": self.threshold}, f)
        logging.warning("early stop at step %d: %s = %.4g", step, self.metric, metrics[self.metric])

    def stopped_at(self, step: int) -> bool:
        """Whether the run stopped early at ``step`` (the step it resumes from) by the rule the
        config gives now: rerun with ``--config.early_stop.metric=`` (no early stop), another
        metric or a threshold the recorded value does not meet, and it trains on."""
        if not self.metric or not os.path.exists(self.path):
            return False
        with open(self.path) as f:
            rec = json.load(f)
        return int(rec["step"]) == step and rec["metric"] == self.metric and self.reached({self.metric: rec["value"]})
