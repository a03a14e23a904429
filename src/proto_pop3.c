/* proto_pop3.c - POP3 (RFC 1939, 2449 CAPA, 2595 STLS, 5034 AUTH): STLS injection toward
 * the upstream, STLS termination toward the client, and the command/response bookkeeping
 * both need. Bytes in, actions out; no I/O (proto.h).
 *
 * Two state variables, each changed only through enter_state() (which logs the change):
 * - the upstream state: connecting, greeting, capa, stls, handshake, ready, done. Before
 *   "ready" the module talks to the upstream itself (the greeting, and for injected STLS
 *   its own CAPA and STLS); nothing of the client goes up.
 * - the client state: commands, an AUTH exchange awaiting the upstream's answer, an AUTH
 *   response line, or nothing (dropped: the client's TLS handshake is due).
 *
 * Every command sent up has an entry in the expected-response queue (proto_kit.h), which
 * says whether its +OK opens a multi-line response (RETR, TOP, LIST and UIDL without an
 * argument, CAPA, AUTH without an argument) so the responses stay in step. Multi-line
 * responses are relayed byte-exact (dot-stuffing untouched) but for CAPA, whose lines are
 * rewritten (STLS added before the client's TLS and removed otherwise; USER and SASL PLAIN
 * and LOGIN hidden under client_policy = encrypt before STLS). Commands go up one at a
 * time unless the upstream's CAPA says PIPELINING. */
#include "proto_pop3.h"

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
	U_GREETING,   /* waiting for the +OK greeting */
	U_CAPA,       /* our CAPA sent, looking for STLS */
	U_STLS,       /* our STLS sent, waiting for +OK */
	U_HANDSHAKE,  /* TLS handshake running */
	U_READY,      /* relaying */
	U_DONE,       /* failed or closing */
};
static const char *const ustate_names[] = { "connecting", "greeting", "capa", "stls",
					    "handshake", "ready", "done" };

enum cstate {
	C_COMMAND,   /* commands */
	C_WAIT_AUTH, /* AUTH (or a response line) sent: "+ " means another response line */
	C_AUTH_LINE, /* the next line is an AUTH response, not a command */
	C_STARTTLS,  /* STLS accepted: nothing counts until the client's handshake */
};
static const char *const cstate_names[] = { "command", "wait-auth", "auth-line", "starttls" };

/* What a queued expectation is for. */
enum ekind {
	/* responses to commands the module sent itself (not relayed) */
	E_GREETING, E_INT_CAPA, E_INT_STLS,
	/* responses to client commands (relayed) */
	E_SINGLE,    /* one line */
	E_MULTI,     /* +OK opens a multi-line response (RETR, TOP, LIST, UIDL) */
	E_CAPA,      /* the same, its lines rewritten */
	E_AUTH,      /* AUTH mechanism, or a response line: "+ " asks for another line */
	E_AUTH_LIST, /* AUTH without argument: +OK opens the list of mechanisms */
	E_LOGIN,     /* PASS, APOP: +OK ends the AUTHORIZATION state */
	E_QUIT,
	/* answered by the module when they reach the head of the queue */
	E_LOCAL, E_LOCAL_STLS,
};

/* What the upstream's next lines are. */
enum mline {
	ML_NONE,     /* status lines */
	ML_STREAM,   /* a multi-line response relayed byte-exact */
	ML_CAPA,     /* a CAPA response relayed line by line, rewritten */
	ML_INT_CAPA, /* our own CAPA's response */
};

#define QUEUE_MAX (POP3_PIPELINE_MAX + 8)

struct pop3 {
	struct proto_params p;
	enum ustate u;
	enum cstate c;
	struct expect_queue q;
	/* client side */
	struct line_reader cin;
	int client_greeted;
	int client_tls;   /* TLS active toward the client */
	int auth_done;    /* the upstream accepted a login: TRANSACTION state */
	int quit_seen, client_eof;
	/* upstream side */
	struct line_reader uin;
	int upstream_tls; /* TLS active toward the upstream */
	enum mline ml;
	int ml_bol;       /* ML_STREAM: the next byte starts a line */
	size_t capa_lines;
	int stls_offered; /* our CAPA listed STLS */
	int pipelining;   /* the upstream's last relayed CAPA listed PIPELINING */
	int greeting_pre_tls; /* the greeting was read before TLS toward the upstream */
	int early_response;   /* a response came before its command was sent */
	struct buf greeting;  /* the upstream's greeting line (terminator included) */
};

