/* buf.c - growable byte queue (see buf.h). */
#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Above this, an emptied buffer gives its memory back. */
#define KEEP_MAX 65536

int buf_append(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	if (n > SIZE_MAX / 2 - b->len)
		return -ENOMEM;
	if (b->off && b->off + b->len + n > b->cap) {
		memmove(b->data, b->data + b->off, b->len);
		b->off = 0;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *nd = realloc(b->data, cap);
		if (!nd)
			return -ENOMEM;
		b->data = nd;
		b->cap = cap;
	}
	memcpy(b->data + b->off + b->len, p, n);
	b->len += n;
	return 0;
}

void buf_consume(struct buf *b, size_t n)
{
	if (n < b->len) {
		b->off += n;
		b->len -= n;
		return;
	}
	b->off = b->len = 0;
	if (b->cap > KEEP_MAX)
		buf_free(b);
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->off = b->len = b->cap = 0;
}

void buf_trim(struct buf *b)
{
	if (b->len == 0 && b->data)
		buf_free(b);
}
