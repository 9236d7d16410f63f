"""The Prometheus alert rules: valid for promtool, each one proven to fire and to stay quiet by promtool's own
rule tests, and written against the metric names the engine really exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.codes.verdicts import VERDICTS
from engine.ops.metrics import Metrics

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
# the week-over-week alert has its own file, evaluated every 30 minutes instead of every minute (a week of
# 1-minute evaluations takes promtool over a minute)
RULE_TESTS = (RULES_DIR / "alerts_test.yml", RULES_DIR / "alerts_test_weekly.yml")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/install.sh installs Debian's prometheus package)"
)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=RULES_DIR)


@needs_promtool
def test_promtool_check_rules_accepts_every_rule() -> None:
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_rule_tests_pass() -> None:
    done = promtool("test", "rules", *(path.name for path in RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group["alert_rule_test"]:
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert len(names) == len(alert_rules()), "alert names must be unique"
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    assert (firing | quiet) <= names, "tests for alerts that do not exist"


def exported_names() -> set[str]:
    """Every series name the engine's registry can export, labelled families included (they have no sample
    until a label value is first used, so the text exposition of a fresh registry would miss them)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)  # the bare family name, as the rule summaries mention it
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_rules_and_their_tests_use_metric_names_the_engine_exports() -> None:
    exported = exported_names()
    assert {"engine_scans_rejected_total", "engine_verify_seconds_bucket", "engine_store_up"} <= exported
    for path in (RULES, *RULE_TESTS):
        used = set(re.findall(r"\b(engine_\w+)", path.read_text()))
        assert used and used <= exported, f"{path.name}: not exported by engine/ops/metrics.py: {used - exported}"
        verdicts = set(re.findall(r'verdict="(\w+)"', path.read_text()))
        assert verdicts <= set(VERDICTS), verdicts - set(VERDICTS)
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("page", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].endswith("."), rule["alert"]
