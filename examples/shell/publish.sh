#!/usr/bin/env bash
# Publish to browsers from the shell, through the sockway HTTP API (needs only curl).
#
#   export SOCKWAY_API_KEY=dev-key
#   examples/shell/publish.sh "deploy finished"            # every client of /chat
#   examples/shell/publish.sh -c news -j '{"title": "hi"}' # subscribers of channel "news"
#
# Unlike a ZeroMQ message, an HTTP request gets an answer: the script prints the
# gateway's result and exits 0, or prints the gateway's error and exits 1.
set -u

usage() {
  cat <<'EOF'
usage: publish.sh [-u URL] [-c CHANNEL | -e ENDPOINT] [-j] MESSAGE

Publishes MESSAGE through the sockway HTTP API and prints the gateway's result.

  -u URL       the gateway (default: $SOCKWAY_URL, else http://127.0.0.1:8080)
  -e ENDPOINT  every client of this broadcast endpoint (POST /api/broadcast; default /chat)
  -c CHANNEL   every subscriber of this channel (POST /api/publish)
  -j           MESSAGE is JSON, sent as is (default: sent as a string)
  -h           this help

environment:
  SOCKWAY_API_KEY  the gateway's [api] key (required; sent as "Authorization: Bearer")

exit status: 0 published, 1 refused by the gateway or not reachable, 2 wrong usage
EOF
}

die_usage() {
  echo "publish.sh: $1" >&2
  echo "run 'publish.sh -h' for help" >&2
  exit 2
}

# A shell string as a JSON string: escape backslash, quote and control characters.
json_string() {
  local s=$1 bs='\' q='"' c i
  s=${s//"$bs"/"$bs$bs"}
  s=${s//"$q"/"$bs$q"}
  s=${s//$'\n'/"${bs}n"}
  s=${s//$'\r'/"${bs}r"}
  s=${s//$'\t'/"${bs}t"}
  for i in {1..31}; do
    printf -v c "\\$(printf '%03o' "$i")"
    [[ $s == *"$c"* ]] && s=${s//"$c"/"$(printf '%su%04x' "$bs" "$i")"}
  done
  printf '"%s"' "$s"
}

url=${SOCKWAY_URL:-http://127.0.0.1:8080}
channel=
endpoint=
is_json=0
while getopts ':u:c:e:jh' opt; do
  case $opt in
    u) url=$OPTARG ;;
    c) channel=$OPTARG ;;
    e) endpoint=$OPTARG ;;
    j) is_json=1 ;;
    h) usage; exit 0 ;;
    :) die_usage "-$OPTARG needs a value" ;;
    *) die_usage "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))

[[ $# -eq 1 ]] || die_usage "give exactly one MESSAGE (quote it)"
[[ -n $channel && -n $endpoint ]] && die_usage "-c and -e exclude each other"
[[ -n ${SOCKWAY_API_KEY:-} ]] || die_usage "set SOCKWAY_API_KEY to the gateway's [api] key"
command -v curl >/dev/null || { echo "publish.sh: curl is not installed" >&2; exit 1; }

if [[ $is_json == 1 ]]; then
  data=$1
else
  data=$(json_string "$1")
fi
if [[ -n $channel ]]; then
  path=/api/publish
  body="{\"channel\":$(json_string "$channel"),\"data\":$data}"
else
  path=/api/broadcast
  body="{\"endpoint\":$(json_string "${endpoint:-/chat}"),\"data\":$data}"
fi

# The key goes to curl on its standard input, not on its command line (where `ps` shows it).
key=${SOCKWAY_API_KEY//\\/\\\\}
key=${key//\"/\\\"}
response=$(printf 'header = "Authorization: Bearer %s"\n' "$key" |
  curl --silent --show-error --max-time 10 --config - \
    --header 'Content-Type: application/json' --data-binary "$body" \
    --write-out '\n%{http_code}' "${url%/}$path")
status=$?
if [[ $status != 0 ]]; then
  echo "publish.sh: no answer from ${url%/}$path (curl exit status $status)" >&2
  exit 1
fi
http_code=${response##*$'\n'}
answer=${response%$'\n'*}

if [[ $http_code == 200 ]]; then
  printf '%s\n' "$answer"
  exit 0
fi
# Errors are {"error": {"code": "...", "message": "..."}}.
json_field() {
  sed -n 's/.*"'"$1"'" *: *"\(\([^"\\]\|\\.\)*\)".*/\1/p' <<<"$2" | head -n 1
}
code=$(json_field code "$answer")
message=$(json_field message "$answer")
if [[ -n $message ]]; then
  echo "publish.sh: the gateway refused (HTTP $http_code ${code:-error}): $message" >&2
else
  echo "publish.sh: HTTP $http_code from ${url%/}$path: ${answer:0:200}" >&2
  [[ $http_code == 404 ]] && echo "publish.sh: is the HTTP API on? The gateway needs an [api] key" \
    "(or SOCKWAY_API_KEY in its environment)." >&2
fi
exit 1