/* ---- state changes ----------------------------------------------------------------- */

/* The one place a state changes: side PROTO_UPSTREAM takes an enum ustate, PROTO_CLIENT an
 * enum cstate. */
static void enter_state(struct pop3 *s, enum proto_side side, int to)
{
	int from = side == PROTO_UPSTREAM ? (int)s->u : (int)s->c;
	if (from == to)
		return;
	const char *const *names = side == PROTO_UPSTREAM ? ustate_names : cstate_names;
	log_event(LOG_DEBUG, s->p.session_id, s->p.route, "pop3_state", "side",
		  side == PROTO_UPSTREAM ? "upstream" : "client", "from", names[from], "to",
		  names[to], NULL);
	if (side == PROTO_UPSTREAM)
		s->u = (enum ustate)to;
	else
		s->c = (enum cstate)to;
}

/* ---- helpers ------------------------------------------------------------------------ */

static void finish(struct pop3 *s, struct proto_actions *a, const char *reply,
		   const char *reason)
{
	if (s->u == U_DONE)
		return;
	if (reply)
		proto_sendf(a, PROTO_CLIENT, "%s\r\n", reply);
	enter_state(s, PROTO_UPSTREAM, U_DONE);
	proto_close(a, reason);
}

static void out_of_memory(struct pop3 *s, struct proto_actions *a)
{
	finish(s, a, s->ml == ML_NONE ? "-ERR [SYS/TEMP] Out of memory, closing connection" : NULL,
	       "out of memory");
}

static int expect(struct pop3 *s, struct proto_actions *a, enum ekind k, const char *text)
{
	if (eq_push(&s->q, (int)k, text))
		return 0;
	out_of_memory(s, a);
	return -1;
}

static void send_up(struct pop3 *s, struct proto_actions *a, const char *line, enum ekind k)
{
	proto_sendf(a, PROTO_UPSTREAM, "%s\r\n", line);
	expect(s, a, k, NULL);
}

/* The upstream broke the protocol: the client gets -ERR (unless a multi-line response is
 * half relayed, where any line would be taken as its content) and the end. */
static void protocol_error(struct pop3 *s, struct proto_actions *a, const char *what,
			   const char *reason)
{
	log_event(LOG_WARN, s->p.session_id, s->p.route, "protocol_error", "side", "upstream",
		  "error", what, NULL);
	finish(s, a,
	       s->ml == ML_STREAM || s->ml == ML_CAPA
		       ? NULL
		       : "-ERR [SYS/TEMP] Upstream protocol error, closing connection",
	       reason);
}

static int has_prefix(const uint8_t *p, size_t n, const char *w)
{
	size_t k = strlen(w);
	return n >= k && memcmp(p, w, k) == 0 && (n == k || p[k] == ' ');
}

size_t pop3_strip_timestamp(const char *line, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < len && cap;) {
		if (line[i] == '<') {
			const char *gt = memchr(line + i, '>', len - i);
			if (gt) {
				while (o && out[o - 1] == ' ')
					o--;
				i = (size_t)(gt - line) + 1;
				continue;
			}
		}
		if (o + 1 < cap)
			out[o++] = line[i];
		i++;
	}
	if (cap)
		out[o] = '\0';
	return o;
}

int pop3_capa_line_shown(const char *line, size_t len, unsigned hide)
{
	if (cap_word_is(line, len, "STLS"))
		return 0;
	if ((hide & POP3_HIDE_AUTH) &&
	    (cap_word_is(line, len, "USER") || cap_word_is(line, len, "SASL")))
		return 0; /* every login is refused before TLS: none is offered */
	return 1;
}

/* USER, PASS, APOP and AUTH are refused (client_policy = encrypt before the client's STLS). */
static int hide_auth(const struct pop3 *s)
{
	return s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls &&
	       s->p.client_policy == CFG_POLICY_ENCRYPT;
}

