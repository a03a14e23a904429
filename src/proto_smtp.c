/* proto_smtp.c - SMTP and LMTP (RFC 5321, 2033, 3207): STARTTLS injection toward the
 * upstream, STARTTLS termination toward the client, and the command/reply bookkeeping both
 * need. Bytes in, actions out; no I/O (proto.h).
 *
 * Two state variables, each changed only through its enter_*() (which logs the change):
 * - the upstream state (struct smtp.u): connecting, greeting, ehlo, starttls, handshake,
 *   ready, done. Before "ready" the module talks to the upstream itself (the greeting, and
 *   for injected STARTTLS its own EHLO and STARTTLS); nothing of the client goes up.
 * - the client state (struct smtp.c): what the client's next bytes are: commands, held
 *   until a reply arrives (to DATA, AUTH, the XCLIENT exchange, or the EHLO that tells
 *   whether CHUNKING is offered), message data (DATA body, BDAT chunk), an AUTH response
 *   line, or nothing (dropped: the client's TLS handshake is due).
 *
 * Client commands are looked up in one table (verb, when the verb is allowed, what it
 * does). Replies are matched, in order, to the expected-reply queue (proto_kit.h), which
 * also orders the replies the module gives itself; each kind of expectation has its own
 * handler. */
#include "proto_smtp.h"

#include "buf.h"
#include "log.h"
#include "proto_kit.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- states -------------------------------------------------------------------------- */

enum ustate {
	U_CONNECTING, /* waiting for TCP (or implicit TLS) */
	U_GREETING,   /* waiting for the 220 greeting */
	U_EHLO,       /* our EHLO sent, looking for STARTTLS */
	U_STARTTLS,   /* our STARTTLS sent, waiting for 220 */
	U_HANDSHAKE,  /* TLS handshake running */
	U_READY,      /* relaying */
	U_DONE,       /* failed or closing */
	U_LATE,       /* late binding: no upstream yet, the module answers the client itself */
	U_REPLAY,     /* late binding: the client's EHLO, MAIL and first RCPT replayed */
	U_DEFER,      /* greeting = local: greeted by the module, no upstream until the client's
			 first command line is complete */
};
static const char *const ustate_names[] = { "connecting", "greeting", "ehlo", "starttls",
					    "handshake", "ready", "done", "late", "replay",
					    "deferred" };

enum cstate {
	C_COMMAND,      /* commands */
	C_WAIT_DATA,    /* DATA sent: the reply decides whether data or commands follow */
	C_WAIT_AUTH,    /* AUTH (or a response line) sent: 334 means another response line */
	C_WAIT_XCLIENT, /* the XCLIENT exchange runs before the client's EHLO (kept) */
	C_WAIT_CAPS,    /* a BDAT waits for the EHLO reply that says whether CHUNKING is there */
	C_BODY,         /* DATA body until <CRLF>.<CRLF> */
	C_BDAT,         /* BDAT chunk octets (forwarded, or skipped when refused) */
	C_AUTH_LINE,    /* the next line is an AUTH response, not a command */
	C_STARTTLS,     /* STARTTLS accepted: nothing counts until the client's handshake */
	C_WAIT_BIND,    /* late binding: the first RCPT waits for its upstream */
	C_WAIT_CHECK,   /* late binding: a RCPT waits for the session's verdict on its domain */
};
static const char *const cstate_names[] = { "command", "wait-data", "wait-auth",
					    "wait-xclient", "wait-caps", "body", "bdat",
					    "auth-line", "starttls", "wait-bind", "wait-check" };

/* What a queued expectation is for. */
enum ekind {
	/* replies to commands the module sent itself (not relayed) */
	E_GREETING, E_INT_EHLO, E_INT_STARTTLS, E_INT_RSET, E_INT_XEHLO, E_INT_XCLIENT,
	E_INT_LHELLO, E_INT_LMAIL, /* late binding: the replayed EHLO and MAIL */
	/* replies to client commands (relayed) */
	E_EHLO, E_HELO, E_MAIL, E_RCPT, E_DATA, E_DATA_END, E_BDAT, E_BDAT_LAST, E_AUTH,
	E_RSET, E_QUIT, E_OTHER,
	/* answered by the module when they reach the head of the queue */
	E_LOCAL, E_LOCAL_STARTTLS, E_LOCAL_CLOSE, E_LOCAL_QUIT,
	E_KINDS
};

/* Entries in flight: commands toward the upstream plus the module's own replies. */
#define QUEUE_MAX (SMTP_PIPELINE_MAX + 8)

struct smtp {
	struct proto_params p;
	int lmtp;
	enum ustate u;
	enum cstate c;
	struct expect_queue q;
	/* client side */
	struct line_reader cin;   /* client bytes: command lines, or data */
	int client_greeted;
	int client_tls;           /* TLS active toward the client */
	int helo_required;        /* after client TLS: EHLO/HELO before anything else */
	int helo_seen;
	int in_tx, rcpt_ok, auth_done, quit_seen, client_eof;
	uint64_t bdat_left;
	int bdat_skip;            /* the chunk was refused: its octets are dropped */
	int bdat_last;            /* the chunk going up is the last (BDAT ... LAST) */
	int chunking;             /* the upstream offered CHUNKING to this client session */
	uint64_t size_limit;      /* its SIZE (0: none announced) */
	int body_ls, body_dot, body_cr, body_bad; /* DATA end detection (body_bytes) */
	int xclient_state;        /* 0 not tried, 1 running, 2 done */
	int xclient_wait_name;    /* XCLIENT waits for the client's host name */
	char xclient_attrs[512];  /* the XCLIENT keyword line of the upstream's EHLO reply */
	int xclient_helo_is_ehlo;
	char xclient_helo[256];
	/* upstream side */
	struct line_reader uin;   /* upstream bytes: reply lines */
	struct buf reply;         /* current (multi-line) reply, CRLF lines */
	size_t reply_lines;
	uint64_t reply_start;     /* stream offset of the reply's first byte */
	int upstream_tls;
	struct buf greeting;      /* the upstream's greeting, sent to the client when ready */
	int early_reply;          /* a reply came before its command was sent */
	/* late binding (p.late) */
	struct buf l_hello, l_mail, l_rcpt; /* the client's lines, replayed to the upstream */
	char domain[SMTP_DOMAIN_MAX + 1];   /* the first recipient's domain (bound to) */
	char approved[SMTP_LATE_DOMAINS][SMTP_DOMAIN_MAX + 1]; /* domains the upstream may take */
	int napproved;
	char check_domain[SMTP_DOMAIN_MAX + 1]; /* PA_CHECK asked about it */
	int verdict;              /* 0 none, 1 ok, -1 refused (verdict_reply) */
	char verdict_reply[300];
	/* the message in progress, for its event=message line */
	struct proto_message msg;
	struct buf m_pend;        /* MAIL, RCPT and data ends sent up, not answered yet */
	struct buf m_to;          /* the accepted ones, comma-separated: whole addresses up to
				     SMTP_TO_MAX octets, then ",..." once (m_to_full) */
	int m_to_full;
	uint64_t m_acc;           /* data octets of the message going up now */
};

/* ---- state changes ----------------------------------------------------------------- */

static void enter_ustate(struct smtp *s, enum ustate u)
{
	if (s->u == u)
		return;
	log_event(LOG_DEBUG, s->p.session_id, s->p.route, "smtp_state", "side", "upstream",
		  "from", ustate_names[s->u], "to", ustate_names[u], NULL);
	s->u = u;
}

static void enter_cstate(struct smtp *s, enum cstate c)
{
	if (s->c == c)
		return;
	log_event(LOG_DEBUG, s->p.session_id, s->p.route, "smtp_state", "side", "client",
		  "from", cstate_names[s->c], "to", cstate_names[c], NULL);
	s->c = c;
}

static int waiting(const struct smtp *s)
{
	return s->c == C_WAIT_DATA || s->c == C_WAIT_AUTH || s->c == C_WAIT_XCLIENT ||
	       s->c == C_WAIT_CAPS || s->c == C_WAIT_BIND || s->c == C_WAIT_CHECK;
}

/* ---- small helpers ----------------------------------------------------------------- */

static const char *hello_verb(const struct smtp *s)
{
	return s->lmtp ? "LHLO" : "EHLO";
}

/* Ends the session with a final reply to the client. */
static void finish(struct smtp *s, struct proto_actions *a, const char *reply,
		   const char *reason)
{
	if (s->u == U_DONE)
		return;
	if (reply)
		proto_sendf(a, PROTO_CLIENT, "%s\r\n", reply);
	enter_ustate(s, U_DONE);
	proto_close(a, reason);
}

