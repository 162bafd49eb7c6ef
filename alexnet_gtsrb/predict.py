"""Entry point: ``python -m alexnet_gtsrb.predict ckpt_path=PATH images=[a.ppm,b.png] [top_k=3] [format=json]``.

``calibration=<robustness run>/calibration.json`` divides the logits by the temperature fitted there (for this
checkpoint only: the file records its SHA-256), so the probabilities are calibrated; ``gradcam=true`` writes each
image's Grad-CAM overlay (top class) into ``<run folder>/gradcam/``.

Prints the top-k classes (id, English name, probability) of each image, as an aligned table or as JSON on
stdout. ``images`` is a file, a folder (all files under it, sorted) or a list of either. Files that are
missing, not images, over 25 megapixels (:data:`alexnet_gtsrb.data.io.MAX_PIXELS`) or fail to decode are reported
by name on stderr and skipped; the exit code is 0 when at least one image was predicted, 2 (one-line message, no
traceback) when none was.

Preprocessing is the checkpoint's evaluation pipeline (its preset, CLAHE and image size; see
:func:`alexnet_gtsrb.inference.eval_settings`) applied to the whole image: the GTSRB ROI crop needs the
annotation's box, which an arbitrary image does not have, so give images that are already cropped around the
sign (as GTSRB's are, with a ~10% margin) for results comparable to the test accuracy.
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
    items = [images] if isinstance(images, str | Path) else list(images)
    out: list[Path] = []
    for item in items:
        p = Path(str(item)).expanduser()
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        else:
            out.append(p)  # a missing file is reported when it is read
    return out


def _report_skip(message: str) -> None:
    print(f"skipped: {message}", file=sys.stderr, flush=True)


def load_images(paths: Iterable[Path], transform: Any) -> tuple[list[Path], list[np.ndarray]]:
    """Decode and preprocess each file; those that fail are reported on stderr and left out.

    A file too large is skipped unread, one whose header declares too many pixels undecoded (the limits of
    :func:`alexnet_gtsrb.data.io.decode_rgb`); only the preprocessed images are kept.
    """
    ok_paths: list[Path] = []
    arrays: list[np.ndarray] = []
    for p in tqdm(list(paths), desc="read", unit="image", disable=None, file=sys.stderr):
        if not p.exists():
            _report_skip(f"{p}: no such file.")
            continue
        try:
            image = decode_rgb(str(p))
        except BadDataError as exc:
            _report_skip(str(exc))
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
    steps = range(0, len(arrays), batch_size)
    for i in tqdm(steps, desc="predict", unit="batch", disable=None, file=sys.stderr):
        batch = torch.from_numpy(np.stack(arrays[i : i + batch_size])).to(device)
        probs.append(model(batch).float().div(temperature).softmax(dim=-1).cpu())
    return torch.cat(probs)


def _gradcam_folder_error(folder: Path, exc: OSError) -> UserError:
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
        raise _gradcam_folder_error(folder, exc) from None
    return folder


def write_gradcam(model: Any, paths: list[Path], arrays: list[np.ndarray], probs: torch.Tensor, folder: Path) -> None:
    """``<folder>/<n>_<file stem>.png``: each preprocessed image overlaid with Grad-CAM of its top class.

    Encoded in memory and written with Python's own I/O: ``cv2.imwrite`` reports a failed write (a full disk)
    only by returning False, which would leave overlays missing without a word; here it is one line."""
    import cv2

    from alexnet_gtsrb.evaluation.explanations import gradcam, overlay
    from alexnet_gtsrb.evaluation.pixel_model import PixelModel

    gradcam_folder(folder)
    pixel_model = PixelModel(model).to(next(model.parameters()).device).eval()
    device = str(next(model.parameters()).device)
    top = probs.argmax(dim=-1)
    for n, (p, image) in enumerate(zip(paths, arrays, strict=True)):
        heat = gradcam(pixel_model, image[None], top[n : n + 1], device)[0]
        png = cv2.imencode(".png", cv2.cvtColor(overlay(image, heat), cv2.COLOR_RGB2BGR))[1].tobytes()
        target = folder / f"{n:04d}_{p.stem}.png"
        try:
            target.write_bytes(png)
        except OSError as exc:
            with contextlib.suppress(OSError):
                target.unlink()  # no truncated PNG left behind
            raise _gradcam_folder_error(folder, exc) from None
    print(f"Grad-CAM overlays: {folder}", file=sys.stderr, flush=True)


def top_k_results(paths: list[Path], probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """[{file, top_k: [{rank, class_id, name, prob}, ...]}, ...] in input order."""
    k = max(1, min(int(k), probs.shape[1]))
    values, indices = probs.topk(k, dim=-1)
    results = []
    for p, vals, idxs in zip(paths, values.tolist(), indices.tolist(), strict=True):
        top = [
            {"rank": r + 1, "class_id": int(c), "name": class_name(int(c)), "prob": float(v)}
            for r, (v, c) in enumerate(zip(vals, idxs, strict=True))
        ]
        results.append({"file": str(p), "top_k": top})
    return results


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
    if cfg.get("gradcam"):
        require_extra("captum", "robustness", "gradcam=true")
        gradcam_folder(Path(cfg.paths.output_dir) / "gradcam")
    images = cfg.images
    images = list(images) if isinstance(images, ListConfig) else str(images)
    paths = expand_paths(images)
    if not paths:
        raise UserError(f"images={images}: no files to predict.")
    model, data_hp = load_classifier(cfg.ckpt_path, device)
    settings = eval_settings(model, data_hp)
    augment = settings["augment"]
    transform = build_transform(augment.get("preset", "none"), settings["image_size"], train=False, params=augment)
    ok_paths, arrays = load_images(paths, transform)
    if not arrays:
        raise UserError(f"none of the {len(paths)} file(s) could be read as an image; nothing was predicted.")
    temperature = 1.0
    if cfg.get("calibration"):
        from alexnet_gtsrb.evaluation.calibration import read_temperature

        temperature = read_temperature(cfg.calibration, str(checkpoint_for(cfg.ckpt_path)[0]))
    probs = predict_arrays(model, arrays, batch_size, device, temperature)
    if not bool(torch.isfinite(probs).all()):  # finite weights can still overflow the logits
        bad = int((~torch.isfinite(probs)).any(dim=-1).sum())
        raise UserError(
            f"{checkpoint_for(cfg.ckpt_path)[0]}: the network's outputs are not finite (NaN or inf) for {bad} of "
            f"{len(arrays)} image(s); its weights overflow, so nothing is printed. Use another checkpoint."
        )
    if cfg.get("gradcam"):
        write_gradcam(model, ok_paths, arrays, probs, Path(cfg.paths.output_dir) / "gradcam")
    results = top_k_results(ok_paths, probs, top_k)
    text = json.dumps(results, indent=2) if fmt == "json" else format_table(results)
    print(text, flush=True)
    return results


main = hydra_entry_point("predict", predict)

if __name__ == "__main__":
    main()
