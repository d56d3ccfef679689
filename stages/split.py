"""DVC stage 'split': the manifest, one row per sample saying which split it belongs to."""

from pipeline.config import Config
from pipeline.datasets.prepare import make_manifest, write_manifest
from pipeline.stage import run_stage


def main(config: Config) -> str:
    manifest = make_manifest(config.dataset, config.paths.raw, seed=config.seed,
                             val_fraction=config.data.val_fraction, label_column=config.data.label_column)
    write_manifest(manifest, config.paths.manifest)
    counts = manifest["split"].value_counts().to_dict()
    return f"{config.paths.manifest}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "val", "test"))


if __name__ == "__main__":
    run_stage("split", main)
