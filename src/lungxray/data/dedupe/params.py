"""The dedupe's settings (the ``dedupe:`` section of params.yaml) and the version of its signatures."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from lungxray.core.config import Strict
from lungxray.core.schema import CONFLICT_POLICIES

SIGNATURE_VERSION = 1


class DedupeParams(Strict):
    """Every tunable of the dedupe (the ``dedupe:`` section of params.yaml)."""

    # signature
    thumb_size: int = Field(64, ge=32, le=128, description="side of the equalised square thumbnail (multiple of 16)")
    work_size: int = Field(256, ge=64, description="images are decoded/reduced to about this short side before trimming")
    trim_tolerance: int = Field(10, ge=0, le=64, description="grey levels a border row/column may differ from its edge value")
    trim_min_fraction: float = Field(0.97, gt=0.5, le=1.0, description="share of a row/column that must be border-coloured")
    trim_max_fraction: float = Field(0.3, ge=0.0, lt=0.5, description="at most this share of each side is trimmed")
    # candidates
    hash_radius: int = Field(8, ge=0, le=24, description="candidate if the 64-bit DCT hashes differ by <= this many bits")
    mih_chunks: int = Field(0, ge=0, le=16, description="multi-index hashing chunks (0 = about 64/log2(n))")
    knn_k: int = Field(16, ge=0, description="also candidates: each image's k most similar 16x16 vectors (0 = off)")
    knn_min_similarity: float = Field(0.80, ge=-1.0, le=1.0, description="cosine floor for the k-NN candidates")
    knn_max_images: int = Field(200_000, ge=0, description="above this many distinct images only hashes give candidates")
    # verification
    verify_threshold: float = Field(0.82, gt=0.0, le=1.0, description="high-pass NCC after alignment to accept a pair")
    verify_min_low: float = Field(0.85, ge=-1.0, le=1.0, description="low-pass NCC after alignment must also reach this")
    verify_reject_below: float = Field(0.65, description="after the coarse alignment, pairs below this are rejected")
    verify_prefilter: float = Field(0.6, ge=-1.0, le=1.0, description="half-resolution high-pass NCC after the "
                                    "coarse alignment below which a pair is rejected early (-1 = off)")
    verify_prefilter_coarse: float = Field(0.55, ge=-1.0, le=1.0, description="the same after the 1/4-resolution "
                                           "alignment (before the 1/2-resolution one)")
    verify_min_overlap: float = Field(0.6, gt=0.0, le=1.0, description="share of the thumbnail both images must cover")
    verify_batch: int = Field(256, ge=1, description="pairs verified per vectorised batch")
    # policy / output
    source_preference: list[str] = Field(default_factory=list, description="kept-member tie break, most preferred first")
    conflict_policy: Literal[CONFLICT_POLICIES] = Field(  # type: ignore[valid-type]
        "drop", description="copies of one X-ray under different labels: drop them all, keep one with the majority "
        "label, or fail (the contract: lungxray.core.schema)")
    workers: int = Field(0, ge=0, description="processes (0 = all cores)")

    def signature_fingerprint(self) -> str:
        keys = ("thumb_size", "work_size", "trim_tolerance", "trim_min_fraction", "trim_max_fraction")
        return json.dumps({"v": SIGNATURE_VERSION, **{k: getattr(self, k) for k in keys}}, sort_keys=True)
