"""Leakage-free, stratified train / val / test split.

Only *kept* images are split, with their manifest label: ``kept`` means "enters the split" (one image per dedupe
group, none for a group dropped for a label conflict, and under ``majority`` an image carrying the resolved label: the
contract in :mod:`lungxray.core.schema`). The stage first checks that the validate stage passed on these very tables
(:func:`require_validated`). The unit that is assigned to a split is wider than one image: the **union**
(union-find / connected component) of dedupe groups and patients, computed over *all* manifest rows, kept or not. Two
kept images of one patient therefore land in the same split, and so do two kept images linked only through a non-kept
copy (X-ray A of patient P1 was also published as A' under patient P2: every image of P1 and P2 goes to one split).

The ``unit`` column of the output names the union by the smallest id among all its images (kept or not).
The check that no dedupe group, patient or chain of them crosses splits is :mod:`lungxray.data.leakage`.

Units are assigned by :func:`lungxray.data.assign.assign_greedily` (largest first, each to the split that lacks most of
its labels; seeded). Inputs are sorted by id first, so the result depends only on the *set* of rows, the params and
the seed, never on row order or hash randomisation.

Official splits (``SplitParams``):

* ``keep_official_test``: every unit that contains an image whose ``official_split`` is ``test`` (kept or not) goes to
  test whole; the kept images of such units that were not themselves official test images are counted as
  ``moved_to_test``. The other units are split by the ratios as usual (test is topped up to its ratio if the official
  test set is smaller than that; it never receives more when it is already larger).
* ``keep_official_splits`` (MedMNIST mode): every unit with at least one official split takes the strongest official
  split among its images (test > val > train), so a unit that crosses official splits is forced to one; the kept
  images that this moves are counted per ``from->to``. Units with no official split at all are split by the ratios.
  This mode implies ``keep_official_test``.

Forced units go to their official split even when its ratio is 0; a split with ratio 0 receives no other unit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from lungxray.core import schema
from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError
from lungxray.core.graph import components_by_keys
from lungxray.core.plots import pyplot, save_png
from lungxray.core.schema import SPLITS
from lungxray.data.assign import assign_greedily
from lungxray.data.leakage import check_leakage, clean_text, require_columns

SPLIT_COLUMNS = ["id", "path", "label", "split", "group", "unit", "source", "patient"]
_PRIORITY = {"train": 0, "val": 1, "test": 2}  # which official split wins when a unit crosses splits


class SplitParams(Strict):
    """Parameters of the split stage (``split`` section of params.yaml)."""

    ratios: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15},
        description="fraction of images per split; keys train, val, test; sum 1",
    )
    seed: int = Field(42, description="seed of the tie-breaks; same seed + same inputs = same split")
    keep_official_test: bool = Field(False, description="images of the source's official test set stay in test")
    keep_official_splits: bool = Field(False, description="use the sources' official train/val/test where given")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(SPLITS):
            raise ValueError(f"ratios needs exactly the keys train, val, test (got {sorted(v)})")
        for k, r in v.items():
            if not (0.0 <= float(r) <= 1.0):
                raise ValueError(f"ratio of {k} must lie between 0 and 1 (got {r})")
        total = sum(float(r) for r in v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ratios must sum to 1 (got {total:g}: {v})")
        if float(v["train"]) <= 0:
            raise ValueError("the train ratio must be larger than 0")
        return {k: float(v[k]) for k in SPLITS}


# ----------------------------------------------------------------------------------------------------------------------
# input preparation


def require_validated(report_path: str | os.PathLike, inputs: list[str | os.PathLike]) -> None:
    """Refuse to split input that the validate stage did not pass, or passed on other versions of ``inputs`` (the
    manifest and the groups table: the report records their sha256)."""
    from lungxray.core.io import file_fingerprints, read_json

    rerun = "rerun the validate stage (dvc repro validate)"
    for path in inputs:
        if not Path(path).exists():
            raise LungxrayError(f"{path} is missing: run the stages before split first (dvc repro split)")
    report_path = Path(report_path)
    if not report_path.exists():
        raise LungxrayError(f"{report_path} is missing: validate the data first (dvc repro validate)")
    report = read_json(report_path)
    if report.get("success") is not True:
        raise LungxrayError(f"data validation failed ({report.get('n_failed', '?')} failed checks, see {report_path}): "
                            f"split refuses data that did not pass it; fix what it lists, then {rerun}")
    validated, now = report.get("inputs") or {}, file_fingerprints(inputs)
    changed = [p for p, sha in now.items() if validated.get(p) != sha]
    if changed:
        raise LungxrayError(f"{report_path} was not computed on the current {' and '.join(changed)} (changed since "
                            f"validation, or validated by an older version): {rerun}")


def _require_bool(s: pd.Series, name: str) -> pd.Series:
    out = schema.as_bool(s)
    if out.isna().any():
        bad = s[out.isna()].head(3).tolist()
        raise LungxrayError(f"groups column '{name}' must hold True/False (found {bad}); re-run the dedupe stage")
    return out.astype(bool)


def _merge_inputs(manifest: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """All manifest rows with their dedupe group and kept flag, sorted by id, text columns normalised."""
    require_columns(manifest, ["id", "path", "label", "source"], "manifest")
    require_columns(groups, ["id", "group", "kept"], "dedupe groups table")
    m = pd.DataFrame(
        {
            "id": clean_text(manifest["id"]),
            "path": clean_text(manifest["path"]),
            "label": clean_text(manifest["label"]),
            "source": clean_text(manifest["source"]),
            "patient": clean_text(manifest["patient"]) if "patient" in manifest.columns else "",
            "official_split": clean_text(manifest["official_split"]).str.lower()
            if "official_split" in manifest.columns
            else "",
        }
    )
    g = pd.DataFrame(
        {"id": clean_text(groups["id"]), "group": clean_text(groups["group"]), "kept": _require_bool(groups["kept"], "kept")}
    )
    for name, t in (("manifest", m), ("dedupe groups table", g)):
        if (t["id"] == "").any():
            raise LungxrayError(f"the {name} has rows without an id")
        dup = t["id"][t["id"].duplicated()]
        if len(dup):
            raise LungxrayError(f"the {name} lists ids more than once, e.g. {sorted(set(dup))[:3]}")
    missing = sorted(set(m["id"]) - set(g["id"]))
    extra = sorted(set(g["id"]) - set(m["id"]))
    if missing or extra:
        raise LungxrayError(
            "the manifest and the dedupe groups table list different images "
            f"({len(missing)} manifest ids without a group, e.g. {missing[:3]}; {len(extra)} group ids not in the "
            f"manifest, e.g. {extra[:3]}); re-run the dedupe stage"
        )
    if (g["group"] == "").any():
        raise LungxrayError("the dedupe groups table has rows without a group")
    df = m.merge(g, on="id", how="left", validate="one_to_one")
    return df.sort_values("id", kind="mergesort").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------------
# assignment


def _with_units(manifest: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """All manifest rows with their ``unit``: the union of dedupe groups and patients, named by its smallest id."""
    df = _merge_inputs(manifest, groups)
    roots = components_by_keys([df["group"].tolist(), df["patient"].tolist()])
    df["unit"] = df["id"].to_numpy()[roots]
    return df


def official_test_set(manifest: pd.DataFrame, groups: pd.DataFrame, split_df: pd.DataFrame,
                      params: SplitParams) -> pd.DataFrame:
    """Benchmark mode (``keep_official_splits``): every image of the sources' official test set, copies *within* it
    included, so that a published table's test figure (e.g. PneumoniaMNIST's 624 images) has a comparable row beside
    the deduplicated test split. Empty in every other mode.

    Copies inside one split do not leak; what must not happen is that any image of such a unit was trained or tuned
    on: every unit here is either in the test split or has no kept image at all (a label-conflict group), otherwise
    a :class:`LungxrayError` is raised.
    """
    if not params.keep_official_splits:
        return pd.DataFrame(columns=SPLIT_COLUMNS)
    df = _with_units(manifest, groups)
    official = df[df["official_split"] == "test"].assign(split=schema.OFFICIAL_TEST_SPLIT)
    unit_split = split_df.drop_duplicates("unit").set_index("unit")["split"]
    elsewhere = official[official["unit"].map(unit_split).fillna("test") != "test"]
    if not elsewhere.empty:
        raise LungxrayError(f"{len(elsewhere)} official test image(s) share a unit with train/val images, e.g. "
                            f"{elsewhere['id'].iloc[0]}: the official test set cannot be reported as unseen")
    return official[SPLIT_COLUMNS].sort_values("id", kind="mergesort").reset_index(drop=True)


def make_split(
    manifest: pd.DataFrame,
    groups: pd.DataFrame,
    params: SplitParams | None = None,
    classes: list[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Split the kept images into train / val / test without leakage.

    Returns the split table (columns :data:`SPLIT_COLUMNS`, one row per kept image, sorted by id) and a dict of
    statistics: ``sizes``, ``counts`` (per split: total and per class, the DVC metrics shape), ``fractions``, unit
    statistics, what the official-split options moved, and ``leakage`` (the list of problems of
    :func:`check_leakage`; empty unless something is badly wrong, and the stage must fail when it is not). ``classes``
    fixes the order (and zero entries) of the class counts; default: labels present. """
    p = params or SplitParams()
    df = _with_units(manifest, groups)
    kept, labels = _kept_images(df, p, classes)
    unit_counts = kept.groupby(["unit", "label"], sort=True).size().unstack(fill_value=0)
    unit_counts = unit_counts.reindex(columns=labels, fill_value=0).sort_index().astype("int64")
    unit_counts.columns = labels
    forced, official = _forced_units(df, unit_counts, p)
    kept["split"] = kept["unit"].map(_assign_units(unit_counts, forced, p))
    if p.keep_official_splits or p.keep_official_test:
        official.update(_official_moves(kept, forced, p))
    out = kept[SPLIT_COLUMNS].sort_values("id", kind="mergesort").reset_index(drop=True)
    return out, _split_stats(out, df, unit_counts, official, p)


