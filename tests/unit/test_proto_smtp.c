/* test_proto_smtp.c - the SMTP/LMTP STARTTLS state machine (proto_smtp_ops) and its pure
 * helpers (smtp_line_has_keyword, smtp_rewrite_ehlo), table-driven.
 *
 * A script is a list of steps (upstream connected, bytes from the client or the upstream,
 * TLS done on a side, client EOF, upstream failure, plaintext retry). For each step the
 * harness collects what the module sent to the client, what it sent to the upstream, and
 * its other actions ("tls:client", "tls:up", "ready", "close"), and compares them with the
 * step's expectations. Expected bytes are exact, except that '*' matches any run of bytes.
 *
 * Every script runs in several modes that must give the same result: each data step fed
 * whole, fed one byte at a time, and split in two at every position. The harness also
 * checks invariants on every run: no byte to a side between PA_STARTTLS and tls_done on it,
 * "220 2.0.0 Ready to start TLS" / "STARTTLS" right before PA_STARTTLS, one PA_CLOSE and
 * nothing after it, and (upstream_tls = starttls under encrypt or stricter, enforce) only
 * the module's own EHLO/LHLO/STARTTLS/QUIT upstream before tls_done(UPSTREAM). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "proto.h"
#include "proto_smtp.h"

/* ------------------------------------------------------------------ small helpers */
#include "unit_script.h"

/* ------------------------------------------------------------------ the harness */

enum op { OP_END, OP_CONN, OP_CL, OP_UP, OP_TLSC, OP_TLSU, OP_EOF, OP_FAIL, OP_RETRY,
	  OP_RETRY_TLS, OP_LATE, OP_BINDFAIL, OP_VERDICT };

struct step {
	enum op op;
	const char *in;    /* OP_CL/OP_UP: bytes; OP_FAIL: result */
	size_t inlen;      /* 0: strlen(in) */
	int why;           /* OP_FAIL: enum proto_failure */
	const char *to_client; /* expected client-bound bytes of this step; NULL: not checked */
	const char *to_up;     /* expected upstream-bound bytes of this step; NULL: not checked */
	const char *acts;      /* expected other actions, space separated; NULL: not checked */
};

#define ANY NULL
#define CONN(c, u, x) { .op = OP_CONN, .to_client = (c), .to_up = (u), .acts = (x) }
#define CL(d, c, u, x) { .op = OP_CL, .in = (d), .to_client = (c), .to_up = (u), .acts = (x) }
#define UP(d, c, u, x) { .op = OP_UP, .in = (d), .to_client = (c), .to_up = (u), .acts = (x) }
#define TLSC(c, u, x) { .op = OP_TLSC, .to_client = (c), .to_up = (u), .acts = (x) }
#define TLSU(c, u, x) { .op = OP_TLSU, .to_client = (c), .to_up = (u), .acts = (x) }
#define CEOF(c, u, x) { .op = OP_EOF, .to_client = (c), .to_up = (u), .acts = (x) }
#define FAIL(w, r, c, u, x) \
	{ .op = OP_FAIL, .why = (w), .in = (r), .to_client = (c), .to_up = (u), .acts = (x) }
#define RETRY() { .op = OP_RETRY, .to_client = "", .to_up = "", .acts = "" }
#define RETRY_TLS() { .op = OP_RETRY_TLS, .to_client = "", .to_up = "", .acts = "" }
/* late binding: late_start, bind_failed(reply), rcpt_verdict(ok, reply) */
#define LATE(c, u, x) { .op = OP_LATE, .to_client = (c), .to_up = (u), .acts = (x) }
#define BINDFAIL(r, c, u, x) \
	{ .op = OP_BINDFAIL, .in = (r), .to_client = (c), .to_up = (u), .acts = (x) }
#define VERDICT(ok, r, c, u, x) \
	{ .op = OP_VERDICT, .why = (ok), .in = (r), .to_client = (c), .to_up = (u), .acts = (x) }
#define END { .op = OP_END }

enum { M_WHOLE = 1, M_BYTES = 2, M_SPLIT = 4, M_ALL = 7 };

struct script {
	const char *name;
	const struct proto_params *p;
	const struct step *steps;
	int modes; /* 0: M_ALL */
};

struct run {
	const struct script *sc;
	const char *mode;
	void *st;
	struct proto_actions a;
	int closed, tls_pending[2], tls_done_called[2];
	int policy_reports; /* PA_POLICY actions seen */
	struct sbuf all_client, all_up;
	struct sbuf sc_client, sc_up, sc_acts;
	int failures;
};

static const char *side_name(int side)
{
	return side == PROTO_CLIENT ? "client" : "up";
}

static int quiet; /* set while trying one of several acceptable scripts */

static void run_fail(struct run *r, int stepno, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void run_fail(struct run *r, int stepno, const char *fmt, ...)
{
	char msg[3000];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (r->failures < 8 && !quiet)
		print_message("[%s/%s] step %d: %s\n", r->sc->name, r->mode, stepno, msg);
	r->failures++;
}

static int strict_upstream(const struct proto_params *p)
{
	return p->upstream_tls == CFG_TLS_STARTTLS && p->policy_mode == CFG_MODE_ENFORCE &&
	       (p->upstream_policy == CFG_POLICY_ENCRYPT ||
		p->upstream_policy == CFG_POLICY_FINGERPRINT ||
		p->upstream_policy == CFG_POLICY_VERIFY);
}

/* Before tls_done(UPSTREAM) on a strict route, only the module's own commands go up. */
static int only_own_commands(const struct proto_params *p, const char *s, size_t n)
{
	char ehlo[300], lhlo[300];
	snprintf(ehlo, sizeof(ehlo), "EHLO %s\r\n", p->helo_name);
	snprintf(lhlo, sizeof(lhlo), "LHLO %s\r\n", p->helo_name);
	const char *own[] = { ehlo, lhlo, "STARTTLS\r\n", "QUIT\r\n" };
	size_t i = 0;
	while (i < n) {
		size_t k;
		for (k = 0; k < 4; k++) {
			size_t l = strlen(own[k]);
			if (n - i >= l && memcmp(s + i, own[k], l) == 0) {
				i += l;
				break;
			}
		}
		if (k == 4)
			return 0;
	}
	return 1;
}

static int ends_with(const struct sbuf *b, const char *suffix)
{
	size_t l = strlen(suffix);
	return b->n >= l && memcmp(b->p + b->n - l, suffix, l) == 0;
}

/* Takes the actions the last call produced. */
static void collect(struct run *r, int stepno)
{
	struct proto_actions *a = &r->a;
	for (size_t i = 0; i < a->n; i++) {
		const struct proto_act *x = &a->a[i];
		if (r->closed)
			run_fail(r, stepno, "action %d after PA_CLOSE", (int)x->type);
		switch (x->type) {
		case PA_SEND: {
			const char *d = (const char *)a->buf + x->off;
			if (r->tls_pending[x->side] &&
			    !(i + 1 < a->n && a->a[a->n - 1].type == PA_CLOSE))
				run_fail(r, stepno, "PA_SEND to %s during its TLS handshake: \"%s\"",
					 side_name(x->side), esc(d, x->len));
			sb_add(x->side == PROTO_CLIENT ? &r->all_client : &r->all_up, d, x->len);
			sb_add(x->side == PROTO_CLIENT ? &r->sc_client : &r->sc_up, d, x->len);
			if (x->side == PROTO_UPSTREAM && strict_upstream(r->sc->p) &&
			    !r->tls_done_called[PROTO_UPSTREAM] &&
			    !only_own_commands(r->sc->p, r->all_up.p, r->all_up.n))
				run_fail(r, stepno, "bytes other than the module's own went upstream "
					 "before TLS: \"%s\"", esc(r->all_up.p, r->all_up.n));
			break;
		}
		case PA_STARTTLS:
			if (r->tls_pending[x->side])
				run_fail(r, stepno, "PA_STARTTLS twice on %s", side_name(x->side));
			if (x->side == PROTO_CLIENT &&
			    !ends_with(&r->all_client, "220 2.0.0 Ready to start TLS\r\n"))
				run_fail(r, stepno, "PA_STARTTLS(client) not right after the 220");
			if (x->side == PROTO_UPSTREAM && !ends_with(&r->all_up, "STARTTLS\r\n"))
				run_fail(r, stepno, "PA_STARTTLS(up) not right after STARTTLS");
			r->tls_pending[x->side] = 1;
			sb_adds(&r->sc_acts, x->side == PROTO_CLIENT ? " tls:client" : " tls:up");
			break;
		case PA_READY:
			sb_adds(&r->sc_acts, " ready");
			break;
		case PA_CLOSE:
			r->closed = 1;
			sb_adds(&r->sc_acts, " close");
			break;
		case PA_CONNECT:
			sb_adds(&r->sc_acts, " connect");
			break;
		case PA_BIND:
		case PA_CHECK:
			sb_adds(&r->sc_acts, x->type == PA_BIND ? " bind:" : " check:");
			sb_add(&r->sc_acts, a->buf + x->off, x->len);
			break;
		case PA_MESSAGE: { /* well-formed; test_message_trace checks the contents */
			struct proto_message m;
			if (proto_message_get(a, x, &m) < 0 || m.code < 200 || m.code > 599 ||
			    strncmp(m.reply, "", 0) != 0 || (m.reply[0] && m.reply[0] != '0' + m.code / 100))
				run_fail(r, stepno, "malformed PA_MESSAGE (code %d, reply \"%s\")",
					 m.code, m.reply);
			break;
		}
		case PA_POLICY:
			/* Counted by the session; must name an RFC 8460 result. */
			if (!x->reason || strcmp(x->reason, "starttls-not-supported") != 0)
				run_fail(r, stepno, "PA_POLICY with result \"%s\"",
					 x->reason ? x->reason : "(null)");
			r->policy_reports++;
			break;
		}
	}
	proto_actions_clear(a);
}

static void check_step(struct run *r, int stepno, const struct step *s)
{
	if (s->to_client && !glob_match(s->to_client, r->sc_client.p, r->sc_client.n))
		run_fail(r, stepno, "to client:\n    got  \"%s\"\n    want \"%s\"",
			 esc(r->sc_client.p, r->sc_client.n), esc(s->to_client, strlen(s->to_client)));
	if (s->to_up && !glob_match(s->to_up, r->sc_up.p, r->sc_up.n))
		run_fail(r, stepno, "to upstream:\n    got  \"%s\"\n    want \"%s\"",
			 esc(r->sc_up.p, r->sc_up.n), esc(s->to_up, strlen(s->to_up)));
	const char *got = r->sc_acts.n ? r->sc_acts.p + 1 : "";
	if (s->acts && strcmp(got, s->acts) != 0)
		run_fail(r, stepno, "actions: got \"%s\", want \"%s\"", got, s->acts);
}

static void feed(struct run *r, int stepno, enum proto_side side, const char *d, size_t n,
		 int mode, size_t splitpos)
{
	if (mode == M_BYTES) {
		for (size_t i = 0; i < n; i++) {
			proto_smtp_ops.data(r->st, side, (const uint8_t *)d + i, 1, &r->a);
			collect(r, stepno);
		}
	} else if (mode == M_SPLIT && splitpos < n) {
		proto_smtp_ops.data(r->st, side, (const uint8_t *)d, splitpos, &r->a);
		collect(r, stepno);
		proto_smtp_ops.data(r->st, side, (const uint8_t *)d + splitpos, n - splitpos, &r->a);
		collect(r, stepno);
	} else {
		proto_smtp_ops.data(r->st, side, (const uint8_t *)d, n, &r->a);
		collect(r, stepno);
	}
}

/* Runs a script once; returns the number of failures. */
static int run_script_mode(const struct script *sc, int mode, size_t splitpos)
{
	struct run r;
	char modename[40];
	memset(&r, 0, sizeof(r));
	r.sc = sc;
	if (mode == M_SPLIT)
		snprintf(modename, sizeof(modename), "split@%zu", splitpos);
	else
		snprintf(modename, sizeof(modename), "%s", mode == M_BYTES ? "bytes" : "whole");
	r.mode = modename;
	r.st = proto_smtp_ops.create(sc->p);
	assert_non_null(r.st);
	for (int i = 0; sc->steps[i].op != OP_END; i++) {
		const struct step *s = &sc->steps[i];
		size_t n = s->in ? (s->inlen ? s->inlen : strlen(s->in)) : 0;
		sb_reset(&r.sc_client);
		sb_reset(&r.sc_up);
		sb_reset(&r.sc_acts);
		switch (s->op) {
		case OP_CONN:
			proto_smtp_ops.upstream_connected(r.st, &r.a);
			collect(&r, i);
			break;
		case OP_CL:
			feed(&r, i, PROTO_CLIENT, s->in, n, mode, splitpos);
			break;
		case OP_UP:
			feed(&r, i, PROTO_UPSTREAM, s->in, n, mode, splitpos);
			break;
		case OP_TLSC:
		case OP_TLSU: {
			int side = s->op == OP_TLSC ? PROTO_CLIENT : PROTO_UPSTREAM;
			if (!r.tls_pending[side])
				run_fail(&r, i, "tls_done(%s) without PA_STARTTLS", side_name(side));
			r.tls_pending[side] = 0;
			r.tls_done_called[side] = 1;
			proto_smtp_ops.tls_done(r.st, (enum proto_side)side, &r.a);
			collect(&r, i);
			break;
		}
		case OP_EOF:
			proto_smtp_ops.client_eof(r.st, &r.a);
			collect(&r, i);
			break;
		case OP_FAIL:
			(proto_smtp_ops.fail)(r.st, (enum proto_failure)s->why, s->in, &r.a);
			collect(&r, i);
			break;
		case OP_RETRY:
			proto_smtp_ops.upstream_retry_plain(r.st);
			r.tls_pending[PROTO_UPSTREAM] = 0;
			break;
		case OP_RETRY_TLS:
			proto_smtp_ops.upstream_retry(r.st);
			r.tls_pending[PROTO_UPSTREAM] = 0;
			break;
		case OP_LATE:
			proto_smtp_ops.late_start(r.st, &r.a);
			collect(&r, i);
			break;
		case OP_BINDFAIL:
			proto_smtp_ops.bind_failed(r.st, s->in, &r.a);
			collect(&r, i);
			break;
		case OP_VERDICT:
			proto_smtp_ops.rcpt_verdict(r.st, s->why, s->in, &r.a);
			collect(&r, i);
			break;
		case OP_END:
			break;
		}
		check_step(&r, i, s);
	}
	/* Every enforced "does not offer STARTTLS" refusal was reported for the counters. */
	if (r.all_client.n && memmem(r.all_client.p, r.all_client.n, "does not offer STARTTLS", 23) &&
	    r.policy_reports == 0)
		run_fail(&r, 0, "STARTTLS refusal without PA_POLICY");
	proto_smtp_ops.destroy(r.st);
	proto_actions_free(&r.a);
	sb_free(&r.all_client);
	sb_free(&r.all_up);
	sb_free(&r.sc_client);
	sb_free(&r.sc_up);
	sb_free(&r.sc_acts);
	return r.failures;
}

static int run_script(const struct script *sc)
{
	int modes = sc->modes ? sc->modes : M_ALL;
	int failures = 0;
	if (modes & M_WHOLE)
		failures += run_script_mode(sc, M_WHOLE, 0);
	if (failures)
		return failures; /* the other modes would repeat the same story */
	if (modes & M_BYTES)
		failures += run_script_mode(sc, M_BYTES, 0);
	if (modes & M_SPLIT) {
		size_t maxlen = 0;
		for (int i = 0; sc->steps[i].op != OP_END; i++)
			if (sc->steps[i].in && (sc->steps[i].op == OP_CL || sc->steps[i].op == OP_UP)) {
				size_t n = sc->steps[i].inlen ? sc->steps[i].inlen
							      : strlen(sc->steps[i].in);
				if (n > maxlen)
					maxlen = n;
			}
		for (size_t k = 1; k < maxlen && failures < 4; k++)
			failures += run_script_mode(sc, M_SPLIT, k);
	}
	return failures;
}

static int run_scripts(const struct script *scs, size_t n)
{
	int failures = 0;
	for (size_t i = 0; i < n; i++)
		failures += run_script(&scs[i]) ? 1 : 0;
	return failures;
}

#define RUN_TABLE(tab)                                                                    \
	do {                                                                              \
		int nfail = run_scripts(tab, sizeof(tab) / sizeof(tab[0]));              \
		if (nfail)                                                                \
			print_message("%d of %zu scripts failed\n", nfail,                 \
				      sizeof(tab) / sizeof(tab[0]));                        \
		assert_int_equal(nfail, 0);                                               \
	} while (0)

/* ------------------------------------------------------------------ parameters */

#define PARAMS(...) PARAMS_(__VA_ARGS__)
#define PARAMS_(proto, ctls, cpol, utls, upol, mode, xcl, ip, port)                          \
	{ .session_id = "0123456789abcdef", .route = "unit", .protocol = (proto),            \
	  .client_tls = (ctls), .client_policy = (cpol), .upstream_tls = (utls),             \
	  .upstream_policy = (upol), .policy_mode = (mode), .helo_name = "proxy.test",       \
	  .xclient = (xcl), .client_ip = (ip), .client_port = (port) }
#define SMTP CFG_PROTO_SMTP
#define LMTP CFG_PROTO_LMTP
#define T_NONE CFG_TLS_NONE
#define T_STLS CFG_TLS_STARTTLS
#define T_IMPL CFG_TLS_IMPLICIT
#define ENF CFG_MODE_ENFORCE
#define TST CFG_MODE_TESTING
#define IP4 "192.0.2.7", 40000

/* plain relay (both sides plaintext): command and data handling */
static const struct proto_params P_PLAIN =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF, 0, IP4);
static const struct proto_params P_PLAIN_LMTP =
	PARAMS(LMTP, T_NONE, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF, 0, IP4);
/* inject: plaintext client, STARTTLS toward the upstream */
static const struct proto_params P_INJ_ENCRYPT =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_ENCRYPT, ENF, 0, IP4);
static const struct proto_params P_INJ_VERIFY =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY, ENF, 0, IP4);
static const struct proto_params P_INJ_FPR =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_FINGERPRINT, ENF, 0, IP4);
static const struct proto_params P_INJ_MAY =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_MAY, ENF, 0, IP4);
static const struct proto_params P_INJ_TESTING =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY, TST, 0, IP4);
static const struct proto_params P_INJ_LMTP =
	PARAMS(LMTP, T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY, ENF, 0, IP4);
/* terminate: STARTTLS toward the client, plaintext upstream */
static const struct proto_params P_TERM_ENCRYPT =
	PARAMS(SMTP, T_STLS, CFG_POLICY_ENCRYPT, T_NONE, CFG_POLICY_NONE, ENF, 0, IP4);
static const struct proto_params P_TERM_MAY =
	PARAMS(SMTP, T_STLS, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF, 0, IP4);
