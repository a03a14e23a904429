/* fuzz_proto_smtp.c - libFuzzer harness for the SMTP/LMTP state machine (proto_smtp_ops).
 *
 * The input is a script. Bytes 0 and 1 choose the route parameters:
 *   byte 0: bit 0 lmtp; bits 1-2 client_tls (none, starttls, implicit, none);
 *           bit 3 client_policy encrypt; bit 4 xclient; bit 5 policy_mode testing;
 *           bit 6 IPv6 client address
 *   byte 1: bits 0-1 upstream_tls (none, starttls, implicit, starttls);
 *           bits 2-4 upstream_policy (none, may, encrypt, fingerprint, verify, verify...)
 * Then records, each an op byte (low 3 bits: the op, high 5 bits: its argument):
 *   0     client bytes: a length byte, then that many bytes
 *   1     client bytes repeated (arg + 1) * 64 times (long lines, big bodies)
 *   2     upstream bytes: a length byte, then that many bytes
 *   3     upstream bytes repeated (arg + 1) * 64 times (long and many reply lines)
 *   4     tls_done on the side with a handshake pending (the client first, unless arg&1)
 *   5     fail(arg % 5)
 *   6     client EOF
 *   7     with a pending upstream handshake: arg odd, a new connection with the same TLS
 *         (the session's retry after a refused resumption); arg even, a plaintext retry
 *         when the policy allows it (may or testing), as after a failed STARTTLS; else
 *         ignored
 * upstream_connected is called first. FUZZ_TRACE=1 prints the transcript of each input
 * (FUZZ_TRACE=bytes: of its byte-at-a-time run);
 * FUZZ_ZERO_LEN=1 also passes 0-byte data records to the module (skipped by default). The script stops at PA_CLOSE, like the session.
 *
 * At most FEED_MAX bytes are fed per run, below SMTP_HOLD_MAX, so that no input limit that
 * depends on how reads are cut is reached.
 *
 * Each input runs twice: data records fed whole, then fed one byte at a time (repeated
 * records in pieces of 61 bytes); the transcripts (bytes per side, in order, and the other
 * actions) must be identical, unless the whole run ended on a reply that came before its
 * command (smtp_saw_early_reply: fed one byte at a time, such a reply is read after the
 * command went out and cannot be told from a genuine one).
 * Invariants checked on every run (abort() on violation):
 *  - upstream_tls = starttls with encrypt/fingerprint/verify in enforce mode: nothing but
 *    the module's own EHLO/LHLO/STARTTLS/QUIT goes upstream before tls_done(UPSTREAM);
 *  - client_tls = starttls with client_policy = encrypt: before tls_done(CLIENT) only
 *    EHLO/HELO/LHLO/NOOP/RSET/QUIT lines (and the module's own STARTTLS/XCLIENT/EHLO) go up;
 *  - no bytes to a side between PA_STARTTLS and tls_done on it (except a final reply
 *    in a batch that ends with PA_CLOSE); PA_STARTTLS(client) right after
 *    "220 2.0.0 Ready to start TLS", PA_STARTTLS(upstream) right after "STARTTLS";
 *  - nothing upstream during the client's handshake, and "RSET" first after it;
 *  - nothing after PA_CLOSE, and a side's STARTTLS at most once;
 *  - what the client receives is CRLF-terminated reply lines "[2-5]dd[ -]..." and every
 *    positive (2xx) line either is the module's own 220 to STARTTLS or its added
 *    "250 STARTTLS", or its text came from the upstream with the same code: the proxy
 *    never invents a 250 (end of data included). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "proto.h"
#include "proto_smtp.h"
#include "fuzz_util.h"

struct ctx {
	struct proto_params p;
	void *st;
	struct proto_actions a;
	int bytewise;
	int closed, eof;
	int tls_pending[2], tls_done[2];
	struct fbuf trace;          /* canonical transcript for the differential check */
	int last;                  /* kind of the last trace entry: 0 client, 1 up, 2 other */
	struct fbuf up_in;          /* everything the upstream sent */
	struct fbuf to_client, to_up;
	size_t up_checked;         /* to_up bytes already checked line by line */
	int rset_due;              /* tls_done(CLIENT) called, nothing sent upstream since */
	int connect_asked, connected; /* greeting = local (p.defer): PA_CONNECT, then
					 upstream_connected at the end of that step */
};

