"""Entry point: ``python -m alexnet_gtsrb.predict ckpt_path=PATH images=[a.ppm,b.png] [top_k=3] [format=json]``.

Prints each image's top-k classes (id, name, probability) as a table or JSON. ``images``: a file, a folder (every
file under it, sorted) or a list of either; files missing, not images, over 25 megapixels or undecodable are
named on stderr and skipped (exit 2, one line, when none is left). ``calibration=<calibration.json>`` divides
the logits by the temperature robustness fitted for this very checkpoint (SHA-256); ``gradcam=true`` writes each
image's Grad-CAM overlay into ``<run folder>/gradcam/``. Preprocessing is the checkpoint's evaluation pipeline on
the whole image: an arbitrary image has no ROI box, so give images cropped around the sign (as GTSRB's are).
"""

from __future__ import annotations

from alexnet_gtsrb.utils.early import answer_early

answer_early("predict", "alexnet-gtsrb-predict", __name__ == "__main__")  # --help/--version before torch is imported

import contextlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from tqdm import tqdm

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.data.io import decode_rgb
from alexnet_gtsrb.data.transforms import build_transform
from alexnet_gtsrb.errors import BadDataError, ConfigError, UserError, int_setting
from alexnet_gtsrb.inference import eval_settings, load_classifier, pick_device
from alexnet_gtsrb.run_folder import checkpoint_for
from alexnet_gtsrb.utils.cli import hydra_entry_point
from alexnet_gtsrb.utils.optional_deps import require_extra

FORMATS = ("table", "json")


def expand_paths(images: str | Sequence[str]) -> list[Path]:
    """Files named by ``images``: a path or a list of paths; folders contribute every file under them."""
    out: list[Path] = []
    for item in [images] if isinstance(images, str | Path) else images:
        p = Path(str(item)).expanduser()
        out.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])  # missing: said when read
    return out


def load_images(paths: Iterable[Path], transform: Any) -> tuple[list[Path], list[np.ndarray]]:
    """Decode and preprocess each file (those too large are refused unread or undecoded by
    :func:`alexnet_gtsrb.data.io.decode_rgb`); those that fail are reported on stderr and left out."""
    ok_paths: list[Path] = []
    arrays: list[np.ndarray] = []
    for p in tqdm(list(paths), desc="read", unit="image", disable=None, file=sys.stderr):
        try:
            if not p.exists():
                raise BadDataError(f"{p}: no such file.")
            image = decode_rgb(str(p))
        except BadDataError as exc:
            print(f"skipped: {exc}", file=sys.stderr, flush=True)
            continue
        arrays.append(np.ascontiguousarray(transform(image=image)["image"]))
        ok_paths.append(p)
    return ok_paths, arrays


@torch.inference_mode()
def predict_arrays(
    model: torch.nn.Module, arrays: list[np.ndarray], batch_size: int, device: str, temperature: float = 1.0
) -> torch.Tensor:
    """Softmax probabilities (N, classes) of ``logits / temperature`` for preprocessed uint8 HxWx3 images."""
    probs = []
    for i in tqdm(range(0, len(arrays), batch_size), desc="predict", unit="batch", disable=None, file=sys.stderr):
        batch = torch.from_numpy(np.stack(arrays[i : i + batch_size])).to(device)
        probs.append(model(batch).float().div(temperature).softmax(dim=-1).cpu())
    return torch.cat(probs)


def _gradcam_error(folder: Path, exc: OSError) -> UserError:
    return UserError(
        f"gradcam=true: cannot write the Grad-CAM overlays into {folder} ({exc.strerror or exc}): free space or "
        "fix the permissions there, or pass paths.output_dir=<a writable folder> (or gradcam=false)."
    )


def gradcam_folder(folder: Path) -> Path:
    """``folder`` created for the overlays, checked before the model is loaded: a file in its place, or a folder
    that cannot be created, is one line naming it."""
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"gradcam=true: {folder} is a file, not a folder for the Grad-CAM overlays: remove it, or pass "
            "paths.output_dir=<another folder> (or gradcam=false)."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _gradcam_error(folder, exc) from None
    return folder


