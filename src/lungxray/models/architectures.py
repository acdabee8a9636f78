"""Model registry: one door (:func:`create_model`) to every architecture of the pipeline.

Registered names (:data:`MODEL_NAMES`) are the architectures of the published work this project grew out of:

=====================  ===========  ==========================================================================
name                   source       what it is
=====================  ===========  ==========================================================================
``cnn5``               handcrafted  5 conv blocks with batch norm (the three layouts:
:mod:`lungxray.models.handcrafted`) ``cnn8``               handcrafted  *plain* (no batch norm) 8-layer CNN: 6 conv + 2
dense layers ``cnn13``              handcrafted  VGG-like 13-layer CNN: 10 conv (with batch norm) + 3 dense layers
``resnet18/34``        timm         ``resnet18.a1_in1k`` / ``resnet34.a1_in1k`` (timm's default ImageNet weights)
``vgg16``              timm         ``vgg16.tv_in1k`` (torchvision's ImageNet weights ported to timm)
``mobilenetv2``        timm         ``mobilenetv2_100.ra_in1k``
``inception_resnet_v2`` timm        ``inception_resnet_v2.tf_in1k`` (needs inputs >= 75 px)
``efficientnetv2_s``   timm         ``tf_efficientnetv2_s.in1k`` (the TensorFlow/Keras EfficientNetV2-S ImageNet-1k
                                    weights ported to PyTorch: what Keras' ``EfficientNetV2S(weights="imagenet")``
                                    loads; timm's default tag would be ``in21k_ft_in1k``)
=====================  ===========  ==========================================================================

The handcrafted CNNs pool globally before their dense layers, so any input of at least ``describe(name)
['min_input']`` pixels works. timm has ImageNet weights for every pretrained family, so no torchvision model is
needed (``describe(name)['source']`` says where a model comes from). The weight tags are pinned (``arch.tag``) so a
timm upgrade cannot silently change which weights ``pretrained=True`` loads; ``describe(name)`` gives their hub id,
URL and the ``mean``/``std`` normalisation they expect (ImageNet's for most, 0.5/0.5 for the TensorFlow ports
inception_resnet_v2 and efficientnetv2_s).

**Outputs are logits.** No model ends in a softmax: the loss (cross-entropy) and the inference code apply it.

Heads (``head=``):

* ``"linear"``: the architecture's own classifier, resized to ``num_classes``.
* ``"seed"``: the head used for EfficientNetV2-S in the seed work, for any model: Dropout(0.2) ->
  Linear(features, 1024) -> ReLU -> Linear(1024, num_classes). It replaces the classifier module in place (for
  timm models: ``reset_classifier(0)`` then the module named by ``pretrained_cfg['classifier']``), so the backbone
  keeps timm's parameter names and pretrained files load as usual. ``features`` is timm's ``head_hidden_size``
  (the width after any pre-logits block, 4096 for vgg16's fc6/fc7) or ``num_features``.

Freezing (``freeze=``):

* ``0``: nothing frozen.
* ``1..4`` (ResNets only): that many leading ResNet stages frozen; the stem counts with stage 1 (``1`` = conv1/bn1 +
  layer1, ``2`` = + layer2, ..., ``4`` = everything but the classifier).
* ``"backbone"`` (every model): everything but the classifier head (the whole seed head stays trainable).

Frozen parameters get ``requires_grad=False``. Frozen BatchNorm layers also stay in eval mode, so their running
statistics do not move when the model is put in train mode: each one carries a forward pre-hook that switches it
back to eval before it runs (so ``model.train()`` followed by a forward is safe without any extra call), and
:func:`apply_freeze` (call it after ``model.train()``) sets them to eval at once, so ``module.training`` reads right
before the first forward too.

Pretrained weights (``pretrained=True``):

* without ``weights_file``: timm's hub (Hugging Face hub id / URL of ``describe(name)``); needs internet. Any failure
  is raised as a :class:`LungxrayError` naming the model, the hub id and the URL and saying to set a local weights
  file. There is never a silent fallback to random weights.
* with ``weights_file`` (``.pth``/``.bin``/``.safetensors`` state dict, optionally checked against
  ``weights_sha256``): timm models load it with ``timm.create_model(name, pretrained=True,
  pretrained_cfg_overlay=dict(file=PATH))`` (timm's documented way to load local weights; it adapts the stem to
  ``in_chans`` and drops the classifier when ``num_classes`` differs from the file's 1000 ImageNet classes). The file
  must use timm's parameter names (timm's hub files, or a state dict of a timm model of that name); a file whose keys
  do not cover the backbone is refused. Handcrafted models load the state dict strictly with ``load_state_dict``.
  The checks of the file: :mod:`lungxray.models.weights_file`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lungxray.core.errors import LungxrayError
from lungxray.models.handcrafted import cnn5, cnn8, cnn13
from lungxray.models.weights_file import TimmLoadReport, check_covers_backbone, check_weights_file, load_state_dict_file

__all__ = [
    "MODEL_NAMES",
    "SEED_HEAD_HIDDEN",
    "SEED_HEAD_DROPOUT",
    "apply_freeze",
    "cam_target_layer",
    "count_parameters",
    "create_model",
    "describe",
    "frozen_batchnorms",
]

SEED_HEAD_HIDDEN = 1024
SEED_HEAD_DROPOUT = 0.2
RESNET_STAGES: tuple[tuple[str, ...], ...] = (("conv1", "bn1", "layer1"), ("layer2",), ("layer3",), ("layer4",))

_HEAD_ATTR = "lungxray_head"  # attribute naming the classifier sub-module of a created model
_FROZEN_FLAG = "_lungxray_frozen_bn"


# --------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    family: str
    source: str  # handcrafted | timm | torchvision
    input_size: int  # default input size (pixels, square)
    min_input: int  # smallest input that works
    builder: Callable[[int, int, float], nn.Module] | None = None  # handcrafted
    timm_name: str | None = None
    cam_layer: str | None = None  # Grad-CAM target (cam_target_layer): the sub-module giving the last feature map


_REGISTRY: dict[str, _Spec] = {
    "cnn5": _Spec("handcrafted-cnn", "handcrafted", 224, 32, builder=cnn5, cam_layer="features"),
    "cnn8": _Spec("handcrafted-cnn", "handcrafted", 224, 8, builder=cnn8, cam_layer="features"),
    "cnn13": _Spec("handcrafted-cnn", "handcrafted", 224, 32, builder=cnn13, cam_layer="features"),
    "resnet18": _Spec("resnet", "timm", 224, 32, timm_name="resnet18.a1_in1k", cam_layer="layer4"),
    "resnet34": _Spec("resnet", "timm", 224, 32, timm_name="resnet34.a1_in1k", cam_layer="layer4"),
    "vgg16": _Spec("vgg", "timm", 224, 32, timm_name="vgg16.tv_in1k", cam_layer="features"),
    "mobilenetv2": _Spec("mobilenet", "timm", 224, 32, timm_name="mobilenetv2_100.ra_in1k", cam_layer="bn2"),
    "inception_resnet_v2": _Spec("inception-resnet", "timm", 299, 75, timm_name="inception_resnet_v2.tf_in1k",
                                 cam_layer="conv2d_7b"),
    "efficientnetv2_s": _Spec("efficientnet", "timm", 224, 32, timm_name="tf_efficientnetv2_s.in1k",
                              cam_layer="bn2"),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _spec(name: str) -> _Spec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LungxrayError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None


def _pretrained_cfg(timm_name: str):
    import timm.models

    return timm.models.get_pretrained_cfg(timm_name)


def _hub_location(timm_name: str) -> tuple[str | None, str | None, str]:
    """(hf_hub_id, url, tagged name) of timm's pretrained weights for ``timm_name`` ('arch.tag')."""
    cfg = _pretrained_cfg(timm_name)
    if cfg is None:
        return None, None, timm_name
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else timm_name
    return cfg.hf_hub_id or None, cfg.url or None, tagged


