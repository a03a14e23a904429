/* proto_smtp.c - SMTP and LMTP: STARTTLS injection toward the upstream, STARTTLS
 * termination toward the client, and the command/reply bookkeeping both need.
 *
 * Bytes in, actions out; no I/O. Two parsers run side by side: client commands (bounded
 * lines; message data passed through, never parsed as commands) and upstream replies
 * (bounded, multi-line). A FIFO of expected replies keeps pipelined commands, replies the
 * module answers itself, and the module's own commands (EHLO, STARTTLS, RSET, XCLIENT) in
 * order. */
#include "proto_smtp.h"

#include "buf.h"
#include "log.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum ustate {
	U_CONNECTING, /* waiting for TCP (or implicit TLS) */
	U_GREETING,   /* waiting for the 220 greeting */
	U_EHLO,       /* our EHLO sent, looking for STARTTLS */
	U_STARTTLS,   /* our STARTTLS sent, waiting for 220 */
	U_HANDSHAKE,  /* TLS handshake running */
	U_READY,      /* relaying */
	U_DONE,       /* failed or closing */
};

static const char *const ustate_names[] = { "connecting", "greeting", "ehlo", "starttls",
					    "handshake", "ready", "done" };

enum cstate {
	C_COMMAND,   /* parsing commands */
	C_HOLD,      /* waiting for a reply before the next client byte means anything */
	C_BODY,      /* DATA body until <CRLF>.<CRLF> */
	C_BDAT,      /* BDAT chunk octets */
	C_AUTH_LINE, /* the next line is an AUTH response, not a command */
	C_DISCARD,   /* after STARTTLS: everything before the handshake is dropped */
};

enum ekind {
	/* replies to commands the module sent itself (not relayed) */
	E_GREETING, E_INT_EHLO, E_INT_STARTTLS, E_INT_RSET, E_INT_XEHLO, E_INT_XCLIENT,
	/* replies to client commands (relayed) */
	E_EHLO, E_HELO, E_MAIL, E_RCPT, E_DATA, E_DATA_END, E_BDAT, E_BDAT_LAST, E_AUTH,
	E_RSET, E_QUIT, E_OTHER,
	/* answered by the module when they reach the head of the queue */
	E_LOCAL, E_LOCAL_STARTTLS, E_LOCAL_CLOSE,
};

struct entry {
	enum ekind kind;
	int replies_left; /* LMTP end of data: answers still due (-1: not known yet) */
	uint64_t sent_at; /* upstream bytes received when the command was sent: a reply that
			     starts before this offset cannot be its answer */
	char text[200];   /* E_LOCAL, E_LOCAL_CLOSE: the whole reply */
};

struct smtp {
	struct proto_params p;
	int lmtp;
	enum ustate u;
	enum cstate c;
	/* client side */
	struct buf in;          /* client bytes not yet processed */
	int long_line;            /* dropping the tail of an overlong command line */
	int client_greeted;
	int client_tls;           /* TLS active toward the client */
	int helo_required;        /* after client TLS: EHLO/HELO before anything else */
	int helo_seen;
	int in_tx, rcpt_ok, auth_done, quit_seen, client_eof;
	uint64_t bdat_left;
	int bdat_skip;            /* the chunk was refused: its octets are dropped */
	int wait_caps;            /* a BDAT waits for the EHLO reply (is CHUNKING offered?) */
	int chunking;             /* the upstream offered CHUNKING to this client session */
	uint64_t size_limit;      /* its SIZE (0: none announced) */
	int body_ls, body_dot, body_cr, body_bad; /* DATA end detection (body_bytes) */
	int xclient_state;        /* 0 not tried, 1 running, 2 done */
	int xclient_helo_is_ehlo;
	char xclient_helo[256];
	/* upstream side */
	struct buf rin;         /* upstream bytes not yet parsed into lines */
	struct buf reply;       /* current (multi-line) reply */
	size_t reply_lines;
	int upstream_tls;
	struct buf greeting;    /* the upstream's greeting, sent to the client when ready */
	uint64_t up_rx;           /* upstream bytes received so far */
	uint64_t reply_start;     /* offset of the first byte of the reply being parsed */
	int early_reply;          /* a reply came before its command was sent */
	/* expected replies */
	struct entry q[SMTP_PIPELINE_MAX + 8];
	size_t qhead, qlen;
};

#define QCAP (SMTP_PIPELINE_MAX + 8)

/* ---- small helpers ----------------------------------------------------------------- */

static void enter_state(struct smtp *s, enum ustate u)
{
	if (s->u == u)
		return;
	log_event(LOG_DEBUG, s->p.session_id, s->p.route, "smtp_state", "from",
		  ustate_names[s->u], "to", ustate_names[u], NULL);
	s->u = u;
}

static const char *hello_verb(const struct smtp *s)
{
	return s->lmtp ? "LHLO" : "EHLO";
}

static struct entry *q_push(struct smtp *s, enum ekind k)
{
	struct entry *e = &s->q[(s->qhead + s->qlen) % QCAP];
	s->qlen++;
	e->kind = k;
	e->replies_left = -1;
	e->sent_at = s->up_rx;
	e->text[0] = '\0';
	return e;
}

static struct entry *q_head(struct smtp *s)
{
	return s->qlen ? &s->q[s->qhead] : NULL;
}

static void q_pop(struct smtp *s)
{
	s->qhead = (s->qhead + 1) % QCAP;
	s->qlen--;
}

static void local_reply(struct smtp *s, const char *fmt, const char *arg)
{
	struct entry *e = q_push(s, E_LOCAL);
	snprintf(e->text, sizeof(e->text), fmt, arg ? arg : "");
}

static void send_up(struct smtp *s, struct proto_actions *a, const char *line)
{
	proto_sendf(a, PROTO_UPSTREAM, "%s\r\n", line);
	(void)s;
}

/* Ends the session with a final reply to the client. */
static void finish(struct smtp *s, struct proto_actions *a, const char *reply,
		   const char *reason)
{
	if (s->u == U_DONE)
		return;
	if (reply)
		proto_sendf(a, PROTO_CLIENT, "%s\r\n", reply);
	enter_state(s, U_DONE);
	proto_close(a, reason);
}

