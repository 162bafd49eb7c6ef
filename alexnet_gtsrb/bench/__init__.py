"""Where does training time go? One command that measures the ceiling, the overheads and the memory.

A training run's images/s mixes model compute, the framework, the input pipeline and the shared CPU; this
command separates them in one run, on the configuration you train with, so a regression is a number::

    python -m alexnet_gtsrb.bench [hydra overrides] [bench.OPTION=VALUE ...]
    python -m alexnet_gtsrb.bench model=alexnet_bn data.image_size=227 'bench.sections=[ceiling,e2e]' bench.out=b.json

``conf/bench.yaml`` composes ``conf/train.yaml`` as training does and adds the ``bench:`` options (described
there; ``--cfg job`` shows them). It writes no run folder or log, only the table and, with ``bench.out``, JSON.

Sections, in the order they run (docs/performance.md has what each measures and measured numbers):
``ceiling`` bare training steps on random tensors (+ the EMA update with ``callbacks=ema``); ``e2e`` Lightning
``fit`` from disk against the ceiling, and the share of its time spent waiting for the next batch; ``pipeline``
the project's per-item dataset against torchvision v2 on PIL; ``lrn`` the paper model without / with the fast /
with torch's LRN; ``memory`` RSS and the loader workers' private memory over 1x and 3x the items; and, when
asked for, ``precision`` (fp32 NCHW / channels_last, bf16, torch.compile), ``ema`` (per-tensor vs foreach
update) and ``profile`` (Lightning hooks, torch.profiler's top ops, per-item and batch pipeline stages).
Sections that need data print ``skipped (no data at ...)`` when ``data.data_dir`` holds no GTSRB tree. Timed
rows note the cores this process tree kept busy (``1.95/2 cores busy``): well below the usable count means
other jobs took the CPU and the figure is pessimistic.
"""

from alexnet_gtsrb.bench.options import OPTIONS, SECTIONS, Row, bench_options, format_table
from alexnet_gtsrb.bench.run import run_bench, run_command
from alexnet_gtsrb.bench.throughput import SteadyStateTimer, measure_train_throughput

__all__ = [
    "OPTIONS",
    "SECTIONS",
    "Row",
    "SteadyStateTimer",
    "bench_options",
    "format_table",
    "measure_train_throughput",
    "run_bench",
    "run_command",
]
