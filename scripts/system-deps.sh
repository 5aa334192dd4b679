#!/usr/bin/env bash
# Installs the Debian packages the test suite drives as real components (Chromium for the
# browser tests, PHP with ZeroMQ for the examples, nginx for the load-balancer tests), when they are missing and this user may install them. Otherwise it
# says what to install; the tests that need a missing program then skip with that reason
# on a developer machine, and fail under CI=true.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v php >/dev/null 2>&1 || need+=(php-cli)
php -m 2>/dev/null | grep -qx zmq || need+=(php-zmq)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
    || echo "warning: apt-get install ${need[*]} failed" >&2
else
  echo "note: missing ${need[*]}; install with: sudo apt-get install ${need[*]}" >&2
fi
exit 0
