#!/bin/sh
# Installs every Debian package durable-stream needs to build, run and test.
# Keep lua5.4 on the same line as lua-busted: alone, lua-busted pulls lua5.2,
# which then takes over /usr/bin/lua (see the README's debugging section).
set -e
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  cmake pkg-config gcc make git ca-certificates \
  liblua5.4-dev lua5.4 libuv1-dev node-llhttp libyaml-dev libcurl4-openssl-dev libssl-dev \
  libwebsockets-dev libwebsockets-evlib-uv libcmocka-dev lua-busted lua-socket lua-cjson \
  python3 python3-websockets wrk valgrind clang libclang-rt-14-dev curl >/dev/null
