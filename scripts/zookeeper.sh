#!/usr/bin/env bash
# A real ZooKeeper on 127.0.0.1 for development, CI and the tests: a standalone server or a
# 3-node ensemble, data in a temp dir, short tickTime so session timeouts are seconds.
#
#   scripts/zookeeper.sh start  [--nodes 1|3] [--port P] [--dir D] [--tick-ms T] [--member N]
#   scripts/zookeeper.sh stop   [--port P] [--dir D] [--member N] [--keep]
#   scripts/zookeeper.sh status [--port P] [--dir D]
#
# start  installs Debian's `zookeeper` package when missing, writes one zoo.cfg per member,
#        starts them, waits until each serves (4lw `srvr` reports a Mode), and prints the connect
#        string (and only that) on stdout: 127.0.0.1:P  or  127.0.0.1:P,127.0.0.1:P+1,127.0.0.1:P+2.
#        --member N starts just member N of an existing dir again (fault tests restart members).
# stop   stops exactly the processes this script started, by the PIDs in <dir>/node<N>/pid (a PID
#        whose command line does not name our zoo.cfg is left alone: it was reused). Without
#        --member it also removes the dir when start created it, unless --keep.
# status prints one line per member (pid, mode); exit 0 when all run, 3 otherwise.
#
# Ports: member i (1-based) serves clients on P+i-1; an ensemble also uses P+3..P+5 (quorum)
# and P+6..P+8 (election), so it needs P..P+8 free. Default P=2181, D=${TMPDIR:-/tmp}/tenant-gateway-zk-P.
set -euo pipefail

cmd=${1:-}
[ $# -gt 0 ] && shift
nodes=1
port=2181
dir=
tick=250
member=
keep=0
wait_s=${ZK_WAIT_SECONDS:-60}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "zookeeper.sh: $*" >&2; exit 1; }
log() { echo "zookeeper.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=${2:?}; shift 2 ;;
    --port) port=${2:?}; shift 2 ;;
    --dir) dir=${2:?}; shift 2 ;;
    --tick-ms) tick=${2:?}; shift 2 ;;
    --member) member=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage ;;
    *) echo "zookeeper.sh: unknown argument $1" >&2; usage ;;
  esac
done
case "$nodes" in 1|3) ;; *) die "--nodes must be 1 or 3" ;; esac
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65526 ] || die "--port must be 1-65526"
[[ "$tick" =~ ^[0-9]+$ ]] && [ "$tick" -ge 10 ] || die "--tick-ms must be a number of ms >= 10"
dir=${dir:-${TMPDIR:-/tmp}/tenant-gateway-zk-$port}

JAR=/usr/share/java/zookeeper.jar
CLASSPATH=/etc/zookeeper/conf:$JAR:/usr/share/java/slf4j-simple.jar

ensure_installed() {
  if [ -f "$JAR" ] && [ -f /usr/share/java/slf4j-simple.jar ] && command -v java >/dev/null; then return; fi
  log "ZooKeeper is not installed: installing Debian's zookeeper package (and slf4j-simple for its logs)"
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y zookeeper libslf4j-java >&2 || { $sudo apt-get update >&2 && $sudo apt-get install -y zookeeper libslf4j-java >&2; } \
    || die "could not install the zookeeper package (apt-get install -y zookeeper)"
  [ -f "$JAR" ] || die "the zookeeper package is installed but $JAR is missing"
}

# The members this invocation works on, as numbers: all of them, or --member N.
members() {
  local n
  if [ -n "$member" ]; then echo "$member"; return; fi
  if [ -f "$dir/nodes" ]; then n=$(cat "$dir/nodes"); else n=$nodes; fi
  seq 1 "$n"
}

client_port() { echo $((port + $1 - 1)); }

# The 4lw answer of member $1 to command $2 (empty when it does not answer within 2 s).
fourlw() {
  local p out
  p=$(client_port "$1")
  out=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p && printf '%s' '$2' >&3 && cat <&3" 2>/dev/null) || true
  printf '%s' "$out"
}

serving() { fourlw "$1" srvr | grep -q '^Mode: '; }

# PID of member $1 when it runs and is ours (its command line names our zoo.cfg); empty otherwise.
member_pid() {
  local f=$dir/node$1/pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir/node$1/zoo.cfg"; then echo "$pid"; fi
}

write_config() {
  local i=$1 n=$2 d=$dir/node$1
  mkdir -p "$d/data"
  {
    echo "tickTime=$tick"
    echo "initLimit=20"
    echo "syncLimit=10"
    echo "dataDir=$d/data"
    echo "clientPort=$(client_port "$i")"
    echo "clientPortAddress=127.0.0.1"
    echo "maxClientCnxns=0"
    echo "admin.enableServer=false"
    echo "4lw.commands.whitelist=*"
    echo "autopurge.purgeInterval=0"
    if [ "$n" -gt 1 ]; then
      for j in $(seq 1 "$n"); do
        echo "server.$j=127.0.0.1:$((port + 2 + j)):$((port + 5 + j))"
      done
    fi
  } >"$d/zoo.cfg"
  echo "$i" >"$d/data/myid"
}

