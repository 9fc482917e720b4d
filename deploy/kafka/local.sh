#!/usr/bin/env bash
# Local single-node Apache Kafka broker (KRaft, combined broker+controller)
# for tests, CI and users without Docker.  Needs Java 17+, and Maven for the
# first start only (the jars are fetched from Maven Central via pom.xml).
#
#   deploy/kafka/local.sh fetch               download the jars only (cached)
#   deploy/kafka/local.sh start  [--port N]   start (or reuse); prints 127.0.0.1:N last
#   deploy/kafka/local.sh status [--port N]   exit 0 running, 3 stopped, 1 not answering
#   deploy/kafka/local.sh stop   [--port N] [--purge]
#
# Environment:
#   STREAMLEARN_KAFKA_HOME             cache dir       (default ~/.cache/streamlearn/kafka)
#   STREAMLEARN_KAFKA_PORT             broker port     (default 9092; --port wins)
#   STREAMLEARN_KAFKA_CONTROLLER_PORT  KRaft port      (default broker port + 1)
#   STREAMLEARN_KAFKA_DATA             data dir        (default $cache/data-$PORT)
#   STREAMLEARN_KAFKA_HEAP_OPTS        JVM heap        (default "-Xms256m -Xmx512m")
#   STREAMLEARN_KAFKA_JVM_OPTS         extra JVM options
#   STREAMLEARN_KAFKA_EXTRA_CONFIG     file appended to server.properties
#   STREAMLEARN_KAFKA_START_TIMEOUT    seconds to wait for the broker (default 60)
#   STREAMLEARN_KAFKA_STOP_TIMEOUT     seconds before SIGKILL on stop (default 30)
#   STREAMLEARN_KAFKA_DOWNLOAD_TIMEOUT seconds for the Maven download (default 900)
#   JAVA_HOME                          java to use (default: java on PATH)
#
# Everything listens on 127.0.0.1 only.  Progress goes to stderr; stdout of
# `start` is only the bootstrap address, so BOOTSTRAP=$(local.sh start) works.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/pom.xml"
CACHE="${STREAMLEARN_KAFKA_HOME:-${HOME:-/tmp}/.cache/streamlearn/kafka}"
LIBS="$CACHE/libs"
STAMP="$LIBS/.streamlearn-complete"
MARKER_NAME=".streamlearn-kafka"

START_TIMEOUT="${STREAMLEARN_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${STREAMLEARN_KAFKA_STOP_TIMEOUT:-30}"
DOWNLOAD_TIMEOUT="${STREAMLEARN_KAFKA_DOWNLOAD_TIMEOUT:-900}"
HEAP_OPTS="${STREAMLEARN_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
JVM_OPTS="${STREAMLEARN_KAFKA_JVM_OPTS:-}"

log() { printf 'local-kafka: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

# ---------------------------------------------------------------- arguments
CMD=""
PORT="${STREAMLEARN_KAFKA_PORT:-9092}"
PURGE=0
while (($#)); do
  case "$1" in
    start | stop | status | fetch)
      [[ -z $CMD ]] || die "only one command allowed (got '$CMD' and '$1')"
      CMD="$1"
      ;;
    --port)
      (($# >= 2)) || die "--port needs a value"
      PORT="$2"
      shift
      ;;
    --port=*) PORT="${1#--port=}" ;;
    --purge) PURGE=1 ;;
    -h | --help | help)
      usage
      exit 0
      ;;
    *)
      usage
      die "unknown argument: $1"
      ;;
  esac
  shift
done
[[ -n $CMD ]] || {
  usage
  exit 2
}
[[ $PURGE == 0 || $CMD == stop ]] || die "--purge only goes with stop"

is_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)); }
is_port "$PORT" || die "invalid port: $PORT"
CPORT="${STREAMLEARN_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
is_port "$CPORT" || die "invalid controller port: $CPORT"
[[ $CPORT != "$PORT" ]] || die "controller port must differ from broker port ($PORT)"
for n in START_TIMEOUT STOP_TIMEOUT DOWNLOAD_TIMEOUT; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number of seconds"
done

