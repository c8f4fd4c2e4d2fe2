# The job of tests/systemd_guest: run in the Debian guest as root, in /tmp,
# with systemd as PID 1.  Every check is a step reported on the console
# (lib.sh: `report STEP EVENT [JSON-FIELD...]`, `run STEP CMD...`); the
# tests read the report.  Files: /run/job/new/schedcp_*.deb (this build),
# /run/job/policy.toml, and with SCHEDCP_GUEST_UPGRADE=1
# /run/job/prev/schedcp_*.deb (the previous build, installed first);
# cgroups.sh (sourced after the watchdog step) and its files.
. /usr/local/lib/schedcp-guest/lib.sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
DEST=org.schedcp.Control1
OBJ=/org/schedcp/Control1
IFACE=org.schedcp.Control1.Manager
UNIT=schedcpd.service

# (VerifyPolicy runs a dynamic test: well over busctl's default 25 s under TCG.)
call() { busctl --system --json=short --timeout=600 call "$DEST" "$OBJ" "$IFACE" "$@"; }
# field N: the N-th out argument of a busctl --json=short reply on stdin
field() { python3.11 -c 'import json, sys; print(json.load(sys.stdin)["data"][int(sys.argv[1])])' "$1"; }
prop() { systemctl show -P "$1" "$UNIT"; }
# wait_for SECONDS CMD...: poll CMD (every 0.5 s) until it succeeds, or SECONDS passed
wait_for() {
    _deadline=$(( ${1} + $(cut -d. -f1 /proc/uptime) )); shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(cut -d. -f1 /proc/uptime)" -ge $_deadline ] && return 1
        sleep 0.5
    done
}
# stamped CMD...: CMD's output lines prefixed with the guest uptime; CMD's status
stamped() {
    { "$@" 2>&1; echo $? > /tmp/.stamped.rc; } | while IFS= read -r _line; do
        echo "$(up) $_line"
    done
    return "$(cat /tmp/.stamped.rc)"
}
unit_report() {
    report "$1" unit "\"active\":\"$(prop ActiveState)\"" "\"sub\":\"$(prop SubState)\"" \
        "\"type\":\"$(prop Type)\"" "\"pid\":$(prop MainPID)" "\"restarts\":$(prop NRestarts)" \
        "\"watchdog\":\"$(prop WatchdogUSec)\"" \
        "\"watchdog_us\":$(prop WatchdogTimestampMonotonic)" \
        "\"active_us\":$(prop ActiveEnterTimestampMonotonic)" \
        "\"version\":\"$(dpkg-query -W -f='${Version}' schedcp 2>/dev/null)\"" \
        "\"uptime_s\":$(up)"
}
policy_of() { chrt -p "$1" | sed -n 's/.*current scheduling policy: //p'; }
is_idle() { [ "$(policy_of "$1")" = SCHED_IDLE ]; }
both_idle() { is_idle "$HOG1" && is_idle "$HOG2"; }
not_idle() { ! is_idle "$1"; }

# What the package may change: kernel values, cgroups, files, accounts.
kernel_state() {
    for f in /proc/sys/kernel/sched_*; do echo "$f=$(cat "$f" 2>/dev/null)"; done
    echo "sched_ext=$(cat /sys/kernel/sched_ext/state 2>/dev/null)"
    find /sys/fs/cgroup -type d | sort
}
files() { find /etc /usr /opt /srv /var/lib /var/cache /var/log -xdev 2>/dev/null | sort; }
run system sh -c 'cat /proc/1/comm; stat -fc %T /sys/fs/cgroup; cat /etc/debian_version;
    systemctl is-system-running; systemctl is-active dbus.service;
    busctl --system call org.freedesktop.PolicyKit1 /org/freedesktop/PolicyKit1/Authority \
        org.freedesktop.DBus.Peer Ping && systemctl is-active polkit.service'
# The polkit matrix's users (made before the snapshot: useradd leaves
# /etc/subuid- behind); `member` joins group schedcp once the package made it.
useradd -m member
useradd -m stranger
kernel_state > /tmp/kernel.before
files > /tmp/files.before
getent passwd | cut -d: -f1 | sort > /tmp/users.before
getent group | cut -d: -f1 | sort > /tmp/groups.before

