"""The bench command: a real tiny run end to end (every section, table and JSON), skipping, option checks.

The command line is driven as a user runs it (``python -m alexnet_gtsrb.bench ...`` in a subprocess); the
section tests call :func:`run_command` in-process on ``conf/bench.yaml`` composed by Hydra's compose API.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from alexnet_gtsrb.bench import bench_options, run_command
from alexnet_gtsrb.data.io import roi_box, roi_crop
from tests.helpers import run_module

TINY = [
    "data.synthetic=null",
    "data.image_size=67",
    "data.batch_size=4",
    "data.num_workers=1",
    "trainer.accelerator=cpu",
    "bench.steps=1",
    "bench.warmup=0",
    "bench.e2e_warmup=1",
    "bench.items=20",
    "bench.memory_records=12",
]


@pytest.fixture()
def bench_cfg(compose_cfg):
    """bench_cfg(overrides) -> conf/bench.yaml composed with overrides (outputs in the test's tmp_path)."""
    return lambda overrides: compose_cfg(overrides, config_name="bench")


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory) -> Path:
    """The smallest synthetic GTSRB tree that still has a track-aware train split (2 tracks x 2 frames)."""
    from alexnet_gtsrb.data.synthetic import generate

    root = tmp_path_factory.mktemp("bench_synthetic")
    return generate(root, train_tracks_per_class=2, frames_per_track=2, test_per_class=1)


def _table_rows(stdout: str) -> dict[str, list[float]]:
    """section -> the numbers in the table's value column (the line after the dashes onwards)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^-{7,}\s+-+", line)) + 1
    values: dict[str, list[float]] = {}
    for line in lines[start:]:
        m = re.match(r"^(\w+)\s+.+?\s{2,}([\d,]+(?:\.\d+)?)\s{2}\S", line)
        if not m:
            break
        values.setdefault(m.group(1), []).append(float(m.group(2).replace(",", "")))
    return values


@pytest.mark.slow
def test_precision_section_measures_bf16_and_compile_against_fp32(tmp_path, bench_cfg):
    """f. fp32 NCHW / channels_last / bf16 / torch.compile rows with ratios; profiled steps name real ops."""
    out = tmp_path / "bench.json"
    result = run_command(
        bench_cfg([*TINY, "bench.sections=[precision]", "bench.precision_batch=2", f"bench.out={out}"])
    )
    rows = result["rows"]
    assert [r["what"] for r in rows] == [
        "fp32, NCHW",
        "fp32, channels_last",
        "bf16 autocast, channels_last",
        "fp32, channels_last, torch.compile",
    ]
    for r in rows:
        assert r["section"] == "precision" and r["value"] > 0 and math.isfinite(r["value"])
        assert (r["ratio"] is None) == (r["what"] == "fp32, channels_last")
    notes = {r["what"]: r["note"] for r in rows}
    for what in ("fp32, channels_last", "bf16 autocast, channels_last"):
        assert re.search(r"top ops: aten::\w+ \d+%", notes[what]), notes[what]
    assert json.loads(out.read_text())["rows"] == rows


@pytest.mark.slow
def test_tiny_real_run_prints_every_section_and_writes_json(tiny_tree, tmp_path, bench_cfg):
    out = tmp_path / "bench.json"
    proc = run_module(
        "bench",
        [f"data.data_dir={tiny_tree}", *TINY, f"bench.out={out}"],
        env_extra={"PYTHONWARNINGS": "ignore"},
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no run folder, .hydra/ or log file
    default_sections = list(bench_cfg([]).bench.sections)
    assert proc.stdout.startswith("machine:"), proc.stdout[:500]
    table = _table_rows(proc.stdout)
    assert set(table) == set(default_sections), proc.stdout
    for section, values in table.items():
        assert values and all(math.isfinite(v) and v > 0 for v in values), (section, values)
    assert "skipped" not in proc.stdout

    result = json.loads(out.read_text())
    assert {"machine", "config", "rows"} <= set(result)
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"]
    rows = result["rows"]
    assert {r["section"] for r in rows} == set(default_sections)
    for r in rows:
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
    ratios = {(r["section"], r["what"]): r["ratio"] for r in rows if r["ratio"] is not None}
    assert any(s == "e2e" for s, _ in ratios)  # e2e / ceiling
    assert sum(s == "lrn" for s, _ in ratios) == 2  # fast / none and torch / none
    assert any(s == "pipeline" for s, _ in ratios)  # project / torchvision
    assert sum(s == "memory" for s, _ in ratios) == 2  # 3x / 1x, main process and workers
    assert all(r > 0 for r in ratios.values())


def test_sections_needing_data_are_skipped_without_data(tmp_path, capsys, bench_cfg):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_command(bench_cfg([f"data.data_dir={empty}", *TINY, "bench.sections=[e2e,pipeline,memory]"]))
    rows = result["rows"]
    assert [r["section"] for r in rows if r["value"] is None] == ["e2e", "pipeline", "memory"]
    assert all(r["what"] == f"skipped (no data at {empty})" for r in rows if r["value"] is None)
    assert f"skipped (no data at {empty})" in capsys.readouterr().out


def test_options_are_normalised_and_checked(bench_cfg):
    cfg = bench_cfg(["bench.steps=2", "++bench.items=3", "data.batch_size=4"])  # plain and forced overrides
    assert (cfg.bench.steps, cfg.bench["items"], cfg.data.batch_size) == (2, 3, 4)
    cfg = bench_cfg(["bench.sections=[memory,ceiling]", "bench.steps=2"])
    opts = bench_options(cfg)
    assert opts["sections"] == ["ceiling", "memory"]  # canonical order
    assert opts["steps"] == 2 and opts["items"] == 1000
    with pytest.raises(ConfigCompositionException):  # not a bench option: Hydra refuses it
        bench_cfg(["bench.bogus=1"])
    proc = run_module("bench", ["+bench.bogus=1"], timeout=120)
    assert proc.returncode == 2 and "unknown bench option(s) ['bogus']" in proc.stderr, proc.stderr[-2000:]
    proc = run_module("bench", ["bench.sections=[nope]"], timeout=120)
    assert proc.returncode == 2 and "bench.sections=['nope']: choose from" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("actual", "expected"), [((35, 35), (5, 6, 30, 29)), ((36, 36), (5, 6, 31, 30)), ((70, 72), (10, 12, 60, 60))]
)
def test_roi_box_scales_from_declared_to_actual_size(actual, expected):
    """The box both the project's crop and the torchvision reference use (ROI given for a 36x36 original)."""
    assert roi_box((5, 6, 30, 29), actual, (36, 36)) == expected
    w, h = actual
    image = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3)
    left, top, right, bottom = expected
    np.testing.assert_array_equal(roi_crop(image, (5, 6, 30, 29), (36, 36)), image[top:bottom, left:right])
    assert roi_box((-4, -4, 99, 99), actual, (36, 36)) == (0, 0, w, h)  # clamped to the image