static void out_of_memory(struct smtp *s, struct proto_actions *a)
{
	finish(s, a, "421 4.3.0 Out of memory, closing connection", "out of memory");
}

/* An expectation for a command sent now, or a reply of the module's own (text). */
static int expect(struct smtp *s, struct proto_actions *a, enum ekind k, const char *text)
{
	if (eq_push(&s->q, (int)k, text))
		return 0;
	out_of_memory(s, a);
	return -1;
}

/* A reply the module gives once everything before it has been answered. */
static void local_reply(struct smtp *s, struct proto_actions *a, const char *fmt,
			const char *arg)
{
	char text[300];
	snprintf(text, sizeof(text), fmt, arg ? arg : "");
	expect(s, a, E_LOCAL, text);
}

/* A reply the module gives after every earlier one, then the end of the session; what the
 * client sends meanwhile cannot be told apart from chunk octets and is dropped. */
static void local_close(struct smtp *s, struct proto_actions *a, const char *fmt)
{
	char text[300];
	snprintf(text, sizeof(text), fmt, s->p.helo_name);
	expect(s, a, E_LOCAL_CLOSE, text);
	enter_cstate(s, C_STARTTLS);
	lr_discard(&s->cin);
}

static void send_up(struct smtp *s, struct proto_actions *a, const char *line, enum ekind k)
{
	proto_sendf(a, PROTO_UPSTREAM, "%s\r\n", line);
	expect(s, a, k, NULL);
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

static int reply_code(const struct smtp *s)
{
	const uint8_t *b = buf_ptr(&s->reply);
	return (b[0] - '0') * 100 + (b[1] - '0') * 10 + (b[2] - '0');
}

static void relay_reply(struct smtp *s, struct proto_actions *a)
{
	proto_send(a, PROTO_CLIENT, buf_ptr(&s->reply), s->reply.len);
}

/* The lines of the current reply after the first one (the EHLO keywords): the text after
 * "250-", CRLF removed. */
struct keywords {
	const char *p, *end;
};

static struct keywords keywords_of(const struct smtp *s)
{
	const char *p = (const char *)buf_ptr(&s->reply), *end = p + s->reply.len;
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	return (struct keywords){ nl ? nl + 1 : end, end };
}

/* 1 with the next keyword line's text in *t, *n; 0 at the end. */
static int next_keyword(struct keywords *k, const char **t, size_t *n)
{
	while (k->p < k->end) {
		const char *nl = memchr(k->p, '\n', (size_t)(k->end - k->p));
		const char *le = nl ? nl + 1 : k->end, *line = k->p;
		k->p = le;
		size_t len = (size_t)(le - line);
		while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			len--;
		if (len > 4) {
			*t = line + 4;
			*n = len - 4;
			return 1;
		}
	}
	return 0;
}

/* ---- EHLO reply rewriting -------------------------------------------------------------- */

int smtp_line_has_keyword(const char *line, size_t len, const char *keyword)
{
	if (len < 4)
		return 0;
	return cap_word_is(line + 4, len - 4, keyword);
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
				return -ENOBUFS;
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
			return -ENOBUFS;
		memcpy(out + o, code, 3);
		out[o + 3] = i + 1 < nk ? '-' : ' ';
		memcpy(out + o + 4, kept[i], klen[i]);
		o += 4 + klen[i];
		out[o++] = '\r';
		out[o++] = '\n';
	}
	return (long)o;
}

/* The upstream's capabilities the module acts on, from the EHLO reply the client gets. */
static void learn_caps(struct smtp *s)
{
	s->chunking = 0;
	s->size_limit = 0;
	struct keywords k = keywords_of(s);
	const char *t;
	size_t n;
	while (next_keyword(&k, &t, &n)) {
		if (cap_word_is(t, n, "CHUNKING"))
			s->chunking = 1;
		if (cap_word_is(t, n, "SIZE") && n > 5) {
			uint64_t v = 0;
			for (size_t i = 5; i < n && isdigit((unsigned char)t[i]) && v < (1ULL << 60); i++)
				v = v * 10 + (uint64_t)(t[i] - '0');
			s->size_limit = v;
		}
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
		out_of_memory(s, a);
	free(out);
}

/* ---- the upstream's greeting and injected STARTTLS ------------------------------------ */

static void process_client(struct smtp *s, struct proto_actions *a);

static void late_replay(struct smtp *s, struct proto_actions *a);

/* The upstream is usable: the client gets the upstream's greeting and is heard (under late
 * binding the client was greeted long ago: its EHLO, MAIL and RCPT are replayed instead). */
static void upstream_ready(struct smtp *s, struct proto_actions *a)
{
	if (s->p.late) {
		late_replay(s, a);
		return;
	}
	enter_ustate(s, U_READY);
	proto_ready(a);
	if (!s->p.defer) /* (greeting = local: the module greeted the client itself) */
		proto_send(a, PROTO_CLIENT, buf_ptr(&s->greeting), s->greeting.len);
	buf_free(&s->greeting);
	s->client_greeted = 1;
	process_client(s, a);
}

/* The upstream does not offer STARTTLS, or refused it. */
static void starttls_unavailable(struct smtp *s, struct proto_actions *a, const char *detail)
{
	if (kit_starttls_unavailable(a, &s->p, detail)) {
		upstream_ready(s, a);
		return;
	}
	proto_sendf(a, PROTO_UPSTREAM, "QUIT\r\n");
	char r[300];
	snprintf(r, sizeof(r),
		 "421 4.7.0 %s TLS is required toward the upstream server and it does not offer "
		 "STARTTLS; try again later",
		 s->p.helo_name);
	finish(s, a, r, "upstream policy failure");
}

/* ---- XCLIENT (the real client's address toward a Postfix upstream) --------------------- */

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

static void xclient_done(struct smtp *s, const char *result)
{
	log_event(result[0] == 'o' ? LOG_INFO : LOG_WARN, s->p.session_id, s->p.route,
		  "xclient", "result", result, NULL);
	s->xclient_state = 2;
	enter_cstate(s, C_COMMAND);
}

static void xclient_go(struct smtp *s, struct proto_actions *a);

/* The upstream's reply to our EHLO is in: which XCLIENT attributes it accepts ("250-XCLIENT
 * NAME ADDR PORT PROTO HELO") are kept, and XCLIENT goes up now, or once the client's host
 * name is known when NAME is among them and the session is still looking it up
 * (client_name_ready). */
static void send_xclient(struct smtp *s, struct proto_actions *a)
{
	int offered = 0;
	struct keywords kw = keywords_of(s);
	const char *t;
	size_t tn;
	s->xclient_attrs[0] = '\0';
	while (next_keyword(&kw, &t, &tn)) {
		if (cap_word_is(t, tn, "XCLIENT")) {
			size_t k = tn < sizeof(s->xclient_attrs) ? tn : sizeof(s->xclient_attrs) - 1;
			memcpy(s->xclient_attrs, t, k);
			s->xclient_attrs[k] = '\0';
			offered = 1;
		}
	}
	if (!offered) {
		xclient_done(s, "not-offered");
		return;
	}
	if (strcasestr(s->xclient_attrs, " NAME") && s->p.client_name && !s->p.client_name[0]) {
		s->xclient_wait_name = 1; /* the client's commands wait in C_WAIT_XCLIENT */
		return;
	}
	xclient_go(s, a);
}

static void xclient_go(struct smtp *s, struct proto_actions *a)
{
	const char *attrs = s->xclient_attrs;
	s->xclient_wait_name = 0;
	char cmd[1024], v[600];
	int n = snprintf(cmd, sizeof(cmd), "XCLIENT");
#define HAS(attr) (strcasestr(attrs, " " attr) != NULL)
	if (HAS("NAME")) {
		const char *name = !s->p.client_name ? "[UNAVAILABLE]"
				   : !s->p.client_name[0] ? "[TEMPUNAVAIL]" : s->p.client_name;
		if (name[0] == '[')
			snprintf(v, sizeof(v), "%s", name);
		else
			xtext(name, v, sizeof(v));
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " NAME=%s", v);
	}
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
	send_up(s, a, cmd, E_INT_XCLIENT);
}

/* ---- replies, one handler per kind of expectation ---------------------------------------- */

static void drain_locals(struct smtp *s, struct proto_actions *a);

