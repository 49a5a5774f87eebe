#!/usr/bin/env bash
# The test command: sets up what is missing, then runs every test suite.
#   scripts/test.sh [extra pytest arguments]
# The suites run in separate pytest processes because the `tfrecord` package and TensorFlow
# cannot be imported into one process (their protobufs clash).
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/bootstrap.sh" || exit 1
cd "$repo_root"

results="$(mktemp -d)"
status=0
for suite in pipeline trainer app workflow; do
  echo "=== tests/$suite"
  "$venv/bin/python" -m pytest "tests/$suite" -q -p no:cacheprovider --junitxml="$results/$suite.xml" "$@" || status=1
done
"$venv/bin/python" - "$results" <<'PY'
import pathlib, sys, xml.etree.ElementTree as ET
totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for report in sorted(pathlib.Path(sys.argv[1]).glob("*.xml")):
    suite = ET.parse(report).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    for key in totals:
        totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"all: {passed} passed, {failed} failed, {totals['skipped']} skipped")
PY
rm -rf "$results"
exit $status
