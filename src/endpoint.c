/* endpoint.c - one side of a session (see endpoint.h). */
#include "endpoint.h"

#include "tls.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct wreq {
	uv_write_t req;
	struct endpoint *ep;
	size_t len;
	uint8_t data[];
};

static int ready(const struct endpoint *ep)
{
	return ep->connected && (!ep->tls || ep->tls_ready);
}

static void fail(struct endpoint *ep, const char *what, int err)
{
	if (ep->failed || ep->closing)
		return;
	ep->failed = 1;
	ep->ops->on_error(ep, what, err);
}

static void write_cb(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct endpoint *ep = w->ep;
	ep->queued -= w->len;
	free(w);
	if (status < 0) {
		if (status != UV_ECANCELED)
			fail(ep, "write failed", status);
		return;
	}
	if (!ep->closing)
		ep->ops->on_drain(ep);
}

/* Hands bytes to the kernel: directly when nothing is queued, else (or for the rest) as
 * a copied write request. */
static int raw_write(struct endpoint *ep, const uint8_t *data, size_t len)
{
	if (len == 0)
		return 0;
	if (ep->queued == 0 && !ep->flushing_held) {
		uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
		int n = uv_try_write((uv_stream_t *)&ep->tcp, &b, 1);
		if (n > 0) {
			data += n;
			len -= (size_t)n;
		} else if (n != UV_EAGAIN && n != UV_ENOSYS) {
			fail(ep, "write failed", n);
			return n;
		}
		if (len == 0)
			return 0;
	}
	struct wreq *w = malloc(sizeof(*w) + len);
	if (!w) {
		fail(ep, "out of memory", UV_ENOMEM);
		return -ENOMEM;
	}
	w->ep = ep;
	w->len = len;
	memcpy(w->data, data, len);
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
	int rc = uv_write(&w->req, (uv_stream_t *)&ep->tcp, &b, 1, write_cb);
	if (rc < 0) {
		free(w);
		fail(ep, "write failed", rc);
		return rc;
	}
	ep->queued += len;
	return 0;
}

static int flush_tls(struct endpoint *ep)
{
	size_t n = tls_conn_out_len(ep->tls);
	if (n == 0 || !ep->connected)
		return 0;
	int rc = raw_write(ep, tls_conn_out_data(ep->tls), n);
	tls_conn_out_consume(ep->tls, n);
	return rc;
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	struct endpoint *ep = req->data;
	ep->shut_done = 1;
	if (status < 0 && status != UV_ECANCELED && status != UV_ENOTCONN) {
		fail(ep, "shutdown failed", status);
		return;
	}
	if (!ep->closing)
		ep->ops->on_drain(ep);
}

static void try_shutdown(struct endpoint *ep)
{
	if (!ep->shut || ep->shut_done || ep->closing || ep->failed || !ready(ep) ||
	    ep->held.len || ep->shutdown_req.data)
		return;
	if (ep->tls) {
		tls_conn_close_notify(ep->tls);
		if (flush_tls(ep) < 0)
			return;
	}
	ep->shutdown_req.data = ep;
	int rc = uv_shutdown(&ep->shutdown_req, (uv_stream_t *)&ep->tcp, shutdown_cb);
	if (rc < 0) {
		ep->shut_done = 1;
		if (rc != UV_ENOTCONN)
			fail(ep, "shutdown failed", rc);
	}
}

/* The side became ready: send what was written early. */
static int flush_held(struct endpoint *ep)
{
	if (!ep->held.len)
		return 0;
	struct buf h = ep->held;
	memset(&ep->held, 0, sizeof(ep->held));
	/* Held bytes counted in ep_pending(), so the owner may have paused the other side:
	 * they go through a write request, whose completion (on_drain) lets it resume. */
	ep->flushing_held = 1;
	int rc = ep_write(ep, buf_ptr(&h), h.len);
	ep->flushing_held = 0;
	buf_free(&h);
	return rc;
}

static void deliver(struct endpoint *ep, const uint8_t *data, size_t len)
{
	ep->bytes_read += len;
	ep->ops->on_data(ep, data, len);
}

static void update_reading(struct endpoint *ep);

/* Drives the TLS layer after new ciphertext: handshake, then plaintext out while the
 * owner accepts it. */