/* An EHLO/HELO reply was handled: a BDAT that waited for it is looked at again. */
static void caps_known(struct smtp *s)
{
	for (size_t i = 0; i < eq_len(&s->q); i++) {
		int k = eq_at(&s->q, i)->kind;
		if (k == E_EHLO || k == E_HELO)
			return;
	}
	if (s->c == C_WAIT_CAPS)
		enter_cstate(s, C_COMMAND);
}

typedef void reply_fn(struct smtp *s, struct proto_actions *a, struct expect *e, int code);

static void on_greeting(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	if (code != 220) {
		log_event(LOG_WARN, s->p.session_id, s->p.route, "upstream_refused", "code",
			  code == 554 ? "554" : code / 100 == 4 ? "4xx" : "5xx", NULL);
		if (s->p.upstream_tls == CFG_TLS_STARTTLS) {
			/* A greeting before STARTTLS is unauthenticated: anyone on the path could
			 * have written it, so it must not make the client bounce. */
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
	if (buf_append(&s->greeting, buf_ptr(&s->reply), s->reply.len) < 0) {
		out_of_memory(s, a);
		return;
	}
	if (s->p.upstream_tls == CFG_TLS_STARTTLS && !s->upstream_tls) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "%s %s", hello_verb(s), s->p.helo_name);
		send_up(s, a, cmd, E_INT_EHLO);
		enter_ustate(s, U_EHLO);
	} else {
		upstream_ready(s, a);
	}
}

static void on_int_ehlo(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	int offered = 0;
	struct keywords k = keywords_of(s);
	const char *t;
	size_t n;
	while (code == 250 && next_keyword(&k, &t, &n))
		offered |= cap_word_is(t, n, "STARTTLS");
	if (!offered) {
		starttls_unavailable(s, a, code == 250 ? "STARTTLS not offered" : "EHLO rejected");
		return;
	}
	send_up(s, a, "STARTTLS", E_INT_STARTTLS);
	enter_ustate(s, U_STARTTLS);
}

static void on_int_starttls(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	if (code != 220) {
		char d[64];
		snprintf(d, sizeof(d), "STARTTLS refused with %d", code);
		starttls_unavailable(s, a, d);
		return;
	}
	/* Whatever the upstream sent after its 220 was sent before TLS: dropped. */
	enter_ustate(s, U_HANDSHAKE);
	kit_injection(&s->p, PROTO_UPSTREAM, kit_starttls(a, PROTO_UPSTREAM, &s->uin));
}

static void on_int_rset(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)s, (void)a, (void)e, (void)code;
}

static void on_int_xehlo(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	if (code != 250)
		xclient_done(s, "ehlo-rejected");
	else
		send_xclient(s, a);
}

static void on_int_xclient(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)a, (void)e;
	xclient_done(s, code == 220 ? "ok" : "rejected");
	if (code == 220) /* XCLIENT restarts the session: the client's EHLO follows */
		s->helo_seen = 0;
}

static void on_ehlo(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	if (code == 250) {
		relay_ehlo(s, a);
		s->in_tx = 0;
	} else {
		relay_reply(s, a);
	}
	caps_known(s);
}

static void on_helo(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	relay_reply(s, a);
	if (code == 250) {
		s->in_tx = 0;
		s->chunking = 0; /* no extensions after HELO */
		s->size_limit = 0;
	}
	caps_known(s);
}

static void track_mail_reply(struct smtp *s, int code);

static void on_mail(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	relay_reply(s, a);
	track_mail_reply(s, code);
	if (code / 100 == 2) {
		s->in_tx = 1;
		s->rcpt_ok = 0;
	}
}

static void track_rcpt_reply(struct smtp *s, int code);

static void on_rcpt(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	relay_reply(s, a);
	track_rcpt_reply(s, code);
	if (code / 100 == 2)
		s->rcpt_ok++;
}

static void track_message_end(struct smtp *s, struct proto_actions *a, int code, int last);

static void on_data(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	relay_reply(s, a);
	if (code == 354) {
		s->body_ls = 1;
		s->body_dot = s->body_cr = s->body_bad = 0;
		enter_cstate(s, C_BODY);
	} else {
		if (s->in_tx) /* the transaction's final reply: its message is traced */
			track_message_end(s, a, code, 1);
		enter_cstate(s, C_COMMAND);
	}
}

/* The end of a message (DATA or BDAT LAST). LMTP answers once per accepted recipient (RFC
 * 2033 §4.2); every RCPT reply came before this one, so the count is known now, also when
 * BDAT was pipelined. */
static void on_message_end(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	relay_reply(s, a);
	int left = e->count;
	if (left < 0)
		left = s->lmtp && s->rcpt_ok > 1 ? s->rcpt_ok : 1;
	track_message_end(s, a, code, left <= 1 || code == 421);
	if (--left > 0 && code != 421) {
		eq_unpop(&s->q); /* the entry stays at the head for the next answer */
		eq_head(&s->q)->count = left;
		return;
	}
	s->in_tx = 0;
	s->rcpt_ok = 0;
}

static void on_auth(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	relay_reply(s, a);
	if (code == 334) {
		enter_cstate(s, C_AUTH_LINE);
		return;
	}
	if (code == 235)
		s->auth_done = 1;
	enter_cstate(s, C_COMMAND);
}

static void on_rset(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	relay_reply(s, a);
	if (code / 100 == 2)
		s->in_tx = 0;
}

static void on_quit(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e, (void)code;
	relay_reply(s, a);
	finish(s, a, NULL, "quit");
}

static void on_other(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e, (void)code;
	relay_reply(s, a);
}

/* ---- late binding: the replay toward the chosen upstream ------------------------------- */

/* The domain is one the upstream may take (the bound one, or one the session approved). */
static int approved(const struct smtp *s, const char *domain)
{
	for (int i = 0; i < s->napproved; i++)
		if (!strcmp(s->approved[i], domain))
			return 1;
	return 0;
}

static void approve(struct smtp *s, const char *domain)
{
	if (approved(s, domain))
		return;
	if (s->napproved == SMTP_LATE_DOMAINS) /* forget the oldest: it is asked again */
		memmove(s->approved[0], s->approved[1], sizeof(s->approved[0]) * (SMTP_LATE_DOMAINS - 1));
	else
		s->napproved++;
	snprintf(s->approved[s->napproved - 1], sizeof(s->approved[0]), "%s", domain);
}

static void track_command(struct smtp *s, enum ekind k, const char *line, size_t len);

static void send_buf_up(struct smtp *s, struct proto_actions *a, const struct buf *b,
			enum ekind k)
{
	track_command(s, k, (const char *)buf_ptr(b), b->len);
	proto_send(a, PROTO_UPSTREAM, buf_ptr(b), b->len);
	proto_send(a, PROTO_UPSTREAM, "\r\n", 2);
	expect(s, a, k, NULL);
}

/* The upstream passed the policy: the client's EHLO (or ours, when it sent none) goes up
 * again inside the upstream's TLS; its MAIL and first RCPT follow. */
static void late_replay(struct smtp *s, struct proto_actions *a)
{
	enter_ustate(s, U_REPLAY);
	buf_free(&s->greeting); /* the client was greeted by the module */
	if (s->l_hello.len) {
		send_buf_up(s, a, &s->l_hello, E_INT_LHELLO);
	} else {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "EHLO %s", s->p.helo_name);
		send_up(s, a, cmd, E_INT_LHELLO);
	}
}

/* The replay is over: the client's held commands flow to the upstream. */
static void late_ready(struct smtp *s, struct proto_actions *a)
{
	enter_ustate(s, U_READY);
	proto_ready(a);
	s->napproved = 0;
	approve(s, s->domain);
	enter_cstate(s, C_COMMAND);
	process_client(s, a);
}

static void on_int_lhello(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	if (code != 250) {
		/* the answer to the waiting RCPT; the client's transaction ends here */
		proto_sendf(a, PROTO_CLIENT,
			    "451 4.4.2 %s The recipient's server refused our EHLO (%d); try again "
			    "later\r\n",
			    s->p.helo_name, code);
		s->in_tx = 0;
		late_ready(s, a);
		return;
	}
	learn_caps(s);
	s->chunking = 0; /* never offered to this client */
	send_buf_up(s, a, &s->l_mail, E_INT_LMAIL);
}

static void on_int_lmail(struct smtp *s, struct proto_actions *a, struct expect *e, int code)
{
	(void)e;
	track_mail_reply(s, code);
	if (code / 100 != 2) {
		/* The client's MAIL was accepted by the module: the upstream's refusal of it is
		 * the answer to the waiting RCPT, and the transaction ends. */
		relay_reply(s, a);
		s->in_tx = 0;
		late_ready(s, a);
		return;
	}
	send_buf_up(s, a, &s->l_rcpt, E_RCPT);
	late_ready(s, a);
}

