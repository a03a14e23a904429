/* fuzz_session.h - the script interpreter the state-machine harnesses share
 * (fuzz_proto_pop3.c, fuzz_proto_imap_session.c): it drives a protocol module through a
 * whole session from the fuzzer's input and checks the invariants every module owes the
 * session; a harness adds its protocol's own checks through struct fs_proto.
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
 *   3     upstream bytes repeated (arg + 1) * 64 times (long and many lines)
 *   4     tls_done on the side with a handshake pending (the client first, unless arg&1)
 *   5     fail(arg % 5)
 *   6     client EOF
 *   7     with a pending upstream handshake: arg odd, upstream_retry; arg even,
 *         upstream_retry_plain when the policy allows it (may or testing)
 * upstream_connected is called first; the script stops at PA_CLOSE, like the session.
 * At most FS_FEED_MAX bytes are fed per run.
 *
 * Each input runs in three ways: data records fed whole, one byte at a time (repeated
 * records in pieces of 61 bytes), and cut in two at an offset the input chooses (its last
 * byte); the transcripts (bytes per side, actions) must be identical unless the protocol
 * says a run's order depended on timing (fs_proto.timing).
 * Invariants every module keeps (abort() on violation):
 *  - no bytes to a side between PA_STARTTLS and tls_done on it (except a final reply in a
 *    batch that ends with PA_CLOSE); PA_STARTTLS(client) right after the protocol's "go
 *    ahead" reply, PA_STARTTLS(upstream) right after its STARTTLS command;
 *  - nothing after PA_CLOSE, and a side's STARTTLS at most once;
 *  - upstream_tls = starttls with encrypt/fingerprint/verify in enforce mode: nothing but
 *    the module's own commands goes upstream before tls_done(UPSTREAM);
 *  - PA_POLICY only with the result starttls-not-supported. */
#ifndef STP_FUZZ_SESSION_H
#define STP_FUZZ_SESSION_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "proto.h"
#include "fuzz_util.h"

#define FS_FEED_MAX (128 * 1024)

static int fs_ends_with(const struct fbuf *b, const char *s)
{
	size_t l = strlen(s);
	return b->n >= l && memcmp(b->p + b->n - l, s, l) == 0;
}

struct fs_run {
	struct proto_params p;
	const struct proto_ops *ops;
	void *st;
	struct proto_actions a;
	int closed, tls_pending[2], tls_done[2], tls_started[2];
	struct fbuf trace;      /* side byte + data, or action markers: compared across modes */
	struct fbuf up_pre;     /* upstream bytes before tls_done(UPSTREAM) */
	struct fbuf cl_pre;     /* upstream bytes before tls_done(CLIENT) */
	struct fbuf to_client;  /* client bytes since its TLS started */
	struct fbuf all[2];
	uint8_t last;             /* the trace's last side tag, 0 after an action */
	unsigned flags;           /* the protocol's own (e.g. "free text went up") */
	/* The protocol's checks run after every step and keep here how far they have read
	 * a buffer (cl_pre and to_client only grow): rescanning whole transcripts at every
	 * step of the byte-at-a-time run was quadratic, most of a session harness's time.
	 * final: set for the last check, after the script (a line still without its end is
	 * checked then). */
	size_t seen[4];
	int final;
};

/* What a harness adds for its protocol. */
struct fs_proto {
	const struct proto_ops *ops;
	enum cfg_proto protocol;
	const char *client_go;  /* what the client gets right before PA_STARTTLS(client) */
	const char *stls_cmd;   /* what ends the upstream bytes before PA_STARTTLS(upstream) */
	/* 1 when every byte of b is the module's own commands to the upstream */
	int (*only_own)(const struct fbuf *b);
	/* the protocol's checks after each batch of actions (r->up_pre, cl_pre, to_client ...) */
	void (*check)(struct fs_run *r);
	/* the bytes d went to the upstream, or to the client (a harness may note what they
	 * were; either may be NULL) */
	void (*sent_up)(struct fs_run *r, const uint8_t *d, size_t n);
	void (*sent_client)(struct fs_run *r, const uint8_t *d, size_t n);
	/* 1 when this run's transcript depended on how the bytes were cut (may be NULL) */
	int (*timing)(void *st);
	/* rewrites what differs from run to run by design (a random tag) in place (may be
	 * NULL) */
	void (*canon)(struct fbuf *trace);
};

static int fs_strict_upstream(const struct proto_params *p)
{
	return p->upstream_tls == CFG_TLS_STARTTLS && p->policy_mode == CFG_MODE_ENFORCE &&
	       (p->upstream_policy == CFG_POLICY_ENCRYPT ||
		p->upstream_policy == CFG_POLICY_FINGERPRINT ||
		p->upstream_policy == CFG_POLICY_VERIFY);
}

/* An action (or harness step) in the trace. */
static void fs_mark(struct fs_run *r, const char *m)
{
	fbuf_add(&r->trace, m, strlen(m));
	r->last = 0;
}

