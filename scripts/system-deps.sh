#!/usr/bin/env bash
# The Debian packages sockway's demos and tests use besides Python and Node.js.
#
#   scripts/system-deps.sh demo   (make demo) the gateway itself needs none of them: says in
#                                 one line what the demos' own commands need that is
#                                 missing, and how to install it; never installs, never fails
#   scripts/system-deps.sh test   (make test) installs what the end-to-end tests drive as
#                                 real components, when they are missing and this user may
#                                 (root with apt-get); otherwise says what to install. Tests
#                                 that need a missing program then skip with that reason on a
#                                 developer machine, and fail under CI=true.
set -u
mode=${1:-test}
need=()   # Debian packages
why=()    # what each is for, in the same order

want() {  # want PACKAGE REASON: when its check (run by the caller) failed
  need+=("$1")
  why+=("$1 ($2)")
}

reasons() {  # the packages with what each is for, comma-separated
  local out="" item
  for item in "${why[@]}"; do out+="${out:+, }$item"; done
  echo "$out"
}

if [ "$mode" = demo ]; then
  command -v php >/dev/null 2>&1 || want php-cli "the Broadcast and Live logs pages' PHP commands"
  php -m 2>/dev/null | grep -qx zmq || want php-zmq "ZeroMQ for those PHP commands"
  command -v nc >/dev/null 2>&1 || want netcat-openbsd "nc, for the Tunnel page"
  command -v npm >/dev/null 2>&1 || want npm "sockjs-client for the pages; without it they load it from a CDN"
  if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo "
    echo "note: missing $(reasons); install with: ${sudo}apt-get install ${need[*]}"
  fi
  exit 0
fi

command -v chromium >/dev/null 2>&1 || want chromium "the browser tests"
command -v php >/dev/null 2>&1 || want php-cli "the PHP examples and demos"
php -m 2>/dev/null | grep -qx zmq || want php-zmq "the PHP examples' ZeroMQ"
command -v nc >/dev/null 2>&1 || want netcat-openbsd "the Tunnel demo's nc command"
command -v curl >/dev/null 2>&1 || want curl "the shell examples and README commands"
command -v openssl >/dev/null 2>&1 || want openssl "TLS certificates for the TLS tests"
command -v nginx >/dev/null 2>&1 || want nginx-light "the load-balancer tests"
command -v redis-server >/dev/null 2>&1 || want redis-server "the Redis broker tests"
command -v nats-server >/dev/null 2>&1 || want nats-server "the NATS broker tests"
if [ ${#need[@]} -eq 0 ]; then
  echo "Debian packages the tests drive: all present (chromium, php-cli, php-zmq, nc, curl, openssl, nginx, redis-server, nats-server)"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the Debian packages the tests drive (apt-get, as root): $(reasons)…"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp "${TMPDIR:-/tmp}/sockway-apt.XXXXXX")
  if ! { apt-get update -qq && apt-get install -y -qq "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "warning: apt-get install ${need[*]} failed; the tests that need them will say so" >&2
  fi
  rm -f "$log"
else
  echo "note: missing $(reasons); install with: sudo apt-get install ${need[*]}" >&2
fi
exit 0
