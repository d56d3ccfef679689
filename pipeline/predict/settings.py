"""params.yaml's ``predict`` section: the exported model's abstention settings, parsed and checked
(the one configuration object is :class:`pipeline.config.Config`; this is its ``predict`` part)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.validation import check_keys, invalid


@dataclass(frozen=True)
class PredictConfig:
    """The exported model's abstention (pipeline.predict.conformal): conformal risk control of the
    expected cost per case of the automated decisions, calibrated on part of the test split."""

    max_cost: float = 0.35  # alpha: the promised expected cost per case (an abstention costs 0)
    calibration_fraction: float = 0.5  # of the test split, stratified and seeded; the rest measures it


def parse_predict(section: Mapping[str, Any]) -> PredictConfig:
    """params.yaml's ``predict`` section, every value checked, its dotted key in the message."""
    check_keys(section, set(PredictConfig.__dataclass_fields__), "predict")
    default = PredictConfig()
    max_cost = section.get("max_cost", default.max_cost)
    if isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or not (math.isfinite(max_cost) and max_cost > 0):
        raise invalid("predict.max_cost", max_cost, "expected the largest expected cost per case to promise, a number "
                      "> 0 in the cost matrix's units (abstentions cost 0)")
    fraction = section.get("calibration_fraction", default.calibration_fraction)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise invalid("predict.calibration_fraction", fraction, "expected the share of the test split that calibrates "
                      "the abstention threshold, a number in (0, 1) (0.5: half)")
    return PredictConfig(max_cost=float(max_cost), calibration_fraction=float(fraction))
