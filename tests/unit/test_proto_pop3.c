/* test_proto_pop3.c - the POP3 STLS state machine (proto_pop3_ops) and its pure helpers
 * (pop3_strip_timestamp, pop3_capa_line_shown), table-driven.
 *
 * The harness is the one of test_proto_smtp.c: a script is a list of steps (upstream
 * connected, bytes from the client or the upstream, TLS done on a side, client EOF,
 * upstream failure, retry); for each step what the module sent to each side and its other
 * actions ("tls:client", "tls:up", "ready", "close") are compared with the expectations
 * ('*' matches any run of bytes). Every script runs fed whole, one byte at a time, and
 * split in two at every position. Invariants checked on every run: no byte to a side
 * between PA_STARTTLS and tls_done on it, "+OK Begin TLS negotiation" / "STLS" right
 * before PA_STARTTLS, one PA_CLOSE and nothing after it, and (upstream_tls = starttls under
 * encrypt or stricter, enforce) only the module's own CAPA/STLS/QUIT upstream before
 * tls_done(UPSTREAM). */
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
#include "proto_pop3.h"

/* ------------------------------------------------------------------ small helpers */
#include "unit_script.h"

/* ------------------------------------------------------------------ the harness */

enum op { OP_END, OP_CONN, OP_CL, OP_UP, OP_TLSC, OP_TLSU, OP_EOF, OP_FAIL, OP_RETRY,
	  OP_RETRY_TLS };

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
	(void)p;
	const char *own[] = { "CAPA\r\n", "STLS\r\n", "QUIT\r\n", "QUIT\r\n" };
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
			    !ends_with(&r->all_client, "+OK Begin TLS negotiation\r\n"))
				run_fail(r, stepno, "PA_STARTTLS(client) not right after +OK Begin TLS negotiation");
			if (x->side == PROTO_UPSTREAM && !ends_with(&r->all_up, "STLS\r\n"))
				run_fail(r, stepno, "PA_STARTTLS(up) not right after STLS");
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
		case PA_BIND:
		case PA_CHECK:
			sb_adds(&r->sc_acts, x->type == PA_BIND ? " bind:" : " check:");
			sb_add(&r->sc_acts, a->buf + x->off, x->len);
			break;
		case PA_MESSAGE:
			run_fail(r, stepno, "PA_MESSAGE from POP3");
			break;
		case PA_CONNECT:
			run_fail(r, stepno, "PA_CONNECT from POP3");
			break;
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
			proto_pop3_ops.data(r->st, side, (const uint8_t *)d + i, 1, &r->a);
			collect(r, stepno);
		}
	} else if (mode == M_SPLIT && splitpos < n) {
		proto_pop3_ops.data(r->st, side, (const uint8_t *)d, splitpos, &r->a);
		collect(r, stepno);
		proto_pop3_ops.data(r->st, side, (const uint8_t *)d + splitpos, n - splitpos, &r->a);
		collect(r, stepno);
	} else {
		proto_pop3_ops.data(r->st, side, (const uint8_t *)d, n, &r->a);
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
	r.st = proto_pop3_ops.create(sc->p);
	assert_non_null(r.st);
	for (int i = 0; sc->steps[i].op != OP_END; i++) {
		const struct step *s = &sc->steps[i];
		size_t n = s->in ? (s->inlen ? s->inlen : strlen(s->in)) : 0;
		sb_reset(&r.sc_client);
		sb_reset(&r.sc_up);
		sb_reset(&r.sc_acts);
		switch (s->op) {
		case OP_CONN:
			proto_pop3_ops.upstream_connected(r.st, &r.a);
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
			proto_pop3_ops.tls_done(r.st, (enum proto_side)side, &r.a);
			collect(&r, i);
			break;
		}
		case OP_EOF:
			proto_pop3_ops.client_eof(r.st, &r.a);
			collect(&r, i);
			break;
		case OP_FAIL:
			(proto_pop3_ops.fail)(r.st, (enum proto_failure)s->why, s->in, &r.a);
			collect(&r, i);
			break;
		case OP_RETRY:
			proto_pop3_ops.upstream_retry_plain(r.st);
			r.tls_pending[PROTO_UPSTREAM] = 0;
			break;
		case OP_RETRY_TLS:
			proto_pop3_ops.upstream_retry(r.st);
			r.tls_pending[PROTO_UPSTREAM] = 0;
			break;
		case OP_END:
			break;
		}
		check_step(&r, i, s);
	}
	/* Every enforced "does not offer STARTTLS" refusal was reported for the counters. */
	if (r.all_client.n && memmem(r.all_client.p, r.all_client.n, "does not offer STLS", 19) &&
	    r.policy_reports == 0)
		run_fail(&r, 0, "STLS refusal without PA_POLICY");
	proto_pop3_ops.destroy(r.st);
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

#define PARAMS(ctls, cpol, utls, upol, mode)                                               \
	{ .session_id = "0123456789abcdef", .route = "unit", .protocol = CFG_PROTO_POP3,     \
	  .client_tls = (ctls), .client_policy = (cpol), .upstream_tls = (utls),             \
	  .upstream_policy = (upol), .policy_mode = (mode), .helo_name = "proxy.test",       \
	  .client_ip = "192.0.2.7", .client_port = 40000 }
#define T_NONE CFG_TLS_NONE
#define T_STLS CFG_TLS_STARTTLS
#define T_IMPL CFG_TLS_IMPLICIT
#define ENF CFG_MODE_ENFORCE
#define TST CFG_MODE_TESTING

static const struct proto_params P_PLAIN =
	PARAMS(T_NONE, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF);
/* inject: plaintext client, STLS toward the upstream */
static const struct proto_params P_INJ_ENCRYPT =
	PARAMS(T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_ENCRYPT, ENF);
static const struct proto_params P_INJ_VERIFY =
	PARAMS(T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY, ENF);
static const struct proto_params P_INJ_FPR =
	PARAMS(T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_FINGERPRINT, ENF);
