"""Where does training time go? ``python -m alexnet_gtsrb.bench [hydra overrides] [bench.OPTION=VALUE ...]``.

A training run's images/s mixes model compute, the framework, the input pipeline and the shared CPU; this
command separates them in one run, on the configuration you train with (``conf/bench.yaml`` composes
``conf/train.yaml`` and adds the ``bench:`` options), so a regression is a number: one table and, with
``bench.out``, JSON; no run folder or log. docs/performance.md says what each section measures.
"""

from alexnet_gtsrb.bench.run import OPTIONS, SECTIONS, bench_options, format_table, run_bench, run_command
from alexnet_gtsrb.bench.throughput import Row, SteadyStateTimer, measure_train_throughput

__all__ = ["OPTIONS", "SECTIONS", "Row", "SteadyStateTimer", "bench_options", "format_table"]
__all__ += ["measure_train_throughput", "run_bench", "run_command"]
