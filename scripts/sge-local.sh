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
#   SGE_LOCAL_SLOTS   slots of the queue all.q        (default: nproc, at least 2)
#   SGE_LOCAL_PE      a parallel environment added for multi-worker allocations (default hq;
#                     export HQPY_SGE_PE=<it> to use it)
#
# The recipe and the five fixes it needs (host alias, submit host, min_uid/min_gid, a queue, a
# 1 s scheduler) are in /work/shared/reference/slurm-local.md section 8. The configuration
# persists under /var/lib/gridengine and /var/spool/gridengine (a second `start` skips what is
# there). `start` is idempotent: a daemon already running (its spool pid file names a live
# process of that name) is kept. `stop` deletes every job and stops exactly the pids of the
# daemons' pid files (checking /proc/<pid>/comm first, so a recycled pid is never signalled).
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
dir=/tmp/hqpy-sge
pidfile=$dir/pids
host=$(hostname -s)
slots=${SGE_LOCAL_SLOTS:-$(($(nproc) > 2 ? $(nproc) : 2))}
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
    # Each try is bounded too: a qmaster that accepts but never answers cannot hang `start`.
    until timeout 10 "$@" >/dev/null 2>&1; do
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
    local rc=0
    EDITOR=$editor timeout 30 qconf "$@" || rc=$?
    rm -f "$editor"
    [ "$rc" -eq 0 ] || die "qconf $* failed (exit $rc)"
}

