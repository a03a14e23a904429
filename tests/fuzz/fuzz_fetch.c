/* fuzz_fetch.c - libFuzzer harness for the HTTP/1.1 response parser of fetch.h
 * (struct fetch_parser, fetch_type_matches).
 *
 * Input: four parameter bytes, then the response.
 *   byte 0: bits 0-1 how it ends after the bytes (0, 3: not at all; 1: TCP end without
 *           close_notify; 2: TLS close_notify); bit 2 require Content-Type text/plain;
 *           bits 3-5 max_body (0 = the default 65536, 1, 10, 100, 1000, 8192, 65535,
 *           200000); bits 6-7 how the second and third feeds split it (see below).
 *   byte 1: k, byte 2: j, byte 3: m. When k > 0, lines j .. j + (m & 3) (split at LF) are
 *           repeated k * 64 times in place (the response at most 256 KiB): the bounds (8 KiB
 *           header block, 1 KiB chunk lines, 64 KiB of chunk framing, 64 KiB bodies, a
 *           max_body of 200,000) are out of reach of libFuzzer's max_len otherwise.
 * The response is fed three times: whole, then in pieces (one byte each when it is at
 * most 8 KiB, else pieces of 1..256 bytes from a PRNG seeded by the input), then in
 * pieces of a size chosen by bits 6-7 (1..7, 1..97, 1..1500 or 1..16384 bytes; at least
 * 1..97 above 8 KiB). The cost of an execution is the number of calls: one byte at a time
 * through an expanded megabyte made the harness 2.5 times slower for no new state. Besides
 * memory safety (ASan/UBSan) it checks: all three give the same result (finished or not,
 * error, status, detail, body); a finished parser consumes nothing more; with an end
 * given, the parser is finished; the error is one of OK, HTTP, TYPE, SIZE (never NOMEM
 * here); the detail is one line of printable ASCII, empty exactly on OK; OK means status
 * 200, a body of at most max_body bytes, NUL-terminated, and, when a type is required,
 * a Content-Type that matches it; a status is 0 or 100..999. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch.h"
#include "fuzz_util.h"

#define EXPAND_MAX (256 << 10)

struct outcome {
	int finished;
	enum fetch_error error;
	int status;
	char detail[200];
	uint8_t *body;
	size_t len;
	char content_type[FETCH_TYPE_MAX + 1];
};

static uint32_t rng;

static uint32_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

/* Feeds d in pieces: piece 0 = all at once; else sizes 1..piece (random when rnd). */
static void run(const uint8_t *d, size_t len, size_t max_body, const char *want, int eof,
		size_t piece, int rnd, struct outcome *o)
{
	struct fetch_parser p;
	fetch_parser_init(&p, max_body, want);
	int fin = 0;
	size_t at = 0;
	if (piece == 0) {
		fin = fetch_parser_feed(&p, d, len);
		at = len;
	}
	while (!fin && at < len) {
		size_t n = rnd ? 1 + next_rand() % piece : piece;
		if (n > len - at)
			n = len - at;
		fin = fetch_parser_feed(&p, d + at, n);
		at += n;
	}
	if (fin) {
		CHECK(fetch_parser_feed(&p, "x", 1) == 1, "a finished parser took more");
		CHECK(p.done, "finished without done");
	}
	if (!fin && eof) {
		fin = fetch_parser_eof(&p, eof == 2);
		CHECK(fin == 1, "fetch_parser_eof returned %d", fin);
	}
	memset(o, 0, sizeof(*o));
	o->finished = fin;
	o->error = p.error;
	o->status = p.status;
	snprintf(o->detail, sizeof(o->detail), "%s", p.detail);
	snprintf(o->content_type, sizeof(o->content_type), "%s", p.content_type);
	CHECK(p.status == 0 || (p.status >= 100 && p.status <= 999), "status %d", p.status);
	if (fin && p.error == FETCH_OK) {
		CHECK(p.body != NULL, "OK without a body");
		CHECK(p.body[p.len] == 0, "body not NUL-terminated");
		CHECK(p.len <= p.max_body, "body %zu over max_body %zu", p.len, p.max_body);
		o->body = malloc(p.len + 1);
		if (!o->body)
			abort();
		memcpy(o->body, p.body, p.len + 1);
		o->len = p.len;
	}
	fetch_parser_free(&p);
}

