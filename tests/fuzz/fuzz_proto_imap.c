/* fuzz_proto_imap.c - libFuzzer harness for the IMAP parsing pieces (proto_imap.h): the
 * literal-aware reader, imap_tag_verb, imap_classify, imap_caps_find/flags/rewrite.
 *
 * Input: byte 0 the rewrite ops (low 4 bits, IMAP_CAPS_*), bytes 1-2 a split point
 * (little endian, modulo the data's length); the rest is the data, read as one side's
 * stream by an imap_reader (line bound 256, literal bound 300, small so that both bounds
 * are reached).
 *
 * Invariants (abort() on violation):
 *  - the reader's transcript (every item with its marks, literal data merged) is the same
 *    fed whole, fed in two pieces at the split point, and fed one byte at a time;
 *  - a line segment is shorter than the line bound and holds no LF; a literal announced
 *    is at most the literal bound; literal data never exceeds what was announced;
 *  - with no IR_TOO_LONG, the octets consumed plus those pending are the input's;
 *  - imap_tag_verb: on success a non-empty tag without "+" or SP, an upper-case verb;
 *  - imap_caps_find: the list lies inside the line;
 *  - imap_caps_rewrite into len + 32 octets never fails with -ENOSPC and agrees with
 *    imap_caps_find; the result is a response of the same kind and status, still carrying
 *    a list, whose flags obey ops (STARTTLS present after ADD without DEL, absent after
 *    DEL; LOGINDISABLED present and no AUTH= after LOGINDISABLED; no COMPRESS= after
 *    DEL_COMPRESS). */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "proto_imap.h"
#include "fuzz_util.h"

#define F_LINE_MAX 256
#define F_LIT_MAX 300

static unsigned g_ops;

static void check_line(const uint8_t *p, size_t len)
{
	struct imap_cmd_words w;
	if (imap_tag_verb(p, len, &w) == 0) {
		CHECK(w.tag[0] != '\0', "empty tag");
		CHECK(!strchr(w.tag, '+') && !strchr(w.tag, ' '), "tag \"%s\"", w.tag);
		for (const char *v = w.verb; *v; v++)
			CHECK(!islower((unsigned char)*v) && *v != ' ', "verb \"%s\"", w.verb);
		CHECK(w.verb[0] != '\0' && w.args <= len, "verb \"%s\" args %zu", w.verb, w.args);
	}
	struct imap_resp r;
	int crc = imap_classify(p, len, &r);
	if (crc == 0)
		CHECK(r.code + r.code_len <= len && r.word <= len, "code %zu+%zu word %zu len %zu",
		      r.code, r.code_len, r.word, len);
	size_t off = 0, llen = 0;
	int frc = imap_caps_find(p, len, &off, &llen);
	CHECK(frc == 1 || frc == 0 || frc == -EINVAL, "find %d", frc);
	CHECK((frc == -EINVAL) == (crc < 0), "find %d classify %d", frc, crc);
	if (frc == 1)
		CHECK(off + llen <= len, "list %zu+%zu len %zu", off, llen, len);
	size_t cap = len + 32;
	char *out = malloc(cap);
	if (!out)
		abort();
	size_t olen = 0;
	int rc = imap_caps_rewrite(p, len, g_ops, out, cap, &olen);
	CHECK(rc != -ENOSPC, "rewrite -ENOSPC with len + 32");
	CHECK(rc == frc, "rewrite %d find %d", rc, frc);
	if (rc == 1) {
		CHECK(olen < cap && out[olen] == '\0', "olen %zu", olen);
		struct imap_resp r2;
		CHECK(imap_classify((const uint8_t *)out, olen, &r2) == 0, "rewritten: no response");
		CHECK(r2.kind == r.kind && r2.status == r.status, "rewritten kind/status changed");
		size_t o2, l2;
		CHECK(imap_caps_find((const uint8_t *)out, olen, &o2, &l2) == 1,
		      "rewritten: no list in \"%s\"", out);
		unsigned f = imap_caps_flags(out + o2, l2);
		if ((g_ops & IMAP_CAPS_ADD_STARTTLS) && !(g_ops & IMAP_CAPS_DEL_STARTTLS))
			CHECK(f & IMAP_CAP_STARTTLS, "no STARTTLS after ADD: \"%s\"", out);
		if (g_ops & IMAP_CAPS_DEL_STARTTLS)
			CHECK(!(f & IMAP_CAP_STARTTLS), "STARTTLS after DEL: \"%s\"", out);
		if (g_ops & IMAP_CAPS_LOGINDISABLED)
			CHECK((f & IMAP_CAP_LOGINDISABLED) && !(f & IMAP_CAP_AUTH),
			      "LOGINDISABLED/AUTH= wrong: \"%s\"", out);
		if (g_ops & IMAP_CAPS_DEL_COMPRESS)
			CHECK(!(f & IMAP_CAP_COMPRESS), "COMPRESS= left: \"%s\"", out);
	}
	free(out);
}

