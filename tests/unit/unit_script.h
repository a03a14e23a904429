/* unit_script.h - small helpers the protocol modules' script-driven tests share
 * (test_proto_smtp.c, test_proto_pop3.c, test_proto_imap.c): a growable text buffer, a printable rendering of
 * bytes for failure messages, and the glob matcher the expectations use. Include after
 * cmocka.h. */
#ifndef STP_UNIT_SCRIPT_H
#define STP_UNIT_SCRIPT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sbuf {
	char *p;
	size_t n, cap;
};

static inline void sb_add(struct sbuf *b, const void *d, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->n + n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		assert_non_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static inline void sb_adds(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static inline void sb_reset(struct sbuf *b)
{
	b->n = 0;
	if (b->p)
		b->p[0] = '\0';
}

static inline void sb_free(struct sbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Printable rendering of bytes for failure messages (CR, LF, controls escaped). */
static inline const char *esc(const char *s, size_t n)
{
	static char out[4][1400];
	static int k;
	char *o = out[k++ & 3];
	size_t j = 0;
	if (!s)
		return "(any)";
	for (size_t i = 0; i < n && j + 8 < sizeof(out[0]); i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r') {
			o[j++] = '\\';
			o[j++] = 'r';
		} else if (c == '\n') {
			o[j++] = '\\';
			o[j++] = 'n';
		} else if (c < 32 || c > 126) {
			j += (size_t)snprintf(o + j, 6, "\\x%02x", c);
		} else {
			o[j++] = (char)c;
		}
	}
	if (j + 8 >= sizeof(out[0]))
		j += (size_t)snprintf(o + j, 8, "...");
	o[j] = '\0';
	return o;
}

/* '*' in pat matches any run of bytes (CR/LF included), '?' any one byte; everything else
 * is literal. Recursion only at '*', so long literal texts are fine. */
static inline int glob_match(const char *pat, const char *s, size_t n)
{
	while (*pat && *pat != '*') {
		if (n == 0 || (*pat != '?' && *pat != *s))
			return 0;
		pat++;
		s++;
		n--;
	}
	if (*pat == '\0')
		return n == 0;
	pat++;
	for (size_t i = 0; i <= n; i++)
		if (glob_match(pat, s + i, n - i))
			return 1;
	return 0;
}

#endif
