"""Where does training time go? One command that measures the ceiling, the overheads and the memory.

Why: a training run's images/s mixes model compute, the framework, the input pipeline and the shared CPU.
This command separates them in one run, on the configuration you train with, so that a regression (or a
claim like "the data pipeline is not the bottleneck") is a number, not a feeling.

Usage::

    python -m alexnet_gtsrb.bench [hydra overrides] [bench.OPTION=VALUE ...]
    python -m alexnet_gtsrb.bench data.data_dir=/work/shared/gtsrb data.image_size=227 data.batch_size=64 \\
        model=alexnet_bn model.channels_last=true bench.out=bench.json
    python -m alexnet_gtsrb.bench experiment=cpu_fast 'bench.sections=[ema]' bench.steps=4
    python -m alexnet_gtsrb.bench --cfg job      # the composed config, the bench: block included

``conf/bench.yaml`` composes ``conf/train.yaml`` exactly as ``python -m alexnet_gtsrb.train`` does (same
groups, same keys) and adds a ``bench:`` block with the defaults below; override them as ``bench.NAME=VALUE``
(no ``+``: the keys exist). The command writes no Hydra run folder or log; the sections run in a temporary
output folder unless ``paths.output_dir`` is given.

==================  ==========================================  ================================================
option              default                                     meaning
==================  ==========================================  ================================================
sections            [ceiling,e2e,pipeline,lrn,memory]           which sections to run (always in this order);
                                                                ``precision`` (it compiles), ``ema``, ``profile``
                                                                are extra
steps               3                                           timed training steps (ceiling, e2e, lrn)
warmup              1                                           untimed steps first (ceiling, lrn)
e2e_warmup          2                                           untimed batches before e2e timing starts
items               1000                                        dataset items per pipeline (pipeline section)
lrn_batch           null (= data.batch_size)                    batch size of the LRN section
memory_records      null (= the whole training split)           base records for the memory section (then x3)
precision_batch     null (= data.batch_size)                    batch size of the precision section
out                 null                                        also write the table as JSON to this path
==================  ==========================================  ================================================

Sections (each row: section, what, value, unit, ratio vs its reference, target):

``ceiling``   bare PyTorch training steps of ``model.net`` on random tensors with the configured optimizer
              (its learning rate set to 0) and loss, precision, memory format, batch and image size
              (:func:`measure_train_throughput`): what the model can do. With ``callbacks=ema`` a second row
              adds the EMA update after every step (ratio vs the bare steps).
``e2e``       Lightning ``fit`` on the GTSRB tree from disk (``data.data_dir``) with the configured
              augmentation and workers; steady-state img/s between the end of batch ``e2e_warmup`` and the
              last batch (worker start-up and the first prefetch excluded). No validation, checkpointing,
              logger, configured callbacks or LR scheduler (a plateau scheduler needs validation metrics);
              single device. Ratio e2e/ceiling = framework + data overhead; target >= 0.90.
``pipeline``  items/s of the project's training dataset in one process (decode, ROI crop, augment, resize)
              against a torchvision-v2 PIL pipeline doing the same work on the same files; target >= 2x.
              The two run interleaved in rounds on one random item list, after the files are in the page
              cache, so load from other processes hits both alike.
``lrn``       the paper model (variant=paper, groups=2) training img/s without LRN, with the fast LRN and
              with ``torch.nn.LocalResponseNorm``; target fast/none >= 0.75.
``memory``    RSS of the main process and private RSS (USS: pages not shared with the parent) of the
              DataLoader workers while iterating the project's training loader over the training records
              repeated 3x, after 1x and after 3x worth of items (flat = no per-item leak and no copy-on-read
              growth); plus the peak RSS (``ru_maxrss``) of the process and of its largest child.

``precision`` bare training img/s of ``model.net`` in fp32 NCHW, fp32 channels_last, bf16 autocast +
              channels_last and fp32 channels_last under ``torch.compile`` (ratios vs fp32 channels_last);
              the notes name the ops with the most self CPU time in one profiled (torch.profiler) step.

``ema``       milliseconds per update of an exponential moving average of ``model.net``'s weights and buffers
              (torch's ``AveragedModel``, decay 0.998): the per-tensor ``avg_fn`` that Lightning's
              ``EMAWeightAveraging`` uses against the foreach ``multi_avg_fn`` of ``callbacks=ema``
              (ratio foreach / per-tensor; lower is faster). Runs once per optimizer step in training.
``profile``   where a steady training step's time goes (:mod:`.sections_profile`): Lightning's
              ``SimpleProfiler`` over ``e2e_warmup + steps`` batches of ``fit`` with the configured EMA (ms per
              batch of each hook, share of the batch), torch.profiler's top operators of the main process over
              ``steps`` batches, and per-stage timers of the per-item pipeline (decode, ROI crop, each
              albumentations step: what a loader worker does per image) plus, with
              ``data.augment.on_device``, the batch augmentation per batch.

Sections that need data print ``skipped (no data at ...)`` when ``data.data_dir`` holds no GTSRB tree.
The header names the machine (CPU, cores, load average, versions, date). Timed rows note how many cores
this process tree kept busy (e.g. ``1.95/2 cores busy``; e2e counts the DataLoader workers too): well below
the usable count means other jobs took the CPU during that window and the figure is pessimistic. On a shared
machine compare runs only at similar load, and prefer more ``steps`` for the ratios that matter.

Modules: :mod:`.options` (options, ``Row``, table, header), :mod:`.proc` (/proc readings),
:mod:`.throughput` (timing helpers), :mod:`.sections_compute`, :mod:`.sections_data` and
:mod:`.sections_profile` (one function per section), :mod:`.run` (the driver), ``__main__`` (the command line).
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