# Targets of the policy (its batch group matches comm t1_hog).
cp /usr/bin/sleep /tmp/t1_hog
/tmp/t1_hog 100000 & HOG1=$!
/tmp/t1_hog 100000 & HOG2=$!
report targets pids "\"hog1\":$HOG1" "\"hog2\":$HOG2" "\"before\":\"$(policy_of $HOG1)\""

# -- install this build (upgrading the previous one when the job brings it) ------
if [ -d /run/job/prev ]; then
    cd /run/job/prev && run install-prev stamped apt-get install -y ./schedcp_*.deb
    unit_report install-prev
fi
cd /run/job/new && run install stamped apt install -y ./schedcp_*.deb
cd /tmp
unit_report install
report ready boot "\"multi_user_us\":$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)" \
    "\"schedcpd_us\":$(prop ActiveEnterTimestampMonotonic)"
run status-text prop StatusText
run owner busctl --system status "$DEST"
run getstatus call GetStatus
run cgroup sh -c "cat /proc/$(prop MainPID)/cgroup; systemctl show -P ControlGroup $UNIT"
run caps sh -c "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/$(prop MainPID)/status"

# -- reload keeps the process --------------------------------------------------
PID=$(prop MainPID)
run reload systemctl reload "$UNIT"
wait_for 30 sh -c "journalctl -b -u $UNIT --no-pager | grep -q 'reloading configuration (SIGHUP)'"
LOGGED=$?
report reload after "\"pid_before\":$PID" "\"pid_after\":$(prop MainPID)" \
    "\"logged\":$LOGGED" "\"active\":\"$(prop ActiveState)\""

# -- a verified policy deployed, then `systemctl stop` restores ------------------
deploy() {
    _id=$(call SubmitPolicy s "$(cat /run/job/policy.toml)" | field 0)
    report "$1" submitted "\"id\":\"$_id\""
    call VerifyPolicy s "$_id" > /tmp/verify.json 2>/tmp/verify.err
    _rc=$?
    sed "s/^/@@OUT:$1 /" /tmp/verify.err
    _token=$(field 0 < /tmp/verify.json)
    report "$1" verified "\"status\":$_rc"
    _dep=$(call Deploy s "$_token" 2>/tmp/deploy.err | field 0)
    sed "s/^/@@OUT:$1 /" /tmp/deploy.err
    report "$1" deployed "\"id\":\"$_dep\""
    wait_for 180 both_idle  # canary (one target), then full
    report "$1" applied "\"hog1\":\"$(policy_of $HOG1)\"" "\"hog2\":\"$(policy_of $HOG2)\""
    run "$1-deployment" call GetDeployment s "$_dep"
}
deploy deploy1
run stop systemctl stop "$UNIT"
report stop after "\"active\":\"$(prop ActiveState)\"" "\"result\":\"$(prop Result)\"" \
    "\"hog1\":\"$(policy_of $HOG1)\"" "\"hog2\":\"$(policy_of $HOG2)\""
# -- D-Bus activation: the first call to the stopped daemon starts the unit ------
run start call GetStatus
unit_report start
run activation sh -c "journalctl -b -u dbus.service --no-pager -o cat | grep 'org.schedcp.Control1'"

# -- the watchdog: systemd sees pings (the timestamp moves), nothing is killed ---
FIRST=$(prop WatchdogTimestampMonotonic)
wait_for 60 sh -c "[ \"\$(systemctl show -P WatchdogTimestampMonotonic $UNIT)\" != $FIRST ]"
report watchdog pinged "\"first_us\":$FIRST" "\"now_us\":$(prop WatchdogTimestampMonotonic)"
unit_report watchdog

# -- cgroup v2 the systemd way (T1 groups as unit properties, T2 under the unit),
# and kill -9 with a deployment live: systemd restarts the daemon, which
# restores from its journal (cgroups.sh; test_systemd_cgroups.py) ----------------
. /run/job/cgroups.sh

# -- hardening in force on the running unit ------------------------------------
run security systemd-analyze security --no-pager "$UNIT"

