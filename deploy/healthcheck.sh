#!/bin/bash
# Container HEALTHCHECK for taskgate (copied into the image as /usr/local/bin/taskgate-healthcheck).
# The slim runtime image has no curl, so this sends a plain HTTP/1.1 GET /healthz over bash's
# /dev/tcp and succeeds only on a 200 status line. It asks on the port of TASKGATE_LISTEN
# (default 8080) at 127.0.0.1; TASKGATE_HEALTHCHECK_HOST / TASKGATE_HEALTHCHECK_PORT override.
set -euo pipefail

listen="${TASKGATE_LISTEN:-0.0.0.0:8080}"
host="${TASKGATE_HEALTHCHECK_HOST:-127.0.0.1}"
port="${TASKGATE_HEALTHCHECK_PORT:-${listen##*:}}"
wait_seconds="${TASKGATE_HEALTHCHECK_TIMEOUT:-2}"

if ! exec 3<>"/dev/tcp/${host}/${port}"; then
  echo "unhealthy: cannot connect to ${host}:${port}" >&2
  exit 1
fi
printf 'GET /healthz HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: taskgate-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n' \
  "$host" "$port" >&3

status_line=""
IFS= read -r -t "$wait_seconds" status_line <&3 || true
exec 3<&- 3>&-
status_line="${status_line%$'\r'}"

read -r _protocol code _reason <<<"$status_line" || true
if [[ "${_protocol:-}" == HTTP/1.* && "${code:-}" == "200" ]]; then
  exit 0
fi
echo "unhealthy: GET /healthz on ${host}:${port} answered '${status_line:-nothing}'" >&2
exit 1
