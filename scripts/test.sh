#!/usr/bin/env bash
# Set up, then run the test suite (arguments go to pytest).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python -m pytest "$@"