static void check_outcome(const struct outcome *o, const char *want)
{
	if (!o->finished)
		return;
	CHECK(o->error == FETCH_OK || o->error == FETCH_E_HTTP || o->error == FETCH_E_TYPE ||
		      o->error == FETCH_E_SIZE,
	      "error %d (%s)", o->error, o->detail);
	for (const char *c = o->detail; *c; c++)
		CHECK((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f,
		      "detail not printable: %s", o->detail);
	CHECK((o->error == FETCH_OK) == (o->detail[0] == '\0'), "error %d with detail \"%s\"",
	      o->error, o->detail);
	if (o->error == FETCH_OK) {
		CHECK(o->status == 200, "OK with status %d", o->status);
		CHECK(!want || fetch_type_matches(o->content_type, want),
		      "OK with Content-Type \"%s\"", o->content_type);
	}
}

static void same(const struct outcome *a, const struct outcome *b, const char *how)
{
	CHECK(a->finished == b->finished, "%s: finished %d vs %d (%s / %s)", how, a->finished,
	      b->finished, a->detail, b->detail);
	if (!a->finished)
		return;
	CHECK(a->error == b->error && a->status == b->status && !strcmp(a->detail, b->detail),
	      "%s: %d %d \"%s\" vs %d %d \"%s\"", how, a->error, a->status, a->detail, b->error,
	      b->status, b->detail);
	CHECK(a->len == b->len && (!a->len || !memcmp(a->body, b->body, a->len)),
	      "%s: bodies differ (%zu vs %zu bytes)", how, a->len, b->len);
}

/* Repeats lines j..j+m of d k*64 times; returns the expanded response (malloc'd). */
static uint8_t *expand(const uint8_t *d, size_t len, unsigned k, unsigned j, unsigned m,
		       size_t *outlen)
{
	size_t s = 0, line = 0;
	while (line < j && s < len) { /* start of line j */
		const uint8_t *nl = memchr(d + s, '\n', len - s);
		if (!nl) {
			s = len;
			break;
		}
		s = (size_t)(nl - d) + 1;
		line++;
	}
	size_t e = s;
	for (unsigned i = 0; i <= m && e < len; i++) { /* end of line j + m */
		const uint8_t *nl = memchr(d + e, '\n', len - e);
		e = nl ? (size_t)(nl - d) + 1 : len;
	}
	size_t seg = e - s, times = (size_t)k * 64;
	if (seg && times > (EXPAND_MAX - len) / seg)
		times = (EXPAND_MAX - len) / seg;
	size_t n = len + seg * (times ? times - 1 : 0);
	uint8_t *out = malloc(n ? n : 1);
	if (!out)
		abort();
	memcpy(out, d, s);
	size_t o = s;
	for (size_t t = 0; t < times; t++, o += seg)
		memcpy(out + o, d + s, seg);
	if (!times) {
		memcpy(out + o, d + s, seg);
		o += seg;
	}
	memcpy(out + o, d + e, len - e);
	*outlen = o + (len - e);
	CHECK(*outlen == n, "expand %zu vs %zu", *outlen, n);
	return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t maxes[8] = { 0, 1, 10, 100, 1000, 8192, 65535, 200000 };
	static const size_t pieces[4] = { 7, 97, 1500, 16384 };
	if (size < 4)
		return 0;
	int eof = data[0] & 3;
	if (eof == 3)
		eof = 0;
	const char *want = data[0] & 4 ? "text/plain" : NULL;
	size_t max_body = maxes[(data[0] >> 3) & 7];
	size_t piece = pieces[data[0] >> 6];
	size_t len;
	uint8_t *d = expand(data + 4, size - 4, data[1], data[2], data[3] & 3, &len);

	rng = 2166136261u;
	for (size_t i = 0; i < size && i < 64; i++)
		rng = (rng ^ data[i]) * 16777619u;
	rng |= 1;

	struct outcome whole, bytes, split;
	run(d, len, max_body, want, eof, 0, 0, &whole);
	check_outcome(&whole, want);
	if (len <= 8192)
		run(d, len, max_body, want, eof, 1, 0, &bytes);
	else
		run(d, len, max_body, want, eof, 256, 1, &bytes);
	if (len > 8192 && piece < 97)
		piece = 97;
	same(&whole, &bytes, "small pieces");
	run(d, len, max_body, want, eof, piece, 1, &split);
	same(&whole, &split, "random pieces");

	/* the type matcher on whatever the response said */
	if (whole.content_type[0]) {
		fetch_type_matches(whole.content_type, "text/plain");
		CHECK(fetch_type_matches(whole.content_type, whole.content_type) ||
			      strchr(whole.content_type, ';') || whole.content_type[0] == ' ' ||
			      whole.content_type[0] == '\t' ||
			      whole.content_type[strlen(whole.content_type) - 1] == ' ' ||
			      whole.content_type[strlen(whole.content_type) - 1] == '\t',
		      "\"%s\" does not match itself", whole.content_type);
	}
	free(whole.body);
	free(bytes.body);
	free(split.body);
	free(d);
	return 0;
}