static reply_fn *const reply_handlers[E_KINDS] = {
	[E_GREETING] = on_greeting,	  [E_INT_EHLO] = on_int_ehlo,
	[E_INT_STARTTLS] = on_int_starttls, [E_INT_RSET] = on_int_rset,
	[E_INT_XEHLO] = on_int_xehlo,	  [E_INT_XCLIENT] = on_int_xclient,
	[E_INT_LHELLO] = on_int_lhello,	  [E_INT_LMAIL] = on_int_lmail,
	[E_EHLO] = on_ehlo,		  [E_HELO] = on_helo,
	[E_MAIL] = on_mail,		  [E_RCPT] = on_rcpt,
	[E_DATA] = on_data,		  [E_DATA_END] = on_message_end,
	[E_BDAT] = on_other,		  [E_BDAT_LAST] = on_message_end,
	[E_AUTH] = on_auth,		  [E_RSET] = on_rset,
	[E_QUIT] = on_quit,		  [E_OTHER] = on_other,
};

/* One complete reply from the upstream. */
static void handle_reply(struct smtp *s, struct proto_actions *a)
{
	int code = reply_code(s);
	struct expect *e = eq_head(&s->q);
	if (!e || e->kind >= E_LOCAL) {
		if (code == 421 && s->client_greeted) {
			relay_reply(s, a);
			finish(s, a, NULL, "upstream closed (421)");
			return;
		}
		protocol_error(s, a, "reply without a command", "upstream protocol error");
		return;
	}
	if (!eq_answers(e, s->reply_start)) {
		/* Written before the upstream could have read the command (e.g. a "220" glued to
		 * the EHLO reply ahead of our STARTTLS): never taken as its answer. */
		s->early_reply = 1;
		protocol_error(s, a, "reply before its command was sent", "upstream protocol error");
		return;
	}
	enum ekind k = (enum ekind)e->kind;
	struct expect answered = *e;
	eq_pop(&s->q);
	if (code == 421 && k < E_EHLO && s->client_greeted) {
		/* The upstream is closing while answering one of our own commands. */
		relay_reply(s, a);
		finish(s, a, NULL, "upstream closed (421)");
		return;
	}
	reply_handlers[k](s, a, &answered, code);
	if (code == 421 && k >= E_EHLO && s->u != U_DONE)
		finish(s, a, NULL, "upstream closed (421)");
}

/* Parses upstream bytes into replies. A malformed or oversized reply ends the session. */
static void upstream_bytes(struct smtp *s, struct proto_actions *a)
{
	struct line l;
	int rc;
	while (s->u != U_DONE && s->u != U_HANDSHAKE && (rc = lr_next(&s->uin, &l)) != LR_MORE) {
		if (rc == LR_TOO_LONG) {
			lr_discard(&s->uin);
			protocol_error(s, a, "reply too long", "upstream reply too long");
			return;
		}
		const uint8_t *t = l.p;
		size_t tl = l.len;
		if (tl < 3 || !isdigit(t[0]) || !isdigit(t[1]) || !isdigit(t[2]) ||
		    (tl > 3 && t[3] != ' ' && t[3] != '-') || t[0] < '2' || t[0] > '5') {
			protocol_error(s, a, "malformed reply line", "upstream protocol error");
			return;
		}
		if (s->reply.len == 0)
			s->reply_start = s->q.rx - lr_pending(&s->uin);
		else if (memcmp(buf_ptr(&s->reply), t, 3) != 0) {
			protocol_error(s, a, "reply code changed within a reply",
				       "upstream protocol error");
			return;
		}
		if (s->reply.len + tl + 2 > SMTP_REPLY_MAX ||
		    ++s->reply_lines > SMTP_REPLY_LINES_MAX) {
			lr_discard(&s->uin);
			protocol_error(s, a, "reply too long", "upstream reply too long");
			return;
		}
		if (buf_append(&s->reply, t, tl) < 0 || buf_append(&s->reply, "\r\n", 2) < 0) {
			out_of_memory(s, a);
			return;
		}
		int more = tl > 3 && t[3] == '-';
		lr_consume(&s->uin, l.size); /* t is gone from here on */
		if (more)
			continue;
		handle_reply(s, a);
		s->reply.len = 0;
		s->reply_lines = 0;
		drain_locals(s, a);
		process_client(s, a);
		if (s->client_eof && eq_len(&s->q) == 0)
			finish(s, a, NULL, s->quit_seen ? "quit" : "client closed");
	}
}

/* ---- client commands --------------------------------------------------------------------- */

/* Answers the replies the module owns once everything before them has been answered. */
static void drain_locals(struct smtp *s, struct proto_actions *a)
{
	struct expect *e;
	while (s->u != U_DONE && (e = eq_head(&s->q)) && e->kind >= E_LOCAL) {
		if (e->kind == E_LOCAL) {
			proto_sendf(a, PROTO_CLIENT, "%s\r\n", e->text);
			eq_pop(&s->q);
			continue;
		}
		if (e->kind == E_LOCAL_CLOSE || e->kind == E_LOCAL_QUIT) {
			char r[300];
			int quit = e->kind == E_LOCAL_QUIT;
			snprintf(r, sizeof(r), "%s", e->text);
			eq_pop(&s->q);
			finish(s, a, r, quit ? "quit" : "client protocol error");
			return;
		}
		eq_pop(&s->q); /* E_LOCAL_STARTTLS */
		if (s->in_tx || s->auth_done) {
			proto_sendf(a, PROTO_CLIENT, "503 5.5.1 %s\r\n",
				    s->in_tx ? "STARTTLS not permitted within a mail transaction"
					     : "STARTTLS not permitted after AUTH");
			enter_cstate(s, C_COMMAND);
			continue;
		}
		proto_sendf(a, PROTO_CLIENT, "220 2.0.0 Ready to start TLS\r\n");
		/* pipelined after STARTTLS: never processed */
		kit_injection(&s->p, PROTO_CLIENT, kit_starttls(a, PROTO_CLIENT, &s->cin));
	}
}

/* One command line, as the table sees it. */
struct cmdline {
	const char *line; /* NUL-terminated, terminator removed */
	size_t len;
	size_t vl;        /* verb length */
	char verb[16];    /* upper case ("" when longer) */
};

/* The address of a MAIL FROM:<...> or RCPT TO:<...> line (the path between the first '<'
 * and the next '>', at most cap - 1 octets, control characters and spaces replaced by '?'
 * so that a log line stays one line); "" when there is none. */
static void path_of(const char *line, size_t len, char *out, size_t cap)
{
	const char *lt = memchr(line, '<', len);
	size_t o = 0;
	if (lt) {
		const char *end = line + len;
		const char *gt = memchr(lt, '>', (size_t)(end - lt));
		for (const char *p = lt + 1; p < (gt ? gt : end) && o + 1 < cap; p++)
			out[o++] = (unsigned char)*p <= ' ' || *p == 0x7f || *p == '"' ? '?' : *p;
	}
	out[o] = '\0';
}

/* The envelope is traced from the replies, in the order the commands went up: each MAIL,
 * RCPT and message end sent up leaves an entry ("M<addr>", "R<addr>", "S<size>") in
 * m_pend, taken by its reply. Commands pipelined past the end of a message (the next MAIL)
 * therefore never mix into the message still waiting for its final reply. */
static void push_entry(struct smtp *s, char kind, const char *text)
{
	if (buf_append(&s->m_pend, &kind, 1) < 0 || buf_append(&s->m_pend, text, strlen(text)) < 0 ||
	    buf_append(&s->m_pend, "\n", 1) < 0)
		buf_consume(&s->m_pend, s->m_pend.len); /* no memory: the trace is lost */
}

/* The oldest entry, when it is of that kind, into out (""), and gone from the list. */
static void pop_entry(struct smtp *s, char kind, char *out, size_t cap)
{
	out[0] = '\0';
	if (!s->m_pend.len)
		return;
	const char *p = (const char *)buf_ptr(&s->m_pend);
	const char *nl = memchr(p, '\n', s->m_pend.len);
	if (!nl || p[0] != kind)
		return;
	size_t n = (size_t)(nl - p) - 1;
	snprintf(out, cap, "%.*s", (int)n, p + 1);
	buf_consume(&s->m_pend, n + 2);
}

static void track_command(struct smtp *s, enum ekind k, const char *line, size_t len)
{
	if (k == E_MAIL || k == E_INT_LMAIL || k == E_RCPT) {
		char addr[320];
		path_of(line, len, addr, sizeof(addr));
		push_entry(s, k == E_RCPT ? 'R' : 'M', addr);
	}
}

