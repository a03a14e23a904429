/* buf.h - a growable byte queue: bytes are appended at the end and consumed at the front.
 *
 * Contract: buf_append() returns 0 or -ENOMEM (the buffer unchanged). Consuming
 * everything releases a large allocation, so one burst does not pin memory for the life of
 * a connection. A zeroed struct buf is an empty buffer. */
#ifndef STP_BUF_H
#define STP_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
	uint8_t *data;
	size_t off, len, cap;
};

int buf_append(struct buf *b, const void *p, size_t n);
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);
/* Gives the memory back when the buffer is empty (for buffers idle most of the time). */
void buf_trim(struct buf *b);

static inline uint8_t *buf_ptr(const struct buf *b)
{
	return b->data + b->off;
}

#endif