/* The upstream broke the protocol: the client gets a temporary failure and the end. */
static void protocol_error(struct smtp *s, struct proto_actions *a, const char *what,
			   const char *reason)
{
	log_event(LOG_WARN, s->p.session_id, s->p.route, "protocol_error", "side", "upstream",
		  "error", what, NULL);
	finish(s, a,
	       s->client_greeted ? "421 4.4.2 Upstream protocol error, closing connection"
				 : "421 4.4.1 Upstream protocol error, try again later",
	       reason);
}

/* ---- EHLO reply rewriting -------------------------------------------------------- */

int smtp_line_has_keyword(const char *line, size_t len, const char *keyword)
{
	if (len < 4)
		return 0;
	const char *t = line + 4, *end = line + len;
	while (end > t && (end[-1] == '\n' || end[-1] == '\r'))
		end--;
	size_t kl = strlen(keyword);
	if ((size_t)(end - t) < kl || strncasecmp(t, keyword, kl) != 0)
		return 0;
	if (t + kl == end || t[kl] == ' ')
		return 1;
	return strcasecmp(keyword, "AUTH") == 0 && t[kl] == '=';
}

static int drop_line(const char *l, size_t n, unsigned hide)
{
	return smtp_line_has_keyword(l, n, "STARTTLS") || smtp_line_has_keyword(l, n, "XCLIENT") ||
	       smtp_line_has_keyword(l, n, "XFORWARD") ||
	       ((hide & SMTP_HIDE_AUTH) && smtp_line_has_keyword(l, n, "AUTH")) ||
	       ((hide & SMTP_HIDE_REQUIRETLS) && smtp_line_has_keyword(l, n, "REQUIRETLS"));
}

long smtp_rewrite_ehlo(const char *reply, size_t len, int add_starttls, unsigned hide,
		       char *out, size_t cap)
{
	/* Collect the kept lines' text (after "ddd?"), then re-emit with marks. */
	const char *kept[SMTP_REPLY_LINES_MAX + 1];
	size_t klen[SMTP_REPLY_LINES_MAX + 1];
	size_t nk = 0;
	char code[4] = "250";
	const char *p = reply, *end = reply + len;
	int first = 1;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl + 1 : end;
		size_t n = (size_t)(le - p);
		if (n >= 3 && first)
			memcpy(code, p, 3);
		if (first || !drop_line(p, n, hide)) {
			if (nk == SMTP_REPLY_LINES_MAX)
				return -1;
			const char *t = n > 4 ? p + 4 : p + n;
			const char *te = le;
			while (te > t && (te[-1] == '\n' || te[-1] == '\r'))
				te--;
			kept[nk] = t;
			klen[nk++] = (size_t)(te - t);
		}
		first = 0;
		p = le;
	}
	if (add_starttls) {
		kept[nk] = "STARTTLS";
		klen[nk++] = 8;
	}
	size_t o = 0;
	for (size_t i = 0; i < nk; i++) {
		size_t need = 4 + klen[i] + 2;
		if (o + need > cap)
			return -1;
		memcpy(out + o, code, 3);
		out[o + 3] = i + 1 < nk ? '-' : ' ';
		memcpy(out + o + 4, kept[i], klen[i]);
		o += 4 + klen[i];
		out[o++] = '\r';
		out[o++] = '\n';
	}
	return (long)o;
}

/* ---- client greeting ------------------------------------------------------------- */

static void process_client(struct smtp *s, struct proto_actions *a);

static void upstream_ready(struct smtp *s, struct proto_actions *a)
{
	enter_state(s, U_READY);
	proto_ready(a);
	proto_send(a, PROTO_CLIENT, buf_ptr(&s->greeting), s->greeting.len);
	buf_free(&s->greeting);
	s->client_greeted = 1;
	process_client(s, a);
}

static void policy_log(struct smtp *s, struct proto_actions *a, const char *result,
		       const char *detail)
{
	proto_policy(a, result);
	log_event(LOG_WARN, s->p.session_id, s->p.route, "policy_failure", "side", "upstream",
		  "result", result, "mode",
		  s->p.policy_mode == CFG_MODE_ENFORCE ? "enforce" : "testing", "policy",
		  cfg_policy_name(s->p.upstream_policy), "detail", detail, NULL);
}

/* The upstream does not offer STARTTLS, or refused it. */
static void starttls_unavailable(struct smtp *s, struct proto_actions *a, const char *detail)
{
	int may = s->p.upstream_policy == CFG_POLICY_MAY;
	if (!may)
		policy_log(s, a, "starttls-not-supported", detail);
	if (may || s->p.policy_mode == CFG_MODE_TESTING) {
		log_event(LOG_INFO, s->p.session_id, s->p.route, "upstream_tls", "tls", "none",
			  "policy", cfg_policy_name(s->p.upstream_policy), "detail", detail, NULL);
		upstream_ready(s, a);
		return;
	}
	send_up(s, a, "QUIT");
	char r[300];
	snprintf(r, sizeof(r),
		 "421 4.7.0 %s TLS is required toward the upstream server and it does not offer "
		 "STARTTLS; try again later",
		 s->p.helo_name);
	finish(s, a, r, "upstream policy failure");
}

/* ---- replies --------------------------------------------------------------------- */

static int reply_code(const struct smtp *s)
{
	const uint8_t *b = buf_ptr(&s->reply);
	return (b[0] - '0') * 100 + (b[1] - '0') * 10 + (b[2] - '0');
}

static void relay_reply(struct smtp *s, struct proto_actions *a)
{
	proto_send(a, PROTO_CLIENT, buf_ptr(&s->reply), s->reply.len);
}

/* The upstream's capabilities the module acts on, from the EHLO reply the client gets. */
static void learn_caps(struct smtp *s)
{
	const char *p = (const char *)buf_ptr(&s->reply), *end = p + s->reply.len;
	s->chunking = 0;
	s->size_limit = 0;
	int first = 1;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl + 1 : end;
		size_t n = (size_t)(le - p);
		if (!first && smtp_line_has_keyword(p, n, "CHUNKING"))
			s->chunking = 1;
		if (!first && smtp_line_has_keyword(p, n, "SIZE") && n > 9) {
			uint64_t v = 0;
			const char *q = p + 9;
			while (q < le && isdigit((unsigned char)*q) && v < (1ULL << 60))
				v = v * 10 + (uint64_t)(*q++ - '0');
			s->size_limit = v;
		}
		first = 0;
		p = le;
	}
}