static int strict_upstream(const struct proto_params *p)
{
	return p->upstream_tls == CFG_TLS_STARTTLS && p->policy_mode == CFG_MODE_ENFORCE &&
	       (p->upstream_policy == CFG_POLICY_ENCRYPT ||
		p->upstream_policy == CFG_POLICY_FINGERPRINT ||
		p->upstream_policy == CFG_POLICY_VERIFY);
}

static int starts_with(const uint8_t *s, size_t n, const char *prefix)
{
	size_t l = strlen(prefix);
	return n >= l && memcmp(s, prefix, l) == 0;
}

static int ends_with(const struct fbuf *b, const char *suffix)
{
	size_t l = strlen(suffix);
	return b->n >= l && memcmp(b->p + b->n - l, suffix, l) == 0;
}

/* Only the module's own commands before TLS toward a strict upstream. */
static void check_strict_upstream(struct ctx *c)
{
	char ehlo[300], lhlo[300];
	snprintf(ehlo, sizeof(ehlo), "EHLO %s\r\n", c->p.helo_name);
	snprintf(lhlo, sizeof(lhlo), "LHLO %s\r\n", c->p.helo_name);
	const char *own[] = { ehlo, lhlo, "STARTTLS\r\n", "QUIT\r\n" };
	size_t i = 0;
	while (i < c->to_up.n) {
		size_t k;
		for (k = 0; k < 4; k++)
			if (starts_with(c->to_up.p + i, c->to_up.n - i, own[k])) {
				i += strlen(own[k]);
				break;
			}
		CHECK(k < 4, "upstream got non-own bytes before TLS at offset %zu of %zu", i,
		      c->to_up.n);
	}
}

/* client_policy = encrypt, before the client's TLS: the verbs that may go up. */
static void check_encrypt_client(struct ctx *c)
{
	static const char *const ok[] = { "EHLO", "HELO", "LHLO", "NOOP", "RSET", "QUIT",
					  "STARTTLS", "XCLIENT" };
	while (c->up_checked < c->to_up.n) {
		const uint8_t *l = c->to_up.p + c->up_checked;
		size_t avail = c->to_up.n - c->up_checked;
		const uint8_t *nl = memchr(l, '\n', avail);
		CHECK(nl, "upstream-bound text before client TLS is not whole lines");
		size_t n = (size_t)(nl - l);
		int good = 0;
		for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]) && !good; k++) {
			size_t vl = strlen(ok[k]);
			good = n >= vl && strncasecmp((const char *)l, ok[k], vl) == 0 &&
			       (n == vl || l[vl] == ' ' || l[vl] == '\r');
		}
		CHECK(good, "client_policy=encrypt: \"%.*s\" went upstream before client TLS",
		      (int)(n > 60 ? 60 : n), (const char *)l);
		c->up_checked += n + 1;
	}
}

