"""DVC stage 'split': see pipeline.steps.split."""

from pipeline.steps import run_stage

if __name__ == "__main__":
    run_stage("split")
