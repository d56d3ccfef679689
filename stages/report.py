"""DVC stage 'report': results/report.md (the paper's table layout) and a one-screen summary."""

import json

from pipeline.config import Config
from pipeline.method.costfiles import load_costs
from pipeline.method.registry import METHODS
from pipeline.reporting.evaluation import SUMMARY_FILE
from pipeline.reporting.report import (
    one_screen_summary,
    recommendation_line,
    render_report,
    write_report,
)
from pipeline.stage import run_stage

CHOSEN_FILE = "chosen.json"  # written by the search stage
ABSTENTION_FILE = "abstention.json"  # written by the export stage


def main(config: Config) -> str:
    results = config.paths.evaluation
    summary = json.loads((results / SUMMARY_FILE).read_text())
    methods, recommendation = summary["methods"], summary["recommendation"]
    cost = load_costs(config.paths.cost)
    search = json.loads((config.paths.search / CHOSEN_FILE).read_text())
    text = render_report(methods, cost, dataset=config.dataset, top_k=config.top_k,
                         extra={"replications": config.replications, "model": config.model},
                         score_notes={name: spec.scores_note for name, spec in METHODS.items() if spec.scores_note},
                         recommendation=recommendation, search=search,
                         identical=summary.get("identical_predictions"),
                         abstention=json.loads((results / ABSTENTION_FILE).read_text()))
    write_report(text, config.paths.report)
    print(one_screen_summary(methods, cost, dataset=config.dataset, top_k=config.top_k, paths={
        "report": str(config.paths.report),
        "figures": str(results / "figures"),
        "all numbers": str(results / SUMMARY_FILE),
    }), end="")
    if "paired_difference" in recommendation:
        print(recommendation_line(recommendation))
    return f"-> {config.paths.report}"


if __name__ == "__main__":
    run_stage("report", main)
