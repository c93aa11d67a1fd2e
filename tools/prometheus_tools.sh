#!/usr/bin/env bash
# Makes Debian's `prometheus` package's binaries (prometheus, promtool: 2.42 on bookworm) available, for the
# rule checks (promtool check/test rules) and the end-to-end test that scrapes a real Prometheus.
#
# Silent and quick when both are already on PATH. Otherwise installs the package when it can (root with
# apt-get, as on the developers' machines and CI); elsewhere says what to install and fails, and the tests
# then skip outside CI with the reason printed.
#
# The package's postinst starts the daemon where an init system lets it (it listens on :9090 with its own
# data dir): the tests start their own Prometheus on a free port, so one left running is stopped here.
set -euo pipefail

_have() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null
}

_have && exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "prometheus_tools: promtool/prometheus not found; install Debian's 'prometheus' package (as root:" \
    "apt-get install prometheus)" >&2
  exit 1
fi

# No question may block a CI run that has no standard input.
export DEBIAN_FRONTEND=noninteractive
# A pid that was running before the install is not ours to stop.
before=$(pgrep -x prometheus || true)

_apt_install() {
  # apt's chatter to stderr: stdout stays empty for callers that capture it.
  apt-get install -y -q --no-install-recommends prometheus >&2
}

echo "prometheus_tools: installing Debian's prometheus package" >&2
# The package lists may be stale or absent on a fresh machine: update only then, it costs a round trip.
if ! _apt_install; then
  echo "prometheus_tools: install failed; updating the package lists and retrying" >&2
  apt-get update -q >&2
  _apt_install
fi

for pid in $(pgrep -x prometheus || true); do
  if ! grep -qxF "$pid" <<<"$before"; then
    echo "prometheus_tools: stopping the prometheus (pid $pid) the package started" >&2
    kill "$pid" 2>/dev/null || true
  fi
done
# Give it the few seconds a clean shutdown takes (it writes its WAL), then make sure.
for _ in $(seq 1 20); do
  started=0
  for pid in $(pgrep -x prometheus || true); do
    grep -qxF "$pid" <<<"$before" || started=1
  done
  [[ $started -eq 0 ]] && break
  sleep 0.5
done
for pid in $(pgrep -x prometheus || true); do
  grep -qxF "$pid" <<<"$before" || kill -9 "$pid" 2>/dev/null || true
done

if ! _have; then
  echo "prometheus_tools: the prometheus package installed but promtool/prometheus are still not on PATH" >&2
  exit 1
fi
