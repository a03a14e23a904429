/* test_alloc_failure.c - an allocation that fails ends the session, never the process.
 *
 * This binary is linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup
 * (its own rule in the Makefile): every call to those in the module objects goes through
 * the __wrap_ functions below, which count the allocations made while the harness is
 * inside a module call and make the Nth one fail (return NULL). No production code knows.
 *
 * For each protocol module (proto_smtp_ops, proto_pop3_ops, proto_imap_ops) a realistic
 * session script (greeting, STARTTLS, login or a mail transaction, a literal or a message,
 * the end) runs first without a failure (the baseline), then with N = 1, 2, 3, ... until a
 * run completes without reaching its Nth allocation. For every N:
 *   - no crash (and, built with SANITIZE=1, no ASan/UBSan/LeakSanitizer report);
 *   - the failure ends the session: the step that met it carries PA_CLOSE, or sets
 *     proto_actions.failed (the session then ends it, "out of memory"), or create()
 *     returned NULL (the session is refused); or else the module absorbed it and the
 *     session went on exactly as the baseline, every byte to both sides the same (the
 *     SMTP module's event=message trace is such a case: it may lose an address, never a
 *     byte of the session);
 *   - nothing is sent to either side, and no TLS started, after PA_CLOSE;
 *   - a run that never met its Nth allocation is the baseline, byte for byte.
 * Two modes: only the Nth allocation fails ("once"), or every one from the Nth on fails
 * ("from": the module's own error path cannot allocate either). Every script runs with its
 * inputs whole and one byte at a time (a different allocation pattern in the readers). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

/* ------------------------------------------------------------------ the allocator hook */

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);

static int armed;         /* counting: the harness is inside a module call */
static unsigned counted;  /* allocations counted so far in this run */
static unsigned fail_at;  /* 0: none fails; else the Nth counted one */
static int fail_from;     /* every counted allocation from the Nth on fails */
static int hit;           /* a failure was injected in this run */
static unsigned hits;     /* failures injected so far in this run */

static int should_fail(void)
{
	if (!armed)
		return 0;
	counted++;
	if (fail_at && (counted == fail_at || (fail_from && counted > fail_at))) {
		hit = 1;
		hits++;
		return 1;
	}
	return 0;
}

void *__wrap_malloc(size_t n)
{
	return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t k, size_t n)
{
	return should_fail() ? NULL : __real_calloc(k, n);
}

void *__wrap_realloc(void *p, size_t n)
{
	return should_fail() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
	return should_fail() ? NULL : __real_strdup(s);
}

/* ------------------------------------------------------------------ scripts */

enum op { OP_END, OP_CONN, OP_CL, OP_UP, OP_TLSC, OP_TLSU, OP_EOF, OP_FAIL };

struct step {
	enum op op;
	const char *in; /* OP_CL/OP_UP: bytes; IMAP: "@" replaced by the module's tag */
	int why;        /* OP_FAIL: enum proto_failure */
};

#define CONN { OP_CONN, NULL, 0 }
#define CL(s) { OP_CL, (s), 0 }
#define UP(s) { OP_UP, (s), 0 }
#define TLSC { OP_TLSC, NULL, 0 }
#define TLSU { OP_TLSU, NULL, 0 }
#define CEOF { OP_EOF, NULL, 0 }
#define FAILUP(w) { OP_FAIL, NULL, (w) }
#define END { OP_END, NULL, 0 }

struct script {
	const char *name;
	const struct proto_ops *ops;
	struct proto_params p;
	const struct step *steps;
};

#define PARAMS(proto, ctls, cpol, utls, upol)                                              \
	{ .session_id = "0123456789abcdef", .route = "unit", .protocol = (proto),            \
	  .client_tls = (ctls), .client_policy = (cpol), .upstream_tls = (utls),             \
	  .upstream_policy = (upol), .policy_mode = CFG_MODE_ENFORCE,                        \
	  .helo_name = "proxy.test", .client_ip = "192.0.2.7", .client_port = 40000 }

