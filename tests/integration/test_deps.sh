#!/usr/bin/env bash
# `make deps` (scripts/deps.sh) is safe on a real host, a mail host included:
# 1. what it chooses to install: `build` (make demo) only the build's packages; `test` the
#    peers too; with another MTA installed, never the postfix package (which would replace
#    it) but Postfix's libraries and a private copy of Postfix;
# 2. on a host where a Postfix service runs, packages reported missing get installed and
#    the service packages are reinstalled for real (so their maintainer scripts run), and
#    the running Postfix is never stopped, restarted or disabled: every service action is
#    denied by the policy-rc.d that deps.sh puts in place for the install only, and
#    deps.sh itself makes no systemctl/service call; the host's policy-rc.d and apt sources
#    are left as they were;
# 3. the private Postfix copy runs: a message goes through it.
# Service-control commands are shims (tests/ cannot run systemd): they record each call
# and, as on a real host, one that is not denied stops the running Postfix. APT runs dpkg,
# and so the maintainer scripts, with PATH set to its DPkg::Path: an APT_CONFIG file puts
# the shims first there, or no maintainer script would ever reach them.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

DEPS=$REPO_ROOT/scripts/deps.sh
REAL_PREFIX=$(cat /var/cache/starttls-proxy/wolfssl.current 2>/dev/null)
if [ ! -f "$REAL_PREFIX/lib/libwolfssl.a" ]; then
	fail setup "no wolfSSL in /var/cache/starttls-proxy (run make deps)"
	finish
fi

# --- 1. the choice of packages, with apt and dpkg replaced by recorders -----------------------
mkdir -p "$T/fake/bin" "$T/fake/deps"
ln -s "$REAL_PREFIX" "$T/fake/deps/$(basename "$REAL_PREFIX")"
cat >"$T/fake/bin/dpkg-query" <<'EOF'
#!/bin/sh
# Nothing is installed, but FAKE_MTA when it is set (a mail-transport-agent).
case "$*" in
*'${Provides}'*) [ -n "$FAKE_MTA" ] && printf '%s\tinstall ok installed\tmail-transport-agent\n' "$FAKE_MTA"; exit 0 ;;
esac
exit 1
EOF
cat >"$T/fake/bin/apt-get" <<'EOF'
#!/bin/sh
echo "apt-get $*" >>"$FAKE_LOG"
case "$*" in
*download*) touch postfix_3.7.11-0+deb12u1_amd64.deb ;;
esac
exit 0
EOF
cat >"$T/fake/bin/apt-cache" <<'EOF'
#!/bin/sh
case "$*" in
policy*) echo "  Candidate: 3.7.11-0+deb12u1" ;;
depends*) printf 'postfix\n  Depends: libc6\n  Depends: libicu72\n  Depends: cpio\n  Depends: netbase\n' ;;
esac
EOF
cat >"$T/fake/bin/dpkg-deb" <<'EOF'
#!/bin/sh
echo "dpkg-deb $*" >>"$FAKE_LOG"
EOF
printf '#!/bin/sh\ncat >/dev/null\n' >"$T/fake/bin/debconf-set-selections"
for t in groupadd useradd; do printf '#!/bin/sh\necho "%s $*" >>"$FAKE_LOG"\n' "$t" >"$T/fake/bin/$t"; done
chmod +x "$T/fake/bin/"*

# fake_run NAME WHAT [env...]: deps.sh WHAT with the recorders; the packages it installed
# (one per line, sorted) in $T/NAME.pkgs, everything it ran in $T/NAME.log.
fake_run() {
	local name=$1 what=$2
	shift 2
	: >"$T/$name.log"
	env PATH="$T/fake/bin:$PATH" FAKE_LOG="$T/$name.log" STP_DEPS_DIR="$T/fake/deps" \
		STP_POLICY_RC="$T/fake/policy-rc.d" "$@" bash "$DEPS" "$what" >"$T/$name.out" 2>&1
	echo $? >"$T/$name.rc"
	grep '^apt-get install -y' "$T/$name.log" | tail -n 1 | tr ' ' '\n' |
		grep -v '^-\|^apt-get$\|^install$' | sort >"$T/$name.pkgs"
}
fake_run build build
fake_run test test
fake_run mta test FAKE_MTA=exim4-daemon-light

has_pkg() { grep -qx "$2" "$T/$1.pkgs"; }
if [ "$(cat "$T/build.rc")" = 0 ] && has_pkg build libuv1-dev && has_pkg build build-essential &&
	! has_pkg build postfix && ! has_pkg build haproxy && ! has_pkg build stunnel4 &&
	! has_pkg build python3-aiosmtpd && ! has_pkg build swaks; then
	pass demo_deps_install_only_the_build
else
	fail demo_deps_install_only_the_build "rc $(cat "$T/build.rc"): $(tr '\n' ' ' <"$T/build.pkgs")"
fi
if has_pkg test postfix && has_pkg test haproxy && has_pkg test stunnel4 && has_pkg test libuv1-dev; then
	pass test_deps_install_the_peers
