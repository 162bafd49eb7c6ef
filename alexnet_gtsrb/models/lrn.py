"""Fast local response normalisation: same maths as ``torch.nn.LocalResponseNorm``, far cheaper on CPU.

Why: ``torch.nn.LocalResponseNorm`` builds the window sum with ``avg_pool3d`` on a padded, unsqueezed copy, uses
``pow`` and lets autograd differentiate that chain (about 7 full-size temporaries forward, more backward); on CPU
two such layers roughly halve the paper model's training throughput (docs/models.md "Fast LRN";
``bench.sections=[lrn]``). Here: the window sum is ``size - 1`` shifted adds over a channel-padded buffer (NCHW
and channels_last alike); ``s ** -0.75`` is ``rsqrt(s * sqrt(s))`` (``pow`` is several times slower on CPU); the
backward is closed-form and saves only the input (recomputing ``s`` is cheaper than storing it); on CPU the batch
goes in cache-sized chunks through small reusable scratch buffers (the only full-size allocations are the output
and the input gradient), shared among ``torch.get_num_threads()`` single-threaded workers.

Formulas (``n = size``; window as in torch):

    s_c  = k + alpha/n * sum_{j in W(c)} x_j**2,     W(c) = [c - n//2, c + (n-1)//2]
    y_c  = x_c * s_c**-beta
    dx_j = g_j * s_j**-beta - (2 * alpha * beta / n) * x_j * sum_{c : j in W(c)} g_c * x_c * s_c**(-beta-1)

Under ``torch.compile``, TorchScript tracing and ONNX export the same maths runs as plain tensor ops
(``lrn_composite``): Inductor can fuse them, while the eager kernel is one opaque Python op that it cannot see into
and ``torch.jit.save`` and the ONNX exporter cannot serialise. Half/bfloat16 inputs are computed in float32 (``s``
is ``2 + tiny`` and would be quantised away in bf16) and returned in their dtype.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

__all__ = ["LRN", "local_response_norm", "lrn_composite"]

# Elements per chunk on CPU: ~1 MiB of float32 per scratch buffer keeps the working set of one chunk
# (input, output, three scratch buffers) in L2/L3 cache. Whole samples are used up to 4x this size (one
# AlexNet conv1 sample is 96x55x55 = 290k elements); only bigger samples are split along dim 2.
_CPU_CHUNK_ELEMS = 1 << 18
_Chunks = list[tuple[slice, ...]]  # index tuples into a tensor, one per chunk
_HP = tuple[int, float, float, float]  # size, alpha, beta, k


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _empty_like_layout(ref: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised tensor shaped like ``ref`` with ``channels`` channels, in ``ref``'s memory format."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(ref.dim(), torch.contiguous_format)
    if ref.is_contiguous() or not ref.is_contiguous(memory_format=fmt):
        fmt = torch.contiguous_format
    return torch.empty((ref.shape[0], channels, *ref.shape[2:]), dtype=dtype, device=ref.device, memory_format=fmt)


def _chunks(x: torch.Tensor) -> _Chunks:
    """Index tuples covering ``x`` in cache-sized pieces (batch slices, or dim-2 rows of big samples)."""
    if x.device.type != "cpu" or x.numel() <= _CPU_CHUNK_ELEMS:
        return [(slice(None),)]
    n, per_sample = x.shape[0], x[0].numel()
    if per_sample <= 4 * _CPU_CHUNK_ELEMS:
        step = max(1, _CPU_CHUNK_ELEMS // per_sample)
        return [(slice(i, i + step),) for i in range(0, n, step)]
    rows = x.shape[2]
    step = max(1, _CPU_CHUNK_ELEMS // (per_sample // rows))
    return [(slice(i, i + 1), slice(None), slice(r, r + step)) for i in range(n) for r in range(0, rows, step)]


def _scratch_view(buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The leading part of scratch buffer ``buf`` matching ``like``'s shape except for the channel dim."""
    return buf[(slice(0, like.shape[0]), slice(None), *(slice(0, d) for d in like.shape[2:]))]


def _window_sum_into(padded: torch.Tensor, size: int, channels: int, out: torch.Tensor) -> torch.Tensor:
    """``out[:, c] = sum(padded[:, c + i] for i in range(size))`` in ``size - 1`` elementwise passes."""
    if size == 1:
        return out.copy_(padded.narrow(1, 0, channels))
    torch.add(padded.narrow(1, 0, channels), padded.narrow(1, 1, channels), out=out)
    for i in range(2, size):
        out.add_(padded.narrow(1, i, channels))
    return out


