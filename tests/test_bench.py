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
from tests.helpers import run_in_process, run_module

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


class WorkClock:
    """A ``time`` stand-in whose ``perf_counter`` moves only when the test says work was done (``advance``),
    plus ``tick`` seconds per reading: the true rate of a timed loop is then known in advance."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick
        self.reads = 0

    def perf_counter(self) -> float:
        self.reads += 1
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def work_clock(monkeypatch):
    """work_clock(*modules, tick=0.0) -> one WorkClock installed as the ``time`` of each of those bench modules."""

    def install(*modules, tick: float = 0.0) -> WorkClock:
        clock = WorkClock(tick)
        for module in modules:
            monkeypatch.setattr(module, "time", clock)
        return clock

    return install


@pytest.fixture()
def priced_steps(monkeypatch):
    """priced_steps(clock, fp32, bf16=None, ema=0.0): every cross-entropy of a training step advances ``clock`` by
    ``fp32`` (or, under CPU bf16 autocast, ``bf16``) seconds per image, every EMA update by ``ema`` seconds."""
    from torch.optim.swa_utils import AveragedModel

    def install(clock: WorkClock, fp32: float, bf16: float | None = None, ema: float = 0.0) -> None:
        import torch

        cross_entropy = torch.nn.functional.cross_entropy
        update = AveragedModel.update_parameters

        def priced_loss(logits, *args, **kwargs):
            per_image = bf16 if bf16 is not None and torch.is_autocast_enabled("cpu") else fp32
            clock.advance(per_image * logits.shape[0])
            return cross_entropy(logits, *args, **kwargs)

        def priced_update(self, model):
            clock.advance(ema)
            return update(self, model)

        monkeypatch.setattr(torch.nn.functional, "cross_entropy", priced_loss)
        monkeypatch.setattr(AveragedModel, "update_parameters", priced_update)

    return install


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
def test_precision_section_measures_bf16_and_compile_against_fp32(tmp_path, bench_cfg, work_clock, priced_steps):
    """f. fp32 NCHW / channels_last / bf16 / torch.compile rows with ratios; profiled steps name real ops.

    The timer is a clock that moves only when a step computes its loss: 0.5 s per image in fp32, 0.2 s under
    bf16 autocast. The true rates are then 2 and 5 img/s, and a row that timed the wrong steps, counted the
    wrong number of images or ran without (or with) autocast shows another number."""
    from alexnet_gtsrb.bench import throughput

    priced_steps(work_clock(throughput), fp32=0.5, bf16=0.2)
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
    assert [r["value"] for r in rows] == pytest.approx([2.0, 2.0, 5.0, 2.0])
    assert [r["ratio"] for r in rows] == [pytest.approx(1.0), None, pytest.approx(2.5), pytest.approx(1.0)]
    assert all(r["section"] == "precision" for r in rows)
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
    assert "skipped" not in proc.stdout

    result = json.loads(out.read_text())
    assert {"machine", "config", "rows"} <= set(result)
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"]
    rows = result["rows"]
    assert {r["section"] for r in rows} == set(default_sections)
    for r in rows:
        assert isinstance(r["value"], float) and math.isfinite(r["value"]), r
    # the printed table is the JSON, value for value (printed with 3 significant digits at least)
    for section, printed in table.items():
        stored = [r["value"] for r in rows if r["section"] == section and r["value"] is not None]
        assert printed == pytest.approx(stored, rel=5e-3, abs=5e-3), (section, printed, stored)
    # each ratio is the quotient of the two rows it names
    by_what = {(r["section"], r["what"]): r for r in rows}
    ceiling = next(r for r in rows if r["section"] == "ceiling")
    e2e = by_what[("e2e", "Lightning fit, GTSRB from disk")]
    assert e2e["ratio"] == pytest.approx(e2e["value"] / ceiling["value"])
    no_lrn = by_what[("lrn", "paper model, no LRN")]["value"]
    lrn = [r for r in rows if r["section"] == "lrn" and r["reference"] == "no LRN"]
    assert len(lrn) == 2 and all(r["ratio"] == pytest.approx(r["value"] / no_lrn) for r in lrn)
    project, reference = (r for r in rows if r["section"] == "pipeline")
    assert project["ratio"] == pytest.approx(project["value"] / reference["value"])
    # memory: marks after the first batch (4 items), 1x (the 12 records) and 3x (36), ratio 3x / 1x
    memory = [r for r in rows if r["section"] == "memory"]
    for who in ("RSS main process", "private RSS (USS) of 1 loader workers, sum"):
        marks = {m: by_what[("memory", f"{who}, after {m}")] for m in ("first batch (4 items)", "1x (12 items)")}
        three = by_what[("memory", f"{who}, after 3x (36 items)")]
        assert three["ratio"] == pytest.approx(three["value"] / marks["1x (12 items)"]["value"])
        assert three["value"] > 0  # read while the worker is alive, at the last batch
    assert any(r["what"] == "loader throughput over 36 items (batch 4)" for r in memory)
    assert e2e["note"].startswith("1 warm-up + 1 timed batches")  # bench.e2e_warmup=1, bench.steps=1


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
    proc = run_in_process("bench", ["+bench.bogus=1"])
    assert proc.returncode == 2 and "unknown bench option(s) ['bogus']" in proc.stderr, proc.stderr[-2000:]
    proc = run_in_process("bench", ["bench.sections=[nope]"])
    assert proc.returncode == 2 and "bench.sections=['nope']: choose from" in proc.stderr, proc.stderr[-2000:]
    for override, message in [
        ("bench.steps=0", "bench.steps=0: must be an integer >= 1."),
        ("bench.warmup=abc", "bench.warmup=abc: must be an integer >= 0."),
        ("bench.lrn_batch=-2", "bench.lrn_batch=-2: must be an integer >= 1 or null."),
    ]:
        proc = run_in_process("bench", [override])
        assert proc.returncode == 2 and message in proc.stderr, (override, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert bench_options(bench_cfg(["bench.memory_records=null", "bench.sections=ema"]))["sections"] == ["ema"]


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


def test_ceiling_uses_the_configured_optimizer_and_times_the_ema(bench_cfg, work_clock, priced_steps):
    """a. The ceiling's steps run the run's own optimizer (named in the row) and loss; with callbacks=ema a second
    row adds the EMA update to every step, as a ratio of the bare steps.

    On a clock that moves 0.125 s per image of a loss and 0.5 s per EMA update, a step of 4 images (TINY) takes
    0.5 s bare and 1.0 s with the update: 8 and 4 img/s, ratio 0.5."""
    from alexnet_gtsrb.bench import throughput

    priced_steps(work_clock(throughput), fp32=0.125, ema=0.5)
    result = run_command(bench_cfg([*TINY, "optimizer=adamw", "callbacks=ema", "bench.sections=[ceiling]"]))
    rows = result["rows"]
    assert [r["what"] for r in rows] == [
        "bare train steps, random tensors (AdamW fused)",
        "the same + EMA update per step",
    ]
    assert [r["value"] for r in rows] == pytest.approx([8.0, 4.0])
    assert rows[1]["ratio"] == pytest.approx(0.5)
    plain = run_command(bench_cfg([*TINY, "optimizer=sgd", "callbacks=default", "bench.sections=[ceiling]"]))
    assert [r["what"] for r in plain["rows"]] == ["bare train steps, random tensors (SGD)"]


def test_train_throughput_is_timed_images_over_timed_seconds(work_clock):
    """img/s = the images of the timed steps / the time they took, warm-up excluded: on a clock that advances
    0.25 s per image the net sees (warm-up steps too), the rate is 4 img/s whatever batch, steps and warmup
    are, and the clock is read twice (start, end)."""
    import torch

    from alexnet_gtsrb.bench import throughput

    for batch, steps, warmup in [(3, 2, 1), (5, 1, 0), (2, 4, 2)]:
        clock = work_clock(throughput)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 7))
        net.register_forward_hook(lambda _m, inputs, _out, c=clock: c.advance(0.25 * inputs[0].shape[0]))
        rate = throughput.measure_train_throughput(
            net, batch=batch, image_size=4, steps=steps, warmup=warmup, bf16=False, channels_last=False, num_classes=7
        )
        assert rate == pytest.approx(4.0) and clock.reads == 2, (batch, steps, warmup, rate)


def test_steady_state_timer_counts_the_batches_after_warmup(work_clock):
    """e2e's timer, driven batch by batch on a controlled clock: 0.5 s waiting for each batch, 0.1 s per image
    computing it. With warmup 2 and batches of 4, 4, 3, 4, 1 images, the timed stretch runs from the end of
    batch 2 to the end of batch 5: 3 + 4 + 1 = 8 images in 3 x 0.5 + 0.8 = 2.3 s, 1.5 s of it waiting."""
    import torch

    from alexnet_gtsrb.bench import throughput

    clock = work_clock(throughput)
    timer = throughput.SteadyStateTimer(warmup=2, device=torch.device("cpu"))
    for i, n in enumerate([4, 4, 3, 4, 1]):
        batch = (torch.zeros(n, 3, 2, 2), torch.zeros(n, dtype=torch.long))
        clock.advance(0.5)
        timer.on_train_batch_start(None, None, batch, i)
        clock.advance(0.1 * n)
        timer.on_train_batch_end(None, None, None, batch, i)
    assert timer.images == 8
    assert timer.rate() == pytest.approx(8 / 2.3)
    assert timer.data_wait_fraction() == pytest.approx(1.5 / 2.3)


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

    measure_train_throughput(
        net, batch=2, image_size=8, steps=2, warmup=1, bf16=False, channels_last=False, num_classes=5,
        optimizer=build, label_smoothing=0.1, after_step=lambda: calls.append(1),
    )  # fmt: skip
    assert len(calls) == 3
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert all(made[0].state[p]["step"] == 3 for p in net.parameters())


@pytest.mark.slow
def test_profile_section_names_hooks_ops_and_stages(tiny_tree, bench_cfg, work_clock, monkeypatch):
    """h. SimpleProfiler hooks (ms per batch, share of the batch), torch.profiler's top operators and the
    per-item stage timers; with on_device the batch augmentation's time per batch too.

    The stage timers read a clock that moves 1 us per reading and 3 ms per batch augmentation: each item stage
    must then read 1.00 us per item (one reading's worth per item and stage, averaged over the items timed) and
    the batch stage 3.00 ms per batch (over the timed calls, the warm-up call left out)."""
    from alexnet_gtsrb.bench import sections_data, throughput
    from alexnet_gtsrb.data.batch_augment import BatchAugment

    clock = work_clock(sections_data, throughput, tick=1e-6)
    floats = BatchAugment.floats

    def priced_floats(self, images):
        clock.advance(0.003)
        return floats(self, images)

    monkeypatch.setattr(BatchAugment, "floats", priced_floats)
    over = [f"data.data_dir={tiny_tree}", *TINY, "bench.sections=[profile]", "bench.steps=2", "callbacks=ema"]
    over += ["data.augment.clahe=true", "data.augment.on_device=true", "data.num_workers=0"]
    rows = run_command(bench_cfg(over))["rows"]
    what = [r["what"] for r in rows]
    hooks = {w: r for w, r in zip(what, rows, strict=True) if w.startswith("hook: ")}
    assert "hook: run_training_batch" in hooks and hooks["hook: run_training_batch"]["ratio"] == pytest.approx(1.0)
    assert "hook: [Callback]EMAWeights.on_train_batch_end" in hooks
    assert any("on_after_batch_transfer" in w for w in hooks)
    batch_ms = hooks["hook: run_training_batch"]["value"]
    assert all(r["value"] == pytest.approx(r["ratio"] * batch_ms) for r in hooks.values())  # share of one batch
    ops = [r for r in rows if r["what"].startswith("op: aten::")]
    assert ops and all(0 < r["ratio"] <= 1 for r in ops)
    op_total = ops[0]["value"] / ops[0]["ratio"]  # every op's ms is its share of the same self-CPU total
    assert all(r["value"] == pytest.approx(r["ratio"] * op_total) for r in ops)
    assert [r["value"] for r in ops] == sorted((r["value"] for r in ops), reverse=True)
    stages = {r["what"].removeprefix("item stage: "): r for r in rows if r["what"].startswith("item stage: ")}
    assert {"decode", "CLAHE", "Affine", "Resize"} <= set(stages)
    assert all(r["value"] == pytest.approx(1.0) for r in stages.values()), stages
    assert sum(r["ratio"] for r in stages.values()) == pytest.approx(1.0)
    batch_stage = next(r for r in rows if r["what"] == "batch stage: BatchAugment")
    assert batch_stage["value"] == pytest.approx(3.0, abs=1e-3)


def test_ema_section_times_both_updates(bench_cfg, work_clock, monkeypatch):
    """g. Per-tensor and foreach EMA updates of the configured net, in ms, the foreach one as a ratio.

    On a clock that moves 2 ms per per-tensor update and 0.5 ms per foreach update, the rows must read 2.0 and
    0.5 ms (ratio 0.25): the first update of each average (a copy) is left out, the timed ones are counted; the
    note's value count is the net's floating-point parameters and buffers, counted here."""
    from hydra.utils import instantiate
    from torch.optim.swa_utils import AveragedModel

    from alexnet_gtsrb.bench import throughput

    clock = work_clock(throughput)
    update = AveragedModel.update_parameters

    def priced_update(self, model):
        clock.advance(0.002 if self.avg_fn is not None else 0.0005)
        return update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", priced_update)
    cfg = bench_cfg([*TINY, "bench.sections=[ema]"])
    result = run_command(cfg)
    rows = result["rows"]
    assert [r["what"] for r in rows] == [
        "EMA update, per-tensor avg_fn (EMAWeightAveraging)",
        "EMA update, foreach multi_avg_fn (callbacks=ema)",
    ]
    assert all(r["section"] == "ema" and r["unit"] == "ms" for r in rows)
    assert [r["value"] for r in rows] == pytest.approx([2.0, 0.5])
    assert rows[0]["ratio"] is None and rows[1]["ratio"] == pytest.approx(0.25)
    net = instantiate(cfg.model.net)
    values = sum(t.numel() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())
    assert rows[0]["note"].startswith(f"5 updates of {values:,} values")  # bench.steps=1: max(5, 5 x 1)


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
    e2e = by_what[("e2e", "Lightning fit, GTSRB from disk")]
    ceiling = next(row for row in rows if row["section"] == "ceiling")  # the bare steps: the e2e reference
    assert e2e["ratio"] == pytest.approx(e2e["value"] / ceiling["value"])
    assert e2e["note"].startswith("1 warm-up + 3 timed batches")  # bench.e2e_warmup=1, bench.steps=3
    wait = by_what[("e2e", "waiting for the next batch")]["value"]
    assert 0.0 <= wait < 1.0
    assert "waiting for the next batch" in r.stdout


def test_busy_cores_count_live_children():
    """The cores note counts live child processes (DataLoader workers) from /proc before they exit: a child that
    spins shows CPU time while it runs, no more than the kernel reports for it at exit (os.wait4), and once it
    is reaped the same seconds come from getrusage instead."""
    import os
    import subprocess
    import time

    from alexnet_gtsrb.bench.throughput import cpu_seconds

    if not os.path.exists("/proc/self/task"):
        pytest.skip("needs /proc")
    base = cpu_seconds()
    own = os.times()
    child = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    time.sleep(1.0)
    live = cpu_seconds() - base - (os.times().user - own.user) - (os.times().system - own.system)
    child.kill()
    _, _, usage = os.wait4(child.pid, 0)
    total = usage.ru_utime + usage.ru_stime
    assert 0.1 < live <= total + 0.05, (live, total)
    assert cpu_seconds() - base >= total - 0.01
