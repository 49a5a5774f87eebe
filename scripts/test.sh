#!/usr/bin/env bash
# The test command: sets up what is missing, then runs every test in one pytest process.
#   scripts/test.sh [extra pytest arguments]
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/bootstrap.sh"
cd "$repo_root"
exec "$venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