/* The end of a message's data went up (DATA's end marker, BDAT LAST). */
static void track_data_end(struct smtp *s)
{
	char n[24];
	snprintf(n, sizeof(n), "%llu", (unsigned long long)s->m_acc);
	push_entry(s, 'S', n);
	s->m_acc = 0;
}

/* A MAIL reply: an accepted one opens the traced message. */
static void track_mail_reply(struct smtp *s, int code)
{
	char addr[320];
	pop_entry(s, 'M', addr, sizeof(addr));
	if (code / 100 != 2)
		return;
	snprintf(s->msg.from, sizeof(s->msg.from), "%s", addr);
	s->msg.rcpts = 0;
	s->msg.size = 0;
	s->msg.delivered = 0;
	buf_consume(&s->m_to, s->m_to.len);
	s->m_to_full = 0;
}

/* A RCPT reply: when accepted, its address joins m_to. */
static void track_rcpt_reply(struct smtp *s, int code)
{
	char addr[320];
	pop_entry(s, 'R', addr, sizeof(addr));
	if (code / 100 != 2)
		return;
	s->msg.rcpts++;
	if (s->m_to_full)
		return;
	size_t al = strlen(addr);
	if (s->m_to.len + (s->m_to.len ? 1 : 0) + al <= SMTP_TO_MAX) {
		if (s->m_to.len)
			buf_append(&s->m_to, ",", 1);
		buf_append(&s->m_to, addr, al);
	} else {
		buf_append(&s->m_to, ",...", 4);
		s->m_to_full = 1;
	}
}

/* The final reply to a message: event=message, then the trace starts afresh. */
static void track_message_end(struct smtp *s, struct proto_actions *a, int code, int last)
{
	if (s->lmtp && code / 100 == 2)
		s->msg.delivered++;
	if (!last)
		return;
	if (!s->lmtp)
		s->msg.delivered = code / 100 == 2 ? s->msg.rcpts : 0;
	s->msg.code = code;
	char size[24];
	pop_entry(s, 'S', size, sizeof(size)); /* none when DATA itself was refused */
	s->msg.size = strtoull(size, NULL, 10);
	const char *r = (const char *)buf_ptr(&s->reply);
	size_t n = s->reply.len;
	while (n && (r[n - 1] == '\n' || r[n - 1] == '\r'))
		n--;
	const char *line = r;
	for (size_t i = 0; i < n; i++)
		if (r[i] == '\n')
			line = r + i + 1;
	size_t ln = (size_t)(r + n - line), o = 0;
	for (size_t i = 0; i < ln && o + 1 < sizeof(s->msg.reply); i++)
		s->msg.reply[o++] = (unsigned char)line[i] < ' ' || line[i] == '"' ? '?' : line[i];
	s->msg.reply[o] = '\0';
	if (buf_append(&s->m_to, "", 1) == 0) /* NUL-terminated for the reader */
		s->m_to.len--;
	s->msg.to = s->m_to.len ? (const char *)buf_ptr(&s->m_to) : "";
	proto_message(a, &s->msg);
	s->msg.delivered = 0;
}

static void forward(struct smtp *s, struct proto_actions *a, const struct cmdline *c,
		    enum ekind k)
{
	track_command(s, k, c->line, c->len);
	proto_send(a, PROTO_UPSTREAM, c->line, c->len);
	proto_send(a, PROTO_UPSTREAM, "\r\n", 2);
	expect(s, a, k, NULL);
}

/* "BDAT" SP chunk-size [SP "LAST"] (RFC 3030 §2), strictly: one space, digits only (at
 * most 18), "LAST" in any case. 0, or -1 on a syntax error. */
static int parse_bdat(const char *p, size_t n, uint64_t *size, int *last)
{
	size_t i, digits = 0;
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

/* A BDAT the module refuses with reply: the chunk's octets are still data (RFC 3030), so
 * they are skipped, never read as commands. A size that cannot be parsed or skipped
 * safely ends the session, as Postfix does. */
static int bdat_refuse(struct smtp *s, struct proto_actions *a, const struct cmdline *c,
		       const char *reply)
{
	uint64_t n;
	int last;
	if (parse_bdat(c->line + c->vl, c->len - c->vl, &n, &last) < 0) {
		local_close(s, a, "521 5.5.4 %s Syntax: BDAT chunk-size [LAST]; closing connection");
		return 0;
	}
	if (n > SMTP_BDAT_MAX) {
		local_close(s, a, "552 5.3.4 %s Chunk size exceeds the limit; closing connection");
		return 0;
	}
	local_reply(s, a, "%s", reply);
	s->bdat_left = n;
	s->bdat_skip = 1;
	if (n)
		enter_cstate(s, C_BDAT);
	return 0;
}

/* Command handlers: 0 when the line is done with, 1 when it must be kept and looked at
 * again later (the line waits for a reply). */
typedef int cmd_fn(struct smtp *s, struct proto_actions *a, const struct cmdline *c);

static int cmd_starttls(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	if (c->len > 8)
		local_reply(s, a, "501 5.5.4 Syntax: STARTTLS takes no parameters%s", NULL);
	else if (s->client_tls)
		local_reply(s, a, "554 5.5.1 TLS is already active%s", NULL);
	else if (s->p.client_tls != CFG_TLS_STARTTLS)
		local_reply(s, a, "502 5.5.1 STARTTLS is not available%s", NULL);
	else if (expect(s, a, E_LOCAL_STARTTLS, NULL) == 0)
		enter_cstate(s, C_STARTTLS);
	return 0;
}

static int cmd_not_available(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	(void)c;
	local_reply(s, a, "502 5.5.1 Command not available%s", NULL);
	return 0;
}

static int cmd_hello(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	if (s->p.xclient && s->xclient_state == 0) {
		/* Learn the post-TLS capabilities, then XCLIENT, then this EHLO. */
		s->xclient_state = 1;
		s->xclient_helo_is_ehlo = strcmp(c->verb, "HELO") != 0;
		size_t hl = c->len > c->vl + 1 ? c->len - c->vl - 1 : 0;
		if (hl >= sizeof(s->xclient_helo))
			hl = sizeof(s->xclient_helo) - 1;
		memcpy(s->xclient_helo, c->line + c->vl + (c->len > c->vl), hl);
		s->xclient_helo[hl] = '\0';
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "%s %s", hello_verb(s), s->p.helo_name);
		send_up(s, a, cmd, E_INT_XEHLO);
		enter_cstate(s, C_WAIT_XCLIENT);
		return 1;
	}
	s->helo_seen = 1;
	forward(s, a, c, strcmp(c->verb, "HELO") ? E_EHLO : E_HELO);
	return 0;
}

static int cmd_mail(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_MAIL);
	return 0;
}

static int cmd_rcpt(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_RCPT);
	return 0;
}

static int cmd_data(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_DATA);
	enter_cstate(s, C_WAIT_DATA);
	return 0;
}

/* BDAT: the chunk's octets are data for whoever takes the command, so the proxy and the
 * upstream must agree on who does. It goes up only when the upstream offered CHUNKING in
 * its reply to this client's EHLO (if that reply is still due, the line waits for it) and
 * the size is within its SIZE (else SMTP_BDAT_MAX); otherwise the module answers it and
 * skips the chunk. */
static int cmd_bdat(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	for (size_t i = 0; i < eq_len(&s->q); i++) {
		int k = eq_at(&s->q, i)->kind;
		if (k == E_EHLO || k == E_HELO) {
			enter_cstate(s, C_WAIT_CAPS);
			return 1;
		}
	}
	uint64_t n;
	int last;
	if (parse_bdat(c->line + c->vl, c->len - c->vl, &n, &last) < 0)
		return bdat_refuse(s, a, c, NULL);
	if (n > (s->size_limit ? s->size_limit : SMTP_BDAT_MAX)) {
		local_close(s, a, "552 5.3.4 %s Chunk size exceeds the limit; closing connection");
		return 0;
	}
	if (!s->chunking)
		return bdat_refuse(s, a, c,
				   "502 5.5.1 BDAT not available: the server does not offer CHUNKING");
	forward(s, a, c, last ? E_BDAT_LAST : E_BDAT);
	s->bdat_left = n;
	s->bdat_skip = 0;
	s->bdat_last = last;
	if (n)
		enter_cstate(s, C_BDAT);
	else if (last)
		track_data_end(s);
	return 0;
}

static int cmd_auth(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_AUTH);
	enter_cstate(s, C_WAIT_AUTH);
	return 0;
}

