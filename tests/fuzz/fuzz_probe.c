/* fuzz_probe.c - libFuzzer harness for --probe's reply parsing (probe_parse_reply, probe.h).
 *
 * Input: byte 0 picks the kind of reply (modulo PROBE_KINDS), byte 1 the size of the text
 * buffer (1 to 4096), the rest is what the server sends. It is parsed whole and as prefixes
 * (how the probe sees it arrive in pieces). Besides memory safety (ASan/UBSan; the text
 * buffer is allocated at its exact size) it checks the contract: the answer is 0, -EAGAIN,
 * -EMSGSIZE, or -EPROTO for the kinds that can be malformed; a complete reply ends at an
 * LF within the input, has as many lines as LFs, none longer than PROBE_LINE_MAX; an SMTP
 * code is 200-599, the 3 digits of the reply's last line, and every line starts with
 * 3 such digits; other codes are 0 or 1; STARTTLS / STLS is offered only by the kinds that
 * list capabilities, only when the reply holds the word, and for SMTP only with 250; the
 * text is NUL-ended within its buffer, one-line kinds keep the line. Prefixes (the first
 * 64, those ending at the first 128 LFs, every 257th, the last two) answer -EAGAIN until the
 * answer is known, then the same answer (size, code, offered, text); complete lines only
 * grow, and SMTP text only grows. Finally the answer is checked against an independent
 * model: the line-by-line code --probe had before probe_parse_reply, over the real
 * line_reader (proto_kit.h): the same answer, code, offered, text and octets consumed. */
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "probe.h"
#include "proto_kit.h"
#include "fuzz_util.h"

struct answer {
	int rc;
	struct probe_reply r;
	char *text;
};

static size_t count_lf(const uint8_t *p, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += p[i] == '\n';
	return c;
}

static int has_word(const uint8_t *p, size_t n, const char *w)
{
	size_t wl = strlen(w);
	for (size_t i = 0; i + wl <= n; i++)
		if (!strncasecmp((const char *)p + i, w, wl))
			return 1;
	return 0;
}

static struct answer parse(enum probe_reply_kind kind, const uint8_t *d, size_t n, size_t cap)
{
	struct answer a;
	a.text = malloc(cap);
	memset(a.text, 0xAA, cap);
	a.rc = probe_parse_reply(kind, n ? d : NULL, n, &a.r, a.text, cap);
	CHECK(a.rc == 0 || a.rc == -EAGAIN || a.rc == -EMSGSIZE ||
		      (a.rc == -EPROTO && (kind == PROBE_SMTP || kind == PROBE_IMAP_GREETING ||
					   kind == PROBE_POP3_GREETING)),
	      "kind %d: answer %d", kind, a.rc);
	CHECK(memchr(a.text, '\0', cap), "text not NUL-ended within %zu octets", cap);
	CHECK(a.r.lines <= count_lf(d, n), "%zu lines, %zu LFs", a.r.lines, count_lf(d, n));
	if (a.rc != 0)
		return a;
	CHECK(a.r.size > 0 && a.r.size <= n && d[a.r.size - 1] == '\n', "size %zu of %zu", a.r.size,
	      n);
	CHECK(a.r.lines == count_lf(d, a.r.size), "%zu lines in a reply of %zu LFs", a.r.lines,
	      count_lf(d, a.r.size));
	size_t start = 0, last = 0;
	for (size_t i = 0; i < a.r.size; i++)
		if (d[i] == '\n') {
			CHECK(i + 1 - start <= PROBE_LINE_MAX, "a line of %zu octets", i + 1 - start);
			if (kind == PROBE_SMTP)
				CHECK(d[start] >= '2' && d[start] <= '5' && i - start >= 3 &&
					      d[start + 1] >= '0' && d[start + 1] <= '9' &&
					      d[start + 2] >= '0' && d[start + 2] <= '9',
				      "SMTP line at %zu without a code", start);
			last = start;
			start = i + 1;
		}
	if (kind == PROBE_SMTP) {
		CHECK(a.r.code >= 200 && a.r.code <= 599, "code %d", a.r.code);
		char digits[4];
		snprintf(digits, sizeof(digits), "%d", a.r.code);
		CHECK(!memcmp(d + last, digits, 3), "code %d, last line \"%.3s\"", a.r.code,
		      (const char *)d + last);
	} else {
		CHECK(a.r.code == 0 || a.r.code == 1, "kind %d: code %d", kind, a.r.code);
	}
	CHECK(a.r.offered == 0 || a.r.offered == 1, "offered %d", a.r.offered);
	if (a.r.offered) {
		CHECK(kind == PROBE_SMTP || kind == PROBE_IMAP_CAPABILITY || kind == PROBE_POP3_CAPA,
		      "kind %d offers", kind);
		CHECK(has_word(d, a.r.size, kind == PROBE_POP3_CAPA ? "STLS" : "STARTTLS"),
		      "offered without the word");
		CHECK(kind != PROBE_SMTP || a.r.code == 250, "offered with %d", a.r.code);
	}
	if (kind != PROBE_SMTP && kind != PROBE_IMAP_CAPABILITY && kind != PROBE_IMAP_STARTTLS &&
	    kind != PROBE_POP3_CAPA)
		CHECK(a.r.lines == 1, "kind %d: %zu lines", kind, a.r.lines);
	if (kind != PROBE_SMTP) {
		/* the last line, as looked at, cut to the buffer */
		size_t ll = a.r.size - 1 - last;
		if (ll && d[last + ll - 1] == '\r')
			ll--;
		ll = strnlen((const char *)d + last, ll < PROBE_LINE_KEEP ? ll : PROBE_LINE_KEEP);
		if (ll > cap - 1)
			ll = cap - 1;
		CHECK(strlen(a.text) == ll && !memcmp(a.text, d + last, ll),
		      "text \"%s\", the last line \"%.*s\"", a.text, (int)ll, (const char *)d + last);
	}
	return a;
}

