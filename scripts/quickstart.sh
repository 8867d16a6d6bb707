#!/usr/bin/env bash
# Quick start: set up (packages, build, completions, home) and run the daemon in the
# foreground with its embedded defaults (API on http://127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "quickstart: token in /var/lib/micro-os/token; try: micro-os container run --rm --image busybox -- echo hello"
exec micro-os daemon
