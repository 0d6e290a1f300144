#!/usr/bin/env bash
# Throwaway single-node Apache Kafka (KRaft, broker+controller) for dev and CI; jars come from Maven via pom.xml.
# Usage: kafka.sh install|start|stop|kill|status
#   env: KAFKA_PORT (9092), KAFKA_DATA_DIR (<repo>/var/kafka-$KAFKA_PORT), KAFKA_VERSION (4.1.1), BATON_CACHE (<repo>/.cache)
#   start: prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT as its last stdout line; with only KAFKA_BOOTSTRAP_SERVERS set
#   it just waits for that server. stop: KAFKA_CLEAN=1 also deletes the data dir. kill: SIGKILL (fault tests).
#   Client listener security: KAFKA_LISTENER_PROTOCOL = PLAINTEXT (default) | SASL_PLAINTEXT | SSL | SASL_SSL.
#   SASL_*: user KAFKA_SASL_USERNAME (baton) with KAFKA_SASL_PASSWORD (required; letters, digits, . _ ~ + -), accepted
#   with SCRAM-SHA-512 (stored at format time, so set it before the first start of a data dir) and PLAIN; the broker
#   talks to itself with SCRAM, the controller listener stays PLAINTEXT on 127.0.0.1. SSL/SASL_SSL: a throwaway CA and
#   broker certificate (SAN 127.0.0.1, localhost) under <data dir>/tls. start then also prints the client settings
#   (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SSL_CAFILE) before the bootstrap line.
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
# A Kafka cluster id (URL-safe base64 of a UUID) not starting with "-", which the format tool would take for an
# option (1 in 64 ids did, failing the broker's start).
cluster_id() {
    python3 -c 'import base64, uuid
while not (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")) or cid[0] == "-": pass
print(cid)'
}

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
listeners=$PROTOCOL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$PROTOCOL://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=$PROTOCOL:$PROTOCOL,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$PROTOCOL
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
  security_config >>"$DATA/server.properties"
}

# Which security the client listener speaks; validated before anything is written.
setup_security() {
  PROTOCOL=${KAFKA_LISTENER_PROTOCOL:-PLAINTEXT}
  case $PROTOCOL in
    PLAINTEXT | SSL) ;;
    SASL_PLAINTEXT | SASL_SSL)
      SASL_USER=${KAFKA_SASL_USERNAME:-baton}
      SASL_PASSWORD=${KAFKA_SASL_PASSWORD:-}
      [[ -n $SASL_PASSWORD ]] || die "KAFKA_LISTENER_PROTOCOL=$PROTOCOL needs KAFKA_SASL_PASSWORD"
      # The credentials go into a JAAS string and a StorageTool argument: keep them free of quoting characters.
      [[ $SASL_USER =~ ^[A-Za-z0-9._~+-]+$ && $SASL_PASSWORD =~ ^[A-Za-z0-9._~+-]+$ ]] ||
        die "KAFKA_SASL_USERNAME/PASSWORD may only contain letters, digits and . _ ~ + -"
      ;;
    *) die "KAFKA_LISTENER_PROTOCOL must be PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL (got $PROTOCOL)" ;;
  esac
  TLS=$DATA/tls
}

security_config() {
  local listener
  listener=$(tr '[:upper:]' '[:lower:]' <<<"$PROTOCOL")
  if [[ $PROTOCOL == SASL_* ]]; then
    cat <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.$listener.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$SASL_USER" password="$SASL_PASSWORD";
listener.name.$listener.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$SASL_USER" password="$SASL_PASSWORD" user_$SASL_USER="$SASL_PASSWORD";
EOF
  fi
  if [[ $PROTOCOL == *SSL ]]; then
    cat <<EOF
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
ssl.endpoint.identification.algorithm=https
EOF
  fi
}

# A throwaway CA and a broker certificate it signs, for 127.0.0.1 and localhost; kept with the data dir.
make_certificates() {
  [[ -f $TLS/broker.pem ]] && return 0
  command -v openssl >/dev/null || die "openssl not found (needed for KAFKA_LISTENER_PROTOCOL=$PROTOCOL)"
  mkdir -p "$TLS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=baton-dev-ca" \
    -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null || die "openssl: CA failed"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$TLS/broker.key" -out "$TLS/broker.csr" \
    2>/dev/null || die "openssl: broker key failed"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TLS/san.ext"
  openssl x509 -req -in "$TLS/broker.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial -days 30 \
    -extfile "$TLS/san.ext" -out "$TLS/broker.crt" 2>/dev/null || die "openssl: signing failed"
  # Kafka's PEM keystore: an unencrypted PKCS#8 key followed by the certificate chain, in one file.
  { openssl pkcs8 -topk8 -nocrypt -in "$TLS/broker.key" && cat "$TLS/broker.crt" "$TLS/ca.pem"; } >"$TLS/broker.pem" ||
    die "openssl: keystore failed"
}

# What a client needs besides the bootstrap address (printed before it, so the bootstrap line stays last).
print_client_settings() {
  [[ $PROTOCOL == PLAINTEXT ]] && return 0
  echo "KAFKA_SECURITY_PROTOCOL=$PROTOCOL"
  if [[ $PROTOCOL == SASL_* ]]; then echo "KAFKA_SASL_MECHANISM=SCRAM-SHA-512"; fi
  if [[ $PROTOCOL == *SSL ]]; then echo "KAFKA_SSL_CAFILE=$TLS/ca.pem"; fi
  return 0
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
  setup_security
  local pid
  if pid=$(live_pid); then
    log "already running (pid $pid, data dir $DATA)"
    print_client_settings
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  port_open 127.0.0.1 "$KAFKA_PORT" && die "port $KAFKA_PORT is already in use by another process"
  cmd_install
  command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"

  mkdir -p "$DATA/logs"
  if [[ $DATA == "$REPO/var/"* && ! -f $REPO/var/.gitignore ]]; then echo '*' >"$REPO/var/.gitignore"; fi
  # server.properties may hold the SASL password; the TLS dir holds private keys
  : >"$DATA/server.properties"
  chmod 600 "$DATA/server.properties"
  if [[ $PROTOCOL == *SSL ]]; then (umask 077 && make_certificates) || exit 1; fi
  write_config
  local jvm=(java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$HERE/log4j2.xml" "-Dkafka.logs.dir=$DATA/logs" -cp "$LIBS/*")
  if [[ ! -f $DATA/data/meta.properties ]]; then
    log "formatting storage in $DATA/data"
    local scram=()
    # KRaft keeps SCRAM credentials in the metadata log: they must exist before the broker authenticates to itself.
    [[ $PROTOCOL == SASL_* ]] && scram=(--add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
    "${jvm[@]}" -Dkafka.log.name=storage-format.log kafka.tools.StorageTool format --ignore-formatted -t "$(cluster_id)" \
      -c "$DATA/server.properties" "${scram[@]}" >&2 || die "storage format failed"
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
  log "ready (pid $(cat "$PIDFILE"), $PROTOCOL)"
  print_client_settings
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
