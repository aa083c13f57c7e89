"""The data of the dashboard's charts, drawn in the browser by Chart.js (static/dashboard.js) and shown
as tables beside them."""
from __future__ import annotations

from datetime import datetime, timedelta

# Short names of the report's causes (bridge.cohorts.report), for the waterfall's bars.
CAUSE_LABELS = {
    "users_without_channel_record": "No channel record",
    "users_with_multiple_devices": "Extra devices",
    "unsubscribed_records": "Unsubscribed",
    "records_with_unknown_subscription_state": "Unknown state",
}


def waterfall(in_cohort: int, explanations: list[dict], segment_size: int) -> list[dict[str, object]]:
    """The walk from a cohort's users to its segment size: `[{"label", "delta", "from", "to", "kind"}]`,
    first the users in the cohort (`kind` "total", from 0), then each explanation from where the one
    before ended (`kind` "up" or "down"), last the segment size (`kind` "total"). The report's
    explanations always add up, so the last step before the segment ends at its size."""
    steps: list[dict[str, object]] = [
        {"label": "Users in cohort", "delta": in_cohort, "from": 0, "to": in_cohort, "kind": "total"}]
    level = in_cohort
    for explanation in explanations:
        delta = int(explanation["delta"])
        steps.append({"label": CAUSE_LABELS.get(explanation["cause"], explanation["cause"]), "delta": delta,
                      "from": level, "to": level + delta, "kind": "up" if delta > 0 else "down"})
        level += delta
    steps.append({"label": "Segment size", "delta": segment_size, "from": 0, "to": segment_size, "kind": "total"})
    return steps


def minutes(start: datetime, per_minute: list[int]) -> list[dict[str, object]]:
    """`[{"minute": "HH:MM" (UTC), "delivered": n}]`, one per count of `per_minute`, from `start`."""
    return [{"minute": (start + timedelta(minutes=i)).strftime("%H:%M"), "delivered": n}
            for i, n in enumerate(per_minute)]
