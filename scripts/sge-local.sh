#!/usr/bin/env bash
# A real Grid Engine (sge_qmaster + sge_execd, Debian's gridengine 8.1.9) on this machine, for
# the Grid Engine backend tests.
#
#   scripts/sge-local.sh start|stop|status
#
# Needs root and the Debian packages (it never installs them):
#   apt-get install -y --no-install-recommends gridengine-master gridengine-exec gridengine-client
#
# Knobs (environment):
#   SGE_LOCAL_SLOTS   slots of the queue all.q        (default: nproc)
#   SGE_LOCAL_PE      a parallel environment added for multi-worker allocations (default hq;
#                     export HQPY_SGE_PE=<it> to use it)
#
# The recipe and the five fixes it needs (host alias, submit host, min_uid/min_gid, a queue, a
# 1 s scheduler) are in /work/shared/reference/slurm-local.md section 8. The configuration
# persists under /var/lib/gridengine and /var/spool/gridengine (a second `start` skips what is
# there). `start` records the daemons' pids in $dir/pids; `stop` deletes every job and stops
# exactly those pids (checking /proc/<pid>/comm first, so a recycled pid is never signalled).
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
dir=/tmp/hqpy-sge
pidfile=$dir/pids
host=$(hostname -s)
slots=${SGE_LOCAL_SLOTS:-$(nproc)}
pe=${SGE_LOCAL_PE:-hq}
spool=/var/spool/gridengine

die() { echo "sge-local: $*" >&2; exit 1; }
say() { echo "sge-local: $*" >&2; }

alive() { # pid comm
    [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
        && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

wait_for() { # seconds description command...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what"
        sleep 0.2
    done
}

# qconf opens $EDITOR on a temporary file for -mconf/-msconf/-aq/-ap: edit it with sed instead.
edit_with() { # sed-expression qconf-args...
    local expr=$1 editor
    shift
    editor=$(mktemp "$dir/editor.XXXXXX")
    printf '#!/bin/bash\nsed -i -e %q "$1"\n' "$expr" >"$editor"
    chmod +x "$editor"
    EDITOR=$editor qconf "$@"
    rm -f "$editor"
}

record_pid() { # pidfile comm
    local deadline=$((SECONDS + 15))
    until [ -s "$1" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "no pid file $1 for $2"
        sleep 0.2
    done
    echo "$(tr -d ' \n' <"$1") $2" >>"$pidfile"
}

any_alive() {
    local pid name
    while read -r pid name; do
        if alive "$pid" "$name"; then return 0; fi
    done <"$pidfile"
    return 1
}

cmd_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    for prog in sge_qmaster sge_execd qconf qsub; do
        command -v "$prog" >/dev/null || [ -x "/usr/sbin/$prog" ] || die "$prog not found; install with:
  apt-get install -y --no-install-recommends gridengine-master gridengine-exec gridengine-client"
    done
    mkdir -p "$dir"
    if [ -s "$pidfile" ] && any_alive; then
        say "already running (pids in $pidfile)"
        return 0
    fi
    : >"$pidfile"

    # 1. The host calls itself $host, but 127.0.0.1 resolves to localhost: alias them.
    echo "$host localhost" >"$SGE_ROOT/$SGE_CELL/common/host_aliases"
    echo "$host" >"$SGE_ROOT/$SGE_CELL/common/act_qmaster"
    mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine

    /usr/sbin/sge_qmaster </dev/null >"$dir/qmaster.out" 2>&1
    record_pid "$spool/qmaster/qmaster.pid" sge_qmaster
    wait_for 30 "sge_qmaster" qconf -sh

    # 2. This host may submit.
    qconf -ss 2>/dev/null | grep -qx "$host" || qconf -as "$host"
    # 3. Jobs of root (uid 0) are allowed; before sge_execd starts, as it caches the values.
    edit_with 's/^min_uid .*/min_uid 0/; s/^min_gid .*/min_gid 0/' -mconf global
    # 5. Schedule every second, not every 15 s.
    edit_with 's/^schedule_interval .*/schedule_interval 0:0:1/; s/^flush_submit_sec .*/flush_submit_sec 1/; s/^flush_finish_sec .*/flush_finish_sec 1/' -msconf

    /usr/sbin/sge_execd </dev/null >"$dir/execd.out" 2>&1
    record_pid "$spool/execd/$host/execd.pid" sge_execd
    wait_for 30 "sge_execd" sh -c "qconf -sel | grep -qx '$host'"

    # 4. A parallel environment and a queue (the default template names a missing PE `smp`).
    if ! qconf -sp "$pe" >/dev/null 2>&1; then
        edit_with "s/^pe_name .*/pe_name $pe/; s/^slots .*/slots 999/; s/^allocation_rule .*/allocation_rule \$round_robin/; s/^control_slaves .*/control_slaves TRUE/; s/^job_is_first_task .*/job_is_first_task FALSE/" -ap "$pe"
    fi
    if ! qconf -sq all.q >/dev/null 2>&1; then
        edit_with "s/^qname .*/qname all.q/; s/^hostlist .*/hostlist $host/; s/^slots .*/slots $slots/; s/^pe_list .*/pe_list $pe/" -aq all.q
    fi
    wait_for 30 "queue all.q" sh -c "qstat -f -q all.q | grep -q '^all.q@'"
    say "running: queue all.q on $host ($slots slots), parallel environment $pe"
    echo "export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL HQPY_SGE_PE=$pe"
}

cmd_stop() {
    if [ ! -s "$pidfile" ]; then
        say "not running (no $pidfile)"
        return 0
    fi
    if any_alive; then
        qdel -u '*' '*' >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 15))
        while [ -n "$(qstat -u '*' 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
    fi
    # sge_execd first, then sge_qmaster (reverse start order).
    local pid name
    tac "$pidfile" | while read -r pid name; do
        if alive "$pid" "$name"; then kill -TERM "$pid" 2>/dev/null || true; fi
        local deadline=$((SECONDS + 10))
        while alive "$pid" "$name" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if alive "$pid" "$name"; then
            say "$name ($pid) ignored SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$pidfile"
    say "stopped"
}

cmd_status() {
    if [ ! -s "$pidfile" ]; then
        echo "not running"
        return 1
    fi
    local pid name down=0
    while read -r pid name; do
        if alive "$pid" "$name"; then echo "$name $pid running"; else
            echo "$name $pid gone"
            down=$((down + 1))
        fi
    done <"$pidfile"
    [ "$down" -eq 0 ] && qstat -f
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
