"""DVC stage 'finetune': see pipeline.steps.finetune."""

from pipeline.steps import run_stage

if __name__ == "__main__":
    run_stage("finetune")
