"""The fetch stage on the real chest X-rays of ../shared/data, through the offline profile."""

from __future__ import annotations

import pandas as pd
import pytest

from lungxray.core import schema
from lungxray.core.config import FetchParams, load_sections
from lungxray.data.fetch import run_fetch

from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    work = tmp_path_factory.mktemp("shared")
    params = load_sections({"fetch": FetchParams}, REPO / "configs" / "shared-data.yaml")
    import os

    old = os.getcwd()
    # the profile's paths are relative to the repository root: run from a sibling of the repo with the same depth
    os.chdir(work)
    try:
        (work / "shared-link").symlink_to(SHARED_DATA.parent)
        fetch = params.fetch.model_copy(update={"sources": [
            s.model_copy(update={"path": s.path.replace("../shared", "shared-link")}) for s in params.fetch.sources]})
        summary = run_fetch(fetch, progress=False)
        yield summary, pd.read_csv(schema.MANIFEST, keep_default_na=False), pd.read_csv(schema.REJECTED)
    finally:
        os.chdir(old)


# normalised labels of each SOURCE.md / manifest.csv -> our taxonomy (OTHER and UNKNOWN are dropped by the profile)
NORMALISED = {"NORMAL": "normal", "PNEUMONIA": "pneumonia", "COVID19": "covid19", "TUBERCULOSIS": "tuberculosis"}


@pytest.mark.parametrize("source", ["jtiptj_test", "ieee8023_fork_suyash091", "figure1_covid", "skytells_covid19_xray",
                                    "relabelled_copies"])
def test_counts_match_the_source_manifests(fetched, source):
    _, manifest, _ = fetched
    theirs = pd.read_csv(SHARED_DATA / source / "manifest.csv")
    expected = theirs.label.map(NORMALISED).dropna().value_counts().sort_index().to_dict()
    ours = manifest[manifest.source == source].label.value_counts().sort_index().to_dict()
    assert ours == expected
    # and byte for byte the same files: their manifest has md5s, so hash what we ingested the same way
    import hashlib

    ours_md5 = {hashlib.md5(open(p, "rb").read()).hexdigest() for p in manifest[manifest.source == source].path}
    theirs_md5 = set(theirs[theirs.label.isin(NORMALISED)].md5)
    assert ours_md5 == theirs_md5


def test_pneumoniamnist_official_splits(fetched):
    summary, manifest, _ = fetched
    pm = manifest[manifest.source == "pneumoniamnist"]
    assert pm.groupby(["official_split", "label"]).size().to_dict() == {
        ("train", "normal"): 1214, ("train", "pneumonia"): 3494, ("val", "normal"): 135, ("val", "pneumonia"): 389}


def test_the_twelve_unreadable_files_are_rejected(fetched):
    summary, manifest, rejected = fetched
    bad = rejected[rejected.source == "jtiptj_test_unreadable"]
    assert len(bad) == 12 and set(bad.reason) == {"not_an_image"}
    assert summary["sources"]["jtiptj_test_unreadable"]["rejected"] == {"not_an_image": 12}
    assert not (manifest.source == "jtiptj_test_unreadable").any()


def test_modes_and_patients(fetched):
    _, manifest, _ = fetched
    assert {"L", "RGB", "RGBA"} <= set(manifest["mode"])
    assert (manifest.bit_depth == 16).any()  # a 16-bit PNG among the COVID images
    kermany = manifest[manifest.patient.str.startswith("kermany:")]
    assert set(kermany.source) == {"jtiptj_test", "ieee8023_fork_suyash091"}
    assert manifest.id.is_unique and manifest.path.is_unique