/* Whole-stream check of what the client received. */
static void check_client_stream(struct ctx *c)
{
	if (c->to_client.n == 0)
		return;
	const uint8_t *s = c->to_client.p, *end = s + c->to_client.n;
	while (s < end) {
		const uint8_t *nl = memchr(s, '\n', (size_t)(end - s));
		CHECK(nl, "client stream does not end in a line terminator");
		size_t n = (size_t)(nl - s) + 1;
		CHECK(n >= 5 && nl[-1] == '\r', "client line without CRLF");
		CHECK(s[0] >= '2' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' &&
			      s[2] <= '9',
		      "client line without a reply code: \"%.*s\"", (int)(n > 60 ? 60 : n),
		      (const char *)s);
		CHECK(s[3] == ' ' || s[3] == '-' || (n == 5 && s[3] == '\r'),
		      "client line with a bad mark: \"%.*s\"", (int)(n > 60 ? 60 : n),
		      (const char *)s);
		if (s[0] == '2') {
			size_t tl = n > 6 ? n - 6 : 0; /* text without "ddd?" and CRLF */
			const uint8_t *t = s + 4;
			int own = starts_with(s, n, "220 2.0.0 Ready to start TLS\r\n") ||
				  (tl == 8 && memcmp(s, "250", 3) == 0 &&
				   memcmp(t, "STARTTLS", 8) == 0) ||
				  (c->p.defer && (starts_with(s, n, "220 proxy.fuzz.test ESMTP\r\n") ||
						  starts_with(s, n, "220 proxy.fuzz.test LMTP\r\n") ||
						  starts_with(s, n, "221 2.0.0 proxy.fuzz.test Bye\r\n")));
			int found = own || tl == 0;
			/* the same code and text somewhere in the upstream's bytes */
			const uint8_t *h = c->up_in.p, *hend = h ? h + c->up_in.n : h;
			while (!found && c->up_in.n && h < hend) {
				const uint8_t *m = memmem(h, (size_t)(hend - h), t, tl);
				if (!m)
					break;
				if (m - c->up_in.p >= 4 && memcmp(m - 4, s, 3) == 0)
					found = 1;
				h = m + 1;
			}
			CHECK(found, "client got a 2xx line the upstream never sent: \"%.*s\"",
			      (int)(n > 80 ? 80 : n), (const char *)s);
		}
		s += n;
	}
}

static void trace_add(struct ctx *c, int kind, const void *d, size_t n)
{
	static const char *const tags[] = { "\x01" "C", "\x01" "U" };
	if (kind < 2) {
		if (c->last != kind)
			fbuf_add(&c->trace, tags[kind], 2);
		fbuf_add(&c->trace, d, n);
	} else {
		fbuf_add(&c->trace, "\x01", 1);
		fbuf_add(&c->trace, d, n);
	}
	c->last = kind;
}

static void collect(struct ctx *c)
{
	struct proto_actions *a = &c->a;
	int ends_closing = a->n && a->a[a->n - 1].type == PA_CLOSE;
	for (size_t i = 0; i < a->n; i++) {
		const struct proto_act *x = &a->a[i];
		CHECK(!c->closed, "action %d after PA_CLOSE", (int)x->type);
		switch (x->type) {
		case PA_SEND: {
			const uint8_t *d = a->buf + x->off;
			CHECK(x->off + x->len <= a->blen, "PA_SEND outside the buffer");
			CHECK(!c->tls_pending[x->side] || ends_closing,
			      "bytes to side %d during its TLS handshake", (int)x->side);
			/* during the client's handshake nothing moves upstream (what the client
			 * pipelined after STARTTLS is gone); after it, RSET comes first */
			CHECK(x->side != PROTO_UPSTREAM || !c->tls_pending[PROTO_CLIENT],
			      "bytes upstream during the client's TLS handshake");
			if (x->side == PROTO_UPSTREAM && c->rset_due) {
				CHECK(starts_with(d, x->len, "RSET\r\n"),
				      "first upstream bytes after the client's TLS are not RSET");
				c->rset_due = 0;
			}
			CHECK(x->side != PROTO_UPSTREAM || !c->p.defer || c->connected,
			      "bytes upstream before the upstream was asked for and connected");
			if (x->side == PROTO_CLIENT) {
				fbuf_add(&c->to_client, d, x->len);
			} else {
				fbuf_add(&c->to_up, d, x->len);
				if (strict_upstream(&c->p) && !c->tls_done[PROTO_UPSTREAM])
					check_strict_upstream(c);
				if (c->p.client_tls == CFG_TLS_STARTTLS &&
				    c->p.client_policy == CFG_POLICY_ENCRYPT &&
				    !c->tls_done[PROTO_CLIENT])
					check_encrypt_client(c);
				else
					c->up_checked = c->to_up.n;
			}
			trace_add(c, (int)x->side, d, x->len);
			break;
		}
		case PA_POLICY:
			CHECK(x->reason && !strcmp(x->reason, "starttls-not-supported"),
			      "PA_POLICY with an unexpected result");
			break;
		case PA_STARTTLS:
			CHECK(!c->tls_pending[x->side] && !c->tls_done[x->side],
			      "second STARTTLS on side %d", (int)x->side);
			if (x->side == PROTO_CLIENT) {
				CHECK(c->p.client_tls == CFG_TLS_STARTTLS, "client STARTTLS on a "
				      "route without it");
				CHECK(ends_with(&c->to_client, "220 2.0.0 Ready to start TLS\r\n"),
				      "PA_STARTTLS(client) not right after the 220");
			} else {
				CHECK(c->p.upstream_tls == CFG_TLS_STARTTLS, "upstream STARTTLS on a "
				      "route without it");
				CHECK(ends_with(&c->to_up, "STARTTLS\r\n"),
				      "PA_STARTTLS(upstream) not right after STARTTLS");
			}
			c->tls_pending[x->side] = 1;
			trace_add(c, 2, x->side == PROTO_CLIENT ? "Tc" : "Tu", 2);
			break;
		case PA_READY:
			trace_add(c, 2, "R", 1);
			break;
		case PA_MESSAGE: { /* a message's final reply: a well-formed record */
			struct proto_message m;
			CHECK(proto_message_get(a, x, &m) == 0, "PA_MESSAGE unreadable");
			CHECK(m.code >= 200 && m.code <= 599, "PA_MESSAGE code %d", m.code);
			CHECK(strlen(m.reply) < sizeof(m.reply) && strlen(m.to) <= SMTP_TO_MAX + 4,
			      "PA_MESSAGE texts out of bounds");
			CHECK(!strpbrk(m.reply, "\r\n") && !strpbrk(m.to, "\r\n") &&
			      !strpbrk(m.from, "\r\n"), "PA_MESSAGE text with a line break");
			break;
		}
		case PA_CLOSE:
			c->closed = 1;
			trace_add(c, 2, "X", 1);
			break;
		case PA_CONNECT:
			CHECK(c->p.defer && !c->connect_asked, "PA_CONNECT twice, or without defer");
			c->connect_asked = 1;
			trace_add(c, 2, "C", 1);
			break;
		default:
			CHECK(0, "unknown action %d", (int)x->type);
		}
	}
	proto_actions_clear(a);
}

