"""Tests of the leakage-free split (lungxray.data.split, lungxray.data.leakage): hypothesis properties plus unit
tests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lungxray.core.errors import LungxrayError
from lungxray.data.leakage import check_leakage
from lungxray.data.split import (
    SPLIT_COLUMNS,
    SplitParams,
    make_split,
    official_test_set,
    require_validated,
    split_counts,
    split_counts_plot,
    write_split,
)

CLASSES = ["covid", "normal", "pneumonia"]
PRIORITY = {"train": 0, "val": 1, "test": 2}
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tables(labels, patients, groups, official, conflict_groups=(), kept_order=None):
    """Build a manifest and a groups table; the first member (in kept_order) of each group is kept."""
    n = len(labels)
    ids = [f"src/{i:04d}.png" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "id": ids,
            "source": "src",
            "path": [f"data/raw/{i}" for i in ids],
            "label": labels,
            "patient": patients,
            "official_split": official,
        }
    )
    order = list(kept_order) if kept_order is not None else list(range(n))
    kept = [False] * n
    seen = set()
    for i in order:
        g = groups[i]
        if g not in seen and g not in conflict_groups:
            kept[i] = True
        seen.add(g)
    groups_df = pd.DataFrame(
        {
            "id": ids,
            "path": manifest["path"],
            "source": "src",
            "label": labels,
            "group": groups,
            "kept": kept,
            "label_conflict": [g in conflict_groups for g in groups],
        }
    )
    return manifest, groups_df


@st.composite
def tables(draw, max_n: int = 40):
    n = draw(st.integers(1, max_n))
    labels = draw(st.lists(st.sampled_from(CLASSES), min_size=n, max_size=n))
    n_pat = max(1, n // 3)
    patients = draw(
        st.lists(st.one_of(st.none(), st.integers(0, n_pat).map(lambda i: f"kermany:{i}")), min_size=n, max_size=n)
    )
    groups = draw(st.lists(st.integers(0, max(0, n - 1)).map(lambda i: f"g{i:03d}"), min_size=n, max_size=n))
    official = draw(st.lists(st.sampled_from(["train", "val", "test", None]), min_size=n, max_size=n))
    conflict = draw(st.sets(st.sampled_from(sorted(set(groups))), max_size=2))
    order = draw(st.permutations(list(range(n))))
    m, g = _tables(labels, patients, groups, official, conflict, order)
    assume(g["kept"].any())
    return m, g


def _components(m: pd.DataFrame, g: pd.DataFrame) -> dict[str, int]:
    """Naive connected components of all images over shared group / patient (independent of the module's code)."""
    df = m.merge(g[["id", "group"]], on="id")
    comp = {i: k for k, i in enumerate(df["id"])}
    changed = True
    while changed:
        changed = False
        for key in ("group", "patient"):
            for _, sub in df[df[key].notna()].groupby(key):
                c = min(comp[i] for i in sub["id"])
                for i in sub["id"]:
                    if comp[i] != c:
                        comp[i] = c
                        changed = True
    return comp


def _shuffle(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------------
# properties


@FAST
@given(tables(), st.sampled_from(["none", "test", "all"]), st.integers(0, 3))
def test_split_invariants(t, mode, seed):
    m, g = t
    params = SplitParams(seed=seed, keep_official_test=mode == "test", keep_official_splits=mode == "all")
    out, stats = make_split(m, g, params)

    # every kept image exactly once, nothing else
    assert list(out.columns) == SPLIT_COLUMNS
    assert sorted(out["id"]) == sorted(g.loc[g["kept"], "id"]) == list(out["id"])
    assert set(out["split"]) <= {"train", "val", "test"}

    # no union of groups and patients (through ANY copy, kept or not) spans two splits
    comp = _components(m, g)
    splits_of = out.groupby(out["id"].map(comp))["split"].nunique()
    assert (splits_of <= 1).all()
    assert check_leakage(out, m, g) == []
    assert stats["leakage"] == [] and stats["n_leakage_problems"] == 0
    for key in ("group", "patient"):
        sub = out[out[key].astype(str) != ""]
        assert (sub.groupby(key)["split"].nunique() <= 1).all()

    # official splits
    merged = out.merge(m[["id", "official_split"]], on="id", suffixes=("", "_m"))
    if mode == "test":
        assert (merged.loc[merged["official_split"] == "test", "split"] == "test").all()
        # anything linked to an official test image (kept or not) is in test
        test_comps = {comp[i] for i in m.loc[m["official_split"] == "test", "id"]}
        linked = out[out["id"].map(comp).isin(test_comps)]
        assert (linked["split"] == "test").all()
        assert stats["official"]["moved_to_test"] == int(
            (linked["id"].map(m.set_index("id")["official_split"]) != "test").sum()
        )
    if mode == "all":
        has = merged[merged["official_split"].notna()]
        got = [PRIORITY[x] for x in has["split"]]
        wanted = [PRIORITY[x] for x in has["official_split"]]
        assert all(a >= b for a, b in zip(got, wanted))
        # a unit with any official split takes the strongest one among ALL its images (kept or not)
        strongest: dict[int, int] = {}
        for i, o in zip(m["id"], m["official_split"]):
            if isinstance(o, str):
                strongest[comp[i]] = max(strongest.get(comp[i], -1), PRIORITY[o])
        for i, s in zip(out["id"], out["split"]):
            if comp[i] in strongest:
                assert PRIORITY[s] == strongest[comp[i]]

    # counts add up
    assert sum(stats["sizes"].values()) == len(out)
    assert stats["counts"] == split_counts(out, sorted(set(out["label"])))


@FAST
@given(tables(max_n=30), st.integers(0, 10_000), st.sampled_from(["none", "test", "all"]))
def test_deterministic_under_row_shuffling(t, shuffle_seed, mode):
    m, g = t
    params = SplitParams(keep_official_test=mode == "test", keep_official_splits=mode == "all")
    a, sa = make_split(m, g, params)
    b, sb = make_split(_shuffle(m, shuffle_seed), _shuffle(g, shuffle_seed + 1), params)
    pd.testing.assert_frame_equal(a, b)
    assert json.dumps(sa, sort_keys=True) == json.dumps(sb, sort_keys=True)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.6, 0.2, 0.2)]))
