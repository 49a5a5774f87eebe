#!/usr/bin/env bash
# The main job: sets up what is missing, then raw data -> TFRecords -> trained models -> report.
#   scripts/main.sh           the full job (15 to 50 minutes on 2 cores, see the README)
#   scripts/main.sh --quick   a first look (about 5 minutes), under ./quick
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/bootstrap.sh"
cd "$repo_root"
exec "$venv/bin/python" -m workflow.main "$@"