# -- polkit: real polkitd, a member of group schedcp, a stranger, root ----------
usermod -a -G schedcp member
matrix() {
    _step=$1
    for user in root member stranger; do
        for m in GetStatus SubmitPolicy Reload; do
            case $m in
                SubmitPolicy) set -- s "$(cat /run/job/policy.toml)" ;;
                *) set -- ;;
            esac
            runuser -u "$user" -- busctl --system call "$DEST" "$OBJ" "$IFACE" $m "$@" \
                > /tmp/pk.out 2>&1
            _rc=$?
            report "$_step" call "\"user\":\"$user\"" "\"method\":\"$m\"" "\"status\":$_rc" \
                "\"error\":\"$(head -c 200 /tmp/pk.out | tr -d '"\\' | tr '\n' ' ')\""
        done
    done
}
matrix polkit
# The grant docs/dbus-api.md suggests: org.schedcp.all to group schedcp.
cat > /etc/polkit-1/rules.d/50-schedcp-test.rules <<'EOF'
polkit.addRule(function(action, subject) {
    if (action.id == "org.schedcp.all" && subject.isInGroup("schedcp"))
        return polkit.Result.YES;
});
EOF
wait_for 60 runuser -u member -- sh -c 'exec pkcheck --action-id org.schedcp.admin --process $$'
LOADED=$?
report polkit-rule loaded "\"status\":$LOADED"
matrix polkit-granted

# -- schedcp-agent.service: the agent, as its own user, optimizes a workload -----
# (while group schedcp holds the grant above, as docs/packaging.md tells an
# administrator to give it).  Three CPU-bound processes on two CPUs appear
# after the watcher started: a new heavy tree in its scope, one action.
# Opt-in (SCHEDCP_GUEST_AGENT=1 on the host: the file agent is not empty):
# ~90 s of TCG that CI's 30 minutes no longer have (docs/packaging.md).
if [ -s /run/job/agent ]; then
    cat > /etc/schedcp/agent.env <<'EOF'
SCHEDCP_AGENT_ARGS=--json --match t1_spin --goal throughput --poll 1 --heavy-cpu 0.1 --psi-threshold 100 --max-actions 1 --duration 900 --observe-seconds 2 --max-iterations 1
EOF
    chmod 600 /etc/schedcp/agent.env
    AGENT=schedcp-agent.service
    AGENT_UID=$(id -u schedcp-agent)
    run agent-start systemctl start "$AGENT"
    wait_for 30 systemctl is-active -q "$AGENT"
    report agent started "\"uid\":$AGENT_UID" \
        "\"process_uid\":$(stat -c %u /proc/$(systemctl show -P MainPID $AGENT) 2>/dev/null || echo -1)" \
        "\"active\":\"$(systemctl show -P ActiveState $AGENT)\""
    sleep 3  # the watcher's first polls see an empty scope
    cp /usr/bin/yes /tmp/t1_spin
    SPINS=""
    for i in 1 2 3; do setsid /tmp/t1_spin > /dev/null 2>&1 & SPINS="$SPINS $!"; done
    report agent spinners "\"pids\":\"$(echo $SPINS)\""
    wait_for 900 sh -c "! systemctl is-active -q $AGENT"
    report agent ended "\"result\":\"$(systemctl show -P Result $AGENT)\"" \
        "\"status\":\"$(systemctl show -P ExecMainStatus $AGENT)\"" \
        "\"active\":\"$(systemctl show -P ActiveState $AGENT)\""
    # The watcher's JSON report (stdout to the journal) and the daemon's record of it.
    run agent-journal sh -c "journalctl -b -u $AGENT --no-pager -o cat"
    run agent-deployments call ListDeployments
    kill $SPINS
    rm -f /etc/schedcp/agent.env /tmp/t1_spin
fi
rm -f /etc/polkit-1/rules.d/50-schedcp-test.rules

# -- purge removes everything and leaves the kernel state as found ---------------
run purge stamped apt-get purge -y schedcp
run purge-state sh -c "dpkg-query -W -f='\${Status}\n' schedcp 2>&1; systemctl show -P LoadState $UNIT"
kill $HOG1 $HOG2
kernel_state > /tmp/kernel.after
files > /tmp/files.after
getent passwd | cut -d: -f1 | sort > /tmp/users.after
getent group | cut -d: -f1 | sort > /tmp/groups.after
run kernel-diff diff /tmp/kernel.before /tmp/kernel.after
run files-diff diff /tmp/files.before /tmp/files.after
run accounts-diff sh -c 'diff /tmp/users.before /tmp/users.after && diff /tmp/groups.before /tmp/groups.after'
