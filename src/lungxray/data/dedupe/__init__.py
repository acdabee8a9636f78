"""Find every copy of the same chest X-ray across sources (and within one source).

Copies in merged Kaggle sets are byte-identical, re-encoded, resized (also squashed to another aspect ratio), cropped a
few percent, padded, brightness/contrast/gamma-changed, stored as 16-bit PNG or rotated by a few degrees. A single
perceptual hash cannot separate those from *different* X-rays of look-alike patients (children's chest films hash
alike), so the dedupe works in three steps:

1. **Signature** (once per file content, cached by sha256): decode to 8-bit grey whatever the mode (16-bit, palette,
   alpha, CMYK, EXIF orientation: :mod:`lungxray.images.decode`), trim uniform borders (padding, letter-boxing), resize
   the remaining picture to a ``thumb_size`` square (aspect ratio deliberately dropped, so a squashed copy matches) and
   rank-equalise it (brightness, contrast and gamma changes are monotonic, so they vanish). From that thumbnail: a
   64-bit DCT hash and a 16x16 "low-res" vector; plus a second DCT hash of the whole frame, borders kept.
2. **Candidates** (cheap, generous): pairs whose hashes (of either view) are within ``hash_radius`` bits (multi-index
   hashing: exact and sub-quadratic, see :func:`hash_pairs`) plus, up to ``knn_max_images`` images, each image's
   ``knn_k`` most similar low-res vectors with cosine >= ``knn_min_similarity`` (blocked BLAS product). Trimming is a
   yes/no decision per border: a faint band that is 96% uniform in one copy and 98% in another (a copy squashed to
   400x300 without antialiasing) is trimmed in one only, its trimmed hashes then differ by 10-14 bits, and among
   thousands of look-alike films its k-NN neighbours are others. The frame hash does not depend on that decision,
   so such a pair is still compared; the verification's alignment absorbs the band.
3. **Verification** (strict): the two thumbnails are aligned by an affine Lucas-Kanade fit (shift, scale, aspect,
   small rotation: undoes crops and rotations) and compared by normalised cross-correlation of their *high-pass*
   detail (ribs, vessels, noise texture). Two different patients' films share the low frequencies, not the detail.
   A pair is a duplicate if that score >= ``verify_threshold`` on >= ``verify_min_overlap`` of the thumbnail.
   Before that, a cheap pre-filter at low resolution (high-pass NCC at 1/2 resolution after the coarse 1/4- and
   1/2-resolution fits, ``verify_prefilter_coarse`` / ``verify_prefilter``) drops the many look-alike candidates.

Byte-identical files (same sha256) are always duplicates. Groups are the connected components of all accepted pairs.

Output rules (see :func:`find_groups`):

* ``group``: ``"g" + first 12 hex digits of the smallest sha256 in the group`` - deterministic, independent of row
  order, worker count and params other than what decides membership.
* ``kept``: the image of the group that enters the split (the label-conflict contract of :mod:`lungxray.core.schema`):
  among the readable members carrying the group's ``resolved_label``, the highest resolution (width*height), then the
  position of its source in ``source_preference`` (unlisted sources after listed ones), then the smallest ``id``.
* label conflicts (a group with more than one label), ``conflict_policy``: ``drop`` (default) keeps no member of the
  group; ``majority`` keeps one member carrying the majority label, which becomes the group's ``resolved_label`` (a
  tie is dropped); ``fail`` raises :class:`~lungxray.core.errors.LungxrayError` listing the label, source and file of
  every member. Every conflict is listed in the report, with its action and kept member.

The package follows those steps: :mod:`.signatures` (step 1, with its cache), :mod:`.candidates` (step 2),
:mod:`.verify` (step 3), :mod:`.groups` (:func:`find_groups`: the steps in order, then groups, label conflicts and the
kept image), :mod:`.report` (the report, its summary and the contact sheet) and :mod:`.folders` (``lungxray dedupe``
on plain folders); :mod:`.params` holds the settings.
"""

from lungxray.data.dedupe.candidates import candidate_pairs, hash_pairs, knn_pairs, lowres_vectors
from lungxray.data.dedupe.folders import dedupe_folders
from lungxray.data.dedupe.groups import METHOD_SHA, METHOD_VISUAL, find_groups
from lungxray.data.dedupe.params import DedupeParams
from lungxray.data.dedupe.report import contact_sheet, summary_text
from lungxray.data.dedupe.signatures import SignatureCache, Signatures, compute_signatures
from lungxray.data.dedupe.verify import verify_all, verify_pairs

__all__ = [
    "METHOD_SHA", "METHOD_VISUAL", "DedupeParams", "SignatureCache", "Signatures", "candidate_pairs",
    "compute_signatures", "contact_sheet", "dedupe_folders", "find_groups", "hash_pairs", "knn_pairs",
    "lowres_vectors", "summary_text", "verify_all", "verify_pairs",
]