static int cmd_rset(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_RSET);
	return 0;
}

static int cmd_quit(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	s->quit_seen = 1;
	forward(s, a, c, E_QUIT);
	return 0;
}

static int cmd_other(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_OTHER);
	return 0;
}

/* When a verb may be used. A verb without CMD_ANYTIME is refused before the client's
 * STARTTLS under client_policy = encrypt (530) and, inside the client's TLS, before its
 * new EHLO (503). */
#define CMD_ANYTIME 1

static const struct command {
	const char *verb;
	unsigned flags;
	cmd_fn *run;
} commands[] = {
	{ "EHLO", CMD_ANYTIME, cmd_hello },	 { "HELO", CMD_ANYTIME, cmd_hello },
	{ "LHLO", CMD_ANYTIME, cmd_hello },	 { "STARTTLS", CMD_ANYTIME, cmd_starttls },
	{ "XCLIENT", CMD_ANYTIME, cmd_not_available },
	{ "XFORWARD", CMD_ANYTIME, cmd_not_available },
	{ "NOOP", CMD_ANYTIME, cmd_other },	 { "RSET", CMD_ANYTIME, cmd_rset },
	{ "QUIT", CMD_ANYTIME, cmd_quit },	 { "MAIL", 0, cmd_mail },
	{ "RCPT", 0, cmd_rcpt },		 { "DATA", 0, cmd_data },
	{ "BDAT", 0, cmd_bdat },		 { "AUTH", 0, cmd_auth },
};
static const struct command other_command = { "", 0, cmd_other };

/* A refusal of a command that is not allowed yet. A refused BDAT still has its chunk. */
static int refuse(struct smtp *s, struct proto_actions *a, const struct cmdline *c,
		  const char *reply)
{
	if (!strcmp(c->verb, "BDAT"))
		return bdat_refuse(s, a, c, reply);
	local_reply(s, a, "%s", reply);
	return 0;
}

/* ---- late binding: the module is the client's server until the first RCPT ------------- */

int smtp_rcpt_domain(const char *line, size_t len, char *out, size_t cap)
{
	size_t i = 8, at = 0, end = 0;
	int quoted = 0;
	if (len < 8 || strncasecmp(line, "RCPT TO:", 8) != 0)
		return -EINVAL;
	while (i < len && line[i] == ' ')
		i++;
	if (i == len || line[i++] != '<')
		return -EINVAL;
	if (i < len && line[i] == '@') { /* a source route: "@a,@b:user@domain" */
		while (i < len && line[i] != ':' && line[i] != '>')
			i++;
		if (i == len || line[i] != ':')
			return -EINVAL;
		i++;
	}
	for (; i < len && !end; i++) {
		char c = line[i];
		if (quoted && c == '\\' && i + 1 < len)
			i++;
		else if (c == '"')
			quoted = !quoted;
		else if (!quoted && c == '@')
			at = i;
		else if (!quoted && c == '>')
			end = i;
	}
	if (!end || !at || end - at - 1 == 0)
		return -EINVAL;
	const char *d = line + at + 1;
	size_t n = end - at - 1;
	if (d[n - 1] == '.')
		n--;
	if (n == 0 || n > SMTP_DOMAIN_MAX || n >= cap)
		return -EINVAL;
	/* LDH labels of 1 to 63 octets; an address literal ("[192.0.2.1]") has no MX */
	size_t label = 0;
	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)d[k];
		if (c == '.') {
			if (label == 0 || d[k - 1] == '-')
				return -EINVAL;
			label = 0;
		} else if (isalnum(c) || (c == '-' && label > 0)) {
			if (++label > 63)
				return -EINVAL;
		} else {
			return -EINVAL;
		}
		out[k] = (char)tolower(c);
	}
	if (label == 0 || d[n - 1] == '-')
		return -EINVAL;
	out[n] = '\0';
	return 0;
}

static int keep_line(struct smtp *s, struct proto_actions *a, struct buf *b,
		     const struct cmdline *c)
{
	b->len = 0;
	if (buf_append(b, c->line, c->len) == 0)
		return 0;
	out_of_memory(s, a);
	return -1;
}

/* The module's own EHLO reply: what any MX can take (RFC 5321 PIPELINING, SIZE with no
 * limit, 8BITMIME, ENHANCEDSTATUSCODES), STARTTLS where the client may use it; never
 * CHUNKING, SMTPUTF8, DSN or AUTH, which the chosen MX might not offer. */
static void late_hello_reply(struct smtp *s, struct proto_actions *a, int ehlo)
{
	char r[400];
	if (!ehlo) {
		snprintf(r, sizeof(r), "250 %s", s->p.helo_name);
	} else {
		int tls = s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls;
		snprintf(r, sizeof(r),
			 "250-%s\r\n250-PIPELINING\r\n250-SIZE\r\n250-8BITMIME\r\n%s"
			 "250 ENHANCEDSTATUSCODES",
			 s->p.helo_name, tls ? "250-STARTTLS\r\n" : "");
	}
	expect(s, a, E_LOCAL, r);
}

/* A word among the MAIL parameters (after the address), case-insensitive. */
static int mail_param(const struct cmdline *c, const char *word)
{
	const char *p = memchr(c->line, '>', c->len);
	size_t wl = strlen(word);
	for (p = p ? p + 1 : c->line + c->len; p < c->line + c->len; p++)
		if (*p == ' ' && (size_t)(c->line + c->len - p - 1) >= wl &&
		    strncasecmp(p + 1, word, wl) == 0 &&
		    (p + 1 + wl == c->line + c->len || p[1 + wl] == ' ' || word[wl - 1] == '='))
			return 1;
	return 0;
}

/* A command while no upstream is chosen (U_LATE). */
static int late_command(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	const char *v = c->verb;
	if (!strcmp(v, "EHLO") || !strcmp(v, "HELO")) {
		if (keep_line(s, a, &s->l_hello, c) < 0)
			return 0;
		s->helo_seen = 1;
		s->in_tx = 0;
		s->l_mail.len = 0;
		late_hello_reply(s, a, !strcmp(v, "EHLO"));
		return 0;
	}
	if (!strcmp(v, "STARTTLS"))
		return cmd_starttls(s, a, c);
	if (!strcmp(v, "NOOP")) {
		local_reply(s, a, "250 2.0.0 Ok%s", NULL);
		return 0;
	}
	if (!strcmp(v, "RSET")) {
		s->in_tx = 0;
		s->l_mail.len = 0;
		local_reply(s, a, "250 2.0.0 Ok%s", NULL);
		return 0;
	}
	if (!strcmp(v, "QUIT")) {
		char r[300];
		s->quit_seen = 1;
		snprintf(r, sizeof(r), "221 2.0.0 %s Bye", s->p.helo_name);
		expect(s, a, E_LOCAL_QUIT, r);
		return 0;
	}
	if (!strcmp(v, "MAIL")) {
		if (s->in_tx)
			local_reply(s, a, "503 5.5.1 Nested MAIL command%s", NULL);
		else if (c->len < 10 || strncasecmp(c->line, "MAIL FROM:", 10) != 0 ||
			 !memchr(c->line, '<', c->len) || !memchr(c->line, '>', c->len))
			local_reply(s, a, "501 5.5.4 Syntax: MAIL FROM:<address>%s", NULL);
		else if (mail_param(c, "SMTPUTF8") || mail_param(c, "BODY=BINARYMIME"))
			local_reply(s, a, "555 5.5.4 Unsupported option (not offered)%s", NULL);
		else if (keep_line(s, a, &s->l_mail, c) == 0) {
			s->in_tx = 1;
			s->rcpt_ok = 0;
			local_reply(s, a, "250 2.1.0 Ok%s", NULL);
		}
		return 0;
	}
	if (!strcmp(v, "RCPT")) {
		if (!s->in_tx) {
			local_reply(s, a, "503 5.5.1 Need MAIL command%s", NULL);
			return 0;
		}
		if (smtp_rcpt_domain(c->line, c->len, s->domain, sizeof(s->domain)) < 0) {
			local_reply(s, a, "501 5.1.3 Bad recipient address syntax%s", NULL);
			return 0;
		}
		if (keep_line(s, a, &s->l_rcpt, c) < 0)
			return 0;
		log_event(LOG_INFO, s->p.session_id, s->p.route, "late_bind", "domain", s->domain,
			  NULL);
		proto_bind(a, PA_BIND, s->domain);
		enter_ustate(s, U_CONNECTING);
		enter_cstate(s, C_WAIT_BIND);
		return 0;
	}
	if (!strcmp(v, "DATA") || !strcmp(v, "BDAT")) {
		const char *r = s->in_tx ? "554 5.5.1 No valid recipients"
					 : "503 5.5.1 Need MAIL command";
		if (!strcmp(v, "BDAT"))
			return bdat_refuse(s, a, c, r);
		local_reply(s, a, "%s", r);
		return 0;
	}
	local_reply(s, a, "502 5.5.1 Command not implemented%s", NULL);
	return 0;
}

