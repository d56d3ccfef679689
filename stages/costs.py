"""DVC stage 'costs': see pipeline.steps.costs."""

from pipeline.steps import run_stage

if __name__ == "__main__":
    run_stage("costs")
