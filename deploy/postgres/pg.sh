#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for dev and CI (trust auth, fsync off: never for real data; commits survive a
# killed server, not a lost machine).
# Usage: pg.sh start|stop|kill|status|createdb NAME
#   env: PG_PORT (54329), PG_DATA_DIR (<repo>/var/pg-$PG_PORT, or /tmp/baton-pg-$PG_PORT if user postgres can't reach <repo>)
#        PG_SERVER_OPTIONS: more server options for start (profiling: "-c shared_preload_libraries=pg_stat_statements")
#   start: prints DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:$PG_PORT/postgres as its last stdout line.
#   stop: PG_CLEAN=1 also deletes the data dir. kill: SIGKILL the postmaster and its children (fault tests).
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PG_PORT=${PG_PORT:-54329}

log() { echo "pg.sh: $*" >&2; }
die() { log "$*"; exit 1; }

find_bin() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1; }

BIN=$(find_bin) # the highest version; only `start` installs one when there is none

install_pg() {
  log "no PostgreSQL binaries in /usr/lib/postgresql, installing the postgresql package"
  # may also create and start Debian's own 'main' cluster on 5432; harmless for us
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
  BIN=$(find_bin)
  [[ -n $BIN ]] || die "PostgreSQL binaries still not found after apt-get install"
}

# initdb and postgres refuse to run as root: run them as the postgres OS user then.
as_pg() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}
if ((EUID == 0)) && ! id postgres >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if [[ -n ${PG_DATA_DIR:-} ]]; then
  DATA=$(realpath -m "$PG_DATA_DIR")
elif ((EUID != 0)) || as_pg test -x "$REPO"; then
  DATA=$REPO/var/pg-$PG_PORT
else
  DATA=/tmp/baton-pg-$PG_PORT
fi
# a unix socket path must stay under ~107 bytes
SOCKDIR=$DATA
((${#DATA} <= 80)) || SOCKDIR=/tmp
cd / # runuser keeps the cwd, which postgres may not be allowed to enter

# Not `pg_ctl status`: it takes a zombie postmaster for a live one, and zombies can linger here
# (init reaps orphans late). Likewise postgres refuses to start while postmaster.pid names a zombie.
postmaster_pid() { head -n 1 "$DATA/postmaster.pid" 2>/dev/null; }
is_postgres() { [[ $(ps -o stat=,comm= -p "$1" 2>/dev/null) =~ ^[^Z]+[[:space:]]+postgres$ ]]; }
running() { local pid; pid=$(postmaster_pid) && [[ -n $pid ]] && is_postgres "$pid"; }
remove_stale_locks() { rm -f "$DATA/postmaster.pid" "$SOCKDIR/.s.PGSQL.$PG_PORT" "$SOCKDIR/.s.PGSQL.$PG_PORT.lock"; }

psql_pg() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }

cmd_start() {
  if running; then
    log "already running (data dir $DATA)"
  else
    [[ -n $BIN ]] || install_pg
    if [[ ! -f $DATA/PG_VERSION ]]; then
      mkdir -p "$DATA"
      if [[ $DATA == "$REPO/var/"* && ! -f $REPO/var/.gitignore ]]; then echo '*' >"$REPO/var/.gitignore"; fi
      if ((EUID == 0)); then
        chown postgres:postgres "$DATA"
        as_pg test -w "$DATA" || die "user postgres cannot write $DATA (a parent dir not traversable?); set PG_DATA_DIR"
      fi
      chmod 700 "$DATA"
      log "initdb $DATA ($("$BIN/postgres" --version))"
      # --locale=C: works on any machine (no locales needed) and sorts the same everywhere
      local out
      out=$(as_pg "$BIN/initdb" -D "$DATA" -A trust -U postgres --no-sync -E UTF8 --locale=C 2>&1) ||
        { echo "$out" >&2; die "initdb failed"; }
      cat >>"$DATA/postgresql.conf" <<EOF

# --- added by deploy/postgres/pg.sh: throwaway test cluster. fsync and full-page writes are off (they only
# guard against an OS or power failure); synchronous_commit stays on, so a killed server keeps every commit it
# acknowledged, which the fault tests rely on.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCKDIR'
fsync = off
full_page_writes = off
max_connections = 200
# 128 MB (the default) holds the hot rows of an empty database only: after some 10,000 leads, a bench's
# PostgreSQL used 28 instead of 24 % of a core at 50 leads/s.
shared_buffers = 512MB
EOF
    fi
    [[ -f $DATA/postmaster.pid ]] && remove_stale_locks # left by a killed server
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (data dir $DATA)"
    # -p on the command line too, in case PG_PORT differs from the one the cluster was created with
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/postgres.log" -w -t 60 -o "-p $PG_PORT ${PG_SERVER_OPTIONS:-}" start >/dev/null ||
      { tail -n 30 "$DATA/postgres.log" >&2; die "pg_ctl start failed"; }
  fi
  echo "DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:$PG_PORT/postgres"
}

cmd_stop() {
  if running; then
    as_pg "$BIN/pg_ctl" -D "$DATA" stop -m fast -w -t 60 >/dev/null
    log "stopped"
  else
    log "not running"
  fi
  if [[ ${PG_CLEAN:-0} == 1 ]]; then
    rm -rf "$DATA"
    log "removed $DATA"
  fi
}

cmd_kill() {
  local pid p
  if ! running; then log "not running"; return 0; fi
  pid=$(postmaster_pid)
  # The children too, like a crash of the whole server: each child is in its own session (so no group
  # kill), and orphans that linger after their postmaster died make a quick restart fail.
  local -a pids=("$pid")
  mapfile -t -O 1 pids < <(pgrep -P "$pid" || true)
  kill -KILL "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do
    while is_postgres "$p"; do sleep 0.1; done
  done
  remove_stale_locks
  log "killed (postmaster pid $pid and its $((${#pids[@]} - 1)) children)"
}

cmd_status() {
  if running; then
    echo "running: 127.0.0.1:$PG_PORT, pid $(postmaster_pid), data dir $DATA"
  else
    echo "not running (data dir $DATA)"
    return 3
  fi
}

cmd_createdb() {
  local name=$1
  [[ -n $name ]] || die "usage: $0 createdb NAME"
  running || die "not running; run pg.sh start first"
  # psql's :'name' and format(%I) do the quoting; \gexec runs CREATE only if the db is missing
  psql_pg -v name="$name" <<'SQL'
SELECT format('CREATE DATABASE %I', :'name')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'name') \gexec
SQL
  log "database $name ready"
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill ;;
  status) cmd_status ;;
  createdb) cmd_createdb "${2:-}" ;;
  *) die "usage: $0 start|stop|kill|status|createdb NAME" ;;
esac
