/* probe.h - starttls-proxy --probe HOST:PORT: one session toward a server before a policy
 * is enforced on it, and a report instead of a relay: the greeting, whether STARTTLS is
 * offered, the TLS version and cipher, the chain (subject, issuer, names, expiry), the SPKI
 * pin (the value upstream_fingerprint and sha256= take), the verification result as an RFC
 * 8460 result type, and a verdict for each policy level.
 *
 * Contract: the TLS contexts, the policy decision (policy_decide, the route's table) and
 * the certificate checks (tls_conn_check) are the ones a route uses. probe_run returns the
 * process exit status: 0 when the policy that applies (the route's, else verify) would
 * pass, 1 when it would block, 2 when the server is unreachable or does not speak the
 * protocol. */
#ifndef STP_PROBE_H
#define STP_PROBE_H

#include <stddef.h>
#include <stdio.h>

struct probe_opts {
	const char *target;   /* HOST:PORT */
	const char *protocol; /* smtp | lmtp | imap | pop3 | tcp, or NULL */
	const char *tls;      /* starttls | implicit, or NULL */
	const char *name;     /* name to verify (and SNI), or NULL: the host */
	const char *ca;       /* trust store, or NULL */
	const char *config;   /* with route: that route's policy and table */
	const char *route;
	int json;
	int timeout_ms;       /* each step; 0: 10 s */
};

int probe_run(const struct probe_opts *o, FILE *out);

/* ---- a server's reply (no I/O) ------------------------------------------------------ */

#define PROBE_LINE_MAX 4096   /* the longest line, its LF included */
#define PROBE_LINE_KEEP 2047  /* what of a line is looked at */
#define PROBE_REPLY_MAX 65536 /* SMTP: octets of text; IMAP: octets up to the tagged line */
#define PROBE_CAPA_LINES 512  /* POP3: the CAPA list ends at "." or after this many lines */

/* What --probe reads at each step. A line ends at LF (a CR before it is dropped); what is
 * looked at is the line up to its first NUL, at most PROBE_LINE_KEEP octets. */
enum probe_reply_kind {
	PROBE_SMTP,            /* "DDD-text" lines up to "DDD text" or "DDD" (D: 2-5, 0-9,
				* 0-9): code DDD of the last line; offered when the code is 250
				* and a line after the first, of those kept in text, says
				* STARTTLS after its 4 octets */
	PROBE_IMAP_GREETING,   /* one line "* ...": code 0 for "* BYE", else 1 */
	PROBE_IMAP_CAPABILITY, /* lines up to the one tagged "P1 ": code 1 for "P1 OK"; offered
				* when a "* CAPABILITY " line lists STARTTLS */
	PROBE_IMAP_STARTTLS,   /* lines up to the one tagged "P2 ": code 1 for "P2 OK" */
	PROBE_POP3_GREETING,   /* one line "+OK...": code 1 */
	PROBE_POP3_CAPA,       /* "+OK" and the list up to "." (code 1; offered when a line
				* says STLS), or one line not "+OK" (code 0) */
	PROBE_POP3_STLS,       /* one line: code 1 for "+OK", else 0 */
	PROBE_LINE,            /* one line, whatever it says: code 1 */
	PROBE_KINDS
};

struct probe_reply {
	int code;     /* 0: SMTP 200-599, others 0 or 1 */
	int offered;  /* 0: STARTTLS (STLS) offered, 1 or 0 */
	size_t size;  /* 0: octets of the reply, its last LF included */
	size_t lines; /* complete lines looked at (also when incomplete or in error) */
};

/* Parses the reply of the kind at the start of buf (len octets; more may follow it).
 * Keywords compare case-insensitively, except the IMAP tags. Returns 0 when it is complete
 * (*out filled), -EAGAIN while it is not, -EPROTO when it is not such a reply (SMTP: a line
 * not a reply line, or more than PROBE_REPLY_MAX octets of text; the IMAP / POP3 greeting
 * not "* " / "+OK"), -EMSGSIZE for a line longer than PROBE_LINE_MAX (known as soon as
 * PROBE_LINE_MAX octets came without an LF) or IMAP lines over PROBE_REPLY_MAX octets
 * without the tagged one. An answer other than -EAGAIN stays the same whatever follows.
 * text (cap >= 1 octets) gets the reply's text as far as its complete lines go, whatever
 * the answer: SMTP the valid lines joined by "\n" (a line only while it fits whole),
 * otherwise the last line looked at, cut to cap - 1 octets. */
int probe_parse_reply(enum probe_reply_kind kind, const void *buf, size_t len,
		      struct probe_reply *out, char *text, size_t cap);

#endif
