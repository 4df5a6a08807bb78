"""Checks the alert rules as an on-call person needs them.

    check_alerts.py RULES.yaml TESTS.yaml

Every alert has `severity` (critical, warning or info), a `summary` and a
`runbook_url` that resolves to a heading of a runbook in this repository,
and a promtool unit test in which it fires. Links between runbooks
(`file.md#anchor`, `#anchor`) must resolve too.
"""

import pathlib
import re
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
# Where runbook URLs point: this repository's docs/runbooks on its main
# branch. Forks change the origin here and in the rules.
RUNBOOK_PREFIX = "https://github.com/platform-team/platform/blob/main/"
SEVERITIES = {"critical", "warning", "info"}


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def check_runbook_links(problems):
    for page in sorted((REPO / "docs" / "runbooks").glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", page.read_text()):
            file, anchor = target.split("#", 1)
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists():
                problems.append(f"{page.relative_to(REPO)}: links to {target}, whose file does not exist")
            elif anchor not in anchors(linked):
                problems.append(f"{page.relative_to(REPO)}: links to {target}, which is no heading of {linked.name}")


def main():
    rules_path, tests_path = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rules = yaml.safe_load(rules_path.read_text())
    tests = yaml.safe_load(tests_path.read_text())
    fired = {
        case["alertname"]
        for test in tests.get("tests", [])
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    problems = []
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    for rule in alerts:
        name = rule["alert"]
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{name}: labels.severity must be one of {sorted(SEVERITIES)}, got {severity!r}")
        annotations = rule.get("annotations") or {}
        if not annotations.get("summary"):
            problems.append(f"{name}: annotations.summary is missing")
        url = annotations.get("runbook_url", "")
        if not url:
            problems.append(f"{name}: annotations.runbook_url is missing")
        elif not url.startswith(RUNBOOK_PREFIX + "docs/runbooks/") or "#" not in url:
            problems.append(f"{name}: runbook_url {url!r} must be {RUNBOOK_PREFIX}docs/runbooks/<file>.md#<heading>")
        else:
            file, anchor = url[len(RUNBOOK_PREFIX):].split("#", 1)
            page = REPO / file
            if not page.exists():
                problems.append(f"{name}: runbook_url names {file}, which does not exist")
            elif anchor not in anchors(page):
                problems.append(f"{name}: runbook_url names #{anchor}, which is no heading of {file}")
        if name not in fired:
            problems.append(f"{name}: no promtool test in {tests_path.name} makes it fire")
    check_runbook_links(problems)
    for problem in problems:
        print(f"alerts: {problem}", file=sys.stderr)
    if not problems:
        print(f"alerts: {len(alerts)} alerts, each with a severity, a summary, a runbook heading and a firing test")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
