"""DVC stage 'fetch': see pipeline.steps.fetch."""

from pipeline.steps import run_stage

if __name__ == "__main__":
    run_stage("fetch")
