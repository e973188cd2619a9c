"""The step log, ``steps.jsonl``: one line per step with rank 0's hybrid-batch record (mode, language, counts), the
loss, and when the step ended (``time_s``, seconds since the training loop of this process started) after waiting
``data_s`` for its batch, so throughput and input stalls can be read off any run (bench/train_e2e.py does)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from mclip_hbt.fileio import write_text_atomic

STEP_LOG = "steps.jsonl"


def read_step_log(path: Path) -> Iterator[dict]:
    """The complete step records of a step log; a line cut short when a run was killed mid-write is skipped."""
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            yield record


class StepLog:
    """The main process's step log, opened for appending after the complete records of the steps before
    ``resumed_step`` (a resumed run redoes the later ones); on other processes it writes nothing."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool):
        self.file = None
        if enabled:
            if path.exists():
                kept = [json.dumps(r) + "\n" for r in read_step_log(path) if r["step"] < resumed_step]
                write_text_atomic(path, "".join(kept))
            self.file = open(path, "a", buffering=1)
        self.start = time.perf_counter()

    def write(self, record: dict, loss, data_s: float) -> None:
        """One step's line; reading the loss waits for the step, so ``time_s`` is when it ended."""
        if self.file is not None:
            self.file.write(json.dumps({**record, "loss": round(loss.item(), 6), "data_s": round(data_s, 4),
                                        "time_s": round(time.perf_counter() - self.start, 4)}) + "\n")

    def __enter__(self) -> "StepLog":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
