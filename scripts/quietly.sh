#!/usr/bin/env bash
# quietly.sh "what this step does…" COMMAND [ARG...]
# Prints the one line, runs the command with its output kept aside, and shows that output
# only when the command fails (then with its exit status, which it also returns). The
# Makefile's install steps go through it: one line per step on a good day.
set -u
message=$1
shift
echo "$message"
log=$(mktemp "${TMPDIR:-/tmp}/sockway-step.XXXXXX")
"$@" >"$log" 2>&1
status=$?
if [ "$status" -ne 0 ]; then
  cat "$log" >&2
  echo "failed (exit $status): $*" >&2
fi
rm -f "$log"
exit "$status"