def describe(name: str) -> dict:
    """What ``name`` is: family, source ('handcrafted'|'timm'|'torchvision'), default input size (``input_size``,
    pixels, square), smallest usable input (``min_input``), and for timm models the pinned timm weights
    (``timm_name`` 'arch.tag', ``hf_hub_id``, ``url``) with the normalisation they were trained with (``mean``,
    ``std``, per RGB channel) and their training resolution (``pretrained_input_size``). Handcrafted models have
    ``mean``/``std`` None (the pipeline's own choice)."""
    spec = _spec(name)
    out: dict = {"name": name, "family": spec.family, "source": spec.source, "input_size": spec.input_size,
                 "min_input": spec.min_input, "pretrained_available": spec.source != "handcrafted",
                 "mean": None, "std": None}
    if spec.timm_name:
        hub_id, url, _ = _hub_location(spec.timm_name)
        cfg = _pretrained_cfg(spec.timm_name)
        out.update(timm_name=spec.timm_name, hf_hub_id=hub_id, url=url, mean=tuple(cfg.mean), std=tuple(cfg.std),
                   pretrained_input_size=int(cfg.input_size[-1]))
    return out


def cam_target_layer(model: nn.Module, name: str) -> nn.Module:
    """The layer of a model built by :func:`create_model` (``name``) that Grad-CAM explains: the last spatial feature
    map before global pooling (handcrafted and vgg16 ``features``, ResNets ``layer4``, mobilenetv2 and
    efficientnetv2_s ``bn2``, inception_resnet_v2 ``conv2d_7b``); the ``cam_layer`` column of the table."""
    spec = _spec(name)
    try:
        if not spec.cam_layer:
            raise AttributeError(spec.cam_layer)
        return model.get_submodule(spec.cam_layer)
    except AttributeError:
        raise LungxrayError(f"model {name!r} has no layer {spec.cam_layer!r} (its Grad-CAM target): was it built "
                            f"by create_model({name!r}, ...)?") from None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------------------------------------------