static void tls_progress(struct endpoint *ep)
{
	if (!ep->tls_ready) {
		int rc = tls_conn_handshake(ep->tls);
		if (flush_tls(ep) < 0)
			return;
		if (rc == TLS_AGAIN)
			return;
		if (rc < 0) {
			ep->failed = 1;
			ep->ops->on_tls(ep, rc);
			return;
		}
		ep->tls_ready = 1;
		/* The owner applies its policy before any held byte is sent. */
		ep->ops->on_tls(ep, 0);
		if (ep->closing || ep->failed || ep->tls == NULL)
			return;
		if (flush_held(ep) < 0)
			return;
		try_shutdown(ep);
	}
	/* Records are collected into one delivery (one write on the other side) while the
	 * buffer has room for another whole record. */
	struct tls_conn *tls = ep->tls;
	size_t got = 0;
	while (!ep->paused && !ep->closing && !ep->failed && !ep->eof && ep->tls == tls) {
		int n = tls_conn_read(tls, ep->readbuf + got, EP_READ_SIZE - got);
		if (flush_tls(ep) < 0)
			return;
		if (n > 0) {
			got += (size_t)n;
			if (EP_READ_SIZE - got >= TLS_RECORD_MAX)
				continue;
		}
		if (got) {
			deliver(ep, ep->readbuf, got);
			got = 0;
			if (n > 0 || n == TLS_AGAIN)
				continue; /* the loop condition sees what the owner did */
		}
		if (n == TLS_AGAIN) {
			break;
		} else if (n == TLS_CLOSED) {
			ep->eof = 1;
			update_reading(ep);
			ep->ops->on_eof(ep);
			break;
		} else {
			fail(ep, "TLS error", 0);
			break;
		}
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	struct endpoint *ep = h->data;
	if (ep->in_delivery) { /* cannot happen with libuv's read loop; be safe */
		buf->base = NULL;
		buf->len = 0;
		return;
	}
	/* ciphertext into the second half: it is decrypted from there into the first */
	buf->base = (char *)ep->readbuf + (ep->tls ? EP_READ_SIZE : 0);
	buf->len = EP_READ_SIZE;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct endpoint *ep = s->data;
	if (nread == 0 || ep->closing)
		return;
	if (nread == UV_EOF) {
		ep->eof = 1;
		update_reading(ep);
		if (ep->tls && !ep->tls_ready) {
			ep->failed = 1;
			ep->ops->on_tls(ep, TLS_E_HANDSHAKE);
			return;
		}
		ep->ops->on_eof(ep);
		return;
	}
	if (nread < 0) {
		fail(ep, nread == UV_ECONNRESET ? "connection reset" : "read failed", (int)nread);
		return;
	}
	ep->in_delivery = 1;
	if (ep->tls && (uint8_t *)buf->base == ep->readbuf + EP_READ_SIZE) {
		/* read in place; what the engine has not read (a partial record, or all that
		 * a pause left) is copied into the connection before the buffer is reused */
		struct tls_conn *tls = ep->tls; /* freed only by close_cb, later */
		if (tls_conn_lend(tls, buf->base, (size_t)nread) < 0) {
			fail(ep, "out of memory", UV_ENOMEM);
		} else {
			tls_progress(ep);
			if (tls_conn_unlend(tls) < 0)
				fail(ep, "out of memory", UV_ENOMEM);
		}
	} else if (ep->tls) {
		if (tls_conn_feed(ep->tls, buf->base, (size_t)nread) < 0)
			fail(ep, "out of memory", UV_ENOMEM);
		else
			tls_progress(ep);
	} else {
		deliver(ep, (const uint8_t *)buf->base, (size_t)nread);
		/* the owner started TLS on what it was given (ep_start_tls_with) */
		if (ep->tls && !ep->closing && !ep->failed) {
			ep->in_delivery = 0;
			tls_progress(ep);
		}
	}
	ep->in_delivery = 0;
	update_reading(ep);
}

/* Reads from the socket only when the owner accepts data, or while a TLS handshake needs
 * input (a paused side still completes its handshake). */
static void update_reading(struct endpoint *ep)
{
	if (!ep->open || ep->closing || !ep->connected)
		return;
	int want = !ep->eof && !ep->failed &&
		   (!ep->paused || (ep->tls && !ep->tls_ready));
	if (want && !ep->reading) {
		if (uv_read_start((uv_stream_t *)&ep->tcp, alloc_cb, read_cb) == 0)
			ep->reading = 1;
	} else if (!want && ep->reading) {
		uv_read_stop((uv_stream_t *)&ep->tcp);
		ep->reading = 0;
	}
}

int ep_init(struct endpoint *ep, uv_loop_t *loop, const struct ep_ops *ops, void *owner,
	    uint8_t *readbuf)
{
	memset(ep, 0, sizeof(*ep));
	ep->ops = ops;
	ep->owner = owner;
	ep->readbuf = readbuf;
	int rc = uv_tcp_init(loop, &ep->tcp);
	if (rc < 0)
		return rc;
	ep->tcp.data = ep;
	ep->open = 1;
	return 0;
}

void ep_connected(struct endpoint *ep)
{
	ep->connected = 1;
	uv_tcp_nodelay(&ep->tcp, 1);
	if (ep->tls && !ep->tls_ready) {
		tls_progress(ep);
	} else {
		flush_held(ep);
		try_shutdown(ep);
	}
	update_reading(ep);
}

int ep_start_tls(struct endpoint *ep, struct tls_ctx *ctx, const char *server_name)
{
	return ep_start_tls_resume(ep, ctx, server_name, NULL);
}

int ep_start_tls_resume(struct endpoint *ep, struct tls_ctx *ctx, const char *server_name,
			struct tls_session *session)
{
	ep->tls = tls_conn_new(ctx, server_name);
	if (!ep->tls)
		return -ENOMEM;
	if (session)
		tls_conn_set_session(ep->tls, session); /* refused: a full handshake */
	ep->tls_ready = 0;
	if (ep->connected) {
		tls_progress(ep);
		update_reading(ep);
	}
	return 0;
}

int ep_start_tls_with(struct endpoint *ep, struct tls_ctx *ctx, const uint8_t *data,
		      size_t len)
{
	ep->tls = tls_conn_new(ctx, NULL);
	if (!ep->tls)
		return -ENOMEM;
	ep->tls_ready = 0;
	if (tls_conn_feed(ep->tls, data, len) < 0)
		return -ENOMEM;
	if (ep->connected && !ep->in_delivery) {
		tls_progress(ep);
		update_reading(ep);
	}
	return 0;
}

int ep_write(struct endpoint *ep, const void *data, size_t len)
{
	if (ep->closing || ep->failed)
		return -EPIPE;
	if (len == 0)
		return 0;
	ep->bytes_written += len;
	/* Held bytes go first: a write from on_tls() (the side is ready, the held bytes not yet
	 * flushed) waits behind them. */
	if (!ready(ep) || ep->held.len) {
		ep->bytes_written -= len; /* counted when actually sent */
		if (buf_append(&ep->held, data, len) < 0) {
			fail(ep, "out of memory", UV_ENOMEM);
			return -ENOMEM;
		}
		return 0;
	}
	if (ep->tls) {
		int rc = tls_conn_write(ep->tls, data, len);
		if (rc < 0) {
			fail(ep, "TLS error", 0);
			return rc;
		}
		return flush_tls(ep);
	}
	return raw_write(ep, data, len);
}

int ep_write_raw(struct endpoint *ep, const void *data, size_t len)
{
	if (ep->closing || ep->failed)
		return -EPIPE;
	return raw_write(ep, data, len);
}

void ep_discard_held(struct endpoint *ep)
{
	buf_free(&ep->held);
}

size_t ep_pending(const struct endpoint *ep)
{
	return ep->queued + ep->held.len + (ep->tls ? tls_conn_out_len(ep->tls) : 0);
}

void ep_pause(struct endpoint *ep)
{
	ep->paused = 1;
	update_reading(ep);
}

void ep_resume(struct endpoint *ep)
{
	if (!ep->paused)
		return;
	ep->paused = 0;
	/* Plaintext the TLS layer already holds comes first. */
	if (ep->tls && ep->tls_ready && !ep->in_delivery)
		tls_progress(ep);
	update_reading(ep);
}

void ep_shutdown(struct endpoint *ep)
{
	ep->shut = 1;
	try_shutdown(ep);
}

static void close_cb(uv_handle_t *h)
{
	struct endpoint *ep = h->data;
	tls_conn_free(ep->tls);
	ep->tls = NULL;
	buf_free(&ep->held);
	ep->open = 0;
	ep->ops->on_closed(ep);
}

void ep_close(struct endpoint *ep)
{
	if (!ep->open || ep->closing)
		return;
	ep->closing = 1;
	if (ep->reading)
		uv_read_stop((uv_stream_t *)&ep->tcp);
	ep->reading = 0;
	uv_close((uv_handle_t *)&ep->tcp, close_cb);
}