def _inv_pow_(s: torch.Tensor, beta: float, out: torch.Tensor) -> torch.Tensor:
    """``out = s ** -beta`` using cheap sqrt/rsqrt for the common betas (``pow`` is slow on CPU)."""
    if beta == 0.75:
        torch.sqrt(s, out=out)
        out.mul_(s)
        return out.rsqrt_()
    if beta == 0.5:
        return torch.rsqrt(s, out=out)
    if beta == 1.0:
        return torch.reciprocal(s, out=out)
    return torch.pow(s, -beta, out=out)


class _Scratch:
    """Per-call scratch buffers sized for the largest chunk ``first``, reused for every chunk."""

    def __init__(self, x: torch.Tensor, chunks: _Chunks, size: int, k: float, dtype: torch.dtype) -> None:
        self.first = first = max((x[idx] for idx in chunks), key=lambda t: t.numel())
        channels = first.shape[1]
        self.lo, self.hi = size // 2, (size - 1) // 2
        # Padded squares: P[c + lo] = k/n + alpha/n * x_c**2 and k/n in the pad slots, so that every window of
        # n slots sums to exactly s_c = k + alpha/n * sum(x**2), edge windows included.
        self.sq = _empty_like_layout(first, channels + size - 1, dtype)
        self.sq.narrow(1, 0, self.lo).fill_(k / size)
        self.sq.narrow(1, self.lo + channels, self.hi).fill_(k / size)
        self.s = _empty_like_layout(first, channels, dtype)
        self.k_n = torch.tensor(k / size, dtype=dtype, device=first.device)

    def norm(self, xc: torch.Tensor, size: int, alpha: float) -> torch.Tensor:
        """``s = k + alpha/n * window_sum(x**2)`` for chunk ``xc`` (returned as a view of scratch memory)."""
        channels = xc.shape[1]
        padded = _scratch_view(self.sq, xc)
        centre = padded.narrow(1, self.lo, channels)
        if xc.dtype == centre.dtype:
            torch.addcmul(self.k_n, xc, xc, value=alpha / size, out=centre)
        else:  # upcast once, then square in the compute dtype
            centre.copy_(xc)
            torch.addcmul(self.k_n, centre, centre, value=alpha / size, out=centre)
        return _window_sum_into(padded, size, channels, _scratch_view(self.s, xc))


def _lrn_chunks(x: torch.Tensor, out: torch.Tensor, chunks: _Chunks, hp: _HP, grad: torch.Tensor | None) -> None:
    """For each chunk, with p = s**-beta: ``out = x p`` (forward, ``grad`` None) or the input gradient ``out = g p -
    (2 alpha beta / n) x * window^T(g x s**(-beta-1))``, with scratch buffers private to this call (grad mode is
    off here: inside ``autograd.Function`` and in the worker threads)."""
    size, alpha, beta, k = hp
    cdt = _compute_dtype(x.dtype)
    scratch = _Scratch(x, chunks, size, k, cdt)
    channels, lo, hi = scratch.first.shape[1], scratch.lo, scratch.hi
    if grad is not None:  # T[c + hi] = g_c x_c s_c**(-beta-1), zero padded: its window sum is sum_{c: j in W(c)} T_c
        tbuf = _empty_like_layout(scratch.first, channels + size - 1, cdt)
        tbuf.narrow(1, 0, hi).zero_()
        tbuf.narrow(1, hi + channels, lo).zero_()
        pbuf = _empty_like_layout(scratch.first, channels, cdt)
    for idx in chunks:
        xc = x[idx]
        s = scratch.norm(xc, size, alpha)
        if grad is None:  # p = s**-beta overwrites the squares' centre (no longer needed), then out = x p
            p = _inv_pow_(s, beta, out=_scratch_view(scratch.sq, xc).narrow(1, lo, channels))
            torch.mul(xc, p, out=out[idx])
            continue
        p = _inv_pow_(s, beta, out=_scratch_view(pbuf, xc))
        gc, padded = grad[idx], _scratch_view(tbuf, xc)
        t = torch.div(p, s, out=padded.narrow(1, hi, channels))  # s**(-beta-1), compute dtype
        t.mul_(gc).mul_(xc)
        w = _window_sum_into(padded, size, channels, s)  # s is no longer needed: reuse it
        coef = -2.0 * alpha * beta / size
        if out.dtype == cdt:
            torch.mul(gc, p, out=out[idx]).addcmul_(w, xc, value=coef)
        else:  # accumulate in the compute dtype, round once
            out[idx].copy_(p.mul_(gc).addcmul_(w, xc, value=coef))


