"""The JSON report: `Comparison.to_dict()`, valid JSON (non-finite floats as strings).

Its shape is `orchestrator/reports/report-v2.schema.json`; `orchestrator.reports.load_json_report`
reads it back so that it can be rendered again in another format.
"""
from __future__ import annotations

import json

from orchestrator.compare.value import Comparison


def render(comparison: Comparison) -> str:
    # allow_nan=False: a non-finite float that slipped past to_dict() is a bug, not a "NaN" token.
    return json.dumps(comparison.to_dict(), indent=2, sort_keys=True, allow_nan=False,
                      ensure_ascii=False)
