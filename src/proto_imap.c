/* proto_imap.c - IMAP STARTTLS: the pure parsing pieces (see proto_imap.h). Bytes in,
 * verdicts out; no I/O. */
#include "proto_imap.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

/* ---- character classes (RFC 3501 §9, RFC 9051 §9) ------------------------------------ */

/* ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ] */
static int atom_char(uint8_t c)
{
	if (c < 0x21 || c > 0x7e)
		return 0;
	return !strchr("(){%*\"\\]", c);
}

/* tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]" */
static int tag_char(uint8_t c)
{
	return c != '+' && (atom_char(c) || c == ']');
}

/* ---- the reader ------------------------------------------------------------------------ */

int imap_literal_at_end(const uint8_t *p, size_t len, uint64_t *size, int *nonsync,
			int *binary)
{
	if (!len || p[len - 1] != '}')
		return 0;
	size_t i = len - 1; /* at '}' */
	int plus = 0;
	if (i && p[i - 1] == '+') {
		plus = 1;
		i--;
	}
	size_t end = i; /* one past the last digit */
	while (i && isdigit(p[i - 1]))
		i--;
	size_t digits = end - i;
	if (!digits || digits > 20 || !i || p[i - 1] != '{')
		return 0;
	size_t brace = i - 1;
	int bin = 0;
	size_t start = brace;
	if (start && p[start - 1] == '~') {
		bin = 1;
		start--;
	}
	if (start && p[start - 1] != ' ' && p[start - 1] != '(')
		return 0;
	uint64_t v = 0;
	for (size_t k = i; k < end; k++) {
		unsigned d = (unsigned)(p[k] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*size = v;
	*nonsync = plus;
	*binary = bin;
	return 1;
}

void ir_init(struct imap_reader *r, size_t line_max, uint64_t lit_max)
{
	memset(r, 0, sizeof(*r));
	lr_init(&r->lr, line_max);
	r->lit_max = lit_max;
}

void ir_free(struct imap_reader *r)
{
	lr_free(&r->lr);
	r->lit_left = 0;
	r->in_cmd = 0;
}

int ir_feed(struct imap_reader *r, const void *data, size_t n)
{
	return lr_feed(&r->lr, data, n);
}

int ir_next(struct imap_reader *r, struct imap_item *it)
{
	memset(it, 0, sizeof(*it));
	if (r->lit_left) {
		size_t n = lr_pending(&r->lr);
		if (!n)
			return it->kind = IR_MORE;
		if (n > r->lit_left)
			n = (size_t)r->lit_left;
		it->p = lr_data(&r->lr);
		it->len = it->size = n;
		return it->kind = IR_DATA;
	}
	struct line l;
	int rc = lr_next(&r->lr, &l);
	if (rc == LR_MORE)
		return it->kind = IR_MORE;
	if (rc == LR_TOO_LONG) {
		r->in_cmd = 0;
		return it->kind = IR_TOO_LONG;
	}
	it->p = l.p;
	it->len = l.len;
	it->size = l.size;
	it->first = !r->in_cmd;
	it->last = 1;
	uint64_t size = 0;
	int nonsync = 0, binary = 0;
	rc = imap_literal_at_end(l.p, l.len, &size, &nonsync, &binary);
	if (rc < 0 || (rc == 1 && size > r->lit_max)) {
		it->literal = rc < 0 ? UINT64_MAX : size;
		it->nonsync = nonsync;
		it->binary = binary;
		return it->kind = IR_BAD_LITERAL;
	}
	if (rc == 1) {
		it->last = 0;
		it->literal = size;
		it->nonsync = nonsync;
		it->binary = binary;
	}
	return it->kind = IR_LINE;
}

void ir_consume(struct imap_reader *r, const struct imap_item *it)
{
	switch (it->kind) {
	case IR_DATA:
		lr_consume(&r->lr, it->size);
		r->lit_left -= it->size;
		break;
	case IR_LINE:
		lr_consume(&r->lr, it->size);
		r->in_cmd = !it->last;
		r->lit_left = it->last ? 0 : it->literal;
		break;
	case IR_BAD_LITERAL:
		lr_consume(&r->lr, it->size);
		r->in_cmd = 0;
		r->lit_left = 0;
		break;
	default: /* IR_MORE, IR_TOO_LONG: nothing to take */
		break;
	}
}

void ir_cancel_literal(struct imap_reader *r)
{
	r->lit_left = 0;
	r->in_cmd = 0;
}

size_t ir_discard(struct imap_reader *r)
{
	size_t n = lr_pending(&r->lr);
	lr_discard(&r->lr);
	r->lit_left = 0;
	r->in_cmd = 0;
	return n;
}

/* ---- commands -------------------------------------------------------------------------- */

/* The atom at p[*i], upper-cased into out (cap octets with the NUL); *i moves past it and
 * the one SP after it. Returns 0, or -EINVAL (empty, too long, not followed by SP or the
 * end). */
static int take_atom(const uint8_t *p, size_t len, size_t *i, char *out, size_t cap)
{
	size_t k = 0;
	while (*i < len && atom_char(p[*i])) {
		if (k + 1 >= cap)
			return -EINVAL;
		out[k++] = (char)toupper(p[*i]);
		(*i)++;
	}
	out[k] = '\0';
	if (!k || (*i < len && p[*i] != ' '))
		return -EINVAL;
	if (*i < len)
		(*i)++;
	return 0;
}

int imap_tag_verb(const uint8_t *p, size_t len, struct imap_cmd_words *w)
{
	memset(w, 0, sizeof(*w));
	size_t i = 0;
	while (i < len && tag_char(p[i])) {
		if (i >= IMAP_TAG_MAX)
			return -EINVAL;
		w->tag[i] = (char)p[i];
		i++;
	}
	if (!i || i >= len || p[i] != ' ')
		return -EINVAL;
	i++;
	if (take_atom(p, len, &i, w->verb, sizeof(w->verb)) < 0)
		return -EINVAL;
	if (strcmp(w->verb, "UID") == 0 &&
	    take_atom(p, len, &i, w->uid_verb, sizeof(w->uid_verb)) < 0)
		return -EINVAL;
	w->args = i;
	return 0;
}

/* ---- responses ------------------------------------------------------------------------- */

/* 1 when p[i..) starts with the word w (ignoring case) followed by SP, the end, or (for a
 * code) "]". */
static int word_at(const uint8_t *p, size_t len, size_t i, const char *w, int in_code)
{
	size_t k = strlen(w);
	if (len - i < k || strncasecmp((const char *)p + i, w, k) != 0)
		return 0;
	return i + k == len || p[i + k] == ' ' || (in_code && p[i + k] == ']');
}

int imap_classify(const uint8_t *p, size_t len, struct imap_resp *r)
{
	static const struct {
		const char *w;
		enum imap_status s;
	} st[] = { { "OK", IMAP_S_OK }, { "NO", IMAP_S_NO }, { "BAD", IMAP_S_BAD },
		   { "PREAUTH", IMAP_S_PREAUTH }, { "BYE", IMAP_S_BYE } };
	memset(r, 0, sizeof(*r));
	if (!len)
		return -EINVAL;
	if (p[0] == '+') {
		if (len > 1 && p[1] != ' ')
			return -EINVAL;
		r->kind = IMAP_R_CONTINUE;
		r->word = len > 1 ? 2 : 1;
		return 0;
	}
	size_t i;
	if (p[0] == '*') {
		if (len < 2 || p[1] != ' ')
			return -EINVAL;
		r->kind = IMAP_R_UNTAGGED;
		i = 2;
	} else {
		i = 0;
		while (i < len && tag_char(p[i]))
			i++;
		if (!i || i > IMAP_TAG_MAX || i >= len || p[i] != ' ')
			return -EINVAL;
		r->kind = IMAP_R_TAGGED;
		r->tag_len = i;
		i++;
	}
	r->word = i;
	size_t n = r->kind == IMAP_R_TAGGED ? 3 : 5;
	for (size_t k = 0; k < n; k++) {
		if (word_at(p, len, i, st[k].w, 0)) {
			r->status = st[k].s;
			i += strlen(st[k].w);
			break;
		}
	}
	if (r->status == IMAP_S_NONE) {
		if (r->kind == IMAP_R_TAGGED)
			return -EINVAL;
		r->capability = word_at(p, len, i, "CAPABILITY", 0);
		return 0;
	}
	if (i + 1 < len && p[i + 1] == '[') {
		const uint8_t *close = memchr(p + i + 2, ']', len - i - 2);
		if (!close)
			return -EINVAL;
		r->code = i + 2;
		r->code_len = (size_t)(close - (p + r->code));
	}
	return 0;
}

/* ---- capabilities ---------------------------------------------------------------------- */

/* Where the list is: *kw_end just after the word CAPABILITY, *end where the list stops
 * (the end of the line, or the code's "]"). Returns 1, 0 or -EINVAL as imap_caps_find. */
static int caps_span(const uint8_t *p, size_t len, size_t *kw_end, size_t *end)
{
	struct imap_resp r;
	if (imap_classify(p, len, &r) < 0)
		return -EINVAL;
	if (r.capability) {
		*kw_end = r.word + strlen("CAPABILITY");
		*end = len;
		return 1;
	}
	if (r.status != IMAP_S_NONE && r.code_len &&
	    word_at(p, r.code + r.code_len, r.code, "CAPABILITY", 0)) {
		*kw_end = r.code + strlen("CAPABILITY");
		*end = r.code + r.code_len;
		return 1;
	}
	return 0;
}

int imap_caps_find(const uint8_t *p, size_t len, size_t *off, size_t *list_len)
{
	size_t a, b;
	int rc = caps_span(p, len, &a, &b);
	if (rc <= 0)
		return rc;
	while (a < b && p[a] == ' ')
		a++;
	*off = a;
	*list_len = b - a;
	return 1;
}

/* The next atom of a space-separated list at list[*i..len): *a its start, returns its
 * length (0: no more); *i moves past it. */
static size_t next_atom(const char *list, size_t len, size_t *i, size_t *a)
{
	while (*i < len && list[*i] == ' ')
		(*i)++;
	*a = *i;
	while (*i < len && list[*i] != ' ')
		(*i)++;
	return *i - *a;
}

unsigned imap_caps_flags(const char *list, size_t len)
{
	static const struct {
		const char *kw;
		unsigned flag;
	} t[] = { { "IMAP4rev1", IMAP_CAP_IMAP4 },         { "IMAP4rev2", IMAP_CAP_IMAP4 },
		  { "STARTTLS", IMAP_CAP_STARTTLS },       { "LOGINDISABLED", IMAP_CAP_LOGINDISABLED },
		  { "AUTH=", IMAP_CAP_AUTH },              { "COMPRESS=", IMAP_CAP_COMPRESS },
		  { "LITERAL+", IMAP_CAP_LITERALPLUS },    { "LITERAL-", IMAP_CAP_LITERALMINUS } };
	unsigned f = 0;
	size_t i = 0, a, n;
	while ((n = next_atom(list, len, &i, &a)) > 0)
		for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++)
			if (cap_word_is(list + a, n, t[k].kw))
				f |= t[k].flag;
	return f;
}

static int put(char *out, size_t cap, size_t *o, const void *d, size_t n)
{
	if (*o + n + 1 > cap)
		return -ENOSPC;
	memcpy(out + *o, d, n);
	*o += n;
	out[*o] = '\0';
	return 0;
}

/* 1 when the atom is dropped under ops. */
static int dropped(const char *atom, size_t n, unsigned ops)
{
	if ((ops & (IMAP_CAPS_DEL_STARTTLS | IMAP_CAPS_ADD_STARTTLS)) &&
	    cap_word_is(atom, n, "STARTTLS"))
		return (ops & IMAP_CAPS_DEL_STARTTLS) != 0;
	if ((ops & IMAP_CAPS_LOGINDISABLED) && cap_word_is(atom, n, "AUTH="))
		return 1;
	if ((ops & IMAP_CAPS_DEL_COMPRESS) && cap_word_is(atom, n, "COMPRESS="))
		return 1;
	return 0;
}

int imap_caps_rewrite(const uint8_t *p, size_t len, unsigned ops, char *out, size_t out_cap,
		      size_t *out_len)
{
	size_t kw_end, end;
	int rc = caps_span(p, len, &kw_end, &end);
	if (rc <= 0)
		return rc;
	const char *list = (const char *)p + kw_end;
	size_t llen = end - kw_end;
	unsigned have = imap_caps_flags(list, llen);
	size_t o = 0;
	if (!out_cap)
		return -ENOSPC;
	out[0] = '\0';
	if (put(out, out_cap, &o, p, kw_end) < 0)
		return -ENOSPC;
	size_t i = 0, a, n;
	while ((n = next_atom(list, llen, &i, &a)) > 0) {
		if (dropped(list + a, n, ops))
			continue;
		if (put(out, out_cap, &o, " ", 1) < 0 || put(out, out_cap, &o, list + a, n) < 0)
			return -ENOSPC;
	}
	if ((ops & IMAP_CAPS_ADD_STARTTLS) && !(ops & IMAP_CAPS_DEL_STARTTLS) &&
	    !(have & IMAP_CAP_STARTTLS) && put(out, out_cap, &o, " STARTTLS", 9) < 0)
		return -ENOSPC;
	if ((ops & IMAP_CAPS_LOGINDISABLED) && !(have & IMAP_CAP_LOGINDISABLED) &&
	    put(out, out_cap, &o, " LOGINDISABLED", 14) < 0)
		return -ENOSPC;
	if (put(out, out_cap, &o, p + end, len - end) < 0)
		return -ENOSPC;
	*out_len = o;
	return 1;
}
