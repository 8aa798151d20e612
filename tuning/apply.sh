#!/usr/bin/env bash
# Apply hearth's host settings; see tune.sh and README.md. Args: [--housekeeping CPUS] [--only LIST] [--state-dir DIR]
exec "$(dirname "$0")/tune.sh" apply "$@"