start_member() {
  local i=$1 n=$2 d=$dir/node$1 main pid
  if [ -n "$(member_pid "$i")" ]; then log "member $i already runs (pid $(member_pid "$i"))"; return; fi
  [ -f "$d/zoo.cfg" ] || write_config "$i" "$n"
  if [ "$n" -gt 1 ]; then main=org.apache.zookeeper.server.quorum.QuorumPeerMain; else main=org.apache.zookeeper.server.ZooKeeperServerMain; fi
  # The child writes its own PID, then execs java: the pid file names the JVM itself.
  # setsid: the server outlives this script and ignores the terminal's Ctrl-C.
  setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$d/pid" \
    java -Xms32m -Xmx512m -XX:+UseSerialGC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -Dzookeeper.jmx.log4j.disable=true -cp "$CLASSPATH" "$main" "$d/zoo.cfg" \
    >>"$d/server.log" 2>&1 </dev/null &
  for _ in $(seq 1 50); do [ -s "$d/pid" ] && break; sleep 0.02; done
  pid=$(cat "$d/pid" 2>/dev/null || true)
  log "member $i starting (pid $pid, port $(client_port "$i"), log $d/server.log)"
}

wait_serving() {
  local i deadline=$((SECONDS + wait_s))
  for i in "$@"; do
    until serving "$i"; do
      if [ -z "$(member_pid "$i")" ]; then
        tail -n 30 "$dir/node$i/server.log" >&2 || true
        die "member $i exited during start-up (log above: $dir/node$i/server.log)"
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 30 "$dir/node$i/server.log" >&2 || true
        die "member $i does not serve on 127.0.0.1:$(client_port "$i") after ${wait_s}s (log above)"
      fi
      sleep 0.1
    done
  done
}

# Stops members "$@": TERM (and CONT, so a member paused by a fault test can die) to all of
# them first, then wait for each; KILL after 5 s.
stop_members() {
  local i pid pids=()
  for i in "$@"; do
    pid=$(member_pid "$i")
    if [ -z "$pid" ]; then rm -f "$dir/node$i/pid"; continue; fi
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
    pids+=("$i:$pid")
  done
  for entry in ${pids[@]+"${pids[@]}"}; do
    i=${entry%%:*}; pid=${entry#*:}
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
    rm -f "$dir/node$i/pid"
    log "member $i stopped (pid $pid)"
  done
}

connect_string() {
  local n s= i
  n=$(cat "$dir/nodes")
  for i in $(seq 1 "$n"); do s="$s${s:+,}127.0.0.1:$(client_port "$i")"; done
  echo "$s"
}

case "$cmd" in
  start)
    ensure_installed
    if [ ! -d "$dir" ]; then mkdir -p "$dir"; touch "$dir/.created-by-zookeeper.sh"; fi
    if [ -f "$dir/nodes" ]; then
      n=$(cat "$dir/nodes")
      [ -n "$member" ] || [ "$n" = "$nodes" ] || die "$dir holds a $n-node setup; stop it first or use another --dir"
      nodes=$n
    else
      [ -z "$member" ] || die "--member needs an existing setup in $dir (start it without --member first)"
      echo "$nodes" >"$dir/nodes"
    fi
    if [ -n "$member" ] && { ! [[ "$member" =~ ^[0-9]+$ ]] || [ "$member" -lt 1 ] || [ "$member" -gt "$nodes" ]; }; then
      die "--member must be 1-$nodes"
    fi
    started=()
    for i in $(members); do start_member "$i" "$nodes"; started+=("$i"); done
    wait_serving "${started[@]}"
    log "serving: $(connect_string) (data in $dir)"
    connect_string
    ;;
  stop)
    [ -d "$dir" ] || { log "nothing to stop in $dir"; exit 0; }
    # shellcheck disable=SC2046
    stop_members $(members)
    if [ -z "$member" ] && [ "$keep" = 0 ] && [ -f "$dir/.created-by-zookeeper.sh" ]; then rm -rf "$dir"; fi
    ;;
  status)
    [ -f "$dir/nodes" ] || { echo "not started (no $dir/nodes)"; exit 3; }
    rc=0
    for i in $(members); do
      pid=$(member_pid "$i")
      mode=$(fourlw "$i" srvr | sed -n 's/^Mode: //p')
      echo "member $i port $(client_port "$i") pid ${pid:-none} mode ${mode:-not-serving}"
      [ -n "$pid" ] && [ -n "$mode" ] || rc=3
    done
    echo "connect $(connect_string)"
    exit $rc
    ;;
  *) usage ;;
esac