static const struct proto_params P_INJ_MAY =
	PARAMS(T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_MAY, ENF);
static const struct proto_params P_INJ_TESTING =
	PARAMS(T_NONE, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY, TST);
/* terminate: STLS toward the client, plaintext upstream */
static const struct proto_params P_TERM_ENCRYPT =
	PARAMS(T_STLS, CFG_POLICY_ENCRYPT, T_NONE, CFG_POLICY_NONE, ENF);
static const struct proto_params P_TERM_MAY =
	PARAMS(T_STLS, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF);
/* bridge, implicit sides */
static const struct proto_params P_BRIDGE =
	PARAMS(T_STLS, CFG_POLICY_ENCRYPT, T_STLS, CFG_POLICY_VERIFY, ENF);
static const struct proto_params P_IMPL_CLIENT =
	PARAMS(T_IMPL, CFG_POLICY_MAY, T_NONE, CFG_POLICY_NONE, ENF);
static const struct proto_params P_IMPL_UP =
	PARAMS(T_NONE, CFG_POLICY_MAY, T_IMPL, CFG_POLICY_VERIFY, ENF);
static const struct proto_params P_IMPL_INJ =
	PARAMS(T_IMPL, CFG_POLICY_MAY, T_STLS, CFG_POLICY_VERIFY, ENF);
static const struct proto_params P_IMPL_IMPL =
	PARAMS(T_IMPL, CFG_POLICY_MAY, T_IMPL, CFG_POLICY_VERIFY, ENF);
static const struct proto_params P_STLS_IMPL =
	PARAMS(T_STLS, CFG_POLICY_ENCRYPT, T_IMPL, CFG_POLICY_VERIFY, ENF);

#define G "+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\r\n"
#define G_STRIPPED "+OK Dovecot ready.\r\n"
#define CAPA_STLS "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nSTLS\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
#define CAPA_NOSTLS "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
/* the post-TLS capabilities of a Dovecot */
#define CAPA_TLS "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n"
/* the upstream's side of an injected STLS, up to tls:up */
#define INJECT_STEPS                                                                       \
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""), UP(CAPA_STLS, "", "STLS\r\n", ""),      \
		UP("+OK Begin TLS negotiation now.\r\n", "", "", "tls:up"),                  \
		TLSU(G_STRIPPED, "", "ready")
#define RETR1_BODY "Subject: one\r\n\r\n..a dot-stuffed line\r\nbare LF line\n.\r\n"
#define RETR1 "+OK 60 octets\r\n" RETR1_BODY

static const struct step s_inject[] = {
	INJECT_STEPS,
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_TLS, CAPA_TLS, "", ""),
	CL("USER alice\r\n", "", "USER alice\r\n", ""),
	UP("+OK\r\n", "+OK\r\n", "", ""),
	CL("PASS secret\r\n", "", "PASS secret\r\n", ""),
	UP("+OK Logged in.\r\n", "+OK Logged in.\r\n", "", ""),
	CL("LIST\r\n", "", "LIST\r\n", ""),
	UP("+OK 2 messages:\r\n1 60\r\n2 70\r\n.\r\n", "+OK 2 messages:\r\n1 60\r\n2 70\r\n.\r\n",
	   "", ""),
	CL("RETR 1\r\n", "", "RETR 1\r\n", ""),
	UP(RETR1, RETR1, "", ""),
	CL("LIST 2\r\n", "", "LIST 2\r\n", ""),
	UP("+OK 2 70\r\n", "+OK 2 70\r\n", "", ""),
	CL("TOP 2 0\r\nUIDL\r\n", "", "TOP 2 0\r\nUIDL\r\n", ""), /* PIPELINING */
	UP("+OK\r\nSubject: two\r\n\r\n.\r\n+OK\r\n1 a\r\n2 b\r\n.\r\n",
	   "+OK\r\nSubject: two\r\n\r\n.\r\n+OK\r\n1 a\r\n2 b\r\n.\r\n", "", ""),
	CL("RETR 9\r\n", "", "RETR 9\r\n", ""),
	UP("-ERR There's no message 9.\r\n", "-ERR There's no message 9.\r\n", "", ""),
	CL("QUIT\r\n", "", "QUIT\r\n", ""),
	UP("+OK Logging out.\r\n", "+OK Logging out.\r\n", "", "close"),
	END
};

/* without PIPELINING in the upstream's CAPA: one command at a time */
static const struct step s_no_pipelining[] = {
	INJECT_STEPS,
	CL("STAT\r\nLIST 1\r\nUIDL\r\n", "", "STAT\r\n", ""),
	UP("+OK 2 130\r\n", "+OK 2 130\r\n", "LIST 1\r\n", ""),
	UP("+OK 1 60\r\n", "+OK 1 60\r\n", "UIDL\r\n", ""),
	UP("+OK\r\n1 a\r\n", "+OK\r\n1 a\r\n", "", ""),
	CL("NOOP\r\n", "", "", ""),
	UP("2 b\r\n.\r\n", "2 b\r\n.\r\n", "NOOP\r\n", ""),
	UP("+OK\r\n", "+OK\r\n", "", ""),
	END
};

/* the CAPA before TLS says nothing about the session after it */
static const struct step s_pre_tls_caps_forgotten[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""),
	UP("+OK\r\nPIPELINING\r\nSTLS\r\n.\r\n", "", "STLS\r\n", ""),
	UP("+OK\r\n", "", "", "tls:up"), TLSU(G_STRIPPED, "", "ready"),
	CL("STAT\r\nNOOP\r\n", "", "STAT\r\n", ""),
	UP("+OK 0 0\r\n", "+OK 0 0\r\n", "NOOP\r\n", ""),
	END
};

/* a response injected after the upstream's +OK to STLS is dropped (CVE-2014-3556 kind) */
static const struct step s_inject_response_injection[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""), UP(CAPA_STLS, "", "STLS\r\n", ""),
	UP("+OK Begin TLS\r\n+OK fake\r\n-ERR fake\r\n", "", "", "tls:up"),
	TLSU(G_STRIPPED, "", "ready"),
	CL("STAT\r\n", "", "STAT\r\n", ""),
	UP("+OK 1 10\r\n", "+OK 1 10\r\n", "", ""),
	END
};

