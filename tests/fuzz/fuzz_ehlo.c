/* fuzz_ehlo.c - libFuzzer harness for smtp_rewrite_ehlo() and smtp_line_has_keyword().
 *
 * Byte 0: bit 0 add_starttls, bit 1 SMTP_HIDE_AUTH, bit 2 LF-only line ends, bit 3 raw mode,
 *         bit 4 SMTP_HIDE_REQUIRETLS.
 * Byte 1: the output capacity: 0 generous, 1 exactly the expected length, 2 one less,
 *         else that many bytes times 4.
 * The rest is the reply text.
 *
 * Raw mode hands the bytes to the function as they are: it must not crash, must not
 * write past cap (the output buffer is exactly cap bytes, so ASan sees any overflow) and
 * must return -1 or a length <= cap.
 *
 * Structured mode builds a well-formed EHLO reply from the text (one line per '\n'
 * separated piece, CR removed, "250-"/"250 " marks) and compares the result with an
 * independent model of the contract: the first line always kept; STARTTLS, XCLIENT,
 * XFORWARD (and AUTH / AUTH= and REQUIRETLS when hidden) lines dropped by whole-keyword,
 * case-insensitive match of the first word; "STARTTLS" appended when add_starttls; CRLF
 * line ends; '-' on every line but the last, which has ' '; -ENOBUFS exactly when the output
 * does not fit cap or more than SMTP_REPLY_LINES_MAX lines are kept. */
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto_smtp.h"
#include "fuzz_util.h"

/* The model's keyword test: the first word (up to SP; for AUTH also up to '='). */
static int model_is(const char *t, size_t n, const char *kw)
{
	size_t w = 0;
	while (w < n && t[w] != ' ' && !(strcmp(kw, "AUTH") == 0 && t[w] == '='))
		w++;
	return w == strlen(kw) && strncasecmp(t, kw, w) == 0;
}

struct line {
	const char *t;
	size_t n;
};

