#!/bin/sh
# homelab.onebox.lxd_host's probe: everything the role (and base_image after it) checks, read at once.
# Arguments: LXD client, profile name, systemd units (one word, space separated), sysctl keys
# (one word, space separated), packages...
# Prints one JSON document: systemd (bool), units_down (units not enabled or not active, under
# systemd), installed (those of the packages dpkg has installed), sysctl (each key's current
# value; the first number of a multi-value key), daemon (bool: `lxc query /1.0`
# answered), and, when it did, LXD's pools, networks, the profile (null when missing) and the
# image aliases (all null when the daemon does not answer). Never fails on a missing piece.
set -u
lxc=$1 profile=$2 units=$3 sysctls=$4
shift 4
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM
# q URL FILE: the daemon's answer in FILE, no FILE when it fails (Incus answers an empty list with
# nothing at all: [] then); j FILE: the answer, or null.
q() {
  if timeout 30 "$lxc" query "$1" >"$tmp/$2" 2>/dev/null; then
    [ -s "$tmp/$2" ] || printf '[]' >"$tmp/$2"
  else
    rm -f "$tmp/$2"
  fi
}
j() { if [ -s "$tmp/$1" ]; then cat "$tmp/$1"; else printf null; fi; }
systemd=false units_down=0
if [ -e /run/systemd/system ]; then
  systemd=true
  for u in $units; do
    systemctl is-enabled --quiet "$u" 2>/dev/null && systemctl is-active --quiet "$u" 2>/dev/null ||
      units_down=$((units_down + 1))
  done
fi
installed=
if [ $# -gt 0 ]; then
  installed=$(dpkg-query --show --showformat='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null |
    awk '$2 == "installed" { printf "%s\"%s\"", sep, $1; sep = "," }')
fi
sysctl= sep=
for k in $sysctls; do
  v=$(cat "/proc/sys/$(echo "$k" | tr . /)" 2>/dev/null) || v=0
  sysctl="$sysctl$sep\"$k\": \"$v\""; sep=", "
done
daemon=false
if timeout 10 "$lxc" query /1.0 >/dev/null 2>&1; then
  daemon=true
  q '/1.0/storage-pools?recursion=1' pools &
  q '/1.0/networks?recursion=1' networks &
  q "/1.0/profiles/$profile" profile &
  q '/1.0/images/aliases?recursion=1' aliases &
  wait
fi
printf '{"systemd": %s, "units_down": %s, "installed": [%s], "sysctl": { %s }, "daemon": %s,\n "pools": %s,\n "networks": %s,\n "profile": %s,\n "aliases": %s}\n' \
  "$systemd" "$units_down" "$installed" "$sysctl" "$daemon" "$(j pools)" "$(j networks)" "$(j profile)" "$(j aliases)"
