"""The train section's settings, and what decides how one model trains (what the ``train_settings`` stage writes).

* :class:`TrainParams` is the ``train:`` section; ``model_options`` overrides some of its keys per model
  (:class:`ModelOptions`).
* ``variants`` names models that are an architecture plus options (:class:`Variant`), e.g. a freeze sweep
  ``resnet18_f1: {model: resnet18, freeze: 1}``. A variant's name stands wherever a model name does
  (``train.models``, ``model_options``, ``models/<name>/``, ``metrics/<name>/``, the leaderboard, the registry); its
  architecture (:func:`architecture`) is what is built, and ``model.pt`` records it (``config.settings.model``).
  Options resolve in order: the train section, then the variant's own options, then ``model_options.<variant>``.
* :func:`model_settings` applies a model's own options to the section (:class:`ModelSettings`);
  :func:`resolved_settings` is everything that decides how that model trains: the shared keys with its own options
  applied, without the list of models, the other models' options or where runs are tracked (:data:`RUN_KEYS`). So
  changing another model's options, or adding a model, neither retrains it nor changes its checkpoint's settings
  fingerprint.
* :func:`settings_record` is what ``train@<model>`` depends on besides the data and the code
  (``models/settings/<model>.json``): its resolved settings, where it is tracked, and the library versions.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from lungxray.core.config import Strict
from lungxray.core.tracking import MlflowParams
from lungxray.images.augment import AugmentParams
from lungxray.models import checkpoint

VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # it names folders and DVC stages (train@<name>)


class ModelOptions(Strict):
    """Per-architecture overrides of the train section."""

    pretrained: bool | None = Field(None, description="start from ImageNet weights; None = inherited "
                                                      "(train.pretrained)")
    weights_file: str | None = Field(None, description="local weights (.pth/.bin/.safetensors state dict) instead "
                                                       "of timm's hub; needs pretrained")
    weights_sha256: str | None = Field(None, description="expected sha256 of weights_file; None = not checked")
    freeze: int | Literal["backbone"] = Field(0, description="frozen at training: 0 = nothing, 1..4 = that many "
                                                             "leading ResNet stages (ResNets only), backbone = all "
                                                             "but the head")
    head: Literal["linear", "seed"] = Field("linear", description="classifier: linear (the architecture's own, "
                                                                  "resized), or seed (dropout 0.2 -> 1024 ReLU -> "
                                                                  "classes)")
    lr: float | None = Field(None, gt=0, description="learning rate; None = inherited (train.lr)")
    batch_size: int | None = Field(None, ge=1, description="images per step; None = inherited (train.batch_size)")
    epochs: int | None = Field(None, ge=1, description="maximum epochs; None = inherited (train.epochs)")
    seed: int | None = Field(None, description="seed of this model's initial weights and batch order; default "
                                               "train.seed (several seeds of one model: an ensemble's members)")


class Variant(ModelOptions):
    """A named model: an architecture with its own options (``train.variants.<name>``)."""

    model: str = Field(description="architecture it builds (a row of the models table, e.g. resnet18)")


SEED_MODELS = ["cnn5", "cnn8", "cnn13", "resnet18", "resnet34", "vgg16", "mobilenetv2", "inception_resnet_v2",
               "efficientnetv2_s"]


class TrainParams(Strict):
    models: list[str] = Field(default_factory=lambda: list(SEED_MODELS), min_length=1,
                              description="models to train (train@<name> stages): architectures of the models table "
                                          "or names from variants; default: the nine seed models")
    epochs: int = Field(20, ge=1, description="maximum epochs (early stopping may end sooner)")
    batch_size: int = Field(32, ge=1, description="images per optimiser step (the global batch over all processes)")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="adam, adamw or sgd (with momentum)")
    lr: float = Field(1e-3, gt=0, description="learning rate (the peak, after any warm-up)")
    weight_decay: float = Field(1e-4, ge=0, description="the optimiser's weight decay (L2 for adam/sgd, decoupled for "
                                                        "adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum (unused by adam/adamw)")
    scheduler: Literal["none", "cosine", "step", "plateau"] = Field(
        "cosine", description="learning-rate schedule per epoch: none (constant), cosine (to 0 over the epochs), step "
                              "(x gamma every step_size epochs), plateau (x gamma after 2 epochs without a lower "
                              "val loss)")
    step_size: int = Field(5, ge=1, description="step scheduler: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step / plateau scheduler: factor applied to the learning rate")
    early_stopping_patience: int = Field(5, ge=1, description="epochs without a better val loss before stopping")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear learning-rate warm-up (per epoch, from "
                               "lr/(warmup_epochs+1) up to lr) before the schedule, which then runs over the "
                               "remaining epochs; 0 = none")
    weight_averaging: Literal["none", "ema", "swa"] = Field(
        "none", description="an averaged copy of the weights, scored on val beside the raw ones; the better is kept "
                            "(lungxray.train.averaging): ema (every step), swa (every epoch from swa_start), none")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="ema: weight of the running average at each step")
    swa_start: int = Field(1, ge=1, description="swa: the first epoch whose end-of-epoch weights are averaged")
    imbalance: Literal["weighted_loss", "weighted_sampler", "none"] = Field(
        "weighted_loss", description="class imbalance: class-weighted cross-entropy, a class-weighted sampler of "
                                     "train batches, or none")
    augment: AugmentParams = Field(AugmentParams(), description="training-time augmentation of the train batches")
    pretrained: bool = Field(True, description="start from ImageNet weights (timm's hub, or a model's weights_file); "
                                               "a handcrafted model (cnn5/8/13) then needs a weights_file or its own "
                                               "pretrained: false; false = random initialisation")
    model_options: dict[str, ModelOptions] = Field(default_factory=dict, description="model name -> options that "
                                                   "override this section for that model alone")
    variants: dict[str, Variant] = Field(default_factory=dict, description="named models: an architecture plus "
                                         "options, usable in models and model_options (e.g. a freeze sweep)")
    seed: int = Field(42, description="seed of the initial weights and batch order (a model's own seed wins)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when visible, else the CPU; cuda "
                                                                       "without a GPU is an error")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="mixed precision: auto = fp16 (with loss scaling) on CUDA, bf16 on CPUs with native bf16 "
                            "(AVX512-BF16/AMX), else fp32")
    channels_last: bool = Field(True, description="channels_last memory format (faster convolutions on GPU and "
                                                  "oneDNN CPUs)")
    torch_threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default")
    nproc_per_node: int = Field(1, ge=1, description="training processes on this machine (one per GPU): > 1 runs "
                                                     "the train stage under torchrun with DistributedDataParallel; "
                                                     "batch_size stays the global batch. $LUNGXRAY_NPROC_PER_NODE "
                                                     "wins (lungxray.train.distributed)")
    mlflow: MlflowParams = Field(MlflowParams(), description="where runs and models are tracked (MLflow)")

    @model_validator(mode="after")
    def _known_models(self) -> "TrainParams":
        from lungxray.models.architectures import MODEL_NAMES

        for name, v in self.variants.items():
            if name in MODEL_NAMES:
                raise ValueError(f"variant {name!r} has the name of an architecture: give it its own name "
                                 f"(e.g. {name}_v1)")
            if not VARIANT_NAME.fullmatch(name):
                raise ValueError(f"variant name {name!r} must use only letters, digits, '_', '-' and '.'")
            if v.model not in MODEL_NAMES:
                raise ValueError(f"variant {name!r}: unknown architecture {v.model!r}; valid: {', '.join(MODEL_NAMES)}")
        unknown = [m for m in [*self.models, *self.model_options] if m not in MODEL_NAMES and m not in self.variants]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; valid: {', '.join(MODEL_NAMES)}"
                             + (f" and the variants {', '.join(self.variants)}" if self.variants else
                                " (or a name defined in train.variants)"))
        if len(set(self.models)) != len(self.models):
            raise ValueError("train.models lists a model twice")
        return self


class ModelSettings(Strict):
    """How one model trains: the train section with its ``model_options`` applied (what :func:`model_settings`
    gives)."""

    model: str = Field(description="architecture name (a row of the models table)")
    pretrained: bool = Field(description="start from ImageNet weights")
    weights_file: str | None = Field(description="local ImageNet weights instead of the hub")
    weights_sha256: str | None = Field(description="expected checksum of weights_file")
    freeze: int | Literal["backbone"] = Field(description="frozen stages (0 = none) or the whole backbone")
    head: Literal["linear", "seed"] = Field(description="linear, or the seed head (dropout 0.2 -> 1024 ReLU)")
    lr: float = Field(description="learning rate")
    batch_size: int = Field(description="images per step")
    epochs: int = Field(description="maximum epochs (early stopping may end sooner)")
    seed: int = Field(description="seed of its initial weights and batch order")


def architecture(params: TrainParams, name: str) -> str:
    """The architecture model ``name`` builds: its variant's ``model``, or ``name`` itself."""
    return params.variants[name].model if name in params.variants else name