#define STLS_REFUSAL                                                                       \
	"-ERR [SYS/TEMP] TLS is required toward the upstream server and it does not offer " \
	"STLS; try again later\r\n"

/* stripped STLS: the client's commands never go up, it gets -ERR [SYS/TEMP] */
static const struct step s_inject_no_stls_encrypt[] = {
	CONN("", "", ""),
	CL("USER alice\r\nPASS secret\r\n", "", "", ""),
	UP(G, "", "CAPA\r\n", ""),
	UP(CAPA_NOSTLS, STLS_REFUSAL, "QUIT\r\n", "close"),
	END
};
static const struct step s_inject_no_stls_verify[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""),
	UP(CAPA_NOSTLS, STLS_REFUSAL, "QUIT\r\n", "close"), END
};
static const struct step s_inject_no_stls_fpr[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""),
	UP(CAPA_NOSTLS, STLS_REFUSAL, "QUIT\r\n", "close"), END
};
/* CAPA refused, STLS refused */
static const struct step s_inject_capa_err[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""),
	UP("-ERR Unknown command\r\n", STLS_REFUSAL, "QUIT\r\n", "close"), END
};
static const struct step s_inject_stls_err[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""), UP(CAPA_STLS, "", "STLS\r\n", ""),
	UP("-ERR TLS unavailable\r\n", STLS_REFUSAL, "QUIT\r\n", "close"), END
};
/* may: plaintext, the greeting as the upstream gave it (the client's leg is plaintext) */
static const struct step s_inject_no_stls_may[] = {
	CONN("", "", ""), CL("USER alice\r\n", "", "", ""), UP(G, "", "CAPA\r\n", ""),
	UP(CAPA_NOSTLS, G, "USER alice\r\n", "ready"),
	UP("+OK\r\n", "+OK\r\n", "", ""),
	END
};
static const struct step s_inject_no_stls_testing[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""), UP(CAPA_NOSTLS, G, "", "ready"), END
};
/* a -ERR greeting before TLS is nobody's word: a temporary failure */
static const struct step s_inject_err_greeting[] = {
	CONN("", "", ""),
	UP("-ERR [SYS/PERM] go away\r\n",
	   "-ERR [SYS/TEMP] Upstream server refused service; try again later\r\n", "", "close"),
	END
};
/* the STLS handshake failed, may: a new plaintext connection */
static const struct step s_inject_retry_plain[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""), UP(CAPA_STLS, "", "STLS\r\n", ""),
	UP("+OK\r\n", "", "", "tls:up"),
	RETRY(),
	CONN("", "", ""),
	UP(G, G, "", "ready"),
	END
};

static const struct script inject_scripts[] = {
	{ "inject", &P_INJ_ENCRYPT, s_inject, 0 },
	{ "inject-verify", &P_INJ_VERIFY, s_inject, 0 },
	{ "no-pipelining", &P_INJ_VERIFY, s_no_pipelining, 0 },
	{ "pre-tls-caps-forgotten", &P_INJ_VERIFY, s_pre_tls_caps_forgotten, 0 },
	{ "response-injection", &P_INJ_VERIFY, s_inject_response_injection, 0 },
	{ "no-stls-encrypt", &P_INJ_ENCRYPT, s_inject_no_stls_encrypt, 0 },
	{ "no-stls-verify", &P_INJ_VERIFY, s_inject_no_stls_verify, 0 },
	{ "no-stls-fingerprint", &P_INJ_FPR, s_inject_no_stls_fpr, 0 },
	{ "capa-err", &P_INJ_VERIFY, s_inject_capa_err, 0 },
	{ "stls-err", &P_INJ_VERIFY, s_inject_stls_err, 0 },
	{ "no-stls-may", &P_INJ_MAY, s_inject_no_stls_may, 0 },
	{ "no-stls-testing", &P_INJ_TESTING, s_inject_no_stls_testing, 0 },
	{ "err-greeting", &P_INJ_VERIFY, s_inject_err_greeting, 0 },
	{ "retry-plain", &P_INJ_MAY, s_inject_retry_plain, 0 },
};

static void test_inject(void **state)
{
	(void)state;
	RUN_TABLE(inject_scripts);
}

/* ------------------------------------------------------------------ terminate, bridge */

#define CAPA_LEGACY "+OK\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN LOGIN CRAM-MD5\r\n.\r\n"
#define AUTH_REFUSED "-ERR [AUTH] Must issue a STLS command first\r\n"

static const struct step s_terminate_encrypt[] = {
	CONN("", "", ""),
	UP(G, G, "", "ready"),
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_LEGACY, "+OK\r\nTOP\r\nUIDL\r\nSTLS\r\n.\r\n", "", ""),
	CL("USER alice\r\n", AUTH_REFUSED, "", ""),
	CL("PASS secret\r\n", AUTH_REFUSED, "", ""),
	CL("APOP alice 0123456789abcdef0123456789abcdef\r\n", AUTH_REFUSED, "", ""),
	CL("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", AUTH_REFUSED, "", ""),
	CL("auth\r\n", AUTH_REFUSED, "", ""),
	/* a command pipelined after STLS is never processed (CVE-2011-0411) */
	CL("STLS\r\nUSER evil\r\n", "+OK Begin TLS negotiation\r\n", "", "tls:client"),
	TLSC("", "", ""),
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_LEGACY, CAPA_LEGACY, "", ""),
	CL("STLS\r\n", "-ERR TLS already active\r\n", "", ""),
	CL("USER alice\r\n", "", "USER alice\r\n", ""),
	UP("+OK\r\n", "+OK\r\n", "", ""),
	CL("PASS secret\r\n", "", "PASS secret\r\n", ""),
	UP("+OK Logged in.\r\n", "+OK Logged in.\r\n", "", ""),
	CL("RETR 1\r\n", "", "RETR 1\r\n", ""),
	UP(RETR1, RETR1, "", ""),
	END
};