struct run {
	struct imap_reader r;
	struct fbuf t;
	int check; /* check_line() each line: in the whole run only (the others must give the
		    * same transcript, so the same lines) */
	int last_data;
	int too_long;
	uint64_t lit_left; /* announced literal octets not yet seen */
	size_t consumed;
};

static void drain(struct run *x)
{
	struct imap_item it;
	int k;
	while ((k = ir_next(&x->r, &it)) != IR_MORE) {
		CHECK(k == it.kind, "kind %d != %d", k, it.kind);
		char hdr[64];
		switch (k) {
		case IR_LINE:
		case IR_BAD_LITERAL:
			CHECK(x->lit_left == 0, "a line while %llu literal octets are due",
			      (unsigned long long)x->lit_left);
			CHECK(it.size <= F_LINE_MAX && it.len < it.size, "line %zu/%zu", it.len,
			      it.size);
			CHECK(!memchr(it.p, '\n', it.len), "LF inside a line");
			if (k == IR_LINE && !it.last) {
				CHECK(it.literal <= F_LIT_MAX, "literal %llu",
				      (unsigned long long)it.literal);
				x->lit_left = it.literal;
			}
			if (k == IR_BAD_LITERAL)
				CHECK(it.literal > F_LIT_MAX, "bad literal %llu",
				      (unsigned long long)it.literal);
			if (it.first && x->check)
				check_line(it.p, it.len);
			snprintf(hdr, sizeof(hdr), "\n%d %d %d %llu %d %d %zu|", k, it.first, it.last,
				 (unsigned long long)it.literal, it.nonsync, it.binary, it.len);
			fbuf_add(&x->t, hdr, strlen(hdr));
			fbuf_add(&x->t, it.p, it.len);
			x->last_data = 0;
			break;
		case IR_DATA:
			CHECK(it.len > 0 && it.len <= x->lit_left, "data %zu of %llu", it.len,
			      (unsigned long long)x->lit_left);
			x->lit_left -= it.len;
			if (!x->last_data)
				fbuf_add(&x->t, "\nD|", 3);
			fbuf_add(&x->t, it.p, it.len);
			x->last_data = 1;
			break;
		case IR_TOO_LONG:
			fbuf_add(&x->t, "\nTOO_LONG", 9);
			x->too_long = 1;
			x->lit_left = 0;
			x->last_data = 0;
			break;
		default:
			CHECK(0, "ir_next returned %d", k);
		}
		x->consumed += it.size;
		ir_consume(&x->r, &it);
	}
}

/* The transcript of data fed in pieces of step octets (0: whole), or split once at cut. */
static void run(const uint8_t *d, size_t n, size_t step, size_t cut, struct fbuf *out)
{
	struct run x;
	memset(&x, 0, sizeof(x));
	x.check = !step && !cut;
	ir_init(&x.r, F_LINE_MAX, F_LIT_MAX);
	size_t at = 0;
	while (at < n) {
		size_t k = step ? step : (cut && at < cut ? cut : n - at);
		if (k > n - at)
			k = n - at;
		if (ir_feed(&x.r, d + at, k) < 0)
			abort();
		at += k;
		drain(&x);
	}
	if (!x.too_long)
		CHECK(x.consumed + ir_pending(&x.r) == n, "consumed %zu + pending %zu != %zu",
		      x.consumed, ir_pending(&x.r), n);
	ir_free(&x.r);
	*out = x.t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_setup(LOG_ERROR, 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	g_ops = data[0] & 0x0f;
	size_t n = size - 3;
	const uint8_t *d = data + 3;
	size_t cut = n ? ((size_t)data[1] | (size_t)data[2] << 8) % n : 0;
	struct fbuf whole, split, bytes;
	run(d, n, 0, 0, &whole);
	run(d, n, 0, cut, &split);
	run(d, n, 1, 0, &bytes);
	CHECK(whole.n == split.n && (!whole.n || memcmp(whole.p, split.p, whole.n) == 0),
	      "transcripts differ: whole vs split at %zu", cut);
	CHECK(whole.n == bytes.n && (!whole.n || memcmp(whole.p, bytes.p, whole.n) == 0),
	      "transcripts differ: whole vs one byte at a time");
	free(whole.p);
	free(split.p);
	free(bytes.p);
	return 0;
}
