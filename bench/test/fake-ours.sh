#!/bin/sh
# fake-ours.sh - stands in for our server binary when testing bench/run.sh itself:
#   DS_BINARY=bench/test/fake-ours.sh bench/run.sh quick
# It accepts the server's command line (--port N, other flags ignored) and runs the tiny
# Python /agents server. Its figures mean nothing; never publish them.
dir=$(cd "$(dirname "$0")" && pwd)
port=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    *) shift ;;
  esac
done
exec /usr/bin/python3 "$dir/fake_agents_server.py" --port "$port"
