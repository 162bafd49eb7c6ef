"""ImageNet fine-tuning, offline: torchvision's weights API reads a state_dict this test writes
where it caches downloads; a local file works the same way; without internet the run stops with one line."""

from __future__ import annotations

import pickle

import pytest
import torch

from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.models.alexnet import AlexNet
from alexnet_gtsrb.models.pretrained import HEAD, load_pretrained
from tests.helpers import IMAGENET_FILE, fake_imagenet_weights, run_train, tiny_overrides


def _net(**kw) -> AlexNet:
    return AlexNet(num_classes=43, image_size=67, variant="torchvision", groups=1, lrn=False, init="kaiming", **kw)


@pytest.mark.parametrize("how", ["imagenet", "file"])
def test_every_tensor_but_the_head_comes_from_the_weights(tmp_path, monkeypatch, how):
    path = fake_imagenet_weights(tmp_path / "torch_home")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    source = "imagenet" if how == "imagenet" else str(path)
    net = _net()
    head_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(HEAD)}
    summary = load_pretrained(net, source)
    weights = torch.load(path, weights_only=True)
    assert summary["tensors"] == 14 and summary["head_left"] == ["classifier.6.bias", "classifier.6.weight"]
    for name, tensor in net.state_dict().items():
        if name.startswith(HEAD):
            assert torch.equal(tensor, head_before[name]) and tensor.shape[0] == 43
        else:
            assert torch.equal(tensor, weights[name]), name


def test_bad_weight_files_are_one_line_each(tmp_path):
    net = _net()
    with pytest.raises(UserError, match="no such file"):
        load_pretrained(net, str(tmp_path / "missing.pth"))
    pickled = tmp_path / "pickled.pth"
    pickled.write_bytes(pickle.dumps(print))
    with pytest.raises(UserError, match="not a plain-tensor state_dict"):
        load_pretrained(net, str(pickled))
    wrong = tmp_path / "wrong.pth"
    state = net.state_dict()
    state["features.0.weight"] = torch.zeros(3, 3)
    torch.save(state, wrong)
    with pytest.raises(ConfigError, match=r"features\.0\.weight has shape \(3, 3\)"):
        load_pretrained(net, str(wrong))
    paper = AlexNet(num_classes=43, image_size=67, variant="paper")
    with pytest.raises(ConfigError, match="model=alexnet_torchvision"):
        load_pretrained(paper, str(wrong))


def test_backbone_gets_its_own_learning_rate(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=finetune_imagenet", "model.pretrained=null", "data.image_size=67"])
    model = instantiate(cfg.model, _recursive_=False)
    groups = {g["name"]: g for g in model._param_groups()}
    assert set(groups) == {"weights", "no_decay", "backbone_weights", "backbone_no_decay"}
    assert groups["backbone_weights"]["lr"] == pytest.approx(1e-4) and "lr" not in groups["weights"]
    names = {id(p): n for n, p in model.net.named_parameters()}
    assert all(names[id(p)].startswith("features.") for p in groups["backbone_weights"]["params"])
    assert all(names[id(p)].startswith("classifier.") for p in groups["weights"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.net.parameters()))
    with pytest.raises(Exception, match=r"model.backbone_lr_scale=0 must be > 0"):  # wrapped by Hydra
        instantiate(cfg.model, _recursive_=False, backbone_lr_scale=0)


@pytest.mark.slow
def test_finetune_experiment_trains_from_the_cached_imagenet_file(synthetic_root, tmp_path):
    fake_imagenet_weights(tmp_path / "torch_home")
    args = [*tiny_overrides(synthetic_root), "experiment=finetune_imagenet", "data.image_size=67",
            "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
            "test=false", f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    r = run_train(args, env_extra={"TORCH_HOME": str(tmp_path / "torch_home")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pretrained: 14 tensors from imagenet" in r.stdout + r.stderr


@pytest.mark.slow
def test_without_internet_the_message_names_the_local_file_option(synthetic_root, tmp_path):
    offline = {  # a proxy that refuses every connection: no download can succeed, with or without internet
        "TORCH_HOME": str(tmp_path / "empty_torch_home"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    args = [*tiny_overrides(synthetic_root), "experiment=finetune_imagenet", "data.image_size=67",
            f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    r = run_train(args, env_extra=offline)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert f"model.pretrained=/path/to/{IMAGENET_FILE}" in lines[0]
    assert "cannot download torchvision's ImageNet AlexNet weights" in lines[0]


def test_the_two_tower_network_names_its_backbone(compose_cfg):
    """model=alexnet_towers: conv1-conv5 of both towers (and their BatchNorms) are the backbone, as the grouped
    net's ``features.*``: the same number of weights; FC6-FC8 are not."""
    import re

    from hydra.utils import instantiate

    from alexnet_gtsrb.models.alexnet import AlexNet

    overrides = [
        "model=alexnet_towers",
        "data.image_size=67",
        "+model.backbone_lr_scale=0.1",
        "model.net.batch_norm=true",
    ]
    model = instantiate(compose_cfg(overrides).model, _recursive_=False)
    names = {id(p): n for n, p in model.net.named_parameters()}
    groups = {g["name"]: [names[id(p)] for p in g["params"]] for g in model._param_groups()}
    backbone = groups["backbone_weights"] + groups["backbone_no_decay"]
    rest = groups["weights"] + groups["no_decay"]
    assert backbone and all(re.fullmatch(r"towers\.[01]\.(conv[1-5]|bn[1-5])\.(weight|bias)", n) for n in backbone)
    assert rest and all(re.fullmatch(r"(towers\.[01]\.(fc[67]|bn[67])|fc8)\.(weight|bias)", n) for n in rest)
    grouped = AlexNet(43, 67, batch_norm=True)
    params = dict(model.net.named_parameters())
    grouped_backbone = sum(p.numel() for n, p in grouped.named_parameters() if n.startswith("features."))
    assert sum(params[n].numel() for n in backbone) == grouped_backbone
