"""Checkpoint files that are either the old one or the whole new one, never a truncated mix; what
every checkpoint records about its run (RunRecord: the config, the rmlab version); and what a
finished run keeps (KeepAfterFit).

Lightning's own save goes through an fsspec transaction whose temp file lives in /tmp: where /tmp
and the run dir are different filesystems (usual on clusters) the final move is a copy straight
into the destination, so a job killed during it leaves a truncated last.ckpt that resume=auto
then cannot read. Here the temp file sits next to the target, so the last step is a rename.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from packaging.version import Version

from rmlab import __version__

log = logging.getLogger(__name__)

# What a checkpoint without `rmlab_version` was written by: an rmlab before 0.2, which did not store it.
PRE_0_2 = "pre-0.2"


class RunRecord(L.Callback):
    """Writes into every checkpoint what reading it back needs: the resolved run config
    (`rmlab_config`) and the rmlab version that wrote it (`rmlab_version`, which compatibility
    checks key on: `written_before`)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rmlab_config"] = self.config
        checkpoint["rmlab_version"] = __version__


def written_by(checkpoint: dict[str, Any]) -> str:
    """The rmlab version that wrote a loaded checkpoint, or PRE_0_2 for one written before versions were stored."""
    return str(checkpoint.get("rmlab_version") or PRE_0_2)


def written_before(checkpoint: dict[str, Any], version: str) -> bool:
    """True when the checkpoint was written by an rmlab older than `version` (PRE_0_2 is older than any 0.2+)."""
    writer = written_by(checkpoint)
    return writer == PRE_0_2 or Version(writer) < Version(version)


def temp_path(path: Path) -> Path:
    """Where the save of `path` writes first. Hidden, and not `*.ckpt`, so that nothing that lists
    checkpoints (ModelCheckpoint, resume=auto's checkpoints/last.ckpt) takes it for one."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def umask_mode(path: Path) -> None:
    """Give a written file the mode a plain open() would (0644 under umask 022). safetensors >= 0.8
    writes through an owner-only (0600) temp file, which other users and jobs then cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (a crash of the machine could otherwise undo it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the target's directory, fsync, then os.replace onto the target.

    For strategies that write one file per checkpoint (auto, ddp, fsdp with a full state dict);
    DeepSpeed writes directories itself and does not use it. Remote paths (`s3://...`) keep
    Lightning's save: object stores have no rename, and their upload is all-or-nothing already.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A save killed earlier left its temp file; only one process writes a given checkpoint, so
        # any other temp file of this target is such a leftover (and as large as a checkpoint).
        for stale in path.parent.glob(glob.escape(f".{path.name}.tmp-") + "*"):
            stale.unlink(missing_ok=True)
        temp = temp_path(path)
        try:
            with open(temp, "wb") as file:
                self.write(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def write(self, checkpoint: dict[str, Any], file: IO[bytes]) -> None:
        """Serialise the checkpoint into the open temp file."""
        torch.save(checkpoint, file)


# Training state that only resuming needs; a finished run's best checkpoint keeps the rest.
TRAINING_STATE = ("optimizer_states", "lr_schedulers")


def drop_training_state(path: Path) -> None:
    """Rewrite a checkpoint file without its optimizer and scheduler state (atomically, as every save)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not any(key in checkpoint for key in TRAINING_STATE):
        return
    for key in TRAINING_STATE:
        checkpoint.pop(key, None)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)


class KeepAfterFit(L.Callback):
    """What stays on disk once training has ended normally (not when it stopped with an error or was
    killed: then everything stays, for resume=auto).

    - Best checkpoints (of every ModelCheckpoint with a `monitor`) lose the optimizer and scheduler
      state: weights, config and bookkeeping remain, which is all rmlab.evaluate, rmlab.export,
      rmlab.score and testing read. AdamW's two moments are twice the weights, so a checkpoint shrinks
      to about a third (MiniLM-L6 fp32: 270 MB -> 90 MB).
    - last.ckpt (and any save_last file), which only resuming needs, is deleted unless `keep_last`, or
      unless there is no best checkpoint (no validation ran): then it holds the only weights.
    """

    def __init__(self, keep_last: bool = False, slim_best: bool = True) -> None:
        self.keep_last, self.slim_best = keep_last, slim_best

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        best, resume_state = set(), set()
        for callback in trainer.checkpoint_callbacks:
            (best if callback.monitor else resume_state).update(
                callback.best_k_models if callback.monitor else [callback.best_model_path])
            resume_state.add(callback.last_model_path)
        resume_state = sorted(p for p in resume_state if p and Path(p).is_file() and p not in best)
        best = sorted(p for p in best if p and Path(p).is_file())
        if self.slim_best:
            for path in best:
                drop_training_state(Path(path))
        if self.keep_last or not resume_state:
            return
        if not best:  # no validation ran: the resume state holds the only weights
            log.warning("training finished without a best checkpoint (no validation ran?): keeping %s", ", ".join(resume_state))
            return
        for path in resume_state:
            Path(path).unlink()
            log.info("training finished: removed %s (resume state; callbacks.keep_after_fit.keep_last=true keeps it)", path)
