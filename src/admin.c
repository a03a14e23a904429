/* admin.c - admin HTTP listener (see admin.h). */
#include "admin.h"

#include "config.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQ_MAX ADMIN_REQ_MAX
#define REQ_TIMEOUT_MS 5000

/* ---- the request (no I/O) ---------------------------------------------------------- */

/* sscanf's white space (the C locale's isspace) */
static int ws(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
}

/* The next token of at most max octets from *pos (as "%Ns" reads it); 0 at the end. */
static size_t token(const char *s, size_t end, size_t *pos, size_t max, const char **tok)
{
	size_t i = *pos;
	while (i < end && ws(s[i]))
		i++;
	*tok = s + i;
	size_t n = 0;
	while (i + n < end && !ws(s[i + n]) && n < max)
		n++;
	*pos = i + n;
	return n;
}

static int refuse(struct admin_req *out, int status)
{
	out->status = status;
	return -EINVAL;
}

int admin_parse_request(const char *buf, size_t len, struct admin_req *out)
{
	memset(out, 0, sizeof(*out));
	if (len > ADMIN_REQ_MAX)
		len = ADMIN_REQ_MAX;
	/* The request line is all we need; the headers end the request. */
	if (!memmem(buf, len, "\r\n\r\n", 4) && !memmem(buf, len, "\n\n", 2))
		return len == ADMIN_REQ_MAX ? refuse(out, 431) : -EAGAIN;
	const char *eol = memchr(buf, '\n', len);
	size_t ll = (size_t)(eol - buf);
	if (ll >= 256)
		return refuse(out, 414);
	size_t end = strnlen(buf, ll), pos = 0, vl;
	const char *version;
	out->method_len = token(buf, end, &pos, 15, &out->method);
	out->path_len = out->method_len ? token(buf, end, &pos, 199, &out->path) : 0;
	vl = out->path_len ? token(buf, end, &pos, 15, &version) : 0;
	if (vl < 7 || memcmp(version, "HTTP/1.", 7) != 0) {
		out->method = out->path = NULL;
		out->method_len = out->path_len = 0;
		return refuse(out, 400);
	}
	const char *q = memchr(out->path, '?', out->path_len);
	if (q)
		out->path_len = (size_t)(q - out->path);
	if (out->method_len != 3 || memcmp(out->method, "GET", 3) != 0) {
		out->path = NULL;
		out->path_len = 0;
		return refuse(out, 405);
	}
	return 0;
}

/* ---- the endpoint ------------------------------------------------------------------- */

static uv_tcp_t server;
static int server_open;
static int ready;

struct conn {
	struct conn *next, **prev;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_write_t wreq;
	char req[REQ_MAX];
	size_t len;
	char *resp;
	int answered, handles;
};
static struct conn *conns;

static void conn_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	if (--c->handles == 0) {
		free(c->resp);
		free(c);
	}
}

static void conn_close(struct conn *c)
{
	if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
		if ((*c->prev = c->next))
			c->next->prev = c->prev;
		uv_close((uv_handle_t *)&c->tcp, conn_closed);
		uv_close((uv_handle_t *)&c->timer, conn_closed);
	}
}

static void written(uv_write_t *w, int status)
{
	(void)status;
	conn_close(w->data);
}

static void respond(struct conn *c, int code, const char *reason, const char *type,
		    const char *body, size_t blen)
{
	if (c->answered)
		return;
	c->answered = 1;
	uv_read_stop((uv_stream_t *)&c->tcp);
	size_t cap = blen + 256;
	c->resp = malloc(cap);
	if (!c->resp) {
		conn_close(c);
		return;
	}
	int n = snprintf(c->resp, cap,
			 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 code, reason, type, blen);
	memcpy(c->resp + n, body, blen);
	uv_buf_t b = uv_buf_init(c->resp, (unsigned)((size_t)n + blen));
	c->wreq.data = c;
	if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, written) < 0)
		conn_close(c);
}

static void text(struct conn *c, int code, const char *reason, const char *body)
{
	respond(c, code, reason, "text/plain; charset=utf-8", body, strlen(body));
}

static void handle(struct conn *c, const struct admin_req *r)
{
	char path[200];
	memcpy(path, r->path, r->path_len);
	path[r->path_len] = '\0';
	if (strcmp(path, "/healthz") == 0) {
		text(c, 200, "OK", "ok\n");
	} else if (strcmp(path, "/readyz") == 0) {
		if (__atomic_load_n(&ready, __ATOMIC_RELAXED))
			text(c, 200, "OK", "ready\n");
		else
			text(c, 503, "Service Unavailable", "not ready\n");
	} else if (strcmp(path, "/metrics") == 0) {
		size_t len = 0;
		char *body = metrics_render(&len);
		if (!body) {
			text(c, 500, "Internal Server Error", "out of memory\n");
			return;
		}
		respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, len);
		free(body);
	} else {
		text(c, 404, "Not Found", "not found\n");
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	struct conn *c = h->data;
	buf->base = c->req + c->len;
	buf->len = REQ_MAX - c->len;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	(void)buf;
	struct conn *c = s->data;
	if (n < 0) {
		conn_close(c);
		return;
	}
	c->len += (size_t)n;
	struct admin_req r;
	int rc = admin_parse_request(c->req, c->len, &r);
	if (rc == 0)
		handle(c, &r);
	else if (rc == -EINVAL && r.status == 414)
		text(c, 414, "URI Too Long", "request line too long\n");
	else if (rc == -EINVAL && r.status == 400)
		text(c, 400, "Bad Request", "bad request\n");
	else if (rc == -EINVAL && r.status == 405)
		text(c, 405, "Method Not Allowed", "GET only\n");
	else if (rc == -EINVAL)
		text(c, 431, "Request Header Fields Too Large", "request too large\n");
}

static void timeout_cb(uv_timer_t *t)
{
	struct conn *c = t->data;
	if (!c->answered)
		text(c, 408, "Request Timeout", "timeout\n");
	else
		conn_close(c);
}

static void on_connection(uv_stream_t *srv, int status)
{
	if (status < 0)
		return;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return;
	uv_tcp_init(srv->loop, &c->tcp);
	uv_timer_init(srv->loop, &c->timer);
	c->tcp.data = c->timer.data = c;
	c->handles = 2;
	if ((c->next = conns))
		conns->prev = &c->next;
	conns = c;
	c->prev = &conns;
	if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0 ||
	    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0) {
		conn_close(c);
		return;
	}
	uv_timer_start(&c->timer, timeout_cb, REQ_TIMEOUT_MS, 0);
}

int admin_start(uv_loop_t *loop, const struct cfg_addr *addr, char *err, size_t errlen)
{
	int rc;
	uv_tcp_init(loop, &server);
	server_open = 1;
	if ((rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr->ss, 0)) < 0 ||
	    (rc = uv_listen((uv_stream_t *)&server, 64, on_connection)) < 0) {
		snprintf(err, errlen, "admin_listen %s:%u: %s", addr->host, addr->port,
			 uv_strerror(rc));
		return rc;
	}
	return 0;
}

void admin_set_ready(int r)
{
	__atomic_store_n(&ready, r, __ATOMIC_RELAXED);
}

void admin_stop(void)
{
	if (server_open && !uv_is_closing((uv_handle_t *)&server))
		uv_close((uv_handle_t *)&server, NULL);
	while (conns)
		conn_close(conns);
}
