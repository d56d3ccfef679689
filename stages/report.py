"""DVC stage 'report': results/report.md (the paper's table layout) and a one-screen summary."""

import json

from pipeline.config import Config
from pipeline.costs import CostMatrix
from pipeline.evaluation import SUMMARY_FILE
from pipeline.methods import METHODS
from pipeline.report import one_screen_summary, render_report, write_report
from pipeline.stage import run_stage


def main(config: Config) -> None:
    summary = json.loads((config.paths.evaluation / SUMMARY_FILE).read_text())
    cost = CostMatrix.load(config.paths.cost)
    text = render_report(summary, cost, dataset=config.dataset, top_k=config.top_k,
                         extra={"replications": config.replications, "model": config.model},
                         score_notes={name: spec.scores_note for name, spec in METHODS.items() if spec.scores_note})
    write_report(text, config.paths.report)
    print(one_screen_summary(summary, cost, dataset=config.dataset, top_k=config.top_k, paths={
        "report": str(config.paths.report),
        "metrics": str(config.paths.evaluation / "metrics"),
        "tables": str(config.paths.evaluation / "tables"),
        "plots": str(config.paths.evaluation / "plots"),
        "models": str(config.paths.baseline.parent),
    }))


if __name__ == "__main__":
    run_stage("report", main)