static void relay_ehlo(struct smtp *s, struct proto_actions *a)
{
	int add = s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls;
	unsigned hide = 0;
	if (add && s->p.client_policy == CFG_POLICY_ENCRYPT)
		hide |= SMTP_HIDE_AUTH;
	if (!s->client_tls) /* REQUIRETLS means something only where TLS is */
		hide |= SMTP_HIDE_REQUIRETLS;
	learn_caps(s);
	size_t cap = s->reply.len + 32;
	char *out = malloc(cap);
	long n = out ? smtp_rewrite_ehlo((const char *)buf_ptr(&s->reply), s->reply.len, add, hide,
					 out, cap)
		     : -1;
	if (n > 0)
		proto_send(a, PROTO_CLIENT, out, (size_t)n);
	else /* never relay it unfiltered */
		finish(s, a, "421 4.3.0 Out of memory, closing connection", "out of memory");
	free(out);
}

/* xtext (RFC 3461) for XCLIENT attribute values. */
static void xtext(const char *in, char *out, size_t cap)
{
	size_t o = 0;
	for (; *in && o + 4 < cap; in++) {
		unsigned char c = (unsigned char)*in;
		if (c < 33 || c > 126 || c == '+' || c == '=')
			o += (size_t)snprintf(out + o, cap - o, "+%02X", c);
		else
			out[o++] = (char)c;
	}
	out[o] = '\0';
}

static void xclient_done(struct smtp *s, struct proto_actions *a, const char *result)
{
	log_event(result[0] == 'o' ? LOG_INFO : LOG_WARN, s->p.session_id, s->p.route,
		  "xclient", "result", result, NULL);
	s->xclient_state = 2;
	s->c = C_COMMAND;
	(void)a;
}

static void send_xclient(struct smtp *s, struct proto_actions *a)
{
	/* Which attributes the upstream accepts: "250-XCLIENT NAME ADDR PORT PROTO HELO". */
	const char *p = (const char *)buf_ptr(&s->reply), *end = p + s->reply.len;
	char attrs[512] = "";
	int offered = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl + 1 : end;
		if (smtp_line_has_keyword(p, (size_t)(le - p), "XCLIENT")) {
			size_t n = (size_t)(le - p) - 4;
			if (n >= sizeof(attrs))
				n = sizeof(attrs) - 1;
			memcpy(attrs, p + 4, n);
			attrs[n] = '\0';
			offered = 1;
		}
		p = le;
	}
	if (!offered) {
		xclient_done(s, a, "not-offered");
		return;
	}
	char cmd[1024], v[600];
	int n = snprintf(cmd, sizeof(cmd), "XCLIENT");
#define HAS(attr) (strcasestr(attrs, " " attr) != NULL)
	if (HAS("NAME"))
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " NAME=[UNAVAILABLE]");
	if (HAS("ADDR")) {
		xtext(s->p.client_ip, v, sizeof(v));
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " ADDR=%s%s",
			      strchr(s->p.client_ip, ':') ? "IPV6:" : "", v);
	}
	if (HAS("PORT"))
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " PORT=%u", s->p.client_port);
	if (HAS("PROTO"))
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " PROTO=%s",
			      s->xclient_helo_is_ehlo ? "ESMTP" : "SMTP");
	if (HAS("HELO") && s->xclient_helo[0]) {
		xtext(s->xclient_helo, v, sizeof(v));
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " HELO=%s", v);
	}
#undef HAS
	send_up(s, a, cmd);
	q_push(s, E_INT_XCLIENT);
}

static void drain_locals(struct smtp *s, struct proto_actions *a);

/* An EHLO/HELO reply was handled: a BDAT that waited for it is looked at again. */
static void caps_known(struct smtp *s)
{
	int pending = 0;
	for (size_t i = 0; i < s->qlen; i++) {
		enum ekind k = s->q[(s->qhead + i) % QCAP].kind;
		pending |= k == E_EHLO || k == E_HELO;
	}
	if (s->wait_caps && !pending) {
		s->wait_caps = 0;
		s->c = C_COMMAND;
	}
}

