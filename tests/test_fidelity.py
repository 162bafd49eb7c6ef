"""The paper preset's optimiser against the paper's own update rule and its reference code's weight decay.

Momentum. Krizhevsky et al. (2012), section 5: ``v <- 0.9 v - 0.0005 eps w - eps g;  w <- w + v``: the learning
rate multiplies each gradient as it enters the velocity. ``torch.optim.SGD``: ``buf <- m buf + (g + wd w);
w <- w - lr buf``: the learning rate multiplies the whole buffer when it is applied. With a constant rate the
two are the same recursion (``v = -lr buf``). When the rate drops, torch's step shrinks at once (the buffer
is rescaled with it), while the paper's velocity still holds the old rate's steps and loses them at 0.9 per
step: a transient of about 1 / (1 - 0.9) = 10 steps after every change. The simulation below measures it.

Weight decay. cuda-convnet (the paper's code) applies its weight cost to weights only (``WeightLayer`` builds
the biases with ``wc = 0``: ``new Weights(hBiases, hBiasesInc, epsB, 0, momB, true)``, src/layer.cu); Caffe's
``models/bvlc_alexnet/train_val.prototxt`` gives every weight ``decay_mult: 1`` and every bias
``decay_mult: 0`` with ``weight_decay: 0.0005`` in its solver.prototxt; the paper's text: "weight decay of
0.0005".
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

MOMENTUM = 0.9  # paper, section 5
WEIGHT_DECAY = 5e-4  # paper, section 5; Caffe bvlc_alexnet solver.prototxt weight_decay: 0.0005
LR, DROP, BEFORE, AFTER = 0.01, 10.0, 150, 60  # lr 0.01 divided by 10 (the paper's schedule), steps either side


def _problem() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Softmax regression on fixed Gaussian data (float64): X (512, 20), labels (512,), 40 mini-batch index
    sets of 32 used in turn."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=gen, dtype=torch.float64)
    y = (x @ torch.randn(20, 5, generator=gen, dtype=torch.float64)).argmax(dim=1)
    batches = [torch.randperm(512, generator=gen)[:32] for _ in range(40)]
    return x, y, batches


def _grads(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the mean cross-entropy of softmax(x w + b): x^T (p - onehot) / n and sum(p - onehot) / n."""
    err = torch.softmax(x @ w.detach() + b.detach(), dim=1) - nn.functional.one_hot(y, w.shape[1]).double()
    err /= x.shape[0]
    return x.T @ err, err.sum(dim=0)


def _simulate() -> tuple[list[float], list[float], list[float]]:
    """Per step: |paper update - torch update|, |paper update|, |torch update| over all parameters (weights
    decayed, biases not, as in both reference codes), lr / DROP from step BEFORE on."""
    x, y, batches = _problem()
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(20, 5, generator=gen, dtype=torch.float64) * 0.01
    b0 = torch.zeros(5, dtype=torch.float64)
    # torch.optim.SGD
    tw, tb = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    groups = [{"params": [tw], "weight_decay": WEIGHT_DECAY}, {"params": [tb], "weight_decay": 0.0}]
    sgd = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    # the paper's rule, written out
    pw, pb = w0.clone(), b0.clone()
    vw, vb = torch.zeros_like(pw), torch.zeros_like(pb)
    gaps, paper_steps, torch_steps = [], [], []
    for step in range(BEFORE + AFTER):
        eps = LR if step < BEFORE else LR / DROP
        for group in sgd.param_groups:
            group["lr"] = eps
        idx = batches[step % len(batches)]
        before_t = torch.cat([tw.detach().flatten(), tb.detach()]).clone()
        tw.grad, tb.grad = _grads(tw, tb, x[idx], y[idx])
        sgd.step()
        update_t = torch.cat([tw.detach().flatten(), tb.detach()]) - before_t
        gw, gb = _grads(pw, pb, x[idx], y[idx])
        vw = MOMENTUM * vw - WEIGHT_DECAY * eps * pw - eps * gw
        vb = MOMENTUM * vb - eps * gb
        pw, pb = pw + vw, pb + vb
        update_p = torch.cat([vw.flatten(), vb])
        gaps.append(float((update_p - update_t).norm()))
        paper_steps.append(float(update_p.norm()))
        torch_steps.append(float(update_t.norm()))
    return gaps, paper_steps, torch_steps


def test_torch_sgd_and_the_papers_momentum_agree_at_constant_lr_then_differ_for_about_ten_steps():
    gaps, paper_steps, torch_steps = _simulate()
    # Constant lr: the same recursion (float64 rounding only).
    assert max(g / p for g, p in zip(gaps[:BEFORE], paper_steps[:BEFORE], strict=True)) < 1e-12
    after = gaps[BEFORE:]
    first = after[0]
    # Right after the drop the gap is most of the paper's step: the paper still moves ~(1 - 1/DROP) * 0.9 of
    # its old velocity, torch already steps at the new rate.
    # The first step after the drop uses the same weights and gradient in both, so the gap is exactly the part
    # of the paper's old velocity that torch rescaled away: 0.9 * (1 - 1/DROP) of the last step before it.
    assert abs(first / paper_steps[BEFORE - 1] - MOMENTUM * (1 - 1 / DROP)) < 1e-9
    assert first / torch_steps[BEFORE] > 5  # several times torch's own (new-rate) step
    # It decays like 0.9^k: below 1/e of its first value after ceil(1 / -ln 0.9) = 10 steps ...
    below = next(k for k, g in enumerate(after) if g < first / math.e)
    assert below == math.ceil(1 / -math.log(MOMENTUM)) == 10
    ratios = [after[k + 1] / after[k] for k in range(20)]
    assert all(abs(r - MOMENTUM) < 0.01 for r in ratios), ratios
    # ... and adds up to ~1 / (1 - 0.9) first gaps: the paper's trajectory coasts on ~8 old-rate steps.
    assert 9.0 < sum(after) / first < 10.5


@pytest.mark.parametrize("model", ["alexnet_paper", "alexnet_towers"])
def test_the_paper_preset_decays_weights_only(compose_cfg, model):
    """experiment=paper: every conv/FC weight decays with 5e-4, every bias with 0 (cuda-convnet, Caffe)."""
    cfg = compose_cfg(["experiment=paper", f"model={model}", "data.image_size=67"])
    module = instantiate(cfg.model, _recursive_=False)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(g["momentum"] == MOMENTUM and g["lr"] == 0.01 for g in optimizer.param_groups)
    named = dict(module.net.named_parameters())
    assert len(decay) == len(named)
    weights = {n: p for n, p in named.items() if n.endswith("weight")}
    biases = {n: p for n, p in named.items() if n.endswith("bias")}
    # 5 convs + 3 FC layers; the towers: 7 half-layers per tower + FC8
    assert len(weights) == len(biases) == {"alexnet_paper": 8, "alexnet_towers": 15}[model]
    assert weights.keys() | biases.keys() == named.keys()  # no BatchNorm in the paper network
    assert all(p.ndim in (2, 4) for p in weights.values())
    assert {n: decay[id(p)] for n, p in weights.items()} == dict.fromkeys(weights, WEIGHT_DECAY)
    assert {n: decay[id(p)] for n, p in biases.items()} == dict.fromkeys(biases, 0.0)
