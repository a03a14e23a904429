# shellcheck shell=bash
# dovecot_lib.sh - a private Dovecot for the POP3 and IMAP tests (sourced after lib.sh):
# a passwd-file user alice/secret whose maildir holds two known messages ($MSG1: a line
# starting with "." and a 900-octet line; $MSG2), and dovecot_start, which runs one Dovecot
# instance on loopback with its own base_dir, state_dir and log under $T ($T/NAME/dovecot.log).
# Set DV_PROTO (pop3, the default, or imap) before dovecot_start. No host service is used.

# dovecot_mailstore: $T/home/alice/Maildir with the two messages, $T/passwd
dovecot_mailstore() {
	MAILDIR=$T/home/alice/Maildir
	mkdir -p "$MAILDIR/cur" "$MAILDIR/new" "$MAILDIR/tmp"
	{
		printf 'From: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n.leading dot\r\n'
		printf '%0900d\r\n' 0
	} >"$T/msg1.eml"
	printf 'From: b@example.org\r\nSubject: two\r\n\r\nSecond message.\r\n' >"$T/msg2.eml"
	# Dovecot renames the files it reads: the tests compare with these copies
	MSG1=$T/msg1.eml
	MSG2=$T/msg2.eml
	cp "$MSG1" "$MAILDIR/cur/1000000001.M1P1.test:2,"
	cp "$MSG2" "$MAILDIR/cur/1000000002.M2P2.test:2,"
	chown -R nobody:nogroup "$T/home"
	echo "alice:{PLAIN}secret:$(id -u nobody):$(id -g nobody)::$T/home/alice" >"$T/passwd"
	chmod 644 "$T/passwd"
}

# dovecot_start NAME SSL PORT [IMPLICIT_PORT]
dovecot_start() {
	local name=$1 ssl=$2 port=$3 sport=${4:-} d=$T/$1 proto=${DV_PROTO:-pop3}
	mkdir -p "$d/run" "$d/state"
	{
		cat <<CONF
instance_name = stp-$name
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
protocols = $proto
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
auth_verbose = yes
auth_mechanisms = plain login apop
disable_plaintext_auth = no
ssl = $ssl
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = $T/passwd
}
userdb {
  driver = passwd-file
  args = $T/passwd
}
service $proto-login {
  inet_listener $proto {
    address = 127.0.0.1
    port = $port
  }
CONF
		if [ -n "$sport" ]; then
			cat <<CONF
  inet_listener ${proto}s {
    address = 127.0.0.1
    port = $sport
    ssl = yes
  }
CONF
		fi
		echo "}"
		if [ "$proto" = imap ]; then
			# COMPRESS=DEFLATE (RFC 4978), which the proxy passes through after login
			printf 'mail_plugins = $mail_plugins zlib\nprotocol imap {\n'
			printf '  mail_plugins = $mail_plugins imap_zlib\n}\n'
		fi
		if [ "$ssl" != no ]; then
			echo "ssl_cert = <$CERTS/server.pem"
			echo "ssl_key = <$CERTS/server.key"
		fi
	} >"$d/dovecot.conf"
	spawn "dovecot-$name" dovecot -F -c "$d/dovecot.conf"
	if ! wait_port "$port" 15; then
		fail "dovecot_start($name)" "$(tail -n 5 "$d/dovecot.log" "$T/dovecot-$name.log" 2>/dev/null)"
		exit 1
	fi
}
