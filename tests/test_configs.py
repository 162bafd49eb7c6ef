"""Every experiment and config option composes, and the built objects match the config."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import CONF, fake_imagenet_weights

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_the_experiments_users_asked_for_exist():
    assert {"demo", "baseline", "paper"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_resolves(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.model.net.num_classes == cfg.data.num_classes == 43
    assert cfg.model.net.image_size == cfg.data.image_size
    assert cfg.optimizer._partial_ is True
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg.data, resolve=True)
    OmegaConf.to_container(cfg.model, resolve=True)


def test_baseline_is_the_origin_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=baseline"])
    assert cfg.model.net.variant == "seed" and cfg.model.net.batch_norm and not cfg.model.net.lrn
    assert cfg.data.image_size == 227 and cfg.data.batch_size == 128 and cfg.data.split == "track"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.trainer.max_epochs == 50


def test_baseline_uses_the_keras_defaults(compose_cfg):
    """Keras' Adam epsilon 1e-7, no weight decay, and Glorot-uniform kernels with zero biases in the built net."""
    import math

    import torch
    from torch import nn

    cfg = compose_cfg(["experiment=baseline", "data.image_size=67"])  # small FC6: quick to initialise
    assert cfg.optimizer.eps == 1e-7 and cfg.optimizer.weight_decay == 0.0 and cfg.model.net.init == "keras"
    module = instantiate(cfg.model, _recursive_=False)
    assert module.configure_optimizers().defaults["eps"] == 1e-7
    bns = [m for m in module.net.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)  # Keras: eps 1e-3, momentum 0.99
    layers = [m for m in module.net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 8
    for m in layers:
        assert torch.all(m.bias == 0)
        receptive = m.weight[0, 0].numel()  # 1 for Linear, k*k for Conv2d: Keras' fan computation
        fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = m.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.05  # uniform(-b, b): std b / sqrt(3)


def test_paper_experiment(compose_cfg):
    cfg = compose_cfg(["experiment=paper"])
    net = cfg.model.net
    assert (net.variant, net.groups, net.lrn, net.init) == ("paper", 2, True, "paper")
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.weight_decay == 5e-4 and cfg.data.augment.preset == "paper"


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_variants_compose(compose_cfg, trainer):
    cfg = compose_cfg([f"trainer={trainer}"])
    assert cfg.trainer._target_.endswith("Trainer")
    if trainer.startswith("ddp"):
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True


@pytest.mark.parametrize("model", MODELS)
def test_model_variants_build_a_module(compose_cfg, model):
    cfg = compose_cfg([f"model={model}", "data.image_size=99"])
    module = instantiate(cfg.model, _recursive_=False)
    assert module.hparams.net.get("variant") == cfg.model.net.get("variant")
    expected = "AlexNetTowers" if model == "alexnet_towers" else "AlexNet"
    assert module.net.__class__.__name__ == expected


@pytest.mark.parametrize("debug", ["fdr", "limit", "overfit"])
def test_debug_configs_compose(compose_cfg, debug):
    cfg = compose_cfg([f"debug={debug}", "experiment=demo"])
    t = cfg.trainer
    assert t.get("fast_dev_run") or t.get("limit_train_batches") or t.get("overfit_batches")


def test_unknown_key_fails_as_hydra_does(compose_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_cfg(["data.no_such_key=1"])


def test_alexnet_bn_config_parameter_count(compose_cfg):
    """The BatchNorm workhorse: paper layout (groups=2), BatchNorm after each ReLU, no LRN; count in docs/models.md."""
    cfg = compose_cfg(["model=alexnet_bn", "data.image_size=227"])
    net = instantiate(cfg.model.net)
    assert sum(p.numel() for p in net.parameters()) == 57_063_531
    assert [c.groups for c in net.conv_layers()] == [1, 2, 1, 2, 2]


ABLATIONS = sorted(p.stem for p in (CONF / "ablation").glob("*.yaml"))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_each_ablation_changes_the_cpu_fast_recipe(compose_cfg, ablation):
    from omegaconf import OmegaConf

    def flat(cfg) -> dict:
        out = {}
        for key in ("data", "model", "optimizer", "scheduler", "trainer", "callbacks"):
            node = OmegaConf.to_container(cfg[key], resolve=False)
            out.update({f"{key}.{k}": str(v) for k, v in node.items()})
        return out

    recipe = flat(compose_cfg(["experiment=cpu_fast"]))
    cfg = compose_cfg(["experiment=cpu_fast", f"+ablation={ablation}"])
    ablated = flat(cfg)
    changed = {k for k in recipe.keys() | ablated.keys() if recipe.get(k) != ablated.get(k)}
    assert (changed == set()) == (ablation == "recipe"), changed
    instantiate(cfg.data)  # every ablation is a valid DataModule (e.g. paper_aug turns on_device off)
    if ablation == "no_ema":
        assert changed == {"callbacks.ema"}
    if ablation == "no_balance":
        assert changed == {"data.class_balance"} and cfg.data.class_balance == 0.0


def test_cpu_fast_averages_weights_and_balances_classes(compose_cfg):
    from alexnet_gtsrb.callbacks.ema import EMAWeights

    cfg = compose_cfg(["experiment=cpu_fast"])
    ema = instantiate(cfg.callbacks.ema)
    assert isinstance(ema, EMAWeights) and ema.decay == cfg.callbacks.ema.decay == 0.996
    assert cfg.data.class_balance == 0.5


def test_cpu_long_is_cpu_fast_trained_longer(compose_cfg):
    """The two budget points of docs/results.md differ only in length (and the run's name), so the table
    compares training time, not recipes."""
    from omegaconf import OmegaConf

    fast = OmegaConf.to_container(compose_cfg(["experiment=cpu_fast"]), resolve=False)
    long = OmegaConf.to_container(compose_cfg(["experiment=cpu_long"]), resolve=False)
    assert isinstance(fast, dict) and isinstance(long, dict)
    assert (fast["trainer"]["max_epochs"], long["trainer"]["max_epochs"]) == (13, 27)
    assert long["task_name"] == "cpu_long" and fast["task_name"] == "cpu_fast"
    for cfg in (fast, long):
        del cfg["trainer"]["max_epochs"], cfg["task_name"], cfg["tags"]
    assert fast == long


def test_cpu_fast_runs_the_fast_input_path_and_fused_adamw(compose_cfg):
    """Issue 17's design: cached deterministic pre-processing, batch augmentation in the training process, no
    loader workers, batch 128, one fused AdamW kernel per step."""
    cfg = compose_cfg(["experiment=cpu_fast"])
    assert cfg.data.cache is True and cfg.data.num_workers == 0 and cfg.data.batch_size == 128
    assert cfg.data.augment.on_device is True and cfg.data.augment.clahe is True
    dm = instantiate(cfg.data)
    assert dm.batch_augment is not None and dm.batch_augment.affine_p == cfg.data.augment.affine_p
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["limit", "fdr"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_configs_run_with_every_experiment(compose_cfg, synthetic_root, tmp_path, monkeypatch, experiment, debug):
    """`experiment=<each> debug=limit|fdr` trains and tests, shrunk: the tiny synthetic tree, small batches,
    on CPU in fp32 (experiment=gpu's trainer is CUDA bf16; its on-device augmentation runs on the CPU), a
    stand-in ImageNet file for the fine-tuning one. The experiment's model, optimizer, schedule (one-cycle:
    6 steps, 1 step) and augmentation are its own."""
    from alexnet_gtsrb.train import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    fake_imagenet_weights(tmp_path / "torch")
    overrides = [
        f"experiment={experiment}",
        f"debug={debug}",
        f"data.data_dir={synthetic_root}",
        "data.synthetic=null",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "model.compile=false",
    ]
    metrics, objs = train(compose_cfg(overrides))
    steps = 1 if debug == "fdr" else 6
    assert objs["trainer"].global_step == steps and "test/acc" in metrics


def test_the_one_cycle_check_refuses_exactly_the_schedules_torch_cannot_run():
    """The reference is torch itself: for every small length and pct_start, the check raises a one-line
    ConfigError exactly when stepping torch's OneCycleLR through the run fails."""
    from alexnet_gtsrb.errors import ConfigError
    from alexnet_gtsrb.module import _check_one_cycle_phases

    refused = 0
    for total in range(1, 13):
        for pct in (0.1, 0.125, 0.2, 0.25, 0.3, 0.5, 1 / 3):
            for three_phase in (False, True):
                param = torch.nn.Parameter(torch.zeros(1))
                optimizer = torch.optim.SGD([param], lr=0.1)
                try:
                    scheduler = torch.optim.lr_scheduler.OneCycleLR(
                        optimizer, max_lr=0.1, total_steps=total, pct_start=pct, three_phase=three_phase
                    )
                    for _ in range(total - 1):
                        optimizer.step()
                        scheduler.step()
                    torch_fails = False
                except ZeroDivisionError:
                    torch_fails = True
                cfg = {"total_steps": total, "pct_start": pct, "three_phase": three_phase}
                if torch_fails:
                    refused += 1
                    with pytest.raises(ConfigError, match=f"pct_start={pct:g} of {total} optimizer steps"):
                        _check_one_cycle_phases(cfg)
                else:
                    _check_one_cycle_phases(cfg)
    assert refused >= 5  # the grid holds failing cases (4 steps x 0.25 among them)