ADDR="127.0.0.1:$PORT"
DATA="${STREAMLEARN_KAFKA_DATA:-$CACHE/data-$PORT}"
PIDFILE="$DATA/kafka.pid"
PROPS="$DATA/server.properties"
LOG4J="$DATA/log4j2.properties"
BROKER_LOG="$DATA/kafka.log"   # log4j output of the broker
OUT_LOG="$DATA/kafka.out"      # stdout/stderr of the JVM (crashes, format tool)
LOG_DIRS="$DATA/kafka-logs"    # Kafka's log.dirs (topic data + KRaft metadata)

JAVA="java"
[[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]] && JAVA="$JAVA_HOME/bin/java"

# ----------------------------------------------------------------- helpers
# run_bounded SECONDS CMD...: run with a time limit when coreutils timeout exists
run_bounded() {
  local secs="$1"
  shift
  if command -v timeout >/dev/null 2>&1; then
    timeout --kill-after=5 "$secs" "$@"
  else
    "$@"
  fi
}

# with_lock FILE SECONDS CMD...: serialise concurrent invocations (flock if present)
with_lock() {
  local file="$1" secs="$2"
  shift 2
  if command -v flock >/dev/null 2>&1; then
    (
      flock -w "$secs" 9 || die "timed out after ${secs}s waiting for lock $file"
      "$@"
    ) 9>"$file"
  else
    "$@"
  fi
}

pid_cmdline() {
  if [[ -r /proc/$1/cmdline ]]; then
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else
    ps -o args= -p "$1" 2>/dev/null || true
  fi
}

# is_our_broker PID: alive and running kafka.Kafka with this data dir's config
is_our_broker() {
  local pid="$1" cmd
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmd=$(pid_cmdline "$pid")
  [[ $cmd == *"kafka.Kafka $PROPS"* ]]
}

# find_pid: print the pid of this data dir's broker; the pid file first, then
# a /proc scan (covers a deleted or stale pid file).
find_pid() {
  local pid="" p
  [[ -f $PIDFILE ]] && pid=$(head -n1 "$PIDFILE" 2>/dev/null || true)
  if is_our_broker "$pid"; then
    echo "$pid"
    return 0
  fi
  if [[ -d /proc ]]; then
    while IFS= read -r p; do
      p="${p#/proc/}"
      p="${p%/cmdline}"
      if is_our_broker "$p"; then
        echo "$p"
        return 0
      fi
    done < <(grep -lsaF -e "$PROPS" /proc/[0-9]*/cmdline 2>/dev/null || true)
  fi
  return 1
}

# tcp_open PORT: something accepts TCP connections on 127.0.0.1:PORT
tcp_open() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  run_bounded 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1
}