class _SingleThreadedPool:
    """Python worker threads whose torch ops each run on one intra-op thread.

    Why: the chunked kernel issues hundreds of small ops per call; through OpenMP every op is a fork/join barrier,
    and when another process holds a core (a shared 2-core machine) each barrier waits for a scheduler time slice:
    measured 50-100x slower. Plain threads running their ops serially have no barriers yet use all free cores.
    """

    def __init__(self, workers: int) -> None:
        self.pid, self.workers = os.getpid(), workers
        main_threads = torch.get_num_threads()
        started = threading.Barrier(workers + 1)

        def init() -> None:
            torch.get_num_threads()  # per-thread lazy init first, so it does not undo the next line later
            torch.set_num_threads(1)
            started.wait()

        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="lrn", initializer=init)
        warmups = [self.executor.submit(lambda: None) for _ in range(workers)]
        started.wait()
        torch.set_num_threads(main_threads)  # set_num_threads(1) also changed the process-wide default
        for f in warmups:
            f.result()


_POOL: _SingleThreadedPool | None = None
_POOL_LOCK = threading.Lock()


def _run_chunks(x: torch.Tensor, hp: _HP, grad: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_lrn_chunks` of ``x`` (the LRN, or the input gradient for ``grad``) over the chunks of ``x``, split
    across ``torch.get_num_threads()`` workers on CPU, autocast off (we choose dtypes ourselves; autocast is
    thread-local, so never on in the workers)."""
    global _POOL
    out = torch.empty_like(x)
    chunks = _chunks(x)
    workers = min(torch.get_num_threads(), len(chunks)) if x.device.type == "cpu" else 1
    if workers <= 1:
        autocast = torch.amp.is_autocast_available(x.device.type)  # not on every device type (meta)
        with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
            _lrn_chunks(x, out, chunks, hp, grad)
        return out
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid() or _POOL.workers < workers:
            if _POOL is not None and _POOL.pid == os.getpid():
                _POOL.executor.shutdown(wait=False)
            _POOL = _SingleThreadedPool(workers)  # (re)created after a fork or a thread-count increase
        pool = _POOL
    # Grad/inference mode are thread-local: replay the caller's inference mode in the workers (writing into an
    # inference tensor outside inference mode is an error), and never record autograd there.
    inference = torch.is_inference_mode_enabled()

    def task(group: _Chunks) -> None:
        with torch.inference_mode(inference), torch.no_grad():
            _lrn_chunks(x, out, group, hp, grad)

    bounds = [len(chunks) * i // workers for i in range(workers + 1)]
    futures = [pool.executor.submit(task, chunks[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for f in futures:
        f.result()
    return out


class _LRNFunction(torch.autograd.Function):
    """Forward and closed-form backward of cross-channel LRN (see module docstring for the formulas)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        ctx.hparams = (size, alpha, beta, k)
        ctx.save_for_backward(x)
        return _run_chunks(x, ctx.hparams)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return _run_chunks(x, ctx.hparams, grad), None, None, None, None


def lrn_composite(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> torch.Tensor:
    """The same LRN as plain differentiable tensor ops: used under ``torch.compile`` (Inductor fuses it)."""
    xc = x.to(_compute_dtype(x.dtype))
    channels = x.shape[1]
    pad = [0, 0] * (x.dim() - 2) + [size // 2, (size - 1) // 2]
    padded = nn.functional.pad(xc * xc, pad)
    window = padded.narrow(1, 0, channels)
    for i in range(1, size):
        window = window + padded.narrow(1, i, channels)
    return (xc * (window * (alpha / size) + k).pow(-beta)).to(x.dtype)


def local_response_norm(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> torch.Tensor:
    """Functional form of :class:`LRN` (same semantics as ``torch.nn.functional.local_response_norm``)."""
    if x.dim() < 3:
        raise ValueError(f"LRN expects an input of shape (N, C, *) with at least 3 dims, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"LRN expects a floating point input, got {x.dtype}")
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return lrn_composite(x, size, alpha, beta, k)
    return _LRNFunction.apply(x, size, alpha, beta, k)


class LRN(nn.Module):
    """Cross-channel local response normalisation, a fast drop-in for ``torch.nn.LocalResponseNorm``.

    Same arguments and semantics as torch (``alpha`` is divided by ``size``), same outputs and gradients up to
    float rounding. ``k`` must be positive (the backward pass divides by ``s >= k``).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"LRN size must be >= 1, got {size}")
        if k <= 0:
            raise ValueError(f"LRN k must be > 0, got {k}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
