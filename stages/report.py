"""DVC stage 'report': see pipeline.steps.report."""

from pipeline.steps import run_stage

if __name__ == "__main__":
    run_stage("report")
