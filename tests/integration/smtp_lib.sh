# shellcheck shell=bash
# Helpers for the SMTP/LMTP integration tests (tests/integration/test_smtp_*.sh).
# Sourced after lib.sh:
#   . "$(dirname "$0")/lib.sh"; . "$(dirname "$0")/smtp_lib.sh"
#
#   start_sink NAME [smtp_sink.py args]   aiosmtpd server storing messages in $T/NAME.store
#                                         (raw received bytes: $T/NAME.raw); port: port_of NAME
#   start_fake NAME [smtp_fake.py args]   scripted SMTP upstream (misbehaviours); its log of
#                                         received lines: $T/NAME.lines; port: port_of NAME
#   pf_start NAME SINKPORT LISTENER...    private Postfix instance in $T/pf-NAME relaying all
#                                         mail to 127.0.0.1:SINKPORT; each LISTENER is
#                                         LABEL=TLSLEVEL (none|may|encrypt, or wrapper for
#                                         implicit TLS, port-465 style) and gets a random
#                                         port: PF_PORT[NAME.LABEL]; its log: pf_log NAME
#   dialog CHECK [smtp_dialog.py args]    scripted SMTP client (tools/smtp_dialog.py);
#                                         PASS/FAIL CHECK with the transcript on failure
#   smtp_dialog_to FILE [args]            the same client, result into FILE, no check
#   smtp_send ARGS                        one message with Python smtplib (tools/smtp_send.py)
#   make_message FILE TAG                 a test message (CRLF, awkward lines), Message-ID
#                                         <TAG@client.test>
#   delivered_exact CHECK STORE TAG ORIG [via-postfix]
#                                         message TAG arrived in STORE equal to ORIG
#   wait_tag STORE TAG / msg_count STORE / raw_commands RAWFILE / lines_have FAKE ERE
#   fake_idle FAKE [N] / fake_never CHECK FAKE ERE [N [CONTROL]] / raw_never CHECK RAWFILE
#   ERE CONTROL / pf_sessions_done NAME LABEL N / pf_idle NAME
#                                         checks of absence and the fences they need: what
#                                         an observer never saw only counts once it is shown
#                                         to exist and to have seen the session; a missing
#                                         file or an observer that saw nothing is a FAIL
#
# Postfix instances are stopped by the EXIT trap (before lib.sh's cleanup removes $T).

SMTP_PY=/usr/bin/python3        # Debian's python: has python3-aiosmtpd
PF_DIRS=()
declare -A PF_PORT=()
# Postfix unpacked privately by `make deps` on a host whose own MTA the postfix package would
# replace (scripts/deps.sh): its programs run from there with their own directories.
PF_ROOT=${STP_POSTFIX_ROOT:-$(cat "${STP_DEPS_DIR:-/var/cache/starttls-proxy}/postfix.current" 2>/dev/null)}
pf_cmd() {
	if [ -n "$PF_ROOT" ]; then
		LD_LIBRARY_PATH=$PF_ROOT/usr/lib/postfix "$PF_ROOT/usr/sbin/postfix" "$@"
	else
		postfix "$@"
	fi
}

# --- Postfix -----------------------------------------------------------------------------

pf_stop_all() {
	local d pid i
	for d in "${PF_DIRS[@]}"; do
		pf_cmd -c "$d/etc" stop >/dev/null 2>&1
	done
	for d in "${PF_DIRS[@]}"; do
		pid=$(tr -d ' ' 2>/dev/null <"$d/spool/pid/master.pid")
		[ -n "$pid" ] || continue
		i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		# Still there after 5 s: the master of our own instance (its pid file is in our
		# temp dir) ignored "stop".
		if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = master ]; then
			kill -KILL "$pid" 2>/dev/null
		fi
	done
	PF_DIRS=()
}

smtp_cleanup() {
	local rc=$?
	trap '' INT TERM # stopping Postfix takes a moment: finish the cleanup regardless
	pf_stop_all
	(exit "$rc")
	cleanup
}
trap smtp_cleanup EXIT

pf_log() { echo "$T/pf-$1/maillog"; }

