/* fuzz_imap_session.c - libFuzzer harness for the IMAP state machine (proto_imap_ops): whole
 * sessions driven by fuzz_session.h (its comment has the script format and the invariants
 * every module keeps), cut arbitrarily in both directions. (fuzz_proto_imap.c fuzzes the
 * parsers underneath: the literal-aware reader, tags, responses, capability lists.)
 *
 * IMAP's own invariants (abort() on violation):
 *  - before tls_done(UPSTREAM) on a strict starttls route only the module's own
 *    "P<16 hex> CAPABILITY" and "P<16 hex> STARTTLS" go up, and the client gets nothing
 *    but a closing "* BYE"; PA_STARTTLS(client) right after "OK Begin TLS negotiation
 *    now", PA_STARTTLS(upstream) right after " STARTTLS";
 *  - client_tls = starttls with client_policy = encrypt: no LOGIN, AUTHENTICATE or COMPRESS
 *    command goes up before tls_done(CLIENT) (checked up to the first literal that went
 *    up, whose data may hold any text, and until the client got a "+", after which its
 *    next line is an answer, not a command);
 *  - once the client's TLS started, no capability list it gets offers STARTTLS (checked
 *    through the literals sent to it, on every response's first segment, and not once a
 *    COMPRESS went up).
 * The three runs' transcripts must be identical: the module never depends on how bytes
 * are cut. */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto_imap.h"
#include "fuzz_session.h"

/* 1 when line [p, p+n) (no terminator) is "P" + 16 hex digits + " " + cmd. */
static int own_line(const uint8_t *p, size_t n, const char *cmd)
{
	size_t l = strlen(cmd);
	if (n != 18 + l || p[0] != 'P' || p[17] != ' ' || memcmp(p + 18, cmd, l) != 0)
		return 0;
	for (size_t i = 1; i < 17; i++)
		if (!isxdigit(p[i]) || isupper(p[i]))
			return 0;
	return 1;
}

/* Every line of b is one of the module's own commands. */
static int only_own(const struct fbuf *b)
{
	size_t i = 0;
	while (i < b->n) {
		const uint8_t *nl = memchr(b->p + i, '\n', b->n - i);
		if (!nl)
			return 0;
		size_t end = (size_t)(nl - b->p);
		if (end == i || b->p[end - 1] != '\r')
			return 0;
		const uint8_t *p = b->p + i;
		size_t n = end - 1 - i;
		if (!own_line(p, n, "CAPABILITY") && !own_line(p, n, "STARTTLS"))
			return 0;
		i = end + 1;
	}
	return 1;
}

/* Walks the lines of b from *at (to its first line that announces a literal, included):
 * calls f(line, len) for each complete line, and for the last one without its LF only when
 * final; returns 0 as soon as f does. *at keeps where the next call resumes (SIZE_MAX once
 * a literal was announced: any text follows). */
static int each_line(const struct fbuf *b, size_t *at, int final,
		     int (*f)(const uint8_t *, size_t))
{
	size_t i = *at;
	if (i == SIZE_MAX)
		return 1;
	while (i < b->n) {
		const uint8_t *nl = memchr(b->p + i, '\n', b->n - i);
		if (!nl && !final)
			break;
		size_t end = nl ? (size_t)(nl - b->p) : b->n;
		size_t n = end - i;
		if (n && b->p[end - 1] == '\r')
			n--;
		if (!f(b->p + i, n))
			return 0;
		if (n && b->p[i + n - 1] == '}') {
			*at = SIZE_MAX;
			return 1; /* literal data follows: any text */
		}
		i = nl ? end + 1 : b->n;
	}
	*at = i;
	return 1;
}

/* Walks what the client got from *at like each_line, but through the literals: a line that
 * announces one (imap_literal_at_end, as the module's reader reads it) is followed by that
 * many octets of data and then by the rest of the same response (*cont = 1: a continuation
 * segment, not a response of its own, so f is not called on it). *at may pass b->n while
 * the data is still to come; SIZE_MAX once a literal's size cannot be followed. */
static int each_response(const struct fbuf *b, size_t *at, size_t *cont, int final,
			 int (*f)(const uint8_t *, size_t))
{
	size_t i = *at;
	if (i == SIZE_MAX)
		return 1;
	while (i < b->n) {
		const uint8_t *nl = memchr(b->p + i, '\n', b->n - i);
		if (!nl && !final)
			break;
		size_t end = nl ? (size_t)(nl - b->p) : b->n;
		size_t n = end - i;
		if (n && b->p[end - 1] == '\r')
			n--;
		if (!*cont && !f(b->p + i, n))
			return 0;
		uint64_t lit;
		int nonsync, binary;
		int k = imap_literal_at_end(b->p + i, n, &lit, &nonsync, &binary);
		i = nl ? end + 1 : b->n;
		if (k < 0 || (k == 1 && lit > SIZE_MAX - 1 - i)) {
			*at = SIZE_MAX;
			return 1;
		}
		*cont = k == 1;
		if (k == 1)
			i += (size_t)lit;
	}
	*at = i;
	return 1;
}