else
	fail test_deps_install_the_peers "$(tr '\n' ' ' <"$T/test.pkgs")"
fi
if [ "$(cat "$T/mta.rc")" = 0 ] && ! has_pkg mta postfix && has_pkg mta libicu72 &&
	grep -q '^apt-get download .*postfix=' "$T/mta.log" && grep -q '^dpkg-deb -x ' "$T/mta.log" &&
	[ "$(cat "$T/fake/deps/postfix.current" 2>/dev/null)" = "$T/fake/deps/postfix-root" ]; then
	pass other_mta_kept_postfix_private
else
	fail other_mta_kept_postfix_private "rc $(cat "$T/mta.rc"): $(tr '\n' ' ' <"$T/mta.pkgs") | $(tail -n 3 "$T/mta.out")"
fi
if [ ! -e "$T/fake/policy-rc.d" ] && grep -q 'services kept from starting' "$T/test.out"; then
	pass policy_rc_removed_after_install
else
	fail policy_rc_removed_after_install "$(ls -l "$T/fake/policy-rc.d" 2>&1)"
fi

# --- 2. a running Postfix survives a real install ----------------------------------------------
start_sink hostsink
pf_start host "$(port_of hostsink)" smtp=none
HOST_PID=$(tr -d ' ' <"$T/pf-host/spool/pid/master.pid")
mkdir -p "$T/shims"
# service NAME ACTION ...: what the host would do (stop the running Postfix) unless denied.
cat >"$T/shims/svc-common" <<EOF
#!/bin/bash
# \$1: the tool, \$2: service, \$3: action; \$4: 1 when the tool asks policy-rc.d first
tool=\$1 name=\$2 action=\$3 ask=\$4
if [ "\$ask" = 1 ] && [ -x /usr/sbin/policy-rc.d ]; then
	/usr/sbin/policy-rc.d "\$name" "\$action" >/dev/null 2>&1
	if [ \$? = 101 ]; then echo "denied \$tool \$name \$action" >>"$T/svc.calls"; exit 0; fi
fi
echo "ACTED \$tool \$name \$action" >>"$T/svc.calls"
case \$action in
stop|restart|force-reload|try-restart|reload-or-restart|disable|mask|force-stop)
	[ "\$name" = postfix ] && kill -TERM $HOST_PID ;;
esac
exit 0
EOF
args_of='set -- $(for a in "$@"; do case $a in -*) ;; *) echo "$a" ;; esac; done)'
cat >"$T/shims/invoke-rc.d" <<EOF
#!/bin/bash
$args_of
exec bash "$T/shims/svc-common" invoke-rc.d "\$1" "\$2" 1
EOF
cat >"$T/shims/deb-systemd-invoke" <<EOF
#!/bin/bash
$args_of
a=\$1; shift
for u in "\$@"; do bash "$T/shims/svc-common" deb-systemd-invoke "\${u%.service}" "\$a" 1; done
EOF
cat >"$T/shims/service" <<EOF
#!/bin/bash
exec bash "$T/shims/svc-common" service "\$1" "\$2" 0
EOF
cat >"$T/shims/systemctl" <<EOF
#!/bin/bash
$args_of
case \$1 in
stop|restart|disable|mask|try-restart|reload-or-restart)
	a=\$1; shift
	for u in "\$@"; do bash "$T/shims/svc-common" systemctl "\${u%.service}" "\$a" 0; done ;;
*) echo "other systemctl \$*" >>"$T/svc.calls" ;;
esac
exit 0
EOF
# dpkg-query reports the service packages missing to deps.sh (so that it takes its install
# path); everyone else gets the real answer.
cat >"$T/shims/dpkg-query" <<'EOF'
#!/bin/sh
case "$*" in
'-W -f=${Status} postfix'|'-W -f=${Status} haproxy'|'-W -f=${Status} stunnel4') exit 1 ;;
esac
exec /usr/bin/dpkg-query "$@"
EOF
chmod +x "$T/shims/"*
printf 'DPkg::Path "%s:/usr/sbin:/usr/bin:/sbin:/bin";\n' "$T/shims" >"$T/apt.conf"
: >"$T/svc.calls"
# The host's policy-rc.d becomes, for this test, one that allows every action and records it
# (as on a host without one, where maintainer scripts start and restart services). deps.sh
# must put its own in place for the install and give this one back afterwards.
POLICY=/usr/sbin/policy-rc.d
# Two runs of this test at once would each save the other's stand-in as "the host's":
# one at a time.
exec 9>/run/lock/starttls-proxy-test-deps.lock
if ! flock -w 600 9; then
	fail host_policy_rc_lock "another test_deps run holds /run/lock/starttls-proxy-test-deps.lock"
	finish
