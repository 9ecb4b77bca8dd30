#!/usr/bin/env bash
# The main job: verify the deterministic digits spec (twice, compared) and the deliberately
# nondeterministic one, printing both reports. Reports land in .reprun/demo/.
set -uo pipefail
cd "$(dirname "$0")/.."
REPRUN=.venv/bin/reprun
mkdir -p .reprun/demo

echo "== reprun verify specs/digits.yaml (expected: identical, exit 0)"
$REPRUN verify specs/digits.yaml --report .reprun/demo/digits.html --report .reprun/demo/digits.md
code=$?
[ $code -eq 0 ] || { echo "demo: the deterministic spec did not verify (exit $code)" >&2; exit $code; }

echo
echo "== reprun verify specs/nondeterministic/digits-noisy.yaml (expected: differs, exit 1)"
$REPRUN verify specs/nondeterministic/digits-noisy.yaml --report .reprun/demo/digits-noisy.html
code=$?
[ $code -eq 1 ] || { echo "demo: the nondeterministic spec should differ (exit 1), got $code" >&2; exit 1; }

echo
echo "demo: both verdicts as expected; HTML and Markdown reports are in .reprun/demo/"
$REPRUN runs --limit 4
