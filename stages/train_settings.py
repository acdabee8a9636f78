"""DVC stage `train_settings`: one file per model with what its `train@<model>` depends on (its own settings).

Each train@<model> depends on models/settings/<model>.json instead of the whole `train` section, so changing one
model's options, or adding a model, retrains only that model; the library versions in it retrain after an upgrade.
"""

from lungxray import schema
from lungxray.config import load_section
from lungxray.io import write_json
from lungxray.stage import run_stage
from lungxray.train_settings import TrainParams, settings_record


def main() -> None:
    train = load_section("train", TrainParams)
    for old in schema.TRAIN_SETTINGS.glob("*.json"):
        if old.stem not in train.models:
            old.unlink()
    for name in train.models:
        write_json(schema.train_settings_file(name), settings_record(train, name))
    print(f"train_settings: {len(train.models)} models in {schema.TRAIN_SETTINGS}/")


if __name__ == "__main__":
    run_stage("train_settings", main)