# heads and freezing
# --------------------------------------------------------------------------------------------------------------


def _seed_head(num_features: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(SEED_HEAD_DROPOUT), nn.Linear(num_features, SEED_HEAD_HIDDEN),
                         nn.ReLU(inplace=True), nn.Linear(SEED_HEAD_HIDDEN, num_classes))


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, module)


def _keep_eval(module: nn.Module, args) -> None:  # forward pre-hook of frozen BatchNorm layers
    if module.training:
        module.training = False


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers frozen by :func:`create_model`'s ``freeze``."""
    return [m for m in model.modules() if getattr(m, _FROZEN_FLAG, False)]


def apply_freeze(model: nn.Module) -> nn.Module:
    """Put the frozen BatchNorm layers back in eval mode; call after ``model.train()``. (Their forward pre-hooks do
    it anyway before they run; this makes ``module.training`` right at once.) Returns ``model``."""
    for m in frozen_batchnorms(model):
        m.eval()
    return model


def _freeze_prefixes(model: nn.Module, name: str, freeze: int | str) -> list[str] | None:
    """Parameter-name prefixes to freeze; None = everything but the head."""
    if freeze == "backbone":
        return None
    if isinstance(freeze, bool) or not isinstance(freeze, int):
        raise LungxrayError(f"freeze must be an int or 'backbone', got {freeze!r}")
    if freeze == 0:
        return []
    if _spec(name).family != "resnet":
        raise LungxrayError(f"freeze={freeze} (a number of stages) is only defined for the ResNets; use freeze=0 or "
                            f"freeze='backbone' for {name!r}")
    if not 0 <= freeze <= len(RESNET_STAGES):
        raise LungxrayError(f"freeze for {name!r} must be 0..{len(RESNET_STAGES)} or 'backbone', got {freeze}")
    return [p for stage in RESNET_STAGES[:freeze] for p in stage]


def _freeze(model: nn.Module, name: str, freeze: int | str) -> None:
    prefixes = _freeze_prefixes(model, name, freeze)
    if prefixes == []:
        return
    head_path = getattr(model, _HEAD_ATTR)

    def frozen(qualname: str) -> bool:
        if prefixes is None:
            return not (qualname == head_path or qualname.startswith(head_path + "."))
        return any(qualname == p or qualname.startswith(p + ".") for p in prefixes)

    for pname, p in model.named_parameters():
        if frozen(pname):
            p.requires_grad_(False)
    for mname, m in model.named_modules():
        if isinstance(m, _BatchNorm) and mname and frozen(mname):
            setattr(m, _FROZEN_FLAG, True)
            m.register_forward_pre_hook(_keep_eval)
            m.eval()


# --------------------------------------------------------------------------------------------------------------
# timm models, and the door
# --------------------------------------------------------------------------------------------------------------


def _first_line(e: BaseException, limit: int = 500) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else "")[:limit]


