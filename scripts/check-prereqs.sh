#!/usr/bin/env bash
# Checks what `make demo` and `make test` need, and says what to install if something is missing.
set -euo pipefail
missing=0
py=${PYTHON:-python3}
if ! $py -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "kmsbridge needs Python 3.11 or newer as '$py' (set PYTHON=/path/to/python3.11)." >&2; missing=1
fi
if [ -z "${KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS:-}" ]; then
  if ! command -v java >/dev/null || ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
    echo "The local Kafka broker needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)," >&2
    echo "or point KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS at an existing Kafka cluster." >&2; missing=1
  fi
  if ! command -v mvn >/dev/null; then
    echo "The local Kafka broker's jars are resolved with Maven (Debian: apt-get install maven)," >&2
    echo "or point KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS at an existing Kafka cluster." >&2; missing=1
  fi
fi
exit $missing