def _kept_images(df: pd.DataFrame, p: SplitParams, classes: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """The kept rows of ``df`` and the class labels, after checking the official splits and labels they hold."""
    if p.keep_official_splits or p.keep_official_test:
        bad = sorted(set(df["official_split"]) - set(SPLITS) - {""})
        if bad:
            raise LungxrayError(f"manifest official_split holds {bad}; expected train, val, test or empty")

    kept = df[df["kept"]].copy()
    if kept.empty:
        raise LungxrayError("no kept images to split: the dedupe groups table marks none as kept")
    labels = list(classes) if classes is not None else sorted(set(kept["label"]))
    unknown = sorted(set(kept["label"]) - set(labels))
    if unknown:
        raise LungxrayError(f"kept images have labels {unknown} that are not among the classes {labels}")
    return kept, labels


def _forced_units(df: pd.DataFrame, unit_counts: pd.DataFrame,
                  p: SplitParams) -> tuple[dict[str, str], dict[str, Any]]:
    """The units forced to a split by an official split (computed over all rows of a unit, kept or not), and the
    ``official`` statistics so far."""
    forced: dict[str, str] = {}
    official: dict[str, Any] = {"mode": "none"}
    with_official = df[df["official_split"] != ""]
    if p.keep_official_splits:
        pri = with_official.assign(_p=with_official["official_split"].map(_PRIORITY))
        best = pri.groupby("unit", sort=True)["_p"].max()
        n_splits = pri.groupby("unit", sort=True)["official_split"].nunique()
        inv = {v: k for k, v in _PRIORITY.items()}
        forced = {u: inv[int(v)] for u, v in best.items() if u in unit_counts.index}
        crossing = n_splits[(n_splits > 1) & n_splits.index.isin(unit_counts.index)]
        official = {"mode": "keep_official_splits", "crossing_units": int(len(crossing))}
    elif p.keep_official_test:
        test_units = sorted(set(with_official.loc[with_official["official_split"] == "test", "unit"]))
        forced = {u: "test" for u in test_units if u in unit_counts.index}
        official = {"mode": "keep_official_test"}
    official["forced_units"] = len(forced)
    return forced, official


def _assign_units(unit_counts: pd.DataFrame, forced: dict[str, str], p: SplitParams) -> dict[str, str]:
    """Every unit -> its split: the forced ones where they are forced, the others by :func:`assign_greedily`."""
    current = pd.DataFrame(0, index=list(SPLITS), columns=list(unit_counts.columns), dtype=float)
    for u, s in forced.items():
        current.loc[s] += unit_counts.loc[u].to_numpy(dtype=float)

    rng = np.random.default_rng(p.seed)
    free = [u for u in unit_counts.index if u not in forced]
    return {**forced, **assign_greedily(unit_counts, free, current, p.ratios, rng)}


def _official_moves(kept: pd.DataFrame, forced: dict[str, str], p: SplitParams) -> dict[str, Any]:
    """What the official-split options moved: kept images of forced units that land outside their official split."""
    official: dict[str, Any] = {}
    in_forced = kept["unit"].isin(list(forced))
    moved = kept[in_forced & (kept["official_split"] != kept["split"])]
    if p.keep_official_splits:
        moved = moved[moved["official_split"] != ""]
        official["moved"] = {
            f"{a}->{b}": int(n)
            for (a, b), n in moved.groupby(["official_split", "split"], sort=True).size().items()
        }
        official["moved_images"] = int(len(moved))
        official["without_official_split"] = int((kept["official_split"] == "").sum())
    else:
        official["moved_to_test"] = int(len(moved))
        official["moved_to_test_from"] = {
            (k or "none"): int(n) for k, n in moved.groupby("official_split", sort=True).size().items()
        }
        official["official_test_images"] = int((kept["official_split"] == "test").sum())
    return official


def _split_stats(out: pd.DataFrame, df: pd.DataFrame, unit_counts: pd.DataFrame, official: dict[str, Any],
                 p: SplitParams) -> dict[str, Any]:
    """The statistics :func:`make_split` returns beside the table, the leakage check's problems included."""
    counts = split_counts(out, list(unit_counts.columns))
    total = len(out)
    unit_sizes = unit_counts.sum(axis=1)
    problems = check_leakage(out, df)
    return {
        "images": int(total),
        "not_kept": int((~df["kept"]).sum()),
        "sizes": {s: counts[s]["total"] for s in SPLITS},
        "fractions": {s: round(counts[s]["total"] / total, 6) for s in SPLITS},
        "counts": counts,
        "units": int(len(unit_counts)),
        "multi_image_units": int((unit_sizes > 1).sum()),
        "largest_unit": int(unit_sizes.max()),
        "patients": int(len(set(out["patient"]) - {""})),
        "official": official,
        "leakage": problems,  # empty when there is no leakage (the stage fails otherwise)
        "n_leakage_problems": len(problems),
        "params": p.model_dump(),
    }


# ----------------------------------------------------------------------------------------------------------------------
# outputs


def split_counts(split_df: pd.DataFrame, classes: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Per split: ``total`` and one count per class (zeros included), the shape of a DVC metrics file."""
    labels = list(classes) if classes is not None else sorted(set(clean_text(split_df["label"])))
    out: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        sub = split_df[split_df["split"] == s]
        vc = clean_text(sub["label"]).value_counts()
        out[s] = {"total": int(len(sub)), **{c: int(vc.get(c, 0)) for c in labels}}
    return out


def write_split(split_df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the split table atomically; same table = same bytes."""
    from lungxray.core.io import write_csv

    write_csv(path, split_df[SPLIT_COLUMNS].sort_values("id", kind="mergesort").reset_index(drop=True))


def split_counts_plot(counts: dict[str, Any], out_png: str | os.PathLike) -> None:
    """Bar chart of the class counts per split (``counts`` as from :func:`split_counts`, or the stats dict)."""
    if "counts" in counts and isinstance(counts["counts"], dict):
        counts = counts["counts"]
    splits = [s for s in SPLITS if s in counts] + sorted(set(counts) - set(SPLITS))
    classes: list[str] = []
    for s in splits:
        classes += [c for c in counts[s] if c != "total" and c not in classes]
    fig, ax = pyplot().subplots(figsize=(max(5.0, 1.2 * len(classes) + 2), 4), dpi=100)
    x = np.arange(len(classes))
    width = 0.8 / max(len(splits), 1)
    for k, s in enumerate(splits):
        vals = [int(counts[s].get(c, 0)) for c in classes]
        total = counts[s].get("total", sum(vals))
        bars = ax.bar(x + (k - (len(splits) - 1) / 2) * width, vals, width, label=f"{s} ({total})")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, classes)
    ax.set_ylabel("images")
    ax.set_title("images per class and split")
    ax.legend()
    fig.tight_layout()
    save_png(fig, out_png, metadata={"Software": None})