def write_gradcam(model: Any, paths: list[Path], arrays: list[np.ndarray], probs: torch.Tensor, folder: Path) -> None:
    """``<folder>/<n>_<file stem>.png``: each preprocessed image overlaid with Grad-CAM of its top class.

    Encoded in memory and written with Python's own I/O: ``cv2.imwrite`` reports a failed write (a full disk)
    only by returning False, which would leave overlays missing without a word; here it is one line."""
    import cv2

    from alexnet_gtsrb.evaluation.explanations import gradcam, overlay
    from alexnet_gtsrb.evaluation.pixel_model import PixelModel

    device = next(model.parameters()).device
    pixel_model = PixelModel(model).to(device).eval()
    top = probs.argmax(dim=-1)
    for n, (p, image) in enumerate(zip(paths, arrays, strict=True)):
        heat = gradcam(pixel_model, image[None], top[n : n + 1], str(device))[0]
        png = cv2.imencode(".png", cv2.cvtColor(overlay(image, heat), cv2.COLOR_RGB2BGR))[1].tobytes()
        target = folder / f"{n:04d}_{p.stem}.png"
        try:
            target.write_bytes(png)
        except OSError as exc:
            with contextlib.suppress(OSError):
                target.unlink()  # no truncated PNG left behind
            raise _gradcam_error(folder, exc) from None
    print(f"Grad-CAM overlays: {folder}", file=sys.stderr, flush=True)


def top_k_results(paths: list[Path], probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """[{file, top_k: [{rank, class_id, name, prob}, ...]}, ...] in input order."""
    top = lambda r, c, v: {"rank": r + 1, "class_id": c, "name": class_name(c), "prob": v}
    values, indices = probs.topk(min(k, probs.shape[1]), dim=-1)
    return [
        {"file": str(p), "top_k": [top(r, c, v) for r, (v, c) in enumerate(zip(vals, idxs, strict=True))]}
        for p, vals, idxs in zip(paths, values.tolist(), indices.tolist(), strict=True)
    ]


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per image and rank: file, rank, class id, probability, name (file shown on rank 1 only)."""
    width = max([len("file")] + [len(r["file"]) for r in results])
    lines = [f"{'file':<{width}}  rank  class    prob  name", "-" * (width + 40)]
    for r in results:
        for t in r["top_k"]:
            name = r["file"] if t["rank"] == 1 else ""
            lines.append(f"{name:<{width}}  {t['rank']:>4}  {t['class_id']:>5}  {t['prob']:6.4f}  {t['name']}")
    return "\n".join(lines)


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Predict ``cfg.images`` with ``cfg.ckpt_path``; prints and returns the top-k results."""
    fmt = str(cfg.get("format", "table"))
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}; allowed: {', '.join(FORMATS)}.")
    top_k = int_setting("top_k", cfg.get("top_k", 3), 1)  # over the checkpoint's classes: every class
    batch_size = int_setting("batch_size", cfg.get("batch_size", 64), 1)
    device = pick_device(cfg.get("device", "auto"))
    gradcam_to = Path(cfg.paths.output_dir) / "gradcam"
    if cfg.get("gradcam"):
        require_extra("captum", "robustness", "gradcam=true")
        gradcam_folder(gradcam_to)
    images = list(cfg.images) if isinstance(cfg.images, ListConfig) else str(cfg.images)
    paths = expand_paths(images)
    if not paths:
        raise UserError(f"images={images}: no files to predict.")
    ckpt_file = checkpoint_for(cfg.ckpt_path)[0]
    model, data_hp = load_classifier(ckpt_file, device)
    settings = eval_settings(model, data_hp)
    augment, size = settings["augment"], settings["image_size"]
    ok_paths, arrays = load_images(paths, build_transform(augment.get("preset", "none"), size, False, augment))
    if not arrays:
        raise UserError(f"none of the {len(paths)} file(s) could be read as an image; nothing was predicted.")
    temperature = 1.0
    if cfg.get("calibration"):
        from alexnet_gtsrb.evaluation.calibration import read_temperature

        temperature = read_temperature(cfg.calibration, str(ckpt_file))
    probs = predict_arrays(model, arrays, batch_size, device, temperature)
    if bad := int((~torch.isfinite(probs)).any(dim=-1).sum()):  # finite weights can still overflow the logits
        raise UserError(
            f"{ckpt_file}: the network's outputs are not finite (NaN or inf) for {bad} of {len(arrays)} image(s); "
            "its weights overflow, so nothing is printed. Use another checkpoint."
        )
    if cfg.get("gradcam"):
        write_gradcam(model, ok_paths, arrays, probs, gradcam_folder(gradcam_to))
    results = top_k_results(ok_paths, probs, top_k)
    print(json.dumps(results, indent=2) if fmt == "json" else format_table(results), flush=True)
    return results


main = hydra_entry_point("predict", predict)

if __name__ == "__main__":
    main()