static int zero_len; /* FUZZ_ZERO_LEN=1: also deliver empty reads */

/* The session's two client deadlines (line_timeout, min_data_rate) never both run: message
 * data is no command line; and neither runs once the module has closed. */
static void deadlines(struct ctx *c)
{
	int in_data = proto_smtp_ops.client_in_data(c->st);
	uint64_t partial = proto_smtp_ops.client_partial(c->st);
	CHECK(!(in_data && partial), "client_in_data and client_partial at once");
	CHECK(!c->closed || (!in_data && !partial), "a client deadline after PA_CLOSE");
}

#define FEED_MAX (160 * 1024)

/* Feeds n bytes; in the byte-at-a-time run, in pieces of piece bytes. */
static void feed(struct ctx *c, enum proto_side side, const uint8_t *d, size_t n, size_t piece)
{
	if (n == 0 && !zero_len)
		return; /* the session never delivers an empty read */
	if (side == PROTO_UPSTREAM)
		fbuf_add(&c->up_in, d, n);
	if (!c->bytewise) {
		proto_smtp_ops.data(c->st, side, d, n, &c->a);
		collect(c);
		deadlines(c);
		return;
	}
	for (size_t i = 0; i < n && !c->closed; i += piece) {
		size_t k = n - i < piece ? n - i : piece;
		proto_smtp_ops.data(c->st, side, d + i, k, &c->a);
		collect(c);
		deadlines(c);
	}
}

