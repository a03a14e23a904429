/* probe.c - starttls-proxy --probe (see probe.h). One blocking session toward the server:
 * connect, the protocol's greeting and capabilities, STARTTLS (or implicit TLS), the TLS
 * handshake through tls.c, the checks of tls_conn_check() under each policy level, and a
 * polite goodbye. */
#include "probe.h"

#include "config.h"
#include "log.h"
#include "policy.h"
#include "proto_kit.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

enum verdict { V_PASS, V_FAIL, V_UNSET };
static const char *const verdict_names[] = { "pass", "fail", "unset" };
static const char *const level_names[] = { "none", "may", "encrypt", "fingerprint", "verify" };

struct probe {
	const struct probe_opts *o;
	int timeout;
	int fd;
	struct tls_conn *tls;
	struct line_reader lr;
	/* what was asked */
	char host[256];
	uint16_t port;
	enum cfg_proto protocol;
	enum cfg_tls tls_mode;
	struct session_policy pol;
	const char *names[1];
	const char *route_name;
	int route_min_tls;
	const char *ca, *cert, *key;
	/* what was found */
	char addr[80];
	char error[300];      /* why the probe stopped, when it did */
	int unreachable;      /* exit 2 */
	char greeting[1024];
	int offered;          /* STARTTLS/STLS offered: 1, 0, or -1 (not asked) */
	char refusal[300];    /* the server's answer to STARTTLS when not a go-ahead */
	int tls_ok;
	char tls_error[200];
	const char *version, *cipher;
	struct tls_chain chain;
	uint8_t pin[32];
	int have_pin;
	const char *verify_result; /* NULL: ok */
	char verify_detail[300];
	const char *pin_result;    /* NULL: one of the pins matches */
	char pin_detail[300];
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stop(struct probe *p, int unreachable, const char *fmt, const char *arg)
{
	if (!p->error[0])
		snprintf(p->error, sizeof(p->error), fmt, arg ? arg : "");
	p->unreachable |= unreachable;
}

/* ---- replies (no I/O) ------------------------------------------------------------ */

static void keep(char *text, size_t cap, const char *v, size_t n)
{
	if (n > cap - 1)
		n = cap - 1;
	memcpy(text, v, n);
	text[n] = '\0';
}

static int smtp_line_ok(const char *v, size_t n)
{
	return n >= 3 && v[0] >= '2' && v[0] <= '5' && v[1] >= '0' && v[1] <= '9' && v[2] >= '0' &&
	       v[2] <= '9' && (n == 3 || v[3] == ' ' || v[3] == '-');
}

int probe_parse_reply(enum probe_reply_kind kind, const void *buf, size_t len,
		      struct probe_reply *out, char *text, size_t cap)
{
	const char *b = buf;
	size_t at = 0, o = 0, total = 0;
	int plus = 0; /* POP3 CAPA: the +OK came */
	memset(out, 0, sizeof(*out));
	text[0] = '\0';
	for (;;) {
		const char *nl = len > at ? memchr(b + at, '\n', len - at) : NULL;
		if (!nl)
			return len - at >= PROBE_LINE_MAX ? -EMSGSIZE : -EAGAIN;
		size_t size = (size_t)(nl - (b + at)) + 1;
		if (size > PROBE_LINE_MAX)
			return -EMSGSIZE;
		/* the line as looked at: no terminator, up to a NUL, at most PROBE_LINE_KEEP */
		const char *v = b + at;
		size_t n = size - 1;
		if (n && v[n - 1] == '\r')
			n--;
		n = strnlen(v, n < PROBE_LINE_KEEP ? n : PROBE_LINE_KEEP);
		at += size;
		out->lines++;
		switch (kind) {
		case PROBE_SMTP:
			total += n;
			if (!smtp_line_ok(v, n) || total > PROBE_REPLY_MAX)
				return -EPROTO;
			if (o + n + 2 < cap) {
				/* the first line kept in text says no keyword */
				if (o && n > 4 && cap_word_is(v + 4, n - 4, "STARTTLS"))
					out->offered = 1;
				if (o)
					text[o++] = '\n';
				memcpy(text + o, v, n);
				o += n;
				text[o] = '\0';
			}
			if (n == 3 || v[3] == ' ') {
				out->code = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
				if (out->code != 250)
					out->offered = 0;
				out->size = at;
				return 0;
			}
			continue;
		case PROBE_IMAP_GREETING:
			keep(text, cap, v, n);
			if (n < 2 || memcmp(v, "* ", 2) != 0)
				return -EPROTO;
			out->code = !(n >= 5 && !strncasecmp(v, "* BYE", 5));
			break;
		case PROBE_IMAP_CAPABILITY:
		case PROBE_IMAP_STARTTLS: {
			keep(text, cap, v, n);
			if (kind == PROBE_IMAP_CAPABILITY && n >= 13 &&
			    !strncasecmp(v, "* CAPABILITY ", 13)) {
				for (size_t w = 13; w < n;) {
					const char *sp = memchr(v + w, ' ', n - w);
					size_t wl = sp ? (size_t)(sp - (v + w)) : n - w;
					if (cap_word_is(v + w, wl, "STARTTLS"))
						out->offered = 1;
					w += wl + 1;
				}
			}
			const char *tag = kind == PROBE_IMAP_CAPABILITY ? "P1 " : "P2 ";
			if (n >= 3 && !memcmp(v, tag, 3)) {
				out->code = n >= 5 && !strncasecmp(v + 3, "OK", 2);
				break;
			}
			if (at > PROBE_REPLY_MAX)
				return -EMSGSIZE;
			continue;
		}
		case PROBE_POP3_GREETING:
			keep(text, cap, v, n);
			if (n < 3 || memcmp(v, "+OK", 3) != 0)
				return -EPROTO;
			out->code = 1;
			break;
		case PROBE_POP3_CAPA:
			keep(text, cap, v, n);
			if (!plus) {
				if (n < 3 || memcmp(v, "+OK", 3) != 0)
					break; /* code 0 */
				plus = 1;
				out->code = 1;
				continue;
			}
			if (n == 1 && v[0] == '.')
				break;
			if (cap_word_is(v, n, "STLS"))
				out->offered = 1;
			if (out->lines > PROBE_CAPA_LINES)
				break;
			continue;
		case PROBE_POP3_STLS:
			keep(text, cap, v, n);
			out->code = n >= 3 && !memcmp(v, "+OK", 3);
			break;
		default:
			keep(text, cap, v, n);
			out->code = 1;
			break;
		}
		out->size = at;
		return 0;
	}
}

/* ---- I/O -------------------------------------------------------------------------- */

static int wait_fd(struct probe *p, short events, int64_t deadline)
{
	int64_t left = deadline - now_ms();
	if (left <= 0)
		return -ETIMEDOUT;
	struct pollfd pfd = { p->fd, events, 0 };
	int rc = poll(&pfd, 1, (int)left);
	if (rc == 0)
		return -ETIMEDOUT;
	return rc < 0 ? -errno : 0;
}

static int send_raw(struct probe *p, const void *data, size_t len)
{
	const char *d = data;
	int64_t deadline = now_ms() + p->timeout;
	while (len) {
		ssize_t w = send(p->fd, d, len, MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			int rc = wait_fd(p, POLLOUT, deadline);
			if (rc < 0)
				return rc;
			continue;
		}
		if (w < 0)
			return -errno;
		d += w;
		len -= (size_t)w;
	}
	return 0;
}

static int flush_tls(struct probe *p)
{
	size_t n = tls_conn_out_len(p->tls);
	if (!n)
		return 0;
	int rc = send_raw(p, tls_conn_out_data(p->tls), n);
	tls_conn_out_consume(p->tls, n);
	return rc;
}

static int send_line(struct probe *p, const char *line)
{
	char buf[600];
	int n = snprintf(buf, sizeof(buf), "%s\r\n", line);
	if (!p->tls)
		return send_raw(p, buf, (size_t)n);
	if (tls_conn_write(p->tls, buf, (size_t)n) < 0)
		return -EIO;
	return flush_tls(p);
}

/* More bytes from the server into the line reader (through TLS when it is on). */
static int receive(struct probe *p, int64_t deadline)
{
	char buf[16384];
	for (;;) {
		int rc = wait_fd(p, POLLIN, deadline);
		if (rc < 0)
			return rc;
		ssize_t r = recv(p->fd, buf, sizeof(buf), 0);
		if (r == 0)
			return -ECONNRESET;
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		if (!p->tls)
			return lr_feed(&p->lr, buf, (size_t)r);
		if (tls_conn_feed(p->tls, buf, (size_t)r) < 0)
			return -ENOMEM;
		int got = 0, n;
		while ((n = tls_conn_read(p->tls, buf, sizeof(buf))) > 0) {
			if (lr_feed(&p->lr, buf, (size_t)n) < 0)
				return -ENOMEM;
			got = 1;
		}
		if (flush_tls(p) < 0)
			return -EIO;
		if (n != TLS_AGAIN && n < 0 && !got)
			return n == TLS_CLOSED ? -ECONNRESET : -EIO;
		if (got)
			return 0;
	}
}

/* One reply of the kind (probe_parse_reply), consumed when complete: 0, the parser's error,
 * or an I/O error. Each line has p->timeout to come. */
static int read_reply(struct probe *p, enum probe_reply_kind kind, struct probe_reply *r,
		      char *text, size_t cap)
{
	int64_t deadline = now_ms() + p->timeout;
	size_t lines = 0;
	for (;;) {
		size_t have = lr_pending(&p->lr);
		int rc = probe_parse_reply(kind, have ? lr_data(&p->lr) : NULL, have, r, text, cap);
		if (rc == 0)
			lr_consume(&p->lr, r->size);
		if (rc != -EAGAIN)
			return rc;
		if (r->lines > lines) {
			lines = r->lines;
			deadline = now_ms() + p->timeout;
		}
		if ((rc = receive(p, deadline)) < 0)
			return rc;
	}
}

/* An SMTP reply (all its lines, "\n"-joined into text): its code, or a negative errno. */
static int smtp_reply(struct probe *p, char *text, size_t cap, int *offered)
{
	struct probe_reply r;
	int rc = read_reply(p, PROBE_SMTP, &r, text, cap);
	if (offered)
		*offered = rc == 0 && r.offered;
	return rc < 0 ? rc : r.code;
}

/* ---- the protocols ---------------------------------------------------------------------- */

static const char *probe_name(void)
{
	static char h[256];
	if (!h[0] && gethostname(h, sizeof(h) - 1) < 0)
		snprintf(h, sizeof(h), "localhost");
	return h;
}

/* SMTP and LMTP: greeting, EHLO (is STARTTLS offered?), STARTTLS. 0 when TLS may start,
 * 1 when the exchange ended without TLS, -1 when the server does not speak SMTP. */
static int smtp_starttls(struct probe *p, int lmtp)
{
	char reply[4096], cmd[300];
	int code = smtp_reply(p, p->greeting, sizeof(p->greeting), NULL);
	if (code < 0) {
		stop(p, 1, "no SMTP greeting: %s", code == -EPROTO ? "not an SMTP reply" : strerror(-code));
		return -1;
	}
	if (code != 220) {
		stop(p, 1, "the server refused service: %.200s", p->greeting);
		return -1;
	}
	if (p->tls_mode != CFG_TLS_STARTTLS)
		return 1;
	snprintf(cmd, sizeof(cmd), "%s %s", lmtp ? "LHLO" : "EHLO", probe_name());
	int offered = 0;
	if (send_line(p, cmd) < 0 || (code = smtp_reply(p, reply, sizeof(reply), &offered)) < 0) {
		stop(p, 1, "no reply to %s", lmtp ? "LHLO" : "EHLO");
		return -1;
	}
	p->offered = offered;
	if (!p->offered)
		return 1;
	if (send_line(p, "STARTTLS") < 0 || (code = smtp_reply(p, reply, sizeof(reply), NULL)) < 0) {
		stop(p, 1, "no reply to STARTTLS%s", "");
		return -1;
	}
	if (code != 220) {
		snprintf(p->refusal, sizeof(p->refusal), "%.290s", reply);
		return 1;
	}
	lr_discard(&p->lr); /* the STARTTLS boundary */
	return 0;
}

static void smtp_quit(struct probe *p)
{
	char reply[512];
	if (send_line(p, "QUIT") == 0)
		smtp_reply(p, reply, sizeof(reply), NULL);
}

/* IMAP (RFC 9051, RFC 2595): greeting, CAPABILITY, STARTTLS. */
static int imap_starttls(struct probe *p)
{
	char line[PROBE_LINE_KEEP + 1];
	struct probe_reply r;
	if (read_reply(p, PROBE_IMAP_GREETING, &r, p->greeting, sizeof(p->greeting)) < 0) {
		stop(p, 1, "no IMAP greeting%s", "");
		return -1;
	}
	if (!r.code) {
		stop(p, 1, "the server refused service: %.200s", p->greeting);
		return -1;
	}
	if (p->tls_mode != CFG_TLS_STARTTLS)
		return 1;
	if (send_line(p, "P1 CAPABILITY") < 0) {
		stop(p, 1, "cannot send CAPABILITY%s", "");
		return -1;
	}
	p->offered = 0;
	if (read_reply(p, PROBE_IMAP_CAPABILITY, &r, line, sizeof(line)) < 0) {
		stop(p, 1, "no reply to CAPABILITY%s", "");
		return -1;
	}
	p->offered = r.offered;
	if (!p->offered)
		return 1;
	if (send_line(p, "P2 STARTTLS") < 0) {
		stop(p, 1, "cannot send STARTTLS%s", "");
		return -1;
	}
	if (read_reply(p, PROBE_IMAP_STARTTLS, &r, line, sizeof(line)) < 0) {
		stop(p, 1, "no reply to STARTTLS%s", "");
		return -1;
	}
	if (!r.code) {
		snprintf(p->refusal, sizeof(p->refusal), "%.290s", line);
		return 1;
	}
	lr_discard(&p->lr);
	return 0;
}

/* POP3 (RFC 1939, 2449, 2595): greeting, CAPA, STLS. */
static int pop3_starttls(struct probe *p)
{
	char line[PROBE_LINE_KEEP + 1];
	struct probe_reply r;
	if (read_reply(p, PROBE_POP3_GREETING, &r, p->greeting, sizeof(p->greeting)) < 0) {
		stop(p, 1, "no POP3 greeting%s", "");
		return -1;
	}
	if (p->tls_mode != CFG_TLS_STARTTLS)
		return 1;
	p->offered = 0;
	r.lines = 0;
	if (send_line(p, "CAPA") < 0 || read_reply(p, PROBE_POP3_CAPA, &r, line, sizeof(line)) < 0) {
		/* the +OK came: the list did not end */
		stop(p, 1, r.lines ? "CAPA list not ended%s" : "no reply to CAPA%s", "");
		return -1;
	}
	p->offered = r.offered;
	if (!p->offered)
		return 1;
	if (send_line(p, "STLS") < 0 || read_reply(p, PROBE_POP3_STLS, &r, line, sizeof(line)) < 0) {
		stop(p, 1, "no reply to STLS%s", "");
		return -1;
	}
	if (!r.code) {
		snprintf(p->refusal, sizeof(p->refusal), "%.290s", line);
		return 1;
	}
	lr_discard(&p->lr);
	return 0;
}

/* ---- TLS --------------------------------------------------------------------------------- */

static int handshake(struct probe *p, struct tls_ctx *ctx)
{
	const char *sni = p->pol.nnames ? p->pol.names[0] : p->host;
	p->tls = tls_conn_new(ctx, sni);
	if (!p->tls) {
		snprintf(p->tls_error, sizeof(p->tls_error), "out of memory");
		return -1;
	}
	tls_conn_collect_chain(p->tls, &p->chain);
	int64_t deadline = now_ms() + p->timeout;
	char buf[16384];
	for (;;) {
		int rc = tls_conn_handshake(p->tls);
		if (flush_tls(p) < 0) {
			snprintf(p->tls_error, sizeof(p->tls_error), "connection lost");
			return -1;
		}
		if (rc == 0)
			break;
		if (rc != TLS_AGAIN) {
			const char *e = tls_conn_error_text(p->tls);
			snprintf(p->tls_error, sizeof(p->tls_error), "%s", e[0] ? e : "handshake failed");
			return -1;
		}
		rc = wait_fd(p, POLLIN, deadline);
		ssize_t r = rc < 0 ? -1 : recv(p->fd, buf, sizeof(buf), 0);
		if (r <= 0) {
			snprintf(p->tls_error, sizeof(p->tls_error), "%s",
				 rc == -ETIMEDOUT ? "handshake timeout" : "closed during the handshake");
			return -1;
		}
		if (tls_conn_feed(p->tls, buf, (size_t)r) < 0)
			return -1;
	}
	p->tls_ok = 1;
	p->version = tls_conn_version(p->tls);
	p->cipher = tls_conn_cipher(p->tls);
	p->have_pin = tls_conn_peer_spki_sha256(p->tls, p->pin) == 0;
	p->verify_result = tls_conn_check(p->tls, TLS_CHECK_VERIFY, p->pol.names, p->pol.nnames,
					  NULL, 0, p->verify_detail, sizeof(p->verify_detail));
	if (p->pol.npins)
		p->pin_result = tls_conn_check(p->tls, TLS_CHECK_FINGERPRINT, NULL, 0, p->pol.pins,
					       p->pol.npins, p->pin_detail, sizeof(p->pin_detail));
	return 0;
}

/* ---- the report ------------------------------------------------------------------------- */

static enum verdict verdict(const struct probe *p, enum cfg_policy level)
{
	switch (level) {
	case CFG_POLICY_NONE:
	case CFG_POLICY_MAY:
		return V_PASS;
	case CFG_POLICY_ENCRYPT:
		return p->tls_ok ? V_PASS : V_FAIL;
	case CFG_POLICY_FINGERPRINT:
		if (!p->tls_ok)
			return V_FAIL;
		if (!p->pol.npins)
			return V_UNSET;
		return p->pin_result ? V_FAIL : V_PASS;
	default:
		return p->tls_ok && !p->verify_result ? V_PASS : V_FAIL;
	}
}

/* The RFC 8460 result a failing policy level reports. */
static const char *result_of(const struct probe *p, enum cfg_policy level)
{
	if (!p->tls_ok)
		return p->offered == 0 || p->refusal[0] ? "starttls-not-supported"
							 : "tls-handshake-failure";
	if (level == CFG_POLICY_FINGERPRINT)
		return p->pin_result ? p->pin_result : "validation-failure";
	return p->verify_result;
}

static void pin_text(const struct probe *p, char *buf, size_t len)
{
	buf[0] = '\0';
	if (!p->have_pin)
		return;
	int o = snprintf(buf, len, "sha256:");
	for (int i = 0; i < 32 && o > 0 && (size_t)o + 3 < len; i++)
		o += snprintf(buf + o, len - (size_t)o, "%02x", p->pin[i]);
}

/* A JSON string (the value is escaped). */
static void jstr(FILE *f, const char *key, const char *v, int comma)
{
	fprintf(f, "%s\"%s\": ", comma ? ", " : "", key);
	if (!v) {
		fputs("null", f);
		return;
	}
	fputc('"', f);
	for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
		if (*c == '"' || *c == '\\')
			fprintf(f, "\\%c", *c);
		else if (*c < 0x20)
			fprintf(f, "\\u%04x", *c);
		else
			fputc(*c, f);
	}
	fputc('"', f);
}