/* may: credentials before STLS go up; STLS is still offered */
static const struct step s_terminate_may[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_STLS, "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\n.\r\n", "", ""),
	CL("USER alice\r\n", "", "USER alice\r\n", ""),
	UP("+OK\r\n", "+OK\r\n", "", ""),
	CL("PASS secret\r\n", "", "PASS secret\r\n", ""),
	UP("+OK Logged in.\r\n", "+OK Logged in.\r\n", "", ""),
	CL("STLS\r\n", "-ERR STLS not permitted after authentication\r\n", "", ""),
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_STLS, "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n.\r\n", "", ""),
	END
};

/* STLS behind a command in flight: answered in order, what follows it dropped */
static const struct step s_terminate_stls_queued[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP("+OK\r\nPIPELINING\r\n.\r\n", "+OK\r\nPIPELINING\r\nSTLS\r\n.\r\n", "", ""),
	CL("NOOP\r\nSTLS\r\nUSER evil\r\n", "", "NOOP\r\n", ""),
	CL("PASS evil\r\n", "", "", ""),
	UP("+OK\r\n", "+OK\r\n+OK Begin TLS negotiation\r\n", "", "tls:client"),
	TLSC("", "", ""),
	CL("NOOP\r\n", "", "NOOP\r\n", ""),
	END
};

/* STARTTLS both sides */
static const struct step s_bridge[] = {
	INJECT_STEPS,
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_TLS,
	   "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nSTLS\r\n.\r\n", "", ""),
	CL("USER alice\r\n", AUTH_REFUSED, "", ""),
	CL("STLS\r\n", "+OK Begin TLS negotiation\r\n", "", "tls:client"),
	TLSC("", "", ""),
	CL("USER alice\r\n", "", "USER alice\r\n", ""),
	UP("+OK\r\n", "+OK\r\n", "", ""),
	END
};

/* implicit TLS toward the client, plaintext upstream (995 in front of 110) */
static const struct step s_impl_client[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_STLS, CAPA_NOSTLS, "", ""),
	CL("STLS\r\n", "-ERR TLS already active\r\n", "", ""),
	CL("APOP alice 0123456789abcdef0123456789abcdef\r\n", "",
	   "APOP alice 0123456789abcdef0123456789abcdef\r\n", ""),
	UP("+OK\r\n", "+OK\r\n", "", ""),
	END
};

/* implicit TLS toward the upstream: its greeting is its own word, timestamp and all */
static const struct step s_impl_up[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("STLS\r\n", "-ERR STLS not available\r\n", "", ""),
	CL("CAPA\r\n", "", "CAPA\r\n", ""),
	UP(CAPA_STLS, CAPA_NOSTLS, "", ""),
	END
};
/* implicit client, STLS upstream */
static const struct step s_impl_inject[] = {
	INJECT_STEPS,
	CL("CAPA\r\n", "", "CAPA\r\n", ""), UP(CAPA_STLS, CAPA_NOSTLS, "", ""),
	END
};
/* STLS client, implicit upstream */
static const struct step s_stls_impl[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("USER a\r\n", AUTH_REFUSED, "", ""),
	CL("STLS\r\n", "+OK Begin TLS negotiation\r\n", "", "tls:client"),
	TLSC("", "", ""),
	CL("USER a\r\n", "", "USER a\r\n", ""),
	END
};
/* implicit TLS both sides (995 <-> 995) */
static const struct step s_impl_impl[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("STLS\r\n", "-ERR TLS already active\r\n", "", ""),
	CL("CAPA\r\n", "", "CAPA\r\n", ""), UP(CAPA_STLS, CAPA_NOSTLS, "", ""),
	CL("USER a\r\n", "", "USER a\r\n", ""),
	END
};
/* plaintext both sides: STLS is not offered nor passed */
static const struct step s_plain[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("CAPA\r\n", "", "CAPA\r\n", ""), UP(CAPA_STLS, CAPA_NOSTLS, "", ""),
	CL("STLS\r\n", "-ERR STLS not available\r\n", "", ""),
	CL("USER a\r\n", "", "USER a\r\n", ""),
	END
};

static const struct script terminate_scripts[] = {
	{ "terminate-encrypt", &P_TERM_ENCRYPT, s_terminate_encrypt, 0 },
	{ "terminate-may", &P_TERM_MAY, s_terminate_may, 0 },
	{ "terminate-stls-queued", &P_TERM_ENCRYPT, s_terminate_stls_queued, 0 },
	{ "bridge", &P_BRIDGE, s_bridge, 0 },
	{ "implicit-client", &P_IMPL_CLIENT, s_impl_client, 0 },
	{ "implicit-upstream", &P_IMPL_UP, s_impl_up, 0 },
	{ "implicit-client-inject", &P_IMPL_INJ, s_impl_inject, 0 },
	{ "stls-client-implicit-upstream", &P_STLS_IMPL, s_stls_impl, 0 },
	{ "implicit-implicit", &P_IMPL_IMPL, s_impl_impl, 0 },
	{ "plain", &P_PLAIN, s_plain, 0 },
};

static void test_terminate(void **state)
{
	(void)state;
	RUN_TABLE(terminate_scripts);
}

/* ------------------------------------------------------------------ commands */

static const struct step s_auth[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("AUTH\r\n", "", "AUTH\r\n", ""),
	UP("+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n", "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n", "", ""),
	/* the response line is not a command, even when it looks like one */
	CL("AUTH LOGIN\r\nSTLS\r\n", "", "AUTH LOGIN\r\n", ""),
	UP("+ VXNlcm5hbWU6\r\n", "+ VXNlcm5hbWU6\r\n", "STLS\r\n", ""),
	UP("+ UGFzc3dvcmQ6\r\n", "+ UGFzc3dvcmQ6\r\n", "", ""),
	CL("c2VjcmV0\r\n", "", "c2VjcmV0\r\n", ""),
	UP("+OK Logged in.\r\n", "+OK Logged in.\r\n", "", ""),
	CL("STAT\r\n", "", "STAT\r\n", ""),
	UP("+OK 0 0\r\n", "+OK 0 0\r\n", "", ""),
	END
};

