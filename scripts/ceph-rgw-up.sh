#!/usr/bin/env bash
# A real single-node Ceph object store for Kiln's object-storage tests: one monitor, one memstore
# OSD and the RADOS gateway (S3) on loopback, no systemd, no cephx; ~15 s once the packages are in.
# Creates S3 user testkey/testsecret and bucket "profiles".
#
# Adapted from the team's shared ../shared/scripts/ceph-rgw-up.sh (carried here so a clean clone
# has it): it also writes DIR/rgw-start.sh, which (re)starts only the gateway, so tests can stop
# the gateway's PID (DIR/run/ceph-client.rgw.a.pid) for an outage and bring it back.
#
# Usage: scripts/ceph-rgw-up.sh DIR [RGW_PORT]  -> S3 at http://127.0.0.1:RGW_PORT
# Env: MONPORT, MON2PORT (monitor ports, default 6789 and 3300).
set -euo pipefail
D=${1:?dir}; PORT=${2:-7480}; MONPORT=${MONPORT:-6789}; MON2PORT=${MON2PORT:-3300}
D=$(mkdir -p "$D" && cd "$D" && pwd)
command -v radosgw >/dev/null && command -v uuidgen >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common uuid-runtime curl >/dev/null
mkdir -p $D/{mon,osd,run,log,rgw}; FSID=$(uuidgen); : > $D/keyring
cat > $D/ceph.conf <<CONF
[global]
fsid = $FSID
mon initial members = a
mon host = [v2:127.0.0.1:$MON2PORT,v1:127.0.0.1:$MONPORT]
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 1
run dir = $D/run
admin socket = $D/run/\$cluster-\$name.asok
log file = $D/log/\$cluster-\$name.log
pid file = $D/run/\$cluster-\$name.pid
keyring = $D/keyring
mon data = $D/mon/\$cluster-\$id
osd data = $D/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = 2147483648
osd max object name len = 460
osd max object namespace len = 64
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $D/rgw
CONF
C="-c $D/ceph.conf"
monmaptool --create --addv a "[v2:127.0.0.1:$MON2PORT,v1:127.0.0.1:$MONPORT]" --fsid $FSID $D/monmap >/dev/null
ceph-mon $C --mkfs -i a --monmap $D/monmap --keyring $D/keyring
ceph-mon $C -i a                                  # daemonizes; pid in $D/run/ceph-mon.a.pid
OSD=$(timeout 60 ceph $C osd create); mkdir -p $D/osd/ceph-$OSD
ceph-osd $C -i $OSD --mkfs --osd-uuid $(uuidgen) 2>/dev/null
ceph-osd $C -i $OSD 2>/dev/null                   # pid in $D/run/ceph-osd.$OSD.pid
# radosgw forces auth_client_required=cephx and ms_mon_client_mode=secure by default: override on
# the command line. It daemonizes; its pid is in $D/run/ceph-client.rgw.a.pid.
cat > $D/rgw-start.sh <<START
#!/usr/bin/env bash
set -euo pipefail
radosgw $C -n client.rgw.a --auth-client-required none --ms-mon-client-mode crc --client-mount-timeout 60
for i in \$(seq 1 300); do curl -s -o /dev/null http://127.0.0.1:$PORT/ && exit 0; sleep 0.2; done
echo "radosgw did not answer on port $PORT" >&2; exit 1
START
chmod +x $D/rgw-start.sh
$D/rgw-start.sh
radosgw-admin $C --auth-client-required none --ms-mon-client-mode crc \
  user create --uid=test --display-name=test --access-key=testkey --secret-key=testsecret >/dev/null
curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user testkey:testsecret -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" -X PUT http://127.0.0.1:$PORT/profiles
echo "rgw up on http://127.0.0.1:$PORT pids: $(cat $D/run/*.pid | tr '\n' ' ')"
