"""The output folder: one run per folder (a lock), seen by every process, room for the model, and the final model
folder renamed into place whole."""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from mclip_hbt.fileio import OutputError, atomic_directory, free_bytes, write_json_atomic
from mclip_hbt.model.clip import TRAIN_META_NAME, MultilingualCLIP
from mclip_hbt.options import OptionError
from mclip_hbt.train.checkpoints import WRITE_ERRORS, SaveError, checkpoints, first_line
from mclip_hbt.train.text_learning import merge_lora

LOCK_FILE = "train.lock"
#: What ``on_main`` hands from the main process to the others: the refusals a user can act on.
SHARED_FAILURES = (OptionError, OutputError, SaveError)


class OutputLock:
    """Holds OUTPUT_DIR/train.lock for the run's life: one run per output folder.

    A POSIX record lock (``fcntl.lockf``) belongs to the process: the kernel drops it however the
    process ends, so a crashed run never blocks the next, and the DataLoader workers it forks do not
    hold it. The file names the holder for the refusal. The holder never opens the file again
    (closing any descriptor of it would drop the lock).
    """

    def __init__(self, output_dir: Path):
        path = output_dir / LOCK_FILE
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise OutputError(f"--output-dir: cannot lock {path} ({err.strerror}); choose a folder on a file "
                                  "system that supports locks") from None
            holder = path.read_text(errors="replace").strip() or "one that has not written its name yet"
            raise OutputError(f"--output-dir: {output_dir} is in use by another training run ({holder}); wait for "
                              "it to finish or choose another --output-dir") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())

    def release(self) -> None:
        os.close(self.fd)


def on_main(accelerator: Accelerator, work: Callable[[], object]) -> object:
    """``work()`` on the main process only; every process gets its result or raises its refusal.

    For what only the main process does (the output folder, the final export): the others must stop with it
    rather than wait for it in a collective. Any other exception ends the main process with its traceback, and
    the others with the collective's error.
    """
    result, failure = None, None
    if accelerator.is_main_process:
        try:
            result = work()
        except SHARED_FAILURES as err:
            failure = err
    result, shared = broadcast_object_list([result, failure])
    if shared is not None:
        raise shared
    return result


def check_output_dir_is_shared(output_dir: Path) -> None:
    """OutputError on every process unless every one sees the lock the main process just took: each writes its
    own files into every checkpoint, so on several machines the output folder must be on storage they share."""
    blind = [rank for rank, sees in enumerate(gather_object([(output_dir / LOCK_FILE).is_file()])) if not sees]
    if blind:
        raise OutputError(f"--output-dir: process(es) {', '.join(map(str, blind))} cannot see "
                          f"{output_dir / LOCK_FILE}, which the main process has written: with several machines "
                          "--output-dir must be on storage all of them share (NFS, Lustre, ...; README, 'Several "
                          "machines')")


def check_room_for_model(model: MultilingualCLIP, output_dir: Path) -> None:
    """Refuse a run whose output folder cannot even hold the final model (its tensors' bytes)."""
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    free = free_bytes(output_dir)
    if free < needed:
        raise OutputError(f"--output-dir: {output_dir} has {free / 2**20:.0f} MiB free, but the final model alone "
                          f"needs about {needed / 2**20:.0f} MiB (a checkpoint about 3 times that); free space or "
                          "choose another --output-dir")


def export_final_model(model: MultilingualCLIP, final_dir: Path, meta: dict, output_dir: Path) -> None:
    """The final model folder with its train_meta.json, renamed into place whole; SaveError if it cannot be."""
    merge_lora(model)  # the export is a plain encoder: the run is over, its adapters are not needed apart
    try:
        with atomic_directory(final_dir) as staging:
            model.save_pretrained(staging)
            write_json_atomic(staging / TRAIN_META_NAME, meta)
    except WRITE_ERRORS as err:
        raise SaveError(f"the final model could not be written to {final_dir} ({first_line(err)}; "
                        f"{free_bytes(output_dir) / 2**20:.0f} MiB free); all {meta['steps']} steps are kept in "
                        f"{checkpoints(output_dir)[-1]}: free space, then run again with --resume auto to write "
                        "the model") from None