/* STLS is offered to the client: it may still start TLS with the proxy. */
static int offer_stls(const struct pop3 *s)
{
	return s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls && !s->auth_done;
}

/* ---- upstream ----------------------------------------------------------------------- */

static void process_client(struct pop3 *s, struct proto_actions *a);
static void drain_locals(struct pop3 *s, struct proto_actions *a);

/* The upstream is usable: the client gets the greeting (without the APOP timestamp when
 * it was read before TLS: nobody vouches for it) and is heard. */
static void upstream_ready(struct pop3 *s, struct proto_actions *a)
{
	enter_state(s, PROTO_UPSTREAM, U_READY);
	proto_ready(a);
	const char *g = (const char *)buf_ptr(&s->greeting);
	size_t gl = s->greeting.len;
	if (s->greeting_pre_tls && s->upstream_tls) {
		char out[POP3_LINE_MAX + 2];
		size_t n = gl;
		while (n && (g[n - 1] == '\n' || g[n - 1] == '\r'))
			n--;
		size_t o = pop3_strip_timestamp(g, n, out, sizeof(out) - 2);
		memcpy(out + o, "\r\n", 2);
		proto_send(a, PROTO_CLIENT, out, o + 2);
	} else {
		proto_send(a, PROTO_CLIENT, g, gl);
	}
	buf_free(&s->greeting);
	s->client_greeted = 1;
	process_client(s, a);
}

/* The upstream does not offer STLS, or refused it. */
static void starttls_unavailable(struct pop3 *s, struct proto_actions *a, const char *detail)
{
	if (kit_starttls_unavailable(a, &s->p, detail)) {
		upstream_ready(s, a);
		return;
	}
	proto_sendf(a, PROTO_UPSTREAM, "QUIT\r\n");
	finish(s, a,
	       "-ERR [SYS/TEMP] TLS is required toward the upstream server and it does not "
	       "offer STLS; try again later",
	       "upstream policy failure");
}

/* A status line (+OK, -ERR, or "+ " in an AUTH exchange) answering head of the queue. */
static void on_status(struct pop3 *s, struct proto_actions *a, const struct line *l)
{
	int ok = has_prefix(l->p, l->len, "+OK");
	int err = has_prefix(l->p, l->len, "-ERR");
	int cont = !ok && !err && l->len >= 1 && l->p[0] == '+' && (l->len == 1 || l->p[1] == ' ');
	uint64_t start = s->q.rx - lr_pending(&s->uin);
	struct expect *e = eq_head(&s->q);
	if (!ok && !err && !cont) {
		protocol_error(s, a, "malformed status line", "upstream protocol error");
		return;
	}
	if (!e || e->kind >= E_LOCAL) {
		if (err && s->client_greeted) { /* e.g. "-ERR Disconnected for inactivity" */
			proto_send(a, PROTO_CLIENT, l->p, l->size);
			finish(s, a, NULL, "upstream closed");
			return;
		}
		protocol_error(s, a, "response without a command", "upstream protocol error");
		return;
	}
	if (!eq_answers(e, start)) {
		s->early_response = 1;
		protocol_error(s, a, "response before its command was sent",
			       "upstream protocol error");
		return;
	}
	enum ekind k = (enum ekind)e->kind;
	if (cont && k != E_AUTH) {
		protocol_error(s, a, "malformed status line", "upstream protocol error");
		return;
	}
	eq_pop(&s->q);
	switch (k) {
	case E_GREETING:
		if (!ok) {
			log_event(LOG_WARN, s->p.session_id, s->p.route, "upstream_refused", "code",
				  "-ERR", NULL);
			if (s->p.upstream_tls == CFG_TLS_STARTTLS && !s->upstream_tls) {
				/* unauthenticated: anyone on the path could have written it */
				finish(s, a,
				       "-ERR [SYS/TEMP] Upstream server refused service; try again "
				       "later",
				       "upstream refused service");
				return;
			}
			proto_send(a, PROTO_CLIENT, l->p, l->size);
			finish(s, a, NULL, "upstream refused service");
			return;
		}
		if (buf_append(&s->greeting, l->p, l->size) < 0) {
			out_of_memory(s, a);
			return;
		}
		s->greeting_pre_tls = !s->upstream_tls;
		if (s->p.upstream_tls == CFG_TLS_STARTTLS && !s->upstream_tls) {
			send_up(s, a, "CAPA", E_INT_CAPA);
			enter_state(s, PROTO_UPSTREAM, U_CAPA);
			return;
		}
		upstream_ready(s, a);
		return;
	case E_INT_CAPA:
		if (!ok) {
			starttls_unavailable(s, a, "CAPA refused");
			return;
		}
		s->ml = ML_INT_CAPA;
		s->capa_lines = 0;
		s->stls_offered = 0;
		return;
	case E_INT_STLS:
		if (!ok) {
			starttls_unavailable(s, a, "STLS refused");
			return;
		}
		enter_state(s, PROTO_UPSTREAM, U_HANDSHAKE);
		lr_consume(&s->uin, l->size);
		/* whatever the upstream sent after its +OK was sent before TLS: dropped */
		kit_injection(&s->p, PROTO_UPSTREAM, kit_starttls(a, PROTO_UPSTREAM, &s->uin));
		return;
	default:
		break;
	}
	/* relayed responses */
	proto_send(a, PROTO_CLIENT, l->p, l->size);
	switch (k) {
	case E_MULTI:
	case E_AUTH_LIST:
		if (ok) {
			s->ml = ML_STREAM;
			s->ml_bol = 1;
		}
		break;
	case E_CAPA:
		if (ok) {
			s->ml = ML_CAPA;
			s->capa_lines = 0;
			s->pipelining = 0;
		}
		break;
	case E_AUTH:
		if (cont) {
			enter_state(s, PROTO_CLIENT, C_AUTH_LINE);
			break;
		}
		if (ok)
			s->auth_done = 1;
		enter_state(s, PROTO_CLIENT, C_COMMAND);
		break;
	case E_LOGIN:
		if (ok)
			s->auth_done = 1;
		break;
	case E_QUIT:
		finish(s, a, NULL, "quit");
		break;
	default:
		break;
	}
}

