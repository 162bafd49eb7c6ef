"""Research workflows: resume in place, DDP on CPU processes, sweep summaries, learning-rate schedules.

The subprocess tests run the real entry point (``python -m alexnet_gtsrb.train``) at tiny settings on the
synthetic tree: 67-pixel images, a few batches, no DataLoader workers.
"""

from __future__ import annotations

import csv
import json
import math
import time
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from alexnet_gtsrb.checkpoints import resolve_ckpt_path
from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.schedules import warmup_cosine
from tests.helpers import read_event_tags, run_train, tiny_overrides


# -- schedules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["plateau", "step", "cosine", "onecycle", "none"])
def test_every_scheduler_config_builds_in_configure_optimizers(compose_cfg, name):
    """Each conf/scheduler option composes and builds with each optimizer the module makes."""
    cfg = compose_cfg(["model=alexnet_bn", f"scheduler={name}", "trainer.max_epochs=4"])
    model = instantiate(cfg.model, _recursive_=False)
    model._trainer = SimpleNamespace(estimated_stepping_batches=12)  # what OneCycleLR reads
    out = model.configure_optimizers()
    if name == "none":
        assert isinstance(out, torch.optim.Optimizer)
        return
    optimizer, sched = out["optimizer"], out["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert sched["interval"] == ("step" if name == "onecycle" else "epoch")
    scheduler = sched["scheduler"]
    for _ in range(3):  # it steps (plateau needs the monitored value)
        optimizer.step()
        scheduler.step(0.5) if name == "plateau" else scheduler.step()
    assert all(g["lr"] >= 0 for g in optimizer.param_groups)


def test_cosine_warmup_curve_starts_low_peaks_after_warmup_and_decays():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = warmup_cosine(optimizer, warmup_epochs=3, total_epochs=10, warmup_start_factor=0.01)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3]  # linear warm-up
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 3  # the peak right after warm-up
    assert all(a > b for a, b in zip(lrs[3:10], lrs[4:11], strict=True))  # cosine decay ...
    assert lrs[10] == pytest.approx(0.0, abs=1e-12) and lrs[11] == lrs[10]  # ... to min_lr_factor, then flat
    # its state (the factor object's parameters and the epoch) survives a checkpoint round trip
    fresh = warmup_cosine(torch.optim.SGD([param], lr=0.1), warmup_epochs=1, total_epochs=2)
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh.lr_lambdas[0].total == 10 and fresh.last_epoch == scheduler.last_epoch


def test_cosine_warmup_in_a_short_run_warms_up_over_the_wholerun_train(compose_cfg):
    cfg = compose_cfg(["model=alexnet_bn", "scheduler=cosine", "trainer.max_epochs=2"])
    assert cfg.model.scheduler.total_epochs == 2  # follows trainer.max_epochs
    param = torch.nn.Parameter(torch.zeros(1))
    sched_cfg = {k: v for k, v in cfg.model.scheduler.items() if k != "interval"}
    scheduler = instantiate(sched_cfg)(torch.optim.SGD([param], lr=1.0))
    assert scheduler.lr_lambdas[0].warmup == 2


# -- resume ---------------------------------------------------------------------------------------------
def test_resolve_ckpt_path_last_uses_the_run_folder(tmp_path):
    with pytest.raises(UserError, match="hydra.run.dir"):
        resolve_ckpt_path("last", run_dir=tmp_path)
    (tmp_path / "checkpoints").mkdir()
    old, new = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "last-v1.ckpt"
    old.write_bytes(b"a")
    time.sleep(0.01)
    new.write_bytes(b"b")
    assert resolve_ckpt_path("last", run_dir=tmp_path) == str(new)
    assert resolve_ckpt_path(str(tmp_path)) == str(new)
    assert resolve_ckpt_path(str(old)) == str(old)
    assert resolve_ckpt_path(None) is None