static int same(const struct answer *a, const struct answer *b)
{
	if (a->rc != b->rc)
		return 0;
	if (a->rc != 0)
		return 1;
	return a->r.size == b->r.size && a->r.code == b->r.code && a->r.offered == b->r.offered &&
	       a->r.lines == b->r.lines && !strcmp(a->text, b->text);
}

/* ---- the model: --probe's line-by-line reading before probe_parse_reply ---------------- */

static int m_read_line(struct line_reader *lr, char *buf, size_t cap)
{
	struct line l;
	int rc = lr_next(lr, &l);
	if (rc == LR_TOO_LONG)
		return -EMSGSIZE;
	if (rc != LR_LINE)
		return -EAGAIN;
	size_t n = l.len < cap - 1 ? l.len : cap - 1;
	memcpy(buf, l.p, n);
	buf[n] = '\0';
	lr_consume(lr, l.size);
	return 0;
}

static int m_smtp(struct line_reader *lr, char *text, size_t cap, int *code, int *offered)
{
	size_t o = 0, total = 0;
	text[0] = '\0';
	for (;;) {
		char line[2048];
		int rc = m_read_line(lr, line, sizeof(line));
		if (rc < 0)
			return rc;
		size_t n = strlen(line);
		total += n;
		if (n < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
		    line[2] < '0' || line[2] > '9' || (n > 3 && line[3] != ' ' && line[3] != '-') ||
		    total > 65536)
			return -EPROTO;
		if (o + n + 2 < cap)
			o += (size_t)snprintf(text + o, cap - o, "%s%s", o ? "\n" : "", line);
		if (n == 3 || line[3] == ' ') {
			*code = atoi(line);
			break;
		}
	}
	*offered = 0;
	if (*code == 250) {
		const char *l = text;
		int first = 1;
		while (l && *l) {
			const char *nl = strchr(l, '\n');
			size_t n = nl ? (size_t)(nl - l) : strlen(l);
			if (!first && n > 4 && cap_word_is(l + 4, n - 4, "STARTTLS"))
				*offered = 1;
			first = 0;
			l = nl ? nl + 1 : NULL;
		}
	}
	return 0;
}

static int m_reply(enum probe_reply_kind kind, struct line_reader *lr, char *text, size_t cap,
		   int *code, int *offered)
{
	char line[2048]; /* the greeting's own buffer was 1024: the same checks and text */
	int rc;
	*code = *offered = 0;
	text[0] = '\0';
	switch (kind) {
	case PROBE_SMTP:
		return m_smtp(lr, text, cap, code, offered);
	case PROBE_IMAP_GREETING:
		if ((rc = m_read_line(lr, line, sizeof(line))) < 0)
			return rc;
		snprintf(text, cap, "%s", line);
		if (strncmp(line, "* ", 2))
			return -EPROTO;
		*code = strncasecmp(line, "* BYE", 5) != 0;
		return 0;
	case PROBE_IMAP_CAPABILITY:
	case PROBE_IMAP_STARTTLS: {
		const char *tag = kind == PROBE_IMAP_CAPABILITY ? "P1 " : "P2 ";
		for (;;) {
			if ((rc = m_read_line(lr, line, sizeof(line))) < 0)
				return rc;
			snprintf(text, cap, "%s", line);
			if (kind == PROBE_IMAP_CAPABILITY && !strncasecmp(line, "* CAPABILITY ", 13)) {
				for (char *w = line + 13; w && *w;) {
					char *sp = strchr(w, ' ');
					if (cap_word_is(w, sp ? (size_t)(sp - w) : strlen(w), "STARTTLS"))
						*offered = 1;
					w = sp ? sp + 1 : NULL;
				}
			}
			if (!strncmp(line, tag, 3))
				break;
		}
		*code = !strncasecmp(line + 3, "OK", 2);
		return 0;
	}
	case PROBE_POP3_GREETING:
		if ((rc = m_read_line(lr, line, sizeof(line))) < 0)
			return rc;
		snprintf(text, cap, "%s", line);
		if (strncmp(line, "+OK", 3))
			return -EPROTO;
		*code = 1;
		return 0;
	case PROBE_POP3_CAPA:
		if ((rc = m_read_line(lr, line, sizeof(line))) < 0)
			return rc;
		snprintf(text, cap, "%s", line);
		if (!strncmp(line, "+OK", 3)) {
			*code = 1;
			for (int i = 0; i < 512; i++) {
				if ((rc = m_read_line(lr, line, sizeof(line))) < 0)
					return rc;
				snprintf(text, cap, "%s", line);
				if (!strcmp(line, "."))
					break;
				if (cap_word_is(line, strlen(line), "STLS"))
					*offered = 1;
			}
		}
		return 0;
	case PROBE_POP3_STLS:
		if ((rc = m_read_line(lr, line, sizeof(line))) < 0)
			return rc;
		snprintf(text, cap, "%s", line);
		*code = !strncmp(line, "+OK", 3);
		return 0;
	default:
		if ((rc = m_read_line(lr, line, sizeof(line))) < 0)
			return rc;
		snprintf(text, cap, "%s", line);
		*code = 1;
		return 0;
	}
}