/* The second word of a command line is not a credentials or COMPRESS verb. */
static int not_credentials(const uint8_t *p, size_t n)
{
	const uint8_t *sp = memchr(p, ' ', n);
	if (!sp)
		return 1;
	size_t o = (size_t)(sp - p) + 1;
	static const char *const verbs[] = { "LOGIN", "AUTHENTICATE", "COMPRESS" };
	for (int k = 0; k < 3; k++) {
		size_t l = strlen(verbs[k]);
		if (n - o >= l && strncasecmp((const char *)p + o, verbs[k], l) == 0 &&
		    (n - o == l || p[o + l] == ' '))
			return 0;
	}
	return 1;
}

/* A capability list in the line (untagged CAPABILITY, or a [CAPABILITY ...] code) does not
 * offer STARTTLS. */
static int no_starttls_offer(const uint8_t *p, size_t n)
{
	size_t off, len;
	if (imap_caps_find(p, n, &off, &len) != 1)
		return 1;
	return !(imap_caps_flags((const char *)p + off, len) & IMAP_CAP_STARTTLS);
}

enum { COMPRESS_UP = 1, CONTINUATION = 2 };

static void sent_up(struct fs_run *r, const uint8_t *d, size_t n)
{
	/* COMPRESS went up: what comes back may be a compressed stream */
	for (size_t i = 0; i + 9 <= n; i++)
		if (strncasecmp((const char *)d + i, " COMPRESS", 9) == 0)
			r->flags |= COMPRESS_UP;
}

static void sent_client(struct fs_run *r, const uint8_t *d, size_t n)
{
	/* the upstream's "+": the client's next line is an answer to it, not a command */
	for (size_t i = 0; i < n; i++)
		if (d[i] == '+' && (i == 0 ? r->all[PROTO_CLIENT].n == n ||
						     r->all[PROTO_CLIENT].p[r->all[PROTO_CLIENT].n - n - 1] == '\n'
					   : d[i - 1] == '\n'))
			r->flags |= CONTINUATION;
}

static void check(struct fs_run *r)
{
	if (fs_strict_upstream(&r->p) && !r->tls_done[PROTO_UPSTREAM]) {
		const struct fbuf *c = &r->all[PROTO_CLIENT];
		CHECK(c->n == 0 || (c->n >= 6 && memcmp(c->p, "* BYE ", 6) == 0),
		      "the client got upstream words before the upstream's TLS: %.*s",
		      (int)(c->n > 200 ? 200 : c->n), c->p);
	}
	if (r->p.client_tls == CFG_TLS_STARTTLS && r->p.client_policy == CFG_POLICY_ENCRYPT &&
	    !(r->flags & CONTINUATION))
		CHECK(each_line(&r->cl_pre, &r->seen[0], r->final, not_credentials),
		      "credentials or COMPRESS upstream before the client's TLS: %.*s",
		      (int)(r->cl_pre.n > 200 ? 200 : r->cl_pre.n), r->cl_pre.p);
	if (!(r->flags & COMPRESS_UP))
		CHECK(each_response(&r->to_client, &r->seen[1], &r->seen[2], r->final,
				    no_starttls_offer),
		      "STARTTLS offered inside the client's TLS");
}

/* The module's random tags ("P" and 16 hex digits) read the same in every run. */
static void canon(struct fbuf *t)
{
	for (size_t i = 0; i + 17 <= t->n; i++) {
		if (t->p[i] != 'P')
			continue;
		size_t k = 1;
		while (k < 17 && isxdigit(t->p[i + k]) && !isupper(t->p[i + k]))
			k++;
		if (k == 17)
			memset(t->p + i + 1, '#', 16);
	}
}

static const struct fs_proto imap = {
	.ops = &proto_imap_ops,
	.protocol = CFG_PROTO_IMAP,
	.client_go = "OK Begin TLS negotiation now\r\n",
	.stls_cmd = " STARTTLS\r\n",
	.only_own = only_own,
	.check = check,
	.sent_up = sent_up,
	.sent_client = sent_client,
	.timing = NULL,
	.canon = canon,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	log_setup(getenv("FUZZ_LOG") ? LOG_DEBUG : LOG_ERROR, 0); /* FUZZ_LOG=1: the states */
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fs_test_one(&imap, data, size);
}
