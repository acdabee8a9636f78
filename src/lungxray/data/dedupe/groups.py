"""From signatures to groups: :func:`find_groups` runs the dedupe's steps in order (signatures -> candidates ->
verify -> groups -> label conflicts and kept image -> report). The rules behind each: :mod:`lungxray.data.dedupe`."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lungxray.core.errors import LungxrayError
from lungxray.core.graph import components
from lungxray.core.parallel import resolve_workers
from lungxray.core.schema import DEFAULT_MAX_PIXELS, conflict_outcome, kept_per_group
from lungxray.data.dedupe.candidates import candidate_pairs
from lungxray.data.dedupe.params import DedupeParams
from lungxray.data.dedupe.report import build_report
from lungxray.data.dedupe.signatures import Signatures, compute_signatures
from lungxray.data.dedupe.verify import verify_all

METHOD_SHA = "sha256"
METHOD_VISUAL = "phash+ncc"


def find_groups(df: pd.DataFrame, params: DedupeParams | None = None, cache_path: str | None = None,
                workers: int = 0, progress: bool = True, signatures: Signatures | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[pd.DataFrame, dict]:
    """Group every copy of the same X-ray. See the module docstring for the rules; returns ``(groups_df, report)``.

    ``df`` needs ``id, source, path, label``; ``width, height, sha256`` are used when present (else measured).
    Output columns: the input ones plus ``group, kept, match_method, matched_to, hash_distance, similarity,
    group_size, n_sources, readable, label_conflict, conflict_action, resolved_label`` (see the module docstring).
    """
    params = params or DedupeParams()
    t0 = time.time()
    out = _checked_input(df)
    workers = resolve_workers(workers or params.workers)
    sig = signatures or _signatures_of(out, params, cache_path, workers, progress, max_pixels)
    _add_signature_columns(out, sig)
    t_sig = time.time() - t0

    matches = _identical_files(sig.sha256)
    reps = np.array(sorted(i for s, i in matches.first_by_sha.items() if sig.ok[i]), dtype=np.int64)
    t1 = time.time()
    pairs, hdist = _candidates(sig, reps, params)
    t_cand = time.time() - t1
    t1 = time.time()
    score, accepted = _verify(sig, reps, pairs, params, workers, progress)
    t_ver = time.time() - t1
    _add_visual_matches(matches, sig.sha256, reps[pairs[accepted]] if len(pairs) else [], hdist[accepted],
                        score[accepted])

    _add_groups(out, matches)
    conflicts = _resolve_conflicts_and_kept(out, params)
    out = out.drop(columns=["_root", "_id"])

    report = build_report(out, sig, params, conflicts, {
        "candidate_pairs": int(len(pairs)), "verified_pairs": int(accepted.sum()),
        "seconds": {"signatures": round(t_sig, 2), "candidates": round(t_cand, 2), "verify": round(t_ver, 2),
                    "total": round(time.time() - t0, 2)},
        "signatures_computed": int(sig.n_computed), "signatures_cached": int(sig.n_cached)})
    return out, report


# --- signatures -------------------------------------------------------------------------------------------------------


def _checked_input(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with a fresh index, once it has the columns the dedupe needs and unique ids."""
    for col in ("id", "source", "path", "label"):
        if col not in df.columns:
            raise LungxrayError(f"dedupe input lacks the column {col!r} (has: {', '.join(map(str, df.columns))})")
    out = df.reset_index(drop=True).copy()
    if out["id"].duplicated().any():
        dup = out.loc[out["id"].duplicated(), "id"].head(5).tolist()
        raise LungxrayError(f"dedupe input has duplicate ids, e.g. {dup}")
    return out


def _signatures_of(out: pd.DataFrame, params: DedupeParams, cache_path: str | None, workers: int, progress: bool,
                   max_pixels: int) -> Signatures:
    """The signature of every row's file (its sha256 taken from ``out`` where known)."""
    sha_in = out["sha256"].tolist() if "sha256" in out.columns else None
    return compute_signatures(out["path"].astype(str).tolist(), workers=workers, cache_path=cache_path,
                              sha256s=sha_in, progress=progress, params=params, max_pixels=max_pixels)