running_pid() { # pidfile-glob comm: the live daemon's pid, from its own pid file
    local f pid
    for f in $1; do
        [ -s "$f" ] || continue
        pid=$(tr -d ' \n' <"$f")
        if alive "$pid" "$2"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# The daemons write their pid files under the spool; sge_execd names its directory after the
# name its host resolves to (`localhost` here, through host_aliases), so it is a glob. A stale
# file from an earlier run is ignored: the pid must be alive and be the daemon.
QMASTER_PID="$spool/qmaster/qmaster.pid"
EXECD_PID="$spool/execd/*/execd.pid"

start_daemon() { # pidfile-glob comm program
    local pid deadline
    if pid=$(running_pid "$1" "$2"); then
        say "$2 already running ($pid)"
    else
        "$3" </dev/null >"$dir/$2.out" 2>&1 || die "$3 failed: $(cat "$dir/$2.out")"
        deadline=$((SECONDS + 30))
        until pid=$(running_pid "$1" "$2"); do
            [ "$SECONDS" -lt "$deadline" ] || die "$2 did not start within 30 s (pid file $1; see $dir/$2.out)"
            sleep 0.2
        done
    fi
    grep -qx "$pid $2" "$pidfile" 2>/dev/null || echo "$pid $2" >>"$pidfile"
}

any_alive() {
    running_pid "$QMASTER_PID" sge_qmaster >/dev/null || running_pid "$EXECD_PID" sge_execd >/dev/null
}

cmd_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    for prog in sge_qmaster sge_execd qconf qsub; do
        command -v "$prog" >/dev/null || [ -x "/usr/sbin/$prog" ] || die "$prog not found; install with:
  apt-get install -y --no-install-recommends gridengine-master gridengine-exec gridengine-client"
    done
    [ -d "$SGE_ROOT/$SGE_CELL/common" ] || die "no cell $SGE_ROOT/$SGE_CELL (the gridengine-master postinst creates it; reinstall: apt-get install --reinstall gridengine-master)"
    mkdir -p "$dir"
    touch "$pidfile"

    # 1. The host calls itself $host, but 127.0.0.1 resolves to localhost: alias them.
    echo "$host localhost" >"$SGE_ROOT/$SGE_CELL/common/host_aliases"
    echo "$host" >"$SGE_ROOT/$SGE_CELL/common/act_qmaster"
    mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine

    start_daemon "$QMASTER_PID" sge_qmaster /usr/sbin/sge_qmaster
    wait_for 30 "sge_qmaster to answer qconf" qconf -sh

    # 2. This host may submit.
    qconf -ss 2>/dev/null | grep -qx "$host" || qconf -as "$host" >/dev/null
    # 3. Jobs of root (uid 0) are allowed; before sge_execd starts, as it caches the values.
    if qconf -sconf global | grep -Eq '^min_(uid|gid) +[1-9]'; then
        edit_with 's/^min_uid .*/min_uid 0/; s/^min_gid .*/min_gid 0/' -mconf global >/dev/null
    fi
    # 5. Schedule every second, not every 15 s.
    if ! qconf -ssconf | grep -Eq '^schedule_interval +0:0:1$'; then
        edit_with 's/^schedule_interval .*/schedule_interval 0:0:1/; s/^flush_submit_sec .*/flush_submit_sec 1/; s/^flush_finish_sec .*/flush_finish_sec 1/' -msconf >/dev/null
    fi

    start_daemon "$EXECD_PID" sge_execd /usr/sbin/sge_execd
    wait_for 30 "sge_execd to register" sh -c "qconf -sel | grep -qx '$host'"

    # 4. A parallel environment and a queue (the default template names a missing PE `smp`).
    if ! qconf -sp "$pe" >/dev/null 2>&1; then
        edit_with "s/^pe_name .*/pe_name $pe/; s/^slots .*/slots 999/; s/^allocation_rule .*/allocation_rule \$round_robin/; s/^control_slaves .*/control_slaves TRUE/; s/^job_is_first_task .*/job_is_first_task FALSE/" -ap "$pe" >/dev/null
    fi
    # No load threshold: a busy shared machine (load above 1.75 per cpu) must not make the
    # queue drop every job ("queue instance dropped because it is overloaded").
    if ! qconf -sq all.q >/dev/null 2>&1; then
        edit_with "s/^qname .*/qname all.q/; s/^hostlist .*/hostlist $host/; s/^slots .*/slots $slots/; s/^pe_list .*/pe_list $pe/; s/^load_thresholds .*/load_thresholds NONE/" -aq all.q >/dev/null
    elif ! qconf -sq all.q | grep -Eq '^load_thresholds +NONE$'; then
        qconf -rattr queue load_thresholds NONE all.q >/dev/null
    fi
    wait_for 30 "queue all.q on $host to be available" sh -c "qstat -f -q all.q | grep -Eq '^all.q@[^ ]+ +[A-Z]+ +[0-9]+/[0-9]+/[0-9]+ +[-0-9.NA]+ +[a-z0-9-]+ *$'"
    say "running: queue all.q on $host ($slots slots), parallel environment $pe"
    echo "export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL HQPY_SGE_PE=$pe"
}

stop_daemon() { # pidfile-glob comm
    local pid deadline
    pid=$(running_pid "$1" "$2") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while alive "$pid" "$2" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid" "$2"; then
        say "$2 ($pid) ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

cmd_stop() {
    if ! any_alive; then
        rm -f "$pidfile"
        say "not running"
        return 0
    fi
    if running_pid "$QMASTER_PID" sge_qmaster >/dev/null; then
        timeout 20 qdel -u '*' '*' >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 15))
        while [ -n "$(timeout 10 qstat -u '*' 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
    fi
    # sge_execd first, then sge_qmaster (reverse start order); only the daemons named by their
    # own pid files, and only if /proc says that pid is that daemon.
    stop_daemon "$EXECD_PID" sge_execd
    stop_daemon "$QMASTER_PID" sge_qmaster
    rm -f "$pidfile"
    say "stopped"
}

cmd_status() {
    local pid down=0 name glob
    for name in sge_qmaster sge_execd; do
        if [ "$name" = sge_qmaster ]; then glob=$QMASTER_PID; else glob=$EXECD_PID; fi
        if pid=$(running_pid "$glob" "$name"); then echo "$name $pid running"; else
            echo "$name not running"
            down=$((down + 1))
        fi
    done
    [ "$down" -eq 0 ] || return 1
    timeout 10 qstat -f
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
