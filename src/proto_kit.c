/* proto_kit.c - shared pieces of the protocol modules (see proto_kit.h). */
#include "proto_kit.h"

#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- line reader ------------------------------------------------------------------- */

void lr_init(struct line_reader *r, size_t max)
{
	memset(r, 0, sizeof(*r));
	r->max = max;
}

void lr_free(struct line_reader *r)
{
	buf_free(&r->in);
	r->skipping = 0;
}

int lr_feed(struct line_reader *r, const void *data, size_t n)
{
	if (buf_append(&r->in, data, n) < 0)
		return -ENOMEM;
	const uint8_t *nl = n ? memrchr(data, '\n', n) : NULL;
	if (nl)
		r->line_start = r->fed + (uint64_t)(nl - (const uint8_t *)data) + 1;
	r->fed += n;
	return 0;
}

void lr_consume(struct line_reader *r, size_t n)
{
	buf_consume(&r->in, n);
}

void lr_discard(struct line_reader *r)
{
	buf_consume(&r->in, r->in.len);
	r->skipping = 0;
	r->line_start = r->fed;
}

uint64_t lr_partial(const struct line_reader *r)
{
	if (r->skipping)
		return r->skip_line;
	uint64_t taken = r->fed - r->in.len; /* consumed: lines, or raw octets */
	uint64_t start = r->line_start > taken ? r->line_start : taken;
	return r->fed > start ? start + 1 : 0;
}

int lr_next(struct line_reader *r, struct line *l)
{
	for (;;) {
		size_t avail = r->in.len;
		if (!avail)
			return LR_MORE; /* nothing buffered (the buffer may not exist yet) */
		const uint8_t *p = buf_ptr(&r->in);
		const uint8_t *nl = memchr(p, '\n', avail);
		if (r->skipping) {
			/* the tail of an overlong line, already reported */
			if (!nl) {
				buf_consume(&r->in, avail);
				return LR_MORE;
			}
			buf_consume(&r->in, (size_t)(nl - p) + 1);
			r->skipping = 0;
			continue;
		}
		if (!nl) {
			if (avail < r->max)
				return LR_MORE;
			r->skip_line = lr_partial(r);
			r->skipping = 1; /* no LF within max octets */
			buf_consume(&r->in, avail);
			return LR_TOO_LONG;
		}
		size_t size = (size_t)(nl - p) + 1;
		if (size > r->max) {
			buf_consume(&r->in, size);
			return LR_TOO_LONG;
		}
		l->p = p;
		l->size = size;
		l->len = size - 1;
		if (l->len && p[l->len - 1] == '\r')
			l->len--;
		return LR_LINE;
	}
}

/* ---- expected replies -------------------------------------------------------------- */

void eq_init(struct expect_queue *q, size_t max)
{
	memset(q, 0, sizeof(*q));
	q->max = max;
}

void eq_clear(struct expect_queue *q)
{
	while (q->len) {
		free(q->e[q->head].text);
		q->e[q->head].text = NULL;
		q->head = (q->head + 1) % q->cap;
		q->len--;
	}
	q->head = 0;
}

void eq_free(struct expect_queue *q)
{
	eq_clear(q);
	free(q->e);
	q->e = NULL;
	q->cap = 0;
}

static int grow(struct expect_queue *q)
{
	size_t cap = q->cap ? q->cap * 2 : 8;
	struct expect *e = malloc(cap * sizeof(*e));
	if (!e)
		return -ENOMEM;
	for (size_t i = 0; i < q->len; i++)
		e[i] = q->e[(q->head + i) % q->cap];
	free(q->e);
	q->e = e;
	q->cap = cap;
	q->head = 0;
	return 0;
}

struct expect *eq_push(struct expect_queue *q, int kind, const char *text)
{
	if (q->len >= q->max)
		return NULL;
	if (q->len == q->cap && grow(q) < 0)
		return NULL;
	char *copy = NULL;
	if (text && !(copy = strdup(text)))
		return NULL;
	struct expect *e = &q->e[(q->head + q->len) % q->cap];
	q->len++;
	e->kind = kind;
	e->count = -1;
	e->sent_at = q->rx;
	e->text = copy;
	return e;
}

struct expect *eq_head(struct expect_queue *q)
{
	return q->len ? &q->e[q->head] : NULL;
}

struct expect *eq_at(struct expect_queue *q, size_t i)
{
	return i < q->len ? &q->e[(q->head + i) % q->cap] : NULL;
}

void eq_pop(struct expect_queue *q)
{
	if (!q->len)
		return;
	free(q->e[q->head].text);
	q->e[q->head].text = NULL;
	q->head = (q->head + 1) % q->cap;
	q->len--;
}

void eq_unpop(struct expect_queue *q)
{
	/* the slot before head still holds the popped entry (its text was freed) */
	q->head = (q->head + q->cap - 1) % q->cap;
	q->len++;
}

/* ---- capabilities -------------------------------------------------------------------- */

int cap_word_is(const char *text, size_t len, const char *keyword)
{
	size_t w = 0;
	while (w < len && text[w] != ' ' && text[w] != '\r' && text[w] != '\n')
		w++;
	size_t kl = strlen(keyword);
	if (kl && keyword[kl - 1] == '=')
		return w >= kl && strncasecmp(text, keyword, kl) == 0;
	if (w == kl && strncasecmp(text, keyword, kl) == 0)
		return 1;
	/* "AUTH=LOGIN": the pre-RFC 4954 form of the SMTP AUTH keyword */
	return w > kl && text[kl] == '=' && strcasecmp(keyword, "AUTH") == 0 &&
	       strncasecmp(text, keyword, kl) == 0;
}

/* ---- the STARTTLS boundary ----------------------------------------------------------- */

size_t kit_starttls(struct proto_actions *a, enum proto_side side, struct line_reader *r)
{
	size_t dropped = lr_pending(r);
	lr_discard(r);
	proto_starttls(a, side);
	return dropped;
}

void kit_injection(const struct proto_params *p, enum proto_side side, size_t dropped)
{
	if (!dropped)
		return;
	char n[24];
	snprintf(n, sizeof(n), "%zu", dropped);
	log_event(LOG_WARN, p->session_id, p->route, "starttls_injection", "side",
		  side == PROTO_CLIENT ? "client" : "upstream", "bytes", n, "action", "discarded",
		  "security", "yes", NULL);
}

int kit_starttls_unavailable(struct proto_actions *a, const struct proto_params *p,
			     const char *detail)
{
	int may = p->upstream_policy == CFG_POLICY_MAY;
	if (!may)
		proto_policy(a, "starttls-not-supported", detail);
	if (!may && p->policy_mode != CFG_MODE_TESTING)
		return 0;
	log_event(LOG_INFO, p->session_id, p->route, "upstream_tls", "tls", "none", "policy",
		  cfg_policy_name(p->upstream_policy), "detail", detail, NULL);
	return 1;
}