/* One line of a CAPA response (ML_CAPA, ML_INT_CAPA); "." ends it. */
static void on_capa_line(struct pop3 *s, struct proto_actions *a, const struct line *l)
{
	int end = l->len == 1 && l->p[0] == '.';
	if (!end && ++s->capa_lines > POP3_CAPA_LINES_MAX) {
		protocol_error(s, a, "CAPA response too long", "upstream protocol error");
		return;
	}
	if (s->ml == ML_INT_CAPA) {
		if (!end) {
			if (cap_word_is((const char *)l->p, l->len, "STLS"))
				s->stls_offered = 1;
			return;
		}
		s->ml = ML_NONE;
		if (!s->stls_offered) {
			starttls_unavailable(s, a, "STLS not offered");
			return;
		}
		send_up(s, a, "STLS", E_INT_STLS);
		enter_state(s, PROTO_UPSTREAM, U_STLS);
		return;
	}
	if (end) {
		if (offer_stls(s))
			proto_sendf(a, PROTO_CLIENT, "STLS\r\n");
		proto_send(a, PROTO_CLIENT, l->p, l->size);
		s->ml = ML_NONE;
		return;
	}
	if (cap_word_is((const char *)l->p, l->len, "PIPELINING"))
		s->pipelining = 1;
	if (pop3_capa_line_shown((const char *)l->p, l->len, hide_auth(s) ? POP3_HIDE_AUTH : 0))
		proto_send(a, PROTO_CLIENT, l->p, l->size);
}

/* ML_STREAM: relays whole lines as they come, byte-exact, up to and including the line
 * "." (CRLF or LF); an unfinished line is relayed as far as it goes. */
