"""Grad-CAM: a heat map on every architecture, a model left as found, overlay PNGs and the evaluate grid's picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungxray.core.errors import LungxrayError
from lungxray.evaluate.gradcam import gradcam_grid, heatmaps, pick_examples, write_overlays
from lungxray.models.architectures import MODEL_NAMES, apply_freeze, cam_target_layer, create_model

from helpers.trained import as_trained

# the smallest input whose target feature map is at least 2x2 (a 1x1 map cannot show where anything is)
CAM_INPUT = {"inception_resnet_v2": 107}
HEAVY = {"vgg16", "inception_resnet_v2", "efficientnetv2_s"}  # a few seconds each on a CPU


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Greyscale images with a bright blob somewhere on a noisy background."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(40, 90, (n, size, size), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(0, size // 2, 2)
        imgs[i, r:r + size // 3, c:c + size // 3] = 230
    return imgs


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODEL_NAMES])
def test_every_architecture_gives_heat_maps_in_0_to_1_of_the_input_size_from_its_last_feature_map(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained=False).eval()
    size = CAM_INPUT.get(name, 64)
    # every class explained twice: with random weights the map of one class may be 0 everywhere (nothing raises it)
    heat = heatmaps(as_trained(model, name), _images(6, size), class_indices=[i % 3 for i in range(6)])
    assert heat.shape == (6, size, size) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert max(float(h.std()) for h in heat) > 0.01  # somewhere hotter than elsewhere

    seen = []
    hook = cam_target_layer(model, name).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, size, size))
    hook.remove()
    assert features.dim() == 4 and torch.equal(seen[-1], features)  # the layer global pooling reads


def test_a_wrong_target_layer_is_refused_with_a_clear_error():
    with pytest.raises(LungxrayError, match="no layer 'layer4'"):
        cam_target_layer(create_model("cnn5", num_classes=2), "resnet18")


def test_a_frozen_backbone_still_gets_heat_maps_and_the_model_is_left_as_found():
    torch.manual_seed(0)
    model = apply_freeze(create_model("cnn5", num_classes=3, freeze="backbone").train())
    sentinel = torch.full_like(model.classifier.weight, 7.0)
    model.classifier.weight.grad = sentinel
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    assert not all(flags.values()) and any(flags.values()) and len(set(modes.values())) == 2

    heat = heatmaps(as_trained(model, "cnn5"), _images(3, 64), class_indices=[0, 1, 2])

    assert heat.max() == pytest.approx(1.0)  # gradients reached the frozen target layer
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.classifier.weight.grad is sentinel
    assert all(p.grad is None for n, p in model.named_parameters() if n != "classifier.weight")


def test_the_class_asked_for_is_the_one_explained_and_bad_inputs_are_refused():
    torch.manual_seed(0)
    model = create_model("cnn8", num_classes=3).eval()
    imgs, trained = _images(2, 48), as_trained(model, "cnn8")
    first, second = heatmaps(trained, imgs, [0, 0]), heatmaps(trained, imgs, [1, 2])
    predicted = heatmaps(trained, imgs)
    assert not np.allclose(first, second)
    with torch.no_grad():
        x = torch.from_numpy(((imgs / 255.0 - 0.5) / 0.25).astype(np.float32))[:, None].expand(-1, 3, -1, -1)
        pred = model(x).argmax(1).tolist()
    assert np.allclose(predicted, heatmaps(trained, imgs, pred))
    with pytest.raises(LungxrayError, match="class indices must be in 0..2"):
        heatmaps(trained, imgs, [0, 3])
    with pytest.raises(LungxrayError, match="one per image"):
        heatmaps(trained, imgs, [0])
    with pytest.raises(LungxrayError, match="square uint8 greyscale"):
        heatmaps(trained, imgs.astype(np.float32))


def test_write_overlays_writes_one_readable_png_per_image_with_subfolders(tmp_path):
    from PIL import Image

    imgs = _images(2, 40)
    heats = np.stack([np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)] * 2)
    paths = write_overlays(tmp_path / "cam", ["a", "sub/b"], imgs, heats, ["normal 0.91", "covid19 0.55"])
    assert paths == [tmp_path / "cam/a.png", tmp_path / "cam/sub/b.png"]
    for p in paths:
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and im.width > 200 and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 50
    with pytest.raises(LungxrayError, match="relative path inside"):
        write_overlays(tmp_path / "cam", ["../escape"], imgs[:1], heats[:1], ["x"])
    with pytest.raises(LungxrayError, match="one name, image, heat map and title each"):
        write_overlays(tmp_path / "cam", ["a", "b"], imgs, heats[:1], ["x", "y"])


def test_the_grid_picks_the_most_confident_correct_and_wrong_images_of_each_class():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.9, 0.1, 0.0],
                      [0.3, 0.7, 0.0], [0.1, 0.9, 0.0], [0.0, 0.2, 0.8], [0.5, 0.5, 0.0]])
    assert pick_examples(y, probs, per_class=2) == [([0, 3], [2]), ([5, 4], [6]), ([], [7])]
    assert pick_examples(y, probs, per_class=1) == [([0], [2]), ([5], [6]), ([], [7])]


def test_the_grid_has_a_row_per_class_and_a_column_per_pick():
    torch.manual_seed(0)
    model = create_model("cnn8", num_classes=3).eval()
    y = np.array([0, 1, 2, 0])
    probs = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    trained = as_trained(model, "cnn8", classes=["normal", "pneumonia", "covid19"])
    fig = gradcam_grid(trained, _images(4, 32), y, probs, per_class=2)
    axes = fig.get_axes()
    assert len(axes) == 12
    titles = [a.get_title() for a in axes]
    assert titles[:4] == ["correct: normal 0.80", "correct", "wrong: pneumonia 0.50", "wrong"]
    assert sum(bool(a.get_images()) for a in axes) == 4  # one heat map per picked image, "none" elsewhere
