#!/usr/bin/env bash
# The main job: set up, then the tiny end-to-end reproduction (build → train I-III → report).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec janus-forge repro --out "${1:-runs/tiny}" "${@:2}"