static void report(const struct probe *p, FILE *f, int rc)
{
	char pin[80], src[32];
	pin_text(p, pin, sizeof(pin));
	if (p->route_name)
		policy_source(&p->pol, src, sizeof(src));
	else
		snprintf(src, sizeof(src), "default");
	enum verdict applies = verdict(p, p->pol.level);
	const char *offered = p->offered < 0 ? NULL : p->offered ? "yes" : "no";
	if (p->o->json) {
		fputc('{', f);
		jstr(f, "target", p->o->target, 0);
		jstr(f, "address", p->addr[0] ? p->addr : NULL, 1);
		jstr(f, "protocol", cfg_proto_name(p->protocol), 1);
		jstr(f, "tls_mode", cfg_tls_name(p->tls_mode), 1);
		jstr(f, "error", p->error[0] ? p->error : NULL, 1);
		jstr(f, "greeting", p->greeting[0] ? p->greeting : NULL, 1);
		jstr(f, "starttls_offered", offered, 1);
		jstr(f, "starttls_refusal", p->refusal[0] ? p->refusal : NULL, 1);
		jstr(f, "tls_version", p->tls_ok ? p->version : NULL, 1);
		jstr(f, "tls_cipher", p->tls_ok ? p->cipher : NULL, 1);
		jstr(f, "tls_error", p->tls_error[0] ? p->tls_error : NULL, 1);
		fputs(", \"chain\": [", f);
		for (int d = 0, first = 1; d < TLS_CHAIN_MAX; d++)
			for (int i = 0; i < p->chain.n; i++) {
				const struct tls_cert_info *c = &p->chain.certs[i];
				if (c->depth != d)
					continue;
				fprintf(f, "%s{\"depth\": %d", first ? "" : ", ", d);
				jstr(f, "subject", c->subject, 1);
				jstr(f, "issuer", c->issuer, 1);
				jstr(f, "names", c->names, 1);
				jstr(f, "expires", c->not_after, 1);
				jstr(f, "error", c->error[0] ? c->error : NULL, 1);
				fputc('}', f);
				first = 0;
			}
		fputc(']', f);
		jstr(f, "spki_pin", pin[0] ? pin : NULL, 1);
		jstr(f, "verify_name", p->pol.nnames ? p->pol.names[0] : NULL, 1);
		jstr(f, "verification",
		     !p->tls_ok ? result_of(p, CFG_POLICY_VERIFY) : p->verify_result ? p->verify_result : "ok", 1);
		jstr(f, "verification_detail", p->verify_detail[0] ? p->verify_detail : NULL, 1);
		fputs(", \"verdicts\": {", f);
		for (int l = CFG_POLICY_NONE; l <= CFG_POLICY_VERIFY; l++)
			fprintf(f, "%s\"%s\": \"%s\"", l ? ", " : "", level_names[l],
				verdict_names[verdict(p, (enum cfg_policy)l)]);
		fputc('}', f);
		jstr(f, "route", p->route_name, 1);
		jstr(f, "policy", level_names[p->pol.level], 1);
		jstr(f, "policy_mode", p->pol.mode == CFG_MODE_TESTING ? "testing" : "enforce", 1);
		jstr(f, "policy_source", src, 1);
		jstr(f, "policy_verdict", verdict_names[applies], 1);
		jstr(f, "result", applies == V_PASS ? NULL : result_of(p, p->pol.level), 1);
		fprintf(f, ", \"exit\": %d}\n", rc);
		return;
	}
	fprintf(f, "probe %s (%s, %s)\n", p->o->target, cfg_proto_name(p->protocol),
		cfg_tls_name(p->tls_mode));
	if (p->addr[0])
		fprintf(f, "  address       %s\n", p->addr);
	if (p->greeting[0]) {
		fprintf(f, "  greeting      ");
		for (const char *c = p->greeting; *c; c++)
			fputs(*c == '\n' ? "\n                " : (char[]){ *c, 0 }, f);
		fputc('\n', f);
	}
	if (offered)
		fprintf(f, "  starttls      %s%s%s\n", p->offered ? "offered" : "not offered",
			p->refusal[0] ? ", refused: " : "", p->refusal);
	if (p->error[0])
		fprintf(f, "  error         %s\n", p->error);
	if (p->tls_ok)
		fprintf(f, "  tls           %s %s\n", p->version, p->cipher);
	else if (p->tls_error[0])
		fprintf(f, "  tls           failed: %s\n", p->tls_error);
	for (int d = 0; d < TLS_CHAIN_MAX; d++)
		for (int i = 0; i < p->chain.n; i++) {
			const struct tls_cert_info *c = &p->chain.certs[i];
			if (c->depth != d)
				continue;
			fprintf(f, "  certificate %d subject=%s\n", d, c->subject);
			fprintf(f, "                issuer=%s\n", c->issuer);
			if (c->names[0])
				fprintf(f, "                names=%s\n", c->names);
			fprintf(f, "                expires=%s%s%s\n", c->not_after,
				c->error[0] ? " error=" : "", c->error);
		}
	if (pin[0])
		fprintf(f, "  spki pin      %s\n", pin);
	if (p->tls_ok)
		fprintf(f, "  verification  %s (name %s)%s%s\n",
			p->verify_result ? p->verify_result : "ok",
			p->pol.nnames ? p->pol.names[0] : "-", p->verify_detail[0] ? ": " : "",
			p->verify_detail);
	fprintf(f, "  verdicts      ");
	for (int l = CFG_POLICY_NONE; l <= CFG_POLICY_VERIFY; l++)
		fprintf(f, "%s%s=%s", l ? " " : "", level_names[l],
			verdict_names[verdict(p, (enum cfg_policy)l)]);
	fputc('\n', f);
	fprintf(f, "  policy        %s, %s (%s%s%s%s): %s%s%s\n", level_names[p->pol.level],
		p->pol.mode == CFG_MODE_TESTING ? "testing" : "enforce",
		p->route_name ? "route " : "", p->route_name ? p->route_name : "", p->route_name ? ", " : "",
		src,
		applies == V_PASS ? "would pass" : applies == V_UNSET ? "no pin configured" : "would block",
		applies == V_PASS ? "" : ", ", applies == V_PASS ? "" : result_of(p, p->pol.level));
	if (applies != V_PASS && p->pol.mode == CFG_MODE_TESTING)
		fprintf(f, "                (testing mode: reported, not enforced)\n");
}

