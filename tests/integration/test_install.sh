#!/usr/bin/env bash
# make install honours PREFIX and DESTDIR: binary, man pages, example, systemd unit
# pointing at the installed binary.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

root=$T/root
ETC_BEFORE=$(ls -la --time-style=full-iso /etc/starttls-proxy 2>&1)
if make -s -C "$REPO_ROOT" install DESTDIR="$root" PREFIX=/opt/stp >"$T/install.log" 2>&1; then
	pass install_ran
else
	fail install_ran "$(tail -n 5 "$T/install.log")"
fi
for f in bin/starttls-proxy share/man/man8/starttls-proxy.8 share/man/man5/starttls-proxy.conf.5 \
	share/doc/starttls-proxy/starttls-proxy.conf.example lib/systemd/system/starttls-proxy.service \
	lib/systemd/system/starttls-proxy.socket lib/sysusers.d/starttls-proxy.conf \
	share/doc/starttls-proxy/LICENSE share/doc/starttls-proxy/systemd-transparent.conf; do
	check "installed_${f##*/}" test -s "$root/opt/stp/$f"
done
# The installed configuration (SYSCONFDIR, default /etc) passes -t as it is, and a second
# install leaves an existing one alone.
CONF=$root/etc/starttls-proxy/starttls-proxy.conf
check installed_config_exists test -s "$CONF"
check installed_config_passes_check sh -c "'$root/opt/stp/bin/starttls-proxy' -t -c '$CONF' | grep -qx 'configuration OK'"
echo "; edited by the admin" >>"$CONF"
make -s -C "$REPO_ROOT" install DESTDIR="$root" PREFIX=/opt/stp >"$T/install2.log" 2>&1
check reinstall_keeps_config grep -qx '; edited by the admin' "$CONF"
check real_etc_untouched test "$ETC_BEFORE" = "$(ls -la --time-style=full-iso /etc/starttls-proxy 2>&1)"
check binary_runs grep -q 'wolfSSL' <("$root/opt/stp/bin/starttls-proxy" -V)
check unit_reads_sysconfdir grep -q '^ExecStart=/opt/stp/bin/starttls-proxy -c /etc/starttls-proxy/starttls-proxy.conf$' \
	"$root/opt/stp/lib/systemd/system/starttls-proxy.service"
make -s -C "$REPO_ROOT" install DESTDIR="$T/root2" PREFIX=/opt/stp SYSCONFDIR=/opt/etc >"$T/install3.log" 2>&1
check unit_follows_sysconfdir sh -c "grep -q '^ExecStart=/opt/stp/bin/starttls-proxy -c /opt/etc/starttls-proxy/starttls-proxy.conf\$' '$T/root2/opt/stp/lib/systemd/system/starttls-proxy.service' &&
	test -s '$T/root2/opt/etc/starttls-proxy/starttls-proxy.conf'"
check unit_points_at_prefix grep -q '^ExecStart=/opt/stp/bin/starttls-proxy ' \
	"$root/opt/stp/lib/systemd/system/starttls-proxy.service"
check nothing_outside_destdir test ! -e /opt/stp
check man_page_is_roff grep -q '^\.TH STARTTLS-PROXY.CONF 5' "$root/opt/stp/share/man/man5/starttls-proxy.conf.5"
finish
