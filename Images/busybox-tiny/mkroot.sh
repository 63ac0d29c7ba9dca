#!/bin/sh
# Assembles the busybox-tiny root file system in $1 from the build stage.
set -eu
out=$1
kver=$(ls /lib/modules | sort -V | tail -n 1)
mkdir -p "$out"
cd "$out"
mkdir -p bin sbin usr/bin usr/sbin etc/init.d proc sys dev tmp root run var/log boot mnt
chmod 1777 tmp
cp /bin/busybox bin/busybox
for applet in $(/bin/busybox --list-full); do
  [ -e "$applet" ] || ln -s /bin/busybox "$applet"
done
cp "/boot/vmlinuz-$kver" boot/

cat > etc/os-release <<OS
NAME="busybox-tiny"
ID=busybox-tiny
PRETTY_NAME="busybox-tiny (Debian kernel $kver)"
OS
cat > etc/passwd <<'P'
root:x:0:0:root:/root:/bin/sh
P
cat > etc/group <<'G'
root:x:0:
G
printf 'root:*:19000:0:99999:7:::\n' > etc/shadow
chmod 600 etc/shadow
echo /bin/sh > etc/shells
cat > etc/inittab <<'T'
::sysinit:/etc/init.d/rcS
ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
T
cat > etc/init.d/rcS <<'R'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -o remount,rw /
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
[ -s /etc/hostname ] && hostname -F /etc/hostname
echo "busybox-tiny: system ready"
R
chmod 755 etc/init.d/rcS

# The initramfs: busybox, the modules that reach the root disk, and an /init
# that finds root=UUID=..., mounts it and switches to it.
ird=$(mktemp -d)
mkdir -p "$ird/bin" "$ird/proc" "$ird/sys" "$ird/dev" "$ird/newroot" "$ird/modules"
cp /bin/busybox "$ird/bin/busybox"
for m in virtio_pci virtio_blk ext4; do
  modprobe -S "$kver" --show-depends "$m"
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > /tmp/modules
: > "$ird/modules/order"
while read -r ko; do
  cp "$ko" "$ird/modules/"
  basename "$ko" >> "$ird/modules/order"
done < /tmp/modules
cat > "$ird/init" <<'I'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for ko in $(cat /modules/order); do insmod "/modules/$ko" 2>/dev/null; done
root=
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=*) root=${arg#root=} ;; esac
done
dev=
i=0
while [ $i -lt 100 ]; do
  dev=$(findfs "$root" 2>/dev/null) && break
  sleep 0.1
  i=$((i + 1))
done
if [ -z "$dev" ] || ! mount -o ro -t ext4 "$dev" /newroot; then
  echo "ALERT! $root does not exist. Dropping to a shell!"
  exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
I
chmod 755 "$ird/init"
(cd "$ird" && find . | cpio -H newc -o --quiet | gzip -9) > "boot/initrd.img-$kver"
rm -rf "$ird"
