"""Step 3 of the dedupe, the verification (strict): affine alignment of two thumbnails, then high-pass NCC."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from lungxray.core.io import progress_bar
from lungxray.core.parallel import process_pool
from lungxray.data.dedupe.params import DedupeParams


def _sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sample of ``img`` [P,H,W] or [P,C,H,W] at float coords ``xs``, ``ys`` [P,N] -> [P,N] or [P,C,N];
    also the in-bounds mask [P,N]."""
    squeeze = img.ndim == 3
    if squeeze:
        img = img[:, None]
    P, C, H, W = img.shape
    valid = (xs >= 0) & (xs <= W - 1) & (ys >= 0) & (ys <= H - 1)
    xc = np.clip(xs, 0, W - 1.001)
    yc = np.clip(ys, 0, H - 1.001)
    x0 = xc.astype(np.intp)
    y0 = yc.astype(np.intp)
    fx = (xc - x0)[:, None]
    fy = (yc - y0)[:, None]
    base = (np.arange(P * C, dtype=np.intp) * (H * W)).reshape(P, C, 1)
    i00 = (y0 * W + x0)[:, None] + base
    flat = img.reshape(-1)
    v00 = flat[i00]
    v01 = flat[i00 + 1]
    v10 = flat[i00 + W]
    v11 = flat[i00 + W + 1]
    top = v00 + (v01 - v00) * fx
    bot = v10 + (v11 - v10) * fx
    out = top + (bot - top) * fy
    return (out[:, 0] if squeeze else out), valid


