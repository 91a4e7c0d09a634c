#!/usr/bin/env bash
# Entry point of the farm worker images (workers/Dockerfile.cpu, workers/Dockerfile.cuda).
#
#   (no arguments)        run the image's default command (CMD): a worker
#   --device cuda ...     arguments that start with "-" are options of `farm worker`
#   farm beat | celery .. any other command runs as given
#
# FARM_REDIS_URL (or FARM_BROKER_URL) must point at the central Redis. It is checked here so that a
# worker started without it says so at once instead of retrying a broker on localhost forever.
set -euo pipefail

if [ -z "${FARM_REDIS_URL:-}" ] && [ -z "${FARM_BROKER_URL:-}" ]; then
  echo "farm entrypoint: set FARM_REDIS_URL (redis://:PASSWORD@HOST:6379/0 or rediss://...) to the central Redis" >&2
  exit 64
fi

if [ "$#" -eq 0 ]; then
  set -- farm worker
elif [ "${1#-}" != "$1" ]; then
  set -- farm worker "$@"
fi

# exec: the farm process receives SIGTERM itself and shuts down warm (finishes or requeues its job).
exec "$@"