static const struct step s_unsolicited_err[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	UP("-ERR Disconnected for inactivity.\r\n", "-ERR Disconnected for inactivity.\r\n", "",
	   "close"),
	END
};
static const struct step s_unsolicited_ok[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	UP("+OK surprise\r\n", "-ERR [SYS/TEMP] Upstream protocol error, closing connection\r\n",
	   "", "close"),
	END
};
static const struct step s_malformed[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("STAT\r\n", "", "STAT\r\n", ""),
	UP("220 smtp?\r\n", "-ERR [SYS/TEMP] Upstream protocol error, closing connection\r\n", "",
	   "close"),
	END
};
static const struct step s_eof_pending[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("STAT\r\n", "", "STAT\r\n", ""),
	CEOF("", "", ""),
	UP("+OK 0 0\r\n", "+OK 0 0\r\n", "", "close"),
	END
};
static const struct step s_client_early[] = {
	CONN("", "", ""),
	CL("STAT\r\n", "", "", ""),
	UP(G, G, "STAT\r\n", "ready"),
	END
};

/* a verb not followed by SP, or a CR or NUL inside a line: answered, never forwarded */
static const struct step s_malformed_command[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("AUTH\r\xff\r\n", "-ERR Malformed command\r\n", "", ""),
	CL("USER a\rPASS b\r\n", "-ERR Malformed command\r\n", "", ""),
	CL("USER\ta\r\n", "-ERR Malformed command\r\n", "", ""),
	{ .op = OP_CL, .in = "NOOP\0x\r\n", .inlen = 8, .to_client = "-ERR Malformed command\r\n",
	  .to_up = "", .acts = "" },
	CL("noop\r\n", "", "noop\r\n", ""),
	END
};

static const struct script command_scripts[] = {
	{ "malformed-command", &P_TERM_ENCRYPT, s_malformed_command, 0 },
	{ "auth", &P_PLAIN, s_auth, 0 },
	{ "unsolicited-err", &P_PLAIN, s_unsolicited_err, 0 },
	{ "unsolicited-ok", &P_PLAIN, s_unsolicited_ok, 0 },
	{ "malformed", &P_PLAIN, s_malformed, 0 },
	{ "eof-pending", &P_PLAIN, s_eof_pending, 0 },
	{ "client-early", &P_PLAIN, s_client_early, 0 },
};

static void test_commands(void **state)
{
	(void)state;
	RUN_TABLE(command_scripts);
}

/* A response written before its command was sent is never its answer. */
static const struct step s_early[] = {
	CONN("", "", ""),
	UP(G "+OK\r\nSTLS\r\n.\r\n",
	   "-ERR [SYS/TEMP] Upstream protocol error, closing connection\r\n", "CAPA\r\n", "close"),
	END
};
static const struct script early_scripts[] = {
	{ "early-response", &P_INJ_VERIFY, s_early, M_WHOLE },
};

static void test_early_response(void **state)
{
	(void)state;
	RUN_TABLE(early_scripts);
}

/* ------------------------------------------------------------------ line bounds */

static void test_long_lines(void **state)
{
	(void)state;
	static char cl[POP3_CMD_MAX + 64], st[POP3_LINE_MAX + 64], retr[20000], retr_out[20000];
	memset(cl, 'A', POP3_CMD_MAX + 10);
	strcpy(cl + POP3_CMD_MAX + 10, "\r\nNOOP\r\n");
	memcpy(st, "+OK ", 4);
	memset(st + 4, 'B', POP3_LINE_MAX + 10);
	strcpy(st + 4 + POP3_LINE_MAX + 10, "\r\n");
	/* a message line longer than any status line is relayed, byte-exact */
	strcpy(retr, "+OK\r\nX: ");
	memset(retr + 8, 'C', 15000);
	strcpy(retr + 8 + 15000, "\r\n.\r\n");
	strcpy(retr_out, retr);
	const struct step s_client_long[] = {
		CONN("", "", ""), UP(G, G, "", "ready"),
		CL(cl, "-ERR Line too long\r\n", "NOOP\r\n", ""),
		/* the longest line that is allowed goes up */
		END
	};
	const struct step s_up_long[] = {
		CONN("", "", ""), UP(G, G, "", "ready"),
		CL("STAT\r\n", "", "STAT\r\n", ""),
		UP(st, "-ERR [SYS/TEMP] Upstream protocol error, closing connection\r\n", "",
		   "close"),
		END
	};
	const struct step s_retr_long[] = {
		CONN("", "", ""), UP(G, G, "", "ready"),
		CL("RETR 1\r\n", "", "RETR 1\r\n", ""),
		UP(retr, retr_out, "", ""),
		CL("NOOP\r\n", "", "NOOP\r\n", ""),
		END
	};
	const struct script scs[] = {
		{ "client-long", &P_PLAIN, s_client_long, M_WHOLE | M_BYTES },
		{ "up-long", &P_PLAIN, s_up_long, M_WHOLE | M_BYTES },
		{ "retr-long", &P_PLAIN, s_retr_long, M_WHOLE | M_BYTES },
	};
	RUN_TABLE(scs);
}

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

#define UP_PROTO_ERR "-ERR [SYS/TEMP] Upstream protocol error, closing connection\r\n"
#define TOO_MUCH "-ERR [SYS/TEMP] Too much pipelined input, closing connection\r\n"

/* Every bound of docs/limits.md's POP3 table, exactly at its value (accepted) and one octet,
 * line or command beyond it (refused as documented). */
