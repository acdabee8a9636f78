"""DVC stage `train_settings`: one file per model with what its `train@<model>` depends on (its own settings).

Each train@<model> depends on models/settings/<model>.json instead of the whole `train` section, so changing one
model's options, or adding a model, retrains only that model; the library versions in it retrain after an upgrade.
The external folds' architectures (external.models, or chosen among train.models) depend on theirs the same way,
through the plan (lungxray.external.plan).
"""

from lungxray.core import schema
from lungxray.core.config import load_sections
from lungxray.core.io import write_json
from lungxray.core.stage import run_stage
from lungxray.external.plan import ExternalParams, settings_models
from lungxray.train.settings import TrainParams, settings_record


def main() -> None:
    p = load_sections({"train": TrainParams, "external": ExternalParams})
    models = settings_models(p.external, p.train)
    for old in schema.TRAIN_SETTINGS.glob("*.json"):
        if old.stem not in models:
            old.unlink()
    for name in models:
        write_json(schema.train_settings_file(name), settings_record(p.train, name))
    print(f"train_settings: {len(models)} models in {schema.TRAIN_SETTINGS}/")


if __name__ == "__main__":
    run_stage("train_settings", main)