/* One complete reply from the upstream. */
static void handle_reply(struct smtp *s, struct proto_actions *a)
{
	int code = reply_code(s);
	struct entry *e = q_head(s);
	if (!e || e->kind >= E_LOCAL) {
		if (code == 421 && s->client_greeted) {
			relay_reply(s, a);
			finish(s, a, NULL, "upstream closed (421)");
			return;
		}
		protocol_error(s, a, "reply without a command", "upstream protocol error");
		return;
	}
	if (s->reply_start < e->sent_at) {
		/* Written before the upstream could have read the command (e.g. a "220" glued to
		 * the EHLO reply ahead of our STARTTLS): never taken as its answer. */
		s->early_reply = 1;
		protocol_error(s, a, "reply before its command was sent", "upstream protocol error");
		return;
	}
	enum ekind k = e->kind;
	q_pop(s);
	if (code == 421 && k < E_EHLO && s->client_greeted) {
		/* The upstream is closing while answering one of our own commands. */
		relay_reply(s, a);
		finish(s, a, NULL, "upstream closed (421)");
		return;
	}
	switch (k) {
	case E_GREETING:
		if (code != 220) {
			log_event(LOG_WARN, s->p.session_id, s->p.route, "upstream_refused", "code",
				  code == 554 ? "554" : code / 100 == 4 ? "4xx" : "5xx", NULL);
			if (s->p.upstream_tls == CFG_TLS_STARTTLS) {
				/* A greeting before STARTTLS is unauthenticated: anyone on the path
				 * could have written it, so it must not make the client bounce. */
				char r[300];
				snprintf(r, sizeof(r),
					 "421 4.4.1 %s Upstream server refused service (%d); try again later",
					 s->p.helo_name, code);
				finish(s, a, r, "upstream refused service");
				return;
			}
			/* Otherwise it comes from the upstream itself: tell the client in its words. */
			relay_reply(s, a);
			finish(s, a, NULL, "upstream refused service");
			return;
		}
		buf_append(&s->greeting, buf_ptr(&s->reply), s->reply.len);
		if (s->p.upstream_tls == CFG_TLS_STARTTLS && !s->upstream_tls) {
			char cmd[300];
			snprintf(cmd, sizeof(cmd), "%s %s", hello_verb(s), s->p.helo_name);
			send_up(s, a, cmd);
			q_push(s, E_INT_EHLO);
			enter_state(s, U_EHLO);
		} else {
			upstream_ready(s, a);
		}
		return;
	case E_INT_EHLO: {
		int offered = 0;
		if (code == 250) {
			const char *p = (const char *)buf_ptr(&s->reply), *end = p + s->reply.len;
			int first = 1;
			while (p < end) {
				const char *nl = memchr(p, '\n', (size_t)(end - p));
				const char *le = nl ? nl + 1 : end;
				if (!first && smtp_line_has_keyword(p, (size_t)(le - p), "STARTTLS"))
					offered = 1;
				first = 0;
				p = le;
			}
		}
		if (!offered) {
			starttls_unavailable(s, a, code == 250 ? "STARTTLS not offered"
							       : "EHLO rejected");
			return;
		}
		send_up(s, a, "STARTTLS");
		q_push(s, E_INT_STARTTLS);
		enter_state(s, U_STARTTLS);
		return;
	}
	case E_INT_STARTTLS:
		if (code != 220) {
			char d[64];
			snprintf(d, sizeof(d), "STARTTLS refused with %d", code);
			starttls_unavailable(s, a, d);
			return;
		}
		/* Whatever the upstream sent after its 220 was sent before TLS: dropped. */
		s->rin.len = 0;
		enter_state(s, U_HANDSHAKE);
		proto_starttls(a, PROTO_UPSTREAM);
		return;
	case E_INT_RSET:
		return;
	case E_INT_XEHLO:
		if (code != 250) {
			xclient_done(s, a, "ehlo-rejected");
			return;
		}
		send_xclient(s, a);
		return;
	case E_INT_XCLIENT:
		xclient_done(s, a, code == 220 ? "ok" : "rejected");
		if (code == 220) /* XCLIENT restarts the session: the client's EHLO follows */
			s->helo_seen = 0;
		return;
	case E_EHLO:
		if (code == 250) {
			relay_ehlo(s, a);
			s->in_tx = 0;
		} else {
			relay_reply(s, a);
		}
		caps_known(s);
		break;
	case E_HELO:
		relay_reply(s, a);
		if (code == 250) {
			s->in_tx = 0;
			s->chunking = 0; /* no extensions after HELO */
			s->size_limit = 0;
		}
		caps_known(s);
		break;
	case E_MAIL:
		relay_reply(s, a);
		if (code / 100 == 2) {
			s->in_tx = 1;
			s->rcpt_ok = 0;
		}
		break;
	case E_RCPT:
		relay_reply(s, a);
		if (code / 100 == 2)
			s->rcpt_ok++;
		break;
	case E_DATA:
		relay_reply(s, a);
		if (code == 354) {
			s->c = C_BODY;
			s->body_ls = 1;
			s->body_dot = s->body_cr = s->body_bad = 0;
		} else {
			s->c = C_COMMAND;
		}
		break;
	case E_DATA_END:
	case E_BDAT_LAST: {
		relay_reply(s, a);
		/* LMTP answers once per accepted recipient (RFC 2033 §4.2). Every RCPT reply came
		 * before this one, so the count is known now, also when BDAT was pipelined. */
		int left = e->replies_left;
		if (left < 0)
			left = s->lmtp && s->rcpt_ok > 1 ? s->rcpt_ok : 1;
		if (--left > 0 && code != 421) {
			s->qhead = (s->qhead + QCAP - 1) % QCAP; /* the entry stays at the head */
			s->qlen++;
			s->q[s->qhead].replies_left = left;
			break;
		}
		s->in_tx = 0;
		s->rcpt_ok = 0;
		break;
	}
	case E_BDAT:
		relay_reply(s, a);
		break;
	case E_AUTH:
		relay_reply(s, a);
		if (code == 334) {
			s->c = C_AUTH_LINE;
		} else {
			if (code == 235)
				s->auth_done = 1;
			s->c = C_COMMAND;
		}
		break;
	case E_RSET:
		relay_reply(s, a);
		if (code / 100 == 2)
			s->in_tx = 0;
		break;
	case E_QUIT:
		relay_reply(s, a);
		finish(s, a, NULL, "quit");
		return;
	default:
		relay_reply(s, a);
		break;
	}
	if (code == 421) {
		finish(s, a, NULL, "upstream closed (421)");
		return;
	}
}

/* Parses upstream bytes into replies. A malformed or oversized reply ends the session. */
static void upstream_bytes(struct smtp *s, struct proto_actions *a)
{
	size_t off = 0;
	while (s->u != U_DONE && s->u != U_HANDSHAKE) {
		uint8_t *start = buf_ptr(&s->rin) + off;
		size_t avail = s->rin.len - off;
		uint8_t *nl = memchr(start, '\n', avail);
		if (!nl) {
			if (avail > SMTP_REPLY_LINE_MAX)
				goto toolong;
			break;
		}
		size_t n = (size_t)(nl - start) + 1;
		if (n > SMTP_REPLY_LINE_MAX)
			goto toolong;
		off += n;
		size_t tl = n - 1;
		if (tl && start[tl - 1] == '\r')
			tl--;
		if (tl < 3 || !isdigit(start[0]) || !isdigit(start[1]) || !isdigit(start[2]) ||
		    (tl > 3 && start[3] != ' ' && start[3] != '-') || start[0] < '2' ||
		    start[0] > '5') {
			protocol_error(s, a, "malformed reply line", "upstream protocol error");
			return;
		}
		if (s->reply.len == 0)
			s->reply_start = s->up_rx - s->rin.len + (off - n);
		if (s->reply.len && memcmp(buf_ptr(&s->reply), start, 3) != 0) {
			protocol_error(s, a, "reply code changed within a reply",
				       "upstream protocol error");
			return;
		}
		if (s->reply.len + tl + 2 > SMTP_REPLY_MAX ||
		    ++s->reply_lines > SMTP_REPLY_LINES_MAX)
			goto toolong;
		buf_append(&s->reply, start, tl);
		buf_append(&s->reply, "\r\n", 2);
		if (tl == 3 || start[3] == ' ') {
			handle_reply(s, a);
			s->reply.len = 0;
			s->reply_lines = 0;
			drain_locals(s, a);
			process_client(s, a);
			if (s->client_eof && s->qlen == 0)
				finish(s, a, NULL, s->quit_seen ? "quit" : "client closed");
		}
		if (s->u == U_HANDSHAKE) { /* STARTTLS accepted: the rest was dropped */
			off = 0;
			s->rin.len = 0;
			break;
		}
	}
	buf_consume(&s->rin, off);
	return;
toolong:
	s->rin.len = 0;
	protocol_error(s, a, "reply too long", "upstream reply too long");
}

