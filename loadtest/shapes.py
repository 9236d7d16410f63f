"""A morning peak for Locust: scanners come online, a plateau, the 7:30 burst, then the decline.

Opt in by adding this file to ``-f`` (``-f loadtest/locustfile.py,loadtest/shapes.py``); without it the
load is Locust's usual ``-u/-r/--run-time``. The shape is a list of phases in fractions of the total
duration and of the peak user count, so one ``--peak-factor`` scales the load and one ``--peak-duration``
scales time; the duration is capped so a mistyped number cannot leave a load test running all day.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.scenario import BASE_PEAK_USERS, MAX_DURATION_S, users_at


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--peak-factor",
        env_var="LOADTEST_PEAK_FACTOR",
        type=float,
        default=1.0,
        help=f"scales the peak: {BASE_PEAK_USERS} users x factor",
    )
    parser.add_argument(
        "--peak-duration",
        env_var="LOADTEST_PEAK_DURATION",
        type=float,
        default=120.0,
        help=f"total seconds of the morning shape (at most {MAX_DURATION_S})",
    )


class MorningPeak(LoadTestShape):
    """Ramp, plateau, burst, decline; see ``PHASES``."""

    use_common_options = False

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        factor = float(getattr(opts, "peak_factor", 1.0) or 1.0)
        duration = min(float(getattr(opts, "peak_duration", 120.0) or 120.0), MAX_DURATION_S)
        peak = max(1, round(BASE_PEAK_USERS * factor))
        users = users_at(self.get_run_time(), duration, peak)
        if users is None:
            return None
        # fast enough to follow the burst phase within a second or two, whatever the factor
        return users, max(1.0, peak / max(1.0, 0.05 * duration))
