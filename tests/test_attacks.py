"""FGSM and PGD (evaluation/adversarial.py) against references written out here, on a network that is clearly
above chance (the session's ``separable_model``): a plain-torch FGSM and PGD that climb the cross-entropy of the
logits, the invariance of cross-entropy to a constant added to every logit, PGD at least as strong as FGSM, and
the cross-entropy of each image rising under FGSM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet_gtsrb.evaluation import adversarial

EPSILONS_255 = (2, 4, 8, 16)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the network is far smaller than the cost of dispatching work to a second one (on a
    busy two-core machine each gradient is ten times slower with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ce64(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy, ``logsumexp(z) - z_y`` by torch's own loss, on the logits cast to float64."""
    return F.cross_entropy(model(x).double(), y, reduction="none")


def _grad_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_ce64(model, x, y).sum(), x)
    return grad


def _reference_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Goodfellow et al. (2015): ``clamp(x + eps * sign(grad_x CE), 0, 1)``."""
    return (x + eps * torch.sign(_grad_ce(model, x, y))).clamp(0, 1)


def _reference_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, alpha: float):
    """Madry et al. (2018), L-infinity: a uniform start in the eps-ball, then ``steps`` sign steps of ``alpha`` up
    the cross-entropy, each projected onto the ball and into [0, 1]. The start draws ``torch.rand_like(x)`` once,
    as captum does, so that the same seed gives the same start."""
    adv = (x + (torch.rand_like(x) * eps * 2 - eps)).clamp(0, 1)
    for _ in range(steps):
        stepped = adv + alpha * torch.sign(_grad_ce(model, adv, y))
        adv = (x + (stepped - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


class _Shifted(nn.Module):
    """The model with ``shift`` added to every logit: the same predictions, the same cross-entropy."""

    def __init__(self, model: nn.Module, shift: float) -> None:
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x) + self.shift
        return out


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def _margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x).double()
    others = z.scatter(1, y[:, None], float("-inf"))
    return z.gather(1, y[:, None])[:, 0] - others.max(dim=1).values


def test_the_separable_model_is_confident_but_its_cross_entropy_is_resolvable_in_float64(separable_model):
    """The preconditions of the references below: the net is confident (its float32 cross-entropy rounds the
    true class's term of the gradient away on some images, which is what the attack must not do), and every
    margin is small enough that float64 cross-entropy, the references' loss, still resolves ``1 - p_y``
    (exp(-30) ~ 1e-13, far above float64's 1.1e-16)."""
    m = _margins(separable_model.model, separable_model.x, separable_model.y)
    assert float(m.max()) < 30
    assert float((m > 17).float().mean()) > 0.1, "no image is confident enough to exercise the float32 rounding"


@pytest.mark.parametrize("eps_255", [2, 16])
def test_fgsm_equals_a_plain_sign_step_up_the_cross_entropy(separable_model, eps_255):
    model, x, y = separable_model.model, separable_model.x, separable_model.y
    eps = eps_255 / 255
    got = adversarial.attack_batch(model, x, y, "fgsm", eps)
    expected = _reference_fgsm(model, x, y, eps)
    differing = [i for i in range(len(x)) if not torch.equal(got[i], expected[i])]
    assert not differing, f"{len(differing)} of {len(x)} images differ from the reference FGSM, e.g. {differing[:5]}"
    moved = (got != x).float().mean()
    assert moved > 0.95, f"only {moved:.3f} of the pixels moved"  # all but those clipped at 0 or 1


def test_pgd_equals_a_plain_projected_sign_ascent_from_the_same_seed(separable_model):
    model, x, y = separable_model.model, separable_model.x, separable_model.y
    eps, steps, fraction = 8 / 255, 5, 0.25
    torch.manual_seed(3)
    got = adversarial.attack_batch(model, x, y, "pgd", eps, steps=steps, step_size=fraction)
    torch.manual_seed(3)
    expected = _reference_pgd(model, x, y, eps, steps, fraction * eps)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6), float((got - expected).abs().max())
    assert float((got - x).abs().max()) <= eps + 1e-6 and got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("shift", [-20.0, 20.0])
def test_attacks_do_not_change_when_a_constant_is_added_to_every_logit(separable_model, shift):
    model, x, y = separable_model.model, separable_model.x, separable_model.y
    shifted = _Shifted(model, shift)
    eps = 8 / 255
    fgsm, fgsm_shifted = (adversarial.attack_batch(m, x, y, "fgsm", eps) for m in (model, shifted))
    assert torch.equal(fgsm, fgsm_shifted), f"{float((fgsm != fgsm_shifted).float().mean()):.4f} of pixels differ"
    torch.manual_seed(0)
    pgd = adversarial.attack_batch(model, x, y, "pgd", eps, steps=5)
    torch.manual_seed(0)
    pgd_shifted = adversarial.attack_batch(shifted, x, y, "pgd", eps, steps=5)
    assert torch.equal(pgd, pgd_shifted), f"{float((pgd != pgd_shifted).float().mean()):.4f} of pixels differ"


def test_fgsm_raises_the_cross_entropy_of_every_image(separable_model):
    model, x, y = separable_model.model, separable_model.x, separable_model.y
    with torch.no_grad():
        before = _ce64(model, x, y)
        after = _ce64(model, adversarial.attack_batch(model, x, y, "fgsm", 2 / 255), y)
    ratio = after / before
    assert bool((ratio > 1.5).all()), f"min ratio {float(ratio.min()):.3f} (image {int(ratio.argmin())})"
    assert float(ratio.median()) > 5


def test_adversarial_table_counts_match_the_references_and_pgd_is_at_least_as_strong(separable_model):
    """The table over three batches (100, 100, 56 images), counted by hand with the references above: epsilon 0
    is the clean count, FGSM rows the reference FGSM's, PGD rows the reference PGD's (one seed per row, drawn
    batch after batch); PGD never leaves more images right than FGSM, and at 16/255 it breaks most of them."""
    model, images, x, y = separable_model.model, separable_model.images, separable_model.x, separable_model.y
    epsilons, steps, fraction, seed, batch = (0, *EPSILONS_255), 10, 0.25, 7, 100  # robustness.yaml's PGD
    rows, examples = adversarial.adversarial_table(
        model, images, y.numpy(), ("fgsm", "pgd"), epsilons, steps, fraction, seed=seed, batch_size=batch
    )
    assert [(r["attack"], r["epsilon_255"]) for r in rows] == [(a, float(e)) for a in ("fgsm", "pgd") for e in epsilons]

    def count(adv: torch.Tensor, labels: torch.Tensor) -> int:
        with torch.no_grad():
            return int((model(adv).argmax(-1) == labels).sum())

    def reference_pgd_count(eps: float) -> int:  # one seed per row, drawn batch after batch, as the table does
        torch.manual_seed(seed)
        batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
        return sum(count(_reference_pgd(model, xb, yb, eps, steps, fraction * eps), yb) for xb, yb in batches)

    clean = count(x, y)
    by_hand: dict[tuple[str, float], int] = {}
    for e in epsilons:
        by_hand["fgsm", e] = count(_reference_fgsm(model, x, y, e / 255), y) if e else clean
        by_hand["pgd", e] = reference_pgd_count(e / 255) if e else clean
    for r in rows:
        assert r["correct"] == by_hand[r["attack"], r["epsilon_255"]], r
        assert r["accuracy"] == pytest.approx(r["correct"] / len(y))
    table = {(r["attack"], r["epsilon_255"]): r["accuracy"] for r in rows}
    for e in EPSILONS_255:
        assert table["pgd", e] <= table["fgsm", e], (e, table)
    assert table["pgd", 16] <= 0.5 * separable_model.accuracy, table
    assert examples["epsilon"] == 16 and len(examples["clean"]) == 8 and len(examples["pgd"][1]) == 8