static void fs_collect(struct fs_run *r, const struct fs_proto *pr)
{
	struct proto_actions *a = &r->a;
	CHECK(!a->failed, "an allocation failed in the actions");
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
				fbuf_add(&r->trace, &tag, 1);
			r->last = tag;
			fbuf_add(&r->trace, d, x->len);
			fbuf_add(&r->all[x->side], d, x->len);
			if (x->side == PROTO_UPSTREAM) {
				if (pr->sent_up)
					pr->sent_up(r, d, x->len);
				if (!r->tls_done[PROTO_UPSTREAM])
					fbuf_add(&r->up_pre, d, x->len);
				if (!r->tls_done[PROTO_CLIENT])
					fbuf_add(&r->cl_pre, d, x->len);
			} else {
				if (pr->sent_client)
					pr->sent_client(r, d, x->len);
				if (r->tls_started[PROTO_CLIENT])
					fbuf_add(&r->to_client, d, x->len);
			}
			break;
		}
		case PA_STARTTLS:
			CHECK(!r->tls_started[x->side], "PA_STARTTLS twice on side %d", (int)x->side);
			if (x->side == PROTO_CLIENT)
				CHECK(fs_ends_with(&r->all[PROTO_CLIENT], pr->client_go),
				      "PA_STARTTLS(client) not after %s", pr->client_go);
			else
				CHECK(fs_ends_with(&r->all[PROTO_UPSTREAM], pr->stls_cmd),
				      "PA_STARTTLS(upstream) not after %s", pr->stls_cmd);
			r->tls_pending[x->side] = 1;
			r->tls_started[x->side] = 1;
			fs_mark(r, x->side == PROTO_CLIENT ? "Tc" : "Tu");
			break;
		case PA_READY:
			fs_mark(r, "R");
			break;
		case PA_CLOSE:
			r->closed = 1;
			fs_mark(r, "C");
			break;
		case PA_POLICY:
			CHECK(x->reason && strcmp(x->reason, "starttls-not-supported") == 0,
			      "PA_POLICY %s", x->reason ? x->reason : "(null)");
			fs_mark(r, "P");
			break;
		default:
			CHECK(0, "unexpected action %d", (int)x->type);
		}
	}
	proto_actions_clear(a);
	if (fs_strict_upstream(&r->p) && !r->tls_done[PROTO_UPSTREAM])
		CHECK(pr->only_own(&r->up_pre), "client bytes upstream before TLS: %.*s",
		      (int)(r->up_pre.n > 200 ? 200 : r->up_pre.n), r->up_pre.p);
	pr->check(r);
}

/* d[0..n) to side: whole (piece 0), or in pieces of at most piece bytes, or (cut > 0) in
 * two at offset cut. */
static void fs_feed(struct fs_run *r, const struct fs_proto *pr, enum proto_side side,
		    const uint8_t *d, size_t n, size_t piece, size_t cut)
{
	if (cut && cut < n) {
		r->ops->data(r->st, side, d, cut, &r->a);
		fs_collect(r, pr);
		if (!r->closed) {
			r->ops->data(r->st, side, d + cut, n - cut, &r->a);
			fs_collect(r, pr);
		}
		return;
	}
	if (!piece)
		piece = n;
	for (size_t i = 0; i < n && !r->closed; i += piece) {
		size_t k = n - i < piece ? n - i : piece;
		r->ops->data(r->st, side, d + i, k, &r->a);
		fs_collect(r, pr);
	}
}

enum fs_mode { FS_WHOLE, FS_BYTES, FS_CUT };

/* One run of the script; *trace gets the transcript (valid until the next run in the same
 * mode: the caller does not free it), *timing the
 * protocol's word on it. */
