#!/bin/sh
# /init of pvagent's nested-board L1 Linux (busybox). Embedded into the
# initramfs by xtask/src/nested.rs; see the module docs there.
#
# Loads KVM (kvm-amd on the emulated AMD-V CPU), fetches L2's command
# (a shell script setting "$@") and files from fw_cfg, runs L2 with
# ttyS1 = L2's QMP and ttyS2 = L2's guest serial, prints L2's exit status
# and powers off. Lines "pvagent-l1: <what> [<L1 uptime>]" are parsed by the host.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
say() {
    read -r up _ </proc/uptime
    echo "pvagent-l1: $* [$up]"
}
die() {
    say "error: $*"
    poweroff -f
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run/l2
say "init"

for m in $(cat /pvagent/load-order); do
    insmod "/pvagent/modules/$m.ko" || die "insmod $m failed"
done
[ -c /dev/kvm ] || die "no /dev/kvm after loading kvm-amd (is SVM in L1's -cpu?)"

fw=/sys/firmware/qemu_fw_cfg/by_name/opt/pvagent/l2
[ -r "$fw/args/raw" ] || die "fw_cfg opt/pvagent/l2/args is missing"
cat "$fw/args/raw" > /run/l2/args.sh || die "cannot read fw_cfg opt/pvagent/l2/args"

# Called by args.sh once per file the host passed (opt/pvagent/l2/file/NAME).
l2_file() {
    cat "$fw/file/$1/raw" > "/run/l2/$1" || die "cannot read fw_cfg opt/pvagent/l2/file/$1"
}

# Byte-exact ports before L2 opens them: no echo of early host bytes, no
# output processing. (QEMU 10.0.2's serial chardev alone was seen to pass all
# 256 byte values unchanged; this keeps it so whatever termios QEMU picks.)
for t in /dev/ttyS1 /dev/ttyS2; do
    stty -F "$t" 115200 raw -echo -echoe -echok -echoctl -echoke -opost -onlcr -ocrnl -onlret clocal -crtscts \
        || die "stty $t failed"
done

. /run/l2/args.sh
say "L2 start"
"$@" </dev/null >/dev/console 2>&1
say "L2 exit $?"
poweroff -f
sleep 60
