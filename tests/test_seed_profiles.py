"""The seed-paper profiles (configs/seed-*.yaml): each one is valid, and its fetch, run against a fake Kaggle API
serving archives with the real data sets' folder layouts, ends with a manifest whose every label is a profile class."""

from __future__ import annotations

import pandas as pd
import pytest

from lungxray.cli.params_check import load_params
from lungxray.core import schema
from lungxray.data.fetch import run_fetch

from conftest import REPO
from helpers.httpserver import FileServer
from helpers.kaggle import LAYOUTS, real_xrays, use_fake_kaggle, zip_bytes

PROFILES = ["seed-000", "seed-002", "seed-003", "seed-004"]
# images each profile must take from the fake archives (helpers.kaggle): what its root/include/exclude keep
EXPECTED_IMAGES = {"seed-000": 12 + 4 + 12 + 12, "seed-002": 8, "seed-003": 12, "seed-004": 12}


@pytest.mark.parametrize("profile", PROFILES)
def test_each_seed_profile_passes_check_params_with_kaggle_sources_only(profile):
    params = load_params(REPO / "configs" / f"{profile}.yaml")
    assert params.fetch.sources and all(s.kind == "kaggle" for s in params.fetch.sources)
    assert all(s.dataset in LAYOUTS for s in params.fetch.sources)  # every handle has a fake archive below


def test_the_freeze_sweep_profile_trains_cnn5_and_resnet18_34_with_0_to_4_stages_frozen():
    from lungxray.train.settings import model_settings

    train = load_params(REPO / "configs/seed-002.yaml").train
    sweep = {(s.model, s.freeze) for s in (model_settings(train, m) for m in train.models) if s.model != "cnn5"}
    assert "cnn5" in train.models and sweep == {(a, f) for a in ("resnet18", "resnet34") for f in range(5)}


@pytest.mark.shared
@pytest.mark.parametrize("profile", PROFILES)
def test_each_seed_profile_fetches_the_real_kaggle_layouts_into_its_classes(profile, project, shared_data,
                                                                            monkeypatch, tmp_path):
    fetch = load_params(REPO / "configs" / f"{profile}.yaml").fetch.model_copy(update={"workers": 1})
    xrays = real_xrays(shared_data, 12)
    archives = {s.dataset: zip_bytes(LAYOUTS[s.dataset](xrays)) for s in fetch.sources}
    with FileServer({}, kaggle=archives) as srv:
        use_fake_kaggle(monkeypatch, tmp_path, srv.url)
        run_fetch(fetch, progress=False)
    m = pd.read_csv(schema.MANIFEST, keep_default_na=False)
    assert len(m) == EXPECTED_IMAGES[profile]
    assert set(m.label) == set(fetch.classes)  # every class found, no label outside the profile's classes
    assert not m.path.str.contains("/masks/|__MACOSX|chest_xray/chest_xray", regex=True).any()
    assert set(m.source) == {s.name for s in fetch.sources}


def test_the_seed_004_pneumoniamnist_profile_runs_the_paper_models_offline_on_the_shared_copy():
    from lungxray.models.architectures import describe
    from lungxray.train.settings import model_settings

    params = load_params(REPO / "configs/seed-004-pneumoniamnist.yaml")
    (source,) = params.fetch.sources
    assert source.kind == "medmnist" and source.path == "../shared/data/pneumoniamnist/pneumoniamnist_trainval.npz"
    assert params.train.models == ["cnn8", "cnn13", "resnet34"] and params.split.keep_official_splits
    assert params.evaluate.allow_empty_test and not params.promote.metric.startswith("test_")
    for name in params.train.models:
        assert params.preprocess.image_size >= describe(name)["min_input"]
        assert not model_settings(params.train, name).pretrained  # no ImageNet weights offline