static void test_bounds_edge(void **state)
{
	(void)state;
	struct sbuf cmd_at = { 0 }, cmd_over = { 0 }, st_at = { 0 }, st_over = { 0 };
	buf_fill(&cmd_at, "NOOP ", POP3_CMD_MAX, "\r\n");
	buf_fill(&cmd_over, "NOOP ", POP3_CMD_MAX + 1, "\r\n");
	buf_fill(&st_at, "+OK ", POP3_LINE_MAX, "\r\n");
	buf_fill(&st_over, "+OK ", POP3_LINE_MAX + 1, "\r\n");
	/* a CAPA response of POP3_CAPA_LINES_MAX lines (PIPELINING among them), and one more */
	struct sbuf capa_at = { 0 }, capa_over = { 0 };
	sb_adds(&capa_at, "+OK\r\nPIPELINING\r\n");
	for (int i = 1; i < POP3_CAPA_LINES_MAX; i++)
		sb_adds(&capa_at, "X-CAP\r\n");
	sb_adds(&capa_over, capa_at.p);
	sb_adds(&capa_over, "X-CAP\r\n.\r\n");
	/* one line too many: the lines before it are relayed, then the session ends without
	 * the "." (an -ERR line would be taken as a capability) */
	struct sbuf capa_cut = { 0 };
	sb_adds(&capa_cut, capa_at.p);
	sb_adds(&capa_at, ".\r\n");
	/* in flight toward a PIPELINING upstream: POP3_PIPELINE_MAX commands, the next waits;
	 * behind it the client may pile up POP3_HOLD_MAX + POP3_CMD_MAX octets in all */
	struct sbuf pipe_up = { 0 }, pipe_in = { 0 }, piled = { 0 };
	for (int i = 0; i < POP3_PIPELINE_MAX; i++)
		sb_adds(&pipe_up, "NOOP\r\n");
	sb_adds(&pipe_in, pipe_up.p);
	sb_adds(&pipe_in, "STAT\r\n");
	buf_fill(&piled, "", POP3_HOLD_MAX + POP3_CMD_MAX - 6, "");
	/* held while an AUTH challenge is awaited: POP3_HOLD_MAX octets, then one more */
	struct sbuf auth_line = { 0 }, held = { 0 };
	buf_fill(&auth_line, "", 4096, "\r\n");
	for (int i = 0; i < POP3_HOLD_MAX / 4096; i++)
		sb_adds(&held, auth_line.p);
	assert_int_equal(held.n, POP3_HOLD_MAX);
	/* an AUTH response line: POP3_CMD_MAX octets forwarded, one more ends the session */
	struct sbuf sasl_at = { 0 }, sasl_over = { 0 };
	buf_fill(&sasl_at, "", POP3_CMD_MAX, "\r\n");
	buf_fill(&sasl_over, "", POP3_CMD_MAX + 1, "\r\n");
#define BIG(o, data, c, u, x) \
	{ .op = (o), .in = (data).p, .inlen = (data).n, .to_client = (c), .to_up = (u), .acts = (x) }
#define OPEN CONN("", "", ""), UP(G, G, "", "ready")
	const struct step s_cmd_at[] = { OPEN, BIG(OP_CL, cmd_at, "", cmd_at.p, ""), END };
	const struct step s_cmd_over[] = {
		OPEN, BIG(OP_CL, cmd_over, "-ERR Line too long\r\n", "", ""),
		CL("NOOP\r\n", "", "NOOP\r\n", ""), END
	};
	const struct step s_st_at[] = {
		OPEN, CL("STAT\r\n", "", "STAT\r\n", ""), BIG(OP_UP, st_at, st_at.p, "", ""), END
	};
	const struct step s_st_over[] = {
		OPEN, CL("STAT\r\n", "", "STAT\r\n", ""),
		BIG(OP_UP, st_over, UP_PROTO_ERR, "", "close"), END
	};
	const struct step s_capa_at[] = {
		OPEN, CL("CAPA\r\n", "", "CAPA\r\n", ""), BIG(OP_UP, capa_at, capa_at.p, "", ""),
		END
	};
	const struct step s_capa_over[] = {
		OPEN, CL("CAPA\r\n", "", "CAPA\r\n", ""),
		BIG(OP_UP, capa_over, capa_cut.p, "", "close"), END
	};
	const struct step s_pipe_at[] = {
		OPEN, CL("CAPA\r\n", "", "CAPA\r\n", ""), BIG(OP_UP, capa_at, capa_at.p, "", ""),
		BIG(OP_CL, pipe_in, "", pipe_up.p, ""),
		BIG(OP_CL, piled, "", "", ""),
		UP("+OK\r\n", "+OK\r\n", "STAT\r\n", ""),
		END
	};
	const struct step s_pipe_over[] = {
		OPEN, CL("CAPA\r\n", "", "CAPA\r\n", ""), BIG(OP_UP, capa_at, capa_at.p, "", ""),
		BIG(OP_CL, pipe_in, "", pipe_up.p, ""),
		BIG(OP_CL, piled, "", "", ""),
		CL("x", TOO_MUCH, "", "close"),
		END
	};
	const struct step s_hold_at[] = {
		OPEN, CL("AUTH LOGIN\r\n", "", "AUTH LOGIN\r\n", ""),
		BIG(OP_CL, held, "", "", ""),
		UP("+ VXNlcm5hbWU6\r\n", "+ VXNlcm5hbWU6\r\n", auth_line.p, ""),
		END
	};
	const struct step s_hold_over[] = {
		OPEN, CL("AUTH LOGIN\r\n", "", "AUTH LOGIN\r\n", ""),
		BIG(OP_CL, held, "", "", ""),
		CL("x", TOO_MUCH, "", "close"),
		END
	};
	const struct step s_sasl_at[] = {
		OPEN, CL("AUTH LOGIN\r\n", "", "AUTH LOGIN\r\n", ""),
		UP("+ VXNlcm5hbWU6\r\n", "+ VXNlcm5hbWU6\r\n", "", ""),
		BIG(OP_CL, sasl_at, "", sasl_at.p, ""),
		END
	};
	const struct step s_sasl_over[] = {
		OPEN, CL("AUTH LOGIN\r\n", "", "AUTH LOGIN\r\n", ""),
		UP("+ VXNlcm5hbWU6\r\n", "+ VXNlcm5hbWU6\r\n", "", ""),
		BIG(OP_CL, sasl_over, "-ERR Line too long, closing connection\r\n", "", "close"),
		END
	};
#undef OPEN
#undef BIG
	const struct script scs[] = {
		{ "cmd-at-bound", &P_PLAIN, s_cmd_at, M_WHOLE | M_BYTES },
		{ "cmd-over-bound", &P_PLAIN, s_cmd_over, M_WHOLE | M_BYTES },
		{ "status-at-bound", &P_PLAIN, s_st_at, M_WHOLE | M_BYTES },
		{ "status-over-bound", &P_PLAIN, s_st_over, M_WHOLE | M_BYTES },
		{ "capa-lines-at-bound", &P_PLAIN, s_capa_at, M_WHOLE | M_BYTES },
		{ "capa-lines-over-bound", &P_PLAIN, s_capa_over, M_WHOLE | M_BYTES },
		{ "pipeline-and-pile-at-bound", &P_PLAIN, s_pipe_at, M_WHOLE | M_BYTES },
		{ "pile-over-bound", &P_PLAIN, s_pipe_over, M_WHOLE | M_BYTES },
		{ "auth-hold-at-bound", &P_PLAIN, s_hold_at, M_WHOLE | M_BYTES },
		{ "auth-hold-over-bound", &P_PLAIN, s_hold_over, M_WHOLE | M_BYTES },
		{ "auth-line-at-bound", &P_PLAIN, s_sasl_at, M_WHOLE | M_BYTES },
		{ "auth-line-over-bound", &P_PLAIN, s_sasl_over, M_WHOLE | M_BYTES },
	};
	RUN_TABLE(scs);
	struct sbuf *all[] = { &cmd_at,  &cmd_over, &st_at,   &st_over, &capa_at,   &capa_over,
			      &capa_cut, &pipe_up, &pipe_in, &piled,   &auth_line, &held,
			      &sasl_at,  &sasl_over };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		sb_free(all[i]);
}

