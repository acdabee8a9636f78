"""Copies of one X-ray under different labels, end to end: dedupe -> validate -> split -> preprocess, run as the stage
scripts in a scratch copy of the repository, under each ``dedupe.conflict_policy`` (the contract:
lungxray.core.schema)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import SHARED_DATA, copy_repo_tree

CLASSES = ["normal", "pneumonia", "covid19"]
LABEL = {"NORMAL": "normal", "PNEUMONIA": "pneumonia", "COVID19": "covid19"}  # relabelled_copies/manifest.csv
MIRRORED = 6  # relabelled originals published once more under their own label: majority resolves those groups
EXTRA_PER_CLASS = 10  # unrelated skytells images per class, so that every split gets some


def _stage(repo: Path, name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    return subprocess.run([sys.executable, f"stages/{name}.py"], cwd=repo, env=env, capture_output=True, text=True)


def _run(repo: Path, *names: str) -> None:
    for name in names:
        r = _stage(repo, name)
        assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"


def _params(sources: list[dict], policy: str) -> dict:
    return {
        "fetch": {"classes": CLASSES, "workers": 1, "sources": sources},
        "dedupe": {"conflict_policy": policy, "source_preference": ["originals", "mirror"], "workers": 1},
        "validate": {"min_width": 28, "min_height": 28, "min_per_class": 1},
        "split": {"ratios": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0},
        "preprocess": {"image_size": 32, "workers": 1},
    }


def _set_policy(repo: Path, policy: str) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dedupe"]["conflict_policy"] = policy
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """A scratch repository, fetched: the originals of the 20 relabelled copies (under their own labels, plus a few
    unrelated images), a second re-publication of ``MIRRORED`` relabelled originals, and relabelled_copies itself.

    Returns the repository and the expected groups: ``{copy id: (original id, original label, copy label, mirror id)}``.
    """
    work = tmp_path_factory.mktemp("conflicts")
    repo = work / "repo"
    repo.mkdir()
    copy_repo_tree(repo)
    theirs = pd.read_csv(SHARED_DATA / "relabelled_copies" / "manifest.csv")
    expected, mirrored = {}, 0
    for r in theirs.itertuples():
        label = LABEL[r.label_of_original]
        name = r.copy_of.replace("/", "__")
        link = work / "originals" / label / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(SHARED_DATA / r.copy_of)
        mirror_id = ""
        if r.relabelled and mirrored < MIRRORED:
            mirrored += 1
            (work / "mirror" / label).mkdir(parents=True, exist_ok=True)
            with Image.open(SHARED_DATA / r.copy_of) as im:  # resized to 80% and re-encoded as PNG
                small = im.convert("L").resize((im.width * 4 // 5, im.height * 4 // 5))
            small.save(work / "mirror" / label / f"{name}.png")
            mirror_id = f"mirror/{label}/{name}.png"
        expected[f"relabelled_copies/{r.file}"] = (f"originals/{label}/{name}", label, LABEL[r.label], mirror_id)
    used = set(theirs.copy_of)
    skytells = SHARED_DATA / "skytells_covid19_xray" / "NonAugmentedTrain"
    for folder, label in (("Normal", "normal"), ("ViralPneumonia", "pneumonia"), ("COVID-19", "covid19")):
        files = sorted(p for p in (skytells / folder).iterdir() if p.relative_to(SHARED_DATA).as_posix() not in used)
        for p in files[:EXTRA_PER_CLASS]:
            (work / "originals" / label / f"extra_{p.name}").symlink_to(p)
    identity = {c: c for c in CLASSES}
    sources = [{"name": "originals", "kind": "folder", "path": str(work / "originals"), "labels": identity},
               {"name": "mirror", "kind": "folder", "path": str(work / "mirror"), "labels": identity},
               {"name": "relabelled_copies", "kind": "folder", "path": str(SHARED_DATA / "relabelled_copies"),
                "labels": {"COVID-19": "covid19", "Pneumonia": "pneumonia", "Normal": "normal"}}]
    (repo / "params.yaml").write_text(yaml.safe_dump(_params(sources, "drop"), sort_keys=False))
    _run(repo, "fetch")
    return repo, expected


def _scratch(fetched, tmp_path, policy: str) -> tuple[Path, dict]:
    """A copy of the fetched repository, set to ``policy``."""
    src, expected = fetched
    repo = tmp_path / "repo"
    shutil.copytree(src, repo, symlinks=True)
    _set_policy(repo, policy)
    return repo, expected


def _conflict_groups(groups: pd.DataFrame, expected: dict) -> dict[str, list[str]]:
    """group -> member ids, for every copy that carries another label than its original."""
    gid = groups.set_index("id")["group"]
    out = {}
    for copy, (orig, orig_label, copy_label, mirror) in expected.items():
        if orig_label != copy_label:
            out[gid[copy]] = sorted(groups.loc[groups["group"] == gid[copy], "id"])
    return out


def shared(test):
    """Marks of the tests on the real X-rays (skipped without ../shared/data), each a few stage runs."""
    return pytest.mark.shared(pytest.mark.slow(test))


@shared
def test_dedupe_groups_every_copy_with_its_original_and_reports_the_ten_conflicts(fetched, tmp_path):
    repo, expected = _scratch(fetched, tmp_path, "drop")
    _run(repo, "dedupe")
    groups = pd.read_csv(repo / "data/interim/groups.csv", keep_default_na=False)
    gid = groups.set_index("id")["group"]
    for copy, (orig, orig_label, copy_label, mirror) in expected.items():
        assert gid[copy] == gid[orig], f"{copy} is not grouped with its original {orig}"
        if mirror:
            assert gid[mirror] == gid[orig]
    conflicts = _conflict_groups(groups, expected)
    report = json.loads((repo / "reports/dedupe.json").read_text())
    assert len(conflicts) == 10 == report["n_label_conflicts"]
    assert {c["group"] for c in report["label_conflicts"]} == set(conflicts)
    for c in report["label_conflicts"]:
        assert sorted(m["id"] for m in c["members"]) == conflicts[c["group"]]
        assert c["action"] == "drop" and c["kept"] is None
    # the 10 copies under their original label are plain duplicates: one of each pair is kept
    same = [copy for copy, (o, ol, cl, m) in expected.items() if ol == cl]
    assert len(same) == 10 and not groups.loc[groups["id"].isin(same), "label_conflict"].any()
    assert (repo / "reports/dedupe_contact_sheet.png").stat().st_size > 0


@shared
def test_drop_keeps_no_member_of_a_conflict_group_in_any_split(fetched, tmp_path):
    repo, expected = _scratch(fetched, tmp_path, "drop")
    _run(repo, "dedupe", "validate", "split", "preprocess")
    groups = pd.read_csv(repo / "data/interim/groups.csv", keep_default_na=False)
    members = {i for ids in _conflict_groups(groups, expected).values() for i in ids}
    assert len(members) == 20 + MIRRORED
    split = pd.read_csv(repo / "data/split/split.csv", keep_default_na=False)
    index = pd.read_csv(repo / "data/processed/index.csv", keep_default_na=False)
    assert not members & set(split["id"]) and not members & set(index["id"])
    assert sorted(index["id"]) == sorted(split["id"]) == sorted(groups.loc[groups["kept"], "id"])
    assert set(split["split"]) == {"train", "val", "test"}


@shared
def test_majority_keeps_one_member_with_the_majority_label_and_drops_ties(fetched, tmp_path):
    repo, expected = _scratch(fetched, tmp_path, "majority")
    _run(repo, "dedupe", "validate", "split", "preprocess")
    split = pd.read_csv(repo / "data/split/split.csv", keep_default_na=False).set_index("id")
    index = pd.read_csv(repo / "data/processed/index.csv", keep_default_na=False).set_index("id")
    resolved = 0
    for copy, (orig, orig_label, copy_label, mirror) in expected.items():
        if orig_label == copy_label:
            continue
        members = [i for i in (orig, copy, mirror) if i]
        used = [i for i in members if i in split.index]
        if mirror:  # two copies under the original label against one relabelled copy
            assert len(used) == 1 and used[0] != copy, members
            assert split.loc[used[0], "label"] == index.loc[used[0], "label"] == orig_label
            resolved += 1
        else:  # one against one: a tie, dropped
            assert used == [] and not set(members) & set(index.index)
    assert resolved == MIRRORED
    report = json.loads((repo / "reports/dedupe.json").read_text())
    assert sorted(c["action"] for c in report["label_conflicts"]) == ["drop_tie"] * 4 + ["majority"] * MIRRORED


@shared
def test_fail_stops_dedupe_naming_every_conflict_group_and_writes_no_groups_table(fetched, tmp_path):
    repo, expected = _scratch(fetched, tmp_path, "fail")
    r = _stage(repo, "dedupe")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "10 duplicate group(s) carry different labels" in r.stderr
    for copy, (orig, orig_label, copy_label, mirror) in expected.items():
        if orig_label != copy_label:
            assert f"{copy_label} from relabelled_copies: data/raw/{copy}" in r.stderr
            assert f"{orig_label} from originals: data/raw/{orig}" in r.stderr
    assert "conflict_policy to 'drop'" in r.stderr
    assert not (repo / "data/interim/groups.csv").exists()


def _synthetic_repo(root: Path) -> Path:
    """A scratch repository whose manifest and groups table hold one label conflict that dedupe, as it was before
    the contract, still marked kept (the validation fails on it)."""
    repo = root / "repo"
    repo.mkdir()
    copy_repo_tree(repo)
    rng = np.random.default_rng(0)
    rows, grows = [], []
    for i in range(12):
        label = CLASSES[i % 3]
        path = f"data/raw/s/{label}/{i}.png"
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(repo / path)
        data = (repo / path).read_bytes()
        rows.append({"id": f"s/{i}", "source": "s", "path": path, "raw_label": label, "label": label, "patient": "",
                     "official_split": "", "sha256": hashlib.sha256(data).hexdigest(), "width": 64, "height": 64,
                     "mode": "L", "bit_depth": 8, "format": "PNG", "bytes": len(data), "orientation": 0})
        group = "gconflict" if i in (0, 1) else f"g{i}"
        grows.append({"id": f"s/{i}", "path": path, "source": "s", "label": label, "group": group,
                      "label_conflict": i in (0, 1), "conflict_action": "drop" if i in (0, 1) else "",
                      "resolved_label": "" if i in (0, 1) else label, "readable": True, "kept": i != 1})
    (repo / "data/interim").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(repo / "data/interim/manifest.csv", index=False)
    pd.DataFrame(grows).to_csv(repo / "data/interim/groups.csv", index=False)
    params = _params([{"name": "s", "kind": "folder", "path": "elsewhere", "labels": {c: c for c in CLASSES}}], "drop")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.mark.slow
def test_split_after_a_failed_validate_stops_and_writes_nothing(tmp_path):
    repo = _synthetic_repo(tmp_path)
    r = _stage(repo, "validate")
    assert r.returncode == 2 and "exactly one kept image" in r.stderr
    assert json.loads((repo / "reports/validation.json").read_text())["success"] is False
    r = _stage(repo, "split")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "data validation failed" in r.stderr and "dvc repro validate" in r.stderr
    assert not (repo / "data/split").exists() and not (repo / "reports/split.json").exists()
