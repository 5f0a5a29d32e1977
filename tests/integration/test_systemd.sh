#!/bin/sh
# test_systemd.sh: the unit file and the daemon's side of the systemd protocol.
#
# `make install` into a DESTDIR lays out binaries, unit and sysusers entry; systemd-analyze
# verify accepts the unit (when systemd-analyze exists); and a daemon started with NOTIFY_SOCKET
# and WATCHDOG_USEC set sends READY=1, STATUS=, WATCHDOG=1 pings and STOPPING=1, which a small
# listener on a Unix datagram socket records.

. "$(dirname "$0")/lib.sh"

DEST=$TMP_ROOT/dest
MAKEFLAGS= make --no-print-directory -s install BUILD="$BUILD" DESTDIR="$DEST" PREFIX=/usr/local >/dev/null
check "make install puts neuroshardd in BINDIR" test -x "$DEST/usr/local/bin/neuroshardd"
check "make install puts neuroctl in BINDIR" test -x "$DEST/usr/local/bin/neuroctl"
UNIT=$DEST/usr/local/lib/systemd/system/neuroshard.service
check "make install puts the unit in UNITDIR" test -f "$UNIT"
check "  ... with ExecStart in BINDIR" contains "$(cat "$UNIT")" "ExecStart=/usr/local/bin/neuroshardd"
check "make install puts the sysusers entry" test -f "$DEST/usr/local/lib/sysusers.d/neuroshard.conf"
check "the unit is Type=notify and hardened" contains "$(cat "$UNIT")" "Type=notify"
for h in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
    RestrictAddressFamilies= StateDirectory=neuroshard WatchdogSec=; do
    check "  ... $h" contains "$(cat "$UNIT")" "$h"
done

if command -v systemd-analyze >/dev/null 2>&1; then
    sed "s|@BINDIR@|$PWD/$BUILD|g" systemd/neuroshard.service.in >"$TMP_ROOT/neuroshard.service"
    out=$(systemd-analyze verify "$TMP_ROOT/neuroshard.service" 2>&1)
    check "systemd-analyze verify accepts the unit" test -z "$out"
    [ -z "$out" ] || echo "$out" | head -5
else
    echo "# skip: systemd-analyze is not installed"
fi

# ---- sd_notify: READY, STATUS, WATCHDOG, STOPPING -----------------------------------------
D=$TMP_ROOT/node
new_wallet "$D" >/dev/null
SOCK=$TMP_ROOT/notify.sock
/usr/bin/python3 - "$SOCK" "$TMP_ROOT/notified" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(0.2)
end = time.time() + 15
with open(sys.argv[2], "w") as out:
    while time.time() < end:
        try:
            msg = s.recv(4096).decode()
        except socket.timeout:
            continue
        out.write(msg.replace("\n", "|") + "\n")
        out.flush()
        if "STOPPING=1" in msg:
            break
PY
LISTENER=$!
PIDS="$PIDS $LISTENER"
i=0
while [ ! -S "$SOCK" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
export NOTIFY_SOCKET=$SOCK WATCHDOG_USEC=400000
check "daemon starts under a notify socket" start_node "$D"
unset NOTIFY_SOCKET WATCHDOG_USEC
sleep 1
kill -TERM "$NODE_PID"
wait_exit "$NODE_PID" 10
wait_exit "$LISTENER" 5
got=$(cat "$TMP_ROOT/notified")
check "sd_notify READY=1 after start" contains "$got" "READY=1"
check "sd_notify STATUS with the node id" contains "$got" "STATUS=node "
check "sd_notify WATCHDOG=1 pings at half the watchdog interval" \
    test "$(grep -c 'WATCHDOG=1' "$TMP_ROOT/notified")" -ge 3
check "sd_notify STOPPING=1 on SIGTERM" contains "$got" "STOPPING=1"

finish