/* ------------------------------------------------------------------ failures */

#define F_UNREACH "-ERR [SYS/TEMP] Upstream server unreachable, try again later\r\n"
#define F_LOST "-ERR [SYS/TEMP] Upstream connection lost, closing connection\r\n"

static const struct step s_f_unreach[] = {
	FAIL(PF_UNREACHABLE, NULL, F_UNREACH, "", "close"), END
};
static const struct step s_f_lost_greeting[] = {
	CONN("", "", ""), FAIL(PF_LOST, NULL, F_UNREACH, "", "close"), END
};
static const struct step s_f_lost[] = {
	CONN("", "", ""), UP(G, G, "", "ready"), FAIL(PF_LOST, NULL, F_LOST, "", "close"), END
};
/* inside a multi-line response: no -ERR line (it would be taken as message content) */
static const struct step s_f_lost_mid_retr[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	CL("RETR 1\r\n", "", "RETR 1\r\n", ""),
	UP("+OK\r\nSubject: x\r\n", "+OK\r\nSubject: x\r\n", "", ""),
	FAIL(PF_LOST, NULL, "", "", "close"), END
};
static const struct step s_f_lost_after_quit[] = {
	CONN("", "", ""), UP(G, G, "", "ready"), CL("QUIT\r\n", "", "QUIT\r\n", ""),
	FAIL(PF_LOST, NULL, "", "", "close"), END
};
static const struct step s_f_policy[] = {
	CONN("", "", ""), UP(G, "", "CAPA\r\n", ""), UP(CAPA_STLS, "", "STLS\r\n", ""),
	UP("+OK\r\n", "", "", "tls:up"),
	FAIL(PF_TLS_POLICY, "certificate-host-mismatch",
	     "-ERR [SYS/TEMP] TLS policy failure toward the upstream server "
	     "(certificate-host-mismatch); try again later\r\n", "", "close"),
	END
};
static const struct step s_f_idle[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	FAIL(PF_IDLE, NULL, "-ERR [SYS/TEMP] Timeout, closing connection\r\n", "", "close"), END
};
static const struct step s_f_shutdown[] = {
	CONN("", "", ""), UP(G, G, "", "ready"),
	FAIL(PF_SHUTDOWN, NULL, "-ERR [SYS/TEMP] Service shutting down, try again later\r\n", "",
	     "close"),
	END
};
static const struct script failure_scripts[] = {
	{ "unreachable", &P_INJ_VERIFY, s_f_unreach, 0 },
	{ "lost-greeting", &P_INJ_VERIFY, s_f_lost_greeting, 0 },
	{ "lost", &P_PLAIN, s_f_lost, 0 },
	{ "lost-mid-retr", &P_PLAIN, s_f_lost_mid_retr, 0 },
	{ "lost-after-quit", &P_PLAIN, s_f_lost_after_quit, 0 },
	{ "tls-policy", &P_INJ_VERIFY, s_f_policy, 0 },
	{ "idle", &P_PLAIN, s_f_idle, 0 },
	{ "shutdown", &P_PLAIN, s_f_shutdown, 0 },
};

static void test_failures(void **state)
{
	(void)state;
	RUN_TABLE(failure_scripts);
}

static void test_refuse(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	proto_pop3_ops.refuse(&P_PLAIN, PR_NOT_ALLOWED, &a);
	assert_int_equal(a.n, 2);
	assert_int_equal(a.a[0].type, PA_SEND);
	assert_memory_equal(a.buf + a.a[0].off, "-ERR [SYS/PERM] Access denied\r\n", a.a[0].len);
	assert_int_equal(a.a[1].type, PA_CLOSE);
	proto_actions_clear(&a);
	proto_pop3_ops.refuse(&P_PLAIN, PR_LIMIT, &a);
	assert_int_equal(a.n, 2);
	assert_true(a.a[0].len > 16 && memcmp(a.buf + a.a[0].off, "-ERR [SYS/TEMP] ", 16) == 0);
	proto_actions_free(&a);
}

