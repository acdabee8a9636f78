from __future__ import annotations

import re

import numpy as np
import torch

from lungxray.models.inference import measure_throughput, predict_logits, predict_proba, softmax_t

from conftest import REPO
from helpers.trained import as_trained


class Tiny(torch.nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.fc = torch.nn.Linear(3, c)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def test_predict_proba_normalises_like_training():
    torch.manual_seed(0)
    model = Tiny()
    imgs = np.random.default_rng(0).integers(0, 256, size=(7, 8, 8), dtype=np.uint8)
    mean, std = 0.4, 0.2
    probs = predict_proba(model, imgs, mean, std, batch_size=3)
    assert probs.shape == (7, 4) and np.allclose(probs.sum(1), 1)
    x = (torch.from_numpy(imgs).float() / 255 - mean) / std
    ref = torch.softmax(model(x.unsqueeze(1).expand(-1, 3, -1, -1)), 1).detach().numpy()
    assert np.allclose(probs, ref, atol=1e-6)
    assert predict_proba(model, imgs[:0], mean, std).shape == (0, 4)


def test_predict_proba_normalises_each_channel_with_the_models_own_statistics():
    """A pretrained model is fed its weights' per-channel mean/std (e.g. ImageNet's), exactly as in training."""
    from lungxray.models.inference import to_model_input

    torch.manual_seed(0)
    model = Tiny()
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    probs = predict_proba(model, imgs, mean, std, batch_size=2)
    x = to_model_input(torch.from_numpy(imgs).unsqueeze(1), torch.device("cpu"), mean, std, channels_last=False)
    ref = torch.softmax(model(x), 1).detach().numpy()
    assert np.allclose(probs, ref, atol=1e-6)
    assert not np.allclose(probs, predict_proba(model, imgs, 0.45, 0.22), atol=1e-3)  # the channels do differ


def test_measure_throughput_reports_what_it_measured():
    r = measure_throughput(Tiny(), image_size=16, batch_size=4, device="cpu", n_batches=3)
    assert r["images_per_s"] > 0 and r["latency_ms_median"] >= 0


def test_measure_throughput_stops_at_its_time_budget_and_says_how_many_calls_it_timed():
    """At 224 px on a CPU, 20 timed batches of 64 cost more than the rest of the evaluation (issue 19's rehearsal):
    with a budget, each timing stops once spent, after at least one call, and the result reports what was timed."""
    calls = []

    class Counting(Tiny):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    r = measure_throughput(Counting(), image_size=16, batch_size=4, device="cpu", n_batches=50, warmup=0,
                           single_runs=50, max_seconds=0.0)
    assert r["n_batches"] == 1 and r["single_runs"] == 1 and calls == [4, 1]
    r = measure_throughput(Tiny(), image_size=16, batch_size=4, device="cpu", n_batches=3, warmup=0, single_runs=2)
    assert r["n_batches"] == 3 and r["single_runs"] == 2  # no budget: the counts asked for


# ----------------------------------------------------------------------------------------------------------------------
# the trained model: one object, one loader


def test_a_trained_models_probabilities_are_the_softmax_of_its_logits_over_its_temperature():
    torch.manual_seed(0)
    imgs = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    model = as_trained(Tiny(), mean=0.4, std=0.2, temperature=1.7)
    logits = model.logits(imgs, batch_size=4)
    assert np.array_equal(logits, predict_logits(model.network, imgs, [0.4] * 3, [0.2] * 3))
    z = logits / 1.7
    expected = np.exp(z - z.max(1, keepdims=True))
    assert np.allclose(model.proba(imgs, batch_size=4), expected / expected.sum(1, keepdims=True), atol=1e-12)
    assert np.array_equal(model.proba(imgs, temperature=1.0), softmax_t(logits))  # uncalibrated on request
    assert model.proba(imgs[:0]).shape == (0, 4)


def test_a_missing_or_unreadable_model_file_says_how_to_rebuild_it(tmp_path):
    import pytest

    from lungxray.core.errors import LungxrayError
    from lungxray.models.trained import load_trained_model

    with pytest.raises(LungxrayError, match="no trained model at .* run `dvc repro`"):
        load_trained_model(tmp_path / "models/cnn5/model.pt")
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(LungxrayError, match="unreadable .* retrain it"):
        load_trained_model(tmp_path / "model.pt")


# what may open a torch file, and why: only models/trained.py opens a model.pt for use
TORCH_LOADS = {"models/trained.py": "the trained model's loader",
               "models/checkpoint.py": "training checkpoints (resume, finished runs)",
               "train/fit.py": "training's own files (best.pt; model.pt's fingerprints for reuse)",
               "train/state.py": "training's own checkpoint (resume)"}
CHECKPOINT_NAMES = {"ck", "checkpoint"}  # what a dict read from a torch file is called


def checkpoint_reads(package=REPO / "src" / "lungxray") -> dict[str, list[str]]:
    """``{module: [what]}``: calls of ``torch.load`` and key reads (``ck["mean"]``, ``ck.get("temperature")``) of a
    dict named like a checkpoint, per module of ``package``."""
    import ast

    found: dict[str, list[str]] = {}
    for f in sorted(package.rglob("*.py")):
        rel = f.relative_to(package).as_posix()
        for n in ast.walk(ast.parse(f.read_text())):
            what = None
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "load" \
                    and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch":
                what = "torch.load"
            elif isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in CHECKPOINT_NAMES:
                what = ast.unparse(n)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" \
                    and isinstance(n.func.value, ast.Name) and n.func.value.id in CHECKPOINT_NAMES:
                what = ast.unparse(n)
            if what:
                found.setdefault(rel, []).append(f"{n.lineno}: {what}")
    return found


def test_the_checkpoint_scan_finds_an_unpacked_model_file(tmp_path):
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "x.py").write_text("import torch\nck = torch.load('model.pt')\nt = ck.get('temperature')\n"
                                                 "m = ck['mean']\n")
    assert checkpoint_reads(tmp_path) == {"evaluate/x.py": ["2: torch.load", "3: ck.get('temperature')",
                                                            "4: ck['mean']"]}


def test_only_the_loader_unpacks_a_model_file_every_other_module_takes_a_trained_model():
    """Evaluate, the ensemble, the external folds, serving and Grad-CAM take a TrainedModel (issue 21): none of them
    opens a model.pt or reads its keys (mean, std, temperature, ...); only training reads its own checkpoints."""
    outside = {m: reads for m, reads in checkpoint_reads().items()
               if m not in TORCH_LOADS and not m.startswith("train/")}
    assert outside == {}
    loads = {m for m, reads in checkpoint_reads().items() if any(r.endswith("torch.load") for r in reads)}
    assert loads <= set(TORCH_LOADS)
    old = re.compile(r"\bload_trained\(|\barchitecture\(ck\)")  # the loader and its helper before TrainedModel
    legacy = [str(f.relative_to(REPO)) for d in ("src", "stages", "benchmarks") for f in (REPO / d).rglob("*.py")
              if old.search(f.read_text())]
    assert legacy == []