# kafka_answers: the broker answers a real Kafka request.  Sends an
# ApiVersions v0 request (api_key 18, correlation id 7, null client id) over
# bash's /dev/tcp and checks correlation id + error_code 0 in the reply; then,
# if kcat is installed, also a full metadata request.
kafka_answers() {
  local hex
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  hex=$(run_bounded 5 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff" >&3
      head -c 10 <&3 | od -An -tx1' _ "$PORT" 2>/dev/null | tr -d ' \n') || return 1
  [[ ${hex:8:12} == 000000070000 ]] || return 1
  if command -v kcat >/dev/null 2>&1; then
    run_bounded 10 kcat -L -b "$ADDR" -m 5 >/dev/null 2>&1 || return 1
  fi
  return 0
}

print_log_tail() {
  local f
  for f in "$OUT_LOG" "$BROKER_LOG"; do
    if [[ -s $f ]]; then
      printf '%s\n' "---- last lines of $f ----" >&2
      tail -n 40 "$f" >&2 || true
    fi
  done
}

# terminate PID: SIGTERM, bounded wait, then SIGKILL
terminate() {
  local pid="$1" deadline=$((SECONDS + STOP_TIMEOUT))
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still running after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.2
    done
    ! kill -0 "$pid" 2>/dev/null || die "pid $pid survived SIGKILL"
  fi
}

# wait_ready PID OWNED: bounded wait until the broker answers.  On failure
# print the log tail and exit 1; a broker this invocation launched (OWNED=1)
# is stopped first so that a failed start leaves nothing running.
wait_ready() {
  local pid="$1" owned="$2" deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      # (in case setsid forked: look for the JVM by its command line)
      if pid=$(find_pid); then
        echo "$pid" >"$PIDFILE"
        continue
      fi
      log "broker exited during startup"
      print_log_tail
      rm -f "$PIDFILE"
      exit 1
    fi
    if kafka_answers; then
      return 0
    fi
    sleep 0.5
  done
  log "broker (pid $pid) did not answer on $ADDR within ${START_TIMEOUT}s"
  print_log_tail
  if ((owned)); then
    log "stopping it"
    terminate "$pid"
    rm -f "$PIDFILE"
  else
    log "it was already running before this call; '$0 stop --port $PORT' stops it"
  fi
  exit 1
}

pom_sum() { cksum <"$POM" | awk '{print $1 "-" $2}'; }

libs_ready() {
  [[ -f $STAMP && $(cat "$STAMP" 2>/dev/null) == "$(pom_sum)" ]] &&
    compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null
}

# ------------------------------------------------------------ download jars
download_libs() {
  libs_ready && return 0 # someone else finished while we waited for the lock
  command -v mvn >/dev/null 2>&1 ||
    die "Kafka jars not in $LIBS and 'mvn' not found (install Maven, e.g. apt-get install -y maven)"
  local tmp="$CACHE/libs.tmp.$$" mvn_log="$CACHE/mvn.log" started=$SECONDS
  rm -rf "$tmp"
  log "downloading Kafka jars with Maven into $LIBS (one-time) ..."
  if ! run_bounded "$DOWNLOAD_TIMEOUT" mvn -B -q -Dstyle.color=never -f "$POM" \
    dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$tmp" </dev/null >"$mvn_log" 2>&1; then
    rm -rf "$tmp"
    tail -n 40 "$mvn_log" >&2 || true
    die "Maven could not fetch the Kafka jars (full output in $mvn_log)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || {
    rm -rf "$tmp"
    die "Maven finished but no kafka_2.13 jar in $tmp"
  }
  pom_sum >"$tmp/.streamlearn-complete"
  # swap in atomically-ish; a running broker keeps its open (unlinked) jars
  rm -rf "$LIBS.old"
  [[ -d $LIBS ]] && mv "$LIBS" "$LIBS.old"
  mv "$tmp" "$LIBS"
  rm -rf "$LIBS.old"
  log "downloaded $(find "$LIBS" -name '*.jar' | wc -l | tr -d ' ') jars in $((SECONDS - started))s"
}

# -------------------------------------------------------------- configure
write_config() {
  cat >"$PROPS" <<EOF
# Written by deploy/kafka/local.sh on every start; edits are overwritten.
# Use STREAMLEARN_KAFKA_EXTRA_CONFIG=<file> to append settings.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$LOG_DIRS

# single node: every internal topic with replication factor 1, few partitions
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1

# fast consumer-group joins for tests
group.initial.rebalance.delay.ms=0

# small machine: fewer threads, small log-cleaner buffer
num.network.threads=2
num.io.threads=4
log.cleaner.dedupe.buffer.size=33554432
EOF
  if [[ -n ${STREAMLEARN_KAFKA_EXTRA_CONFIG:-} ]]; then
    [[ -r $STREAMLEARN_KAFKA_EXTRA_CONFIG ]] ||
      die "STREAMLEARN_KAFKA_EXTRA_CONFIG=$STREAMLEARN_KAFKA_EXTRA_CONFIG is not readable"
    {
      printf '\n# from %s\n' "$STREAMLEARN_KAFKA_EXTRA_CONFIG"
      cat "$STREAMLEARN_KAFKA_EXTRA_CONFIG"
    } >>"$PROPS"
  fi

  cat >"$LOG4J" <<EOF
# log4j2 config written by deploy/kafka/local.sh
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $BROKER_LOG
appender.file.filePattern = $BROKER_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state-change.name = state.change.logger
logger.state-change.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

# Random cluster id in Kafka's Uuid format: 16 random bytes, URL-safe base64
# without padding, not starting with '-' (what StorageTool random-uuid does).
random_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} == 22 && $id != -* ]] && break
  done
  echo "$id"
}

format_storage() {
  [[ -f $LOG_DIRS/meta.properties ]] && return 0
  local id
  id=$(random_cluster_id)
  log "formatting storage in $LOG_DIRS (cluster id $id)"
  # static voter set (controller.quorum.voters): no --standalone needed, and the
  # data dir keeps working if the controller port changes later
  if ! run_bounded 120 "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$LOG4J" \
    -cp "$LIBS/*" kafka.tools.StorageTool format \
    --cluster-id "$id" --config "$PROPS" --ignore-formatted >>"$OUT_LOG" 2>&1 </dev/null; then
    print_log_tail
    die "formatting storage failed"
  fi
}