static void check_model(enum probe_reply_kind kind, const uint8_t *d, size_t n, size_t cap,
			const struct answer *a)
{
	if (n == 0) { /* (lr_next on a buffer never fed does arithmetic on NULL) */
		CHECK(a->rc == -EAGAIN && !a->text[0], "nothing: %d \"%s\"", a->rc, a->text);
		return;
	}
	struct line_reader lr;
	lr_init(&lr, PROBE_LINE_MAX);
	if (lr_feed(&lr, d, n) < 0)
		abort();
	char *text = malloc(cap);
	int code, offered;
	int rc = m_reply(kind, &lr, text, cap, &code, &offered);
	size_t consumed = n - lr_pending(&lr);
	CHECK(rc == a->rc, "kind %d: answer %d, the model says %d", kind, a->rc, rc);
	if (rc == 0) {
		CHECK(code == a->r.code && offered == a->r.offered && consumed == a->r.size,
		      "code %d offered %d size %zu, the model says %d %d %zu", a->r.code,
		      a->r.offered, a->r.size, code, offered, consumed);
	}
	/* the text the probe shows: greetings and refusals (complete), SMTP always */
	if (rc == 0 || kind == PROBE_SMTP || kind == PROBE_IMAP_GREETING ||
	    kind == PROBE_POP3_GREETING)
		CHECK(!strcmp(text, a->text), "text \"%s\", the model says \"%s\"", a->text, text);
	free(text);
	lr_free(&lr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	enum probe_reply_kind kind = (enum probe_reply_kind)(data[0] % PROBE_KINDS);
	static const size_t caps[] = { 1, 2, 5, 16, 64, 300, 512, 1024, 2048, 4096 };
	size_t cap = caps[data[1] % (sizeof(caps) / sizeof(caps[0]))];
	const uint8_t *d = data + 2;
	size_t n = size - 2;

	struct answer whole = parse(kind, d, n, cap);
	check_model(kind, d, n, cap, &whole);

	/* The answer can change only where a line ends or reaches PROBE_LINE_MAX: all of the
	 * first 64 prefixes, those at the first 128 LFs, every 257th and the last ones. */
	int known = 0;
	size_t lines = 0, lfs = 0;
	for (size_t k = 0; k <= n; k++) {
		int at_lf = k > 0 && d[k - 1] == '\n' && ++lfs <= 128;
		if (k > 64 && !at_lf && k % 257 && k + 1 < n)
			continue;
		struct answer a = parse(kind, d, k, cap);
		CHECK(a.r.lines >= lines, "prefix of %zu octets: %zu lines after %zu", k, a.r.lines,
		      lines);
		lines = a.r.lines;
		if (kind == PROBE_SMTP && whole.rc == 0)
			CHECK(!strncmp(a.text, whole.text, strlen(a.text)),
			      "prefix of %zu octets: text \"%s\" not a start of \"%s\"", k, a.text,
			      whole.text);
		if (!known && a.rc != -EAGAIN)
			known = 1;
		if (known)
			CHECK(same(&a, &whole), "prefix of %zu octets: %d (size %zu), the whole: %d (size %zu)",
			      k, a.rc, a.r.size, whole.rc, whole.r.size);
		else
			CHECK(a.rc == -EAGAIN, "prefix of %zu octets: %d", k, a.rc);
		CHECK(whole.rc != 0 || (k < whole.r.size) == (a.rc == -EAGAIN),
		      "prefix of %zu octets: %d, the reply has %zu", k, a.rc, whole.r.size);
		free(a.text);
	}
	free(whole.text);
	return 0;
}
