"""DVC stage 'fetch': materialise the data set in data/raw/<dataset> (with FETCHED.json)."""

from pipeline.config import Config
from pipeline.datasets.prepare import fetch_dataset
from pipeline.datasets.sources import check_source
from pipeline.stage import run_stage


def main(config: Config) -> str:
    check_source(config.dataset, config.data.source)  # what the readers would take wrongly
    summary = fetch_dataset(
        config.dataset, config.paths.raw, source=config.data.source, download=config.data.download,
        seed=config.seed, label_column=config.data.label_column, verify_checksums=config.data.verify_checksums,
    )
    return f"{config.dataset} ready in {config.paths.raw} ({summary['num_samples']} samples)"


if __name__ == "__main__":
    run_stage("fetch", main)