static void stream_bytes(struct pop3 *s, struct proto_actions *a)
{
	const uint8_t *d = lr_data(&s->uin);
	size_t n = lr_pending(&s->uin), i = 0;
	int ended = 0;
	while (i < n) {
		if (s->ml_bol && d[i] == '.') {
			if (n - i < 2)
				break;
			if (d[i + 1] == '\n') {
				i += 2;
				ended = 1;
				break;
			}
			if (d[i + 1] == '\r') {
				if (n - i < 3)
					break;
				if (d[i + 2] == '\n') {
					i += 3;
					ended = 1;
					break;
				}
			}
		}
		const uint8_t *nl = memchr(d + i, '\n', n - i);
		if (!nl) {
			/* keep a trailing CR with the rest of its line: harmless either way */
			i = n;
			s->ml_bol = 0;
			break;
		}
		i = (size_t)(nl - d) + 1;
		s->ml_bol = 1;
	}
	if (i) {
		proto_send(a, PROTO_CLIENT, d, i);
		lr_consume(&s->uin, i);
	}
	if (ended)
		s->ml = ML_NONE;
}

/* A response finished: the client's next commands may go. */
static void response_done(struct pop3 *s, struct proto_actions *a)
{
	drain_locals(s, a);
	process_client(s, a);
	if (s->u != U_DONE && s->client_eof && eq_len(&s->q) == 0 && s->ml == ML_NONE)
		finish(s, a, NULL, s->quit_seen ? "quit" : "client closed");
}

static void upstream_bytes(struct pop3 *s, struct proto_actions *a)
{
	while (s->u != U_DONE && s->u != U_HANDSHAKE && lr_pending(&s->uin)) {
		if (s->ml == ML_STREAM) {
			stream_bytes(s, a);
			if (s->ml != ML_NONE)
				return;
			response_done(s, a);
			continue;
		}
		struct line l;
		int rc = lr_next(&s->uin, &l);
		if (rc == LR_MORE)
			return;
		if (rc == LR_TOO_LONG) {
			lr_discard(&s->uin);
			protocol_error(s, a, "line too long", "upstream line too long");
			return;
		}
		if (s->ml == ML_CAPA || s->ml == ML_INT_CAPA) {
			on_capa_line(s, a, &l);
			lr_consume(&s->uin, l.size);
			if (s->ml == ML_NONE)
				response_done(s, a);
			continue;
		}
		enum ustate before = s->u;
		on_status(s, a, &l);
		if (s->u == U_HANDSHAKE && before != U_HANDSHAKE)
			return; /* the line was consumed, the rest dropped */
		lr_consume(&s->uin, l.size);
		if (s->ml == ML_NONE)
			response_done(s, a);
	}
}

/* ---- client commands ---------------------------------------------------------------- */

/* Answers the responses the module owns once everything before them has been answered. */
static void drain_locals(struct pop3 *s, struct proto_actions *a)
{
	struct expect *e;
	while (s->u != U_DONE && s->ml == ML_NONE && (e = eq_head(&s->q)) && e->kind >= E_LOCAL) {
		if (e->kind == E_LOCAL) {
			proto_sendf(a, PROTO_CLIENT, "%s\r\n", e->text);
			eq_pop(&s->q);
			continue;
		}
		eq_pop(&s->q); /* E_LOCAL_STLS */
		proto_sendf(a, PROTO_CLIENT, "+OK Begin TLS negotiation\r\n");
		/* pipelined after STLS: never processed */
		kit_injection(&s->p, PROTO_CLIENT, kit_starttls(a, PROTO_CLIENT, &s->cin));
	}
}

static void local_reply(struct pop3 *s, struct proto_actions *a, const char *text)
{
	expect(s, a, E_LOCAL, text);
}

struct cmdline {
	const uint8_t *line; /* without terminator */
	size_t len;
	char verb[8];        /* upper case ("" when longer) */
	int has_arg;
};

typedef void cmd_fn(struct pop3 *s, struct proto_actions *a, const struct cmdline *c);

static void forward(struct pop3 *s, struct proto_actions *a, const struct cmdline *c,
		    enum ekind k)
{
	proto_send(a, PROTO_UPSTREAM, c->line, c->len);
	proto_send(a, PROTO_UPSTREAM, "\r\n", 2);
	expect(s, a, k, NULL);
}

static void cmd_stls(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	(void)c;
	if (s->client_tls)
		local_reply(s, a, "-ERR TLS already active");
	else if (s->p.client_tls != CFG_TLS_STARTTLS)
		local_reply(s, a, "-ERR STLS not available");
	else if (s->auth_done)
		local_reply(s, a, "-ERR STLS not permitted after authentication");
	else if (expect(s, a, E_LOCAL_STLS, NULL) == 0)
		enter_state(s, PROTO_CLIENT, C_STARTTLS);
}

