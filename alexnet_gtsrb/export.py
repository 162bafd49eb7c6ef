"""Entry point: ``python -m alexnet_gtsrb.export ckpt_path=PATH format=onnx|torchscript [output=FILE]``.

Writes the checkpoint's network as ``model.onnx`` (ONNX, legacy TorchScript-based exporter, ``dynamo=False``:
no onnxscript needed) or ``model.pt`` (TorchScript, traced) into the run folder, or to ``output``.

Interface (also in the ONNX ``metadata_props`` / the TorchScript extra file ``metadata.json``): input ``input``,
float32 ``(batch, 3, S, S)`` RGB, ``S`` the checkpoint's image size, normalised as ``(pixel / 255 - mean) / std``
with the checkpoint's ``mean``/``std``, after its preset's evaluation pipeline; a dynamic batch axis; output
``logits``, float32 ``(batch, num_classes)``, class ids indexing ``class_names`` in the metadata. The fast LRN
switches to plain tensor ops while tracing (:mod:`alexnet_gtsrb.models.lrn`). With ``check=true`` the export is
compared with PyTorch on a random batch (onnxruntime for ONNX) and the maximum absolute difference printed.
"""

from __future__ import annotations

from alexnet_gtsrb.utils.early import answer_early

answer_early("export", "alexnet-gtsrb-export", __name__ == "__main__")  # --help/--version before torch is imported

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.errors import ConfigError
from alexnet_gtsrb.inference import eval_settings, load_classifier
from alexnet_gtsrb.utils.cli import hydra_entry_point, print_rank_zero
from alexnet_gtsrb.utils.files import atomic_path
from alexnet_gtsrb.utils.optional_deps import require_extra
from alexnet_gtsrb.utils.wrappers import unwrap_compiled

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}


def export_metadata(settings: dict[str, Any], fmt: str) -> dict[str, str]:
    """String key/values describing the exported interface: normalisation, size, layout, class names."""
    return {
        "input": "input",
        "output": "logits",
        "input_layout": "NCHW float32 RGB, dynamic batch",
        "image_size": str(settings["image_size"]),
        "normalization": "(pixel / 255 - mean) / std, per RGB channel",
        "mean": json.dumps(settings["mean"]),
        "std": json.dumps(settings["std"]),
        "preprocess": json.dumps({"augment": settings["augment"], "roi_crop": settings["roi_crop"]}),
        "num_classes": str(settings["num_classes"]),
        "class_names": json.dumps([class_name(c) for c in range(settings["num_classes"])]),
        "format": fmt,
        "producer": "alexnet_gtsrb.export",
    }


@torch.no_grad()
def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str], opset: int) -> None:
    """ONNX with a dynamic batch axis (legacy exporter), then the metadata written into ``metadata_props``."""
    import onnx

    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


@torch.no_grad()
def export_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """A traced TorchScript module (works for any batch size: the graph has no batch-dependent branches)."""
    traced = torch.jit.trace(net, (example,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(metadata)})


@torch.no_grad()
def max_abs_diff(fmt: str, path: Path, net: torch.nn.Module, x: torch.Tensor) -> float:
    """Max |exported(x) - net(x)|: onnxruntime for ONNX, torch.jit.load for TorchScript."""
    ref = net(x).float()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    else:
        out = torch.jit.load(str(path))(x).float()
    return float((out - ref).abs().max())


def export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path`` in ``cfg.format``; returns the written file."""
    fmt = str(cfg.get("format", "onnx"))
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}; allowed: {', '.join(FORMATS)}.")
    if fmt == "onnx":  # before the checkpoint is read: the 'export' extra is optional
        require_extra("onnx", "export", "format=onnx")
        if cfg.get("check", True):
            require_extra("onnxruntime", "export", "format=onnx check=true")
    model, data_hp = load_classifier(cfg.ckpt_path, "cpu")
    settings = eval_settings(model, data_hp)
    net = unwrap_compiled(model.net).to(memory_format=torch.contiguous_format).eval()  # contiguous NCHW weights
    out = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / FORMATS[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    size = settings["image_size"]
    example = torch.randn(2, 3, size, size)
    metadata = export_metadata(settings, fmt)
    with atomic_path(out) as tmp:  # a full disk or an interruption leaves no half-written model file
        if fmt == "onnx":
            export_onnx(net, example, tmp, metadata, int(cfg.get("opset", 17)))
        else:
            export_torchscript(net, example, tmp, metadata)
    print_rank_zero(f"exported {fmt}: {out} (input float32 (batch, 3, {size}, {size}), normalised; output logits)")
    if cfg.get("check", True):
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))  # another batch size
        print_rank_zero(f"check: max abs diff vs PyTorch = {max_abs_diff(fmt, out, net, x):.3e}")
    return out


main = hydra_entry_point("export", export)

if __name__ == "__main__":
    main()
