"""Run folders: claiming one for a training run, and reading one back (``metrics.csv`` or TensorBoard events, the
per-epoch table, the checkpoint its results use). A run folder is what ``python -m alexnet_gtsrb.train`` writes
under ``logs/<task_name>/runs/<time>/``: ``checkpoints/``, ``metrics.json``, ``.hydra/`` and the stores of the
loggers (:mod:`alexnet_gtsrb.loggers`): ``tensorboard/``, ``csv/version_N/metrics.csv``; MLflow's is ``<logs>/mlruns``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alexnet_gtsrb.errors import BadFileError, ConfigError, UserError
from alexnet_gtsrb.utils.files import MAX_EVENTS_BYTES, check_regular_file, open_lock_file, read_text_file

LOCK_NAME = ".run.lock"
#: ``test_ckpt``: the checkpoint a run's final test, its ``metrics.json`` and ``evaluate ckpt_path=<run folder>``
#: score, fixed in the config before any test result is seen.
TEST_CKPT_RULES = {
    "last": "the weights at the end of the last epoch, checkpoints/last.ckpt; with callbacks=ema the EMA average",
    "best": "the epoch with the highest val/acc, checkpoints/epoch_NNN.ckpt",
}
CSV_TIME = "wall_time"  # the column loggers.TimedCSVLogger adds to metrics.csv: seconds since the epoch
_RUN_FILE_FIX = "Training writes it as a file: remove or replace it (or pass another run folder)."


@contextlib.contextmanager
def claim_run_folder(run_dir: str | os.PathLike[str] | None, resuming: bool) -> Iterator[None]:
    """Hold ``run_dir`` for one training run: refuse a folder another live run holds (an advisory lock in the
    folder), and one that already holds a run's checkpoints unless this run resumes it. Two runs with the same
    ``hydra.run.dir`` would otherwise both write ``last.ckpt`` and ``metrics.json`` there. Call on global rank zero
    only (DDP's other ranks share the folder by design)."""
    if not run_dir:
        yield
        return
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fix = "Remove it, or name another folder (leave hydra.run.dir unset)."
    with open_lock_file(folder / LOCK_NAME, "the run folder's lock file", fix) as handle:  # held for the whole run
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: no advisory locks, the check below still runs
            pass
        except BlockingIOError:
            raise UserError(
                f"{folder} is in use by another training run (pid {handle.read().strip() or 'unknown'}): every run "
                "needs a folder of its own. Leave hydra.run.dir unset (a new timestamped folder) or name another one."
            ) from None
        existing = folder / "checkpoints" / "last.ckpt"
        if not resuming and existing.is_file():
            raise UserError(
                f"{folder} already holds a run ({existing.relative_to(folder)}): continue it with ckpt_path=last, "
                "or start a new run in another folder (leave hydra.run.dir unset)."
            )
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


# -- reading a run folder back --------------------------------------------------------------------------------
def read_events(event_dir: Path, recursive: bool = False) -> tuple[dict[str, list], dict[str, list]]:
    """Scalars and images of every event file in ``event_dir`` (and its sub-folders if ``recursive``), in the order
    they were written; each file checked first (TensorBoard's reader would wait on a named pipe forever)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list] = {}
    images: dict[str, list] = {}
    for f in sorted((Path(event_dir).rglob if recursive else Path(event_dir).glob)("events.out.tfevents.*")):
        check_regular_file(f, "TensorBoard event file", MAX_EVENTS_BYTES, _RUN_FILE_FIX)
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for kind, read, found in (("scalars", acc.Scalars, scalars), ("images", acc.Images, images)):
            for tag in acc.Tags()[kind]:
                found.setdefault(tag, []).extend(read(tag))
    return scalars, images


def _version_key(path: Path) -> tuple[int, str]:
    """CSVLogger's ``version_N`` folders in the order they were written (``version_10`` after ``version_9``)."""
    found = re.search(r"(\d+)$", path.parent.name)
    return (int(found.group(1)) if found else -1, str(path))


def _csv_number(row: dict[str | Any, Any], column: str, where: str) -> float:
    """A ``metrics.csv`` step (a whole number >= 0, 0 when empty: ``-3`` or ``2.5`` would misplace the value) or
    wall time (seconds, NaN when empty); anything else is one line naming the file and line."""
    cell, step = row.get(column), column == "step"
    with contextlib.suppress(ValueError):
        value = float(cell or (0 if step else "nan"))
        if not step or (math.isfinite(value) and value.is_integer() and value >= 0):
            return value
    what = "a step number (a whole number >= 0)" if step else "a number of seconds"
    raise BadFileError(
        f"{where}: {column} {cell!r} is not {what}. Training writes whole step numbers and times there: restore "
        "the file or remove it (or pass another run)."
    )


def read_metrics_csv(csv_dir: Path) -> dict[str, list]:
    """Scalars of every ``metrics.csv`` under ``csv_dir`` (one ``version_N`` folder per start of a run), in the
    order they were written, shaped like :func:`read_events`'; every column but ``step`` and ``wall_time`` is a tag."""
    from tensorboard.backend.event_processing.event_accumulator import ScalarEvent

    scalars: dict[str, list] = {}
    for path in sorted(Path(csv_dir).rglob("metrics.csv"), key=_version_key):
        reader = csv.DictReader(io.StringIO(read_text_file(path, "metrics.csv", fix=_RUN_FILE_FIX), newline=""))
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            step, wall_time = int(_csv_number(row, "step", where)), _csv_number(row, CSV_TIME, where)
            for tag, cell in row.items():
                if tag not in ("step", CSV_TIME, None) and cell:  # None: cells past the header's columns
                    with contextlib.suppress(ValueError):  # a value that is not a number is not a scalar
                        scalars.setdefault(tag, []).append(ScalarEvent(wall_time, step, float(cell)))
    return scalars


def read_scalars(run_dir: Path) -> tuple[dict[str, list], Path | None]:
    """A run folder's scalars and where they came from: ``csv/`` where the run has a ``metrics.csv`` (CSVLogger),
    else ``tensorboard/`` (its event files); ``({}, None)`` when it has neither."""
    csv_dir, tb_dir = Path(run_dir) / "csv", Path(run_dir) / "tensorboard"
    if csv_dir.is_dir() and any(csv_dir.rglob("metrics.csv")):
        return read_metrics_csv(csv_dir), csv_dir
    if tb_dir.is_dir():
        return read_events(tb_dir)[0], tb_dir
    return {}, (csv_dir if csv_dir.is_dir() else None)  # a CSV run with nothing flushed yet: no values


def epoch_table(scalars: dict[str, list]) -> list[dict[str, Any]]:
    """One row per epoch of :func:`read_scalars`' scalars: train/val accuracy and loss, lr and minutes since the
    start (none where the values carry no wall time)."""
    # Lightning logs the epoch with every metric; the first value logged at a step counts
    epoch_at = {e.step: int(e.value) for e in reversed(scalars.get("epoch", []))}
    start = min((e.wall_time for v in scalars.values() for e in v if math.isfinite(e.wall_time)), default=0.0)
    rows: dict[int, dict[str, Any]] = {}
    tags = {"train/acc": "train_acc", "val/acc": "val_acc", "train/loss": "train_loss", "val/loss": "val_loss"}
    lr_tags = sorted(t for t in scalars if t.startswith("lr-"))
    for tag, col in [*tags.items(), *((t, "lr") for t in lr_tags[:1])]:
        for i, e in enumerate(scalars.get(tag, [])):
            epoch = epoch_at.get(e.step, i)
            row = rows.setdefault(epoch, {"epoch": epoch + 1})
            row[col] = e.value
            if col == "val_acc" and math.isfinite(e.wall_time):
                row["minutes"] = round((e.wall_time - start) / 60, 2)
    return [rows[k] for k in sorted(rows)]


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", None: "null"}


def read_metrics_json(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``metrics.json`` ({} when it has none); anything but a JSON object is one line naming it."""
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(read_text_file(path, "metrics.json", fix=_RUN_FILE_FIX)) if path.exists() else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        what = f"invalid JSON ({str(exc).splitlines()[0][:120] or type(exc).__name__})"
    else:
        if isinstance(data, dict):
            return data
        what = _JSON_KINDS[None if data is None else type(data)]  # all that json.loads returns besides dict
    raise BadFileError(
        f"{path}: metrics.json must be a JSON object (training and evaluate write one); it holds {what}. "
        "Restore the file or remove it (or pass another run folder)."
    )


def check_test_ckpt(rule: Any) -> str:
    """``rule`` if it names a checkpoint rule (:data:`TEST_CKPT_RULES`), else one line naming the key."""
    if not isinstance(rule, str) or rule not in TEST_CKPT_RULES:
        allowed = "; ".join(f"{name} ({what})" for name, what in TEST_CKPT_RULES.items())
        raise ConfigError(f"test_ckpt={rule!r}; allowed: {allowed}.")
    return rule


def rule_checkpoint(run_dir: Path) -> tuple[Path | None, str]:
    """(the checkpoint file a run folder's results use or None, its rule): the rule is metrics.json's
    ``test_ckpt``, else ``.hydra/config.yaml``'s, else ``last``. ``last``: checkpoints/last.ckpt if anything is
    there (a pipe or folder is refused by name when read); ``best``: metrics.json's ``best_checkpoint`` if it is
    still there, else the newest epoch_*.ckpt, else last.ckpt."""
    run_dir = Path(run_dir)
    metrics = read_metrics_json(run_dir)
    rule, config = metrics.get("test_ckpt"), run_dir / ".hydra" / "config.yaml"
    if rule is None and config.exists():
        from omegaconf import DictConfig, OmegaConf

        loaded = OmegaConf.load(io.StringIO(read_text_file(config, "run config", fix=_RUN_FILE_FIX)))
        rule = loaded.get("test_ckpt") if isinstance(loaded, DictConfig) else None
    rule = check_test_ckpt("last" if rule is None else rule)
    if rule == "best":
        named = metrics.get("best_checkpoint")
        if isinstance(named, str) and Path(named).is_file():  # Path("") is the current folder, not a file
            return Path(named), rule
        found = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1], rule
    last = run_dir / "checkpoints" / "last.ckpt"
    return (last if last.exists() else None), rule


def checkpoint_for(ckpt_path: str | os.PathLike[str] | None) -> tuple[str | None, str]:
    """(the file to load for ``ckpt_path``, how it was chosen, as printed): a run folder gives the checkpoint its
    results use (:func:`rule_checkpoint`), anything else :func:`alexnet_gtsrb.checkpoints.resolve_ckpt_path`'s."""
    from alexnet_gtsrb.checkpoints import resolve_ckpt_path

    path = Path(str(ckpt_path)).expanduser()
    run_folder = (path / "checkpoints").is_dir() or (path / "metrics.json").is_file() or (path / ".hydra").is_dir()
    if ckpt_path not in (None, "", "null") and run_folder:  # not just a folder of checkpoints
        found, rule = rule_checkpoint(path)
        if found is None:
            raise UserError(
                f"ckpt_path={ckpt_path}: the run's checkpoint rule test_ckpt={rule} finds no checkpoint "
                f"({TEST_CKPT_RULES[rule]}); pass ckpt_path=<file.ckpt>."
            )
        return str(found), f"the run folder's test_ckpt={rule}: {TEST_CKPT_RULES[rule]}"
    resolved = resolve_ckpt_path(None if ckpt_path is None else str(ckpt_path))
    how = "the file named" if path.is_file() else "the newest last*.ckpt under the folder"
    return resolved, how if resolved else ""
