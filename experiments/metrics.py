"""Where metrics go: ``DIR/metrics.jsonl``, TensorBoard event files, and a progress bar.

Every record is one JSON object per line: ``{"step": int, "split": "train" | "validation" | ...,
"loss": float, <task metrics>, <throughput>...}``; TensorBoard gets the same numbers as
``<split>/<name>`` scalars under ``DIR/tensorboard``. Only process 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

import tqdm
from tensorboardX import SummaryWriter

__all__ = ["MetricWriter", "ProgressBar", "device_memory", "device_peak_flops", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN / inf


class MetricWriter:
    """Appends records to ``DIR/metrics.jsonl`` and TensorBoard.

    ``resume_step``: the step the run resumes from. Rows of later steps were written after the
    checkpoint it resumes from by a run that was then killed (SIGKILL, out of memory, a lost
    machine): those steps are trained again, so their old rows are dropped from the file, and
    TensorBoard is told to purge them (``purge_step``), rather than kept twice.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            purge = None
            if resume_step is not None and os.path.exists(self.path):
                if _drop_rows_after(self.path, resume_step):
                    purge = resume_step + 1
            self._file = open(self.path, "a")
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10, purge_step=purge)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(f"{split}/{name}", float(value), int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
            self.enabled = False


# Dense bf16 peak FLOP/s per chip by device kind (vendor datasheets): the denominator of the
# trainer's MFU, whatever the compute dtype (the usual convention). Unknown kinds log no MFU.
PEAK_BF16_FLOPS = {
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
}


def device_peak_flops(device) -> float | None:
    """The dense bf16 peak of ``device`` (a ``jax.Device``) from :data:`PEAK_BF16_FLOPS`, matched by
    the longest table key that starts its ``device_kind``; None when unknown (CPU)."""
    kind = str(getattr(device, "device_kind", ""))
    matches = [k for k in PEAK_BF16_FLOPS if kind.startswith(k)]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def device_memory(devices) -> int | None:
    """The largest ``peak_bytes_in_use`` over ``devices`` (None where a backend keeps no stats)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    peaks = [int(p) for p in peaks if p is not None]
    return max(peaks) if peaks else None


def _records(path: str, text: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics file (``text``: its contents, if already read). A last line cut off
    mid-write (the process was killed) is left out with a warning; a malformed line before it is
    an error naming the file and line."""
    if text is None:
        with open(path) as f:
            text = f.read()
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    out = []
    for i, line in enumerate(lines[: last + 1]):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == last:
                logging.warning("%s: its last line is cut off (the run was killed while writing it); left out: %r",
                                path, line[:80])
                break
            raise ValueError(f"{path}, line {i + 1}: not a JSON record ({e})") from None
    return out


def _drop_rows_after(path: str, step: int) -> bool:
    """Rewrite ``path`` without the rows of steps after ``step`` (and without a cut-off last
    line); True if any row was dropped."""
    with open(path) as f:
        text = f.read()
    records = _records(path, text)
    kept = [r for r in records if int(r["step"]) <= step]
    if len(kept) == len(records) and (not text or text.endswith("\n")):
        return False
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
    if len(kept) < len(records):
        logging.warning("%s: dropped %d rows of steps after %d, the checkpoint this run resumes from (they are "
                        "trained again)", path, len(records) - len(kept), step)
    return len(kept) < len(records)


def read_metrics(workdir: str, split: str | None = None) -> list[dict[str, Any]]:
    """Records of ``workdir/metrics.jsonl`` (of one ``split`` if given), in file order."""
    return [r for r in _records(os.path.join(workdir, METRICS_FILE)) if split is None or r["split"] == split]


class ProgressBar:
    """A tqdm bar over training steps showing loss and tokens/s (silent when disabled)."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self._bar = (
            tqdm.tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
            if enabled
            else None
        )

    def update(self, steps: int, **postfix: float) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