/* A RCPT once an upstream is chosen: its domain must be one the upstream may take. */
static int late_rcpt(struct smtp *s, struct proto_actions *a, const struct cmdline *c)
{
	char d[SMTP_DOMAIN_MAX + 1];
	if (smtp_rcpt_domain(c->line, c->len, d, sizeof(d)) < 0 || approved(s, d))
		return cmd_rcpt(s, a, c); /* the upstream judges what the module cannot read */
	if (s->verdict && !strcmp(d, s->check_domain)) {
		int ok = s->verdict > 0;
		s->verdict = 0;
		if (ok) {
			approve(s, d);
			return cmd_rcpt(s, a, c);
		}
		local_reply(s, a, "%s", s->verdict_reply);
		return 0;
	}
	snprintf(s->check_domain, sizeof(s->check_domain), "%s", d);
	s->verdict = 0;
	proto_bind(a, PA_CHECK, d);
	enter_cstate(s, C_WAIT_CHECK);
	return 1;
}

/* One command line (terminator removed, NUL-terminated). Returns 1 when the line must be
 * kept for later, else 0. */
static int handle_command(struct smtp *s, struct proto_actions *a, const char *line, size_t len)
{
	if (memchr(line, '\0', len) || memchr(line, '\r', len)) {
		local_reply(s, a, "500 5.5.2 Syntax error: bare CR or NUL in command%s", NULL);
		return 0;
	}
	/* The verb is letters and digits, ended by a space or the end of the line: anything
	 * else (" DATA", "DATA\t", "STARTTLS\f") is refused here, so that the proxy and the
	 * upstream can never read one line as two different commands. */
	struct cmdline c = { .line = line, .len = len };
	while (c.vl < len && isalnum((unsigned char)line[c.vl]))
		c.vl++;
	if (c.vl == 0 || (c.vl < len && line[c.vl] != ' ')) {
		local_reply(s, a, "500 5.5.2 Syntax error: command not recognized%s", NULL);
		return 0;
	}
	if (c.vl < sizeof(c.verb)) {
		for (size_t i = 0; i < c.vl; i++)
			c.verb[i] = (char)toupper((unsigned char)line[i]);
		c.verb[c.vl] = '\0';
	}
	log_event(LOG_DEBUG, s->p.session_id, s->p.route, "smtp_command", "verb",
		  c.verb[0] ? c.verb : "?", NULL);
	const struct command *cmd = &other_command;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(c.verb, commands[i].verb))
			cmd = &commands[i];
	if (!(cmd->flags & CMD_ANYTIME)) {
		if (s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls &&
		    s->p.client_policy == CFG_POLICY_ENCRYPT)
			return refuse(s, a, &c, "530 5.7.0 Must issue a STARTTLS command first");
		if (s->helo_required && !s->helo_seen)
			return refuse(s, a, &c, "503 5.5.1 Send EHLO or HELO first");
	}
	if (s->u == U_LATE)
		return late_command(s, a, &c);
	if (s->p.late && cmd->run == cmd_rcpt)
		return late_rcpt(s, a, &c);
	return cmd->run(s, a, &c);
}

/* ---- message data ---------------------------------------------------------------------- */

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
	/* the next CR and LF at or after i (n: none), each found by one scan and looked for
	 * again only once i has passed it: linear in n whatever the input */
	size_t next_cr = 0, next_lf = 0;
	int have_cr = 0, have_lf = 0;
	while (i < n && !*ended) {
		if (!s->body_cr && !s->body_dot && !s->body_ls) {
			/* inside a line: the octets up to the next CR or LF go as they are */
			if (!have_cr || next_cr < i) {
				const uint8_t *q = memchr(d + i, '\r', n - i);
				next_cr = q ? (size_t)(q - d) : n;
				have_cr = 1;
			}
			if (!have_lf || next_lf < i) {
				const uint8_t *q = memchr(d + i, '\n', n - i);
				next_lf = q ? (size_t)(q - d) : n;
				have_lf = 1;
			}
			size_t end = next_cr < next_lf ? next_cr : next_lf;
			if (end > i) {
				size_t len = end - i;
				if (!s->body_bad) {
					if (o + len > sizeof(out) && o) {
						proto_send(a, PROTO_UPSTREAM, out, o);
						o = 0;
					}
					if (len >= sizeof(out)) {
						proto_send(a, PROTO_UPSTREAM, d + i, len);
					} else {
						memcpy(out + o, d + i, len);
						o += len;
					}
				}
				i = end;
				continue;
			}
		}
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

/* ---- the client's bytes, by client state -------------------------------------------------- */

/* greeting = local, before the upstream: 1 when process_client stops here. The first
 * complete command line calls for the upstream (PA_CONNECT) and waits for it, unread; QUIT
 * alone is answered here, and a line over the bound gets its 500 (then the next is looked
 * at). */
static int deferred_line(struct smtp *s, struct proto_actions *a)
{
	struct line l;
	int rc = lr_next(&s->cin, &l);
	if (rc == LR_MORE)
		return 1;
	if (rc == LR_TOO_LONG) {
		local_reply(s, a, "500 5.5.2 Line too long%s", NULL);
		drain_locals(s, a);
		return 0;
	}
	if (l.len == 4 && strncasecmp((const char *)l.p, "QUIT", 4) == 0) {
		char r[300];
		lr_consume(&s->cin, l.size);
		s->quit_seen = 1;
		snprintf(r, sizeof(r), "221 2.0.0 %s Bye", s->p.helo_name);
		expect(s, a, E_LOCAL_QUIT, r);
		drain_locals(s, a);
		return 1;
	}
	enter_ustate(s, U_CONNECTING);
	proto_connect(a);
	return 1;
}

static void process_client(struct smtp *s, struct proto_actions *a)
{
	while (s->u != U_DONE && s->client_greeted && lr_pending(&s->cin)) {
		if (s->u == U_DEFER) {
			if (deferred_line(s, a))
				return;
			continue;
		}
		if (s->p.defer && s->u < U_READY)
			return; /* the client's lines wait for the upstream */
		if (s->c == C_STARTTLS) { /* after the 220, before the handshake */
			kit_injection(&s->p, PROTO_CLIENT, lr_pending(&s->cin));
			lr_discard(&s->cin);
			return;
		}
		if (waiting(s)) {
			if (lr_pending(&s->cin) > SMTP_HOLD_MAX)
				finish(s, a, "421 4.5.0 Too much pipelined input, closing connection",
				       "client pipelining overflow");
			return;
		}
		if (s->c == C_BODY) {
			int ended;
			size_t used = body_bytes(s, a, lr_data(&s->cin), lr_pending(&s->cin), &ended);
			lr_consume(&s->cin, used);
			s->m_acc += used;
			if (ended) { /* the end marker ".<CRLF>" is not the message */
				s->m_acc = s->m_acc >= 3 ? s->m_acc - 3 : 0;
				if (!s->body_bad)
					track_data_end(s);
			}
			if (ended && s->body_bad) {
				/* The upstream never got the end: it drops what it has of the message. */
				char r[300];
				snprintf(r, sizeof(r),
					 "521 5.5.2 %s Error: bare <CR> or <LF> received in message data",
					 s->p.helo_name);
				finish(s, a, r, "bare newline in message");
				return;
			}
			if (ended && expect(s, a, E_DATA_END, NULL) == 0)
				enter_cstate(s, C_COMMAND);
			continue;
		}
		if (s->c == C_BDAT) {
			size_t n = lr_pending(&s->cin);
			if (n > s->bdat_left)
				n = (size_t)s->bdat_left;
			if (!s->bdat_skip) {
				proto_send(a, PROTO_UPSTREAM, lr_data(&s->cin), n);
				s->m_acc += n;
			}
			lr_consume(&s->cin, n);
			s->bdat_left -= n;
			if (s->bdat_left == 0) {
				if (s->bdat_last && !s->bdat_skip)
					track_data_end(s);
				enter_cstate(s, C_COMMAND);
			}
			continue;
		}
		/* C_COMMAND, C_AUTH_LINE: a line */
		if (eq_len(&s->q) >= SMTP_PIPELINE_MAX)
			return; /* wait for replies */
		struct line l;
		int rc = lr_next(&s->cin, &l);
		if (rc == LR_MORE)
			return;
		if (rc == LR_TOO_LONG) {
			local_reply(s, a, "500 5.5.2 Line too long%s", NULL);
			drain_locals(s, a);
			continue;
		}
		if (s->c == C_AUTH_LINE) {
			/* An AUTH response (credentials): forwarded, never logged. */
			proto_send(a, PROTO_UPSTREAM, l.p, l.len);
			proto_send(a, PROTO_UPSTREAM, "\r\n", 2);
			lr_consume(&s->cin, l.size);
			if (expect(s, a, E_AUTH, NULL) == 0)
				enter_cstate(s, C_WAIT_AUTH);
			continue;
		}
		char *line = malloc(l.len + 1);
		if (!line) {
			out_of_memory(s, a);
			return;
		}
		memcpy(line, l.p, l.len);
		line[l.len] = '\0';
		size_t size = l.size;
		int keep = handle_command(s, a, line, l.len);
		free(line);
		if (!keep)
			lr_consume(&s->cin, size);
		drain_locals(s, a);
	}
}

/* ---- module interface ------------------------------------------------------------------- */

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
	eq_init(&s->q, QUEUE_MAX);
	lr_init(&s->cin, SMTP_CMD_MAX);
	lr_init(&s->uin, SMTP_REPLY_LINE_MAX);
	return s;
}