def test_ceiling_uses_the_configured_optimizer_and_times_the_ema(bench_cfg):
    """a. The ceiling's steps run the run's own optimizer (named in the row) and loss; with callbacks=ema a second
    row adds the EMA update to every step, as a ratio of the bare steps."""
    result = run_command(bench_cfg([*TINY, "optimizer=adamw", "callbacks=ema", "bench.sections=[ceiling]"]))
    rows = result["rows"]
    assert [r["what"] for r in rows] == [
        "bare train steps, random tensors (AdamW fused)",
        "the same + EMA update per step",
    ]
    assert all(r["value"] > 0 for r in rows)
    assert rows[1]["ratio"] == pytest.approx(rows[1]["value"] / rows[0]["value"])
    plain = run_command(bench_cfg([*TINY, "optimizer=sgd", "callbacks=default", "bench.sections=[ceiling]"]))
    assert [r["what"] for r in plain["rows"]] == ["bare train steps, random tensors (SGD)"]


def test_throughput_steps_leave_the_weights_alone_but_run_the_optimizer():
    """lr is forced to 0 (weights unchanged), yet the optimizer really steps (AdamW's state is created)."""
    import torch

    from alexnet_gtsrb.bench.throughput import measure_train_throughput

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    net(torch.zeros(1, 3, 8, 8))
    before = [p.detach().clone() for p in net.parameters()]
    made: list[torch.optim.Optimizer] = []
    calls: list[int] = []

    def build(params):
        made.append(torch.optim.AdamW(params, lr=1.0))
        return made[-1]

    rate = measure_train_throughput(
        net, batch=2, image_size=8, steps=2, warmup=1, bf16=False, channels_last=False, num_classes=5,
        optimizer=build, label_smoothing=0.1, after_step=lambda: calls.append(1),
    )  # fmt: skip
    assert rate > 0 and len(calls) == 3
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert all(made[0].state[p]["step"] == 3 for p in net.parameters())