def test_ratios_respected_on_large_inputs(seed, ratios):
    rng = np.random.default_rng(seed)
    n = 3000
    labels = rng.choice(CLASSES, n, p=[0.1, 0.5, 0.4]).tolist()
    patients = [f"p:{x}" if x < 1500 else None for x in rng.integers(0, 3000, n)]  # ~half have a patient
    groups = [f"g{x}" for x in rng.integers(0, int(n * 0.9), n)]  # some duplicates
    m, g = _tables(labels, patients, groups, [None] * n)
    params = SplitParams(ratios=dict(zip(("train", "val", "test"), ratios)), seed=int(seed % 1000))
    out, stats = make_split(m, g, params)
    total = len(out)
    for s, r in zip(("train", "val", "test"), ratios):
        assert abs(stats["sizes"][s] / total - r) < 0.02, stats["sizes"]
        for c in CLASSES:  # stratified: every class roughly at the ratio
            n_c = int((out["label"] == c).sum())
            assert abs(stats["counts"][s][c] / n_c - r) < 0.03, (s, c, stats["counts"])


# ----------------------------------------------------------------------------------------------------------------------
# unit tests


def _simple(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(CLASSES, n).tolist()
    patients = [f"p:{i // 5}" if i % 3 else None for i in range(n)]
    groups = [f"g{i // 2}" for i in range(n)]
    official = rng.choice(["train", "val", "test"], n).tolist()
    return _tables(labels, patients, groups, official)


def test_output_bytes_identical(tmp_path):
    m, g = _simple()
    a, _ = make_split(m, g, SplitParams(seed=7))
    write_split(a, tmp_path / "a.csv")
    write_split(a, tmp_path / "a2.csv")
    b, _ = make_split(_shuffle(m, 1), _shuffle(g, 2), SplitParams(seed=7))
    write_split(b, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "a2.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    # read back: columns and sort order as documented
    back = pd.read_csv(tmp_path / "a.csv", keep_default_na=False)
    assert list(back.columns) == SPLIT_COLUMNS and list(back["id"]) == sorted(back["id"])
    # another seed gives another split
    c, _ = make_split(m, g, SplitParams(seed=8))
    assert not c["split"].equals(a["split"])


def test_patient_keeps_two_different_xrays_together():
    # two different X-rays (different groups) of one patient, plus unrelated images
    m, g = _tables(
        ["normal", "pneumonia"] + ["normal"] * 20,
        ["p:1", "p:1"] + [None] * 20,
        ["ga", "gb"] + [f"g{i}" for i in range(20)],
        [None] * 22,
    )
    for seed in range(10):
        out, _ = make_split(m, g, SplitParams(seed=seed))
        s = out.set_index("id")["split"]
        assert s["src/0000.png"] == s["src/0001.png"]
        assert out.set_index("id").loc["src/0000.png", "unit"] == out.set_index("id").loc["src/0001.png", "unit"]


def test_link_through_non_kept_copy():
    # image 0 (patient A) and image 1 (patient B) are the same X-ray (group gx), only 0 is kept;
    # image 2 is another X-ray of patient B -> 0 and 2 must share a split
    labels = ["normal", "normal", "pneumonia"] + ["normal"] * 30
    patients = ["a:1", "b:1", "b:1"] + [None] * 30
    groups = ["gx", "gx", "gy"] + [f"g{i}" for i in range(30)]
    m, g = _tables(labels, patients, groups, [None] * 33)
    for seed in range(10):
        out, _ = make_split(m, g, SplitParams(seed=seed))
        s = out.set_index("id")["split"]
        assert "src/0001.png" not in s.index
        assert s["src/0000.png"] == s["src/0002.png"]


def test_keep_official_test_moves_linked_images():
    labels = ["normal"] * 40
    patients = ["p:1", "p:1", "p:2"] + [None] * 37
    groups = [f"g{i}" for i in range(40)]
    official = ["test", "train", "val"] + ["train"] * 37
    m, g = _tables(labels, patients, groups, official)
    out, stats = make_split(m, g, SplitParams(keep_official_test=True))
    s = out.set_index("id")["split"]
    assert s["src/0000.png"] == "test" and s["src/0001.png"] == "test"
    assert stats["official"]["moved_to_test"] == 1
    assert stats["official"]["moved_to_test_from"] == {"train": 1}
    # without the option the official test image may go anywhere, but the patient stays together
    out, _ = make_split(m, g, SplitParams())
    s = out.set_index("id")["split"]
    assert s["src/0000.png"] == s["src/0001.png"]


def test_keep_official_splits_resolves_crossing_units():
    official = ["train", "val", "train", "test", "train", None]
    m, g = _tables(["normal"] * 6, ["p:1", "p:1", "p:2", "p:2", None, None], [f"g{i}" for i in range(6)], official)
    out, stats = make_split(m, g, SplitParams(keep_official_splits=True))
    s = out.set_index("id")["split"]
    assert s["src/0000.png"] == s["src/0001.png"] == "val"  # val beats train
    assert s["src/0002.png"] == s["src/0003.png"] == "test"  # test beats train
    assert s["src/0004.png"] == "train"
    assert stats["official"]["crossing_units"] == 2
    assert stats["official"]["moved"] == {"train->test": 1, "train->val": 1}
    assert stats["official"]["moved_images"] == 2


def test_benchmark_mode_keeps_the_official_test_set_whole_beside_the_deduplicated_test_split():
    # two copies of one X-ray inside the official test set (g3), one official test image whose train copy moves to
    # test (g4), and train images
    official = ["train", "train", "test", "test", "test", "train"]
    groups = ["g0", "g1", "g3", "g3", "g4", "g4"]
    m, g = _tables(["normal", "pneumonia"] * 3, [None] * 6, groups, official)
    params = SplitParams(keep_official_splits=True)
    split_df, _ = make_split(m, g, params)
    whole = official_test_set(m, g, split_df, params)
    assert sorted(whole["id"]) == ["src/0002.png", "src/0003.png", "src/0004.png"]  # both copies, not the moved one
    assert set(whole["split"]) == {"test_official"}
    assert (split_df["split"] == "test").sum() == 2  # deduplicated: one per group
    assert official_test_set(m, g, split_df, SplitParams()).empty  # only in benchmark mode


def test_official_test_image_sharing_a_unit_with_train_is_refused():
    m, g = _tables(["normal"] * 3, ["p:1", "p:1", None], ["g0", "g1", "g2"], ["test", "train", "train"])
    params = SplitParams(keep_official_splits=True)
    split_df, _ = make_split(m, g, params)
    split_df.loc[split_df["id"] == "src/0000.png", "split"] = "train"  # as if the split had leaked
    with pytest.raises(LungxrayError, match="official test image"):
        official_test_set(m, g, split_df, params)


def test_ratio_zero_split_gets_nothing():
    m, g = _simple(100)
    out, stats = make_split(m, g, SplitParams(ratios={"train": 0.8, "val": 0.0, "test": 0.2}))
    assert stats["sizes"]["val"] == 0


def test_bad_params_and_inputs():
    with pytest.raises(ValidationError, match="sum to 1"):
        SplitParams(ratios={"train": 0.7, "val": 0.2, "test": 0.2})
    with pytest.raises(ValidationError, match="exactly the keys"):
        SplitParams(ratios={"train": 0.7, "valid": 0.3})
    with pytest.raises(ValidationError):
        SplitParams(sed=3)
    m, g = _simple(10)
    with pytest.raises(LungxrayError, match="list different images"):
        make_split(m, g.iloc[1:], SplitParams())
    with pytest.raises(LungxrayError, match="lacks the column"):
        make_split(m, g.drop(columns=["kept"]), SplitParams())
    g2 = g.copy()
    g2["kept"] = False
    with pytest.raises(LungxrayError, match="no kept images"):
        make_split(m, g2, SplitParams())
    with pytest.raises(LungxrayError, match="more than once"):
        make_split(pd.concat([m, m.iloc[:1]]), g, SplitParams())


def _split_table(rows):
    return pd.DataFrame(rows, columns=["id", "split", "group", "patient"])


def test_check_leakage_reports_groups_patients_and_chains():
    # same dedupe group kept twice in different splits
    p = check_leakage(_split_table([("a", "train", "g1", ""), ("b", "test", "g1", "")]))
    assert len(p) == 1 and "dedupe group 'g1'" in p[0] and "a (train)" in p[0] and "b (test)" in p[0]
    # one patient in two splits
    p = check_leakage(_split_table([("a", "train", "g1", "k:1"), ("b", "val", "g2", "k:1")]))
    assert len(p) == 1 and "patient 'k:1'" in p[0] and "train, val" in p[0]
    # a non-kept copy c (patient k:9) of kept a (test); b of patient k:9 in train -> leak
    ref = pd.DataFrame({"id": ["a", "b", "c"], "group": ["g1", "g2", "g1"], "patient": ["k:1", "k:9", "k:9"]})
    split = _split_table([("a", "test", "g1", "k:1"), ("b", "train", "g2", "k:9")])
    p = check_leakage(split, ref)
    assert len(p) == 1 and "patient 'k:9'" in p[0] and "via its dedupe group 'g1'" in p[0]
    # ... but a non-kept copy alone is fine
    assert check_leakage(_split_table([("a", "test", "g1", "k:1")]), ref) == []
    # chain through a group with no kept image (label conflict): x (k:1) and y (k:2) are one X-ray
    ref = pd.DataFrame(
        {"id": ["a", "b", "x", "y"], "group": ["ga", "gb", "gc", "gc"], "patient": ["k:1", "k:2", "k:1", "k:2"]}
    )
    split = _split_table([("a", "train", "ga", "k:1"), ("b", "test", "gb", "k:2")])
    p = check_leakage(split, ref)
    assert len(p) == 1 and "linked through shared dedupe groups / patients" in p[0]
    # duplicates and bad split names
    p = check_leakage(_split_table([("a", "train", "g1", ""), ("a", "train", "g1", ""), ("b", "dev", "g2", "")]))
    assert any("more than once" in x for x in p) and any("other than train/val/test" in x for x in p)
    with pytest.raises(LungxrayError):
        check_leakage(pd.DataFrame({"id": ["a"]}))


def test_check_leakage_detects_tampering():
    m, g = _simple(300)
    out, _ = make_split(m, g, SplitParams())
    assert check_leakage(out, m, g) == []
    # move one kept image of a multi-patient unit to another split
    sizes = out[out["patient"] != ""].groupby("patient").size()
    pat = out[out["patient"] == sizes[sizes >= 2].index[0]].iloc[0]
    bad = out.copy()
    bad.loc[bad["id"] == pat["id"], "split"] = "val" if pat["split"] != "val" else "train"
    assert any(pat["patient"] in x for x in check_leakage(bad, m, g))


def test_counts_and_plot(tmp_path):
    m, g = _simple(120)
    out, stats = make_split(m, g, SplitParams(), classes=["normal", "pneumonia", "covid", "tb"])
    counts = stats["counts"]
    assert set(counts) == {"train", "val", "test"}
    assert counts["train"]["tb"] == 0
    assert all(c["total"] == sum(v for k, v in c.items() if k != "total") for c in counts.values())
    json.dumps(stats)
    split_counts_plot(counts, tmp_path / "plots" / "split.png")
    split_counts_plot(stats, tmp_path / "plots" / "split2.png")
    assert (tmp_path / "plots" / "split.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(LungxrayError, match="not among the classes"):
        make_split(m, g, SplitParams(), classes=["normal"])


def test_same_split_whatever_the_csv_reader(tmp_path):
    """NaN (default read) and '' (keep_default_na=False, as the stage reads) give the same split."""
    m, g = _simple(150)
    m.to_csv(tmp_path / "m.csv", index=False)
    g.to_csv(tmp_path / "g.csv", index=False)
    a, _ = make_split(pd.read_csv(tmp_path / "m.csv"), pd.read_csv(tmp_path / "g.csv"), SplitParams())
    b, _ = make_split(
        pd.read_csv(tmp_path / "m.csv", keep_default_na=False),
        pd.read_csv(tmp_path / "g.csv", keep_default_na=False),
        SplitParams(),
    )
    pd.testing.assert_frame_equal(a, b)
    c, _ = make_split(m, g, SplitParams())
    pd.testing.assert_frame_equal(a, c)


# ----------------------------------------------------------------------------------------------------------------------
# only validated input


def _validated(tmp_path, success=True, inputs=None):
    """A manifest and a groups table on disk, and a validation report on them (or on ``inputs``)."""
    from lungxray.core.io import file_fingerprints, write_json

    m, g = _simple(30)
    paths = [tmp_path / "manifest.csv", tmp_path / "groups.csv"]
    m.to_csv(paths[0], index=False)
    g.to_csv(paths[1], index=False)
    report = tmp_path / "validation.json"
    write_json(report, {"success": success, "n_failed": 0 if success else 1,
                        "inputs": file_fingerprints(paths) if inputs is None else inputs})
    return report, paths


def test_split_accepts_input_that_validation_passed(tmp_path):
    require_validated(*_validated(tmp_path))


def test_split_refuses_input_that_validation_failed(tmp_path):
    with pytest.raises(LungxrayError, match=r"validation failed.*dvc repro validate"):
        require_validated(*_validated(tmp_path, success=False))


def test_split_refuses_input_never_validated(tmp_path):
    report, paths = _validated(tmp_path)
    report.unlink()
    with pytest.raises(LungxrayError, match=r"missing.*dvc repro validate"):
        require_validated(report, paths)


def test_split_names_a_missing_input_instead_of_a_traceback(tmp_path):
    report, paths = _validated(tmp_path)
    paths[1].unlink()  # as after `dvc repro` stopped at a dedupe that failed
    with pytest.raises(LungxrayError, match=r"groups.csv is missing.*dvc repro split"):
        require_validated(report, paths)


def test_split_refuses_input_changed_since_validation(tmp_path):
    report, paths = _validated(tmp_path)
    with open(paths[1], "a") as fh:
        fh.write("one more row\n")
    with pytest.raises(LungxrayError, match=r"groups.csv.*dvc repro validate") as e:
        require_validated(report, paths)
    assert "manifest.csv" not in str(e.value)
    # a report from before validation recorded its inputs is not trusted either
    with pytest.raises(LungxrayError, match="dvc repro validate"):
        require_validated(*_validated(tmp_path, inputs={}))