def _create_timm(name: str, spec: _Spec, num_classes: int, pretrained: bool, in_chans: int, drop_rate: float,
                 weights_path: Path | None) -> nn.Module:
    import timm

    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    assert spec.timm_name
    if not pretrained:
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if weights_path is not None:
        report = TimmLoadReport()
        try:
            with report.attached():
                model = timm.create_model(spec.timm_name, pretrained=True,
                                          pretrained_cfg_overlay=dict(file=str(weights_path)), **kwargs)
        except Exception as e:  # noqa: BLE001
            raise LungxrayError(f"cannot load weights file {weights_path} into model {name!r} "
                                f"(timm {spec.timm_name}): {type(e).__name__}: {_first_line(e)}") from e
        classifier = model.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        head_params = {f"{c}.{s}" for c in classifier for s in ("weight", "bias")}
        check_covers_backbone(name, weights_path, report, head_params)
        return model
    hub_id, url, tagged = _hub_location(spec.timm_name)
    try:
        return timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - never fall back to random weights
        where = "; ".join(x for x in (f"Hugging Face hub id {hub_id}" if hub_id else None,
                                      f"url {url}" if url else None) if x) or "no download location known"
        raise LungxrayError(
            f"cannot download pretrained weights for model {name!r} (timm {tagged}; {where}): "
            f"{type(e).__name__}: {_first_line(e).rstrip('.')}. Without internet, download the file "
            f"elsewhere and set weights_file (and weights_sha256) to the local .safetensors/.pth state dict; or "
            f"set pretrained: false") from e


def create_model(name: str, num_classes: int, pretrained: bool = False, *, in_chans: int = 3,
                 freeze: int | str = 0, head: str = "linear", weights_file: str | Path | None = None,
                 weights_sha256: str | None = None, drop_rate: float = 0.0) -> nn.Module:
    """Build a registered model. Returns logits of shape (batch, num_classes).

    name: one of :data:`MODEL_NAMES`; num_classes >= 1; pretrained: load ImageNet weights (timm hub, or
    ``weights_file``); in_chans: 3 (greyscale replicated at batch time) or 1 (timm adapts the stem);
    freeze: 0, 1..4 (ResNet stages) or 'backbone'; head: 'linear' or 'seed'; drop_rate: dropout before the classifier
    (timm's drop_rate; for cnn8/cnn13 it replaces their dense dropout of 0.5 when > 0).
    Every problem a user can fix raises :class:`LungxrayError`.
    """
    spec = _spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise LungxrayError(f"num_classes must be a positive int, got {num_classes!r}")
    if in_chans not in (1, 3):
        raise LungxrayError(f"in_chans must be 1 or 3, got {in_chans!r}")
    if head not in ("linear", "seed"):
        raise LungxrayError(f"head must be 'linear' or 'seed', got {head!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise LungxrayError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    if weights_file is not None and not pretrained:
        raise LungxrayError(f"weights_file is set for model {name!r} but pretrained is false; set pretrained: true "
                            f"to load it")
    weights_path = check_weights_file(name, weights_file, weights_sha256) if weights_file is not None else None

    if spec.source == "handcrafted":
        assert spec.builder is not None
        model = spec.builder(num_classes, in_chans, drop_rate)
        setattr(model, _HEAD_ATTR, "classifier")
        if pretrained:
            if weights_path is None:
                raise LungxrayError(f"model {name!r} is handcrafted and has no hub weights; set weights_file to a "
                                    f"state dict of it, or pretrained: false")
            state = load_state_dict_file(weights_path)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise LungxrayError(f"weights file {weights_path} does not match model {name!r} with "
                                    f"num_classes={num_classes}, in_chans={in_chans}: {e}") from e
    else:
        model = _create_timm(name, spec, num_classes, pretrained, in_chans, drop_rate, weights_path)
        classifier = model.pretrained_cfg.get("classifier")
        if not isinstance(classifier, str):  # e.g. a tuple for distilled models: not in this registry
            raise LungxrayError(f"model {name!r}: cannot locate its classifier ({classifier!r})")
        setattr(model, _HEAD_ATTR, classifier)

    if head == "seed":
        head_path = getattr(model, _HEAD_ATTR)
        model.reset_classifier(0)
        # width of what reaches the classifier: timm's head_hidden_size where a pre-logits block sits in front of
        # the classifier (vgg16: 4096), else num_features
        width = getattr(model, "head_hidden_size", None) or model.num_features
        _set_submodule(model, head_path, _seed_head(width, num_classes))
        model.num_classes = num_classes

    _freeze(model, name, freeze)
    return model