/* ---- client commands ------------------------------------------------------------- */

/* Answers the replies the module owns once everything before them has been answered. */
static void drain_locals(struct smtp *s, struct proto_actions *a)
{
	struct entry *e;
	while (s->u != U_DONE && (e = q_head(s)) && e->kind >= E_LOCAL) {
		if (e->kind == E_LOCAL) {
			proto_sendf(a, PROTO_CLIENT, "%s\r\n", e->text);
			q_pop(s);
			continue;
		}
		if (e->kind == E_LOCAL_CLOSE) {
			char r[sizeof(e->text)];
			memcpy(r, e->text, sizeof(r));
			q_pop(s);
			finish(s, a, r, "client protocol error");
			return;
		}
		q_pop(s); /* E_LOCAL_STARTTLS */
		if (s->in_tx || s->auth_done) {
			proto_sendf(a, PROTO_CLIENT, "503 5.5.1 %s\r\n",
				    s->in_tx ? "STARTTLS not permitted within a mail transaction"
					     : "STARTTLS not permitted after AUTH");
			s->c = C_COMMAND;
			continue;
		}
		proto_sendf(a, PROTO_CLIENT, "220 2.0.0 Ready to start TLS\r\n");
		s->in.len = 0; /* pipelined after STARTTLS: never processed */
		s->c = C_DISCARD;
		proto_starttls(a, PROTO_CLIENT);
	}
}

static void forward_cmd(struct smtp *s, struct proto_actions *a, const char *line, size_t len,
			enum ekind k)
{
	proto_send(a, PROTO_UPSTREAM, line, len);
	proto_send(a, PROTO_UPSTREAM, "\r\n", 2);
	q_push(s, k);
}

/* "BDAT" SP chunk-size [SP "LAST"] (RFC 3030 §2), strictly: one space, digits only (at
 * most 18), "LAST" in any case. 0, or -1 on a syntax error. */
