"""DVC stage `preprocess`: decode each split image once into uint8 arrays (data/processed/)."""

import pandas as pd

from lungxray.core import schema
from lungxray.core.config import FetchParams, load_sections
from lungxray.core.stage import run_stage
from lungxray.data.preprocess import PreprocessParams, run_preprocess


def main() -> None:
    params = load_sections({"fetch": FetchParams, "preprocess": PreprocessParams})
    split_df = pd.read_csv(schema.SPLIT, keep_default_na=False)
    official_test = pd.read_csv(schema.OFFICIAL_TEST, keep_default_na=False)  # empty unless in benchmark mode
    split_df = pd.concat([split_df, official_test], ignore_index=True)
    stats = run_preprocess(split_df, params.fetch.classes, params.preprocess, schema.PROCESSED,
                           max_pixels=params.fetch.max_pixels)
    sizes = ", ".join(f"{s} {v['images']}" for s, v in stats["splits"].items())
    print(f"preprocess: {sizes} at {stats['image_size']}px; mean {stats['mean']:.4f} std {stats['std']:.4f}")


if __name__ == "__main__":
    run_stage("preprocess", main)
