"""A Hydra callback for multiruns (``conf/hydra/default.yaml``): ``summary.csv`` and ``summary.md`` at the sweep
root, one row per job (number, the overrides that vary, ``val/acc_best``, ``test/acc``, wall time, status, folder),
read from the job folders, so jobs that launchers ran in other processes are found too."""

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


class SweepSummary(Callback):
    """Collect every job of a multirun and write ``summary.csv``/``summary.md`` at the sweep root."""

    def __init__(
        self, metrics: list[str] | tuple[str, ...] = ("val/acc_best", "test/acc"), filename: str = "summary"
    ) -> None:
        self.metrics = [str(m) for m in metrics]
        self.filename = filename
        self.jobs: dict[str, dict[str, Any]] = {}

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Remember the job's folder, number, overrides and status."""
        if job_return.hydra_cfg is not None:
            hydra_cfg = job_return.hydra_cfg.hydra
            self.jobs[str(Path(hydra_cfg.runtime.output_dir).resolve())] = {
                "job": hydra_cfg.job.get("num"),
                "overrides": list(job_return.overrides or []),
                "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
            }

    def rows(self, sweep_dir: Path) -> list[dict[str, Any]]:
        """One row per job folder under ``sweep_dir`` (or recorded by ``on_job_end``), in job order."""
        dirs = {str(p.parent.parent.resolve()) for p in sweep_dir.glob("*/.hydra/overrides.yaml")}
        dirs |= {d for d in self.jobs if Path(d).parent == sweep_dir.resolve()}
        rows = []
        for d in dirs:
            job_dir, seen = Path(d), self.jobs.get(d, {})
            try:  # empty when the job wrote none (it failed); a pipe or oversized file is refused unread
                data = json.loads(read_text_file(job_dir / "metrics.json", "metrics.json"))
            except (OSError, ValueError, BadFileError):
                data = {}
            overrides = seen.get("overrides")
            if not overrides and (job_dir / ".hydra" / "overrides.yaml").is_file():
                text = read_text_file(job_dir / ".hydra" / "overrides.yaml", "overrides.yaml")
                overrides = [str(o) for o in OmegaConf.load(io.StringIO(text))]
            rows.append(
                {
                    "job": seen.get("job", int(job_dir.name) if job_dir.name.isdigit() else job_dir.name),
                    "overrides": " ".join(overrides or []),
                    **{m: data.get("metrics", {}).get(m) for m in self.metrics},
                    "wall_time_s": data.get("wall_time_s"),
                    "status": seen.get("status") or ("completed" if data else "unknown"),
                    "dir": job_dir.name,
                }
            )
        return sorted(rows, key=lambda r: (str(type(r["job"])), r["job"]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the table as CSV and Markdown at ``hydra.sweep.dir``."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = self.rows(sweep_dir) if sweep_dir.is_dir() else []
        if not rows:
            return
        # the overrides column shows what varies between jobs; the title those shared by every job (when several)
        common = [o for o in rows[0]["overrides"].split() if all(o in r["overrides"].split() for r in rows)]
        common = common if len(rows) > 1 else []
        for r in rows:
            r["overrides"] = " ".join(o for o in r["overrides"].split() if o not in common)
        title = f"Sweep {sweep_dir}; overrides common to all jobs: `{' '.join(common) or '-'}`"
        write_table(rows, sweep_dir, self.filename, title)
        log.info("Sweep summary (%d jobs): %s", len(rows), sweep_dir / f"{self.filename}.md")