def _masked_ncc(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    n = m.sum(1, keepdims=True) + 1e-6
    a = a - (a * m).sum(1, keepdims=True) / n
    b = b - (b * m).sum(1, keepdims=True) / n
    return (a * b * m).sum(1) / np.sqrt((a * a * m).sum(1) * (b * b * m).sum(1) + 1e-9)


def _warp_coords(p: np.ndarray, X: np.ndarray, Y: np.ndarray, cx: float, cy: float):
    xs = (1 + p[:, 0:1]) * X + p[:, 1:2] * Y + p[:, 2:3] + cx
    ys = p[:, 3:4] * X + (1 + p[:, 4:5]) * Y + p[:, 5:6] + cy
    return xs, ys


def _take_better(s0, l0, o0, idx, s1, l1, o1) -> None:
    better = s1 > s0[idx]
    s0[idx[better]], l0[idx[better]], o0[idx[better]] = s1[better], l1[better], o1[better]


def _centred_grid(H: int, W: int, margin: int):
    """Pixel coordinates relative to the centre (flattened, [1,N]), the centre, and the mask of the inner pixels."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    inner = np.zeros((H, W), bool)
    inner[margin:H - margin, margin:W - margin] = True
    return (xx - cx).ravel()[None], (yy - cy).ravel()[None], cx, cy, inner.ravel()[None]


def _lk_affine(A: np.ndarray, B: np.ndarray, schedule: Sequence[tuple[float, int]], margin: int,
               p0: np.ndarray | None = None) -> np.ndarray:
    """Affine parameters mapping A's pixel grid into B (batched Gauss-Newton with gain/offset normalisation)."""
    P, H, W = A.shape
    X, Y, cx, cy, inner = _centred_grid(H, W, margin)
    p = np.zeros((P, 6), np.float32) if p0 is None else p0.astype(np.float32).copy()
    eye = np.eye(6, dtype=np.float32) * 1e-2
    for sigma, iters in schedule:
        As = gaussian_filter(A, (0, sigma, sigma)).reshape(P, -1)
        Bs = gaussian_filter(B, (0, sigma, sigma))
        gy, gx = np.gradient(Bs, axis=(1, 2))
        stack = np.ascontiguousarray(np.stack([Bs, gx, gy], axis=1))
        for _ in range(iters):
            xs, ys = _warp_coords(p, X, Y, cx, cy)
            smp, valid = _sample(stack, xs, ys)
            bw, gxs, gys = smp[:, 0], smp[:, 1], smp[:, 2]
            m = (valid & inner).astype(np.float32)
            n = m.sum(1, keepdims=True) + 1e-6
            ma = (As * m).sum(1, keepdims=True) / n
            mb = (bw * m).sum(1, keepdims=True) / n
            sa = np.sqrt(((As - ma) ** 2 * m).sum(1, keepdims=True) / n) + 1e-3
            sb = np.sqrt(((bw - mb) ** 2 * m).sum(1, keepdims=True) / n) + 1e-3
            g = sa / sb
            e = ((bw - mb) * g - (As - ma)) * m
            gxs *= g * m
            gys *= g * m
            J = np.stack([gxs * X, gxs * Y, gxs, gys * X, gys * Y, gys], axis=1)  # P,6,N
            Hm = np.matmul(J, J.transpose(0, 2, 1)) + eye
            b = np.matmul(J, e[..., None])
            p = p - np.linalg.solve(Hm, b)[..., 0]
            p[:, [0, 1, 3, 4]] = np.clip(p[:, [0, 1, 3, 4]], -0.3, 0.3)
            p[:, [2, 5]] = np.clip(p[:, [2, 5]], -W * 0.25, W * 0.25)
    return p


def _scorer(A: np.ndarray, B: np.ndarray, margin: int):
    """``score_at(idx, p)`` -> (high-pass NCC, low-pass NCC, overlap) of ``A[idx]`` against ``B[idx]`` warped by the
    affine ``p`` (float32 thumbnails [P,H,W]; blur and high-pass scales follow H, as at H=64)."""
    P, H, W = A.shape
    X, Y, cx, cy, inner = _centred_grid(H, W, margin)
    n_inner = inner.sum()
    hp_sigma = 1.5 * H / 64
    lp_sigma = 0.6 * H / 64
    Al = gaussian_filter(A, (0, lp_sigma, lp_sigma))
    Bl = gaussian_filter(B, (0, lp_sigma, lp_sigma))
    Ah = (Al - gaussian_filter(Al, (0, hp_sigma, hp_sigma))).reshape(P, -1)
    Bh = Bl - gaussian_filter(Bl, (0, hp_sigma, hp_sigma))
    Alf = Al.reshape(P, -1)
    BlBh = np.ascontiguousarray(np.stack([Bl, Bh], axis=1))

    def score_at(idx: np.ndarray, p: np.ndarray):
        xs, ys = _warp_coords(p, X, Y, cx, cy)
        smp, valid = _sample(BlBh[idx], xs, ys)
        bw, bh = smp[:, 0], smp[:, 1]
        m = (valid & inner).astype(np.float32)
        return _masked_ncc(Ah[idx], bh, m), _masked_ncc(Alf[idx], bw, m), m.sum(1) / n_inner

    return score_at


_PREFILTER_HOOK = None  # tests/benchmarks may set a callable(pre_scores) to inspect the pre-filter


def verify_pairs(A: np.ndarray, B: np.ndarray, params: DedupeParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity of thumbnail pairs ``A[i]`` / ``B[i]`` (uint8 [P,T,T]).

    Returns ``(score, low, overlap)``: high-pass NCC after the best of {identity, affine alignment}, the low-pass NCC
    and the share of the thumbnail covered by both at that alignment.

    Cheap pre-filter first: a coarse affine fit (1/4 then 1/2 resolution) and the high-pass NCC at 1/2 resolution at
    {identity, that fit}; pairs whose best is below ``verify_prefilter`` are rejected there (their returned scores are
    the half-resolution ones, all below ``verify_threshold``). Only the survivors (a small share of the candidates
    of look-alike films) are scored at full resolution and, if neither clearly in nor clearly out, refined.
    """
    P, H, W = A.shape
    if P == 0:
        z = np.zeros(0, np.float32)
        return z, z, z
    A = A.astype(np.float32)
    B = B.astype(np.float32)
    margin = max(2, H // 20)
    p, (s0, l0, o0), keep = _half_resolution(A, B, margin, params)
    p[:, [2, 5]] *= 2.0
    if len(keep) == 0:
        return s0, l0, o0
    _full_resolution(A, B, p, keep, (s0, l0, o0), margin, params)
    return s0, l0, o0


def _half_resolution(A: np.ndarray, B: np.ndarray, margin: int, params: DedupeParams):
    """The cheap pass of :func:`verify_pairs`: the affine fit at 1/4 then 1/2 resolution (in 1/2-resolution pixels),
    the scores at 1/2 resolution (``score, low, overlap``) and the pairs that pass the pre-filter (all when it is
    off: then the scores are -1 placeholders)."""
    P, H, W = A.shape
    sc = H / 64
    # coarse: affine fit at 1/4 then 1/2 resolution
    Ad = A.reshape(-1, H // 2, 2, W // 2, 2).mean(axis=(2, 4))
    Bd = B.reshape(-1, H // 2, 2, W // 2, 2).mean(axis=(2, 4))
    Aq = Ad.reshape(-1, H // 4, 2, W // 4, 2).mean(axis=(2, 4))
    Bq = Bd.reshape(-1, H // 4, 2, W // 4, 2).mean(axis=(2, 4))
    p = _lk_affine(Aq, Bq, ((0.7 * sc, 8),), 1)
    p[:, [2, 5]] *= 2.0
    all_idx = np.arange(P)
    if params.verify_prefilter > -1.0:
        half = _scorer(Ad, Bd, max(1, margin // 2))
        s0, l0, o0 = half(all_idx, np.zeros((P, 6), np.float32))
        _take_better(s0, l0, o0, all_idx, *half(all_idx, p))
        if _PREFILTER_HOOK is not None:
            _PREFILTER_HOOK("quarter", s0)
        # stage 1: after the 1/4-resolution fit, drop the clearly different pairs before the 1/2-resolution fit
        go = np.flatnonzero(s0 >= params.verify_prefilter_coarse)
        if len(go):
            p[go] = _lk_affine(Ad[go], Bd[go], ((0.5 * sc, 4),), max(1, margin // 2), p0=p[go])
            _take_better(s0, l0, o0, go, *half(go, p[go]))
        if _PREFILTER_HOOK is not None:
            _PREFILTER_HOOK("half", s0)
        s0 = np.minimum(s0, np.float32(np.nextafter(params.verify_threshold, -1.0)))
        keep = go[s0[go] >= params.verify_prefilter]
    else:
        p = _lk_affine(Ad, Bd, ((0.5 * sc, 4),), max(1, margin // 2), p0=p)
        s0 = np.full(P, -1.0, np.float32)
        l0, o0 = s0.copy(), np.zeros(P, np.float32)
        keep = all_idx
    return p, (s0, l0, o0), keep


def _full_resolution(A: np.ndarray, B: np.ndarray, p: np.ndarray, keep: np.ndarray, scores: tuple, margin: int,
                     params: DedupeParams) -> None:
    """Score the pairs ``keep`` at full resolution into ``scores`` (in place): identity, the coarse fit ``p``, and a
    refinement of the pairs neither clearly in nor clearly out."""
    s0, l0, o0 = scores
    sc = A.shape[1] / 64
    full = _scorer(A, B, margin)
    k0, kl0, ko0 = full(keep, np.zeros((len(keep), 6), np.float32))
    s0[keep], l0[keep], o0[keep] = k0, kl0, ko0
    todo = keep[~((k0 >= params.verify_threshold) & (kl0 >= params.verify_min_low))]
    if len(todo):
        pt = p[todo]
        s1, l1, o1 = full(todo, pt)
        _take_better(s0, l0, o0, todo, s1, l1, o1)
        mid = (s1 < params.verify_threshold) & (s1 >= params.verify_reject_below)
        if mid.any():
            sub = todo[mid]
            p2 = _lk_affine(A[sub], B[sub], ((1.0 * sc, 4), (0.5 * sc, 3)), margin, p0=pt[mid])
            s2, l2, o2 = full(sub, p2)
            _take_better(s0, l0, o0, sub, s2, l2, o2)


_VERIFY_THUMBS: np.ndarray | None = None
_VERIFY_PARAMS: DedupeParams | None = None


def _verify_init(thumbs: np.ndarray, params: DedupeParams) -> None:
    global _VERIFY_THUMBS, _VERIFY_PARAMS
    _VERIFY_THUMBS, _VERIFY_PARAMS = thumbs, params


def _verify_chunk(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    assert _VERIFY_THUMBS is not None and _VERIFY_PARAMS is not None
    return verify_pairs(_VERIFY_THUMBS[pairs[:, 0]], _VERIFY_THUMBS[pairs[:, 1]], _VERIFY_PARAMS)


def verify_all(thumbs: np.ndarray, pairs: np.ndarray, params: DedupeParams, workers: int = 1,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`verify_pairs` over index pairs into ``thumbs``, in batches, in parallel."""
    if len(pairs) == 0:
        z = np.zeros(0, np.float32)
        return z, z, z
    chunks = [pairs[i:i + params.verify_batch] for i in range(0, len(pairs), params.verify_batch)]
    workers = min(workers, len(chunks))
    if workers <= 1:
        _verify_init(thumbs, params)
        out = [_verify_chunk(c)
               for c in progress_bar(chunks, desc="dedupe verify", disable=not progress, unit="batch")]
    else:
        with process_pool(workers, initializer=_verify_init, initargs=(thumbs, params)) as pool:
            out = list(progress_bar(pool.imap(_verify_chunk, chunks), total=len(chunks), desc="dedupe verify",
                            disable=not progress, unit="batch"))
    return tuple(np.concatenate([o[k] for o in out]) for k in range(3))  # type: ignore[return-value]