/* idle: between commands with nothing in flight */
static void test_idle(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	void *st = proto_pop3_ops.create(&P_PLAIN);
	assert_int_equal(proto_pop3_ops.idle(st), 0);
	proto_pop3_ops.upstream_connected(st, &a);
	assert_int_equal(proto_pop3_ops.idle(st), 0);
	proto_pop3_ops.data(st, PROTO_UPSTREAM, (const uint8_t *)G, strlen(G), &a);
	assert_int_equal(proto_pop3_ops.idle(st), 1);
	proto_pop3_ops.data(st, PROTO_CLIENT, (const uint8_t *)"RETR 1\r\n", 8, &a);
	assert_int_equal(proto_pop3_ops.idle(st), 0);
	proto_pop3_ops.data(st, PROTO_UPSTREAM, (const uint8_t *)"+OK\r\nx\r\n", 8, &a);
	assert_int_equal(proto_pop3_ops.idle(st), 0); /* mid-response */
	proto_pop3_ops.data(st, PROTO_UPSTREAM, (const uint8_t *)".\r\n", 3, &a);
	assert_int_equal(proto_pop3_ops.idle(st), 1);
	proto_pop3_ops.data(st, PROTO_CLIENT, (const uint8_t *)"NO", 2, &a);
	assert_int_equal(proto_pop3_ops.idle(st), 0); /* half a command */
	proto_pop3_ops.destroy(st);
	proto_actions_free(&a);
}

/* client_partial (line_timeout): half a command, not a whole one held for its response */
static void test_client_partial(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	void *st = proto_pop3_ops.create(&P_PLAIN);
	assert_non_null(proto_pop3_ops.client_partial);
	proto_pop3_ops.upstream_connected(st, &a);
	proto_pop3_ops.data(st, PROTO_CLIENT, (const uint8_t *)"US", 2, &a);
	assert_true(proto_pop3_ops.client_partial(st) != 0); /* before the greeting */
	proto_pop3_ops.data(st, PROTO_UPSTREAM, (const uint8_t *)G, strlen(G), &a);
	proto_pop3_ops.data(st, PROTO_CLIENT, (const uint8_t *)"ER a\r\n", 6, &a);
	assert_int_equal(proto_pop3_ops.client_partial(st), 0);
	proto_pop3_ops.data(st, PROTO_UPSTREAM, (const uint8_t *)"+OK\r\n", 5, &a);
	proto_pop3_ops.data(st, PROTO_CLIENT, (const uint8_t *)"PASS b\r\nST", 10, &a);
	assert_true(proto_pop3_ops.client_partial(st) != 0);
	proto_pop3_ops.data(st, PROTO_CLIENT, (const uint8_t *)"AT\r\n", 4, &a);
	assert_int_equal(proto_pop3_ops.client_partial(st), 0);
	proto_pop3_ops.destroy(st);
	proto_actions_free(&a);
}

/* ------------------------------------------------------------------ pure helpers */

static void test_strip_timestamp(void **state)
{
	(void)state;
	static const struct {
		const char *in, *out;
	} t[] = {
		{ "+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>", "+OK Dovecot ready." },
		{ "+OK <a@b> POP3 server ready", "+OK POP3 server ready" },
		{ "+OK ready", "+OK ready" },
		{ "+OK <x@y><z@w>", "+OK" },
		{ "+OK unterminated <x@y", "+OK unterminated <x@y" },
		{ "+OK", "+OK" },
	};
	char out[256];
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t n = pop3_strip_timestamp(t[i].in, strlen(t[i].in), out, sizeof(out));
		assert_string_equal(out, t[i].out);
		assert_int_equal(n, strlen(t[i].out));
	}
	/* bounded by cap */
	size_t n = pop3_strip_timestamp("+OK 0123456789", 14, out, 8);
	assert_int_equal(n, 7);
	assert_string_equal(out, "+OK 012");
}

static void test_rewrite_capa(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		unsigned hide;
		int shown;
	} t[] = {
		{ "STLS", 0, 0 },
		{ "stls", POP3_HIDE_AUTH, 0 },
		{ "USER", 0, 1 },
		{ "USER", POP3_HIDE_AUTH, 0 },
		{ "SASL PLAIN", 0, 1 },
		{ "SASL PLAIN", POP3_HIDE_AUTH, 0 },
		{ "SASL PLAIN CRAM-MD5 login SCRAM-SHA-256", POP3_HIDE_AUTH, 0 },
		{ "SASL CRAM-MD5", POP3_HIDE_AUTH, 0 },
		{ "sasl cram-md5", POP3_HIDE_AUTH, 0 },
		{ "SASLX", POP3_HIDE_AUTH, 1 },
		{ "TOP", POP3_HIDE_AUTH, 1 },
		{ "USERX", POP3_HIDE_AUTH, 1 },
		{ "PIPELINING", POP3_HIDE_AUTH, 1 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int shown = pop3_capa_line_shown(t[i].in, strlen(t[i].in), t[i].hide);
		if (shown != t[i].shown)
			print_message("\"%s\": %d, want %d\n", t[i].in, shown, t[i].shown);
		assert_int_equal(shown, t[i].shown);
	}
}

int main(void)
{
	log_setup(LOG_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_strip_timestamp),
		cmocka_unit_test(test_rewrite_capa),
		cmocka_unit_test(test_inject),
		cmocka_unit_test(test_terminate),
		cmocka_unit_test(test_commands),
		cmocka_unit_test(test_early_response),
		cmocka_unit_test(test_long_lines),
		cmocka_unit_test(test_bounds_edge),
		cmocka_unit_test(test_failures),
		cmocka_unit_test(test_refuse),
		cmocka_unit_test(test_idle),
		cmocka_unit_test(test_client_partial),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
