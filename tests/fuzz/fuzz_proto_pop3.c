/* fuzz_proto_pop3.c - libFuzzer harness for the POP3 state machine (proto_pop3_ops).
 *
 * The input is a script. Bytes 0 and 1 choose the route parameters:
 *   byte 0: bits 1-2 client_tls (none, starttls, implicit, none); bit 3 client_policy
 *           encrypt; bit 5 policy_mode testing
 *   byte 1: bits 0-1 upstream_tls (none, starttls, implicit, starttls);
 *           bits 2-4 upstream_policy (none, may, encrypt, fingerprint, verify, verify...)
 * Then records, each an op byte (low 3 bits: the op, high 5 bits: its argument):
 *   0     client bytes: a length byte, then that many bytes
 *   1     client bytes repeated (arg + 1) * 64 times (long lines)
 *   2     upstream bytes: a length byte, then that many bytes
 *   3     upstream bytes repeated (arg + 1) * 64 times (long and many response lines)
 *   4     tls_done on the side with a handshake pending (the client first, unless arg&1)
 *   5     fail(arg % 5)
 *   6     client EOF
 *   7     with a pending upstream handshake: arg odd, upstream_retry; arg even,
 *         upstream_retry_plain when the policy allows it (may or testing)
 * upstream_connected is called first; the script stops at PA_CLOSE, like the session.
 * At most FEED_MAX bytes are fed per run (below POP3_HOLD_MAX).
 *
 * Each input runs twice: data records fed whole, then one byte at a time (repeated records
 * in pieces of 61 bytes); the transcripts must be identical unless the whole run ended on
 * a response written before its command (pop3_saw_early_response).
 * Invariants (abort() on violation):
 *  - upstream_tls = starttls with encrypt/fingerprint/verify in enforce mode: nothing but
 *    the module's own CAPA/STLS/QUIT goes upstream before tls_done(UPSTREAM);
 *  - client_tls = starttls with client_policy = encrypt: no USER/PASS/APOP/AUTH line goes
 *    up before tls_done(CLIENT);
 *  - no bytes to a side between PA_STARTTLS and tls_done on it (except a final reply in a
 *    batch that ends with PA_CLOSE); PA_STARTTLS(client) right after
 *    "+OK Begin TLS negotiation", PA_STARTTLS(upstream) right after "STLS";
 *  - nothing after PA_CLOSE, and a side's STARTTLS at most once;
 *  - the client never gets an STLS capability line after its TLS started (unless a
 *    command whose response is free text, RETR/TOP/LIST/UIDL/AUTH, went up). */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "proto.h"
#include "proto_pop3.h"
#include "fuzz_util.h"

#define FEED_MAX (128 * 1024)

struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void buf_add(struct buf *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->n + n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			abort();
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
}

struct run {
	struct proto_params p;
	void *st;
	struct proto_actions a;
	int closed, tls_pending[2], tls_done[2], tls_started[2];
	struct buf trace;      /* side byte + data, or action markers: compared across modes */
	struct buf up_pre;     /* upstream bytes before tls_done(UPSTREAM) */
	struct buf cl_pre;     /* upstream bytes before tls_done(CLIENT) */
	struct buf to_client;  /* client bytes since its TLS started */
	struct buf all[2];
	uint8_t last; /* the trace's last side tag, 0 after an action */
	int free_text; /* a command whose response carries any text (RETR, TOP, LIST, UIDL,
			  AUTH) went up: the STLS-line check no longer applies */
};

static int ends_with(const struct buf *b, const char *s)
{
	size_t l = strlen(s);
	return b->n >= l && memcmp(b->p + b->n - l, s, l) == 0;
}

static int strict_upstream(const struct proto_params *p)
{
	return p->upstream_tls == CFG_TLS_STARTTLS && p->policy_mode == CFG_MODE_ENFORCE &&
	       (p->upstream_policy == CFG_POLICY_ENCRYPT ||
		p->upstream_policy == CFG_POLICY_FINGERPRINT ||
		p->upstream_policy == CFG_POLICY_VERIFY);
}

