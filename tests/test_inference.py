from __future__ import annotations

import numpy as np
import torch

from lungxray.models.inference import measure_throughput, predict_proba


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