/* Credentials before the client's STLS, refused under client_policy = encrypt (RFC 3206
 * [AUTH], as Dovecot answers them). 1 when refused. */
static int auth_refused(struct pop3 *s, struct proto_actions *a)
{
	if (!hide_auth(s))
		return 0;
	local_reply(s, a, "-ERR [AUTH] Must issue a STLS command first");
	return 1;
}

static void cmd_login(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	if (!auth_refused(s, a))
		forward(s, a, c, strcmp(c->verb, "USER") == 0 ? E_SINGLE : E_LOGIN);
}

static void cmd_auth(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	if (auth_refused(s, a))
		return;
	if (!c->has_arg) {
		forward(s, a, c, E_AUTH_LIST);
		return;
	}
	forward(s, a, c, E_AUTH);
	enter_state(s, PROTO_CLIENT, C_WAIT_AUTH);
}

static void cmd_multi(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_MULTI);
}

static void cmd_list(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, c->has_arg ? E_SINGLE : E_MULTI);
}

static void cmd_capa(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_CAPA);
}

static void cmd_quit(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	s->quit_seen = 1;
	forward(s, a, c, E_QUIT);
}

static void cmd_other(struct pop3 *s, struct proto_actions *a, const struct cmdline *c)
{
	forward(s, a, c, E_SINGLE);
}

static const struct {
	const char *verb;
	cmd_fn *fn;
} commands[] = {
	{ "STLS", cmd_stls }, { "CAPA", cmd_capa }, { "USER", cmd_login }, { "PASS", cmd_login },
	{ "APOP", cmd_login }, { "AUTH", cmd_auth }, { "RETR", cmd_multi }, { "TOP", cmd_multi },
	{ "LIST", cmd_list }, { "UIDL", cmd_list }, { "QUIT", cmd_quit },
};

static void handle_command(struct pop3 *s, struct proto_actions *a, const struct line *l)
{
	struct cmdline c = { .line = l->p, .len = l->len };
	size_t vl = 0;
	while (vl < l->len && isalnum(l->p[vl]))
		vl++;
	/* The verb ends at SP or the end of the line, and no CR or NUL hides in the line: a
	 * server that splits such a line differently ("AUTH\r...", "USER a\rPASS b") would
	 * read a command the proxy did not. */
	if ((vl < l->len && l->p[vl] != ' ') || memchr(l->p, '\r', l->len) ||
	    memchr(l->p, '\0', l->len)) {
		local_reply(s, a, "-ERR Malformed command");
		return;
	}
	if (vl < sizeof(c.verb))
		for (size_t i = 0; i < vl; i++)
			c.verb[i] = (char)toupper(l->p[i]);
	size_t i = vl;
	while (i < l->len && l->p[i] == ' ')
		i++;
	c.has_arg = i < l->len;
	for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
		if (strcmp(c.verb, commands[k].verb) == 0) {
			commands[k].fn(s, a, &c);
			return;
		}
	cmd_other(s, a, &c);
}

/* 1 when the next command may go up: with PIPELINING while the queue has room, else only
 * once every earlier response is complete. */
static int may_send(const struct pop3 *s)
{
	if (s->pipelining)
		return eq_len(&s->q) < POP3_PIPELINE_MAX;
	return eq_len(&s->q) == 0 && s->ml == ML_NONE;
}

