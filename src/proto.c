/* proto.c - the table of protocol modules and the action list they share with the session
 * (see proto.h). An allocation failure marks the list failed instead of ending the
 * process: the session sees proto_actions.failed and ends that one session. */
#include "proto.h"

#include <errno.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* More bytes than one call of a module can ever produce (its inputs are bounded reads):
 * beyond this the list fails rather than asking the allocator for absurd sizes. */
#define ACTIONS_BYTES_MAX ((size_t)1 << 30)

const struct proto_ops *proto_lookup(enum cfg_proto protocol)
{
	switch (protocol) {
	case CFG_PROTO_SMTP:
	case CFG_PROTO_LMTP:
		return &proto_smtp_ops;
	case CFG_PROTO_POP3:
		return &proto_pop3_ops;
	case CFG_PROTO_IMAP:
		return &proto_imap_ops;
	default:
		return NULL;
	}
}

static struct proto_act *push(struct proto_actions *a)
{
	static struct proto_act sink; /* where the actions of a failed list go */
	if (a->failed)
		return &sink;
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 8;
		struct proto_act *n = realloc(a->a, cap * sizeof(*n));
		if (!n) {
			a->failed = 1;
			return &sink;
		}
		a->a = n;
		a->cap = cap;
	}
	struct proto_act *x = &a->a[a->n++];
	memset(x, 0, sizeof(*x));
	return x;
}

/* Appends data to the list's byte buffer: its offset, or -1. */
static long keep_bytes(struct proto_actions *a, const void *data, size_t len)
{
	if (len > ACTIONS_BYTES_MAX - a->blen) {
		a->failed = 1;
		return -1;
	}
	if (a->blen + len > a->bcap) {
		size_t cap = a->bcap ? a->bcap : 4096;
		while (cap < a->blen + len)
			cap *= 2;
		uint8_t *nb = realloc(a->buf, cap);
		if (!nb) {
			a->failed = 1;
			return -1;
		}
		a->buf = nb;
		a->bcap = cap;
	}
	memcpy(a->buf + a->blen, data, len);
	a->blen += len;
	return (long)(a->blen - len);
}

void proto_send(struct proto_actions *a, enum proto_side side, const void *data, size_t len)
{
	if (len == 0 || a->failed)
		return;
	/* Consecutive sends to one side are merged into one write. */
	if (a->n && a->a[a->n - 1].type == PA_SEND && a->a[a->n - 1].side == side &&
	    a->a[a->n - 1].off + a->a[a->n - 1].len == a->blen) {
		a->a[a->n - 1].len += len;
	} else {
		struct proto_act *x = push(a);
		x->type = PA_SEND;
		x->side = side;
		x->off = a->blen;
		x->len = len;
	}
	keep_bytes(a, data, len);
}

void proto_sendf(struct proto_actions *a, enum proto_side side, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	proto_send(a, side, buf, (size_t)n);
}

void proto_starttls(struct proto_actions *a, enum proto_side side)
{
	struct proto_act *x = push(a);
	x->type = PA_STARTTLS;
	x->side = side;
}

void proto_ready(struct proto_actions *a)
{
	push(a)->type = PA_READY;
}

void proto_connect(struct proto_actions *a)
{
	push(a)->type = PA_CONNECT;
}

void proto_close(struct proto_actions *a, const char *reason)
{
	struct proto_act *x = push(a);
	x->type = PA_CLOSE;
	x->reason = reason;
}

/* An action carrying a text in the buffer (off/len). */
static struct proto_act *push_text(struct proto_actions *a, enum proto_act_type type,
				   const char *text)
{
	size_t n = text ? strlen(text) : 0;
	long off = keep_bytes(a, text ? text : "", n);
	struct proto_act *x = push(a);
	x->type = type;
	x->off = off < 0 ? 0 : (size_t)off;
	x->len = off < 0 ? 0 : n;
	return x;
}

void proto_policy(struct proto_actions *a, const char *result, const char *detail)
{
	push_text(a, PA_POLICY, detail)->reason = result;
}

void proto_bind(struct proto_actions *a, enum proto_act_type type, const char *domain)
{
	push_text(a, type, domain);
}

void proto_message(struct proto_actions *a, const struct proto_message *m)
{
	/* a copy: the module's record is reused before the session reads the action */
	size_t tn = m->to ? strlen(m->to) : 0;
	long off = keep_bytes(a, m, sizeof(*m));
	if (off < 0 || keep_bytes(a, m->to ? m->to : "", tn + 1) < 0)
		return;
	struct proto_act *x = push(a);
	x->type = PA_MESSAGE;
	x->off = (size_t)off;
	x->len = sizeof(*m) + tn + 1;
}

int proto_message_get(const struct proto_actions *a, const struct proto_act *x,
		      struct proto_message *m)
{
	if (x->type != PA_MESSAGE || x->len <= sizeof(*m))
		return -EINVAL;
	memcpy(m, a->buf + x->off, sizeof(*m));
	m->to = (const char *)a->buf + x->off + sizeof(*m);
	return 0;
}

void proto_actions_clear(struct proto_actions *a)
{
	a->n = 0;
	a->blen = 0;
	a->failed = 0;
	if (a->bcap > 1 << 20) { /* do not pin a large burst's buffer */
		free(a->buf);
		a->buf = NULL;
		a->bcap = 0;
	}
}

void proto_actions_free(struct proto_actions *a)
{
	free(a->a);
	free(a->buf);
	memset(a, 0, sizeof(*a));
}