/* Every line of b is one of the module's own commands. */
static int only_own(const struct buf *b)
{
	static const char *own[] = { "CAPA\r\n", "STLS\r\n", "QUIT\r\n" };
	size_t i = 0;
	while (i < b->n) {
		size_t k;
		for (k = 0; k < 3; k++) {
			size_t l = strlen(own[k]);
			if (b->n - i >= l && memcmp(b->p + i, own[k], l) == 0) {
				i += l;
				break;
			}
		}
		if (k == 3)
			return 0;
	}
	return 1;
}

/* No line of b starts with a credentials verb. */
static int no_credentials(const struct buf *b)
{
	static const char *verbs[] = { "USER", "PASS", "APOP", "AUTH" };
	size_t i = 0;
	while (i < b->n) {
		for (int k = 0; k < 4; k++)
			if (b->n - i >= 4 && strncasecmp((const char *)b->p + i, verbs[k], 4) == 0 &&
			    (b->n - i == 4 || b->p[i + 4] == ' ' || b->p[i + 4] == '\r' ||
			     b->p[i + 4] == '\n'))
				return 0;
		const uint8_t *nl = memchr(b->p + i, '\n', b->n - i);
		if (!nl)
			break;
		i = (size_t)(nl - b->p) + 1;
	}
	return 1;
}

/* No "STLS" capability line in what the client got since its TLS started. */
static int no_stls_line(const struct buf *b)
{
	for (size_t i = 0; i + 6 <= b->n; i++)
		if ((i == 0 || b->p[i - 1] == '\n') && memcmp(b->p + i, "STLS\r\n", 6) == 0)
			return 0;
	return 1;
}

/* 1 when word occurs in d[0..n) ignoring case. */
static int strcasestr_n(const uint8_t *d, size_t n, const char *word)
{
	size_t l = strlen(word);
	for (size_t i = 0; i + l <= n; i++)
		if (strncasecmp((const char *)d + i, word, l) == 0)
			return 1;
	return 0;
}

/* An action (or harness step) in the trace. */
static void mark(struct run *r, const char *m)
{
	buf_add(&r->trace, m, strlen(m));
	r->last = 0;
}

static void collect(struct run *r)
{
	struct proto_actions *a = &r->a;
	for (size_t i = 0; i < a->n; i++) {
		const struct proto_act *x = &a->a[i];
		CHECK(!r->closed, "action %d after PA_CLOSE", (int)x->type);
		switch (x->type) {
		case PA_SEND: {
			const uint8_t *d = a->buf + x->off;
			CHECK(!r->tls_pending[x->side] || a->a[a->n - 1].type == PA_CLOSE,
			      "send to side %d during its handshake", (int)x->side);
			uint8_t tag = (uint8_t)('0' + x->side);
			if (r->last != tag) /* the same bytes in more pieces read the same */
				buf_add(&r->trace, &tag, 1);
			r->last = tag;
			buf_add(&r->trace, d, x->len);
			buf_add(&r->all[x->side], d, x->len);
			if (x->side == PROTO_UPSTREAM) {
				static const char *const freeverbs[] = { "RETR", "TOP", "LIST",
									 "UIDL", "AUTH" };
				for (int k = 0; k < 5; k++)
					if (strcasestr_n(d, x->len, freeverbs[k]))
						r->free_text = 1;
				if (!r->tls_done[PROTO_UPSTREAM])
					buf_add(&r->up_pre, d, x->len);
				if (!r->tls_done[PROTO_CLIENT])
					buf_add(&r->cl_pre, d, x->len);
			} else if (r->tls_started[PROTO_CLIENT]) {
				buf_add(&r->to_client, d, x->len);
			}
			break;
		}
		case PA_STARTTLS:
			CHECK(!r->tls_started[x->side], "PA_STARTTLS twice on side %d", (int)x->side);
			if (x->side == PROTO_CLIENT)
				CHECK(ends_with(&r->all[PROTO_CLIENT], "+OK Begin TLS negotiation\r\n"),
				      "PA_STARTTLS(client) not after +OK Begin TLS negotiation");
			else
				CHECK(ends_with(&r->all[PROTO_UPSTREAM], "STLS\r\n"),
				      "PA_STARTTLS(upstream) not after STLS");
			r->tls_pending[x->side] = 1;
			r->tls_started[x->side] = 1;
			mark(r, x->side == PROTO_CLIENT ? "Tc" : "Tu");
			break;
		case PA_READY:
			mark(r, "R");
			break;
		case PA_CLOSE:
			r->closed = 1;
			mark(r, "C");
			break;
		case PA_POLICY:
			CHECK(x->reason && strcmp(x->reason, "starttls-not-supported") == 0,
			      "PA_POLICY %s", x->reason ? x->reason : "(null)");
			mark(r, "P");
			break;
		default:
			CHECK(0, "unexpected action %d", (int)x->type);
		}
	}
	proto_actions_clear(a);
	if (strict_upstream(&r->p) && !r->tls_done[PROTO_UPSTREAM])
		CHECK(only_own(&r->up_pre), "client bytes upstream before TLS: %.*s",
		      (int)(r->up_pre.n > 200 ? 200 : r->up_pre.n), r->up_pre.p);
	if (r->p.client_tls == CFG_TLS_STARTTLS && r->p.client_policy == CFG_POLICY_ENCRYPT)
		CHECK(no_credentials(&r->cl_pre), "credentials upstream before the client's TLS");
	if (!r->free_text)
		CHECK(no_stls_line(&r->to_client), "STLS offered inside the client's TLS");
}

