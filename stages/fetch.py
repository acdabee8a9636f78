"""DVC stage `fetch`: materialise every source, map labels, probe images -> data/interim/manifest.csv."""

from lungxray.config import load_params
from lungxray.fetch import run_fetch, summary_text
from lungxray.stage import run_stage


def main() -> None:
    params = load_params()
    print(summary_text(run_fetch(params.fetch)))


if __name__ == "__main__":
    run_stage("fetch", main)