@pytest.mark.slow
def test_resume_last_continues_the_same_run_in_place(tmp_path, synthetic_root):
    """2 epochs, then ``trainer.max_epochs=3 ckpt_path=last`` into the same folder: one run, continued."""
    run_dir = tmp_path / "run"
    args = [
        *tiny_overrides(synthetic_root),
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=0.5",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "test=false",
        f"hydra.run.dir={run_dir}",
    ]
    first = run_train([*args, "trainer.max_epochs=2"])
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 4)
    best_before = ckpt["val_acc_best"]
    tags_before = read_event_tags(run_dir / "tensorboard")

    second = run_train([*args, "trainer.max_epochs=3", "ckpt_path=last"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restored all states" in second.stdout + second.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 6)  # one more epoch of 2 steps, not a restart
    assert ckpt["val_acc_best"] >= best_before
    # the step scheduler continued: lr halved once per epoch, 3 epochs -> 3 halvings
    lr0 = ckpt["hyper_parameters"]["optimizer"]["lr"]
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 3
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr0 * 0.5**3)

    # one TensorBoard folder; epoch-3 points come after the epoch-1/2 ones, on the continued step axis
    assert [p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()] == []
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    tags = read_event_tags(run_dir / "tensorboard")
    assert len(tags_before["val/acc"]) == 2 and len(tags["val/acc"]) == 3
    steps = [e.step for e in tags["val/acc"]]
    assert steps == sorted(steps) and steps[-1] > max(e.step for e in tags_before["val/acc"])
    epochs = sorted((e.step, e.value) for e in tags["epoch"])
    assert [v for _, v in epochs][-1] == 2
    best = [e.value for e in sorted(tags["val/acc_best"], key=lambda e: e.step)]
    assert all(b >= a for a, b in zip(best, best[1:], strict=False)), best  # never decreases across the resume
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and metrics["resumed_from"].endswith("last.ckpt")


# -- sweeps ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_multirun_writes_job_folders_and_a_summary(tmp_path, synthetic_root):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(
        [
            "-m",
            *tiny_overrides(synthetic_root),
            "optimizer.lr=1e-3,1e-2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        data = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert {"val/acc_best", "test/acc"} <= set(data["metrics"]) and data["wall_time_s"] > 0
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert [float(r["overrides"].split("=")[1]) for r in rows] == [1e-3, 1e-2]  # only the swept key, job order
    for r in rows:
        for col in ("val/acc_best", "test/acc", "wall_time_s"):
            assert math.isfinite(float(r[col])), r
        assert r["status"] == "completed"
    md = (sweep_dir / "summary.md").read_text().strip().splitlines()
    assert len(md) == 6 and "experiment=demo" in md[0] and "val/acc_best" in md[2]
    assert md[5].startswith("| 1 | optimizer.lr=0.01 |")


# -- DDP on CPU -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_cpu_two_processes_share_one_run_and_split_the_data(tmp_path, synthetic_root, compose_cfg):
    """``trainer=ddp_cpu trainer.devices=2``: two gloo ranks, one run folder, disjoint shards, synced metrics."""
    logs, shards, bs = tmp_path / "logs", tmp_path / "shards", 32
    data_args = [*tiny_overrides(synthetic_root, batch_size=bs), "model.net.batch_norm=false"]  # no per-rank BN stats
    proc = run_train(
        [*data_args, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=1", "test=false", "scheduler=step"],
        env_extra={"ALEXNET_GTSRB_LOGS": str(logs), "ALEXNET_GTSRB_DUMP_SHARDS": str(shards), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one Hydra run folder (the child rank got the parent's hydra.run.dir, not a new ${now:...} folder)
    runs = list((logs / "demo" / "runs").iterdir())
    assert len(runs) == 1, runs
    run_dir = runs[0]
    # <task_name>.log for rank 0; Lightning names the relaunched rank's log itself
    assert {p.name for p in run_dir.glob("*.log")} == {"demo.log", "train_ddp_process_1.log"}
    assert len(list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))) == 1  # rank 0 logs only
    # per-rank and global batch size
    assert "batch size: 32 per rank x 2 rank(s) = 64 global" in proc.stdout
    hparams = (run_dir / "tensorboard" / "hparams.yaml").read_text()
    assert "batch_size_global: 64" in hparams and "batch_size_per_rank: 32" in hparams
    # each rank drew its own shard: disjoint (but DistributedSampler's padding) and together all samples
    r0, r1 = (json.loads((shards / f"rank{r}.json").read_text()) for r in (0, 1))
    n = r0["dataset_len"]
    per_rank = math.ceil(n / 2)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["sampler"] == "DistributedSamplerWrapper"  # of RunSampler
    assert len(r0["indices"]) == len(r1["indices"]) == per_rank
    assert set(r0["indices"]) | set(r1["indices"]) == set(range(n))
    assert len(set(r0["indices"]) & set(r1["indices"])) == 2 * per_rank - n  # 0, or 1 padded repeat
    # optimizer steps per epoch follow the global batch: floor(ceil(n / 2) / 32) with drop_last
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == per_rank // bs
    # val/acc is reduced over both ranks: it equals the checkpoint's accuracy over the whole (padded) val set
    logged = read_event_tags(run_dir / "tensorboard")["val/acc"][-1].value
    cfg = compose_cfg(data_args)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    from alexnet_gtsrb.module import GTSRBClassifier

    model = GTSRBClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True).eval()
    preds, labels = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            x, y = dm.on_after_batch_transfer(batch, 0)
            preds.append(model(x).argmax(-1))
            labels.append(y)
    correct = (torch.cat(preds) == torch.cat(labels)).float()
    nv = len(correct)
    padded = torch.cat([correct, correct[: 2 * math.ceil(nv / 2) - nv]])  # what the two val shards held
    assert logged == pytest.approx(padded.mean().item(), abs=1e-6)


def test_sweep_summary_reads_job_folders(tmp_path):
    """The summary also works from the folders alone (launchers that run jobs in other processes)."""
    from omegaconf import OmegaConf

    from alexnet_gtsrb.sweeps import SweepSummary

    for num, (acc, lr) in enumerate([(0.5, "1e-3"), (0.75, "1e-2")]):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"optimizer.lr={lr}"]), job / ".hydra" / "overrides.yaml")
        metrics = {"metrics": {"val/acc_best": acc, "test/acc": acc - 0.1}, "wall_time_s": 1.5}
        (job / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job that failed before writing metrics
    OmegaConf.save(OmegaConf.create(["optimizer.lr=1"]), tmp_path / "2" / ".hydra" / "overrides.yaml")
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert rows[1]["overrides"] == "optimizer.lr=1e-2" and float(rows[1]["val/acc_best"]) == 0.75
    assert rows[2]["val/acc_best"] == "" and rows[2]["status"] == "unknown"
    md = (tmp_path / "summary.md").read_text()
    assert "| 1 | optimizer.lr=1e-2 | 0.7500 | 0.6500 | 1.5 | completed | 1 |" in md