# ------------------------------------------------------------------ start
do_start() {
  local pid
  if pid=$(find_pid); then
    log "broker already running (pid $pid), data in $DATA"
    echo "$pid" >"$PIDFILE"
    wait_ready "$pid" 0
    echo "$ADDR"
    return 0
  fi
  rm -f "$PIDFILE"

  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka 4.x needs Java 17+, e.g. apt-get install -y openjdk-17-jre-headless)"
  local p
  for p in "$PORT" "$CPORT"; do
    if tcp_open "$p"; then
      die "127.0.0.1:$p is already in use by another process (not a broker of this script for $DATA)"
    fi
  done

  if ! libs_ready; then
    mkdir -p "$CACHE"
    with_lock "$CACHE/.download.lock" "$DOWNLOAD_TIMEOUT" download_libs
  fi

  # keep the previous run's logs as *.prev; the tail printed on failure
  # then only shows this run
  local f
  for f in "$OUT_LOG" "$BROKER_LOG"; do
    if [[ -f $f ]]; then mv -f "$f" "$f.prev"; fi
  done
  write_config
  format_storage

  local started=$SECONDS
  log "starting Kafka broker on $ADDR (controller 127.0.0.1:$CPORT), data in $DATA"
  local -a java_cmd
  # shellcheck disable=SC2206 # heap/JVM options are deliberately word-split
  java_cmd=("$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J" -Dkafka.logs.dir="$DATA"
    $JVM_OPTS -cp "$LIBS/*" kafka.Kafka "$PROPS")
  # setsid: own session, so a Ctrl-C in the caller's terminal does not hit it;
  # all fds redirected (and the lock fd closed) so callers capturing our
  # stdout are not kept waiting by the background JVM
  if command -v setsid >/dev/null 2>&1; then
    nohup setsid "${java_cmd[@]}" </dev/null >>"$OUT_LOG" 2>&1 9>&- &
  else
    nohup "${java_cmd[@]}" </dev/null >>"$OUT_LOG" 2>&1 9>&- &
  fi
  pid=$!
  echo "$pid" >"$PIDFILE"
  wait_ready "$pid" 1
  log "broker ready in $((SECONDS - started))s (pid $pid)"
  echo "$ADDR"
}

# ------------------------------------------------------------------- stop
do_stop() {
  local pid
  if pid=$(find_pid); then
    log "stopping broker (pid $pid) ..."
    terminate "$pid"
    log "stopped"
  else
    log "not running ($ADDR)"
  fi
  rm -f "$PIDFILE"
  if ((PURGE)) && [[ -d $DATA ]]; then
    # only delete a directory this script created (marker) -- never e.g. a
    # mistyped STREAMLEARN_KAFKA_DATA=$HOME
    if [[ -f $DATA/$MARKER_NAME ]]; then
      rm -rf -- "$DATA"
      log "purged $DATA"
    else
      die "refusing to purge $DATA: no $MARKER_NAME marker (not created by this script)"
    fi
  fi
}

# ----------------------------------------------------------------- status
do_status() {
  local pid
  if pid=$(find_pid); then
    if kafka_answers; then
      echo "running $ADDR (pid $pid, data $DATA)"
      return 0
    fi
    echo "not answering $ADDR (pid $pid alive, data $DATA)"
    return 1
  fi
  echo "stopped $ADDR (data $DATA)"
  return 3
}

# ------------------------------------------------------------------- main
case "$CMD" in
  fetch)
    mkdir -p "$CACHE"
    libs_ready || with_lock "$CACHE/.download.lock" "$DOWNLOAD_TIMEOUT" download_libs
    echo "$LIBS"
    ;;
  start)
    mkdir -p "$DATA"
    [[ -f $DATA/$MARKER_NAME ]] || : >"$DATA/$MARKER_NAME"
    with_lock "$DATA/.lock" "$((START_TIMEOUT + DOWNLOAD_TIMEOUT + 30))" do_start
    ;;
  stop)
    if [[ -d $DATA ]]; then
      with_lock "$DATA/.lock" "$((STOP_TIMEOUT + 60))" do_stop
    else
      do_stop
    fi
    ;;
  status)
    rc=0
    do_status || rc=$?
    exit "$rc"
    ;;
esac