static int parse_bdat(const char *p, size_t n, uint64_t *size, int *last)
{
	size_t i = 0, digits = 0;
	uint64_t v = 0;
	if (n < 2 || p[0] != ' ')
		return -1;
	for (i = 1; i < n && isdigit((unsigned char)p[i]); i++) {
		if (++digits > 18)
			return -1;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	if (!digits)
		return -1;
	*size = v;
	*last = 0;
	if (i == n)
		return 0;
	if (n - i == 5 && p[i] == ' ' && strncasecmp(p + i + 1, "LAST", 4) == 0) {
		*last = 1;
		return 0;
	}
	return -1;
}

/* A reply the module gives after every earlier one, then the end of the session. */
static void local_close(struct smtp *s, const char *fmt, const char *arg)
{
	struct entry *e = q_push(s, E_LOCAL_CLOSE);
	snprintf(e->text, sizeof(e->text), fmt, s->p.helo_name, arg ? arg : "");
	s->c = C_DISCARD; /* what follows cannot be told apart from chunk octets */
	s->in.len = 0;
}

/* A BDAT the module refuses with reply: the chunk's octets are still data (RFC 3030), so
 * they are skipped, never read as commands. A size that cannot be parsed or skipped
 * safely ends the session, as Postfix does. Returns 0 (the line is consumed). */
static int bdat_refuse(struct smtp *s, const char *line, size_t len, size_t vl,
		       const char *reply)
{
	uint64_t n;
	int last;
	if (parse_bdat(line + vl, len - vl, &n, &last) < 0) {
		local_close(s, "521 5.5.4 %s Syntax: BDAT chunk-size [LAST]; closing connection%s",
			    NULL);
		return 0;
	}
	if (n > SMTP_BDAT_MAX) {
		local_close(s, "552 5.3.4 %s Chunk size exceeds the limit; closing connection%s",
			    NULL);
		return 0;
	}
	local_reply(s, "%s", reply);
	s->bdat_left = n;
	s->bdat_skip = 1;
	if (n)
		s->c = C_BDAT;
	return 0;
}

/* BDAT: the chunk's octets are data for whoever takes the command, so the proxy and the
 * upstream must agree on who does. It goes up only when the upstream offered CHUNKING in
 * its reply to this client's EHLO (if that reply is still due, the line waits for it) and
 * the size is within its SIZE (else SMTP_BDAT_MAX); otherwise the module answers it and
 * skips the chunk. Returns 1 when the line must be kept for later. */
static int bdat_command(struct smtp *s, struct proto_actions *a, const char *line, size_t len,
			size_t vl)
{
	for (size_t i = 0; i < s->qlen; i++) {
		enum ekind k = s->q[(s->qhead + i) % QCAP].kind;
		if (k == E_EHLO || k == E_HELO) {
			s->wait_caps = 1;
			s->c = C_HOLD;
			return 1;
		}
	}
	uint64_t n;
	int last;
	if (parse_bdat(line + vl, len - vl, &n, &last) < 0)
		return bdat_refuse(s, line, len, vl, NULL);
	uint64_t limit = s->size_limit ? s->size_limit : SMTP_BDAT_MAX;
	if (n > limit) {
		local_close(s, "552 5.3.4 %s Chunk size exceeds the limit; closing connection%s",
			    NULL);
		return 0;
	}
	if (!s->chunking)
		return bdat_refuse(s, line, len, vl,
				   "502 5.5.1 BDAT not available: the server does not offer CHUNKING");
	forward_cmd(s, a, line, len, last ? E_BDAT_LAST : E_BDAT);
	s->bdat_left = n;
	s->bdat_skip = 0;
	if (n)
		s->c = C_BDAT;
	return 0;
}

/* One command line (terminator removed). Returns 1 when the line must be kept for later
 * (the XCLIENT exchange runs first), else 0. */
static int handle_command(struct smtp *s, struct proto_actions *a, char *line, size_t len)
{
	if (memchr(line, '\0', len) || memchr(line, '\r', len)) {
		local_reply(s, "500 5.5.2 Syntax error: bare CR or NUL in command%s", NULL);
		return 0;
	}
	/* The verb is letters and digits, ended by a space or the end of the line: anything
	 * else (" DATA", "DATA\t", "STARTTLS\f") is refused here, so that the proxy and the
	 * upstream can never read one line as two different commands. */
	size_t vl = 0;
	while (vl < len && isalnum((unsigned char)line[vl]))
		vl++;
	if (vl == 0 || (vl < len && line[vl] != ' ')) {
		local_reply(s, "500 5.5.2 Syntax error: command not recognized%s", NULL);
		return 0;
	}
	char verb[16] = "";
	if (vl < sizeof(verb)) {
		for (size_t i = 0; i < vl; i++)
			verb[i] = (char)toupper((unsigned char)line[i]);
		verb[vl] = '\0';
	}
	log_event(LOG_DEBUG, s->p.session_id, s->p.route, "smtp_command", "verb",
		  verb[0] ? verb : "?", NULL);
	int is_hello = !strcmp(verb, "EHLO") || !strcmp(verb, "HELO") || !strcmp(verb, "LHLO");

	if (!strcmp(verb, "STARTTLS")) {
		if (len > 8)
			local_reply(s, "501 5.5.4 Syntax: STARTTLS takes no parameters%s", NULL);
		else if (s->client_tls)
			local_reply(s, "554 5.5.1 TLS is already active%s", NULL);
		else if (s->p.client_tls != CFG_TLS_STARTTLS)
			local_reply(s, "502 5.5.1 STARTTLS is not available%s", NULL);
		else {
			q_push(s, E_LOCAL_STARTTLS);
			s->c = C_DISCARD;
		}
		return 0;
	}
	if (!strcmp(verb, "XCLIENT") || !strcmp(verb, "XFORWARD")) {
		local_reply(s, "502 5.5.1 Command not available%s", NULL);
		return 0;
	}
	if (s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls &&
	    s->p.client_policy == CFG_POLICY_ENCRYPT && !is_hello && strcmp(verb, "NOOP") &&
	    strcmp(verb, "RSET") && strcmp(verb, "QUIT")) {
		if (!strcmp(verb, "BDAT"))
			return bdat_refuse(s, line, len, vl,
					   "530 5.7.0 Must issue a STARTTLS command first");
		local_reply(s, "530 5.7.0 Must issue a STARTTLS command first%s", NULL);
		return 0;
	}
	if (s->helo_required && !s->helo_seen && !is_hello && strcmp(verb, "NOOP") &&
	    strcmp(verb, "RSET") && strcmp(verb, "QUIT")) {
		if (!strcmp(verb, "BDAT"))
			return bdat_refuse(s, line, len, vl, "503 5.5.1 Send EHLO or HELO first");
		local_reply(s, "503 5.5.1 Send EHLO or HELO first%s", NULL);
		return 0;
	}
	if (is_hello) {
		if (s->p.xclient && s->xclient_state == 0) {
			/* Learn the post-TLS capabilities, then XCLIENT, then this EHLO. */
			s->xclient_state = 1;
			s->xclient_helo_is_ehlo = strcmp(verb, "HELO") != 0;
			size_t hl = len > vl + 1 ? len - vl - 1 : 0;
			if (hl >= sizeof(s->xclient_helo))
				hl = sizeof(s->xclient_helo) - 1;
			memcpy(s->xclient_helo, line + vl + (len > vl), hl);
			s->xclient_helo[hl] = '\0';
			char cmd[300];
			snprintf(cmd, sizeof(cmd), "%s %s", hello_verb(s), s->p.helo_name);
			send_up(s, a, cmd);
			q_push(s, E_INT_XEHLO);
			s->c = C_HOLD;
			return 1;
		}
		s->helo_seen = 1;
		forward_cmd(s, a, line, len, strcmp(verb, "HELO") ? E_EHLO : E_HELO);
		return 0;
	}
	if (!strcmp(verb, "MAIL")) {
		forward_cmd(s, a, line, len, E_MAIL);
	} else if (!strcmp(verb, "RCPT")) {
		forward_cmd(s, a, line, len, E_RCPT);
	} else if (!strcmp(verb, "DATA")) {
		forward_cmd(s, a, line, len, E_DATA);
		s->c = C_HOLD;
	} else if (!strcmp(verb, "BDAT")) {
		return bdat_command(s, a, line, len, vl);
	} else if (!strcmp(verb, "AUTH")) {
		forward_cmd(s, a, line, len, E_AUTH);
		s->c = C_HOLD;
	} else if (!strcmp(verb, "RSET")) {
		forward_cmd(s, a, line, len, E_RSET);
	} else if (!strcmp(verb, "QUIT")) {
		s->quit_seen = 1;
		forward_cmd(s, a, line, len, E_QUIT);
	} else {
		forward_cmd(s, a, line, len, E_OTHER);
	}
	return 0;
}

/* DATA body (RFC 5321 §4.5.2): only <CRLF>.<CRLF> ends a message, and the upstream must
 * never read an end where the proxy did not (SMTP smuggling, CVE-2023-51764 and its kin:
 * <LF>.<LF>, <CR>.<CR>, <LF>.<CR><LF>, ...). What goes up is canonical, so that any server
 * reads it the same way:
 * - a line the client ended with CRLF passes as sent: its dot-stuffing is the client's, and
 *   "." alone on such a line (after CRLF or at the start of the data) is the end;
 * - a bare CR or bare LF (not part of CRLF) is not a line end for the proxy. Under
 *   bare_newline = normalize it reaches the upstream as CRLF, and the line that follows is
 *   dot-stuffed when it starts with "." (the client did not stuff it: for the client it was
 *   not a line start), so "<LF>.<CRLF>" arrives as "<CRLF>..<CRLF>", content and not an end;
 *   a lone "." before a bare CR or LF goes up as "..". Under reject the message is refused
 *   at its end with 521 5.5.2 and the upstream never receives the end of it.
 * body_ls: 0 mid-line, 1 line start after CRLF (or the start of the data), 2 line start
 * after a normalised bare CR/LF; body_dot: a "." at a CRLF line start is pending; body_cr:
 * a CR is pending. Returns the input bytes consumed; *ended when the end marker passed. */
static size_t body_bytes(struct smtp *s, struct proto_actions *a, const uint8_t *d, size_t n,
			 int *ended)
{
	uint8_t out[8192];
	size_t o = 0, i = 0;
	int reject = s->p.bare_newline == CFG_BARE_REJECT;
	*ended = 0;
#define EMIT(ch)                                                                            \
	do {                                                                               \
		if (o == sizeof(out)) {                                                    \
			proto_send(a, PROTO_UPSTREAM, out, o);                             \
			o = 0;                                                             \
		}                                                                          \
		if (!s->body_bad)                                                          \
			out[o++] = (ch);                                                   \
	} while (0)
	while (i < n && !*ended) {
		uint8_t c = d[i];
		if (s->body_cr) {
			s->body_cr = 0;
			if (c == '\n') { /* CRLF */
				i++;
				if (s->body_dot) {
					s->body_dot = 0;
					EMIT('.');
					EMIT('\r');
					EMIT('\n');
					*ended = 1;
					break;
				}
				EMIT('\r');
				EMIT('\n');
				s->body_ls = 1;
				continue;
			}
			goto bare; /* a bare CR; c is looked at again on the next turn */
		}
		i++;
		if (c == '\r') {
			s->body_cr = 1;
			continue;
		}
		if (c == '\n')
			goto bare;
		if (s->body_dot) { /* ".x" at a CRLF line start: the client's stuffing, as sent */
			s->body_dot = 0;
			EMIT('.');
		} else if (c == '.' && s->body_ls == 1) {
			s->body_dot = 1;
			s->body_ls = 0;
			continue;
		} else if (c == '.' && s->body_ls == 2) {
			EMIT('.'); /* stuffed: the upstream sees a line start here */
		}
		EMIT(c);
		s->body_ls = 0;
		continue;
	bare:
		if (reject && !s->body_bad) {
			s->body_bad = 1;
			log_event(LOG_WARN, s->p.session_id, s->p.route, "bare_newline", "action",
				  "reject", NULL);
		}
		if (s->body_dot) {
			s->body_dot = 0;
			EMIT('.');
			EMIT('.');
		}
		EMIT('\r');
		EMIT('\n');
		s->body_ls = 2;
	}
#undef EMIT
	if (o)
		proto_send(a, PROTO_UPSTREAM, out, o);
	return i;
}

static void process_client(struct smtp *s, struct proto_actions *a)
{
	while (s->u != U_DONE && s->client_greeted && s->in.len) {
		switch (s->c) {
		case C_DISCARD:
			s->in.len = 0;
			return;
		case C_HOLD:
			if (s->in.len > SMTP_HOLD_MAX) {
				finish(s, a, "421 4.5.0 Too much pipelined input, closing connection",
				       "client pipelining overflow");
			}
			return;
		case C_BODY: {
			int ended;
			size_t used = body_bytes(s, a, buf_ptr(&s->in), s->in.len, &ended);
			buf_consume(&s->in, used);
			if (ended && s->body_bad) {
				/* The upstream never got the end: it drops what it has of the message. */
				char r[300];
				snprintf(r, sizeof(r),
					 "521 5.5.2 %s Error: bare <CR> or <LF> received in message data",
					 s->p.helo_name);
				finish(s, a, r, "bare newline in message");
				return;
			}
			if (ended) {
				q_push(s, E_DATA_END);
				s->c = C_COMMAND;
			}
			continue;
		}
		case C_BDAT: {
			size_t n = s->in.len < s->bdat_left ? s->in.len : (size_t)s->bdat_left;
			if (!s->bdat_skip)
				proto_send(a, PROTO_UPSTREAM, buf_ptr(&s->in), n);
			buf_consume(&s->in, n);
			s->bdat_left -= n;
			if (s->bdat_left == 0)
				s->c = C_COMMAND;
			continue;
		}
		case C_AUTH_LINE:
		case C_COMMAND: {
			if (s->qlen >= SMTP_PIPELINE_MAX)
				return; /* wait for replies */
			uint8_t *nl = memchr(buf_ptr(&s->in), '\n', s->in.len);
			if (!nl) {
				if (s->in.len >= SMTP_CMD_MAX) {
					if (!s->long_line)
						local_reply(s, "500 5.5.2 Line too long%s", NULL);
					s->long_line = 1;
					s->in.len = 0;
					drain_locals(s, a);
				}
				return;
			}
			size_t n = (size_t)(nl - buf_ptr(&s->in)) + 1;
			if (s->long_line || n > SMTP_CMD_MAX) {
				if (!s->long_line)
					local_reply(s, "500 5.5.2 Line too long%s", NULL);
				s->long_line = 0;
				buf_consume(&s->in, n);
				drain_locals(s, a);
				continue;
			}
			size_t len = n - 1;
			if (len && buf_ptr(&s->in)[len - 1] == '\r')
				len--;
			if (s->c == C_AUTH_LINE) {
				/* An AUTH response (credentials): forwarded, never logged. */
				forward_cmd(s, a, (const char *)buf_ptr(&s->in), len, E_AUTH);
				buf_consume(&s->in, n);
				s->c = C_HOLD;
				continue;
			}
			char *line = malloc(len + 1);
			if (!line)
				return;
			memcpy(line, buf_ptr(&s->in), len);
			line[len] = '\0';
			int keep = handle_command(s, a, line, len);
			free(line);
			if (!keep)
				buf_consume(&s->in, n);
			drain_locals(s, a);
			continue;
		}
		}
	}
}

/* ---- module interface ------------------------------------------------------------ */

int smtp_saw_early_reply(const void *st)
{
	return ((const struct smtp *)st)->early_reply;
}

static void *smtp_create(const struct proto_params *p)
{
	struct smtp *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->p = *p;
	s->lmtp = p->protocol == CFG_PROTO_LMTP;
	s->u = U_CONNECTING;
	s->c = C_COMMAND;
	s->client_tls = p->client_tls == CFG_TLS_IMPLICIT;
	return s;
}

static void smtp_destroy(void *st)
{
	struct smtp *s = st;
	if (!s)
		return;
	buf_free(&s->in);
	buf_free(&s->rin);
	buf_free(&s->reply);
	buf_free(&s->greeting);
	free(s);
}

static void smtp_upstream_connected(void *st, struct proto_actions *a)
{
	struct smtp *s = st;
	s->upstream_tls = s->p.upstream_tls == CFG_TLS_IMPLICIT;
	q_push(s, E_GREETING);
	enter_state(s, U_GREETING);
	(void)a;
}

static void smtp_data(void *st, enum proto_side from, const uint8_t *d, size_t n,
		      struct proto_actions *a)
{
	struct smtp *s = st;
	if (s->u == U_DONE || n == 0)
		return;
	if (from == PROTO_UPSTREAM) {
		if (s->u == U_HANDSHAKE)
			return; /* cannot happen: TLS is below us by now */
		if (buf_append(&s->rin, d, n) < 0) {
			finish(s, a, "421 4.3.0 Out of memory", "out of memory");
			return;
		}
		s->up_rx += n;
		upstream_bytes(s, a);
		return;
	}
	if (s->c == C_DISCARD)
		return;
	if (s->in.len + n > SMTP_HOLD_MAX + SMTP_CMD_MAX && s->c != C_BODY && s->c != C_BDAT) {
		finish(s, a, "421 4.5.0 Too much pipelined input, closing connection",
		       "client pipelining overflow");
		return;
	}
	if (buf_append(&s->in, d, n) < 0) {
		finish(s, a, "421 4.3.0 Out of memory", "out of memory");
		return;
	}
	process_client(s, a);
}

static void smtp_tls_done(void *st, enum proto_side side, struct proto_actions *a)
{
	struct smtp *s = st;
	if (side == PROTO_UPSTREAM) {
		/* Nothing learned before TLS is kept but the greeting shown to the client. */
		s->upstream_tls = 1;
		s->rin.len = 0;
		s->reply.len = 0;
		s->reply_lines = 0;
		upstream_ready(s, a);
		return;
	}
	/* Client side: a fresh SMTP session inside TLS (RFC 3207 §4.2). */
	s->client_tls = 1;
	s->in.len = 0;
	s->long_line = 0;
	s->helo_seen = 0;
	s->helo_required = 1;
	s->in_tx = 0;
	s->rcpt_ok = 0;
	s->auth_done = 0;
	s->chunking = 0;
	s->size_limit = 0;
	s->c = C_COMMAND;
	send_up(s, a, "RSET");
	q_push(s, E_INT_RSET);
}

static void smtp_upstream_retry_plain(void *st)
{
	struct smtp *s = st;
	s->p.upstream_tls = CFG_TLS_NONE;
	s->upstream_tls = 0;
	s->rin.len = 0;
	s->reply.len = 0;
	s->reply_lines = 0;
	s->greeting.len = 0;
	s->qhead = s->qlen = 0;
	enter_state(s, U_CONNECTING);
}

static void smtp_client_eof(void *st, struct proto_actions *a)
{
	struct smtp *s = st;
	s->client_eof = 1;
	if (s->u == U_DONE)
		return;
	/* Commands already sent still get their replies (QUIT's 221 among them). */
	if (s->qlen == 0 || !s->client_greeted)
		finish(s, a, NULL, s->quit_seen ? "quit" : "client closed");
}

static void smtp_fail(void *st, enum proto_failure why, const char *result,
		      struct proto_actions *a)
{
	struct smtp *s = st;
	char r[400];
	const char *h = s->p.helo_name;
	if (s->u == U_DONE)
		return;
	switch (why) {
	case PF_UNREACHABLE:
		snprintf(r, sizeof(r), "421 4.4.1 %s Upstream server unreachable, try again later", h);
		break;
	case PF_LOST:
		if (s->quit_seen) {
			finish(s, a, NULL, "quit");
			return;
		}
		if (!s->client_greeted)
			snprintf(r, sizeof(r),
				 "421 4.4.1 %s Upstream server unreachable, try again later", h);
		else if (s->c == C_BODY || s->c == C_BDAT || s->in_tx)
			snprintf(r, sizeof(r),
				 "451 4.4.2 %s Upstream connection lost, message not accepted; "
				 "closing connection", h);
		else
			snprintf(r, sizeof(r), "421 4.4.2 %s Upstream connection lost, closing connection",
				 h);
		break;
	case PF_TLS_POLICY:
		snprintf(r, sizeof(r),
			 "421 4.7.0 %s TLS policy failure toward the upstream server (%s); try again "
			 "later", h, result ? result : "tls");
		break;
	case PF_IDLE:
		snprintf(r, sizeof(r), "421 4.4.2 %s Timeout, closing connection", h);
		break;
	default:
		snprintf(r, sizeof(r), "421 4.3.2 %s Service shutting down, try again later", h);
		break;
	}
	finish(s, a, r, why == PF_TLS_POLICY ? "upstream policy failure"
		       : why == PF_IDLE	    ? "idle timeout"
		       : why == PF_SHUTDOWN ? "shutdown"
		       : why == PF_UNREACHABLE ? "upstream unreachable"
					       : "upstream lost");
}

const struct proto_ops proto_smtp_ops = {
	.name = "smtp",
	.create = smtp_create,
	.destroy = smtp_destroy,
	.upstream_connected = smtp_upstream_connected,
	.data = smtp_data,
	.tls_done = smtp_tls_done,
	.client_eof = smtp_client_eof,
	.upstream_retry_plain = smtp_upstream_retry_plain,
	.fail = smtp_fail,
};