static void process_client(struct pop3 *s, struct proto_actions *a)
{
	while (s->u != U_DONE && s->client_greeted && lr_pending(&s->cin)) {
		if (s->c == C_STARTTLS) { /* after STLS, before the handshake */
			if (eq_len(&s->q) == 0) {
				kit_injection(&s->p, PROTO_CLIENT, lr_pending(&s->cin));
				lr_discard(&s->cin);
			}
			return;
		}
		if (s->c == C_WAIT_AUTH) {
			if (lr_pending(&s->cin) > POP3_HOLD_MAX)
				finish(s, a, "-ERR [SYS/TEMP] Too much pipelined input, closing connection",
				       "client pipelining overflow");
			return;
		}
		if (s->c == C_COMMAND && !may_send(s))
			return;
		struct line l;
		int rc = lr_next(&s->cin, &l);
		if (rc == LR_MORE)
			return;
		if (rc == LR_TOO_LONG) {
			if (s->c == C_AUTH_LINE) {
				finish(s, a, "-ERR Line too long, closing connection",
				       "client line too long");
				return;
			}
			local_reply(s, a, "-ERR Line too long");
			drain_locals(s, a);
			continue;
		}
		if (s->c == C_AUTH_LINE) {
			/* an AUTH response (credentials): forwarded, never logged */
			proto_send(a, PROTO_UPSTREAM, l.p, l.len);
			proto_send(a, PROTO_UPSTREAM, "\r\n", 2);
			lr_consume(&s->cin, l.size);
			if (expect(s, a, E_AUTH, NULL) == 0)
				enter_state(s, PROTO_CLIENT, C_WAIT_AUTH);
			continue;
		}
		handle_command(s, a, &l);
		lr_consume(&s->cin, l.size);
		drain_locals(s, a);
	}
}

/* ---- module interface ------------------------------------------------------------------- */

int pop3_saw_early_response(const void *st)
{
	return ((const struct pop3 *)st)->early_response;
}

static void *pop3_create(const struct proto_params *p)
{
	struct pop3 *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->p = *p;
	s->u = U_CONNECTING;
	s->c = C_COMMAND;
	s->client_tls = p->client_tls == CFG_TLS_IMPLICIT;
	eq_init(&s->q, QUEUE_MAX);
	lr_init(&s->cin, POP3_CMD_MAX);
	lr_init(&s->uin, POP3_LINE_MAX);
	return s;
}

static void pop3_destroy(void *st)
{
	struct pop3 *s = st;
	if (!s)
		return;
	eq_free(&s->q);
	lr_free(&s->cin);
	lr_free(&s->uin);
	buf_free(&s->greeting);
	free(s);
}

static void pop3_upstream_connected(void *st, struct proto_actions *a)
{
	struct pop3 *s = st;
	s->upstream_tls = s->p.upstream_tls == CFG_TLS_IMPLICIT;
	if (expect(s, a, E_GREETING, NULL) == 0)
		enter_state(s, PROTO_UPSTREAM, U_GREETING);
}

static void pop3_data(void *st, enum proto_side from, const uint8_t *d, size_t n,
		      struct proto_actions *a)
{
	struct pop3 *s = st;
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
	if (s->c == C_STARTTLS && eq_len(&s->q) == 0) {
		kit_injection(&s->p, PROTO_CLIENT, n);
		return;
	}
	if (lr_pending(&s->cin) + n > POP3_HOLD_MAX + POP3_CMD_MAX) {
		finish(s, a, "-ERR [SYS/TEMP] Too much pipelined input, closing connection",
		       "client pipelining overflow");
		return;
	}
	if (lr_feed(&s->cin, d, n) < 0) {
		out_of_memory(s, a);
		return;
	}
	process_client(s, a);
}

static void pop3_tls_done(void *st, enum proto_side side, struct proto_actions *a)
{
	struct pop3 *s = st;
	if (side == PROTO_UPSTREAM) {
		/* Nothing learned before TLS is kept but the greeting (its timestamp goes). */
		s->upstream_tls = 1;
		lr_discard(&s->uin);
		s->ml = ML_NONE;
		s->pipelining = 0;
		s->stls_offered = 0;
		upstream_ready(s, a);
		return;
	}
	s->client_tls = 1;
	lr_discard(&s->cin);
	enter_state(s, PROTO_CLIENT, C_COMMAND);
}

static void pop3_set_policy(void *st, enum cfg_tls tls, enum cfg_policy level, enum cfg_mode mode)
{
	struct pop3 *s = st;
	s->p.upstream_tls = tls;
	s->p.upstream_policy = level;
	s->p.policy_mode = mode;
}

static void pop3_upstream_retry(void *st)
{
	struct pop3 *s = st;
	s->upstream_tls = 0;
	lr_discard(&s->uin);
	s->ml = ML_NONE;
	s->stls_offered = 0;
	s->greeting.len = 0;
	eq_clear(&s->q);
	enter_state(s, PROTO_UPSTREAM, U_CONNECTING);
}

