#!/usr/bin/env bash
# Throwaway single-node Apache Kafka (KRaft, broker+controller) for dev and CI; jars come from Maven via pom.xml.
# Usage: kafka.sh install|start|stop|kill|status
#   env: KAFKA_PORT (9092), KAFKA_DATA_DIR (<repo>/var/kafka-$KAFKA_PORT), KAFKA_VERSION (4.1.1), BATON_CACHE (<repo>/.cache)
#   start: prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT as its last stdout line; with only KAFKA_BOOTSTRAP_SERVERS set
#   it just waits for that server. stop: KAFKA_CLEAN=1 also deletes the data dir. kill: SIGKILL (fault tests).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
CACHE=${BATON_CACHE:-$REPO/.cache}
VERSION_DIR=$CACHE/kafka/$KAFKA_VERSION
LIBS=$VERSION_DIR/libs
MARKER=$VERSION_DIR/installed

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# The marker holds the pom's hash, so editing pom.xml re-resolves; otherwise mvn is skipped entirely.
pom_hash() { sha256sum "$HERE/pom.xml" | cut -d' ' -f1; }
installed() { [[ -f $MARKER && $(cat "$MARKER") == "$(pom_hash)" ]]; }

cmd_install() {
  installed && return 0
  mkdir -p "$VERSION_DIR"
  [[ -f $CACHE/.gitignore ]] || echo '*' >"$CACHE/.gitignore"
  # flock: two concurrent starts must not copy into the same dir
  exec 9>"$VERSION_DIR/.lock"
  flock 9
  if ! installed; then
    command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
    log "resolving Kafka $KAFKA_VERSION jars with mvn into $LIBS"
    rm -rf "$LIBS.tmp"
    mvn -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" \
      >"$VERSION_DIR/mvn.log" 2>&1 || { tail -n 40 "$VERSION_DIR/mvn.log" >&2; die "mvn failed (log: $VERSION_DIR/mvn.log)"; }
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    pom_hash >"$MARKER"
  fi
  exec 9>&-
}

# TCP connect test; timeout guards against addresses that drop packets
# shellcheck disable=SC2016  # $0/$1 are meant for the inner bash
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Kafka cluster ids are 16 random bytes, url-safe base64 without padding
cluster_id() { python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))'; }

setup_paths() {
  KAFKA_PORT=${KAFKA_PORT:-9092}
  DATA=$(realpath -m "${KAFKA_DATA_DIR:-$REPO/var/kafka-$KAFKA_PORT}")
  PIDFILE=$DATA/kafka.pid
  SERVER_LOG=$DATA/logs/server.log
}

# pid of the broker of this data dir, if it is alive (checks the cmdline, so neither a recycled pid
# nor a zombie, whose cmdline is empty, counts: here init may reap orphans late)
live_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $DATA/server.properties" || return 1
  echo "$pid"
}

# Alive while any of its threads is not a zombie: a JVM's main thread turns zombie while other
# threads still hold the sockets and the log dir lock.
alive() { ps -L -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }

log_tail() {
  local f
  for f in "$SERVER_LOG" "$DATA/kafka.out"; do
    [[ -s $f ]] && { echo "----- tail of $f" >&2; tail -n 40 "$f" >&2; }
  done
  return 0
}

write_config() {
  local cport
  cport=$(free_port)
  while [[ $cport == "$KAFKA_PORT" ]]; do cport=$(free_port); done
  # A static voter set (controller.quorum.voters) instead of --standalone: the controller
  # port can then be chosen afresh on every start, the formatted storage does not record it.
  cat >"$DATA/server.properties" <<EOF
# written by deploy/kafka/kafka.sh on every start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA/data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# after a SIGKILL the restarted broker cannot register until its old session expires (default 9 s)
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=1000
EOF
}

cmd_start() {
  # Someone else runs Kafka (e.g. CI service): only wait for it.
  if [[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} && -z ${KAFKA_PORT:-} ]]; then
    local first=${KAFKA_BOOTSTRAP_SERVERS%%,*}
    first=${first#*://}
    local deadline=$((SECONDS + 30))
    until port_open "${first%:*}" "${first##*:}"; do
      ((SECONDS < deadline)) || die "$first does not accept TCP connections after 30 s"
      sleep 0.5
    done
    echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
    return 0
  fi
  setup_paths
  local pid
  if pid=$(live_pid); then
    log "already running (pid $pid, data dir $DATA)"
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  port_open 127.0.0.1 "$KAFKA_PORT" && die "port $KAFKA_PORT is already in use by another process"
  cmd_install
  command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"

  mkdir -p "$DATA/logs"
  if [[ $DATA == "$REPO/var/"* && ! -f $REPO/var/.gitignore ]]; then echo '*' >"$REPO/var/.gitignore"; fi
  write_config
  local jvm=(java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$HERE/log4j2.xml" "-Dkafka.logs.dir=$DATA/logs" -cp "$LIBS/*")
  if [[ ! -f $DATA/data/meta.properties ]]; then
    log "formatting storage in $DATA/data"
    "${jvm[@]}" -Dkafka.log.name=storage-format.log kafka.tools.StorageTool format --ignore-formatted -t "$(cluster_id)" \
      -c "$DATA/server.properties" >&2 || die "storage format failed"
  fi

  # keep the previous run's log for post-mortems; a fresh file means no stale "started" line
  [[ -f $SERVER_LOG ]] && mv "$SERVER_LOG" "$SERVER_LOG.1"
  rm -f "$PIDFILE"
  # setsid: the broker must outlive the caller's process group; the child writes its own pid
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" "${jvm[@]}" kafka.Kafka "$DATA/server.properties" \
    >"$DATA/kafka.out" 2>&1 </dev/null &

  local deadline=$((SECONDS + 90))
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (data dir $DATA)"
  # "Kafka Server started" is logged once the broker is unfenced and serving, not just listening
  until grep -qs "Kafka Server started" "$SERVER_LOG" && port_open 127.0.0.1 "$KAFKA_PORT"; do
    if ((SECONDS >= deadline)); then
      log_tail
      cmd_kill_quiet
      die "broker not ready after 90 s"
    fi
    if [[ -s $PIDFILE ]] && ! live_pid >/dev/null; then
      log_tail
      rm -f "$PIDFILE"
      die "broker exited during startup"
    fi
    sleep 0.3
  done
  log "ready (pid $(cat "$PIDFILE"))"
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
}

cmd_stop() {
  setup_paths
  local pid
  if pid=$(live_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      log "no exit 30 s after SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.1; done
    fi
    log "stopped (pid $pid)"
  else
    log "not running"
  fi
  rm -f "$PIDFILE"
  if [[ ${KAFKA_CLEAN:-0} == 1 ]]; then
    rm -rf "$DATA"
    log "removed $DATA"
  fi
}

cmd_kill_quiet() {
  local pid
  if pid=$(live_pid); then
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
}

cmd_kill() {
  setup_paths
  if live_pid >/dev/null; then cmd_kill_quiet; log "killed"; else log "not running"; fi
}

cmd_status() {
  setup_paths
  local pid
  if pid=$(live_pid); then
    echo "running: pid $pid, 127.0.0.1:$KAFKA_PORT, data dir $DATA"
  else
    echo "not running (data dir $DATA)"
    return 3
  fi
}

case ${1:-} in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill ;;
  status) cmd_status ;;
  *) die "usage: $0 install|start|stop|kill|status" ;;
esac
