"""Accuracy under L-infinity FGSM and PGD, in pixel space, with captum's ``robust`` attacks.

Why captum: it is maintained with PyTorch, its attacks take any forward function and pixel bounds, and the
project already uses it for Grad-CAM (one dependency for both). The attack perturbs the network's input pixels
in [0, 1] (after the checkpoint's CLAHE/resize, before its mean/std normalisation: :class:`PixelModel`), and
the adversarial image is clipped back to [0, 1].

Objective: both attacks maximise the per-image cross-entropy of the network's logits with the true label (the
loss of Goodfellow et al. 2015 and Madry et al. 2018). captum's default loss, ``-log(output[target])``, assumes
the model returns probabilities; on logits it is NaN wherever the true logit is <= 0 (no step is taken), has
the wrong gradient elsewhere, and changes when a constant is added to every logit, which changes neither the
prediction nor the cross-entropy.

- The loss is per image (``reduction="none"``): captum differentiates the sum of the returned losses, so each
  image gets its own gradient, not one divided by the batch size.
- It is computed in float64, in a form whose gradient stays exact for confident images
  (:func:`cross_entropy_per_image`).
- captum leaves a pixel unchanged where ``|gradient| <= zero_thresh`` (1e-6 by default). A confident network's
  gradient is that small on most pixels, so the threshold is set to 0: every pixel with a non-zero gradient
  takes a full step, as in the plain sign step ``clip(x + epsilon * sign(grad), 0, 1)``. (captum's untargeted
  FGSM steps along ``+sign(grad)`` of the loss, i.e. up the cross-entropy.)

PGD (Madry et al. 2018): ``steps`` such sign steps of size ``step_size * epsilon`` from a uniformly random start
in the epsilon-ball (``random_start``), each projected back onto the ball and into [0, 1], seeded, so a run
repeats.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from captum.robust import FGSM, PGD

from alexnet_gtsrb.errors import ConfigError
from alexnet_gtsrb.evaluation.pixel_model import to_pixels

ATTACKS = ("fgsm", "pgd")


def cross_entropy_per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The attacks' loss: cross-entropy of each image's logits with its label, shape (B,), in float64.

    Written as ``softplus(logsumexp_{k != y}(z_k - z_y))``, which equals ``logsumexp(z) - z_y``, so that its
    gradient keeps the true logit's term ``-(1 - p_y)`` when ``p_y`` rounds to 1: ``F.cross_entropy`` on float32
    logits returns exactly 0 there once the margin exceeds ~17, and the attack then only raises the other logits.
    """
    z = logits.double()
    true = z.gather(1, labels[:, None])
    others = (z - true).scatter(1, labels[:, None], float("-inf"))
    return F.softplus(torch.logsumexp(others, dim=1))


def check_settings(attacks: Sequence[str], epsilons: Sequence[float], steps: int, step_size: float) -> None:
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ConfigError(f"adversarial.attacks={list(attacks)}: allowed: {', '.join(ATTACKS)}.")
    if not epsilons or not all(_number(e) and 0 <= float(e) <= 255 for e in epsilons):  # NaN fails the range
        raise ConfigError(f"adversarial.epsilons={list(epsilons)}: in 1/255 units, each between 0 and 255.")
    if not _number(steps) or int(steps) < 1 or not _number(step_size) or not 0 < float(step_size) <= 1:
        raise ConfigError(
            f"adversarial.pgd_steps={steps}, pgd_step_size={step_size}: steps >= 1, step size a fraction of "
            "epsilon in (0, 1]."
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def attack_batch(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str,
    epsilon: float,
    steps: int = 10,
    step_size: float = 0.25,
    random_start: bool = True,
) -> torch.Tensor:
    """Adversarial pixels (same shape as ``x``, in [0, 1]) for labels ``y``; ``epsilon`` in [0, 1] units."""
    if epsilon == 0:
        return x.clone()
    x = x.clone().requires_grad_(True)  # captum would set it and warn
    with torch.enable_grad(), warnings.catch_warnings():
        # captum's PGD hands each step a detached copy, and its FGSM warns that it sets requires_grad itself
        warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
        if attack == "fgsm":
            fgsm = FGSM(model, loss_func=cross_entropy_per_image, lower_bound=0.0, upper_bound=1.0)
            fgsm.zero_thresh = 0.0
            return fgsm.perturb(x, epsilon=epsilon, target=y).detach()
        pgd = PGD(model, loss_func=cross_entropy_per_image, lower_bound=0.0, upper_bound=1.0)
        pgd.fgsm.zero_thresh = 0.0  # PGD's steps are its own FGSM's
        # radius epsilon, steps of step_size * epsilon, step_num steps, target y
        adv = pgd.perturb(x, epsilon, step_size * epsilon, steps, y, random_start=random_start, norm="Linf")
        return adv.detach()


def adversarial_table(
    model: torch.nn.Module,
    inputs: np.ndarray,
    labels: np.ndarray,
    attacks: Sequence[str],
    epsilons: Sequence[float],
    steps: int = 10,
    step_size: float = 0.25,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 128,
    device: str = "cpu",
    num_examples: int = 8,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows: attack, epsilon (1/255 units), correct, accuracy; examples for the figure).

    ``inputs`` are the network's uint8 input images (N, S, S, 3). Examples: the first ``num_examples`` images,
    clean and under each attack at the largest epsilon (uint8, as the inputs), with predictions.
    """
    check_settings(attacks, epsilons, steps, step_size)
    y_all = torch.as_tensor(labels)
    rows: list[dict[str, Any]] = []
    k = min(num_examples, len(inputs))
    examples: dict[str, Any] = {"clean": inputs[:k], "labels": labels[:k].tolist(), "epsilon": max(epsilons)}
    with torch.inference_mode():
        examples["clean_pred"] = model(to_pixels(inputs[:k], device)).argmax(dim=-1).cpu().tolist()
    for attack in attacks:
        for eps in epsilons:
            torch.manual_seed(seed)  # PGD's random start
            correct = 0
            for i in range(0, len(inputs), batch_size):
                x = to_pixels(inputs[i : i + batch_size], device)
                y = y_all[i : i + batch_size].to(device)
                adv = attack_batch(model, x, y, attack, float(eps) / 255.0, steps, step_size, random_start)
                with torch.inference_mode():
                    pred = model(adv).argmax(dim=-1)
                correct += int((pred == y).sum())
                if i == 0 and float(eps) == float(max(epsilons)):
                    uint8 = (adv[:k].clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy()
                    examples[attack] = (uint8, pred[:k].cpu().tolist())
            accuracy = correct / len(y_all)
            rows.append({"attack": attack, "epsilon_255": float(eps), "correct": correct, "accuracy": accuracy})
            if progress is not None:
                progress(f"{attack} epsilon {float(eps):g}/255: {accuracy:.4f}")
    return rows, examples