/* bridge: STARTTLS on both sides; implicit TLS toward the client */
static const struct proto_params P_BRIDGE =
	PARAMS(SMTP, T_STLS, CFG_POLICY_ENCRYPT, T_STLS, CFG_POLICY_VERIFY, ENF, 0, IP4);
static const struct proto_params P_IMPLICIT_INJ =
	PARAMS(SMTP, T_IMPL, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY, ENF, 0, IP4);
/* xclient */
static const struct proto_params P_XCLIENT =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF, 1, IP4);
/* a name looked up and confirmed by the session ('+' is xtext-encoded), or still pending */
#define XCLIENT_NAMED(n)                                                                    \
	{ .session_id = "0123456789abcdef", .route = "unit", .protocol = SMTP,               \
	  .client_tls = T_NONE, .client_policy = CFG_POLICY_MAY, .upstream_tls = T_NONE,     \
	  .upstream_policy = CFG_POLICY_NONE, .policy_mode = ENF, .helo_name = "proxy.test", \
	  .xclient = 1, .client_ip = "192.0.2.7", .client_port = 40000, .client_name = (n) }
static const struct proto_params P_XCLIENT_NAMED = XCLIENT_NAMED("mail+1.client.example");
static const struct proto_params P_XCLIENT_PENDING = XCLIENT_NAMED("");
static const struct proto_params P_XCLIENT6 =
	PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF, 1, "2001:db8::7", 2525);

/* late binding (upstream_policy = mta-sts): the session hands the module the level of each
 * candidate (verify for an MTA-STS MX, may without a policy) before it connects */
#define LATE_PARAMS(ctls, cpol, upol)                                                       \
	{ .session_id = "0123456789abcdef", .route = "unit", .protocol = SMTP,               \
	  .client_tls = (ctls), .client_policy = (cpol), .upstream_tls = T_STLS,             \
	  .upstream_policy = (upol), .policy_mode = ENF, .helo_name = "proxy.test",          \
	  .client_ip = "192.0.2.7", .client_port = 40000, .late = 1 }
static const struct proto_params P_LATE = LATE_PARAMS(T_NONE, CFG_POLICY_MAY, CFG_POLICY_VERIFY);
static const struct proto_params P_LATE_MAY = LATE_PARAMS(T_NONE, CFG_POLICY_MAY, CFG_POLICY_MAY);
static const struct proto_params P_LATE_TERM =
	LATE_PARAMS(T_STLS, CFG_POLICY_ENCRYPT, CFG_POLICY_VERIFY);

/* greeting = local: the module greets (late_start) and asks for the upstream (PA_CONNECT)
 * at the client's first complete command line */
#define DEFER_PARAMS(proto, ctls, cpol, utls, upol)                                         \
	{ .session_id = "0123456789abcdef", .route = "unit", .protocol = (proto),            \
	  .client_tls = (ctls), .client_policy = (cpol), .upstream_tls = (utls),             \
	  .upstream_policy = (upol), .policy_mode = ENF, .helo_name = "proxy.test",          \
	  .client_ip = "192.0.2.7", .client_port = 40000, .defer = 1 }
static const struct proto_params P_DEFER =
	DEFER_PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE);
static const struct proto_params P_DEFER_LMTP =
	DEFER_PARAMS(LMTP, T_NONE, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE);
static const struct proto_params P_DEFER_INJ =
	DEFER_PARAMS(SMTP, T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY);
static const struct proto_params P_DEFER_TERM =
	DEFER_PARAMS(SMTP, T_STLS, CFG_POLICY_ENCRYPT, T_NONE, CFG_POLICY_NONE);

/* ------------------------------------------------------------------ texts */

#define GREET "220 mx.test ESMTP ready\r\n"
#define GREET2 "220-mx.test ESMTP\r\n220-second line\r\n220 last line\r\n"
#define CAPS_TLS "250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
#define CAPS_POST "250-mx.test\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
#define C421_TLS "421 4.7.0 *\r\n"
#define C530 "530 5.7.0 Must issue a STARTTLS command first\r\n"
#define C220TLS "220 2.0.0 Ready to start TLS\r\n"
#define UP_ERR_PRE "421 4.4.1 *\r\n"
#define UP_ERR_MID "421 4.4.2 *\r\n"

/* A plain session up to EHLO, with an upstream that offers CHUNKING (and SIZE). */
#define CHUNKING_OPEN                                                                 \
	CONN("", "", ""), UP(GREET, GREET, "", "ready"),                              \
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),                   \
	UP("250-mx.test\r\n250-CHUNKING\r\n250 SIZE 1000\r\n",                         \
	   "250-mx.test\r\n250-CHUNKING\r\n250 SIZE 1000\r\n", "", "")
#define LMTP_CHUNKING_OPEN                                                            \
	CONN("", "", ""), UP(GREET, GREET, "", "ready"),                              \
	CL("LHLO client.test\r\n", "", "LHLO client.test\r\n", ""),                   \
	UP("250-mx.test\r\n250 CHUNKING\r\n", "250-mx.test\r\n250 CHUNKING\r\n", "", "")

/* A plain session up to the point where the client has been greeted and said EHLO. */
#define PLAIN_OPEN                                                                    \
	CONN("", "", ""), UP(GREET, GREET, "", "ready"),                              \
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),                   \
	UP("250-mx.test\r\n250 PIPELINING\r\n", "250-mx.test\r\n250 PIPELINING\r\n", "", "")

/* ------------------------------------------------------------------ keyword table */

struct kw_case {
	const char *line;
	size_t len; /* 0: strlen */
	const char *kw;
	int want;
};