@pytest.mark.slow
def test_profile_section_names_hooks_ops_and_stages(tiny_tree, bench_cfg):
    """h. SimpleProfiler hooks (ms per batch, share of the batch), torch.profiler's top operators and the
    per-item stage timers; with on_device the batch augmentation's time per batch too."""
    over = [f"data.data_dir={tiny_tree}", *TINY, "bench.sections=[profile]", "bench.steps=2", "callbacks=ema"]
    over += ["data.augment.clahe=true", "data.augment.on_device=true", "data.num_workers=0"]
    rows = run_command(bench_cfg(over))["rows"]
    what = [r["what"] for r in rows]
    hooks = {w: r for w, r in zip(what, rows, strict=True) if w.startswith("hook: ")}
    assert "hook: run_training_batch" in hooks and hooks["hook: run_training_batch"]["ratio"] == pytest.approx(1.0)
    assert "hook: [Callback]EMAWeights.on_train_batch_end" in hooks
    assert any("on_after_batch_transfer" in w for w in hooks)
    ops = [r for r in rows if r["what"].startswith("op: aten::")]
    assert ops and all(r["value"] > 0 and 0 < r["ratio"] <= 1 for r in ops)
    assert [r["value"] for r in ops] == sorted((r["value"] for r in ops), reverse=True)
    stages = {r["what"].removeprefix("item stage: "): r for r in rows if r["what"].startswith("item stage: ")}
    assert {"decode", "CLAHE", "Affine", "Resize"} <= set(stages)
    assert sum(r["ratio"] for r in stages.values()) == pytest.approx(1.0)
    assert any(r["what"] == "batch stage: BatchAugment" and r["value"] > 0 for r in rows)


def test_ema_section_times_both_updates(bench_cfg):
    """g. Per-tensor and foreach EMA updates of the configured net, in ms, the foreach one as a ratio."""
    result = run_command(bench_cfg([*TINY, "bench.sections=[ema]"]))
    rows = result["rows"]
    assert [r["what"] for r in rows] == [
        "EMA update, per-tensor avg_fn (EMAWeightAveraging)",
        "EMA update, foreach multi_avg_fn (callbacks=ema)",
    ]
    assert all(r["section"] == "ema" and r["unit"] == "ms" and r["value"] > 0 for r in rows)
    assert rows[0]["ratio"] is None and rows[1]["ratio"] == pytest.approx(rows[1]["value"] / rows[0]["value"])
    assert re.match(r"5 updates of [\d,]+ values", rows[0]["note"])


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_parts(tiny_tree, tmp_path):
    """`make gpu-check` (experiment=gpu) with the CPU standing in for the GPU: the ceiling and Lightning fit from
    disk run, and the share of fit time spent waiting for the next batch is measured and lies in [0, 1)."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = tmp_path / "gpu_check.json"
    cpu = (
        "trainer=cpu trainer.precision=32-true data.image_size=67 data.batch_size=4 data.num_workers=1 "
        "data.cache=false bench.sections=[ceiling,e2e] bench.steps=3 bench.warmup=1 bench.e2e_warmup=1"
    )
    make = ["make", "-C", str(ROOT), "-o", ".venv/.installed", "gpu-check", f"BIN={Path(sys.executable).parent}"]
    make += [f"GTSRB_ROOT={tiny_tree}", f"GPU_CHECK_ARGS={cpu}", f"GPU_CHECK_OUT={out}"]
    r = subprocess.run(make, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by_what = {(row["section"], row["what"]): row for row in rows}
    assert by_what[("e2e", "Lightning fit, GTSRB from disk")]["value"] > 0
    wait = by_what[("e2e", "waiting for the next batch")]["value"]
    assert 0.0 <= wait < 1.0
    assert any(row["section"] == "ceiling" and row["value"] for row in rows)
    assert "waiting for the next batch" in r.stdout