static void params_from(struct proto_params *p, uint8_t b0, uint8_t b1)
{
	static const enum cfg_tls ctls[] = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT,
					     CFG_TLS_NONE };
	static const enum cfg_tls utls[] = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT,
					     CFG_TLS_STARTTLS };
	static const enum cfg_policy upol[] = { CFG_POLICY_NONE,    CFG_POLICY_MAY,
						CFG_POLICY_ENCRYPT, CFG_POLICY_FINGERPRINT,
						CFG_POLICY_VERIFY,  CFG_POLICY_VERIFY,
						CFG_POLICY_VERIFY,  CFG_POLICY_ENCRYPT };
	memset(p, 0, sizeof(*p));
	p->session_id = "f0f0f0f0f0f0f0f0";
	p->route = "fuzz";
	p->protocol = (b0 & 1) ? CFG_PROTO_LMTP : CFG_PROTO_SMTP;
	p->client_tls = ctls[(b0 >> 1) & 3];
	p->client_policy = (b0 & 8) ? CFG_POLICY_ENCRYPT : CFG_POLICY_MAY;
	p->xclient = (b0 >> 4) & 1;
	p->policy_mode = (b0 & 32) ? CFG_MODE_TESTING : CFG_MODE_ENFORCE;
	p->client_ip = (b0 & 64) ? "2001:db8::1:2" : "198.51.100.23";
	p->client_port = 54321;
	p->upstream_tls = utls[b1 & 3];
	p->upstream_policy = upol[(b1 >> 2) & 7];
	p->defer = (b1 >> 5) & 1;
	p->helo_name = "proxy.fuzz.test";
}

static int early; /* the last run ended on a reply before its command */