def _add_signature_columns(out: pd.DataFrame, sig: Signatures) -> None:
    """``sha256`` and ``readable`` from the signatures; ``width`` / ``height`` where the input lacks a valid one."""
    out["sha256"] = np.array(sig.sha256, dtype=object)
    for col, arr in (("width", sig.width), ("height", sig.height)):
        if col not in out.columns:
            out[col] = arr
        else:
            v = pd.to_numeric(out[col], errors="coerce")
            out[col] = v.where(v.notna() & (v > 0), pd.Series(arr)).astype("int64")
    out["readable"] = sig.ok


# --- matches: byte-identical files, then candidates verified visually -------------------------------------------------


@dataclass
class Matches:
    """The accepted pairs of rows (``edges``) and each row's best match: method, partner row, hash distance and
    similarity. A byte-identical copy is the best match; among visual ones, the most similar."""

    n: int
    edges: list[tuple[int, int]] = field(default_factory=list)
    first_by_sha: dict[str, int] = field(default_factory=dict)  # content -> its first row (its representative)

    def __post_init__(self) -> None:
        self.method = [""] * self.n
        self.partner = [-1] * self.n
        self.dist = np.full(self.n, np.nan)
        self.sim = np.full(self.n, np.nan)


def _identical_files(shas: list[str]) -> Matches:
    """Rows with the same sha256 (unreadable files included) are duplicates of the content's first row."""
    m = Matches(len(shas))
    for i, s in enumerate(shas):
        if not s:
            continue
        j = m.first_by_sha.setdefault(s, i)
        if j != i:
            m.edges.append((i, j))
            for a, b in ((i, j), (j, i)):
                m.method[a], m.partner[a], m.dist[a], m.sim[a] = METHOD_SHA, b, 0.0, 1.0
    return m


def _candidates(sig: Signatures, reps: np.ndarray, params: DedupeParams) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs among the representatives (indices into ``reps``) and their hash distances."""
    if len(reps) > 1:
        return candidate_pairs(sig, reps, params)
    return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)


def _verify(sig: Signatures, reps: np.ndarray, pairs: np.ndarray, params: DedupeParams, workers: int,
            progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate pair's high-pass score and whether it is a duplicate (score, low-pass score, overlap)."""
    score, low, overlap = verify_all(sig.thumbs, reps[pairs] if len(pairs) else pairs, params, workers, progress)
    accepted = (score >= params.verify_threshold) & (low >= params.verify_min_low) & \
        (overlap >= params.verify_min_overlap)
    return score, accepted


def _add_visual_matches(m: Matches, shas: list[str], pairs, hdist: np.ndarray, score: np.ndarray) -> None:
    """Accepted visual pairs of representatives (row indices): an edge each, shared by every row of their content."""
    members_of: dict[int, list[int]] = {}
    for i, s in enumerate(shas):
        if s:
            members_of.setdefault(m.first_by_sha[s], []).append(i)
    for (a, b), d, sc in zip(pairs, hdist, score):
        m.edges.append((int(a), int(b)))
        for x, y in ((a, b), (b, a)):
            for k in members_of[int(x)]:
                if m.method[k] == METHOD_SHA:
                    continue
                if np.isnan(m.sim[k]) or sc > m.sim[k]:
                    m.method[k], m.partner[k], m.dist[k], m.sim[k] = METHOD_VISUAL, int(y), d, sc


# --- groups -----------------------------------------------------------------------------------------------------------


def _add_groups(out: pd.DataFrame, m: Matches) -> None:
    """Groups are the connected components of the accepted pairs, named after their smallest sha256; each row's best
    match, its group's size and number of sources."""
    out["_root"] = components(len(out), m.edges)
    out["match_method"] = m.method
    out["matched_to"] = [out.at[p, "id"] if p >= 0 else "" for p in m.partner]
    out["hash_distance"] = m.dist
    out["similarity"] = m.sim
    out["_id"] = out["id"].astype(str)
    group_id = {}
    for r, g in out.groupby("_root", sort=False):
        s = sorted(x for x in g["sha256"] if x)
        group_id[r] = "g" + (s[0][:12] if s else hashlib.sha256(str(sorted(g["_id"]))[:].encode()).hexdigest()[:12])
    out["group"] = out["_root"].map(group_id)
    out["group_size"] = out.groupby("group")["id"].transform("size").astype("int64")
    out["n_sources"] = out.groupby("group")["source"].transform("nunique").astype("int64")


