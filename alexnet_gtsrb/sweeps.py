"""A Hydra callback for multiruns: a summary table at the sweep root.

:class:`SweepSummary` is registered in ``conf/hydra/default.yaml`` (``hydra.callbacks.sweep_summary``).
Each job's ``train()`` writes ``metrics.json`` into its own output folder; ``on_job_end`` records the job
(overrides, status, the value ``main`` returned), and ``on_multirun_end`` writes ``summary.csv`` and
``summary.md`` in ``hydra.sweep.dir`` with one row per job: job number, the overrides that vary between jobs,
``val/acc_best``, ``test/acc``, wall time, status, folder (the Markdown's first line lists the overrides
common to all jobs).
Jobs run by launchers in other processes are found by scanning the sweep folder for ``metrics.json``.

The Optuna sweeper (``hparams_search=optuna``) is ``hydra_plugins/alexnet_gtsrb_optuna``.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from alexnet_gtsrb.errors import BadFileError
from alexnet_gtsrb.utils.files import read_text_file, write_table

log = logging.getLogger(__name__)
DEFAULT_METRICS = ("val/acc_best", "test/acc")


def _read_metrics(job_dir: Path) -> dict[str, Any]:
    """The job's ``metrics.json`` (empty when it wrote none, e.g. it failed)."""
    path = job_dir / "metrics.json"
    try:
        return json.loads(read_text_file(path, "metrics.json"))
    except (OSError, ValueError, BadFileError):  # a pipe or oversized file is refused unread, like a bad one
        return {}


def _read_overrides(job_dir: Path) -> list[str]:
    """The job's overrides from ``.hydra/overrides.yaml`` (empty when absent)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in OmegaConf.load(io.StringIO(read_text_file(path, "overrides.yaml")))]


def _common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Overrides shared by every job (when there are several jobs), in the first job's order."""
    if len(rows) < 2:
        return []
    sets = [set(r["overrides"].split()) for r in rows]
    return [o for o in rows[0]["overrides"].split() if all(o in s for s in sets)]


class SweepSummary(Callback):
    """Collect every job of a multirun and write ``summary.csv``/``summary.md`` at the sweep root."""

    def __init__(self, metrics: list[str] | tuple[str, ...] = DEFAULT_METRICS, filename: str = "summary") -> None:
        self.metrics = [str(m) for m in metrics]
        self.filename = filename
        self.jobs: dict[str, dict[str, Any]] = {}

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Remember the job's folder, overrides, status and returned value (multirun jobs only matter)."""
        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg is not None else None
        if hydra_cfg is None:
            return
        out_dir = str(Path(hydra_cfg.runtime.output_dir).resolve())
        ok = job_return.status == JobStatus.COMPLETED
        self.jobs[out_dir] = {
            "job": hydra_cfg.job.get("num"),
            "overrides": list(job_return.overrides or []),
            "status": "completed" if ok else "failed",
            "return_value": job_return.return_value if ok else None,
        }

    def rows(self, sweep_dir: Path) -> list[dict[str, Any]]:
        """One row per job folder under ``sweep_dir`` (or recorded by ``on_job_end``), in job order."""
        dirs = {str(p.parent.parent.resolve()) for p in sweep_dir.glob("*/.hydra/overrides.yaml")}
        dirs |= {d for d in self.jobs if Path(d).parent == sweep_dir.resolve()}
        rows = []
        for d in dirs:
            job_dir = Path(d)
            seen = self.jobs.get(d, {})
            data = _read_metrics(job_dir)
            metrics = data.get("metrics", {})
            num = seen.get("job")
            if num is None:
                num = int(job_dir.name) if job_dir.name.isdigit() else job_dir.name
            row: dict[str, Any] = {
                "job": num,
                "overrides": " ".join(seen.get("overrides") or _read_overrides(job_dir)),
            }
            for m in self.metrics:
                row[m] = metrics.get(m)
            row["wall_time_s"] = data.get("wall_time_s")
            row["status"] = seen.get("status") or ("completed" if data else "unknown")
            row["dir"] = job_dir.name
            rows.append(row)
        return sorted(rows, key=lambda r: (str(type(r["job"])), r["job"]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the table as CSV and Markdown at ``hydra.sweep.dir``."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        rows = self.rows(sweep_dir)
        if not rows:
            return
        common = _common_overrides(rows)
        for r in rows:  # the overrides column shows what varies between jobs
            r["overrides"] = " ".join(o for o in r["overrides"].split() if o not in common)
        title = f"Sweep {sweep_dir}; overrides common to all jobs: `{' '.join(common) or '-'}`"
        write_table(rows, sweep_dir, self.filename, title)
        log.info("Sweep summary (%d jobs): %s", len(rows), sweep_dir / f"{self.filename}.md")