static void feed(struct run *r, enum proto_side side, const uint8_t *d, size_t n, int bytes)
{
	size_t piece = bytes ? 1 : n;
	for (size_t i = 0; i < n && !r->closed; i += piece) {
		size_t k = n - i < piece ? n - i : piece;
		proto_pop3_ops.data(r->st, side, d + i, k, &r->a);
		collect(r);
	}
}

static void run(const uint8_t *data, size_t size, int bytes, struct buf *trace, int *early)
{
	struct run r;
	memset(&r, 0, sizeof(r));
	static const enum cfg_tls ctls[] = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT,
					     CFG_TLS_NONE };
	static const enum cfg_tls utls[] = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT,
					     CFG_TLS_STARTTLS };
	static const enum cfg_policy upol[] = { CFG_POLICY_NONE, CFG_POLICY_MAY,
						CFG_POLICY_ENCRYPT, CFG_POLICY_FINGERPRINT,
						CFG_POLICY_VERIFY, CFG_POLICY_VERIFY,
						CFG_POLICY_VERIFY, CFG_POLICY_VERIFY };
	r.p = (struct proto_params){ .session_id = "0123456789abcdef", .route = "fuzz",
				     .protocol = CFG_PROTO_POP3, .helo_name = "proxy.test",
				     .client_ip = "192.0.2.1", .client_port = 1 };
	r.p.client_tls = ctls[(data[0] >> 1) & 3];
	r.p.client_policy = data[0] & 8 ? CFG_POLICY_ENCRYPT : CFG_POLICY_MAY;
	r.p.policy_mode = data[0] & 32 ? CFG_MODE_TESTING : CFG_MODE_ENFORCE;
	r.p.upstream_tls = utls[data[1] & 3];
	r.p.upstream_policy = upol[(data[1] >> 2) & 7];
	r.st = proto_pop3_ops.create(&r.p);
	if (!r.st)
		abort();
	proto_pop3_ops.upstream_connected(r.st, &r.a);
	collect(&r);
	size_t i = 2, fed = 0;
	while (i < size && !r.closed) {
		uint8_t op = data[i] & 7, arg = data[i] >> 3;
		i++;
		switch (op) {
		case 0:
		case 2: {
			if (i >= size)
				break;
			size_t n = data[i++];
			if (n > size - i)
				n = size - i;
			if (n && fed + n <= FEED_MAX) {
				feed(&r, op == 0 ? PROTO_CLIENT : PROTO_UPSTREAM, data + i, n, bytes);
				fed += n;
			}
			i += n;
			break;
		}
		case 1:
		case 3: {
			if (i >= size)
				break;
			size_t n = data[i++];
			if (n > size - i)
				n = size - i;
			size_t times = ((size_t)arg + 1) * 64;
			if (!n || fed + n * times > FEED_MAX) {
				i += n;
				break;
			}
			struct buf rep = { 0 };
			for (size_t t = 0; t < times; t++)
				buf_add(&rep, data + i, n);
			enum proto_side side = op == 1 ? PROTO_CLIENT : PROTO_UPSTREAM;
			if (bytes) {
				for (size_t o = 0; o < rep.n && !r.closed; o += 61) {
					size_t k = rep.n - o < 61 ? rep.n - o : 61;
					proto_pop3_ops.data(r.st, side, rep.p + o, k, &r.a);
					collect(&r);
				}
			} else {
				proto_pop3_ops.data(r.st, side, rep.p, rep.n, &r.a);
				collect(&r);
			}
			free(rep.p);
			fed += n * times;
			i += n;
			break;
		}
		case 4: {
			int side = -1;
			if (arg & 1)
				side = r.tls_pending[PROTO_UPSTREAM]  ? PROTO_UPSTREAM
				       : r.tls_pending[PROTO_CLIENT] ? PROTO_CLIENT
								     : -1;
			else
				side = r.tls_pending[PROTO_CLIENT]     ? PROTO_CLIENT
				       : r.tls_pending[PROTO_UPSTREAM] ? PROTO_UPSTREAM
								       : -1;
			if (side < 0)
				break;
			r.tls_pending[side] = 0;
			r.tls_done[side] = 1;
			mark(&r, side == PROTO_CLIENT ? "Dc" : "Du");
			proto_pop3_ops.tls_done(r.st, (enum proto_side)side, &r.a);
			collect(&r);
			break;
		}
		case 5:
			proto_pop3_ops.fail(r.st, (enum proto_failure)(arg % 5), "validation-failure",
					    &r.a);
			collect(&r);
			break;
		case 6:
			proto_pop3_ops.client_eof(r.st, &r.a);
			collect(&r);
			break;
		case 7:
			if (!r.tls_pending[PROTO_UPSTREAM])
				break;
			if (arg & 1) {
				proto_pop3_ops.upstream_retry(r.st);
			} else if (r.p.upstream_policy == CFG_POLICY_MAY ||
				   r.p.policy_mode == CFG_MODE_TESTING) {
				proto_pop3_ops.upstream_retry_plain(r.st);
				r.p.upstream_tls = CFG_TLS_NONE;
			} else {
				break;
			}
			r.tls_pending[PROTO_UPSTREAM] = 0;
			r.tls_started[PROTO_UPSTREAM] = 0;
			r.up_pre.n = 0;
			mark(&r, "X");
			proto_pop3_ops.upstream_connected(r.st, &r.a);
			collect(&r);
			break;
		}
	}
	(void)proto_pop3_ops.idle(r.st);
	*early = pop3_saw_early_response(r.st);
	proto_pop3_ops.destroy(r.st);
	proto_actions_free(&r.a);
	*trace = r.trace;
	free(r.up_pre.p);
	free(r.cl_pre.p);
	free(r.to_client.p);
	free(r.all[0].p);
	free(r.all[1].p);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	log_setup(LOG_ERROR, 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	struct buf whole, bytes;
	int early_w, early_b;
	run(data, size, 0, &whole, &early_w);
	run(data, size, 1, &bytes, &early_b);
	if (!early_w) {
		size_t k = 0;
		while (k < whole.n && k < bytes.n && whole.p[k] == bytes.p[k])
			k++;
		if ((whole.n != bytes.n || k != whole.n) && getenv("FUZZ_TRACE"))
			fprintf(stderr, "whole: %.*s\nbytes: %.*s\n", (int)whole.n, whole.p,
				(int)bytes.n, bytes.p);
		CHECK(whole.n == bytes.n && k == whole.n,
		      "whole and byte-at-a-time transcripts differ at %zu (%zu vs %zu bytes)", k,
		      whole.n, bytes.n);
	}
	free(whole.p);
	free(bytes.p);
	return 0;
}