# --- label conflicts and the kept image (the contract: lungxray.core.schema) ------------------------------------------


def _resolve_conflicts_and_kept(out: pd.DataFrame, params: DedupeParams) -> list[dict]:
    """Apply ``conflict_policy`` to every group with more than one label, then mark each group's kept image; return
    one report entry per label conflict (with the id of its kept image, if any)."""
    conflicts = _resolve_labels(out, params.conflict_policy)
    if conflicts and params.conflict_policy == "fail":
        raise LungxrayError(_conflict_message(conflicts))
    out["kept"] = _choose_kept(out, list(params.source_preference))
    for c in conflicts:
        kept = out.loc[(out["group"] == c["group"]) & out["kept"], "id"]
        c["kept"] = str(kept.iloc[0]) if len(kept) else None
    return conflicts


def _source_rank(source: str, preference: list[str]) -> int:
    return preference.index(source) if source in preference else len(preference)


def _label_text(labels: pd.Series) -> pd.Series:
    """Labels as text, "" where there is none."""
    return labels.astype("string").fillna("").str.strip().astype(object)


def _resolve_labels(out: pd.DataFrame, policy: str) -> list[dict]:
    """Set ``label_conflict``, ``conflict_action`` and ``resolved_label`` of every row (schema.conflict_outcome);
    return one report entry per label conflict."""
    labels = _label_text(out["label"])
    n_labels = labels.where(labels != "").groupby(out["group"]).transform("nunique")
    out["label_conflict"] = (n_labels > 1).to_numpy()
    first = labels.where(labels != "").groupby(out["group"]).transform("first")
    out["conflict_action"] = ""
    out["resolved_label"] = first.fillna("").astype(object)
    conflicts = []
    for gid, g in out[out["label_conflict"]].groupby("group", sort=True):
        action, resolved = conflict_outcome(labels[g.index], policy)
        out.loc[g.index, "conflict_action"] = action
        out.loc[g.index, "resolved_label"] = resolved
        counts = labels[g.index].value_counts()
        members = [{"id": str(r.id), "source": str(r.source), "label": str(r.label), "path": str(r.path),
                    "width": int(r.width), "height": int(r.height)}
                   for r in g.sort_values(["_id"]).itertuples()]
        conflicts.append({"group": gid, "labels": {str(k): int(v) for k, v in counts.items()}, "action": action,
                          "resolved_label": resolved, "members": members})
    return conflicts


def _choose_kept(out: pd.DataFrame, preference: list[str]) -> np.ndarray:
    """The image of each group that enters the split: among its readable members carrying the resolved label, the
    highest resolution, then ``preference``'s source order, then the smallest id; none in a dropped group."""
    cand = out[(_label_text(out["label"]) == out["resolved_label"]) & out["readable"].astype(bool)
               & (out["conflict_action"].map(kept_per_group) == 1)]
    resolution = cand["width"].astype("int64") * cand["height"].astype("int64")
    order = pd.DataFrame({"group": cand["group"], "res": -resolution, "id": cand["_id"],
                          "srank": [_source_rank(str(x), preference) for x in cand["source"]]})
    best = order.sort_values(["group", "res", "srank", "id"], kind="mergesort").drop_duplicates("group").index
    return out.index.isin(best)


def _conflict_message(conflicts: list[dict], limit: int = 50) -> str:
    lines = [f"{len(conflicts)} duplicate group(s) carry different labels (dedupe.conflict_policy: fail):"]
    for c in conflicts[:limit]:
        lines.append(f"  group {c['group']} ({', '.join(f'{k} {v}' for k, v in c['labels'].items())}):")
        lines += [f"    {m['label']} from {m['source']}: {m['path']}" for m in c["members"]]
    if len(conflicts) > limit:
        lines.append(f"  ... {len(conflicts) - limit} more")
    lines.append("Correct the labels at their source, or set dedupe.conflict_policy to 'drop' (no member of such a "
                 "group is used) or 'majority' (one member with the majority label is used; ties are dropped).")
    return "\n".join(lines)