/* ---- the run ------------------------------------------------------------------------------- */

static int connect_to(struct probe *p)
{
	char port[8];
	snprintf(port, sizeof(port), "%u", p->port);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res;
	int rc = getaddrinfo(p->host, port, &hints, &res);
	if (rc != 0) {
		stop(p, 1, "cannot resolve: %s", gai_strerror(rc));
		return -1;
	}
	int err = 0;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		p->fd = fd;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
			err = errno;
			close(fd);
			continue;
		}
		if (wait_fd(p, POLLOUT, now_ms() + p->timeout) < 0) {
			err = ETIMEDOUT;
			close(fd);
			continue;
		}
		socklen_t el = sizeof(err);
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
		if (err) {
			close(fd);
			continue;
		}
		char host[INET6_ADDRSTRLEN] = "?";
		uint16_t pt = 0;
		if (ai->ai_family == AF_INET) {
			inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, host, sizeof(host));
			pt = ntohs(((struct sockaddr_in *)ai->ai_addr)->sin_port);
			snprintf(p->addr, sizeof(p->addr), "%s:%u", host, pt);
		} else {
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, host, sizeof(host));
			pt = ntohs(((struct sockaddr_in6 *)ai->ai_addr)->sin6_port);
			snprintf(p->addr, sizeof(p->addr), "[%s]:%u", host, pt);
		}
		freeaddrinfo(res);
		return 0;
	}
	freeaddrinfo(res);
	p->fd = -1;
	stop(p, 1, "cannot connect: %s", strerror(err ? err : ECONNREFUSED));
	return -1;
}