def model_options(params: TrainParams, name: str) -> ModelOptions:
    """``name``'s options: its variant's, overridden by the keys ``model_options.<name>`` sets."""
    base = params.variants[name].model_dump(exclude={"model"}) if name in params.variants else {}
    own = params.model_options[name].model_dump(exclude_unset=True) if name in params.model_options else {}
    return ModelOptions(**{**base, **own})


def model_settings(params: TrainParams, name: str) -> ModelSettings:
    """Resolved per-model settings (train section + the variant's options + model_options override)."""
    o = model_options(params, name)
    return ModelSettings(model=architecture(params, name),
                         pretrained=params.pretrained if o.pretrained is None else o.pretrained,
                         weights_file=o.weights_file, weights_sha256=o.weights_sha256, freeze=o.freeze, head=o.head,
                         lr=o.lr or params.lr, batch_size=o.batch_size or params.batch_size,
                         epochs=o.epochs or params.epochs, seed=params.seed if o.seed is None else o.seed)


RUN_KEYS = {"models", "model_options", "variants", "mlflow", "nproc_per_node"}  # which models run, where they are
# tracked and on how many processes (the global batch is the same: a run may resume on another number of GPUs)


def resolved_settings(params: TrainParams, name: str) -> dict:
    """Everything that decides how ``name`` is trained: the shared train keys with its own options applied (its
    variant's and ``model_options``; ``model`` is its architecture).

    Other models' options and variants, and the list of models are not part of it, so changing them neither retrains
    ``name`` (``train@<name>`` depends on this, through :func:`settings_record`) nor changes its checkpoint
    fingerprint."""
    own = model_settings(params, name).model_dump(mode="json")
    return {**params.model_dump(mode="json", exclude=RUN_KEYS), **own}


def settings_record(params: TrainParams, name: str) -> dict:
    """What ``train@<name>`` depends on besides the data and the code (``models/settings/<name>.json``): its resolved
    settings, where it is tracked, and the library versions (a torch or timm upgrade retrains)."""
    return {"settings": resolved_settings(params, name), "mlflow": params.mlflow.model_dump(mode="json"),
            "libraries": checkpoint.library_versions()}