static void run(const uint8_t *data, size_t size, int bytewise, struct fbuf *trace_out)
{
	/* The harness's own buffers (transcripts, the expanded repeated records) outlive the
	 * run, emptied: allocations beyond ASan's 128 KiB size classes are mmap'd and
	 * unmapped each time, and those system calls with their page faults were a third of
	 * the harness's time. The module's own memory is untouched by this. */
	static struct fbuf keep[4];
	static struct proto_actions keep_a;
	static uint8_t *big;
	struct ctx c;
	memset(&c, 0, sizeof(c));
	c.trace = keep[0];
	c.up_in = keep[1];
	c.to_client = keep[2];
	c.to_up = keep[3];
	c.trace.n = c.up_in.n = c.to_client.n = c.to_up.n = 0;
	c.a = keep_a;
	c.bytewise = bytewise;
	c.last = -1;
	params_from(&c.p, data[0], data[1]);
	c.st = proto_smtp_ops.create(&c.p);
	if (!c.st)
		abort();
	if (c.p.defer) /* greeting = local: the module greets, the upstream comes on request */
		proto_smtp_ops.late_start(c.st, &c.a);
	else
		proto_smtp_ops.upstream_connected(c.st, &c.a);
	c.connected = !c.p.defer;
	collect(&c);
	size_t i = 2, fed = 0;
	while (i < size && !c.closed) {
		if (c.connect_asked && !c.connected) { /* as the session does, once connected */
			c.connected = 1;
			proto_smtp_ops.upstream_connected(c.st, &c.a);
			collect(&c);
			continue;
		}
		uint8_t op = data[i++];
		uint8_t arg = op >> 3;
		switch (op & 7) {
		case 0:
		case 1:
		case 2:
		case 3: {
			size_t n = i < size ? data[i++] : 0;
			if (n > size - i)
				n = size - i;
			int from_client = (op & 7) < 2;
			int repeated = op & 1;
			size_t reps = repeated ? (size_t)(arg + 1) * 64 : 1;
			if (n && reps > (FEED_MAX - fed) / n)
				reps = (FEED_MAX - fed) / n;
			if (!(from_client && c.eof) && (reps || !n)) {
				const uint8_t *d = data + i;
				if (reps > 1) {
					if (!big && !(big = malloc(FEED_MAX)))
						abort();
					for (size_t r = 0; r < reps; r++)
						memcpy(big + r * n, data + i, n);
					d = big;
				}
				fed += n * reps;
				feed(&c, from_client ? PROTO_CLIENT : PROTO_UPSTREAM, d, n * reps,
				     reps > 1 ? 61 : 1);
			}
			i += n;
			break;
		}
		case 4: {
			int side = -1;
			if (c.tls_pending[PROTO_CLIENT] && !(arg & 1 && c.tls_pending[PROTO_UPSTREAM]))
				side = PROTO_CLIENT;
			else if (c.tls_pending[PROTO_UPSTREAM])
				side = PROTO_UPSTREAM;
			if (side < 0)
				break;
			c.tls_pending[side] = 0;
			c.tls_done[side] = 1;
			trace_add(&c, 2, side == PROTO_CLIENT ? "Dc" : "Du", 2);
			c.rset_due = side == PROTO_CLIENT;
			proto_smtp_ops.tls_done(c.st, (enum proto_side)side, &c.a);
			collect(&c);
			break;
		}
		case 5:
			proto_smtp_ops.fail(c.st, (enum proto_failure)(arg % 5),
					    arg % 5 == PF_TLS_POLICY ? "certificate-not-trusted"
								     : "fuzz",
					    &c.a);
			collect(&c);
			break;
		case 6:
			if (c.eof)
				break;
			c.eof = 1;
			proto_smtp_ops.client_eof(c.st, &c.a);
			collect(&c);
			break;
		case 7:
			if (c.tls_pending[PROTO_UPSTREAM] && (arg & 1)) {
				c.tls_pending[PROTO_UPSTREAM] = 0;
				proto_smtp_ops.upstream_retry(c.st);
				proto_smtp_ops.upstream_connected(c.st, &c.a);
				collect(&c);
			} else if (c.tls_pending[PROTO_UPSTREAM] &&
			    (c.p.upstream_policy == CFG_POLICY_MAY ||
			     c.p.policy_mode == CFG_MODE_TESTING)) {
				c.tls_pending[PROTO_UPSTREAM] = 0;
				proto_smtp_ops.upstream_retry_plain(c.st);
				c.p.upstream_tls = CFG_TLS_NONE; /* as the module now sees it */
				proto_smtp_ops.upstream_connected(c.st, &c.a);
				collect(&c);
			}
			break;
		}
	}
	check_client_stream(&c);
	fbuf_add(trace_out, c.trace.p, c.trace.n);
	early = smtp_saw_early_reply(c.st);
	proto_smtp_ops.destroy(c.st);
	proto_actions_clear(&c.a);
	keep_a = c.a;
	keep[0] = c.trace;
	keep[1] = c.up_in;
	keep[2] = c.to_client;
	keep[3] = c.to_up;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_setup(LOG_ERROR, 0);
	zero_len = getenv("FUZZ_ZERO_LEN") != NULL;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	static struct fbuf whole, bytes;
	whole.n = bytes.n = 0;
	run(data, size, 0, &whole);
	int whole_early = early;
	run(data, size, 1, &bytes);
	const char *tr = getenv("FUZZ_TRACE");
	if (tr) {
		/* replaying an input: show the transcript (\x01C client-bound, \x01U upstream-bound,
		 * \x01Tc/Tu PA_STARTTLS, \x01Dc/Du tls_done, \x01R ready, \x01X close) of the
		 * whole-read run, or with FUZZ_TRACE=bytes of the byte-at-a-time run */
		const struct fbuf *t = strcmp(tr, "bytes") == 0 ? &bytes : &whole;
		for (size_t k = 0; k < t->n; k++) {
			uint8_t ch = t->p[k];
			if (ch == 1)
				fprintf(stderr, "\n| ");
			else if (ch == '\r')
				fprintf(stderr, "\\r");
			else if (ch == '\n')
				fprintf(stderr, "\\n");
			else if (ch < 32 || ch > 126)
				fprintf(stderr, "\\x%02x", ch);
			else
				fputc(ch, stderr);
		}
		fprintf(stderr, "\n");
	}
	if (!whole_early &&
	    (whole.n != bytes.n || (whole.n && memcmp(whole.p, bytes.p, whole.n) != 0))) {
		size_t k = 0;
		while (k < whole.n && k < bytes.n && whole.p[k] == bytes.p[k])
			k++;
		size_t from = k > 80 ? k - 80 : 0;
		fprintf(stderr, "whole and byte-at-a-time transcripts differ at %zu (%zu vs %zu)\n",
			k, whole.n, bytes.n);
		fprintf(stderr, "whole: ...%.*s\n", (int)((whole.n - from) > 240 ? 240 : whole.n - from),
			(const char *)whole.p + from);
		fprintf(stderr, "bytes: ...%.*s\n", (int)((bytes.n - from) > 240 ? 240 : bytes.n - from),
			(const char *)bytes.p + from);
		abort();
	}
	return 0;
}