static void pop3_upstream_retry_plain(void *st)
{
	struct pop3 *s = st;
	s->p.upstream_tls = CFG_TLS_NONE;
	pop3_upstream_retry(st);
}

static void pop3_client_eof(void *st, struct proto_actions *a)
{
	struct pop3 *s = st;
	s->client_eof = 1;
	if (s->u == U_DONE)
		return;
	/* commands already sent still get their responses (QUIT's among them) */
	if ((eq_len(&s->q) == 0 && s->ml == ML_NONE) || !s->client_greeted)
		finish(s, a, NULL, s->quit_seen ? "quit" : "client closed");
}

static void pop3_fail(void *st, enum proto_failure why, const char *result,
		      struct proto_actions *a)
{
	struct pop3 *s = st;
	char r[300];
	if (s->u == U_DONE)
		return;
	const char *reason = why == PF_TLS_POLICY ? "upstream policy failure"
			     : why == PF_IDLE	  ? "idle timeout"
			     : why == PF_SHUTDOWN ? "shutdown"
			     : why == PF_UNREACHABLE ? "upstream unreachable"
						     : "upstream lost";
	if (why == PF_LOST && s->quit_seen) {
		finish(s, a, NULL, "quit");
		return;
	}
	switch (why) {
	case PF_UNREACHABLE:
		snprintf(r, sizeof(r), "-ERR [SYS/TEMP] Upstream server unreachable, try again later");
		break;
	case PF_LOST:
		snprintf(r, sizeof(r), s->client_greeted
					       ? "-ERR [SYS/TEMP] Upstream connection lost, closing connection"
					       : "-ERR [SYS/TEMP] Upstream server unreachable, try again later");
		break;
	case PF_TLS_POLICY:
		snprintf(r, sizeof(r),
			 "-ERR [SYS/TEMP] TLS policy failure toward the upstream server (%s); try "
			 "again later", result ? result : "tls");
		break;
	case PF_IDLE:
		snprintf(r, sizeof(r), "-ERR [SYS/TEMP] Timeout, closing connection");
		break;
	default:
		snprintf(r, sizeof(r), "-ERR [SYS/TEMP] Service shutting down, try again later");
		break;
	}
	/* inside a multi-line response any line would be taken as its content: the client
	 * sees it cut short instead */
	finish(s, a, s->ml == ML_STREAM || s->ml == ML_CAPA ? NULL : r, reason);
}

static void pop3_refuse(const struct proto_params *p, enum proto_refusal why,
			struct proto_actions *a)
{
	(void)p;
	if (why == PR_NOT_ALLOWED)
		proto_sendf(a, PROTO_CLIENT, "-ERR [SYS/PERM] Access denied\r\n");
	else
		proto_sendf(a, PROTO_CLIENT, "-ERR [SYS/TEMP] Too many connections, try again later\r\n");
	proto_close(a, why == PR_NOT_ALLOWED ? "client not allowed" : "connection limit");
}

static int pop3_idle(void *st)
{
	const struct pop3 *s = st;
	return s->u == U_READY && s->client_greeted && s->c == C_COMMAND && eq_len(&s->q) == 0 &&
	       s->ml == ML_NONE && lr_pending(&s->cin) == 0 && !s->quit_seen;
}

/* Commands and AUTH response lines (nothing after an accepted STLS, dropped at the
 * boundary). */
static uint64_t pop3_client_partial(void *st)
{
	const struct pop3 *s = st;
	return s->u != U_DONE && s->c != C_STARTTLS ? lr_partial(&s->cin) : 0;
}

const struct proto_ops proto_pop3_ops = {
	.name = "pop3",
	.create = pop3_create,
	.destroy = pop3_destroy,
	.upstream_connected = pop3_upstream_connected,
	.data = pop3_data,
	.tls_done = pop3_tls_done,
	.client_eof = pop3_client_eof,
	.upstream_retry_plain = pop3_upstream_retry_plain,
	.upstream_retry = pop3_upstream_retry,
	.set_policy = pop3_set_policy,
	.fail = pop3_fail,
	.refuse = pop3_refuse,
	.idle = pop3_idle,
	.client_partial = pop3_client_partial,
};
