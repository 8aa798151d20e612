#!/usr/bin/env bash
# Restore what apply.sh changed, from its state file. Args: [--state-dir DIR]
exec "$(dirname "$0")/tune.sh" revert "$@"
