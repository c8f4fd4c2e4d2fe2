# Part of scenario.sh (sourced after the watchdog step): cgroup v2 the systemd way,
# read by test_systemd_cgroups.py.  The installed daemon is pointed at the
# host daemon's key (its tokens for the policies come with the job), short
# deployment windows and the sched_ext loader and object the host's verifier
# loaded; systemd restarts it, and systemd_cgroup_scenario.py drives it over
# D-Bus with the installed venv's Python.  Files in /run/job: the policies,
# their tokens, keys/, verified/, scx_loader and the scenario's scripts.
VENV_PYTHON=/usr/lib/schedcp/venv/bin/python
CONF=/etc/schedcp/schedcpd.toml
add() { sed -i "/^\[$1\]\$/a $2" "$CONF"; }
add bus 'call_timeout_seconds = 400'
add verifier 'trusted_keys_dir = "/run/job/keys"'
add verifier 'dynamic_seconds = 1.0'
add deployer 'baseline_seconds = 2.0'
add deployer 'canary_seconds = 4.0'
add deployer 'full_seconds = 3.0'
add metrics 'enabled = false'
# T2 as a user with a filled micro-VM cache has it: the loader and the object
# the host's verifier loaded (found by its digest, as the token binds it).
cat >> "$CONF" <<'END'
[plugins.scheduler]
scx_loader = "/run/job/scx_loader"
scx_object_dir = "/run/job/verified"
scx_verified_objects = "/run/job/verified"
END
run cgroups-config sh -c "grep -v '^#' $CONF | grep -v '^\$'"
# The steps below run the verifier sandbox's CPU hogs in this guest, under
# TCG (tens of times slower than hardware) beside the host's test lane: the
# daemon's threads were seen starved for 12-14 s (loop_monitor's warnings,
# the loop idle in epoll and the monitor late too) and once past the
# shipped WatchdogSec=30s, which killed it mid-call.  The watchdog step
# above checked the shipped unit; here it is scaled for emulation, and the
# test checks that it never fired.
mkdir -p /run/systemd/system/schedcpd.service.d
printf '[Service]\nWatchdogSec=120s\n' > /run/systemd/system/schedcpd.service.d/emulated.conf
systemctl daemon-reload
run cgroups-restart systemctl restart "$UNIT"
run backend sh -c "systemctl is-active $UNIT;
    journalctl -b -u $UNIT -o cat --no-pager | grep 'cgroup knobs'"
# SCHEDCP_GUEST_STEPS on the host picks steps (diagnosis): the file "steps".
cd /run/job && run scenario $VENV_PYTHON systemd_cgroup_scenario.py $(cat steps)
cd /tmp
run cgroups-journal sh -c "journalctl -b -u $UNIT -o cat --no-pager | tail -n 60"
run cgroups-stalls sh -c "journalctl -b -u $UNIT -o cat --no-pager |
    grep -E 'event loop (has not run|ran again)|[Ww]atchdog timeout|result .watchdog.' || true"
# The scenario's targets are transient services; gone, they leave no cgroup.
run cgroups-targets-stopped systemctl stop 'schedcp-t-*.service'