static int parse_protocol(const char *s, enum cfg_proto *out)
{
	static const char *const names[] = { "smtp", "lmtp", "imap", "pop3", "tcp" };
	for (int i = 0; i < 5; i++)
		if (!strcasecmp(s, names[i])) {
			*out = (enum cfg_proto)i;
			return 0;
		}
	return -EINVAL;
}

int probe_run(const struct probe_opts *o, FILE *out)
{
	struct probe p = { .o = o, .fd = -1, .offered = -1 };
	p.timeout = o->timeout_ms > 0 ? o->timeout_ms : 10000;
	lr_init(&p.lr, PROBE_LINE_MAX);
	if (cfg_parse_hostport(o->target, p.host, sizeof(p.host), &p.port) < 0) {
		fprintf(stderr, "--probe: invalid HOST:PORT \"%s\"\n", o->target);
		return 2;
	}
	struct cfg *cfg = NULL;
	const struct cfg_route *r = NULL;
	p.protocol = CFG_PROTO_SMTP;
	p.tls_mode = CFG_TLS_STARTTLS;
	p.route_min_tls = 12;
	p.pol.level = CFG_POLICY_VERIFY;
	p.pol.mode = CFG_MODE_ENFORCE;
	if (o->route) {
		struct cfg_errors errs = { 0 };
		int rc = cfg_load(o->config, &cfg, &errs);
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msg[i]);
		cfg_errors_free(&errs);
		if (rc < 0)
			return 2;
		for (size_t i = 0; i < cfg->nroutes && !r; i++)
			if (!strcmp(cfg->routes[i].name, o->route))
				r = &cfg->routes[i];
		if (!r) {
			fprintf(stderr, "--route: no route \"%s\" in %s\n", o->route, o->config);
			cfg_unref(cfg);
			return 2;
		}
		p.route_name = r->name;
		p.protocol = r->protocol;
		p.route_min_tls = r->upstream_min_tls;
		p.ca = r->upstream_ca;
		p.cert = r->upstream_cert;
		p.key = r->upstream_key;
	}
	if (o->protocol && parse_protocol(o->protocol, &p.protocol) < 0) {
		fprintf(stderr, "--protocol: expected smtp, lmtp, imap, pop3 or tcp\n");
		cfg_unref(cfg);
		return 2;
	}
	if (p.protocol == CFG_PROTO_TCP)
		p.tls_mode = CFG_TLS_IMPLICIT;
	int connected = connect_to(&p) == 0;
	if (r) {
		/* The route's own keys and its table row for this destination. */
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		if (!connected || getpeername(p.fd, (struct sockaddr *)&ss, &sl) < 0)
			memset(&ss, 0, sizeof(ss));
		policy_decide(r, connected ? (struct sockaddr *)&ss : NULL, p.port, &p.pol);
		if (p.pol.tls != CFG_TLS_NONE)
			p.tls_mode = p.pol.tls;
	}
	if (o->tls)
		p.tls_mode = !strcasecmp(o->tls, "implicit") ? CFG_TLS_IMPLICIT : CFG_TLS_STARTTLS;
	if (o->name || !p.pol.nnames) {
		p.names[0] = o->name ? o->name : p.host;
		p.pol.names = p.names;
		p.pol.nnames = 1;
	}
	if (o->ca)
		p.ca = o->ca;
	if (!p.ca)
		p.ca = SYSTEM_CA;
	/* A context of the route's kind, with a trust store so that the chain is verified
	 * and reported whatever the level. */
	struct tls_ctx *ctx = NULL;
	char err[400];
	struct tls_client_opts co = { .ca = p.ca, .cert = p.cert, .key = p.key,
				      .min_version = p.route_min_tls };
	if (tls_ctx_client_new(&co, &ctx, err, sizeof(err)) < 0) {
		fprintf(stderr, "--probe: %s\n", err);
		if (p.fd >= 0)
			close(p.fd);
		cfg_unref(cfg);
		return 2;
	}
	if (connected) {
		int start = 0; /* 0: TLS now; 1: no TLS; -1: stopped */
		if (p.tls_mode == CFG_TLS_STARTTLS) {
			if (p.protocol == CFG_PROTO_IMAP)
				start = imap_starttls(&p);
			else if (p.protocol == CFG_PROTO_POP3)
				start = pop3_starttls(&p);
			else if (p.protocol == CFG_PROTO_TCP)
				start = 0;
			else
				start = smtp_starttls(&p, p.protocol == CFG_PROTO_LMTP);
		}
		if (start == 0) {
			if (handshake(&p, ctx) == 0 && p.tls_mode == CFG_TLS_IMPLICIT &&
			    p.protocol != CFG_PROTO_TCP) {
				/* the greeting comes inside TLS */
				if (p.protocol == CFG_PROTO_SMTP || p.protocol == CFG_PROTO_LMTP) {
					if (smtp_reply(&p, p.greeting, sizeof(p.greeting), NULL) < 0)
						stop(&p, 1, "no SMTP greeting inside TLS%s", "");
				} else if (read_reply(&p, PROBE_LINE, &(struct probe_reply){ 0 },
						      p.greeting, sizeof(p.greeting)) < 0) {
					stop(&p, 1, "no greeting inside TLS%s", "");
				}
			}
		}
		if (!p.error[0] && (p.protocol == CFG_PROTO_SMTP || p.protocol == CFG_PROTO_LMTP))
			smtp_quit(&p);
		else if (!p.error[0] && p.protocol == CFG_PROTO_POP3)
			send_line(&p, "QUIT");
		else if (!p.error[0] && p.protocol == CFG_PROTO_IMAP)
			send_line(&p, "P9 LOGOUT");
	}
	int rc = p.unreachable ? 2 : verdict(&p, p.pol.level) == V_FAIL && p.pol.mode == CFG_MODE_ENFORCE ? 1 : 0;
	if (verdict(&p, p.pol.level) == V_UNSET)
		rc = 1; /* fingerprint without a pin cannot pass */
	report(&p, out, rc);
	if (p.tls)
		tls_conn_free(p.tls);
	tls_ctx_free(ctx);
	if (p.fd >= 0)
		close(p.fd);
	lr_free(&p.lr);
	cfg_unref(cfg);
	return rc;
}
