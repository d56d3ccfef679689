"""DVC stage 'baseline': see pipeline.steps.baseline."""

from pipeline.steps import run_stage

if __name__ == "__main__":
    run_stage("baseline")
