#!/usr/bin/env bash
# Set up, then run the test suite (arguments go to pytest).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# the slowest tests are listed so the CI budget (< 40 min on 2 cores) stays visible
exec python -m pytest --durations=15 "$@"