static void fs_run(const struct fs_proto *pr, const uint8_t *data, size_t size,
		   enum fs_mode mode, struct fbuf *trace, int *timing)
{
	/* The harness's own buffers outlive the run, emptied (the transcript one per mode,
	 * the caller reads it after the others ran): allocations beyond ASan's 128 KiB size
	 * classes are mapped and unmapped each time, and those page faults and system calls
	 * were a third of a session harness's time. The module's memory is its own. */
	static struct fbuf keep_trace[3], keep[5], rep;
	static struct proto_actions keep_a;
	struct fs_run r;
	memset(&r, 0, sizeof(r));
	r.trace = keep_trace[mode];
	r.up_pre = keep[0];
	r.cl_pre = keep[1];
	r.to_client = keep[2];
	r.all[0] = keep[3];
	r.all[1] = keep[4];
	r.trace.n = r.up_pre.n = r.cl_pre.n = r.to_client.n = r.all[0].n = r.all[1].n = 0;
	r.a = keep_a;
	static const enum cfg_tls ctls[] = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT,
					     CFG_TLS_NONE };
	static const enum cfg_tls utls[] = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT,
					     CFG_TLS_STARTTLS };
	static const enum cfg_policy upol[] = { CFG_POLICY_NONE, CFG_POLICY_MAY,
						CFG_POLICY_ENCRYPT, CFG_POLICY_FINGERPRINT,
						CFG_POLICY_VERIFY, CFG_POLICY_VERIFY,
						CFG_POLICY_VERIFY, CFG_POLICY_VERIFY };
	r.ops = pr->ops;
	r.p = (struct proto_params){ .session_id = "0123456789abcdef", .route = "fuzz",
				     .protocol = pr->protocol, .helo_name = "proxy.test",
				     .client_ip = "192.0.2.1", .client_port = 1 };
	r.p.client_tls = ctls[(data[0] >> 1) & 3];
	r.p.client_policy = data[0] & 8 ? CFG_POLICY_ENCRYPT : CFG_POLICY_MAY;
	r.p.policy_mode = data[0] & 32 ? CFG_MODE_TESTING : CFG_MODE_ENFORCE;
	r.p.upstream_tls = utls[data[1] & 3];
	r.p.upstream_policy = upol[(data[1] >> 2) & 7];
	r.st = r.ops->create(&r.p);
	if (!r.st)
		abort();
	size_t cut = mode == FS_CUT ? (size_t)data[size - 1] % 64 + 1 : 0;
	r.ops->upstream_connected(r.st, &r.a);
	fs_collect(&r, pr);
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
			if (n && fed + n <= FS_FEED_MAX) {
				fs_feed(&r, pr, op == 0 ? PROTO_CLIENT : PROTO_UPSTREAM, data + i, n,
					mode == FS_BYTES ? 1 : 0, cut);
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
			if (!n || fed + n * times > FS_FEED_MAX) {
				i += n;
				break;
			}
			rep.n = 0;
			for (size_t t = 0; t < times; t++)
				fbuf_add(&rep, data + i, n);
			fs_feed(&r, pr, op == 1 ? PROTO_CLIENT : PROTO_UPSTREAM, rep.p, rep.n,
				mode == FS_BYTES ? 61 : 0, cut);
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
			fs_mark(&r, side == PROTO_CLIENT ? "Dc" : "Du");
			r.ops->tls_done(r.st, (enum proto_side)side, &r.a);
			fs_collect(&r, pr);
			break;
		}
		case 5:
			r.ops->fail(r.st, (enum proto_failure)(arg % 5), "validation-failure", &r.a);
			fs_collect(&r, pr);
			break;
		case 6:
			r.ops->client_eof(r.st, &r.a);
			fs_collect(&r, pr);
			break;
		case 7:
			if (!r.tls_pending[PROTO_UPSTREAM])
				break;
			if (arg & 1) {
				r.ops->upstream_retry(r.st);
			} else if (r.p.upstream_policy == CFG_POLICY_MAY ||
				   r.p.policy_mode == CFG_MODE_TESTING) {
				r.ops->upstream_retry_plain(r.st);
				r.p.upstream_tls = CFG_TLS_NONE;
			} else {
				break;
			}
			r.tls_pending[PROTO_UPSTREAM] = 0;
			r.tls_started[PROTO_UPSTREAM] = 0;
			r.up_pre.n = 0;
			fs_mark(&r, "X");
			r.ops->upstream_connected(r.st, &r.a);
			fs_collect(&r, pr);
			break;
		}
	}
	r.final = 1;
	pr->check(&r);
	(void)r.ops->idle(r.st);
	*timing = pr->timing ? pr->timing(r.st) : 0;
	r.ops->destroy(r.st);
	proto_actions_clear(&r.a);
	keep_a = r.a;
	*trace = keep_trace[mode] = r.trace;
	keep[0] = r.up_pre;
	keep[1] = r.cl_pre;
	keep[2] = r.to_client;
	keep[3] = r.all[0];
	keep[4] = r.all[1];
}

/* LLVMFuzzerTestOneInput's body: the three runs, their transcripts compared. */
static int fs_test_one(const struct fs_proto *pr, const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	struct fbuf t[3];
	int timing[3];
	static const char *const names[] = { "whole", "byte-at-a-time", "cut" };
	for (int m = 0; m < 3; m++) {
		fs_run(pr, data, size, (enum fs_mode)m, &t[m], &timing[m]);
		if (pr->canon)
			pr->canon(&t[m]);
	}
	for (int m = 1; m < 3; m++) {
		if (timing[0] || timing[m])
			continue;
		size_t k = 0;
		while (k < t[0].n && k < t[m].n && t[0].p[k] == t[m].p[k])
			k++;
		if ((t[0].n != t[m].n || k != t[0].n) && getenv("FUZZ_TRACE")) {
			/* raw (the transcripts may hold NUL) */
			fputs("whole: ", stderr);
			fwrite(t[0].p, 1, t[0].n, stderr);
			fprintf(stderr, "\n%s: ", names[m]);
			fwrite(t[m].p, 1, t[m].n, stderr);
			fputs("\n", stderr);
		}
		CHECK(t[0].n == t[m].n && k == t[0].n,
		      "whole and %s transcripts differ at %zu (%zu vs %zu bytes)", names[m], k,
		      t[0].n, t[m].n);
	}
	return 0;
}

#endif
