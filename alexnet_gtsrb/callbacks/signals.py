"""Signals: :class:`GracefulStop` turns SIGTERM and SIGINT (Ctrl+C) into "finish the current training step,
save ``last.ckpt``, exit with 128 + signal number"; during the test after training, into "stop now"."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from alexnet_gtsrb.errors import TrainingInterrupted

log = logging.getLogger(__name__)


class GracefulStop(L.Callback):
    """On SIGTERM/SIGINT: finish the running training step, save ``last.ckpt`` (atomic), exit 128 + signum.

    Lightning 2.6 on one process only reacts to SIGTERM at the end of an epoch (and to SIGINT not at all beyond
    "attempting graceful shutdown", without a checkpoint), which can be an hour away at 227 px on a CPU. The
    handlers live from the start of training to its end or failure and chain to the SIGTERM handlers already
    present except Lightning's notifier: it makes the epoch loop raise ``SIGTERMException`` (``SystemExit`` 0, no
    checkpoint) when the signal lands between this callback's check and the loop's, and it forwards the signal
    to DDP children and broadcasts from inside the handler. Under DDP the ranks agree at each step whether any was
    signalled, so all save together. SLURM sends SIGTERM (after any ``--signal`` warning) before it kills a job.
    """

    def __init__(self, signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGINT")) -> None:
        self.signals = [signal.Signals[s] if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        if self.received is None:
            self.received = sig
            print(
                f"\n{sig.name} received: finishing the current step, then saving a checkpoint "
                "(press Ctrl+C again to stop at once without saving)",
                flush=True,
            )
        elif sig == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: stop now, without a checkpoint
        if sig != signal.SIGINT:  # keep other SIGTERM handling, less Lightning's notifier (see above)
            previous = self._previous.get(sig)
            for handler in getattr(previous, "signal_handlers", [previous]):  # Lightning composes several into one
                if callable(handler) and getattr(handler, "__name__", "") != "_sigterm_notifier_fn":
                    handler(signum, frame)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the handlers (after Lightning installed its SIGTERM notifier, which they chain to)."""
        self.received = None
        self._install(self._handler)

    def _install(self, handler: Any) -> None:
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. some notebook runners): nothing installed
                log.debug("cannot install a %s handler outside the main thread", sig.name)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """During the test a signal stops at once: nothing is lost, and the message says how to re-run it."""
        ckpt = trainer.ckpt_path
        data_dir = (getattr(getattr(trainer, "datamodule", None), "hparams", None) or {}).get("data_dir")

        def stop_test(signum: int, frame: Any) -> None:
            sig = signal.Signals(signum)
            rerun = f"python -m alexnet_gtsrb.evaluate ckpt_path={ckpt}" if ckpt else "python -m alexnet_gtsrb.evaluate"
            raise TrainingInterrupted(
                f"stopped by {sig.name} during the test; training had finished and its checkpoints and "
                f"metrics.json are saved. Re-run the test with: {rerun}"
                + (f" data.data_dir={data_dir}" if data_dir else ""),
                exit_code=128 + int(sig),
            )

        self._install(stop_test)

    def _restore(self, *args: Any, **kwargs: Any) -> None:
        """Put back the handlers that were there before: training or the test ended or failed."""
        for sig, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    on_train_end = on_test_end = on_exception = _restore

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        requested = self.received is not None
        if trainer.world_size > 1:  # any rank signalled -> every rank stops at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"  # where ckpt_path=last looks
        for cb in reversed(trainer.checkpoint_callbacks):  # or the first ``last`` ModelCheckpoint's file
            if isinstance(cb, ModelCheckpoint) and cb.filename == "last" and cb.dirpath:
                path = Path(cb.dirpath) / f"last{cb.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        name = self.received.name if self.received is not None else "a signal on another rank"
        raise TrainingInterrupted(
            f"stopped by {name} at epoch {trainer.current_epoch}, global step {trainer.global_step}; "
            f"checkpoint saved to {path}. Resume in place with: python -m alexnet_gtsrb.train <same overrides> "
            f"ckpt_path=last hydra.run.dir={path.parent.parent}",
            exit_code=128 + int(self.received or signal.SIGTERM),  # another rank's signal: SIGTERM (143)
        )
