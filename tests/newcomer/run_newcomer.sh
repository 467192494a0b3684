#!/usr/bin/env bash
# A newcomer's first contact, as CI runs it after the tests (see newcomer.py): fresh clone, README command 1 in the
# background (timed to a serving demo), every client command of the README, SIGTERM, README command 2.
# NEWCOMER_TESTS=full runs command 2's whole pytest; the default runs it on a small subset (CI just ran the whole
# suite with the same command). NEWCOMER_OUT=DIR keeps newcomer.json (the timings) there.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 tests/newcomer/newcomer.py "$@"
