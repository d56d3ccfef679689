"""DVC stage 'evaluate': see pipeline.steps.evaluate."""

from pipeline.steps import run_stage

if __name__ == "__main__":
    run_stage("evaluate")