#define CAPS_TLS "250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
#define CAPS_POST "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
#define BODY "Subject: test\r\nFrom: a@client.test\r\n\r\nline 1\r\n..a dot\r\nline 3\r\n.\r\n"

/* inject: plaintext client, STARTTLS toward the upstream; two messages, then QUIT */
static const struct step smtp_inject[] = {
	CONN,
	CL("EHLO client.test\r\n"),
	UP("220-mx.test ESMTP\r\n220 ready\r\n"),
	UP(CAPS_TLS),
	UP("220 2.0.0 Go ahead\r\n"),
	TLSU,
	UP(CAPS_POST),
	CL("MAIL FROM:<a@client.test>\r\n"),
	UP("250 2.1.0 Ok\r\n"),
	CL("RCPT TO:<b@mx.test>\r\n"),
	UP("250 2.1.5 Ok\r\n"),
	CL("RCPT TO:<c@other.test>\r\n"),
	UP("250 2.1.5 Ok\r\n"),
	CL("DATA\r\n"),
	UP("354 End data with <CR><LF>.<CR><LF>\r\n"),
	CL(BODY),
	UP("250 2.0.0 Ok: queued as 4XyZ1\r\n"),
	CL("MAIL FROM:<>\r\nRCPT TO:<d@mx.test>\r\nDATA\r\n"),
	UP("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"),
	CL(BODY),
	UP("250 2.0.0 Ok: queued as 4XyZ2\r\n"),
	CL("RSET\r\n"),
	UP("250 2.0.0 Ok\r\n"),
	CL("QUIT\r\n"),
	UP("221 2.0.0 Bye\r\n"),
	END
};