static void structured(const uint8_t *d, size_t size, int add, unsigned hide, int lf,
		       uint8_t capsel)
{
	/* Split into line texts, dropping CR and LF. */
	char *text = malloc(size + 1);
	struct line *lines = malloc((size + 1) * sizeof(*lines));
	size_t tn = 0, nl = 0, start = 0;
	for (size_t i = 0; i <= size; i++) {
		if (i == size || d[i] == '\n') {
			lines[nl].t = text + start;
			lines[nl].n = tn - start;
			nl++;
			start = tn;
			continue;
		}
		if (d[i] != '\r')
			text[tn++] = (char)d[i];
	}
	/* the reply */
	size_t rcap = tn + nl * 6 + 16, rn = 0;
	char *reply = malloc(rcap);
	for (size_t i = 0; i < nl; i++) {
		memcpy(reply + rn, "250", 3);
		reply[rn + 3] = i + 1 < nl ? '-' : ' ';
		rn += 4;
		memcpy(reply + rn, lines[i].t, lines[i].n);
		rn += lines[i].n;
		if (!lf)
			reply[rn++] = '\r';
		reply[rn++] = '\n';
	}
	/* the model's answer */
	size_t ecap = tn + nl * 6 + 32, en = 0, kept = 0;
	char *want = malloc(ecap);
	struct line *out = malloc((nl + 1) * sizeof(*out));
	for (size_t i = 0; i < nl; i++) {
		const char *t = lines[i].t;
		size_t n = lines[i].n;
		if (i > 0 && (model_is(t, n, "STARTTLS") || model_is(t, n, "XCLIENT") ||
			      model_is(t, n, "XFORWARD") ||
			      ((hide & SMTP_HIDE_AUTH) && model_is(t, n, "AUTH")) ||
			      ((hide & SMTP_HIDE_REQUIRETLS) && model_is(t, n, "REQUIRETLS"))))
			continue;
		out[kept++] = lines[i];
	}
	int too_many = kept > SMTP_REPLY_LINES_MAX;
	if (add)
		out[kept++] = (struct line){ "STARTTLS", 8 };
	for (size_t i = 0; i < kept; i++) {
		memcpy(want + en, "250", 3);
		want[en + 3] = i + 1 < kept ? '-' : ' ';
		en += 4;
		memcpy(want + en, out[i].t, out[i].n);
		en += out[i].n;
		want[en++] = '\r';
		want[en++] = '\n';
	}
	size_t cap;
	if (capsel == 0)
		cap = en + 64;
	else if (capsel == 1)
		cap = en;
	else if (capsel == 2)
		cap = en ? en - 1 : 0;
	else
		cap = (size_t)capsel * 4;
	char *o = malloc(cap ? cap : 1);
	long r = smtp_rewrite_ehlo(reply, rn, add, hide, o, cap);
	if (too_many || en > cap) {
		CHECK(r == -ENOBUFS, "expected -ENOBUFS (kept %zu lines, need %zu, cap %zu), got %ld", kept, en,
		      cap, r);
	} else {
		CHECK(r == (long)en, "length %ld, want %zu (cap %zu)", r, en, cap);
		size_t k = 0;
		while (k < en && o[k] == want[k])
			k++;
		CHECK(k == en, "output differs at %zu: got \"%.*s\" want \"%.*s\"", k,
		      (int)(en - k > 60 ? 60 : en - k), o + k, (int)(en - k > 60 ? 60 : en - k),
		      want + k);
	}
	/* every kept line, rechecked with the exported keyword test */
	if (r > 0) {
		const char *p = o, *end = o + r;
		int first = 1;
		while (p < end) {
			const char *e = memchr(p, '\n', (size_t)(end - p));
			CHECK(e && e > p && e[-1] == '\r', "output line without CRLF");
			size_t n = (size_t)(e - p) + 1;
			if (!first && !(add && e + 1 == end))
				CHECK(!smtp_line_has_keyword(p, n, "STARTTLS") &&
				      !smtp_line_has_keyword(p, n, "XCLIENT") &&
				      !smtp_line_has_keyword(p, n, "XFORWARD"),
				      "a line that should have been dropped: \"%.*s\"", (int)n, p);
			first = 0;
			p = e + 1;
		}
	}
	free(o);
	free(out);
	free(want);
	free(reply);
	free(lines);
	free(text);
}

static void raw(const uint8_t *d, size_t size, int add, unsigned hide, uint8_t capsel)
{
	size_t cap = capsel == 0 ? size * 2 + 64 : capsel < 3 ? size + capsel : (size_t)capsel * 4;
	char *o = malloc(cap ? cap : 1);
	long r = smtp_rewrite_ehlo((const char *)d, size, add, hide, o, cap);
	CHECK(r == -ENOBUFS || (r >= 0 && (size_t)r <= cap), "returned %ld for cap %zu", r, cap);
	free(o);
	/* and the keyword test on every prefix length of the first line */
	const uint8_t *nl = memchr(d, '\n', size);
	size_t l = nl ? (size_t)(nl - d) + 1 : size;
	char *copy = malloc(l ? l : 1);
	memcpy(copy, d, l);
	(void)smtp_line_has_keyword(copy, l, "STARTTLS");
	(void)smtp_line_has_keyword(copy, l, "AUTH");
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint8_t flags = data[0], capsel = data[1];
	data += 2;
	size -= 2;
	/* the copy is exactly size bytes: reads past the end are caught */
	uint8_t *d = malloc(size ? size : 1);
	memcpy(d, data, size);
	unsigned hide = ((flags & 2) ? SMTP_HIDE_AUTH : 0) | ((flags & 16) ? SMTP_HIDE_REQUIRETLS : 0);
	if (flags & 8)
		raw(d, size, flags & 1, hide, capsel);
	else
		structured(d, size, flags & 1, hide, (flags >> 2) & 1, capsel);
	free(d);
	return 0;
}