# pf_start NAME SINKPORT LABEL=LEVEL...: see the header. Extra main.cf lines can be given
# in the PF_EXTRA variable (newline separated). Fails the script when Postfix won't start.
pf_start() {
	local name=$1 sink=$2 d l label level port
	shift 2
	d=$T/pf-$name
	mkdir -p "$d/etc" "$d/spool/pid" "$d/data"
	chmod 755 "$d" "$d/etc" "$d/spool" "$d/spool/pid"
	chown postfix "$d/data"
	# The queue directories as post-install would make them; quick-start skips the slow
	# integrity checks of "postfix start" (seconds) on this fresh, known-good tree.
	for l in active bounce corrupt defer deferred flush hold incoming private saved trace; do
		mkdir -m 700 "$d/spool/$l" && chown postfix:root "$d/spool/$l"
	done
	mkdir -m 730 "$d/spool/maildrop" && chown postfix:postdrop "$d/spool/maildrop"
	mkdir -m 710 "$d/spool/public" && chown postfix:postdrop "$d/spool/public"
	touch "$d/spool/quick-start"
	cat >"$d/etc/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $d/etc
queue_directory = $d/spool
data_directory = $d/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = pf-$name.test
mydomain = test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$sink
smtp_tls_security_level = none
smtp_dns_support_level = disabled
local_header_rewrite_clients =
disable_mime_output_conversion = yes
smtpd_tls_chain_files = $CERTS/server.key, $CERTS/server.pem
smtpd_tls_loglevel = 1
smtpd_tls_security_level = may
smtpd_authorized_xclient_hosts = 127.0.0.1
maillog_file = $d/maillog
maillog_file_prefixes = $d
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtpd_banner = \$myhostname ESMTP Postfix-under-test
biff = no
EOF
	if [ -n "$PF_ROOT" ]; then
		cat >>"$d/etc/main.cf" <<EOF
command_directory = $PF_ROOT/usr/sbin
daemon_directory = $PF_ROOT/usr/lib/postfix/sbin
shlib_directory = $PF_ROOT/usr/lib/postfix
meta_directory = $PF_ROOT/etc/postfix
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH=$PF_ROOT/usr/lib/postfix
EOF
	fi
	[ -n "${PF_EXTRA:-}" ] && printf '%s\n' "$PF_EXTRA" >>"$d/etc/main.cf"
	: >"$d/etc/master.cf"
	for l in "$@"; do
		label=${l%%=*}
		level=${l#*=}
		free_port port
		PF_PORT[$name.$label]=$port
		printf '127.0.0.1:%s inet n - n - - smtpd\n  -o syslog_name=postfix/%s\n' \
			"$port" "$label" >>"$d/etc/master.cf"
		if [ "$level" = wrapper ]; then
			printf '  -o smtpd_tls_wrappermode=yes\n  -o smtpd_tls_security_level=encrypt\n' \
				>>"$d/etc/master.cf"
		else
			printf '  -o smtpd_tls_security_level=%s\n' "$level" >>"$d/etc/master.cf"
		fi
	done
	cat >>"$d/etc/master.cf" <<'EOF'
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
	PF_DIRS+=("$d")
	if ! pf_cmd -c "$d/etc" start >"$d/start.log" 2>&1; then
		fail "pf_start($name)" "postfix start: $(tail -n 3 "$d/start.log")"
		exit 1
	fi
	for l in "$@"; do
		label=${l%%=*}
		if ! port_open "${PF_PORT[$name.$label]}" 10; then
			fail "pf_start($name)" "smtpd $label not listening: $(tail -n 3 "$d/maillog" 2>/dev/null)"
			exit 1
		fi
	done
}

# --- test servers ----------------------------------------------------------------------

# start_sink NAME [args]: tools/smtp_sink.py (aiosmtpd) storing into $T/NAME.store.
start_sink() {
	local name=$1
	shift
	spawn "$name" "$SMTP_PY" "$TOOLS/smtp_sink.py" --ready "$T/$name.port" \
		--store "$T/$name.store" --raw "$T/$name.raw" "$@"
	if ! wait_file "$T/$name.port" 10; then
		fail "start_sink($name)" "not listening after 10s: $(tail -n 5 "$T/$name.log")"
		exit 1
	fi
}

# start_fake NAME [args]: tools/smtp_fake.py; received lines logged to $T/NAME.lines.
start_fake() {
	local name=$1
	shift
	spawn "$name" "$SMTP_PY" "$TOOLS/smtp_fake.py" --ready "$T/$name.port" \
		--lines "$T/$name.lines" --store "$T/$name.store" "$@"
	if ! wait_file "$T/$name.port" 10; then
		fail "start_fake($name)" "not listening after 10s: $(tail -n 5 "$T/$name.log")"
		exit 1
	fi
}

# swaks_has_tls: swaks can do TLS (it needs Perl's Net::SSLeay, Debian libnet-ssleay-perl,
# which the swaks package only recommends).
swaks_has_tls() { perl -MNet::SSLeay -e 1 2>/dev/null; }

smtp_dialog() { "$SMTP_PY" "$TOOLS/smtp_dialog.py" "$@"; }
# smtp_dialog_to FILE ARGS: the same, its JSON result into FILE. (Not "smtp_dialog ... >FILE":
# a redirected function call redirects the shell itself, and an interrupt trap firing
# meanwhile would write its report, and the cleanup's, into FILE.)
smtp_dialog_to() {
	local out=$1
	shift
	"$SMTP_PY" "$TOOLS/smtp_dialog.py" "$@" >"$out" 2>&1
}

# msg_count STORE: number of complete messages in STORE. A missing STORE (the server never
# started, or a wrong path) is not "0 messages": nothing printed, a message on stderr,
# status 2.
msg_count() {
	if [ ! -d "$1" ]; then
		echo "msg_count: no store $1" >&2
		return 2
	fi
	find "$1" -maxdepth 1 -name 'msg-*.json' | wc -l
}

# same_message ORIG DELIVERED [via-postfix]: DELIVERED equals ORIG byte for byte; with
# via-postfix, DELIVERED may start with Received: header lines Postfix prepends (and nothing
# else). Prints why on mismatch.
same_message() {
	"$SMTP_PY" - "$@" <<'PY'
import sys
orig = open(sys.argv[1], "rb").read()
got = open(sys.argv[2], "rb").read()
via = len(sys.argv) > 3
if via:
    # Drop leading Received: headers (with their continuation lines).
    lines = got.split(b"\r\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"Received:"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    got = b"\r\n".join(lines[i:])
if got != orig:
    n = next((k for k in range(min(len(got), len(orig))) if got[k] != orig[k]),
             min(len(got), len(orig)))
    print("differs at byte %d of %d/%d: want %r got %r"
          % (n, len(orig), len(got), orig[n:n + 40], got[n:n + 40]))
    sys.exit(1)
PY
}

# make_message FILE TAG: a test message with CRLF line endings and the awkward lines a
# relay must pass through untouched: a lone ".", leading dots, command look-alikes, 8-bit
# text, trailing blanks and a 900-octet line.
make_message() {
	"$SMTP_PY" - "$1" "$2" <<'PY'
import sys
tag = sys.argv[2]
lines = [
    "From: Legacy App <app@client.test>",
    "To: Someone <someone@dest.test>",
    "Subject: starttls-proxy test %s" % tag,
    "Message-ID: <%s@client.test>" % tag,
    "Date: Mon, 01 Jan 2024 00:00:00 +0000",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    "Body of %s." % tag,
    ".",
    "..two leading dots",
    ".one leading dot",
    "MAIL FROM:<inbody@evil.test>",
    "RCPT TO:<inbody@evil.test>",
    "STARTTLS",
    "QUIT",
    "Gr\u00fc\u00dfe aus K\u00f6ln \u2014 8-bit text",
    "trailing blanks   \t",
    "x" * 900,
    "",
    "last line %s" % tag,
]
open(sys.argv[1], "wb").write(("\r\n".join(lines) + "\r\n").encode("utf-8"))
PY
}

# dialog NAME [smtp_dialog.py args and steps]: PASS NAME when every step passes, else FAIL
# with the failed step, why, and the end of the transcript. Returns the tool's status.
dialog() {
	local name=$1 out rc
	shift
	out=$(smtp_dialog "$@")
	rc=$?
	if [ "$rc" -eq 0 ]; then
		pass "$name"
	else
		fail "$name" "$(printf '%s' "$out" | "$SMTP_PY" -c '
import json, sys
try:
    r = json.loads(sys.stdin.read().strip().splitlines()[-1])
except Exception as e:
    print("no result from smtp_dialog.py"); sys.exit()
print("step %s: %s; transcript: %s" % (r.get("failed_step"), r.get("why"),
      " / ".join((r.get("transcript") or [])[-8:])))')"
	fi
	return "$rc"
}

# smtp_send ARGS: tools/smtp_send.py (Python smtplib client).
smtp_send() { "$SMTP_PY" "$TOOLS/smtp_send.py" "$@"; }

# lines_have NAME PATTERN: the fake server NAME received a line matching the ERE: status 0
# when it did, 1 when it did not, 2 (and a message on stderr) when its lines file does not
# exist (the fake never started, or the name is wrong). "! lines_have" and "if lines_have
# ...; then fail; else pass" read status 2 as "absent": a check of absence uses fake_never.
lines_have() {
	local f=$T/$1.lines
	if [ ! -f "$f" ]; then
		echo "lines_have: no lines file $f" >&2
		return 2
	fi
	grep -Eq -- "$2" "$f"
}

# fake_idle NAME [N [TIMEOUT]]: the fence of a check of absence at a fake server: its lines
# file exists, at least N (default 1) sessions reached it ("# connect from" lines), and every
# one of them has ended (as many "# disconnect" lines), within TIMEOUT (10) s. A line the
# fake did not get by then, it will not get. Status 1 otherwise, the reason in FAKE_WHY.
FAKE_WHY=""
fake_idle() {
	local name=$1 n=${2:-1} t=${3:-10} f=$T/$1.lines i=0 c d
	while :; do
		if [ -f "$f" ]; then
			c=$(grep -c '^# connect from' "$f")
			d=$(grep -c '^# disconnect$' "$f")
			[ "$c" -ge "$n" ] && [ "$d" -eq "$c" ] && return 0
			FAKE_WHY="$name saw $c session(s) (want >= $n), $d ended"
		else
			FAKE_WHY="no lines file $f"
		fi
		if [ $i -ge $((t * 10)) ]; then
			FAKE_WHY="$FAKE_WHY after ${t}s"
			return 1
		fi
		sleep 0.1
		i=$((i + 1))
	done
}

# fake_never CHECK NAME PATTERN [N [CONTROL]]: PASS CHECK when the fake NAME saw at least N
# (default 1) sessions, all of them ended (fake_idle), a line matches the ERE CONTROL if one
# is given (the proxy did relay that far, so the fake was watching the right session), and
# no received line matches the ERE PATTERN. Any of those unproven is a FAIL.
fake_never() {
	local check=$1 name=$2 pat=$3 n=${4:-1} control=${5:-}
	if ! fake_idle "$name" "$n"; then
		fail "$check" "the fake proves nothing: $FAKE_WHY"
	elif [ -n "$control" ] && ! lines_have "$name" "$control"; then
		fail "$check" "$name never got the control line /$control/: $(tail -n 4 "$T/$name.lines")"
	elif lines_have "$name" "$pat"; then
		fail "$check" "$(grep -E -- "$pat" "$T/$name.lines" | head -n 3)"
	else
		pass "$check"
	fi
}

# port_open PORT [TIMEOUT]: until something accepts on 127.0.0.1:PORT (lib.sh's wait_port
# with Debian's python: a pyenv shim in PATH costs most of a second per probe here).
port_open() {
	local p=$1 t=${2:-10} i=0
	until "$SMTP_PY" -c "import socket,sys; socket.create_connection(('127.0.0.1',$p),0.5).close()" 2>/dev/null; do
		[ $i -ge $((t * 5)) ] && return 1
		sleep 0.2
		i=$((i + 1))
	done
	return 0
}

# wait_tag STORE TAG [TIMEOUT]: prints the path of the stored message whose Message-ID is
# <TAG@client.test> (see make_message), waiting up to TIMEOUT (10) s. Status 1 if none.
wait_tag() {
	local store=$1 tag=$2 t=${3:-10} i=0 f
	while :; do
		f=$(grep -lF "Message-ID: <$tag@client.test>" "$store"/msg-*.eml 2>/dev/null | head -n 1)
		if [ -n "$f" ] && [ -f "${f%.eml}.json" ]; then
			echo "$f"
			return 0
		fi
		[ $i -ge $((t * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

# delivered_exact NAME STORE TAG ORIG [via-postfix]: PASS NAME when the message TAG arrived
# in STORE and equals ORIG byte for byte (after Postfix's Received: headers, if via-postfix).
delivered_exact() {
	local name=$1 store=$2 tag=$3 orig=$4 via=${5:-} f why
	if ! f=$(wait_tag "$store" "$tag" 10); then
		fail "$name" "message $tag not delivered within 10s"
		return 1
	fi
	if why=$(same_message "$orig" "$f" ${via:+"$via"}); then
		pass "$name"
	else
		fail "$name" "$tag: $why"
		return 1
	fi
}

# raw_commands FILE: the command lines in a server's raw input (smtp_sink.py --raw), with
# message data (DATA ... ".") left out, one per line. A FILE that cannot be read is no empty
# input: status 2 and the error on stderr. (In "raw_commands F | grep -q X" under pipefail
# that still reads as "no X": a check of absence uses raw_never.)
raw_commands() {
	"$SMTP_PY" - "$1" <<'PY'
import sys
try:
    data = open(sys.argv[1], "rb").read()
except OSError as e:
    sys.stderr.write("raw_commands: %s\n" % e)
    sys.exit(2)
in_data = False
for line in data.split(b"\r\n"):
    if in_data:
        in_data = line != b"."
        continue
    if line.upper() == b"DATA":
        in_data = True
    sys.stdout.write(line.decode("utf-8", "replace") + "\n")
PY
}

# raw_never CHECK FILE PATTERN CONTROL: PASS CHECK when the server's raw input FILE (see
# raw_commands) can be read, a command line matches the ERE CONTROL (the server saw the
# sessions concerned: pick a command the client sent after the ones PATTERN looks for, and
# that the server answered), and none matches the ERE PATTERN.
raw_never() {
	local check=$1 file=$2 pat=$3 control=$4 cmds
	if ! cmds=$(raw_commands "$file" 2>&1); then
		fail "$check" "$cmds"
	elif ! grep -Eq -- "$control" <<<"$cmds"; then
		fail "$check" "the server never got the control command /$control/: $(tail -n 4 <<<"$cmds")"
	elif grep -Eq -- "$pat" <<<"$cmds"; then
		fail "$check" "$(grep -E -- "$pat" <<<"$cmds" | head -n 2)"
	else
		pass "$check"
	fi
}

# pf_sessions_done NAME LABEL N [TIMEOUT]: the fence of a check of absence in a Postfix log:
# the smtpd of listener LABEL of instance NAME has logged at least N "disconnect from" lines
# (its sessions ended, and Postfix's log, written by postlogd a moment later, holds what they
# did) within TIMEOUT (10) s. Status 1 otherwise (a missing log included).
pf_sessions_done() {
	wait_count "postfix/$2/smtpd\[[0-9]+\]: disconnect from" "$3" "${4:-10}" "$(pf_log "$1")"
}

# pf_idle NAME [TIMEOUT]: Postfix instance NAME has no message left in its queue (all it
# accepted has gone to the sink, or bounced), within TIMEOUT (15) s; the fence of "no such
# message behind Postfix". Status 1 otherwise.
pf_idle() {
	local d=$T/pf-$1/spool t=${2:-15} i=0
	[ -d "$d" ] || return 1
	while [ -n "$(find "$d/maildrop" "$d/incoming" "$d/active" "$d/deferred" "$d/hold" -type f 2>/dev/null | head -n 1)" ]; do
		[ $i -ge $((t * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}
