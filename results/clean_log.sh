#!/usr/bin/env bash
# clean_log.sh RUN_LOG LOG: a training log without tqdm's progress bars, that is, what
# follows each line's last carriage return, with blank lines dropped.
set -euo pipefail
sed 's/.*\r//' "$1" | grep -v '^ *$' > "$2"