fi
if [ -e "$POLICY" ]; then cp -p "$POLICY" "$T/policy-rc.d.host"; fi
restore_policy() {
	if [ -e "$T/policy-rc.d.host" ]; then cp -p "$T/policy-rc.d.host" "$POLICY"; else rm -f "$POLICY"; fi
}
deps_cleanup() {
	local rc=$?
	restore_policy
	(exit "$rc")
	smtp_cleanup
}
trap deps_cleanup EXIT
printf '#!/bin/sh\necho "ALLOWED $*" >>"%s"\nexit 0\n' "$T/host-policy.calls" >"$POLICY"
chmod 755 "$POLICY"
: >"$T/host-policy.calls"
policy_before=$(sha256sum "$POLICY")
sources_before=$(ls -la /etc/apt/sources.list.d/ /etc/apt/sources.list 2>&1 | sha256sum)
env PATH="$T/shims:$PATH" APT_CONFIG="$T/apt.conf" STP_REINSTALL="postfix haproxy stunnel4" \
	STP_POLICY_LOG="$T/deps-policy.calls" bash "$DEPS" test >"$T/real.out" 2>&1
rc=$?
if [ "$rc" = 0 ] && grep -q 'deps: reinstalling postfix haproxy stunnel4' "$T/real.out"; then
	pass real_install_ran
else
	fail real_install_ran "rc $rc: $(tail -n 5 "$T/real.out")"
fi
# The shims must have seen the maintainer scripts' service calls (postfix's postinst
# restarts it): with no call recorded, "none acted" proves nothing.
if grep -q '^ACTED' "$T/svc.calls"; then
	fail no_service_action_taken "$(grep '^ACTED' "$T/svc.calls" | head -n 3)"
elif ! grep -q '^denied .* postfix ' "$T/svc.calls"; then
	fail no_service_action_taken "no service call for postfix reached the shims: $(tr '\n' ' ' <"$T/svc.calls")"
else
	pass no_service_action_taken
fi
# The maintainer scripts did ask (postfix's postinst restarts it), and were denied.
if grep -q 'postfix' "$T/deps-policy.calls" 2>/dev/null && [ ! -s "$T/host-policy.calls" ]; then
	pass maintainer_scripts_denied
else
	fail maintainer_scripts_denied "denied: $(tr '\n' ' ' <"$T/deps-policy.calls" 2>/dev/null); allowed: $(tr '\n' ' ' <"$T/host-policy.calls")"
fi
note "service actions the maintainer scripts asked for, all denied: $(tr '\n' ' ' <"$T/deps-policy.calls")"
dialog running_postfix_still_serves --connect "127.0.0.1:${PF_PORT[host.smtp]}" \
	expect:220 cmd:250:"EHLO check.test" cmd:221:QUIT closed:3
if kill -0 "$HOST_PID" 2>/dev/null && [ "$(tr -d ' ' <"$T/pf-host/spool/pid/master.pid")" = "$HOST_PID" ]; then
	pass running_postfix_untouched
else
	fail running_postfix_untouched "the Postfix master $HOST_PID is gone"
fi
[ "$(sha256sum "$POLICY")" = "$policy_before" ] &&
	pass host_policy_rc_restored || fail host_policy_rc_restored "policy-rc.d changed"
restore_policy
[ "$(ls -la /etc/apt/sources.list.d/ /etc/apt/sources.list 2>&1 | sha256sum)" = "$sources_before" ] &&
	! grep -rqs '^Types: deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/ &&
	pass host_apt_sources_untouched || fail host_apt_sources_untouched "$(ls /etc/apt/sources.list.d/)"

# --- 3. the private Postfix copy ---------------------------------------------------------------
if bash "$DEPS" private-postfix "$T/pfroot" >"$T/private.out" 2>&1 &&
	[ -x "$T/pfroot/usr/sbin/postfix" ]; then
	pass private_postfix_unpacked
	PF_ROOT=$T/pfroot
	start_sink privsink
	pf_start priv "$(port_of privsink)" smtp=none
	if grep -q "$T/pfroot/usr/lib/postfix/sbin/master" "/proc/$(tr -d ' ' <"$T/pf-priv/spool/pid/master.pid")/cmdline" 2>/dev/null ||
		[ "$(readlink "/proc/$(tr -d ' ' <"$T/pf-priv/spool/pid/master.pid")/exe")" = "$T/pfroot/usr/lib/postfix/sbin/master" ]; then
		pass private_postfix_runs_its_own_programs
	else
		fail private_postfix_runs_its_own_programs "$(readlink "/proc/$(tr -d ' ' <"$T/pf-priv/spool/pid/master.pid")/exe")"
	fi
	make_message "$T/m-priv" priv
	dialog private_postfix_relays --connect "127.0.0.1:${PF_PORT[priv.smtp]}" \
		expect:220 cmd:250:"EHLO check.test" cmd:250:"MAIL FROM:<a@client.test>" \
		cmd:250:"RCPT TO:<b@dest.test>" cmd:354:DATA "data:$T/m-priv" expect:250 cmd:221:QUIT
	delivered_exact private_postfix_delivered "$T/privsink.store" priv "$T/m-priv" via-postfix
else
	fail private_postfix_unpacked "$(tail -n 3 "$T/private.out")"
fi
finish