static void smtp_destroy(void *st)
{
	struct smtp *s = st;
	if (!s)
		return;
	eq_free(&s->q);
	lr_free(&s->cin);
	lr_free(&s->uin);
	buf_free(&s->reply);
	buf_free(&s->greeting);
	buf_free(&s->l_hello);
	buf_free(&s->l_mail);
	buf_free(&s->l_rcpt);
	buf_free(&s->m_pend);
	buf_free(&s->m_to);
	free(s);
}

static void smtp_upstream_connected(void *st, struct proto_actions *a)
{
	struct smtp *s = st;
	s->upstream_tls = s->p.upstream_tls == CFG_TLS_IMPLICIT;
	if (expect(s, a, E_GREETING, NULL) == 0)
		enter_ustate(s, U_GREETING);
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
		if (lr_feed(&s->uin, d, n) < 0) {
			out_of_memory(s, a);
			return;
		}
		eq_received(&s->q, n);
		upstream_bytes(s, a);
		return;
	}
	if (s->c == C_STARTTLS)
		return;
	if (lr_pending(&s->cin) + n > SMTP_HOLD_MAX + SMTP_CMD_MAX && s->c != C_BODY &&
	    s->c != C_BDAT) {
		finish(s, a, "421 4.5.0 Too much pipelined input, closing connection",
		       "client pipelining overflow");
		return;
	}
	if (lr_feed(&s->cin, d, n) < 0) {
		out_of_memory(s, a);
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
		lr_discard(&s->uin);
		s->reply.len = 0;
		s->reply_lines = 0;
		upstream_ready(s, a);
		return;
	}
	/* Client side: a fresh SMTP session inside TLS (RFC 3207 §4.2). */
	s->client_tls = 1;
	lr_discard(&s->cin);
	s->helo_seen = 0;
	s->helo_required = 1;
	s->in_tx = 0;
	s->rcpt_ok = 0;
	s->auth_done = 0;
	s->chunking = 0;
	s->size_limit = 0;
	enter_cstate(s, C_COMMAND);
	if (s->u == U_LATE) { /* nothing upstream yet: what the client said is forgotten */
		s->l_hello.len = 0;
		s->l_mail.len = 0;
		return;
	}
	send_up(s, a, "RSET", E_INT_RSET);
}

static void smtp_set_policy(void *st, enum cfg_tls tls, enum cfg_policy level,
			    enum cfg_mode mode)
{
	struct smtp *s = st;
	s->p.upstream_tls = tls;
	s->p.upstream_policy = level;
	s->p.policy_mode = mode;
}

static void smtp_upstream_retry(void *st)
{
	struct smtp *s = st;
	s->upstream_tls = 0;
	lr_discard(&s->uin);
	s->reply.len = 0;
	s->reply_lines = 0;
	s->greeting.len = 0;
	eq_clear(&s->q);
	enter_ustate(s, U_CONNECTING);
}

static void smtp_upstream_retry_plain(void *st)
{
	struct smtp *s = st;
	s->p.upstream_tls = CFG_TLS_NONE;
	smtp_upstream_retry(st);
}

static void smtp_late_start(void *st, struct proto_actions *a)
{
	struct smtp *s = st;
	enter_ustate(s, s->p.late ? U_LATE : U_DEFER);
	s->client_greeted = 1;
	proto_sendf(a, PROTO_CLIENT, "220 %s %s\r\n", s->p.helo_name, s->lmtp ? "LMTP" : "ESMTP");
}

static void smtp_bind_failed(void *st, const char *reply, struct proto_actions *a)
{
	struct smtp *s = st;
	if (s->u == U_DONE)
		return;
	proto_sendf(a, PROTO_CLIENT, "%s\r\n", reply);
	enter_ustate(s, U_LATE);
	enter_cstate(s, C_COMMAND);
	process_client(s, a);
}

static void smtp_rcpt_verdict(void *st, int ok, const char *reply, struct proto_actions *a)
{
	struct smtp *s = st;
	if (s->u == U_DONE || s->c != C_WAIT_CHECK)
		return;
	s->verdict = ok ? 1 : -1;
	snprintf(s->verdict_reply, sizeof(s->verdict_reply), "%s", reply ? reply : "");
	enter_cstate(s, C_COMMAND);
	process_client(s, a);
}

static void smtp_client_eof(void *st, struct proto_actions *a)
{
	struct smtp *s = st;
	s->client_eof = 1;
	if (s->u == U_DONE)
		return;
	/* Commands already sent still get their replies (QUIT's 221 among them). */
	if (eq_len(&s->q) == 0 || !s->client_greeted)
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
		if (!s->client_greeted || (s->p.defer && s->u < U_READY))
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

static void smtp_refuse(const struct proto_params *p, enum proto_refusal why,
			struct proto_actions *a)
{
	if (why == PR_NOT_ALLOWED)
		proto_sendf(a, PROTO_CLIENT, "554 5.7.1 %s Access denied\r\n", p->helo_name);
	else
		proto_sendf(a, PROTO_CLIENT,
			    "421 4.7.0 %s Too many connections, try again later\r\n", p->helo_name);
	proto_close(a, why == PR_NOT_ALLOWED ? "client not allowed" : "connection limit");
}

static void smtp_client_name_ready(void *st, struct proto_actions *a)
{
	struct smtp *s = st;
	if (s->xclient_wait_name && s->u != U_DONE) {
		xclient_go(s, a);
		process_client(s, a);
	}
}

static int smtp_idle(void *st)
{
	const struct smtp *s = st;
	return (s->u == U_READY || s->u == U_LATE || s->u == U_DEFER) && s->client_greeted &&
	       s->c == C_COMMAND &&
	       !s->in_tx && eq_len(&s->q) == 0 && lr_pending(&s->cin) == 0 && !s->quit_seen;
}

/* Commands and AUTH response lines, not message data or BDAT chunks (and nothing after an
 * accepted STARTTLS, which is dropped at the boundary). */
static uint64_t smtp_client_partial(void *st)
{
	const struct smtp *s = st;
	if (s->u == U_DONE)
		return 0;
	switch (s->c) {
	case C_COMMAND:
	case C_AUTH_LINE:
	case C_WAIT_AUTH:
	case C_WAIT_XCLIENT:
	case C_WAIT_BIND:
	case C_WAIT_CHECK:
		return lr_partial(&s->cin);
	default:
		return 0;
	}
}

/* The client's message data: a DATA body before its end, a BDAT chunk's octets (also one
 * being skipped after a refusal). */
static int smtp_client_in_data(void *st)
{
	const struct smtp *s = st;
	return s->u != U_DONE && (s->c == C_BODY || s->c == C_BDAT);
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
	.upstream_retry = smtp_upstream_retry,
	.set_policy = smtp_set_policy,
	.late_start = smtp_late_start,
	.bind_failed = smtp_bind_failed,
	.rcpt_verdict = smtp_rcpt_verdict,
	.fail = smtp_fail,
	.refuse = smtp_refuse,
	.idle = smtp_idle,
	.client_name_ready = smtp_client_name_ready,
	.client_partial = smtp_client_partial,
	.client_in_data = smtp_client_in_data,
};
