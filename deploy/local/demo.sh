#!/usr/bin/env bash
# The demo's entry: until the full loop lands, start the stack, ensure the topics, show them.
set -euo pipefail
cd "$(dirname "$0")/../.."
if .venv/bin/python -c "import services.demo.run" 2>/dev/null; then
  exec .venv/bin/python -m services.demo.run "$@"
fi
make -s up
.venv/bin/graduate topics list
echo "The stack is up (Kafka, Triton, topics). 'make down' stops it."
