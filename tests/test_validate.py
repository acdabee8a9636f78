"""Tests of the great-expectations data validation (lungxray.data.validate)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from lungxray.core.errors import LungxrayError
from lungxray.core.schema import MANIFEST_COLUMNS
from lungxray.data.validate import ValidateParams, ValidationResult, format_failures, validate_tables, write_report

CLASSES = ["normal", "pneumonia"]


def _roundtrip(df: pd.DataFrame) -> pd.DataFrame:
    """Write and read back as CSV, so dtypes are those the stage sees."""
    return pd.read_csv(io.StringIO(df.to_csv(index=False)))


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A valid manifest (7 images, files on disk) and groups table (one duplicate pair, one dropped conflict group)."""
    root = tmp_path_factory.mktemp("repo")
    specs = [  # label, patient, official split, group, kept, conflict
        ("normal", "k:1", "train", "g1", True, False),
        ("normal", "k:1", "train", "g1", False, False),  # copy of the image above
        ("normal", "k:2", "test", "g2", True, False),
        ("pneumonia", "k:3", "", "g3", True, False),
        ("pneumonia", "", "", "g4", True, False),
        ("pneumonia", "k:4", "val", "g5", False, True),  # conflict group (drop): nothing kept
        ("normal", "", "", "g5", False, True),  # the same X-ray under another label
    ]
    rows, grows = [], []
    for i, (label, patient, split, group, kept, conflict) in enumerate(specs):
        path = f"data/raw/src/{label.upper()}/{i}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"png" * (i + 1))
        ident = f"src/{label.upper()}/{i}.png"
        rows.append(
            {
                "id": ident,
                "source": "src",
                "path": path,
                "raw_label": label.upper(),
                "label": label,
                "patient": patient,
                "official_split": split,
                "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                "width": 256 + i,
                "height": 256,
                "mode": "L",
                "bit_depth": 8,
                "format": "PNG",
                "bytes": 3 * (i + 1),
                "orientation": 1,
            }
        )
        grows.append(
            {"id": ident, "path": path, "source": "src", "label": label, "group": group, "kept": kept,
             "label_conflict": conflict, "conflict_action": "drop" if conflict else "",
             "resolved_label": "" if conflict else label, "readable": True, "evidence": "sha256"}
        )
    manifest = _roundtrip(pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
    groups = _roundtrip(pd.DataFrame(grows))
    return root, manifest, groups


def _run(tables, manifest=None, groups=None, classes=CLASSES, **params) -> ValidationResult:
    root, m, g = tables
    return validate_tables(
        m if manifest is None else manifest, g if groups is None else groups, classes, ValidateParams(**params), root
    )


def _only_failure(result: ValidationResult, table: str, column: str):
    assert not result.success
    hits = [f for f in result.failures if f.table == table and f.column == column]
    assert hits, format_failures(result)
    return hits[0]


def test_valid_tables_pass(tables):
    r = _run(tables)
    assert r.success, format_failures(r)
    assert r.failures == []
    assert len(r.checks) > 40
    assert r.stats["class_counts"] == {"normal": 2, "pneumonia": 2}  # kept images only
    assert r.stats["groups_label_conflict"] == 1 and r.stats["groups_dropped_for_label_conflicts"] == 1
    assert format_failures(r).startswith("data validation passed")
    json.dumps(r.to_dict())


def test_unknown_label(tables):
    _, m, _ = tables
    m = m.copy()
    m.loc[3, "label"] = "covid"
    r = _run(tables, manifest=m)
    f = _only_failure(r, "manifest", "label")
    assert f.expectation == "expect_column_values_to_be_in_set"
    assert f.unexpected_count == 1
    assert f.examples[0]["label"] == "covid" and f.examples[0]["id"] == m.loc[3, "id"]
    text = format_failures(r)
    assert "taxonomy" in text and "covid" in text and "1 of 7 rows fail" in text


def test_duplicate_id(tables):
    _, m, _ = tables
    m = m.copy()
    m.loc[4, "id"] = m.loc[3, "id"]
    r = _run(tables, manifest=m)
    f = _only_failure(r, "manifest", "id")
    assert "unique" in f.description and f.unexpected_count == 2
    assert {e["id"] for e in f.examples} == {m.loc[3, "id"]}
    assert "'id' is unique" in format_failures(r)


def test_duplicate_path(tables):
    _, m, _ = tables
    m = m.copy()
    m.loc[4, "path"] = m.loc[3, "path"]
    f = _only_failure(_run(tables, manifest=m), "manifest", "path")
    assert "unique" in f.description


def test_missing_file(tables):
    _, m, _ = tables
    m = m.copy()
    m.loc[2, "path"] = "data/raw/src/nowhere.png"
    r = _run(tables, manifest=m)
    f = [f for f in r.failures if "exists" in f.description][0]
    assert f.column == "path" and f.unexpected_count == 1
    assert f.examples == [{"id": m.loc[2, "id"], "path": "data/raw/src/nowhere.png"}]
    assert "nowhere.png" in format_failures(r)
    assert r.stats["missing_files"] == 1
    # the check can be switched off
    assert not any("exists" in x.description for x in _run(tables, manifest=m, check_files_exist=False).failures)


def test_too_small(tables):
    _, m, _ = tables
    m = m.copy()
    m.loc[0, "width"] = 16
    m.loc[1, "height"] = 99999
    r = _run(tables, manifest=m)
    fw = _only_failure(r, "manifest", "width")
    fh = _only_failure(r, "manifest", "height")
    assert fw.examples[0]["width"] == 16 and "between 32 and 20000" in fw.description
    assert fh.examples[0]["height"] == 99999
    assert "width is between 32 and 20000 pixels: 1 of 7 rows fail" in format_failures(r)
    # bounds come from the params
    assert _run(tables, manifest=m, min_width=8, max_height=100000).success


def test_class_below_minimum(tables):
    r = _run(tables, min_per_class=3)
    f = _only_failure(r, "class_counts", "label")
    assert f.unexpected_count == 2
    assert {e["class"] for e in f.examples} == {"normal", "pneumonia"}
    assert "at least 3 kept images" in format_failures(r)
    # counting every manifest image instead of the kept ones: 4 normal, 3 pneumonia
    assert _run(tables, min_per_class=3, count_kept_only=False).success


def test_required_class_without_images_fails(tables):
    r = _run(tables, classes=["normal", "pneumonia", "covid"])
    f = _only_failure(r, "class_counts", "label")
    assert f.examples == [{"n_images": 0, "class": "covid"}]
    # ... unless it is not required
    assert _run(tables, classes=["normal", "pneumonia", "covid"], required_classes=["normal"]).success
    with pytest.raises(LungxrayError, match="not classes of the taxonomy"):
        _run(tables, required_classes=["covid"])


def test_two_kept_in_one_group(tables):
    _, _, g = tables
    g = g.copy()
    g.loc[1, "kept"] = True
    r = _run(tables, groups=g)
    f = _only_failure(r, "group_kept", "kept")
    assert f.examples == [{"group": "g1", "n_members": 2, "n_kept": 2, "label_conflict": False, "conflict_action": "",
                           "resolved_label": "normal"}]
    assert "exactly one kept image" in format_failures(r)


def test_group_without_kept_image(tables):
    _, _, g = tables
    g = g.copy()
    g.loc[0, "kept"] = False
    f = _only_failure(_run(tables, groups=g), "group_kept", "kept")
    assert f.examples[0]["group"] == "g1" and f.examples[0]["n_kept"] == 0


def _majority_groups(tables, kept_row: int, resolved: str = "pneumonia"):
    """The fixture's conflict group g5 (rows 5 pneumonia, 6 normal) plus a third copy (row 3, pneumonia), resolved by
    ``majority``; ``kept_row`` is its kept member."""
    _, _, g = tables
    g = g.copy()
    conf = [3, 5, 6]
    g.loc[conf, "group"] = "g5"
    g.loc[conf, "label_conflict"] = True
    g.loc[conf, "conflict_action"] = "majority"
    g.loc[conf, "resolved_label"] = resolved
    g.loc[conf, "kept"] = False
    g.loc[kept_row, "kept"] = True
    return g


def test_a_conflict_group_resolved_by_majority_keeps_exactly_one_image(tables):
    r = _run(tables, groups=_majority_groups(tables, kept_row=5))
    assert r.success, format_failures(r)
    assert r.stats["groups_label_conflict"] == 1 and r.stats["groups_dropped_for_label_conflicts"] == 0


def test_a_dropped_conflict_group_with_a_kept_image_fails(tables):
    """What dedupe wrote before: the representative of a dropped conflict group still marked kept."""
    _, _, g = tables
    g = g.copy()
    g.loc[5, "kept"] = True
    f = _only_failure(_run(tables, groups=g), "group_kept", "kept")
    assert f.examples[0]["group"] == "g5" and f.examples[0]["n_kept"] == 1
    assert f.examples[0]["conflict_action"] == "drop"


def test_the_kept_image_must_carry_the_resolved_label(tables):
    r = _run(tables, groups=_majority_groups(tables, kept_row=6))  # row 6 is 'normal', the group resolved 'pneumonia'
    f = _only_failure(r, "group_kept", "resolved_label")
    assert f.examples[0]["group"] == "g5" and "carries its group's resolved label" in f.description


def test_the_resolution_must_follow_the_conflict_policy(tables):
    r = _run(tables, groups=_majority_groups(tables, kept_row=6, resolved="normal"))  # 'normal' is the minority
    f = _only_failure(r, "group_kept", "conflict_action")
    assert f.examples[0]["group"] == "g5"
    assert "label-conflict contract" in format_failures(r)


def test_an_image_dedupe_could_not_read_fails(tables):
    _, _, g = tables
    g = g.copy()
    g.loc[4, "readable"] = False
    g.loc[4, "kept"] = False
    r = _run(tables, groups=g)
    f = _only_failure(r, "groups", "readable")
    assert f.examples[0]["id"] == g.loc[4, "id"]
    assert "rerun" in f.description


def test_manifest_id_missing_from_groups(tables):
    _, _, g = tables
    r = _run(tables, groups=g.drop(index=3))
    f = [f for f in r.failures if "in the dedupe groups table" in f.description][0]
    assert f.table == "manifest" and f.examples[0]["id"] == tables[1].loc[3, "id"]


def test_missing_column_and_bad_type(tables):
    _, m, g = tables
    m = m.drop(columns=["sha256"]).copy()
    m["width"] = m["width"].astype(float)
    m.loc[0, "width"] = float("nan")
    r = _run(tables, manifest=m, groups=g.drop(columns=["label_conflict"]))
    descs = [f.description for f in r.failures]
    assert "manifest has a column 'sha256'" in descs
    assert "groups table has a column 'label_conflict'" in descs
    assert "'width' holds integers (no blanks)" in descs
    assert "manifest has a column 'sha256': not met" in format_failures(r)


def test_write_report(tables, tmp_path):
    _, m, _ = tables
    m = m.copy()
    m.loc[0, "label"] = "covid"
    r = _run(tables, manifest=m)
    write_report(r, tmp_path / "reports" / "validate.json", docs_dir=tmp_path / "docs")
    d = json.loads((tmp_path / "reports" / "validate.json").read_text())
    assert d["success"] is False and d["n_failed"] == len(r.failures) >= 1
    assert d["failures"][0]["examples"]
    assert any(p.suffix == ".html" for p in (tmp_path / "docs").iterdir())


def test_the_report_records_which_files_were_validated(tables, tmp_path):
    root, m, g = tables
    inputs = {"data/interim/manifest.csv": "a" * 64, "data/interim/groups.csv": "b" * 64}
    r = validate_tables(m, g, CLASSES, ValidateParams(), root, inputs=inputs)
    write_report(r, tmp_path / "validation.json")
    assert json.loads((tmp_path / "validation.json").read_text())["inputs"] == inputs


def test_params_are_strict():
    with pytest.raises(ValidationError):
        ValidateParams(min_widht=3)
    with pytest.raises(ValidationError):
        ValidateParams(min_width=100, max_width=10)


def test_runs_offline(tables, monkeypatch):
    """GX must not try the network (analytics, version checks, CDN)."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert _run(tables).success
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"


def test_blank_strings_count_as_missing(tables):
    """The stage reads CSVs with keep_default_na=False: '' must behave like a missing value."""
    _, m, g = tables
    m2 = pd.read_csv(io.StringIO(m.to_csv(index=False)), keep_default_na=False)
    g2 = pd.read_csv(io.StringIO(g.to_csv(index=False)), keep_default_na=False)
    assert (m2["official_split"] == "").any()
    r = _run(tables, manifest=m2, groups=g2)
    assert r.success, format_failures(r)
    m2.loc[1, "label"] = ""
    f = [f for f in _run(tables, manifest=m2, groups=g2).failures if f.column == "label"]
    assert [x.description for x in f] == ["'label' is never empty"]