/* terminate: STARTTLS toward the client, a plaintext upstream */
static const struct step smtp_terminate[] = {
	CONN,
	UP("220 mx.test ESMTP ready\r\n"),
	CL("EHLO client.test\r\n"),
	UP("250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-SIZE 100000\r\n250 PIPELINING\r\n"),
	CL("STARTTLS\r\n"),
	TLSC,
	UP("250 2.0.0 Ok\r\n"),
	CL("EHLO client.test\r\n"),
	UP("250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-SIZE 100000\r\n250 PIPELINING\r\n"),
	CL("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
	UP("235 2.7.0 Authentication successful\r\n"),
	CL("MAIL FROM:<a@client.test>\r\n"),
	UP("250 2.1.0 Ok\r\n"),
	CL("RCPT TO:<b@mx.test>\r\n"),
	UP("250 2.1.5 Ok\r\n"),
	CL("DATA\r\n"),
	UP("354 go ahead\r\n"),
	CL(BODY),
	UP("250 2.0.0 Ok: queued as 4XyZ3\r\n"),
	CL("QUIT\r\n"),
	UP("221 2.0.0 Bye\r\n"),
	END
};

/* the upstream lost in the middle of a transaction; the 421 ends the session */
static const struct step smtp_lost[] = {
	CONN,
	UP("220 mx.test ESMTP ready\r\n"),
	CL("EHLO client.test\r\n"),
	UP(CAPS_POST),
	CL("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n"),
	UP("250 2.1.0 Ok\r\n"),
	FAILUP(PF_LOST),
	END
};

#define POP3_G "+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\r\n"
#define POP3_CAPA_STLS "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nSTLS\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
#define POP3_CAPA_TLS                                                                     \
	"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
#define POP3_RETR "+OK 60 octets\r\nSubject: one\r\n\r\n..a dot-stuffed line\r\nbare LF\n.\r\n"

static const struct step pop3_inject[] = {
	CONN,
	UP(POP3_G),
	UP(POP3_CAPA_STLS),
	UP("+OK Begin TLS negotiation now.\r\n"),
	TLSU,
	CL("CAPA\r\n"),
	UP(POP3_CAPA_TLS),
	CL("USER alice\r\n"),
	UP("+OK\r\n"),
	CL("PASS secret\r\n"),
	UP("+OK Logged in.\r\n"),
	CL("LIST\r\n"),
	UP("+OK 2 messages:\r\n1 60\r\n2 70\r\n.\r\n"),
	CL("RETR 1\r\n"),
	UP(POP3_RETR),
	CL("TOP 2 0\r\nUIDL\r\n"),
	UP("+OK\r\nSubject: two\r\n\r\n.\r\n+OK\r\n1 a\r\n2 b\r\n.\r\n"),
	CL("DELE 1\r\n"),
	UP("+OK Marked to be deleted.\r\n"),
	CL("QUIT\r\n"),
	UP("+OK Logging out.\r\n"),
	END
};

static const struct step pop3_terminate[] = {
	CONN,
	UP("+OK ready\r\n"),
	CL("CAPA\r\n"),
	UP("+OK\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n.\r\n"),
	CL("STLS\r\n"),
	TLSC,
	CL("USER alice\r\n"),
	UP("+OK\r\n"),
	CL("PASS secret\r\n"),
	UP("+OK Logged in.\r\n"),
	CL("RETR 1\r\n"),
	UP(POP3_RETR),
	CL("QUIT\r\n"),
	UP("+OK Logging out.\r\n"),
	END
};

#define IMAP_GREET "* OK [CAPABILITY IMAP4rev1 LITERAL+ STARTTLS AUTH=PLAIN] ready\r\n"

static const struct step imap_inject[] = {
	CONN,
	CL("A1 LOGIN alice secret\r\n"),
	UP(IMAP_GREET),
	UP("* OK [ALERT] injected\r\n@ OK go\r\n"),
	TLSU,
	UP("* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN IDLE\r\n@ OK done\r\n"),
	UP("A1 OK [CAPABILITY IMAP4rev1 IDLE STARTTLS] Logged in\r\n"),
	CL("A2 SELECT INBOX\r\n"),
	UP("* 2 EXISTS\r\n* FLAGS (\\Seen)\r\nA2 OK [READ-WRITE] done\r\n"),
	CL("A3 FETCH 1 BODY[]\r\n"),
	UP("* 1 FETCH (BODY[] {20}\r\n0123456789abcdefghij)\r\nA3 OK done\r\n"),
	CL("A4 APPEND INBOX {11+}\r\nhello world\r\n"),
	UP("A4 OK appended\r\n"),
	CL("A5 CAPABILITY\r\n"),
	UP("* CAPABILITY IMAP4rev1 STARTTLS IDLE\r\nA5 OK done\r\n"),
	CL("A6 LOGOUT\r\n"),
	UP("* BYE bye\r\nA6 OK bye\r\n"),
	CEOF,
	END
};

static const struct step imap_terminate[] = {
	CONN,
	UP("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n"),
	CL("a1 CAPABILITY\r\n"),
	UP("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na1 OK done\r\n"),
	CL("a2 STARTTLS\r\n"),
	TLSC,
	CL("a3 LOGIN alice secret\r\n"),
	UP("a3 OK Logged in\r\n"),
	CL("a4 FETCH 1 BODY[]\r\n"),
	UP("* 1 FETCH (BODY[] {5}\r\nhello)\r\na4 OK done\r\n"),
	CL("a5 LOGOUT\r\n"),
	UP("* BYE bye\r\na5 OK bye\r\n"),
	CEOF,
	END
};

static const struct script scripts[] = {
	{ "smtp_inject", &proto_smtp_ops,
	  PARAMS(CFG_PROTO_SMTP, CFG_TLS_NONE, CFG_POLICY_MAY, CFG_TLS_STARTTLS,
		 CFG_POLICY_VERIFY),
	  smtp_inject },
	{ "lmtp_inject", &proto_smtp_ops,
	  PARAMS(CFG_PROTO_LMTP, CFG_TLS_NONE, CFG_POLICY_MAY, CFG_TLS_STARTTLS,
		 CFG_POLICY_VERIFY),
	  NULL /* filled in below: the SMTP script with LHLO */ },
	{ "smtp_terminate", &proto_smtp_ops,
	  PARAMS(CFG_PROTO_SMTP, CFG_TLS_STARTTLS, CFG_POLICY_ENCRYPT, CFG_TLS_NONE,
		 CFG_POLICY_NONE),
	  smtp_terminate },
	{ "smtp_lost", &proto_smtp_ops,
	  PARAMS(CFG_PROTO_SMTP, CFG_TLS_NONE, CFG_POLICY_MAY, CFG_TLS_NONE, CFG_POLICY_NONE),
	  smtp_lost },
	{ "pop3_inject", &proto_pop3_ops,
	  PARAMS(CFG_PROTO_POP3, CFG_TLS_NONE, CFG_POLICY_MAY, CFG_TLS_STARTTLS,
		 CFG_POLICY_VERIFY),
	  pop3_inject },
	{ "pop3_terminate", &proto_pop3_ops,
	  PARAMS(CFG_PROTO_POP3, CFG_TLS_STARTTLS, CFG_POLICY_ENCRYPT, CFG_TLS_NONE,
		 CFG_POLICY_NONE),
	  pop3_terminate },
	{ "imap_inject", &proto_imap_ops,
	  PARAMS(CFG_PROTO_IMAP, CFG_TLS_NONE, CFG_POLICY_NONE, CFG_TLS_STARTTLS,
		 CFG_POLICY_ENCRYPT),
	  imap_inject },
	{ "imap_terminate", &proto_imap_ops,
	  PARAMS(CFG_PROTO_IMAP, CFG_TLS_STARTTLS, CFG_POLICY_ENCRYPT, CFG_TLS_NONE,
		 CFG_POLICY_NONE),
	  imap_terminate },
};

/* ------------------------------------------------------------------ the harness */

struct sbuf {
	char *p;
	size_t n, cap;
};

/* The harness's own allocations are never counted (armed is 0 here). */
static void sb_add(struct sbuf *b, const void *d, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->n + n + 1)
			cap *= 2;
		b->p = __real_realloc(b->p, cap);
		assert_non_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static void sb_adds(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

struct outcome {
	int refused;     /* create() returned NULL */
	int closed;      /* PA_CLOSE seen */
	int failed;      /* proto_actions.failed seen */
	int ended_step;  /* the step where the session ended, -1: never */
	int completed;   /* every step ran */
	int hit;         /* the Nth allocation was reached and failed */
	int hit_step;    /* the step where it was */
	int last_hit;    /* the step of the last failed allocation ("from": of several) */
	unsigned allocs; /* allocations counted */
	struct sbuf log; /* what each side got and the other actions, in order */
	char why[512];   /* a broken invariant, "" if none */
};

static void violation(struct outcome *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void violation(struct outcome *o, const char *fmt, ...)
{
	if (o->why[0])
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(o->why, sizeof(o->why), fmt, ap);
	va_end(ap);
}

/* Takes the actions of one module call; the IMAP module's tag is learned from its own
 * commands upstream ("P" and 16 characters, then a space). */
static void collect(struct outcome *o, struct proto_actions *a, int stepno, char *tag)
{
	if (a->failed) {
		/* The session carries out none of these actions and ends the session. */
		o->failed = 1;
		sb_adds(&o->log, "[failed]");
		proto_actions_clear(a);
		return;
	}
	for (size_t i = 0; i < a->n; i++) {
		const struct proto_act *x = &a->a[i];
		if (o->closed && (x->type == PA_SEND || x->type == PA_STARTTLS))
			violation(o, "step %d: %s to the %s after PA_CLOSE", stepno,
				  x->type == PA_SEND ? "PA_SEND" : "PA_STARTTLS",
				  x->side == PROTO_CLIENT ? "client" : "upstream");
		switch (x->type) {
		case PA_SEND:
			sb_adds(&o->log, x->side == PROTO_CLIENT ? "[>c]" : "[>u]");
			if (x->side == PROTO_UPSTREAM && x->len > 17 && a->buf[x->off] == 'P' &&
			    a->buf[x->off + 17] == ' ') {
				memcpy(tag, a->buf + x->off, 17);
				tag[17] = '\0';
				/* random: logged as "@" so that runs compare */
				sb_adds(&o->log, "@");
				sb_add(&o->log, a->buf + x->off + 17, x->len - 17);
			} else {
				sb_add(&o->log, a->buf + x->off, x->len);
			}
			break;
		case PA_STARTTLS:
			sb_adds(&o->log, x->side == PROTO_CLIENT ? "[tls:c]" : "[tls:u]");
			break;
		case PA_READY:
			sb_adds(&o->log, "[ready]");
			break;
		case PA_CLOSE:
			sb_adds(&o->log, "[close]");
			o->closed = 1;
			break;
		case PA_POLICY:
			sb_adds(&o->log, "[policy]");
			break;
		case PA_MESSAGE: {
			struct proto_message m;
			if (proto_message_get(a, x, &m) == 0) {
				char t[64];
				snprintf(t, sizeof(t), "[message %d %u]", m.code, m.rcpts);
				sb_adds(&o->log, t);
			} else {
				violation(o, "step %d: PA_MESSAGE unreadable", stepno);
			}
			break;
		}
		case PA_BIND:
		case PA_CHECK:
			sb_adds(&o->log, "[bind]");
			break;
		case PA_CONNECT:
			sb_adds(&o->log, "[connect]");
			break;
		}
	}
	proto_actions_clear(a);
}

/* A copy of in (harness memory, not counted), "@" replaced by tag unless it is NULL. */
static char *fill_tag(const char *in, const char *tag, size_t *len)
{
	struct sbuf o = { 0 };
	sb_adds(&o, "");
	for (const char *c = in; *c; c++) {
		if (*c == '@' && tag)
			sb_adds(&o, tag);
		else
			sb_add(&o, c, 1);
	}
	*len = o.n;
	return o.p;
}

static void feed(const struct script *sc, void *st, enum proto_side side, const char *d,
		 size_t n, int bytewise, struct proto_actions *a, struct outcome *o, int stepno,
		 char *tag)
{
	if (!bytewise) {
		armed = 1;
		sc->ops->data(st, side, (const uint8_t *)d, n, a);
		armed = 0;
		return;
	}
	for (size_t k = 0; k < n; k++) {
		armed = 1;
		sc->ops->data(st, side, (const uint8_t *)d + k, 1, a);
		armed = 0;
		if (k + 1 == n)
			break;
		/* the session carries out each call's actions before the next read */
		collect(o, a, stepno, tag);
		if (o->closed || o->failed)
			return;
	}
}

/* One run of a script with the Nth allocation failing (0: none). */
static void run(const struct script *sc, const struct step *steps, unsigned n, int from,
		int bytewise, struct outcome *o)
{
	memset(o, 0, sizeof(*o));
	o->ended_step = -1;
	o->hit_step = -1;
	o->last_hit = -1;
	sb_adds(&o->log, "");
	counted = 0;
	fail_at = n;
	fail_from = from;
	hit = 0;
	hits = 0;
	struct proto_actions a = { 0 };
	char tag[32] = "";

	armed = 1;
	void *st = sc->ops->create(&sc->p);
	armed = 0;
	if (!st) {
		o->refused = 1;
		o->ended_step = 0;
		if (hit)
			o->hit_step = o->last_hit = 0;
		else
			violation(o, "create() returned NULL without an allocation failure");
		goto out;
	}
	if (hit)
		o->hit_step = o->last_hit = 0;
	int i;
	unsigned seen = hits;
	for (i = 0; steps[i].op != OP_END; i++) {
		const struct step *t = &steps[i];
		int stepno = i + 1;
		switch (t->op) {
		case OP_CONN:
			armed = 1;
			sc->ops->upstream_connected(st, &a);
			armed = 0;
			break;
		case OP_CL:
		case OP_UP: {
			size_t len;
			char *in = sc->p.protocol == CFG_PROTO_IMAP ? fill_tag(t->in, tag, &len)
								   : fill_tag(t->in, NULL, &len);
			feed(sc, st, t->op == OP_CL ? PROTO_CLIENT : PROTO_UPSTREAM, in, len,
			     bytewise, &a, o, stepno, tag);
			free(in);
			break;
		}
		case OP_TLSC:
		case OP_TLSU:
			armed = 1;
			sc->ops->tls_done(st, t->op == OP_TLSC ? PROTO_CLIENT : PROTO_UPSTREAM, &a);
			armed = 0;
			break;
		case OP_EOF:
			armed = 1;
			sc->ops->client_eof(st, &a);
			armed = 0;
			break;
		case OP_FAIL:
			armed = 1;
			(sc->ops->fail)(st, (enum proto_failure)t->why, NULL, &a);
			armed = 0;
			break;
		case OP_END:
			break;
		}
		if (hit && o->hit_step < 0)
			o->hit_step = stepno;
		if (hits != seen) {
			o->last_hit = stepno;
			seen = hits;
		}
		collect(o, &a, stepno, tag);
		if (o->closed || o->failed) {
			/* the session ends here: the module hears nothing more */
			o->ended_step = stepno;
			break;
		}
	}
	if (steps[i].op == OP_END)
		o->completed = 1;
	if (hit && o->hit_step < 0)
		o->hit_step = i + 1;
	armed = 1; /* destroy frees; an allocation there would be counted (and may fail) */
	sc->ops->destroy(st);
	armed = 0;
out:
	o->hit = hit;
	o->allocs = counted;
	fail_at = 0;
	proto_actions_free(&a);
}

static const struct step *lmtp_steps;

static int check_script(const struct script *sc)
{
	const struct step *steps = sc->steps ? sc->steps : lmtp_steps;
	int bad = 0;
	for (int bytewise = 0; bytewise <= 1; bytewise++) {
		struct outcome base;
		run(sc, steps, 0, 0, bytewise, &base);
		const char *mode = bytewise ? "bytewise" : "whole";
		if (getenv("STP_ALLOC_DEBUG"))
			print_message("[%s/%s] baseline (%u allocations): %s\n", sc->name, mode,
				      base.allocs, base.log.p);
		/* the baseline is a complete session that ends with PA_CLOSE at its last step */
		if (base.why[0] || !base.closed || base.refused || base.failed) {
			print_message("[%s/%s] baseline broken: %s closed=%d failed=%d: %s\n",
				      sc->name, mode, base.why, base.closed, base.failed,
				      base.log.p);
			bad++;
		}
		if (base.allocs == 0) {
			print_message("[%s/%s] no allocation counted: the hook is not linked in\n",
				      sc->name, mode);
			bad++;
		}
		for (int from = 0; from <= 1; from++) {
			unsigned n, absorbed_n = 0;
			for (n = 1; n < 100000; n++) {
				struct outcome o;
				run(sc, steps, n, from, bytewise, &o);
				const char *m = from ? "from" : "once";
				if (getenv("STP_ALLOC_DEBUG"))
					print_message("[%s/%s/%s N=%u] hit=%d step=%d refused=%d "
						      "closed=%d failed=%d ended=%d\n",
						      sc->name, mode, m, n, o.hit, o.hit_step,
						      o.refused, o.closed, o.failed, o.ended_step);
				if (o.why[0]) {
					print_message("[%s/%s/%s N=%u] %s\n", sc->name, mode, m, n,
						      o.why);
					bad++;
				}
				if (!o.hit) {
					/* the run never reached its Nth allocation: the baseline */
					if (strcmp(o.log.p, base.log.p) != 0) {
						print_message("[%s/%s/%s N=%u] no failure, yet not the "
							      "baseline: %s\n",
							      sc->name, mode, m, n, o.log.p);
						bad++;
					}
					free(o.log.p);
					break;
				}
				/* The failure ends the session at the step that met it (create
				 * failing included), or the module absorbed it: the session went
				 * on exactly as the baseline did, every byte to both sides the
				 * same (what may be lost then is the trace of event=message, which
				 * the log shows, not the wire). Anything else is a session going
				 * on after an allocation it needed failed. */
				int ended_there = o.refused ||
						  ((o.closed || o.failed) && o.ended_step == o.last_hit);
				int absorbed = !o.failed && o.closed == base.closed &&
					       o.ended_step == base.ended_step &&
					       !strcmp(o.log.p, base.log.p);
				if (!ended_there && !absorbed) {
					print_message("[%s/%s/%s N=%u] allocation %u failed at step %d "
						      "and the session went on (ended at step %d, "
						      "closed=%d failed=%d): %s\n",
						      sc->name, mode, m, n, n, o.last_hit, o.ended_step,
						      o.closed, o.failed, o.log.p);
					bad++;
				} else if (!ended_there) {
					absorbed_n++;
				}
				free(o.log.p);
			}
			if (getenv("STP_ALLOC_DEBUG"))
				print_message("[%s/%s/%s] %u failure points, %u absorbed\n",
					      sc->name, mode, from ? "from" : "once", n - 1,
					      absorbed_n);
		}
		free(base.log.p);
	}
	return bad;
}

/* The LMTP variant of the inject script: LHLO for EHLO, one reply per recipient after the
 * message. */
static struct step lmtp_buf[64];

static void make_lmtp(void)
{
	size_t i;
	for (i = 0; smtp_inject[i].op != OP_END; i++) {
		lmtp_buf[i] = smtp_inject[i];
		if (lmtp_buf[i].in && !strcmp(lmtp_buf[i].in, "EHLO client.test\r\n"))
			lmtp_buf[i].in = "LHLO client.test\r\n";
		if (lmtp_buf[i].in && !strcmp(lmtp_buf[i].in, "250 2.0.0 Ok: queued as 4XyZ1\r\n"))
			lmtp_buf[i].in = "250 2.0.0 <b@mx.test> Ok\r\n452 4.2.2 <c@other.test> "
					 "Mailbox full\r\n";
	}
	lmtp_buf[i] = smtp_inject[i];
	lmtp_steps = lmtp_buf;
}

static void test_script(void **state)
{
	const struct script *sc = *state;
	assert_int_equal(check_script(sc), 0);
}

/* The hook itself: armed, the Nth allocation fails and no other; disarmed, none does. */
static void test_hook(void **state)
{
	(void)state;
	counted = 0;
	fail_at = 2;
	fail_from = 0;
	hit = 0;
	/* through volatile pointers: the compiler may not fold these calls away */
	void *(*volatile m)(size_t) = malloc;
	void *(*volatile ca)(size_t, size_t) = calloc;
	char *(*volatile sd)(const char *) = strdup;
	armed = 1;
	void *a = m(8), *b = m(8), *c = ca(1, 8);
	char *d = sd("x");
	armed = 0;
	assert_non_null(a);
	assert_null(b);
	assert_non_null(c);
	assert_non_null(d);
	assert_true(hit);
	void *e = m(8); /* not armed: not counted */
	assert_non_null(e);
	assert_int_equal(counted, 4);
	fail_at = 0;
	free(a);
	free(c);
	free(d);
	free(e);
}

int main(void)
{
	make_lmtp();
	struct CMUnitTest tests[1 + sizeof(scripts) / sizeof(scripts[0])];
	tests[0] = (struct CMUnitTest)cmocka_unit_test(test_hook);
	for (size_t i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
		tests[i + 1] = (struct CMUnitTest){ scripts[i].name, test_script, NULL, NULL,
						    (void *)&scripts[i] };
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