static void test_line_has_keyword(void **state)
{
	(void)state;
	static const struct kw_case cases[] = {
		{ "250-STARTTLS\r\n", 0, "STARTTLS", 1 },
		{ "250 STARTTLS\r\n", 0, "STARTTLS", 1 },
		{ "250-starttls\r\n", 0, "STARTTLS", 1 },
		{ "250-StartTls", 0, "STARTTLS", 1 },
		{ "250-STARTTLS\n", 0, "STARTTLS", 1 },
		{ "250-STARTTLS with words\r\n", 0, "STARTTLS", 1 },
		{ "250-STARTTLSX\r\n", 0, "STARTTLS", 0 },
		{ "250-X-STARTTLS\r\n", 0, "STARTTLS", 0 },
		{ "250-XSTARTTLS\r\n", 0, "STARTTLS", 0 },
		{ "250-STARTTLS=1\r\n", 0, "STARTTLS", 0 },
		{ "250-STARTTL\r\n", 0, "STARTTLS", 0 },
		{ "250-\r\n", 0, "STARTTLS", 0 },
		{ "250", 0, "STARTTLS", 0 },
		{ "", 0, "STARTTLS", 0 },
		{ "250-SIZE 10240000\r\n", 0, "STARTTLS", 0 },
		{ "250-AUTH PLAIN LOGIN\r\n", 0, "AUTH", 1 },
		{ "250-AUTH=PLAIN LOGIN\r\n", 0, "AUTH", 1 },
		{ "250-auth=login\r\n", 0, "AUTH", 1 },
		{ "250 AUTH\r\n", 0, "AUTH", 1 },
		{ "250-AUTHX\r\n", 0, "AUTH", 0 },
		{ "250-X-AUTH\r\n", 0, "AUTH", 0 },
		{ "250-XCLIENT NAME ADDR PORT\r\n", 0, "XCLIENT", 1 },
		{ "250-XFORWARD NAME ADDR\r\n", 0, "XFORWARD", 1 },
		{ "250-XCLIENTS\r\n", 0, "XCLIENT", 0 },
		/* len is honoured: the bytes after it do not exist */
		{ "250-STARTTLSX", 12, "STARTTLS", 1 },
		{ "250-STARTTLS\r\n", 11, "STARTTLS", 0 },
		{ "250-AUTH=x", 8, "AUTH", 1 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct kw_case *c = &cases[i];
		size_t len = c->len ? c->len : strlen(c->line);
		/* a private copy, so that ASan catches reads past len */
		char *copy = malloc(len ? len : 1);
		memcpy(copy, c->line, len);
		int got = smtp_line_has_keyword(copy, len, c->kw);
		free(copy);
		if (got != c->want) {
			print_message("smtp_line_has_keyword(\"%s\", %zu, %s) = %d, want %d\n",
				      esc(c->line, len), len, c->kw, got, c->want);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ EHLO rewrite table */

struct ehlo_case {
	const char *in;
	int add, hide;
	const char *want; /* NULL: -1 expected */
	long cap;         /* >0: this capacity; 0: large; CAP_EXACT / CAP_SHORT: the length of
			   * the correct output, or one less */
};

#define CAP_EXACT (-1)
#define CAP_SHORT (-2)

static void test_rewrite_ehlo(void **state)
{
	(void)state;
	static const struct ehlo_case cases[] = {
		/* STARTTLS dropped, marks kept */
		{ CAPS_TLS, 0, 0, "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n", 0 },
		/* the last line dropped: the new last line gets the final mark */
		{ "250-mx.test\r\n250-SIZE 100\r\n250 STARTTLS\r\n", 0, 0,
		  "250-mx.test\r\n250 SIZE 100\r\n", 0 },
		{ "250-mx.test\r\n250 STARTTLS\r\n", 0, 0, "250 mx.test\r\n", 0 },
		/* add_starttls: exactly one STARTTLS, last */
		{ "250-mx.test\r\n250 SIZE\r\n", 1, 0, "250-mx.test\r\n250-SIZE\r\n250 STARTTLS\r\n", 0 },
		{ "250-mx.test\r\n250-STARTTLS\r\n250 SIZE\r\n", 1, 0,
		  "250-mx.test\r\n250-SIZE\r\n250 STARTTLS\r\n", 0 },
		{ "250 mx.test\r\n", 1, 0, "250-mx.test\r\n250 STARTTLS\r\n", 0 },
		{ "250 mx.test\r\n", 0, 0, "250 mx.test\r\n", 0 },
		/* the first line is the domain: never dropped, even when it reads STARTTLS */
		{ "250-STARTTLS\r\n250 SIZE\r\n", 0, 0, "250-STARTTLS\r\n250 SIZE\r\n", 0 },
		{ "250 STARTTLS\r\n", 0, 0, "250 STARTTLS\r\n", 0 },
		{ "250 STARTTLS\r\n", 1, 0, "250-STARTTLS\r\n250 STARTTLS\r\n", 0 },
		{ "250 AUTH\r\n", 0, 1, "250 AUTH\r\n", 0 },
		{ "250-XCLIENT\r\n250 SIZE\r\n", 0, 0, "250-XCLIENT\r\n250 SIZE\r\n", 0 },
		/* whole keywords only; case-insensitive */
		{ "250-mx.test\r\n250-STARTTLSX\r\n250 X-STARTTLS\r\n", 0, 0,
		  "250-mx.test\r\n250-STARTTLSX\r\n250 X-STARTTLS\r\n", 0 },
		{ "250-mx.test\r\n250-starttls\r\n250 size\r\n", 0, 0, "250-mx.test\r\n250 size\r\n", 0 },
		{ "250-mx.test\r\n250-StartTLS\r\n250 SIZE\r\n", 1, 0,
		  "250-mx.test\r\n250-SIZE\r\n250 STARTTLS\r\n", 0 },
		/* hide_auth: AUTH and AUTH= lines only */
		{ "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250-AUTHX\r\n250 SIZE\r\n", 0,
		  1, "250-mx.test\r\n250-AUTHX\r\n250 SIZE\r\n", 0 },
		{ "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE\r\n", 0, 0,
		  "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE\r\n", 0 },
		{ "250-mx.test\r\n250-auth plain\r\n250 STARTTLS\r\n", 1, 1,
		  "250-mx.test\r\n250 STARTTLS\r\n", 0 },
		{ "250-mx.test\r\n250 AUTH PLAIN\r\n", 0, 1, "250 mx.test\r\n", 0 },
		/* XCLIENT and XFORWARD are the proxy's business, never the client's */
		{ "250-mx.test\r\n250-XCLIENT NAME ADDR\r\n250-XFORWARD NAME\r\n250 8BITMIME\r\n", 0, 0,
		  "250-mx.test\r\n250 8BITMIME\r\n", 0 },
		/* LF-only input gives CRLF output */
		{ "250-mx.test\n250-STARTTLS\n250 SIZE\n", 0, 0, "250-mx.test\r\n250 SIZE\r\n", 0 },
		{ "250-mx.test\n250 SIZE\n", 1, 0, "250-mx.test\r\n250-SIZE\r\n250 STARTTLS\r\n", 0 },
		{ "250 mx.test", 0, 0, "250 mx.test\r\n", 0 },
		/* everything else passes unchanged */
		{ "250-mx.test greets client.test\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n"
		  "250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 PIPELINING\r\n",
		  0, 0,
		  "250-mx.test greets client.test\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n"
		  "250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 PIPELINING\r\n",
		  0 },
		/* capacity: exact fits, one short fails */
		{ CAPS_TLS, 0, 0, "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n", CAP_EXACT },
		{ "250 mx.test\r\n", 1, 0, "250-mx.test\r\n250 STARTTLS\r\n", CAP_EXACT },
		{ CAPS_TLS, 0, 0, NULL, CAP_SHORT },
		{ "250 mx.test\r\n", 1, 0, NULL, CAP_SHORT },
		{ "250 mx.test\r\n", 1, 0, NULL, 1 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct ehlo_case *c = &cases[i];
		size_t cap = 4096;
		if (c->cap > 0) {
			cap = (size_t)c->cap;
		} else if (c->cap < 0) {
			/* the length of the correct output (computed with room to spare) */
			char tmp[4096];
			long n = smtp_rewrite_ehlo(c->in, strlen(c->in), c->add, (unsigned)c->hide, tmp,
						   sizeof(tmp));
			assert_true(n > 0);
			cap = (size_t)n - (c->cap == CAP_SHORT ? 1 : 0);
		}
		char *out = malloc(cap + 1);
		memset(out, 0x5a, cap + 1);
		long n = smtp_rewrite_ehlo(c->in, strlen(c->in), c->add, (unsigned)c->hide, out, cap);
		int ok;
		if (!c->want)
			ok = n == -ENOBUFS;
		else
			ok = n == (long)strlen(c->want) && memcmp(out, c->want, (size_t)n) == 0;
		if (out[cap] != 0x5a) {
			print_message("case %zu: wrote past cap %zu\n", i, cap);
			ok = 0;
		}
		if (!ok) {
			print_message("case %zu: smtp_rewrite_ehlo(\"%s\", add=%d, hide=%d, cap=%zu)\n"
				      "    got  %ld \"%s\"\n    want \"%s\"\n",
				      i, esc(c->in, strlen(c->in)), c->add, c->hide, cap, n,
				      n > 0 ? esc(out, (size_t)n) : "", c->want ? esc(c->want, strlen(c->want)) : "-1");
			failures++;
		}
		free(out);
	}
	assert_int_equal(failures, 0);
}

/* As many lines as the reply parser allows: the rewrite must still work (one more line,
 * STARTTLS, is added on top of SMTP_REPLY_LINES_MAX). */
static void test_rewrite_ehlo_many_lines(void **state)
{
	(void)state;
	struct sbuf in = { 0 }, want = { 0 };
	for (int i = 0; i < SMTP_REPLY_LINES_MAX; i++) {
		char l[64];
		snprintf(l, sizeof(l), "250%cX-EXT%d\r\n", i + 1 < SMTP_REPLY_LINES_MAX ? '-' : ' ', i);
		sb_adds(&in, l);
		snprintf(l, sizeof(l), "250-X-EXT%d\r\n", i);
		sb_adds(&want, l);
	}
	sb_adds(&want, "250 STARTTLS\r\n");
	size_t cap = in.n + 64;
	char *out = malloc(cap);
	long n = smtp_rewrite_ehlo(in.p, in.n, 1, 0, out, cap);
	assert_int_equal(n, (long)want.n);
	assert_memory_equal(out, want.p, want.n);
	free(out);
	sb_free(&in);
	sb_free(&want);
}

/* ------------------------------------------------------------------ inject */

static const struct step s_inject_basic[] = {
	CONN("", "", ""),
	/* the client talks first: nothing of it moves before TLS */
	CL("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n", "", "", ""),
	UP(GREET2, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	/* response injection: what follows the 220 in the same read is dropped */
	UP("220 2.0.0 Go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n", "", "", "tls:up"),
	UP("250 injected later\r\n", "", "", ""),
	CL("RCPT TO:<b@mx.test>\r\n", "", "", ""),
	TLSU(GREET2, "EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n",
	     "ready"),
	/* post-TLS capabilities: STARTTLS removed (the client has no TLS), the rest kept */
	UP("250-mx.test\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 SIZE 1000\r\n",
	   "250-mx.test\r\n250-AUTH PLAIN\r\n250 SIZE 1000\r\n", "", ""),
	UP("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("221 2.0.0 Bye\r\n", "221 2.0.0 Bye\r\n", "", "close"),
	END
};

static const struct step s_inject_lmtp[] = {
	CONN("", "", ""),
	UP(GREET, "", "LHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250-starttls\r\n250 PIPELINING\r\n", "", "STARTTLS\r\n", ""),
	UP("220 Ready\r\n", "", "", "tls:up"),
	TLSU(GREET, "", "ready"),
	CL("LHLO client.test\r\n", "", "LHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250 PIPELINING\r\n", "250-mx.test\r\n250 PIPELINING\r\n", "", ""),
	END
};

/* Bare-LF replies from the upstream: the client sees CRLF. */
static const struct step s_inject_lf[] = {
	CONN("", "", ""),
	UP("220-mx.test\n220 hi\n", "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\n250 STARTTLS\n", "", "STARTTLS\r\n", ""),
	UP("220 go\n", "", "", "tls:up"),
	TLSU("220-mx.test\r\n220 hi\r\n", "", "ready"),
	END
};

/* The first line's text and look-alikes are not offers. */
#define NOT_OFFERED(name, caps)                                                         \
	static const struct step name[] = {                                             \
		CONN("", "", ""),                                                       \
		CL("EHLO client.test\r\n", "", "", ""),                                 \
		UP(GREET, "", "EHLO proxy.test\r\n", ""),                               \
		UP(caps, C421_TLS, "QUIT\r\n", "close"),                                \
		UP("221 bye\r\n", "", "", ""),                                          \
		CL("MAIL FROM:<a@b>\r\n", "", "", ""),                                  \
		END                                                                     \
	}
NOT_OFFERED(s_noffer_plain, "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n");
NOT_OFFERED(s_noffer_domain, "250-STARTTLS\r\n250 SIZE 100\r\n");
NOT_OFFERED(s_noffer_single, "250 STARTTLS\r\n");
NOT_OFFERED(s_noffer_lookalike, "250-mx.test\r\n250-STARTTLSX\r\n250-X-STARTTLS\r\n250 XSTARTTLS\r\n");
NOT_OFFERED(s_noffer_454, "454 4.7.0 TLS not available due to temporary reason\r\n");
NOT_OFFERED(s_noffer_5xx_ehlo, "502 5.5.1 EHLO not implemented\r\n");

/* STARTTLS offered but refused. */
#define REFUSED(name, refusal)                                                          \
	static const struct step name[] = {                                             \
		CONN("", "", ""),                                                       \
		CL("EHLO client.test\r\nMAIL FROM:<a@b>\r\n", "", "", ""),              \
		UP(GREET, "", "EHLO proxy.test\r\n", ""),                               \
		UP(CAPS_TLS, "", "STARTTLS\r\n", ""),                                   \
		UP(refusal, C421_TLS, "QUIT\r\n", "close"),                             \
		END                                                                     \
	}
REFUSED(s_refused_454, "454 4.7.0 TLS not available\r\n");
REFUSED(s_refused_554, "554 5.7.0 no\r\n");
REFUSED(s_refused_250, "250 what\r\n");

/* Under may (or testing): continue in plaintext, the client sees the greeting. */
#define CONTINUES(name, caps)                                                           \
	static const struct step name[] = {                                             \
		CONN("", "", ""),                                                       \
		CL("EHLO client.test\r\n", "", "", ""),                                 \
		UP(GREET, "", "EHLO proxy.test\r\n", ""),                               \
		UP(caps, GREET, "EHLO client.test\r\n", "ready"),                       \
		UP("250-mx.test\r\n250 SIZE\r\n", "250-mx.test\r\n250 SIZE\r\n", "", ""), \
		END                                                                     \
	}
CONTINUES(s_may_noffer, "250-mx.test\r\n250 SIZE\r\n");
CONTINUES(s_may_5xx, "500 5.5.1 what\r\n");

static const struct step s_may_refused[] = {
	CONN("", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("454 4.7.0 not now\r\n", GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	END
};

/* A failed handshake under may: the session reconnects in plaintext. */
static const struct step s_may_retry_plain[] = {
	CONN("", "", ""),
	CL("EHLO client.test\r\n", "", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	RETRY(),
	CONN("", "", ""),
	UP("220 second.test ESMTP\r\n", "220 second.test ESMTP\r\n", "EHLO client.test\r\n",
	   "ready"),
	UP("250-second.test\r\n250 STARTTLS\r\n", "250 second.test\r\n", "", ""),
	END
};

/* A handshake that offered a cached session failed: the session reconnects for a full one
 * and the module does it all again (STARTTLS included); nothing of the first connection
 * reaches the client. */
static const struct step s_retry_full_handshake[] = {
	CONN("", "", ""),
	CL("EHLO client.test\r\n", "", "", ""),
	UP(GREET2, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	RETRY_TLS(),
	CONN("", "", ""),
	UP("220 second.test ESMTP\r\n", "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	TLSU("220 second.test ESMTP\r\n", "EHLO client.test\r\n", "ready"),
	UP("250-second.test\r\n250 SIZE 1000\r\n", "250-second.test\r\n250 SIZE 1000\r\n", "", ""),
	END
};

/* Failures around the STARTTLS phase. */
static const struct step s_inj_unreachable[] = {
	CL("EHLO client.test\r\n", "", "", ""),
	FAIL(PF_UNREACHABLE, "connection refused",
	     "421 4.4.1 proxy.test Upstream server unreachable, try again later\r\n", "", "close"),
	CL("MAIL FROM:<a@b>\r\n", "", "", ""),
	END
};

static const struct step s_inj_policy_fail[] = {
	CONN("", "", ""),
	CL("EHLO client.test\r\n", "", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	FAIL(PF_TLS_POLICY, "certificate-host-mismatch", "421 4.7.0 *certificate-host-mismatch*\r\n",
	     "", "close"),
	END
};

static const struct step s_inj_lost_before_greeting[] = {
	CONN("", "", ""),
	UP("220-mx.test\r\n", "", "", ""),
	FAIL(PF_LOST, "closed", UP_ERR_PRE, "", "close"),
	END
};

/* A refusal before STARTTLS is unauthenticated: the client gets a temporary 421, never
 * the (possibly forged) permanent 554. */
static const struct step s_inj_greeting_refused[] = {
	CONN("", "", ""),
	CL("EHLO client.test\r\n", "", "", ""),
	UP("554 5.3.2 go away\r\n",
	   "421 4.4.1 proxy.test Upstream server refused service (554); try again later\r\n", "",
	   "close"),
	END
};

static const struct step s_inj_malformed[] = {
	CONN("", "", ""),
	UP("hello there\r\n", UP_ERR_PRE, "", "close"),
	END
};

static const struct step s_inj_code_change[] = {
	CONN("", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n251 STARTTLS\r\n", UP_ERR_PRE, "", "close"),
	END
};

static const struct step s_inj_1xx[] = {
	CONN("", "", ""),
	UP("120 wait\r\n", UP_ERR_PRE, "", "close"),
	END
};

/* client EOF before the upstream is ready: the session just ends */
static const struct step s_inj_client_eof[] = {
	CONN("", "", ""),
	CL("QUIT\r\n", "", "", ""),
	CEOF("", "", "close"),
	UP(GREET, "", "", ""),
	END
};

/* bridge: STARTTLS on both sides. The client sees STARTTLS added before its TLS. */
static const struct step s_bridge[] = {
	CONN("", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	TLSU(GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	/* AUTH hidden (client_policy = encrypt), STARTTLS offered to the client */
	UP(CAPS_POST, "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n", "", ""),
	END
};

/* implicit TLS toward the client: no STARTTLS offered, a STARTTLS command is refused */
static const struct step s_implicit_inj[] = {
	CONN("", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	TLSU(GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	UP(CAPS_POST, CAPS_POST, "", ""),
	CL("STARTTLS\r\n", "5?? *\r\n", "", ""),
	END
};

/* REQUIRETLS (RFC 8689) is never offered to a plaintext client. */
static const struct step s_requiretls_inject[] = {
	CONN("", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	TLSU(GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250-REQUIRETLS\r\n250-requiretls\r\n250 SIZE 100\r\n",
	   "250-mx.test\r\n250 SIZE 100\r\n", "", ""),
	END
};

/* A "220" glued to the EHLO reply, written before the proxy's STARTTLS could have been
 * read: a protocol error, never the answer to STARTTLS (no TLS starts). Only detectable
 * when it arrives with the EHLO reply, hence M_WHOLE. */
static const struct step s_early_reply[] = {
	CONN("", "", ""),
	CL("EHLO client.test\r\n", "", "", ""),
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 STARTTLS\r\n220 2.0.0 go\r\n", UP_ERR_PRE, "STARTTLS\r\n",
	   "close"),
	END
};
/* Control: replies that arrive after their commands were sent are taken as usual. */
static const struct step s_early_reply_relay[] = {
	PLAIN_OPEN,
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
	CL("MAIL FROM:<a@b>\r\n", "", "MAIL FROM:<a@b>\r\n", ""),
	UP("250 2.1.0 Ok\r\n", "250 2.1.0 Ok\r\n", "", ""),
	END
};

static const struct script inject_scripts[] = {
	{ "requiretls_inject", &P_INJ_VERIFY, s_requiretls_inject, 0 },
	{ "early_reply_starttls", &P_INJ_VERIFY, s_early_reply, M_WHOLE },
	{ "early_reply_relay", &P_PLAIN, s_early_reply_relay, 0 },
	{ "inject_basic", &P_INJ_ENCRYPT, s_inject_basic, 0 },
	{ "inject_basic_verify", &P_INJ_VERIFY, s_inject_basic, 0 },
	{ "inject_basic_fingerprint", &P_INJ_FPR, s_inject_basic, 0 },
	{ "inject_basic_may", &P_INJ_MAY, s_inject_basic, 0 },
	{ "inject_lmtp", &P_INJ_LMTP, s_inject_lmtp, 0 },
	{ "inject_lf", &P_INJ_VERIFY, s_inject_lf, 0 },
	{ "not_offered", &P_INJ_ENCRYPT, s_noffer_plain, 0 },
	{ "not_offered_verify", &P_INJ_VERIFY, s_noffer_plain, 0 },
	{ "not_offered_fingerprint", &P_INJ_FPR, s_noffer_plain, 0 },
	{ "not_offered_domain", &P_INJ_VERIFY, s_noffer_domain, 0 },
	{ "not_offered_single_line", &P_INJ_VERIFY, s_noffer_single, 0 },
	{ "not_offered_lookalike", &P_INJ_VERIFY, s_noffer_lookalike, 0 },
	{ "ehlo_454", &P_INJ_ENCRYPT, s_noffer_454, 0 },
	{ "ehlo_5xx", &P_INJ_ENCRYPT, s_noffer_5xx_ehlo, 0 },
	{ "starttls_454", &P_INJ_ENCRYPT, s_refused_454, 0 },
	{ "starttls_554", &P_INJ_VERIFY, s_refused_554, 0 },
	{ "starttls_250", &P_INJ_VERIFY, s_refused_250, 0 },
	{ "may_not_offered", &P_INJ_MAY, s_may_noffer, 0 },
	{ "may_ehlo_5xx", &P_INJ_MAY, s_may_5xx, 0 },
	{ "may_refused", &P_INJ_MAY, s_may_refused, 0 },
	{ "testing_not_offered", &P_INJ_TESTING, s_may_noffer, 0 },
	{ "testing_ehlo_5xx", &P_INJ_TESTING, s_may_5xx, 0 },
	{ "testing_refused", &P_INJ_TESTING, s_may_refused, 0 },
	{ "may_retry_plain", &P_INJ_MAY, s_may_retry_plain, 0 },
	{ "verify_retry_full_handshake", &P_INJ_VERIFY, s_retry_full_handshake, 0 },
	{ "encrypt_retry_full_handshake", &P_INJ_ENCRYPT, s_retry_full_handshake, 0 },
	{ "testing_retry_plain", &P_INJ_TESTING, s_may_retry_plain, 0 },
	{ "unreachable", &P_INJ_ENCRYPT, s_inj_unreachable, 0 },
	{ "unreachable_plain", &P_PLAIN, s_inj_unreachable, 0 },
	{ "tls_policy_failure", &P_INJ_VERIFY, s_inj_policy_fail, 0 },
	{ "lost_before_greeting", &P_INJ_VERIFY, s_inj_lost_before_greeting, 0 },
	{ "greeting_refused", &P_INJ_VERIFY, s_inj_greeting_refused, 0 },
	{ "malformed_reply", &P_INJ_VERIFY, s_inj_malformed, 0 },
	{ "reply_code_change", &P_INJ_VERIFY, s_inj_code_change, 0 },
	{ "reply_1xx", &P_INJ_VERIFY, s_inj_1xx, 0 },
	{ "client_eof_early", &P_INJ_VERIFY, s_inj_client_eof, 0 },
	{ "bridge", &P_BRIDGE, s_bridge, 0 },
	{ "implicit_client_inject", &P_IMPLICIT_INJ, s_implicit_inj, 0 },
};

static void test_inject(void **state)
{
	(void)state;
	RUN_TABLE(inject_scripts);
}

/* Oversized replies: one line too long, too many lines, too many bytes. */
static void test_inject_oversized(void **state)
{
	(void)state;
	struct sbuf longline = { 0 }, manylines = { 0 }, nonl = { 0 };
	sb_adds(&longline, "250-mx.test\r\n250-");
	for (int i = 0; i < SMTP_REPLY_LINE_MAX; i++)
		sb_adds(&longline, "x");
	sb_adds(&longline, "\r\n250 STARTTLS\r\n");
	sb_adds(&manylines, "250-mx.test\r\n");
	for (int i = 0; i < SMTP_REPLY_LINES_MAX; i++)
		sb_adds(&manylines, "250-X\r\n");
	sb_adds(&manylines, "250 STARTTLS\r\n");
	sb_adds(&nonl, "220 ");
	for (int i = 0; i < SMTP_REPLY_LINE_MAX + 10; i++)
		sb_adds(&nonl, "y");
	const struct step s1[] = {
		CONN("", "", ""),
		CL("EHLO client.test\r\n", "", "", ""),
		UP(GREET, "", "EHLO proxy.test\r\n", ""),
		{ .op = OP_UP, .in = longline.p, .inlen = longline.n, .to_client = "421 4.4.1 *\r\n",
		  .to_up = "", .acts = "close" },
		END
	};
	const struct step s2[] = {
		CONN("", "", ""),
		UP(GREET, "", "EHLO proxy.test\r\n", ""),
		{ .op = OP_UP, .in = manylines.p, .inlen = manylines.n, .to_client = "421 4.4.1 *\r\n",
		  .to_up = "", .acts = "close" },
		END
	};
	const struct step s3[] = {
		CONN("", "", ""),
		{ .op = OP_UP, .in = nonl.p, .inlen = nonl.n, .to_client = "421 4.4.1 *\r\n",
		  .to_up = "", .acts = "close" },
		END
	};
	/* mid-session, the client hears 421 4.4.2 */
	const struct step s4[] = {
		PLAIN_OPEN,
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		{ .op = OP_UP, .in = manylines.p, .inlen = manylines.n, .to_client = UP_ERR_MID,
		  .to_up = "", .acts = "close" },
		END
	};
	const struct script scs[] = {
		{ "reply_line_too_long", &P_INJ_VERIFY, s1, M_WHOLE | M_BYTES },
		{ "reply_too_many_lines", &P_INJ_VERIFY, s2, M_WHOLE | M_BYTES },
		{ "reply_no_newline", &P_INJ_VERIFY, s3, M_WHOLE | M_BYTES },
		{ "reply_too_many_lines_mid", &P_PLAIN, s4, M_WHOLE | M_BYTES },
	};
	RUN_TABLE(scs);
	sb_free(&longline);
	sb_free(&manylines);
	sb_free(&nonl);
}

/* ------------------------------------------------------------------ terminate */

static const struct step s_term_encrypt[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	/* STARTTLS added, AUTH hidden before TLS (client_policy = encrypt) */
	UP("250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250-SIZE 100\r\n250 PIPELINING\r\n",
	   "250-mx.test\r\n250-SIZE 100\r\n250-PIPELINING\r\n250 STARTTLS\r\n", "", ""),
	/* no mail transaction and no AUTH in plaintext */
	CL("MAIL FROM:<a@client.test>\r\n", C530, "", ""),
	CL("RCPT TO:<b@mx.test>\r\n", C530, "", ""),
	CL("DATA\r\n", C530, "", ""),
	CL("AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n", C530, "", ""),
	CL("BDAT 0 LAST\r\n", C530, "", ""),
	CL("mail from:<a@client.test>\r\n", C530, "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	UP("250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n", "", ""),
	/* STARTTLS: answered by the proxy, pipelined bytes after it are dropped */
	CL("STARTTLS\r\nMAIL FROM:<evil@client.test>\r\nRCPT TO:<x@mx.test>\r\n", C220TLS, "",
	   "tls:client"),
	CL("RSET\r\n", "", "", ""),
	/* a fresh session inside TLS: RSET upstream, its reply swallowed */
	TLSC("", "RSET\r\n", ""),
	CL("MAIL FROM:<a@client.test>\r\n", "", "", ""),
	UP("250 2.0.0 Ok\r\n", "503 5.5.1 Send EHLO or HELO first\r\n", "", ""),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	/* inside TLS: no STARTTLS, AUTH shown */
	UP("250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250-SIZE 100\r\n250 PIPELINING\r\n",
	   "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250-SIZE 100\r\n250 PIPELINING\r\n",
	   "", ""),
	CL("STARTTLS\r\n", "5?? *\r\n", "", ""),
	CL("MAIL FROM:<a@client.test>\r\n", "", "MAIL FROM:<a@client.test>\r\n", ""),
	UP("250 2.1.0 Ok\r\n", "250 2.1.0 Ok\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("221 2.0.0 Bye\r\n", "221 2.0.0 Bye\r\n", "", "close"),
	END
};

/* client_policy = may: AUTH stays visible, MAIL passes, STARTTLS mid-transaction 503 */
static const struct step s_term_may[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250-AUTH PLAIN\r\n250-STARTTLS\r\n250 SIZE 100\r\n",
	   "250-mx.test\r\n250-AUTH PLAIN\r\n250-SIZE 100\r\n250 STARTTLS\r\n", "", ""),
	CL("MAIL FROM:<a@client.test>\r\n", "", "MAIL FROM:<a@client.test>\r\n", ""),
	UP("250 2.1.0 Ok\r\n", "250 2.1.0 Ok\r\n", "", ""),
	CL("STARTTLS\r\n", "503 5.5.1 *\r\n", "", ""),
	CL("RSET\r\n", "", "RSET\r\n", ""),
	UP("250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n", "", ""),
	CL("STARTTLS extra\r\n", "501 5.5.4 *\r\n", "", ""),
	CL("STARTTLS\r\n", C220TLS, "", "tls:client"),
	TLSC("", "RSET\r\n", ""),
	UP("250 2.0.0 Ok\r\n", "", "", ""),
	CL("HELO client.test\r\n", "", "HELO client.test\r\n", ""),
	UP("250 mx.test\r\n", "250 mx.test\r\n", "", ""),
	END
};

/* STARTTLS pipelined behind a MAIL whose reply is still out: 503 once it is known. */
static const struct step s_term_mail_pipelined[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("MAIL FROM:<a@client.test>\r\nSTARTTLS\r\n", "", "MAIL FROM:<a@client.test>\r\n", ""),
	UP("250 2.1.0 Ok\r\n", "250 2.1.0 Ok\r\n503 5.5.1 *\r\n", "", ""),
	END
};

/* Local replies keep their place among upstream replies. */
static const struct step s_term_order[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("NOOP 1\r\nSTARTTLS x\r\nNOOP 2\r\nXCLIENT ADDR=1.2.3.4\r\nNOOP 3\r\n", "",
	   "NOOP 1\r\nNOOP 2\r\nNOOP 3\r\n", ""),
	UP("250 one\r\n", "250 one\r\n501 5.5.4 Syntax: STARTTLS takes no parameters\r\n", "", ""),
	UP("250 two\r\n250 three\r\n", "250 two\r\n502 5.5.1 *\r\n250 three\r\n", "", ""),
	END
};

/* STARTTLS behind a pipelined NOOP: answered after the NOOP's reply, the rest dropped. */
static const struct step s_term_pipelined_starttls[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("NOOP\r\nSTARTTLS\r\nMAIL FROM:<evil@client.test>\r\n", "", "NOOP\r\n", ""),
	UP("250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n" C220TLS, "", "tls:client"),
	CL("RCPT TO:<evil@mx.test>\r\n", "", "", ""),
	TLSC("", "RSET\r\n", ""),
	UP("250 2.0.0 Ok\r\n", "", "", ""),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	END
};

/* A client that sends EHLO and STARTTLS in one go. */
static const struct step s_term_ehlo_starttls[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\nSTARTTLS\r\n", "", "EHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250 SIZE\r\n", "250-mx.test\r\n250-SIZE\r\n250 STARTTLS\r\n" C220TLS, "",
	   "tls:client"),
	END
};

/* STARTTLS toward a client on a route without it. */
static const struct step s_plain_starttls[] = {
	PLAIN_OPEN,
	CL("STARTTLS\r\n", "502 5.5.1 *\r\n", "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	END
};

/* STARTTLS after a successful AUTH (pre-TLS, client_policy = may). */
static const struct step s_term_after_auth[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n", "", "AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n", ""),
	UP("235 2.7.0 Ok\r\n", "235 2.7.0 Ok\r\n", "", ""),
	CL("STARTTLS\r\n", "503 5.5.1 *\r\n", "", ""),
	END
};

/* REQUIRETLS: hidden before the client's STARTTLS, offered inside TLS. */
static const struct step s_requiretls_terminate[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250-REQUIRETLS\r\n250 SIZE 100\r\n",
	   "250-mx.test\r\n250-SIZE 100\r\n250 STARTTLS\r\n", "", ""),
	CL("STARTTLS\r\n", C220TLS, "", "tls:client"),
	TLSC("", "RSET\r\n", ""),
	UP("250 2.0.0 Ok\r\n", "", "", ""),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250-REQUIRETLS\r\n250 SIZE 100\r\n",
	   "250-mx.test\r\n250-REQUIRETLS\r\n250 SIZE 100\r\n", "", ""),
	END
};

static const struct script terminate_scripts[] = {
	{ "requiretls_terminate", &P_TERM_MAY, s_requiretls_terminate, 0 },
	{ "terminate_encrypt", &P_TERM_ENCRYPT, s_term_encrypt, 0 },
	{ "terminate_may", &P_TERM_MAY, s_term_may, 0 },
	{ "terminate_mail_pipelined", &P_TERM_MAY, s_term_mail_pipelined, 0 },
	{ "terminate_reply_order", &P_TERM_ENCRYPT, s_term_order, 0 },
	{ "terminate_pipelined_starttls", &P_TERM_ENCRYPT, s_term_pipelined_starttls, 0 },
	{ "terminate_ehlo_starttls", &P_TERM_ENCRYPT, s_term_ehlo_starttls, 0 },
	{ "plain_starttls", &P_PLAIN, s_plain_starttls, 0 },
	{ "terminate_after_auth", &P_TERM_MAY, s_term_after_auth, 0 },
};

static void test_terminate(void **state)
{
	(void)state;
	RUN_TABLE(terminate_scripts);
}

/* ------------------------------------------------------------------ commands and data */

static const struct step s_bare_cr[] = {
	PLAIN_OPEN,
	CL("NOOP\rRSET\r\n", "500 5.5.2 *\r\n", "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
	END
};

static const struct step s_nul[] = {
	PLAIN_OPEN,
	{ .op = OP_CL, .in = "NOOP\0RSET\r\n", .inlen = 11, .to_client = "500 5.5.2 *\r\n",
	  .to_up = "", .acts = "" },
	END
};

/* Bare LF ends a command line; what goes up always ends in CRLF. */
static const struct step s_lf_commands[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\nNOOP\n", "", "EHLO client.test\r\nNOOP\r\n", ""),
	END
};

static const struct step s_data[] = {
	PLAIN_OPEN,
	CL("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n", "",
	   "MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n", ""),
	/* pipelined body before the 354: held, not parsed */
	CL("Subject: test\r\n\r\nMAIL FROM:<evil@client.test>\r\nSTARTTLS\r\nQUIT\r\n..stuffed\r\n"
	   ".x\r\n", "", "", ""),
	UP("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
	   "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
	   "Subject: test\r\n\r\nMAIL FROM:<evil@client.test>\r\nSTARTTLS\r\nQUIT\r\n..stuffed\r\n"
	   ".x\r\n", ""),
	CL("RCPT TO:<c@mx.test>\r\n. \r\n..\r\n", "", "RCPT TO:<c@mx.test>\r\n. \r\n..\r\n", ""),
	CL("last\r\n.\r\nNOOP\r\n", "", "last\r\n.\r\nNOOP\r\n", ""),
	UP("250 2.0.0 Ok: queued\r\n250 Ok\r\n", "250 2.0.0 Ok: queued\r\n250 Ok\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("221 Bye\r\n", "221 Bye\r\n", "", "close"),
	END
};

/* Bare LF and bare CR in the body become CRLF on the way up, but never end the data: the
 * "." after them goes up stuffed, so "\n.\n" is content; "\r\n.\r\n" ends it. */
static const struct step s_data_lf[] = {
	PLAIN_OPEN,
	CL("MAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\n", "", "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
	   ""),
	UP("250 Ok\r\n250 Ok\r\n354 go\r\n", "250 Ok\r\n250 Ok\r\n354 go\r\n", "", ""),
	CL("one\ntwo\r\nthree\rfour\n.\nNOOP\n", "", "one\r\ntwo\r\nthree\r\nfour\r\n..\r\nNOOP\r\n", ""),
	CL("\r\n.\r\nNOOP\r\n", "", "\r\n.\r\nNOOP\r\n", ""),
	UP("250 queued\r\n250 Ok\r\n", "250 queued\r\n250 Ok\r\n", "", ""),
	END
};

/* A body that ends right away, and ".\r" followed by another byte. */
static const struct step s_data_empty[] = {
	PLAIN_OPEN,
	CL("DATA\r\n", "", "DATA\r\n", ""),
	UP("354 go\r\n", "354 go\r\n", "", ""),
	CL(".\r\nNOOP\r\n", "", ".\r\nNOOP\r\n", ""),
	UP("250 queued\r\n250 Ok\r\n", "250 queued\r\n250 Ok\r\n", "", ""),
	END
};

/* DATA refused: what followed is commands again. */
static const struct step s_data_rejected[] = {
	PLAIN_OPEN,
	CL("DATA\r\nNOOP\r\n", "", "DATA\r\n", ""),
	UP("554 5.5.1 No valid recipients\r\n", "554 5.5.1 No valid recipients\r\n", "NOOP\r\n", ""),
	UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
	END
};

static const struct step s_bdat[] = {
	CHUNKING_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", "", "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", ""),
	/* 11 octets that look like an end of data and a QUIT */
	CL("BDAT 11\r\n\r\n.\r\nQUIT\r\nNOOP\r\n", "", "BDAT 11\r\n\r\n.\r\nQUIT\r\nNOOP\r\n", ""),
	UP("250 Ok\r\n250 Ok\r\n250 2.0.0 11 octets received\r\n250 noop\r\n",
	   "250 Ok\r\n250 Ok\r\n250 2.0.0 11 octets received\r\n250 noop\r\n", "", ""),
	CL("bdat 3 last\r\nabcRSET\r\n", "", "bdat 3 last\r\nabcRSET\r\n", ""),
	UP("250 2.0.0 queued\r\n250 reset\r\n", "250 2.0.0 queued\r\n250 reset\r\n", "", ""),
	CL("BDAT 0 LAST\r\n", "", "BDAT 0 LAST\r\n", ""),
	END
};

/* A BDAT whose size cannot be read: where its chunk ends is unknown, so the session ends
 * (like Postfix), and nothing after it is read as a command. */
#define BDAT_SYNTAX(name, cmd)                                                          \
	static const struct step name[] = {                                             \
		CHUNKING_OPEN,                                                          \
		CL(cmd "XCLIENT ADDR=6.6.6.6\r\nNOOP\r\n",                            \
		   "521 5.5.4 proxy.test Syntax: BDAT chunk-size [LAST]; closing connection\r\n", \
		   "", "close"),                                                        \
		END                                                                     \
	}
BDAT_SYNTAX(s_bdat_syntax0, "BDAT\r\n");
BDAT_SYNTAX(s_bdat_syntax1, "BDAT x\r\n");
BDAT_SYNTAX(s_bdat_syntax2, "BDAT -1\r\n");
BDAT_SYNTAX(s_bdat_syntax3, "BDAT 5 LASTX\r\n");
BDAT_SYNTAX(s_bdat_syntax4, "BDAT 5 LAST x\r\n");
BDAT_SYNTAX(s_bdat_syntax5, "BDAT 5x\r\n");
BDAT_SYNTAX(s_bdat_syntax6, "BDAT 99999999999999999999\r\n");
BDAT_SYNTAX(s_bdat_syntax7, "BDAT  5\r\n");
BDAT_SYNTAX(s_bdat_syntax8, "BDAT 5 \r\n");
BDAT_SYNTAX(s_bdat_syntax9, "BDAT +5\r\n");

/* The upstream did not offer CHUNKING: BDAT is refused, and its chunk is skipped, never
 * read as commands (an upstream that answers 500 would read them as commands). */
static const struct step s_bdat_not_offered[] = {
	PLAIN_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n", ANY, "", ""),
	CL("BDAT 44\r\nXCLIENT ADDR=6.6.6.6\r\nMAIL FROM:<ceo@bank>\r\nNOOP\r\n",
	   "502 5.5.1 BDAT not available*\r\n", "NOOP\r\n", ""),
	UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
	/* the largest size and LAST: skipped as well */
	CL("BDAT 3 LAST\r\nabcRSET\r\n", "502 5.5.1 *\r\n", "RSET\r\n", ""),
	END
};

/* A size beyond SMTP_BDAT_MAX without CHUNKING, or beyond the upstream's SIZE with it:
 * 552 and the end of the session (the octets are not skipped for ever). */
static const struct step s_bdat_huge[] = {
	PLAIN_OPEN,
	CL("BDAT 999999999999999999\r\nXCLIENT ADDR=6.6.6.6\r\n",
	   "552 5.3.4 proxy.test Chunk size exceeds the limit; closing connection\r\n", "",
	   "close"),
	END
};
static const struct step s_bdat_over_size[] = {
	CHUNKING_OPEN,
	CL("BDAT 1001\r\nXCLIENT ADDR=6.6.6.6\r\n", "552 5.3.4 *closing connection\r\n", "",
	   "close"),
	END
};

/* Pipelined behind the EHLO whose reply tells whether CHUNKING is offered: the BDAT waits
 * for that reply, then goes up (offered) ... */
static const struct step s_bdat_waits_for_caps[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5 LAST\r\nhelloQUIT\r\n", "",
	   "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", ""),
	UP("250-mx.test\r\n250 CHUNKING\r\n", "250-mx.test\r\n250 CHUNKING\r\n",
	   "BDAT 5 LAST\r\nhelloQUIT\r\n", ""),
	END
};
/* ... or is refused with its chunk skipped (not offered). */
static const struct step s_bdat_waits_no_caps[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5 LAST\r\nhelloQUIT\r\n", "",
	   "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", ""),
	UP("250-mx.test\r\n250 SIZE\r\n", "250-mx.test\r\n250 SIZE\r\n", "QUIT\r\n", ""),
	UP("250 Ok\r\n250 Ok\r\n", "250 Ok\r\n250 Ok\r\n502 5.5.1 *\r\n", "", ""),
	END
};
/* CHUNKING offered before the client's STARTTLS does not count inside TLS until the new
 * EHLO reply says so; HELO (no extensions) withdraws it. */
static const struct step s_bdat_after_helo[] = {
	CHUNKING_OPEN,
	CL("HELO c\r\n", "", "HELO c\r\n", ""),
	UP("250 mx.test\r\n", "250 mx.test\r\n", "", ""),
	CL("BDAT 2\r\nab", "502 5.5.1 *\r\n", "", ""),
	END
};

/* AUTH: continuation lines are credentials, forwarded verbatim, never commands. */
static const struct step s_auth[] = {
	PLAIN_OPEN,
	CL("AUTH LOGIN\r\n", "", "AUTH LOGIN\r\n", ""),
	CL("STARTTLS\r\n", "", "", ""),
	UP("334 VXNlcm5hbWU6\r\n", "334 VXNlcm5hbWU6\r\n", "STARTTLS\r\n", ""),
	UP("334 UGFzc3dvcmQ6\r\n", "334 UGFzc3dvcmQ6\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("235 2.7.0 Authentication successful\r\n", "235 2.7.0 Authentication successful\r\n", "",
	   ""),
	CL("AUTH PLAIN\r\n", "", "AUTH PLAIN\r\n", ""),
	UP("334 \r\n", "334 \r\n", "", ""),
	CL("*\r\n", "", "*\r\n", ""),
	UP("501 5.7.0 cancelled\r\n", "501 5.7.0 cancelled\r\n", "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	END
};

/* XCLIENT/XFORWARD from the client never reach the upstream. */
static const struct step s_client_xclient[] = {
	PLAIN_OPEN,
	CL("XCLIENT ADDR=10.0.0.1\r\nXFORWARD ADDR=10.0.0.1\r\n", "502 5.5.1 *\r\n502 5.5.1 *\r\n", "",
	   ""),
	END
};

/* LMTP: one reply per accepted recipient after the data. */
static const struct step s_lmtp_data[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("LHLO client.test\r\n", "", "LHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250 PIPELINING\r\n", "250-mx.test\r\n250 PIPELINING\r\n", "", ""),
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<u1@d>\r\nRCPT TO:<u2@d>\r\nRCPT TO:<nobody@d>\r\n"
	   "RCPT TO:<u3@d>\r\nDATA\r\n",
	   "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n250 Ok\r\n550 5.1.1 unknown\r\n250 Ok\r\n354 go\r\n",
	   "250 Ok\r\n250 Ok\r\n250 Ok\r\n550 5.1.1 unknown\r\n250 Ok\r\n354 go\r\n", "", ""),
	CL("hello\r\n.\r\n", "", "hello\r\n.\r\n", ""),
	UP("250 2.0.0 <u1@d> delivered\r\n", "250 2.0.0 <u1@d> delivered\r\n", "", ""),
	UP("452 4.2.2 <u2@d> over quota\r\n250 2.0.0 <u3@d> delivered\r\n",
	   "452 4.2.2 <u2@d> over quota\r\n250 2.0.0 <u3@d> delivered\r\n", "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
	/* a second transaction with a single recipient */
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<u1@d>\r\nDATA\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n354 go\r\n", "250 Ok\r\n250 Ok\r\n354 go\r\n", "", ""),
	CL("x\r\n.\r\n", "", "x\r\n.\r\n", ""),
	UP("250 2.0.0 <u1@d> delivered\r\n", "250 2.0.0 <u1@d> delivered\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("221 bye\r\n", "221 bye\r\n", "", "close"),
	END
};

/* LMTP BDAT LAST after the RCPT replies: one reply per accepted recipient. */
static const struct step s_lmtp_bdat[] = {
	LMTP_CHUNKING_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<u1@d>\r\nRCPT TO:<u2@d>\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n250 Ok\r\n", "250 Ok\r\n250 Ok\r\n250 Ok\r\n", "", ""),
	CL("BDAT 3 LAST\r\nabc", "", "BDAT 3 LAST\r\nabc", ""),
	UP("250 u1 ok\r\n250 u2 ok\r\n", "250 u1 ok\r\n250 u2 ok\r\n", "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
	END
};

/* LMTP + CHUNKING (RFC 2033 §4.2, RFC 3030): RCPT and BDAT LAST pipelined in one go; the
 * number of replies to BDAT LAST is only known once the RCPT replies are in. */
static const struct step s_lmtp_bdat_pipelined[] = {
	LMTP_CHUNKING_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<u1@d>\r\nRCPT TO:<u2@d>\r\nBDAT 3 LAST\r\nabc", "",
	   "MAIL FROM:<a@b>\r\nRCPT TO:<u1@d>\r\nRCPT TO:<u2@d>\r\nBDAT 3 LAST\r\nabc", ""),
	UP("250 Ok\r\n250 Ok\r\n250 Ok\r\n250 u1 delivered\r\n250 u2 delivered\r\n",
	   "250 Ok\r\n250 Ok\r\n250 Ok\r\n250 u1 delivered\r\n250 u2 delivered\r\n", "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	END
};

/* LMTP "BDAT 0 LAST" (an empty last chunk) is answered once per recipient too. */
static const struct step s_lmtp_bdat0_last[] = {
	LMTP_CHUNKING_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<u1@d>\r\nRCPT TO:<u2@d>\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n250 Ok\r\n", ANY, "", ""),
	CL("BDAT 5\r\nhelloBDAT 0 LAST\r\n", "", "BDAT 5\r\nhelloBDAT 0 LAST\r\n", ""),
	UP("250 5 octets\r\n250 u1 delivered\r\n250 u2 delivered\r\n",
	   "250 5 octets\r\n250 u1 delivered\r\n250 u2 delivered\r\n", "", ""),
	END
};

static const struct script command_scripts[] = {
	{ "bare_cr", &P_PLAIN, s_bare_cr, 0 },
	{ "nul_in_command", &P_PLAIN, s_nul, 0 },
	{ "lf_commands", &P_PLAIN, s_lf_commands, 0 },
	{ "data", &P_PLAIN, s_data, 0 },
	{ "data_lf", &P_PLAIN, s_data_lf, 0 },
	{ "data_empty", &P_PLAIN, s_data_empty, 0 },
	{ "data_rejected", &P_PLAIN, s_data_rejected, 0 },
	{ "bdat", &P_PLAIN, s_bdat, 0 },
	{ "bdat_syntax0", &P_PLAIN, s_bdat_syntax0, 0 },
	{ "bdat_syntax1", &P_PLAIN, s_bdat_syntax1, 0 },
	{ "bdat_syntax2", &P_PLAIN, s_bdat_syntax2, 0 },
	{ "bdat_syntax3", &P_PLAIN, s_bdat_syntax3, 0 },
	{ "bdat_syntax4", &P_PLAIN, s_bdat_syntax4, 0 },
	{ "bdat_syntax5", &P_PLAIN, s_bdat_syntax5, 0 },
	{ "bdat_syntax6", &P_PLAIN, s_bdat_syntax6, 0 },
	{ "bdat_syntax7", &P_PLAIN, s_bdat_syntax7, 0 },
	{ "bdat_syntax8", &P_PLAIN, s_bdat_syntax8, 0 },
	{ "bdat_syntax9", &P_PLAIN, s_bdat_syntax9, 0 },
	{ "bdat_not_offered", &P_PLAIN, s_bdat_not_offered, 0 },
	{ "bdat_huge", &P_PLAIN, s_bdat_huge, 0 },
	{ "bdat_over_size", &P_PLAIN, s_bdat_over_size, 0 },
	{ "bdat_waits_for_caps", &P_PLAIN, s_bdat_waits_for_caps, 0 },
	{ "bdat_waits_no_caps", &P_PLAIN, s_bdat_waits_no_caps, 0 },
	{ "bdat_after_helo", &P_PLAIN, s_bdat_after_helo, 0 },
	{ "auth", &P_PLAIN, s_auth, 0 },
	{ "client_xclient", &P_PLAIN, s_client_xclient, 0 },
	{ "lmtp_data", &P_PLAIN_LMTP, s_lmtp_data, 0 },
	{ "lmtp_bdat", &P_PLAIN_LMTP, s_lmtp_bdat, 0 },
	{ "lmtp_bdat_pipelined", &P_PLAIN_LMTP, s_lmtp_bdat_pipelined, 0 },
	{ "lmtp_bdat0_last", &P_PLAIN_LMTP, s_lmtp_bdat0_last, 0 },
};

static void test_commands(void **state)
{
	(void)state;
	RUN_TABLE(command_scripts);
}

/* Overlong command lines: one 500, the tail never executed, the next line works. */
static void test_long_line(void **state)
{
	(void)state;
	struct sbuf l1 = { 0 }, l2 = { 0 }, l3 = { 0 }, l5 = { 0 }, okline = { 0 };
	/* 1: tail "QUIT" beyond the bound, newline in the same chunk */
	sb_adds(&l1, "NOOP ");
	for (int i = 0; i < SMTP_CMD_MAX; i++)
		sb_adds(&l1, "a");
	sb_adds(&l1, "QUIT\r\nNOOP\r\n");
	/* 2: the bound reached without a newline; the tail comes later */
	for (int i = 0; i < SMTP_CMD_MAX; i++)
		sb_adds(&l2, "b");
	sb_adds(&l3, "bbbQUIT\r\nRSET\r\n");
	for (int i = 0; i < 3 * SMTP_CMD_MAX; i++)
		sb_adds(&l5, "d");
	sb_adds(&l5, "QUIT\r\nNOOP\r\n");
	/* exactly SMTP_CMD_MAX octets with CRLF: accepted */
	sb_adds(&okline, "NOOP ");
	while (okline.n < SMTP_CMD_MAX - 2)
		sb_adds(&okline, "c");
	sb_adds(&okline, "\r\n");
	char *okup = strdup(okline.p);
	const struct step s1[] = {
		PLAIN_OPEN,
		{ .op = OP_CL, .in = l1.p, .inlen = l1.n, .to_client = "500 5.5.2 Line too long\r\n",
		  .to_up = "NOOP\r\n", .acts = "" },
		UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
		END
	};
	const struct step s2[] = {
		PLAIN_OPEN,
		{ .op = OP_CL, .in = l2.p, .inlen = l2.n, .to_client = "500 5.5.2 Line too long\r\n",
		  .to_up = "", .acts = "" },
		{ .op = OP_CL, .in = l3.p, .inlen = l3.n, .to_client = "", .to_up = "RSET\r\n",
		  .acts = "" },
		END
	};
	const struct step s3[] = {
		PLAIN_OPEN,
		{ .op = OP_CL, .in = okline.p, .inlen = okline.n, .to_client = "", .to_up = okup,
		  .acts = "" },
		END
	};
	/* the same in terminate mode before TLS: no 530 for the tail */
	const struct step s4[] = {
		CONN("", "", ""),
		UP(GREET, GREET, "", "ready"),
		{ .op = OP_CL, .in = l1.p, .inlen = l1.n, .to_client = "500 5.5.2 Line too long\r\n",
		  .to_up = "NOOP\r\n", .acts = "" },
		END
	};
	/* far beyond the bound (several times SMTP_CMD_MAX before the newline): still one
	 * 500, however the reads are cut. (process_client's no-newline branch answers 500
	 * again each time another SMTP_CMD_MAX octets pile up while long_line is already
	 * set; found by fuzz_proto_smtp, tests/fuzz/repro/proto_smtp-long-line-500-twice.) */
	const struct step s5[] = {
		PLAIN_OPEN,
		{ .op = OP_CL, .in = l5.p, .inlen = l5.n, .to_client = "500 5.5.2 Line too long\r\n",
		  .to_up = "NOOP\r\n", .acts = "" },
		UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
		END
	};
	const struct script scs[] = {
		{ "long_line_one_chunk", &P_PLAIN, s1, M_WHOLE | M_BYTES },
		{ "very_long_line", &P_PLAIN, s5, M_WHOLE | M_BYTES },
		{ "long_line_two_chunks", &P_PLAIN, s2, M_WHOLE | M_BYTES },
		{ "line_at_bound", &P_PLAIN, s3, M_WHOLE | M_BYTES },
		{ "long_line_terminate", &P_TERM_ENCRYPT, s4, M_WHOLE | M_BYTES },
	};
	RUN_TABLE(scs);
	free(okup);
	sb_free(&l1);
	sb_free(&l2);
	sb_free(&l3);
	sb_free(&l5);
	sb_free(&okline);
}

/* ------------------------------------------------------------------ bounds at their edge */

/* Appends prefix, 'x' octets and suffix so that exactly total octets are added. */
static void buf_fill(struct sbuf *b, const char *prefix, size_t total, const char *suffix)
{
	size_t start = b->n;
	sb_adds(b, prefix);
	while (b->n - start + strlen(suffix) < total)
		sb_adds(b, "x");
	sb_adds(b, suffix);
	assert_int_equal(b->n - start, total);
}

/* A plain session whose upstream offers CHUNKING without SIZE (SMTP_BDAT_MAX applies). */
#define CHUNKING_NOSIZE_OPEN                                                          \
	CONN("", "", ""), UP(GREET, GREET, "", "ready"),                              \
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),                   \
	UP("250-mx.test\r\n250 CHUNKING\r\n", "250-mx.test\r\n250 CHUNKING\r\n", "", "")

#define BYE_TOO_MUCH "421 4.5.0 Too much pipelined input, closing connection\r\n"
#define BDAT_TOO_BIG "552 5.3.4 proxy.test Chunk size exceeds the limit; closing connection\r\n"

/* The same script for LMTP: the PLAIN_OPEN's EHLO (its third step) becomes LHLO. */
static struct step *as_lmtp(const struct step *steps)
{
	size_t n = 0;
	while (steps[n].op != OP_END)
		n++;
	struct step *l = malloc((n + 1) * sizeof(*l));
	assert_non_null(l);
	memcpy(l, steps, (n + 1) * sizeof(*l));
	assert_true(n > 3 && l[2].op == OP_CL && !strcmp(l[2].in, "EHLO client.test\r\n"));
	l[2].in = l[2].to_up = "LHLO client.test\r\n";
	return l;
}

/* Every bound of docs/limits.md's SMTP table, exactly at its value (accepted) and one octet,
 * line or command beyond it (refused as documented). */
static void test_bounds_edge(void **state)
{
	(void)state;
	/* commands: SMTP_CMD_MAX octets with CRLF relayed ("line_at_bound" in test_long_line),
	 * one more answered 500 and dropped */
	struct sbuf cmd_over = { 0 };
	buf_fill(&cmd_over, "NOOP ", SMTP_CMD_MAX + 1, "\r\n");
	/* reply lines: SMTP_REPLY_LINE_MAX octets with CRLF relayed, one more ends the session */
	struct sbuf line_at = { 0 }, line_over = { 0 };
	buf_fill(&line_at, "250 ", SMTP_REPLY_LINE_MAX, "\r\n");
	buf_fill(&line_over, "250 ", SMTP_REPLY_LINE_MAX + 1, "\r\n");
	/* replies: SMTP_REPLY_LINES_MAX lines relayed, one more line ends the session */
	struct sbuf lines_at = { 0 }, lines_over = { 0 };
	for (int i = 1; i < SMTP_REPLY_LINES_MAX; i++) {
		sb_adds(&lines_at, "250-X\r\n");
		sb_adds(&lines_over, "250-X\r\n");
	}
	sb_adds(&lines_over, "250-X\r\n");
	sb_adds(&lines_at, "250 X\r\n");
	sb_adds(&lines_over, "250 X\r\n");
	/* replies: SMTP_REPLY_MAX octets (31 lines of SMTP_REPLY_LINE_MAX and two of 1024)
	 * relayed, one octet more ends the session */
	struct sbuf bytes_at = { 0 }, bytes_over = { 0 };
	for (int i = 0; i < 31; i++) {
		buf_fill(&bytes_at, "250-", SMTP_REPLY_LINE_MAX, "\r\n");
		buf_fill(&bytes_over, "250-", SMTP_REPLY_LINE_MAX, "\r\n");
	}
	buf_fill(&bytes_at, "250-", 1024, "\r\n");
	buf_fill(&bytes_over, "250-", 1024, "\r\n");
	buf_fill(&bytes_at, "250 ", 1024, "\r\n");
	buf_fill(&bytes_over, "250 ", 1025, "\r\n");
	assert_int_equal(bytes_at.n, SMTP_REPLY_MAX);
	/* held while the 354 is awaited: SMTP_HOLD_MAX octets kept (and relayed as the message
	 * once it comes), one more ends the session */
	struct sbuf hold_at = { 0 }, hold_over = { 0 };
	buf_fill(&hold_at, "", SMTP_HOLD_MAX, "\r\n");
	buf_fill(&hold_over, "", SMTP_HOLD_MAX + 1, "\r\n");
	/* in flight: SMTP_PIPELINE_MAX commands go up, the next one waits for a reply */
	struct sbuf pipe_in = { 0 }, pipe_up = { 0 };
	for (int i = 0; i < SMTP_PIPELINE_MAX; i++)
		sb_adds(&pipe_up, "NOOP\r\n");
	sb_adds(&pipe_in, pipe_up.p);
	sb_adds(&pipe_in, "RSET\r\n");
	/* behind a full pipeline the client may pile up SMTP_HOLD_MAX + SMTP_CMD_MAX octets
	 * unread (the RSET's 6 included), one more ends the session */
	struct sbuf piled = { 0 };
	buf_fill(&piled, "", SMTP_HOLD_MAX + SMTP_CMD_MAX - 6, "");
	/* BDAT chunk sizes: SMTP_BDAT_MAX without SIZE, the SIZE with it */
	char bdat_at[64], bdat_over[64];
	snprintf(bdat_at, sizeof(bdat_at), "BDAT %llu\r\n", (unsigned long long)SMTP_BDAT_MAX);
	snprintf(bdat_over, sizeof(bdat_over), "BDAT %llu\r\n",
		 (unsigned long long)SMTP_BDAT_MAX + 1);
#define BIG(o, data, c, u, x) \
	{ .op = (o), .in = (data).p, .inlen = (data).n, .to_client = (c), .to_up = (u), .acts = (x) }
	const struct step s_cmd_over[] = {
		PLAIN_OPEN,
		BIG(OP_CL, cmd_over, "500 5.5.2 Line too long\r\n", "", ""),
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		END
	};
	const struct step s_line_at[] = {
		PLAIN_OPEN,
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		BIG(OP_UP, line_at, line_at.p, "", ""),
		END
	};
	const struct step s_line_over[] = {
		PLAIN_OPEN,
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		BIG(OP_UP, line_over, UP_ERR_MID, "", "close"),
		END
	};
	const struct step s_lines_at[] = {
		PLAIN_OPEN,
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		BIG(OP_UP, lines_at, lines_at.p, "", ""),
		END
	};
	const struct step s_lines_over[] = {
		PLAIN_OPEN,
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		BIG(OP_UP, lines_over, UP_ERR_MID, "", "close"),
		END
	};
	const struct step s_bytes_at[] = {
		PLAIN_OPEN,
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		BIG(OP_UP, bytes_at, bytes_at.p, "", ""),
		END
	};
	const struct step s_bytes_over[] = {
		PLAIN_OPEN,
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		BIG(OP_UP, bytes_over, UP_ERR_MID, "", "close"),
		END
	};
	const struct step s_hold_at[] = {
		PLAIN_OPEN,
		CL("DATA\r\n", "", "DATA\r\n", ""),
		BIG(OP_CL, hold_at, "", "", ""),
		UP("354 go\r\n", "354 go\r\n", hold_at.p, ""),
		END
	};
	const struct step s_hold_over[] = {
		PLAIN_OPEN,
		CL("DATA\r\n", "", "DATA\r\n", ""),
		BIG(OP_CL, hold_over, BYE_TOO_MUCH, "", "close"),
		END
	};
	const struct step s_pipeline[] = {
		PLAIN_OPEN,
		BIG(OP_CL, pipe_in, "", pipe_up.p, ""),
		UP("250 Ok\r\n", "250 Ok\r\n", "RSET\r\n", ""),
		END
	};
	const struct step s_pile_at[] = {
		PLAIN_OPEN,
		BIG(OP_CL, pipe_in, "", pipe_up.p, ""),
		BIG(OP_CL, piled, "", "", ""),
		END
	};
	const struct step s_pile_over[] = {
		PLAIN_OPEN,
		BIG(OP_CL, pipe_in, "", pipe_up.p, ""),
		BIG(OP_CL, piled, "", "", ""),
		CL("x", BYE_TOO_MUCH, "", "close"),
		END
	};
	const struct step s_bdat_at[] = {
		CHUNKING_NOSIZE_OPEN,
		CL(bdat_at, "", bdat_at, ""),
		END
	};
	const struct step s_bdat_over[] = {
		CHUNKING_NOSIZE_OPEN,
		CL(bdat_over, BDAT_TOO_BIG, "", "close"),
		END
	};
	const struct step s_bdat_at_size[] = {
		CHUNKING_OPEN, /* SIZE 1000 */
		CL("BDAT 1000\r\n", "", "BDAT 1000\r\n", ""),
		END
	};
	const struct step s_bdat_over_size[] = {
		CHUNKING_OPEN,
		CL("BDAT 1001\r\n", BDAT_TOO_BIG, "", "close"),
		END
	};
#undef BIG
	const struct script scs[] = {
		{ "cmd_over_bound", &P_PLAIN, s_cmd_over, M_WHOLE | M_BYTES },
		{ "reply_line_at_bound", &P_PLAIN, s_line_at, M_WHOLE | M_BYTES },
		{ "reply_line_over_bound", &P_PLAIN, s_line_over, M_WHOLE | M_BYTES },
		{ "reply_lines_at_bound", &P_PLAIN, s_lines_at, M_WHOLE | M_BYTES },
		{ "reply_lines_over_bound", &P_PLAIN, s_lines_over, M_WHOLE | M_BYTES },
		{ "reply_bytes_at_bound", &P_PLAIN, s_bytes_at, M_WHOLE | M_BYTES },
		{ "reply_bytes_over_bound", &P_PLAIN, s_bytes_over, M_WHOLE | M_BYTES },
		{ "hold_at_bound", &P_PLAIN, s_hold_at, M_WHOLE | M_BYTES },
		{ "hold_over_bound", &P_PLAIN, s_hold_over, M_WHOLE | M_BYTES },
		{ "pipeline_at_bound", &P_PLAIN, s_pipeline, M_WHOLE | M_BYTES },
		{ "pile_at_bound", &P_PLAIN, s_pile_at, M_WHOLE | M_BYTES },
		{ "pile_over_bound", &P_PLAIN, s_pile_over, M_WHOLE | M_BYTES },
		{ "bdat_at_bound", &P_PLAIN, s_bdat_at, M_ALL },
		{ "bdat_over_bound", &P_PLAIN, s_bdat_over, M_ALL },
		{ "bdat_at_size", &P_PLAIN, s_bdat_at_size, M_ALL },
		{ "bdat_over_size", &P_PLAIN, s_bdat_over_size, M_ALL },
		/* LMTP: one module, the same bounds */
		{ "lmtp_cmd_over_bound", &P_PLAIN_LMTP, as_lmtp(s_cmd_over), M_WHOLE | M_BYTES },
		{ "lmtp_reply_line_at_bound", &P_PLAIN_LMTP, as_lmtp(s_line_at), M_WHOLE | M_BYTES },
		{ "lmtp_reply_line_over_bound", &P_PLAIN_LMTP, as_lmtp(s_line_over), M_WHOLE },
		{ "lmtp_reply_lines_at_bound", &P_PLAIN_LMTP, as_lmtp(s_lines_at), M_WHOLE },
		{ "lmtp_reply_lines_over_bound", &P_PLAIN_LMTP, as_lmtp(s_lines_over), M_WHOLE },
		{ "lmtp_reply_bytes_at_bound", &P_PLAIN_LMTP, as_lmtp(s_bytes_at), M_WHOLE },
		{ "lmtp_reply_bytes_over_bound", &P_PLAIN_LMTP, as_lmtp(s_bytes_over), M_WHOLE },
		{ "lmtp_hold_at_bound", &P_PLAIN_LMTP, as_lmtp(s_hold_at), M_WHOLE },
		{ "lmtp_hold_over_bound", &P_PLAIN_LMTP, as_lmtp(s_hold_over), M_WHOLE },
		{ "lmtp_pipeline_at_bound", &P_PLAIN_LMTP, as_lmtp(s_pipeline), M_WHOLE },
		{ "lmtp_pile_at_bound", &P_PLAIN_LMTP, as_lmtp(s_pile_at), M_WHOLE },
		{ "lmtp_pile_over_bound", &P_PLAIN_LMTP, as_lmtp(s_pile_over), M_WHOLE },
	};
	RUN_TABLE(scs);
	for (size_t i = 0; i < sizeof(scs) / sizeof(scs[0]); i++)
		if (!strncmp(scs[i].name, "lmtp_", 5))
			free((void *)scs[i].steps);
	struct sbuf *all[] = { &cmd_over,   &line_at, &line_over, &lines_at, &lines_over,
			      &bytes_at,   &bytes_over, &hold_at, &hold_over, &pipe_in,
			      &pipe_up,    &piled };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		sb_free(all[i]);
}

/* Large DATA body: byte-exact, however it is cut. */
/* SMTP smuggling (CVE-2023-51764 class): every bare CR/LF variant of an end-of-data marker,
 * followed by a second transaction. Exactly one message goes up: the would-be second
 * transaction is content ("hello\r\n..\r\nMAIL FROM:..."), and only the client's real
 * <CRLF>.<CRLF> ends it. Under bare_newline = reject, the message is refused (521) at its
 * real end and the upstream never gets an end marker. */
static const struct proto_params P_PLAIN_REJECT = {
	.session_id = "0123456789abcdef", .route = "unit", .protocol = SMTP,
	.client_tls = T_NONE, .client_policy = CFG_POLICY_MAY, .upstream_tls = T_NONE,
	.upstream_policy = CFG_POLICY_NONE, .policy_mode = ENF, .helo_name = "proxy.test",
	.bare_newline = CFG_BARE_REJECT, .client_ip = "192.0.2.7", .client_port = 40000
};

#define SMUGGLED "MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\n" \
		 "From: ceo@bank.test\r\n\r\nspoofed\r\n"

static void test_smuggling(void **state)
{
	(void)state;
	static const char *const variants[] = {
		"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n", "\r.\n", "\n.\r",
	};
	int failures = 0;
	for (size_t v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
		char in[512], name[64];
		snprintf(in, sizeof(in), "hello%s" SMUGGLED ".\r\nQUIT\r\n", variants[v]);
		const struct step norm[] = {
			PLAIN_OPEN,
			CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", "", ANY, ""),
			UP("250 Ok\r\n250 Ok\r\n354 go\r\n", ANY, "", ""),
			CL(in, "", "hello\r\n..\r\n" SMUGGLED ".\r\nQUIT\r\n", ""),
			UP("250 2.0.0 queued\r\n", "250 2.0.0 queued\r\n", "", ""),
			UP("221 bye\r\n", "221 bye\r\n", "", "close"),
			END
		};
		const struct step rej[] = {
			PLAIN_OPEN,
			CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", "", ANY, ""),
			UP("250 Ok\r\n250 Ok\r\n354 go\r\n", ANY, "", ""),
			/* what went up before the bare CR/LF, and nothing after it */
			CL(in, "521 5.5.2 proxy.test Error: bare <CR> or <LF> received*\r\n",
			   variants[v][0] == '\r' && variants[v][1] == '\n' ? "hello\r\n" : "hello",
			   "close"),
			END
		};
		snprintf(name, sizeof(name), "smuggle_%zu_normalize", v);
		const struct script sn = { name, &P_PLAIN, norm, 0 };
		failures += run_script(&sn) ? 1 : 0;
		char name2[64];
		snprintf(name2, sizeof(name2), "smuggle_%zu_reject", v);
		const struct script sr = { name2, &P_PLAIN_REJECT, rej, 0 };
		failures += run_script(&sr) ? 1 : 0;
	}
	assert_int_equal(failures, 0);
}

/* The body rules one case at a time: input after the 354, what goes up. */
static void test_body_table(void **state)
{
	(void)state;
	static const struct { const char *in, *up; } cases[] = {
		{ ".\r\n", ".\r\n" },                         /* empty message */
		{ "..\r\n.\r\n", "..\r\n.\r\n" },             /* client stuffing kept */
		{ ".x\r\n.\r\n", ".x\r\n.\r\n" },             /* unstuffed dot line, as sent */
		{ "a\n.x\r\n.\r\n", "a\r\n..x\r\n.\r\n" },    /* after bare LF: stuffed */
		{ "a\r.x\r\n.\r\n", "a\r\n..x\r\n.\r\n" },    /* after bare CR: stuffed */
		{ "a\r\r\n.\r\n", "a\r\n\r\n.\r\n" },        /* bare CR then CRLF */
		{ "a\r\n.\r\r\n.\r\n", "a\r\n..\r\n\r\n.\r\n" },
		{ "a\r\n. \r\n.\r\n", "a\r\n. \r\n.\r\n" },   /* ". " is not an end */
		{ "\n.\r\n.\r\n", "\r\n..\r\n.\r\n" },
		{ "a\n\n.\n\r\n.\r\n", "a\r\n\r\n..\r\n\r\n.\r\n" },
		{ "x\x01y\xff\r\n.\r\n", "x\x01y\xff\r\n.\r\n" }, /* 8-bit and controls pass */
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char name[32];
		snprintf(name, sizeof(name), "body_%zu", i);
		size_t inlen = strlen(cases[i].in);
		const struct step st[] = {
			PLAIN_OPEN,
			CL("DATA\r\n", "", "DATA\r\n", ""),
			UP("354 go\r\n", "354 go\r\n", "", ""),
			{ .op = OP_CL, .in = cases[i].in, .inlen = inlen, .to_client = "",
			  .to_up = cases[i].up, .acts = "" },
			CL("NOOP\r\n", "", "NOOP\r\n", ""),
			END
		};
		const struct script sc = { name, &P_PLAIN, st, 0 };
		failures += run_script(&sc) ? 1 : 0;
	}
	assert_int_equal(failures, 0);
}

static void test_data_large(void **state)
{
	(void)state;
	struct sbuf body = { 0 };
	for (int i = 0; i < 3000; i++) {
		char l[80];
		snprintf(l, sizeof(l), "%sline %d: MAIL FROM:<x@y> STARTTLS QUIT\r\n",
			 i % 7 == 0 ? "." : "", i);
		sb_adds(&body, l);
	}
	sb_adds(&body, ".\r\n");
	const struct step s[] = {
		PLAIN_OPEN,
		CL("DATA\r\n", "", "DATA\r\n", ""),
		UP("354 go\r\n", "354 go\r\n", "", ""),
		{ .op = OP_CL, .in = body.p, .inlen = body.n, .to_client = "", .to_up = body.p,
		  .acts = "" },
		UP("250 queued\r\n", "250 queued\r\n", "", ""),
		END
	};
	const struct script scs[] = { { "data_large", &P_PLAIN, s, M_WHOLE | M_BYTES } };
	RUN_TABLE(scs);
	sb_free(&body);
}

/* ------------------------------------------------------------------ failures */

static const struct step s_lost_idle[] = {
	PLAIN_OPEN,
	FAIL(PF_LOST, "reset", "421 4.4.2 proxy.test Upstream connection lost*\r\n", "", "close"),
	CL("NOOP\r\n", "", "", ""),
	UP("250 late\r\n", "", "", ""),
	END
};

static const struct step s_lost_in_body[] = {
	PLAIN_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n354 go\r\n", ANY, "", ""),
	CL("partial body\r\n", "", "partial body\r\n", ""),
	FAIL(PF_LOST, "reset", "451 4.4.2 *\r\n", "", "close"),
	END
};

/* The body went up, the upstream vanished before answering: never a 250. */
static const struct step s_lost_after_body[] = {
	PLAIN_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n354 go\r\n", ANY, "", ""),
	CL("body\r\n.\r\n", "", "body\r\n.\r\n", ""),
	FAIL(PF_LOST, "closed", "4?? 4.4.2 *\r\n", "", "close"),
	END
};

static const struct step s_lost_in_bdat[] = {
	CHUNKING_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n", ANY, "", ""),
	CL("BDAT 100 LAST\r\nsome", "", "BDAT 100 LAST\r\nsome", ""),
	FAIL(PF_LOST, "reset", "451 4.4.2 *\r\n", "", "close"),
	END
};

static const struct step s_idle_after_body[] = {
	PLAIN_OPEN,
	CL("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", "", ANY, ""),
	UP("250 Ok\r\n250 Ok\r\n354 go\r\n", ANY, "", ""),
	CL("body\r\n.\r\n", "", "body\r\n.\r\n", ""),
	FAIL(PF_IDLE, NULL, "4?? 4.*\r\n", "", "close"),
	END
};

static const struct step s_lost_after_quit[] = {
	PLAIN_OPEN,
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	FAIL(PF_LOST, "closed", "", "", "close"),
	END
};

static const struct step s_unsolicited_421[] = {
	PLAIN_OPEN,
	UP("421 4.3.2 Service shutting down\r\n", "421 4.3.2 Service shutting down\r\n", "", "close"),
	CL("NOOP\r\n", "", "", ""),
	END
};

static const struct step s_reply_421[] = {
	PLAIN_OPEN,
	CL("MAIL FROM:<a@b>\r\n", "", "MAIL FROM:<a@b>\r\n", ""),
	UP("421-4.4.2 timeout\r\n421 4.4.2 closing\r\n", "421-4.4.2 timeout\r\n421 4.4.2 closing\r\n",
	   "", "close"),
	END
};

static const struct step s_unsolicited_250[] = {
	PLAIN_OPEN,
	UP("250 surprise\r\n", UP_ERR_MID, "", "close"),
	END
};

static const struct step s_shutdown[] = {
	PLAIN_OPEN,
	FAIL(PF_SHUTDOWN, NULL, "421 4.3.2 *\r\n", "", "close"),
	FAIL(PF_LOST, NULL, "", "", ""),
	END
};

static const struct step s_idle[] = {
	PLAIN_OPEN,
	FAIL(PF_IDLE, NULL, "421 4.4.2 *\r\n", "", "close"),
	END
};

static const struct step s_eof_waits_for_replies[] = {
	PLAIN_OPEN,
	CL("NOOP\r\nQUIT\r\n", "", "NOOP\r\nQUIT\r\n", ""),
	CEOF("", "", ""),
	UP("250 Ok\r\n", "250 Ok\r\n", "", ""),
	UP("221 Bye\r\n", "221 Bye\r\n", "", "close"),
	END
};

static const struct step s_eof_idle[] = {
	PLAIN_OPEN,
	CEOF("", "", "close"),
	END
};

static const struct script failure_scripts[] = {
	{ "lost_idle", &P_PLAIN, s_lost_idle, 0 },
	{ "lost_in_body", &P_PLAIN, s_lost_in_body, 0 },
	{ "lost_after_body", &P_PLAIN, s_lost_after_body, 0 },
	{ "lost_in_bdat", &P_PLAIN, s_lost_in_bdat, 0 },
	{ "idle_after_body", &P_PLAIN, s_idle_after_body, 0 },
	{ "lost_after_quit", &P_PLAIN, s_lost_after_quit, 0 },
	{ "unsolicited_421", &P_PLAIN, s_unsolicited_421, 0 },
	{ "reply_421", &P_PLAIN, s_reply_421, 0 },
	{ "unsolicited_250", &P_PLAIN, s_unsolicited_250, 0 },
	{ "shutdown", &P_PLAIN, s_shutdown, 0 },
	{ "idle", &P_PLAIN, s_idle, 0 },
	{ "eof_waits_for_replies", &P_PLAIN, s_eof_waits_for_replies, 0 },
	{ "eof_idle", &P_PLAIN, s_eof_idle, 0 },
};

static void test_failures(void **state)
{
	(void)state;
	RUN_TABLE(failure_scripts);
}

/* Verb separators. Postfix (smtpd_token.c) splits a command on white space (isspace: SP,
 * HT, VT, FF) and skips leading white space, so "DATA<TAB>" and " DATA" are DATA to it. The proxy must not see
 * something else: either it refuses such a line itself (a 5xx, nothing forwarded), or it
 * treats it as the command the upstream will see, so that the message that follows is
 * passed through as data, byte-exact, and never parsed as commands (here "STARTTLS" and
 * "XCLIENT" lines, which the proxy would otherwise answer itself and drop). */
struct verb_case {
	const char *name, *data_cmd;
};

static void test_verb_separators(void **state)
{
	(void)state;
	static const struct verb_case cases[] = {
		{ "data_tab", "DATA\t\r\n" },
		{ "data_leading_space", " DATA\r\n" },
		{ "data_tab_leading", "\tDATA\r\n" },
		{ "data_vt", "DATA\v\r\n" },
		{ "data_ff", "DATA\f\r\n" },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct step refused[] = {
			PLAIN_OPEN,
			CL(cases[i].data_cmd, "5?? *\r\n", "", ""),
			END
		};
		const struct step as_data[] = {
			PLAIN_OPEN,
			CL(cases[i].data_cmd, "", cases[i].data_cmd, ""),
			UP("354 go\r\n", "354 go\r\n", "", ""),
			CL("STARTTLS\r\nXCLIENT ADDR=10.0.0.1\r\nbare\rCR\r\n.\r\n", "",
			   "STARTTLS\r\nXCLIENT ADDR=10.0.0.1\r\nbare\r\nCR\r\n.\r\n", ""),
			UP("250 queued\r\n", "250 queued\r\n", "", ""),
			END
		};
		const struct script a = { cases[i].name, &P_PLAIN, refused, M_WHOLE };
		const struct script b = { cases[i].name, &P_PLAIN, as_data, M_WHOLE };
		quiet = 1;
		int ok = run_script(&a) == 0 || run_script(&b) == 0;
		quiet = 0;
		if (!ok) {
			print_message("%s: neither refused nor handled as DATA; as DATA:\n",
				      cases[i].name);
			run_script(&b);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* Empty reads at every stage change nothing (the session does not deliver them today,
 * but proto.h does not forbid them). Under SANITIZE=1 this also checks that no NULL
 * pointer arithmetic happens on the module's still-empty buffers. */
#define EMPTY_CL { .op = OP_CL, .in = "", .to_client = "", .to_up = "", .acts = "" }
#define EMPTY_UP { .op = OP_UP, .in = "", .to_client = "", .to_up = "", .acts = "" }
static const struct step s_empty_reads[] = {
	EMPTY_CL, EMPTY_UP,
	CONN("", "", ""),
	EMPTY_CL, EMPTY_UP,
	UP(GREET, "", "EHLO proxy.test\r\n", ""),
	EMPTY_UP, EMPTY_CL,
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 go\r\n", "", "", "tls:up"),
	EMPTY_UP,
	TLSU(GREET, "", "ready"),
	EMPTY_CL, EMPTY_UP,
	CL("DATA\r\n", "", "DATA\r\n", ""),
	UP("354 go\r\n", "354 go\r\n", "", ""),
	EMPTY_CL,
	CL("x\r\n.\r\n", "", "x\r\n.\r\n", ""),
	EMPTY_UP,
	END
};

static const struct script empty_scripts[] = {
	{ "empty_reads", &P_INJ_VERIFY, s_empty_reads, M_WHOLE },
};

static void test_empty_reads(void **state)
{
	(void)state;
	RUN_TABLE(empty_scripts);
}

/* ------------------------------------------------------------------ message trace */

/* Feeds bytes to the module from a side; the PA_MESSAGE records it produced are appended
 * to got[*n] (their "to" copied into tos). */
static void trace_feed(void *st, struct proto_actions *a, int side, const char *bytes,
		       struct proto_message *got, char tos[][256], int *n)
{
	proto_smtp_ops.data(st, side, (const uint8_t *)bytes, strlen(bytes), a);
	for (size_t i = 0; i < a->n; i++) {
		if (a->a[i].type != PA_MESSAGE)
			continue;
		assert_true(*n < 8);
		assert_int_equal(proto_message_get(a, &a->a[i], &got[*n]), 0);
		snprintf(tos[*n], 256, "%s", got[*n].to);
		got[*n].to = tos[*n];
		(*n)++;
	}
	proto_actions_clear(a);
}

static void smtp_feed(void *st, struct proto_actions *a, enum proto_side side, const char *d)
{
	proto_smtp_ops.data(st, side, (const uint8_t *)d, strlen(d), a);
	proto_actions_clear(a);
}

/* client_partial (line_timeout): a command line begun and not ended, before the greeting
 * too, and the tail of an overlong line being dropped; not message data, not BDAT octets,
 * not whole lines held while a reply is awaited. */
static void test_client_partial(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	void *st = proto_smtp_ops.create(&P_PLAIN);
	assert_non_null(st);
	assert_non_null(proto_smtp_ops.client_partial);
	assert_int_equal(proto_smtp_ops.client_partial(st), 0);
	proto_smtp_ops.upstream_connected(st, &a);
	proto_actions_clear(&a);
	smtp_feed(st, &a, PROTO_CLIENT, "EH"); /* before the greeting */
	assert_true(proto_smtp_ops.client_partial(st) != 0);
	smtp_feed(st, &a, PROTO_CLIENT, "LO c.test\r\n");
	assert_int_equal(proto_smtp_ops.client_partial(st), 0); /* whole, held for the greeting */
	smtp_feed(st, &a, PROTO_UPSTREAM, GREET);
	assert_int_equal(proto_smtp_ops.client_partial(st), 0);
	smtp_feed(st, &a, PROTO_UPSTREAM, "250-mx.test\r\n250 CHUNKING\r\n");
	smtp_feed(st, &a, PROTO_CLIENT, "MAIL FROM:<s@one.test>\r\nRC");
	uint64_t first = proto_smtp_ops.client_partial(st);
	assert_true(first != 0);
	smtp_feed(st, &a, PROTO_CLIENT, "PT TO:<a@x.test>\r\nDA");
	/* pipelined in reads that end inside lines: each line is another */
	assert_true(proto_smtp_ops.client_partial(st) != 0);
	assert_true(proto_smtp_ops.client_partial(st) != first);
	smtp_feed(st, &a, PROTO_CLIENT, "TA\r\n");
	smtp_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n250 ok\r\n354 go\r\n");
	smtp_feed(st, &a, PROTO_CLIENT, "Subject: a line of the message without its end");
	assert_int_equal(proto_smtp_ops.client_partial(st), 0); /* message data */
	smtp_feed(st, &a, PROTO_CLIENT, "\r\n.\r\n");
	smtp_feed(st, &a, PROTO_UPSTREAM, "250 queued\r\n");
	smtp_feed(st, &a, PROTO_CLIENT,
		  "MAIL FROM:<s@one.test>\r\nRCPT TO:<a@x.test>\r\nBDAT 10 LAST\r\nabc");
	smtp_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n250 ok\r\n");
	assert_int_equal(proto_smtp_ops.client_partial(st), 0); /* chunk octets */
	smtp_feed(st, &a, PROTO_CLIENT, "defghij");
	smtp_feed(st, &a, PROTO_UPSTREAM, "250 queued\r\n");
	assert_int_equal(proto_smtp_ops.client_partial(st), 0);
	/* an overlong line: its tail, dropped as it comes, still counts */
	static char big[SMTP_CMD_MAX + 10];
	memset(big, 'x', sizeof(big) - 1);
	smtp_feed(st, &a, PROTO_CLIENT, big);
	assert_true(proto_smtp_ops.client_partial(st) != 0);
	smtp_feed(st, &a, PROTO_CLIENT, "xx");
	assert_true(proto_smtp_ops.client_partial(st) != 0);
	smtp_feed(st, &a, PROTO_CLIENT, "\r\n");
	assert_int_equal(proto_smtp_ops.client_partial(st), 0);
	proto_smtp_ops.destroy(st);
	proto_actions_free(&a);
}

/* client_in_data (min_data_rate): a DATA body from the 354 to its end marker, a BDAT
 * chunk's octets (also a refused chunk's, skipped), nothing else: not commands, not a DATA
 * awaiting its 354 with the body pipelined behind it, not the wait for the final reply, not
 * a failed session. */
static void test_client_in_data(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	void *st = proto_smtp_ops.create(&P_PLAIN);
	assert_non_null(st);
	assert_non_null(proto_smtp_ops.client_in_data);
	assert_int_equal(proto_smtp_ops.client_in_data(st), 0);
	proto_smtp_ops.upstream_connected(st, &a);
	proto_actions_clear(&a);
	smtp_feed(st, &a, PROTO_UPSTREAM, GREET);
	smtp_feed(st, &a, PROTO_CLIENT, "EHLO c.test\r\n");
	smtp_feed(st, &a, PROTO_UPSTREAM, "250-mx.test\r\n250 CHUNKING\r\n");
	smtp_feed(st, &a, PROTO_CLIENT, "MAIL FROM:<s@one.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 0);
	smtp_feed(st, &a, PROTO_CLIENT, "Subject: early\r\n"); /* before the 354 */
	smtp_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n250 ok\r\n");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 0); /* DATA awaits its 354 */
	smtp_feed(st, &a, PROTO_UPSTREAM, "354 go\r\n");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 1);
	smtp_feed(st, &a, PROTO_CLIENT, "body\r\n.");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 1); /* the marker not whole yet */
	smtp_feed(st, &a, PROTO_CLIENT, "\r\n");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 0); /* awaiting the final reply */
	smtp_feed(st, &a, PROTO_UPSTREAM, "250 queued\r\n");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 0);
	smtp_feed(st, &a, PROTO_CLIENT, "MAIL FROM:<s@one.test>\r\nRCPT TO:<a@x.test>\r\nBDAT 10\r\nabc");
	smtp_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n250 ok\r\n");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 1); /* chunk octets */
	smtp_feed(st, &a, PROTO_CLIENT, "defghij");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 0); /* the chunk is whole */
	smtp_feed(st, &a, PROTO_CLIENT, "BDAT 5 LAST\r\nab");
	assert_int_equal(proto_smtp_ops.client_in_data(st), 1);
	(proto_smtp_ops.fail)(st, PF_LOST, NULL, &a);
	assert_int_equal(proto_smtp_ops.client_in_data(st), 0); /* the session failed */
	proto_smtp_ops.destroy(st);
	proto_actions_free(&a);
}

/* A message record's recipient list holds whole addresses up to SMTP_TO_MAX octets with
 * their commas, then ",..." once: a list of exactly SMTP_TO_MAX is whole, one more address
 * (a short one too) gives the mark, and a further one changes nothing; one octet short of
 * the bound, an address that would pass it is not listed. rcpts counts them all. (Found by
 * fuzz_proto_smtp: the list was cut only once it had passed 2048 octets, so one long
 * address took it to 2,367.) */
static void test_message_to_bound(void **state)
{
	(void)state;
	/* cases 0-2: a list of exactly the bound and 0, 1, 2 addresses more; case 3: a list of
	 * the bound less one, then a 64-octet address */
	for (int c = 0; c <= 3; c++) {
		int extra = c == 3 ? 1 : c;
		size_t first = c == 3 ? 63 : 64, base = first + 31 * 64;
		struct proto_actions a = { 0 };
		void *st = proto_smtp_ops.create(&P_PLAIN);
		assert_non_null(st);
		proto_smtp_ops.upstream_connected(st, &a);
		smtp_feed(st, &a, PROTO_UPSTREAM, GREET);
		smtp_feed(st, &a, PROTO_CLIENT, "EHLO c.test\r\n");
		smtp_feed(st, &a, PROTO_UPSTREAM, "250-mx.test\r\n250 PIPELINING\r\n");
		smtp_feed(st, &a, PROTO_CLIENT, "MAIL FROM:<s@one.test>\r\n");
		smtp_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n");
		/* 32 addresses: the first 64 (or 63) octets, the others 63 and a comma */
		static char want[SMTP_TO_MAX + 1];
		size_t wn = 0;
		int total = 32 + extra;
		for (int i = 0; i < total; i++) {
			char addr[80], line[100];
			int len = i == 0 ? (int)first : i < 32 ? 63 : c == 3 ? 64 : 10;
			snprintf(addr, sizeof(addr), "r%02d%.*s@x.test", i, len - 10,
				 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
			assert_int_equal(strlen(addr), (size_t)len);
			if (i < 32)
				wn += (size_t)snprintf(want + wn, sizeof(want) - wn, "%s%s",
						       i ? "," : "", addr);
			snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", addr);
			smtp_feed(st, &a, PROTO_CLIENT, line);
			smtp_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n");
		}
		assert_int_equal(wn, base);
		smtp_feed(st, &a, PROTO_CLIENT, "DATA\r\n");
		smtp_feed(st, &a, PROTO_UPSTREAM, "354 go\r\n");
		proto_smtp_ops.data(st, PROTO_CLIENT, (const uint8_t *)"x\r\n.\r\n", 6, &a);
		proto_actions_clear(&a);
		proto_smtp_ops.data(st, PROTO_UPSTREAM, (const uint8_t *)"250 queued\r\n", 12, &a);
		int found = 0;
		for (size_t i = 0; i < a.n; i++) {
			struct proto_message m;
			if (a.a[i].type != PA_MESSAGE)
				continue;
			found++;
			assert_int_equal(proto_message_get(&a, &a.a[i], &m), 0);
			assert_int_equal(m.rcpts, (unsigned)total);
			if (extra == 0) {
				assert_string_equal(m.to, want);
			} else {
				assert_int_equal(strlen(m.to), base + 4);
				assert_memory_equal(m.to, want, base);
				assert_string_equal(m.to + base, ",...");
			}
		}
		assert_int_equal(found, 1);
		proto_smtp_ops.destroy(st);
		proto_actions_free(&a);
	}
}

/* event=message's record: one per message, at its final reply, also for two messages
 * pipelined in one read (each keeps its own envelope); only accepted recipients count; the
 * size is the data without the end marker; a DATA refused for want of recipients ends its
 * transaction with a record; LMTP counts the 2xx per-recipient replies. */
static void test_message_trace(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	struct proto_message got[8];
	char tos[8][256];
	int n = 0;
	void *st = proto_smtp_ops.create(&P_PLAIN);
	assert_non_null(st);
	proto_smtp_ops.upstream_connected(st, &a);
	proto_actions_clear(&a);
	trace_feed(st, &a, PROTO_UPSTREAM, GREET, got, tos, &n);
	trace_feed(st, &a, PROTO_CLIENT,
		   "EHLO c.test\r\nMAIL FROM:<s@one.test>\r\nRCPT TO:<a@x.test>\r\n"
		   "RCPT TO:<bad@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n", got, tos, &n);
	trace_feed(st, &a, PROTO_UPSTREAM,
		   "250-mx.test\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n"
		   "354 go\r\n", got, tos, &n);
	/* 12 octets of data, then the end, then a second message, all in one read */
	trace_feed(st, &a, PROTO_CLIENT,
		   "Subject: 1\r\n\r\nhi\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<c@z.test>\r\nDATA\r\n",
		   got, tos, &n);
	assert_int_equal(n, 0); /* nothing before the final reply */
	trace_feed(st, &a, PROTO_UPSTREAM,
		   "250 2.0.0 Ok: queued as 4Xyz\r\n250 ok\r\n250 ok\r\n354 go\r\n", got, tos, &n);
	assert_int_equal(n, 1);
	assert_string_equal(got[0].from, "s@one.test");
	assert_int_equal(got[0].rcpts, 2);
	assert_string_equal(got[0].to, "a@x.test,b@y.test");
	assert_int_equal(got[0].size, strlen("Subject: 1\r\n\r\nhi\r\n"));
	assert_int_equal(got[0].code, 250);
	assert_int_equal(got[0].delivered, 2);
	assert_string_equal(got[0].reply, "250 2.0.0 Ok: queued as 4Xyz");
	trace_feed(st, &a, PROTO_CLIENT, "x\r\n.\r\n", got, tos, &n);
	trace_feed(st, &a, PROTO_UPSTREAM, "451-4.3.0 busy\r\n451 4.3.0 try later\r\n", got,
		   tos, &n);
	assert_int_equal(n, 2);
	assert_string_equal(got[1].from, "");
	assert_string_equal(got[1].to, "c@z.test");
	assert_int_equal(got[1].code, 451);
	assert_int_equal(got[1].delivered, 0);
	assert_string_equal(got[1].reply, "451 4.3.0 try later"); /* the last line */
	/* every recipient refused: DATA's refusal ends the transaction */
	trace_feed(st, &a, PROTO_CLIENT, "MAIL FROM:<s@one.test>\r\nRCPT TO:<q@x.test>\r\nDATA\r\n",
		   got, tos, &n);
	trace_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n",
		   got, tos, &n);
	assert_int_equal(n, 3);
	assert_int_equal(got[2].rcpts, 0);
	assert_int_equal(got[2].code, 554);
	assert_int_equal(got[2].size, 0);
	proto_smtp_ops.destroy(st);

	/* BDAT: the chunks' octets, the message ends with the LAST one */
	n = 0;
	st = proto_smtp_ops.create(&P_PLAIN);
	proto_smtp_ops.upstream_connected(st, &a);
	proto_actions_clear(&a);
	trace_feed(st, &a, PROTO_UPSTREAM, GREET, got, tos, &n);
	trace_feed(st, &a, PROTO_CLIENT, "EHLO c.test\r\n", got, tos, &n);
	trace_feed(st, &a, PROTO_UPSTREAM, "250-mx.test\r\n250 CHUNKING\r\n", got, tos, &n);
	trace_feed(st, &a, PROTO_CLIENT,
		   "MAIL FROM:<s@one.test>\r\nRCPT TO:<a@x.test>\r\nBDAT 5\r\nabcdeBDAT 3 LAST\r\nfgh",
		   got, tos, &n);
	trace_feed(st, &a, PROTO_UPSTREAM, "250 ok\r\n250 ok\r\n250 5 octets\r\n250 queued\r\n",
		   got, tos, &n);
	assert_int_equal(n, 1);
	assert_int_equal(got[0].size, 8);
	assert_string_equal(got[0].reply, "250 queued");
	proto_smtp_ops.destroy(st);

	/* LMTP: three accepted recipients, two delivered */
	n = 0;
	st = proto_smtp_ops.create(&P_PLAIN_LMTP);
	proto_smtp_ops.upstream_connected(st, &a);
	proto_actions_clear(&a);
	trace_feed(st, &a, PROTO_UPSTREAM, GREET, got, tos, &n);
	trace_feed(st, &a, PROTO_CLIENT,
		   "LHLO c.test\r\nMAIL FROM:<s@one.test>\r\nRCPT TO:<a@x.test>\r\n"
		   "RCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n", got, tos, &n);
	trace_feed(st, &a, PROTO_UPSTREAM,
		   "250-mx.test\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n"
		   "354 go\r\n", got, tos, &n);
	trace_feed(st, &a, PROTO_CLIENT, "hi\r\n.\r\n", got, tos, &n);
	trace_feed(st, &a, PROTO_UPSTREAM, "250 a ok\r\n452 b full\r\n", got, tos, &n);
	assert_int_equal(n, 0);
	trace_feed(st, &a, PROTO_UPSTREAM, "250 c ok\r\n", got, tos, &n);
	assert_int_equal(n, 1);
	assert_int_equal(got[0].rcpts, 3);
	assert_int_equal(got[0].delivered, 2);
	assert_string_equal(got[0].reply, "250 c ok");
	proto_smtp_ops.destroy(st);
	proto_actions_free(&a);
}

/* ------------------------------------------------------------------ xclient */

static const struct step s_xclient[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\nMAIL FROM:<a@b>\r\n", "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250-XCLIENT NAME ADDR PORT PROTO HELO\r\n250 SIZE\r\n", "",
	   "XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP HELO=client.test\r\n", ""),
	UP("220 mx.test ESMTP\r\n", "", "EHLO client.test\r\nMAIL FROM:<a@b>\r\n", ""),
	UP("250-mx.test\r\n250-XCLIENT NAME ADDR\r\n250 SIZE\r\n", "250-mx.test\r\n250 SIZE\r\n", "", ""),
	UP("250 2.1.0 Ok\r\n", "250 2.1.0 Ok\r\n", "", ""),
	/* a second EHLO: no second XCLIENT */
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	END
};

static const struct step s_xclient_partial[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("HELO client.test\r\n", "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 XCLIENT ADDR PROTO HELO\r\n", "",
	   "XCLIENT ADDR=IPV6:2001:db8::7 PROTO=SMTP HELO=client.test\r\n", ""),
	UP("220 mx.test ESMTP\r\n", "", "HELO client.test\r\n", ""),
	UP("250 mx.test\r\n", "250 mx.test\r\n", "", ""),
	END
};

static const struct step s_xclient_not_offered[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 SIZE\r\n", "", "EHLO client.test\r\n", ""),
	UP("250-mx.test\r\n250 SIZE\r\n", "250-mx.test\r\n250 SIZE\r\n", "", ""),
	END
};

static const struct step s_xclient_rejected[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 XCLIENT ADDR\r\n", "", "XCLIENT ADDR=192.0.2.7\r\n", ""),
	UP("550 5.7.0 not authorized\r\n", "", "EHLO client.test\r\n", ""),
	UP("250 mx.test\r\n", "250 mx.test\r\n", "", ""),
	END
};

static const struct step s_xclient_named[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 XCLIENT NAME ADDR\r\n", "",
	   "XCLIENT NAME=mail+2B1.client.example ADDR=192.0.2.7\r\n", ""),
	END
};

/* the name is still being looked up: XCLIENT waits (test_xclient_name_wait goes on) */
static const struct step s_xclient_pending[] = {
	CONN("", "", ""),
	UP(GREET, GREET, "", "ready"),
	CL("EHLO client.test\r\n", "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 XCLIENT NAME ADDR\r\n", "", "", ""),
	CL("MAIL FROM:<a@b>\r\n", "", "", ""),
	END
};

static const struct script xclient_scripts[] = {
	{ "xclient_named", &P_XCLIENT_NAMED, s_xclient_named, 0 },
	{ "xclient_name_pending", &P_XCLIENT_PENDING, s_xclient_pending, 0 },
	{ "xclient", &P_XCLIENT, s_xclient, 0 },
	{ "xclient_partial_v6", &P_XCLIENT6, s_xclient_partial, 0 },
	{ "xclient_not_offered", &P_XCLIENT, s_xclient_not_offered, 0 },
	{ "xclient_rejected", &P_XCLIENT, s_xclient_rejected, 0 },
};

/* XCLIENT waits for the client's host name, then goes up with it, and the client's held
 * EHLO and MAIL follow XCLIENT's 220; an upstream without NAME among its attributes does not
 * wait. */
static void xclient_feed(void *st, struct proto_actions *a, int side, const char *bytes,
			 struct sbuf *up)
{
	if (bytes)
		proto_smtp_ops.data(st, side, (const uint8_t *)bytes, strlen(bytes), a);
	for (size_t i = 0; i < a->n; i++)
		if (a->a[i].type == PA_SEND && a->a[i].side == PROTO_UPSTREAM)
			sb_add(up, a->buf + a->a[i].off, a->a[i].len);
	proto_actions_clear(a);
}

static void test_xclient_name_wait(void **state)
{
	(void)state;
	char name[256] = "";
	struct proto_params p = P_XCLIENT_PENDING;
	p.client_name = name;
	struct proto_actions a = { 0 };
	struct sbuf up = { 0 };
	void *st = proto_smtp_ops.create(&p);
	proto_smtp_ops.upstream_connected(st, &a);
	xclient_feed(st, &a, PROTO_UPSTREAM, GREET, &up);
	xclient_feed(st, &a, PROTO_CLIENT, "EHLO client.test\r\nMAIL FROM:<a@b>\r\n", &up);
	xclient_feed(st, &a, PROTO_UPSTREAM, "250-mx.test\r\n250 XCLIENT NAME ADDR\r\n", &up);
	assert_string_equal(up.p, "EHLO proxy.test\r\n"); /* waiting */
	snprintf(name, sizeof(name), "late.example");
	proto_smtp_ops.client_name_ready(st, &a);
	xclient_feed(st, &a, PROTO_CLIENT, NULL, &up);
	assert_string_equal(up.p, "EHLO proxy.test\r\nXCLIENT NAME=late.example ADDR=192.0.2.7\r\n");
	xclient_feed(st, &a, PROTO_UPSTREAM, "220 mx.test ESMTP\r\n", &up);
	assert_string_equal(up.p, "EHLO proxy.test\r\nXCLIENT NAME=late.example ADDR=192.0.2.7\r\n"
				  "EHLO client.test\r\nMAIL FROM:<a@b>\r\n");
	proto_smtp_ops.client_name_ready(st, &a); /* a second call changes nothing */
	assert_int_equal(a.n, 0);
	proto_smtp_ops.destroy(st);
	sb_free(&up);
	proto_actions_free(&a);
}

/* ------------------------------------------------------------------ late binding */

#define LATE_EHLO_REPLY                                                                  \
	"250-proxy.test\r\n250-PIPELINING\r\n250-SIZE\r\n250-8BITMIME\r\n"            \
	"250 ENHANCEDSTATUSCODES\r\n"
/* greeted by the module, EHLO and MAIL answered by it, the first RCPT binds */
#define LATE_OPEN                                                                         \
	LATE("220 proxy.test ESMTP\r\n", "", ""),                                         \
	CL("EHLO app.test\r\n", LATE_EHLO_REPLY, "", ""),                                  \
	CL("MAIL FROM:<a@app.test> SIZE=100\r\n", "250 2.1.0 Ok\r\n", "", ""),             \
	CL("RCPT TO:<Bob@Mail.Example.NET.>\r\n", "", "", "bind:mail.example.net")
/* the chosen MX: greeting, STARTTLS, TLS, then the replayed EHLO */
#define LATE_SECURE                                                                       \
	CONN("", "", ""), UP(GREET, "", "EHLO proxy.test\r\n", ""),                       \
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""), UP("220 go\r\n", "", "", "tls:up"),          \
	TLSU("", "EHLO app.test\r\n", "")

static const struct step s_late_basic[] = {
	LATE_OPEN,
	/* pipelined after the RCPT: held until the upstream is chosen and secured */
	CL("DATA\r\n", "", "", ""),
	LATE_SECURE,
	UP("250-mx.test\r\n250-CHUNKING\r\n250 8BITMIME\r\n", "",
	   "MAIL FROM:<a@app.test> SIZE=100\r\n", ""),
	UP("250 2.1.0 Ok\r\n", "", "RCPT TO:<Bob@Mail.Example.NET.>\r\nDATA\r\n", "ready"),
	UP("250 2.1.5 Ok\r\n354 Go\r\n", "250 2.1.5 Ok\r\n354 Go\r\n", "", ""),
	CL("Subject: x\r\n\r\nhi\r\n.\r\n", "", "Subject: x\r\n\r\nhi\r\n.\r\n", ""),
	UP("250 2.0.0 queued\r\n", "250 2.0.0 queued\r\n", "", ""),
	/* CHUNKING was never offered to this client */
	CL("BDAT 3 LAST\r\nabc", "502 5.5.1 *\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("221 Bye\r\n", "221 Bye\r\n", "", "close"),
	END
};

/* Later recipients: the bound domain goes up at once, another domain waits for the session's
 * verdict (one at a time: what follows waits too). */
static const struct step s_late_domains[] = {
	LATE_OPEN,
	LATE_SECURE,
	UP("250 mx.test\r\n", "", "MAIL FROM:<a@app.test> SIZE=100\r\n", ""),
	UP("250 2.1.0 Ok\r\n", "", "RCPT TO:<Bob@Mail.Example.NET.>\r\n", "ready"),
	UP("250 2.1.5 Ok\r\n", "250 2.1.5 Ok\r\n", "", ""),
	CL("RCPT TO:<c@mail.example.net>\r\n", "", "RCPT TO:<c@mail.example.net>\r\n", ""),
	UP("250 2.1.5 Ok\r\n", "250 2.1.5 Ok\r\n", "", ""),
	CL("RCPT TO:<d@other.example>\r\nRCPT TO:<e@third.example>\r\nDATA\r\n", "", "",
	   "check:other.example"),
	VERDICT(1, "", "", "RCPT TO:<d@other.example>\r\n", "check:third.example"),
	VERDICT(0, "450 4.7.5 policy not met", "", "DATA\r\n", ""),
	UP("250 2.1.5 Ok\r\n", "250 2.1.5 Ok\r\n450 4.7.5 policy not met\r\n", "", ""),
	UP("354 Go\r\n", "354 Go\r\n", "", ""),
	CL(".\r\n", "", ".\r\n", ""),
	UP("250 2.0.0 queued\r\n", "250 2.0.0 queued\r\n", "", ""),
	/* approved once, other.example goes up at once in the next transaction */
	CL("MAIL FROM:<>\r\nRCPT TO:<x@other.example>\r\n", "",
	   "MAIL FROM:<>\r\nRCPT TO:<x@other.example>\r\n", ""),
	END
};

/* The domain cannot be bound (no MX, DNS failure, policy): that recipient's reply, and the
 * module is unbound again; the next recipient binds anew. */
static const struct step s_late_bind_failed[] = {
	LATE_OPEN,
	CL("RCPT TO:<c@b.example>\r\n", "", "", ""),
	BINDFAIL("550 5.1.2 Recipient domain not found", "550 5.1.2 Recipient domain not found\r\n",
		 "", "bind:b.example"),
	LATE_SECURE,
	UP("250 mx.test\r\n", "", "MAIL FROM:<a@app.test> SIZE=100\r\n", ""),
	UP("250 2.1.0 Ok\r\n", "", "RCPT TO:<c@b.example>\r\n", "ready"),
	END
};

/* What the upstream refuses of the replay answers the waiting RCPT. */
static const struct step s_late_replay_refused[] = {
	LATE_OPEN,
	LATE_SECURE,
	UP("250 mx.test\r\n", "", "MAIL FROM:<a@app.test> SIZE=100\r\n", ""),
	UP("552 5.3.4 Message size exceeds fixed limit\r\n",
	   "552 5.3.4 Message size exceeds fixed limit\r\n", "", "ready"),
	CL("RCPT TO:<x@mail.example.net>\r\n", "", "RCPT TO:<x@mail.example.net>\r\n", ""),
	END
};

static const struct step s_late_ehlo_refused[] = {
	LATE_OPEN,
	LATE_SECURE,
	UP("554 5.7.1 go away\r\n", "451 4.4.2 *\r\n", "", "ready"),
	END
};

/* enforce: an MX without STARTTLS gets nothing of the client's, the client a 421 4.7.0 */
static const struct step s_late_no_starttls[] = {
	LATE_OPEN,
	CL("DATA\r\nSecret: stuff\r\n", "", "", ""),
	CONN("", "", ""), UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 8BITMIME\r\n", "421 4.7.0 *\r\n", "QUIT\r\n", "close"),
	END
};

/* no policy (may): an MX without STARTTLS takes the replay in plaintext */
static const struct step s_late_may_plain[] = {
	LATE_OPEN,
	CONN("", "", ""), UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP("250-mx.test\r\n250 8BITMIME\r\n", "", "EHLO app.test\r\n", ""),
	UP("250 mx.test\r\n", "", "MAIL FROM:<a@app.test> SIZE=100\r\n", ""),
	END
};

/* What the module answers itself before an upstream exists. */
static const struct step s_late_commands[] = {
	LATE("220 proxy.test ESMTP\r\n", "", ""),
	CL("RCPT TO:<a@b.example>\r\n", "503 5.5.1 Need MAIL command\r\n", "", ""),
	CL("DATA\r\n", "503 5.5.1 Need MAIL command\r\n", "", ""),
	CL("HELO app\r\n", "250 proxy.test\r\n", "", ""),
	CL("NOOP\r\n", "250 2.0.0 Ok\r\n", "", ""),
	CL("VRFY root\r\n", "502 5.5.1 Command not implemented\r\n", "", ""),
	CL("AUTH PLAIN AAAA\r\n", "502 5.5.1 Command not implemented\r\n", "", ""),
	CL("STARTTLS\r\n", "502 5.5.1 STARTTLS is not available\r\n", "", ""),
	CL("MAIL FROM:a@b\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>\r\n", "", ""),
	CL("MAIL FROM:<a@b.example> SMTPUTF8\r\n", "555 5.5.4 *\r\n", "", ""),
	CL("MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n", "555 5.5.4 *\r\n", "", ""),
	CL("MAIL FROM:<a@b.example> BODY=8BITMIME\r\n", "250 2.1.0 Ok\r\n", "", ""),
	CL("MAIL FROM:<c@b.example>\r\n", "503 5.5.1 Nested MAIL command\r\n", "", ""),
	CL("DATA\r\n", "554 5.5.1 No valid recipients\r\n", "", ""),
	CL("BDAT 4\r\nDATA", "554 5.5.1 No valid recipients\r\n", "", ""),
	CL("RCPT TO:<x@[192.0.2.1]>\r\n", "501 5.1.3 Bad recipient address syntax\r\n", "", ""),
	CL("RCPT TO:<postmaster>\r\n", "501 5.1.3 Bad recipient address syntax\r\n", "", ""),
	CL("RSET\r\n", "250 2.0.0 Ok\r\n", "", ""),
	CL("RCPT TO:<a@b.example>\r\n", "503 5.5.1 Need MAIL command\r\n", "", ""),
	CL("QUIT\r\n", "221 2.0.0 proxy.test Bye\r\n", "", "close"),
	END
};

/* STARTTLS toward the client before the upstream exists: what came before it is forgotten
 * (the EHLO), and a new EHLO is required inside TLS. */
static const struct step s_late_client_tls[] = {
	LATE("220 proxy.test ESMTP\r\n", "", ""),
	CL("EHLO app.test\r\n",
	   "250-proxy.test\r\n250-PIPELINING\r\n250-SIZE\r\n250-8BITMIME\r\n"
	   "250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n", "", ""),
	CL("MAIL FROM:<a@app.test>\r\n", C530, "", ""),
	CL("STARTTLS\r\nMAIL FROM:<injected@evil>\r\n", C220TLS, "", "tls:client"),
	TLSC("", "", ""),
	CL("MAIL FROM:<a@app.test>\r\n", "503 5.5.1 Send EHLO or HELO first\r\n", "", ""),
	CL("EHLO tls.app.test\r\n", LATE_EHLO_REPLY, "", ""),
	CL("MAIL FROM:<a@app.test>\r\nRCPT TO:<b@c.example>\r\n", "250 2.1.0 Ok\r\n", "",
	   "bind:c.example"),
	CONN("", "", ""), UP(GREET, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""), UP("220 go\r\n", "", "", "tls:up"),
	TLSU("", "EHLO tls.app.test\r\n", ""),
	END
};

static const struct script late_scripts[] = {
	{ "late basic", &P_LATE, s_late_basic, 0 },
	{ "late domains", &P_LATE, s_late_domains, 0 },
	{ "late bind failed", &P_LATE, s_late_bind_failed, 0 },
	{ "late replay refused", &P_LATE, s_late_replay_refused, 0 },
	{ "late ehlo refused", &P_LATE, s_late_ehlo_refused, 0 },
	{ "late no starttls", &P_LATE, s_late_no_starttls, 0 },
	{ "late may plain", &P_LATE_MAY, s_late_may_plain, 0 },
	{ "late commands", &P_LATE, s_late_commands, 0 },
	{ "late client tls", &P_LATE_TERM, s_late_client_tls, 0 },
};

static void test_late(void **state)
{
	(void)state;
	RUN_TABLE(late_scripts);
}

/* ------------------------------------------------------------------ greeting = local */

#define DEFER_GREET "220 proxy.test ESMTP\r\n"

/* A partial line costs no upstream; the first whole one asks for it and waits, with what
 * follows, until the upstream is ready; the upstream's greeting is not shown again, its
 * EHLO reply is. */
static const struct step s_defer_plain[] = {
	LATE(DEFER_GREET, "", ""),
	CL("EHLO client", "", "", ""),
	CL(".test\r\n", "", "", "connect"),
	CL("MAIL FROM:<a@client.test>\r\n", "", "", ""),
	CONN("", "", ""),
	UP(GREET2, "", "EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n", "ready"),
	UP("250-mx.test\r\n250 SIZE 1000\r\n250 2.1.0 Ok\r\n",
	   "250-mx.test\r\n250 SIZE 1000\r\n250 2.1.0 Ok\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("221 2.0.0 Bye\r\n", "221 2.0.0 Bye\r\n", "", "close"),
	END
};

/* QUIT before anything else: answered here, no upstream at all. */
static const struct step s_defer_quit[] = {
	LATE(DEFER_GREET, "", ""),
	CL("quit\r\n", "221 2.0.0 proxy.test Bye\r\n", "", "close"),
	END
};

/* The upstream cannot be reached, or goes before its greeting: the client's first command
 * gets the greeting stage's 421 4.4.1. */
static const struct step s_defer_unreachable[] = {
	LATE(DEFER_GREET, "", ""),
	CL("EHLO client.test\r\n", "", "", "connect"),
	FAIL(PF_UNREACHABLE, NULL, "421 4.4.1 proxy.test Upstream server unreachable*\r\n", "",
	     "close"),
	END
};
static const struct step s_defer_lost[] = {
	LATE(DEFER_GREET, "", ""),
	CL("EHLO client.test\r\n", "", "", "connect"),
	CONN("", "", ""),
	FAIL(PF_LOST, NULL, "421 4.4.1 proxy.test Upstream server unreachable*\r\n", "",
	     "close"),
	END
};

/* A plaintext upstream that refuses service answers the client's command in its words. */
static const struct step s_defer_refused[] = {
	LATE(DEFER_GREET, "", ""),
	CL("EHLO client.test\r\n", "", "", "connect"),
	CONN("", "", ""),
	UP("554 5.7.1 No service for you\r\n", "554 5.7.1 No service for you\r\n", "", "close"),
	END
};

/* inject: nothing of the client goes up before TLS (the harness checks every byte), the
 * upstream's unauthenticated greeting is never shown. */
static const struct step s_defer_inject[] = {
	LATE(DEFER_GREET, "", ""),
	CL("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n", "", "", "connect"),
	CONN("", "", ""),
	UP(GREET2, "", "EHLO proxy.test\r\n", ""),
	UP(CAPS_TLS, "", "STARTTLS\r\n", ""),
	UP("220 2.0.0 Go ahead\r\n", "", "", "tls:up"),
	TLSU("", "EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n", "ready"),
	UP("250-mx.test\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n250 2.1.0 Ok\r\n",
	   "250-mx.test\r\n250 AUTH PLAIN\r\n250 2.1.0 Ok\r\n", "", ""),
	END
};

/* terminate: a client that pipelines a command after its STARTTLS while the upstream is
 * still being reached: that command never reaches the upstream (nor anything else of it
 * from before the handshake). */
static const struct step s_defer_term_injection[] = {
	LATE(DEFER_GREET, "", ""),
	CL("EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n", "", "", "connect"),
	CONN("", "", ""),
	UP(GREET, "", "EHLO client.test\r\n", "ready"),
	UP("250-mx.test\r\n250 8BITMIME\r\n",
	   "250-mx.test\r\n250-8BITMIME\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n",
	   "", "tls:client"),
	/* a fresh session inside TLS: RSET upstream, its reply swallowed; the MAIL is gone */
	TLSC("", "RSET\r\n", ""),
	UP("250 2.0.0 Ok\r\n", "", "", ""),
	CL("EHLO client.test\r\n", "", "EHLO client.test\r\n", ""),
	UP("250 mx.test\r\n", "250 mx.test\r\n", "", ""),
	END
};

static const struct step s_defer_lmtp[] = {
	LATE("220 proxy.test LMTP\r\n", "", ""),
	CL("LHLO client.test\r\n", "", "", "connect"),
	CONN("", "", ""),
	UP("220 lmtp.test LMTP ready\r\n", "", "LHLO client.test\r\n", "ready"),
	END
};

static const struct script defer_scripts[] = {
	{ "defer plain", &P_DEFER, s_defer_plain, 0 },
	{ "defer quit", &P_DEFER, s_defer_quit, 0 },
	{ "defer unreachable", &P_DEFER, s_defer_unreachable, 0 },
	{ "defer lost", &P_DEFER, s_defer_lost, 0 },
	{ "defer refused", &P_DEFER, s_defer_refused, 0 },
	{ "defer inject", &P_DEFER_INJ, s_defer_inject, 0 },
	{ "defer terminate injection", &P_DEFER_TERM, s_defer_term_injection, 0 },
	{ "defer lmtp", &P_DEFER_LMTP, s_defer_lmtp, 0 },
};

static void test_defer(void **state)
{
	(void)state;
	RUN_TABLE(defer_scripts);
	/* A line over the bound (its tail "QUIT" is not a command) gets its 500 and no
	 * upstream; the next line asks for one. */
	struct sbuf l = { 0 };
	sb_adds(&l, "NOOP ");
	for (int i = 0; i < SMTP_CMD_MAX; i++)
		sb_adds(&l, "a");
	sb_adds(&l, "QUIT\r\n");
	const struct step s[] = {
		LATE(DEFER_GREET, "", ""),
		{ .op = OP_CL, .in = l.p, .inlen = l.n, .to_client = "500 5.5.2 Line too long\r\n",
		  .to_up = "", .acts = "" },
		CL("NOOP\r\n", "", "", "connect"),
		END
	};
	const struct script sc[] = { { "defer long line", &P_DEFER, s, 0 } };
	RUN_TABLE(sc);
	sb_free(&l);
}

struct domain_case {
	const char *line;
	const char *want; /* NULL: -EINVAL */
};

static void test_rcpt_domain(void **state)
{
	(void)state;
	char longlabel[120], longname[300];
	snprintf(longlabel, sizeof longlabel, "RCPT TO:<a@%0*d.example>", 64, 0);
	snprintf(longname, sizeof longname, "RCPT TO:<a@");
	for (int i = 0; i < 26; i++)
		strcat(longname, "abcdefghi.");
	strcat(longname, "example>");
	/* SMTP_DOMAIN_MAX at its edge: 253 octets (a trailing dot not counted), 254 */
	char d253[300], d254[300], rcpt253[320], rcpt253dot[320], rcpt254[320], label63[120];
	d253[0] = '\0';
	for (int i = 0; i < 25; i++)
		strcat(d253, "abcdefghi.");
	snprintf(d254, sizeof d254, "%sexam", d253);
	strcat(d253, "exa");
	snprintf(rcpt253, sizeof rcpt253, "RCPT TO:<a@%s>", d253);
	snprintf(rcpt253dot, sizeof rcpt253dot, "RCPT TO:<a@%s.>", d253);
	snprintf(rcpt254, sizeof rcpt254, "RCPT TO:<a@%s>", d254);
	char label63_want[100];
	snprintf(label63, sizeof label63, "RCPT TO:<a@%0*d.example>", 63, 0);
	snprintf(label63_want, sizeof label63_want, "%0*d.example", 63, 0);
	assert_int_equal(strlen(d253), SMTP_DOMAIN_MAX);
	const struct domain_case cases[] = {
		{ rcpt253, d253 },
		{ rcpt253dot, d253 },
		{ rcpt254, NULL },
		{ label63, label63_want },
		{ "RCPT TO:<bob@example.net>", "example.net" },
		{ "rcpt to:<Bob@EXAMPLE.Net.>", "example.net" },
		{ "RCPT TO: <bob@example.net>", "example.net" },
		{ "RCPT TO:<bob@example.net> NOTIFY=NEVER ORCPT=rfc822;x@y", "example.net" },
		{ "RCPT TO:<\"a@b>c\"@example.net>", "example.net" },
		{ "RCPT TO:<\"a\\\"@x\"@mx-1.example.net>", "mx-1.example.net" },
		{ "RCPT TO:<@relay.example,@r2.example:bob@dest.example>", "dest.example" },
		{ "RCPT TO:<xn--bcher-kva.example@xn--bcher-kva.example>", "xn--bcher-kva.example" },
		{ "RCPT TO:<a@localhost>", "localhost" },
		{ "RCPT TO:<postmaster>", NULL },
		{ "RCPT TO:<>", NULL },
		{ "RCPT TO:bob@example.net", NULL },
		{ "RCPT TO:<bob@example.net", NULL },
		{ "RCPT TO:<bob@>", NULL },
		{ "RCPT TO:<bob@.>", NULL },
		{ "RCPT TO:<bob@[192.0.2.1]>", NULL },
		{ "RCPT TO:<bob@exa mple.net>", NULL },
		{ "RCPT TO:<bob@-x.example>", NULL },
		{ "RCPT TO:<bob@x-.example>", NULL },
		{ "RCPT TO:<bob@a..example>", NULL },
		{ "RCPT TO:<bob@ex_ample.net>", NULL },
		{ "RCPT TO:<bob@b\xc3\xbc" "cher.example>", NULL },
		{ "RCPT TO:<@relay.example bob@x.example>", NULL },
		{ "MAIL FROM:<bob@example.net>", NULL },
		{ longlabel, NULL },
		{ longname, NULL },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char out[SMTP_DOMAIN_MAX + 1] = "";
		int rc = smtp_rcpt_domain(cases[i].line, strlen(cases[i].line), out, sizeof out);
		if (cases[i].want) {
			if (rc != 0 || strcmp(out, cases[i].want))
				print_message("%s: rc %d, \"%s\"\n", cases[i].line, rc, out);
			assert_int_equal(rc, 0);
			assert_string_equal(out, cases[i].want);
		} else {
			if (rc != -EINVAL)
				print_message("%s: accepted as \"%s\"\n", cases[i].line, out);
			assert_int_equal(rc, -EINVAL);
		}
	}
}

static void test_xclient(void **state)
{
	(void)state;
	RUN_TABLE(xclient_scripts);
}

/* ------------------------------------------------------------------ main */

int main(void)
{
	log_setup(LOG_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_line_has_keyword),
		cmocka_unit_test(test_rewrite_ehlo),
		cmocka_unit_test(test_rewrite_ehlo_many_lines),
		cmocka_unit_test(test_inject),
		cmocka_unit_test(test_inject_oversized),
		cmocka_unit_test(test_terminate),
		cmocka_unit_test(test_commands),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_bounds_edge),
		cmocka_unit_test(test_data_large),
		cmocka_unit_test(test_smuggling),
		cmocka_unit_test(test_body_table),
		cmocka_unit_test(test_failures),
		cmocka_unit_test(test_xclient),
		cmocka_unit_test(test_message_trace),
		cmocka_unit_test(test_message_to_bound),
		cmocka_unit_test(test_xclient_name_wait),
		cmocka_unit_test(test_late),
		cmocka_unit_test(test_defer),
		cmocka_unit_test(test_rcpt_domain),
		cmocka_unit_test(test_empty_reads),
		cmocka_unit_test(test_verb_separators),
		cmocka_unit_test(test_client_partial),
		cmocka_unit_test(test_client_in_data),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
