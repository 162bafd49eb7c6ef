"""The speed switches from the command line: trainer.precision, model.channels_last, model.compile."""

from __future__ import annotations

import pytest
import torch

from alexnet_gtsrb.train import train


@pytest.mark.parametrize(
    "switches",
    [
        ["trainer.precision=bf16-mixed", "model.channels_last=true"],
        ["trainer.precision=32-true", "model.channels_last=false"],
    ],
)
@pytest.mark.slow
def test_precision_and_memory_format(compose_cfg, synthetic_root, switches):
    cfg = compose_cfg(
        [
            "experiment=demo",
            "debug=fdr",
            f"data.data_dir={synthetic_root}",
            "data.synthetic=null",
            "data.image_size=67",
            "data.batch_size=4",
            *switches,
        ]
    )
    metrics, objs = train(cfg)
    trainer, model = objs["trainer"], objs["model"]
    assert trainer.precision == cfg.trainer.precision
    assert objs["trainer"].global_step == 1 and "test/acc" in metrics
    conv1 = model.net.conv_layers()[0].weight
    assert conv1.is_contiguous(memory_format=torch.channels_last) == cfg.model.channels_last


@pytest.mark.slow
def test_compile_switch_trains_a_step(compose_cfg, synthetic_root):
    cfg = compose_cfg(
        [
            "experiment=demo",
            "debug=fdr",
            f"data.data_dir={synthetic_root}",
            "data.synthetic=null",
            "data.image_size=67",
            "data.batch_size=4",
            "model.compile=true",
            "test=false",
        ]
    )
    metrics, objs = train(cfg)
    net = objs["model"].net
    assert isinstance(net, torch._dynamo.eval_frame.OptimizedModule)
    assert objs["trainer"].global_step == 1 and torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.mark.gpu
def test_gpu_trainer_bf16_channels_last_with_pinned_uint8_batches(compose_cfg, synthetic_root):
    """trainer=gpu: uint8 batches pinned by the loader, normalised on the GPU, a bf16-mixed channels_last step."""
    cfg = compose_cfg(
        [
            "experiment=demo",
            "debug=fdr",
            "trainer=gpu",
            "trainer.accelerator=gpu",
            "trainer.precision=bf16-mixed",  # experiment=demo (applied after trainer=gpu) sets fp32
            f"data.data_dir={synthetic_root}",
            "data.synthetic=null",
            "data.image_size=67",
            "data.batch_size=4",
            "model.channels_last=true",
        ]
    )
    metrics, objs = train(cfg)
    trainer, model, datamodule = objs["trainer"], objs["model"], objs["datamodule"]
    assert trainer.precision == "bf16-mixed" and model.device.type == "cuda"
    assert datamodule.train_dataloader().pin_memory
    assert model.net.conv_layers()[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.global_step == 1 and torch.isfinite(torch.tensor(metrics["train/loss"]))
