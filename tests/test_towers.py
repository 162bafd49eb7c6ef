"""The tower form of the paper network (models/towers.py) is numerically the grouped network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet_gtsrb.models.alexnet import AlexNet
from alexnet_gtsrb.models.towers import AlexNetTowers, grouped_to_towers, towers_to_grouped

SIZE = 99  # small: FC6 sees 256x2x2, the test stays quick; every layer and cross-tower point is exercised


def _pair(**kwargs) -> tuple[AlexNet, AlexNetTowers]:
    torch.manual_seed(0)
    grouped = AlexNet(num_classes=43, image_size=SIZE, variant="paper", groups=2, **kwargs)
    towers = AlexNetTowers(num_classes=43, image_size=SIZE, **kwargs)
    towers.load_state_dict(grouped_to_towers(grouped.state_dict()))
    return grouped, towers


def _run(net: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = net(x)
    out.backward(grad_out)
    assert x.grad is not None
    return out.detach(), x.grad


def _paper_scale_input(n: int) -> torch.Tensor:
    """Raw 0-255 pixels minus a mean (the paper's input, std ~74): with the paper's init LRN's window term
    is then up to ~5% of k=2 (mean 0.5%), not ~1e-6 as on standardised inputs, so a wrong window shows."""
    return torch.rand(n, 3, SIZE, SIZE, dtype=torch.float64) * 255.0 - 127.5


@pytest.mark.parametrize(
    "kwargs, train",
    [
        ({"lrn": True}, False),
        ({"lrn": False}, False),
        ({"lrn": True, "lrn_impl": "torch"}, False),
        ({"lrn": True, "batch_norm": True, "init": "kaiming"}, False),
        ({"lrn": True, "batch_norm": True, "dropout": 0.0, "init": "kaiming"}, True),  # BN on batch statistics
    ],
)
def test_outputs_and_gradients_agree(kwargs, train):
    """float64 at the paper's input scale: the two forms agree to ~1e-15; a tower LRN without the halo
    changes the logits by ~1e-5 here, far outside the 1e-10 tolerance."""
    grouped, towers = _pair(**kwargs)
    grouped, towers = grouped.double().train(train), towers.double().train(train)
    torch.manual_seed(1)
    x = _paper_scale_input(2)
    grad_out = torch.randn(2, 43, dtype=torch.float64)
    out_g, dx_g = _run(grouped, x, grad_out)
    out_t, dx_t = _run(towers, x, grad_out)
    tol = 1e-10
    assert (out_g - out_t).abs().max() <= tol * max(1.0, out_g.abs().max().item())
    assert (dx_g - dx_t).abs().max() <= tol * max(1.0, dx_g.abs().max().item())
    grads_t = towers_to_grouped({k: p.grad for k, p in towers.named_parameters() if p.grad is not None})
    grads_g = {k: p.grad for k, p in grouped.named_parameters()}
    assert grads_t.keys() == grads_g.keys()
    for k, g in grads_g.items():
        assert (g - grads_t[k]).abs().max() <= tol * max(1.0, g.abs().max().item()), k
    if train:  # running statistics updated identically
        back = towers_to_grouped(towers.state_dict())
        for k, v in grouped.state_dict().items():
            assert torch.allclose(v.double(), back[k].double(), rtol=1e-10, atol=1e-10), k


@pytest.mark.parametrize("lrn_impl", ["fast", "torch"])
def test_tower_lrn_equals_torchs_lrn_over_all_channels(lrn_impl):
    """Each LRN stage of the towers, joined, equals torch's LocalResponseNorm over all 96 / 256 channels
    (size 5, alpha 1e-4, beta 0.75, k 2: the paper's values), in float64, and the boundary channels are where
    a tower alone would differ: without the halo they are off by ~1e-3 relative, here the gap is ~1e-16."""
    _, towers = _pair(lrn=True, lrn_impl=lrn_impl)
    towers = towers.double().eval()
    lrn_in: list[list[torch.Tensor]] = [[], []]
    lrn_out: list[list[torch.Tensor]] = [[], []]
    for t, tower in enumerate(towers.towers):  # bn1/bn2 are Identity slots: their outputs are the LRN inputs
        tower.bn1.register_forward_hook(lambda m, i, o, t=t: lrn_in[t].append(o.detach().clone()))
        tower.bn2.register_forward_hook(lambda m, i, o, t=t: lrn_in[t].append(o.detach().clone()))
        tower.pool.register_forward_hook(lambda m, i, o, t=t: lrn_out[t].append(i[0].detach().clone()))
    torch.manual_seed(1)
    with torch.no_grad():
        towers(_paper_scale_input(2))
    for stage, boundary in ((0, 48), (1, 128)):  # conv1: 48 + 48 maps; conv2: 128 + 128
        x = torch.cat([lrn_in[0][stage], lrn_in[1][stage]], dim=1)
        got = torch.cat([lrn_out[0][stage], lrn_out[1][stage]], dim=1)  # pool's calls: pool1, pool2, pool5
        expected = nn.functional.local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0)
        assert ((got - expected).abs() / expected.abs().clamp_min(1e-12)).max() <= 1e-12, stage
        alone = torch.cat([nn.functional.local_response_norm(a, 5, 1e-4, 0.75, 2.0) for a in x.split(boundary, 1)], 1)
        rel = (alone - expected).abs() / expected.abs().clamp_min(1e-12)
        edge = [boundary - 2, boundary - 1, boundary, boundary + 1]
        assert rel[:, edge].amax() > 1e-4, stage  # at this input scale a missing halo is visible ...
        assert rel[:, [c for c in range(x.shape[1]) if c not in edge]].amax() <= 1e-12  # ... and only there


def test_lrn_boundary_mixes_towers_as_the_grouped_net_does():
    """Perturbing tower 1's first conv1 map changes tower 0's last LRN output (the grouped net's 96-channel LRN)."""
    _, towers = _pair(lrn=True)
    towers.eval()
    seen = []
    towers.towers[0].pool.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x = torch.randn(1, 3, SIZE, SIZE) * 3
    towers(x)
    with torch.no_grad():
        towers.towers[1].conv1.bias[0] += 5.0
    towers(x)
    before, after = seen[0], seen[3]  # tower 0's pool1 input (after LRN); the shared pool runs 3x a pass
    assert torch.equal(before[:, :46], after[:, :46])  # out of the window: untouched
    assert not torch.equal(before[:, 46:48], after[:, 46:48])  # channels 46, 47 see channel 48 (tower 1's 0)


def test_state_dict_round_trip_and_counts():
    grouped, towers = _pair(batch_norm=True)
    assert sum(p.numel() for p in towers.parameters()) == sum(p.numel() for p in grouped.parameters())
    back = towers_to_grouped(towers.state_dict())
    assert back.keys() == grouped.state_dict().keys()
    assert all(torch.equal(v, back[k]) for k, v in grouped.state_dict().items())
    prefixed = grouped_to_towers({f"net.{k}": v for k, v in grouped.state_dict().items()}, prefix="net.")
    assert "net.towers.1.conv3.weight" in prefixed and prefixed["net.towers.1.conv3.weight"].shape == (192, 256, 3, 3)
    assert prefixed["net.fc8.weight"].shape == (43, 4096) and prefixed["net.towers.0.fc6.weight"].shape[0] == 2048


def test_tower_devices_on_one_device_and_bad_values():
    net = AlexNetTowers(num_classes=43, image_size=SIZE, tower_devices=["cpu", "cpu"])
    net = net.to(torch.float64).to("cpu")  # a whole-module move keeps the towers where they are told
    assert {p.device.type for p in net.parameters()} == {"cpu"} and net.tower_devices == ("cpu", "cpu")
    assert net.eval()(torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)).shape == (2, 43)
    with pytest.raises(ValueError, match=r"model\.net\.tower_devices=.* must name two devices"):
        AlexNetTowers(image_size=SIZE, tower_devices=["cpu"])
    with pytest.raises(ValueError, match=r"model\.net\.tower_devices=.*not available"):
        AlexNetTowers(image_size=SIZE, tower_devices=["cpu", f"cuda:{torch.cuda.device_count()}"])


def test_the_checkpoint_allowlist_admits_the_tower_net_as_a_net_only():
    from alexnet_gtsrb.allowlist import allowed_target

    assert allowed_target("alexnet_gtsrb.models.towers.AlexNetTowers", "net")
    assert not allowed_target("alexnet_gtsrb.models.towers.AlexNetTowers", "optimizer")
    for other in ("alexnet_gtsrb.models.towers.grouped_to_towers", "alexnet_gtsrb.models.towers._Tower"):
        assert not allowed_target(other)


def test_model_config_builds_the_tower_net(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["model=alexnet_towers", f"data.image_size={SIZE}", "model.net.tower_devices=[cpu,cpu]"])
    module = instantiate(cfg.model, _recursive_=False)
    assert isinstance(module.net, AlexNetTowers) and module.net.tower_devices == ("cpu", "cpu")
    x = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    assert module.eval()(x).shape == (2, 43)
