/* test_endpoint.c - struct endpoint (endpoint.h) on a uv loop of the test's own, over
 * real loopback TCP pairs.
 *
 * Each test makes a connected pair (listen on 127.0.0.1:0, connect, accept): one socket is
 * handed to the endpoint (ep_init, then uv_tcp_open on ep->tcp, as session.c does with
 * uv_accept or uv_tcp_connect; ep_connected when the test says the TCP side is up), the
 * other is "the peer", driven by the test itself with non-blocking recv/send and, for TLS,
 * a tls_conn over memory (tls.h) fed with what the peer reads. Everything runs on the
 * test's thread: step() runs the loop once without blocking, moves the peer's bytes, and,
 * when nothing moved, waits in poll() on the loop's backend fd and the peer's socket.
 * RUN_UNTIL(cond) steps until cond holds, or fails after TIMEOUT_MS. The owner (struct
 * tep) records every callback, in order, and can act in them (pause, discard, close). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "endpoint.h"
#include "tls.h"
#include "unit_fixture.h"
#include "unit_net.h"

#define TIMEOUT_MS 5000

static void fill_pattern(uint8_t *b, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (uint8_t)x;
	}
}

/* Equal bytes, or a failure naming the first difference. */
static void assert_bytes(const uint8_t *got, size_t glen, const uint8_t *want, size_t wlen,
			 const char *what)
{
	size_t i = 0;
	while (i < glen && i < wlen && got[i] == want[i])
		i++;
	if (glen == wlen && i == glen)
		return;
	fail_msg("%s: %zu bytes, expected %zu; first difference at offset %zu", what, glen, wlen,
		 i);
}

static void assert_text(const struct buf *b, const char *want, const char *what)
{
	if (b->len == strlen(want) && (b->len == 0 || !memcmp(buf_ptr(b), want, b->len)))
		return;
	fail_msg("%s: \"%.*s\" (%zu bytes), expected \"%s\"", what, (int)(b->len > 200 ? 200 : b->len),
		 b->len ? (const char *)buf_ptr(b) : "", b->len, want);
}

static int ends_with(const struct buf *b, const char *tail)
{
	size_t n = strlen(tail);
	return b->len >= n && !memcmp(buf_ptr(b) + b->len - n, tail, n);
}

/* ------------------------------------------------------------------ the owner */

enum ev_type { EV_DATA, EV_EOF, EV_TLS, EV_ERROR, EV_DRAIN, EV_CLOSED };
static const char *const ev_name[] = { "data", "eof", "tls", "error", "drain", "closed" };

struct event {
	enum ev_type type;
	int arg;        /* on_tls status, on_error uv_err */
	size_t len;     /* on_data */
	size_t pending; /* ep_pending() when the callback ran */
	const char *what;
};

struct tep {
	struct endpoint ep;
	struct event *ev;
	size_t nev, evcap;
	struct buf data; /* every delivered byte, in order */
	/* what the owner does in its callbacks */
	size_t pause_at;        /* on_data: ep_pause once this many bytes arrived (0: never) */
	int tls_discard;        /* on_tls(0): ep_discard_held() */
	int tls_shutdown;       /* on_tls(0): ep_shutdown() (after the discard, if any) */
	int tls_reject_untrusted; /* on_tls(0): discard and close when verification failed */
	const char *tls_write;  /* on_tls(0): ep_write() this */
	int tls_write_rc;
	int close_on_eof;
	/* the endpoint when on_tls ran */
	uint64_t at_tls_written;
	size_t at_tls_held, at_tls_pending;
	int at_tls_verify;
	/* when on_data paused it */
	size_t paused_at_len, paused_tls_in;
};

static void push(struct tep *t, enum ev_type type, int arg, size_t len, const char *what)
{
	if (t->nev == t->evcap) {
		t->evcap = t->evcap ? t->evcap * 2 : 64;
		t->ev = realloc(t->ev, t->evcap * sizeof(*t->ev));
		assert_non_null(t->ev);
	}
	struct event e = { type, arg, len, ep_pending(&t->ep), what };
	t->ev[t->nev++] = e;
}

static void on_data(struct endpoint *ep, const uint8_t *data, size_t len)
{
	struct tep *t = ep->owner;
	assert_true(len > 0);
	assert_int_equal(buf_append(&t->data, data, len), 0);
	push(t, EV_DATA, 0, len, NULL);
	if (t->pause_at && !ep->paused && t->data.len >= t->pause_at && !t->paused_at_len) {
		t->paused_at_len = t->data.len;
		ep_pause(ep);
		t->paused_tls_in = ep->tls ? tls_conn_in_len(ep->tls) : 0;
	}
}

static void on_eof(struct endpoint *ep)
{
	struct tep *t = ep->owner;
	push(t, EV_EOF, 0, 0, NULL);
	if (t->close_on_eof)
		ep_close(ep);
}

static void on_tls(struct endpoint *ep, int status)
{
	struct tep *t = ep->owner;
	t->at_tls_written = ep->bytes_written;
	t->at_tls_held = ep->held.len;
	t->at_tls_pending = ep_pending(ep);
	t->at_tls_verify = ep->tls ? (int)tls_conn_verify_result(ep->tls) : -1;
	push(t, EV_TLS, status, 0, NULL);
	if (status < 0)
		return;
	if (t->tls_reject_untrusted && tls_conn_verify_result(ep->tls) != TLS_VERIFY_OK) {
		ep_discard_held(ep);
		ep_close(ep);
		return;
	}
	if (t->tls_write)
		t->tls_write_rc = ep_write(ep, t->tls_write, strlen(t->tls_write));
	if (t->tls_discard)
		ep_discard_held(ep);
	if (t->tls_shutdown)
		ep_shutdown(ep);
}

static void on_error(struct endpoint *ep, const char *what, int uv_err)
{
	push(ep->owner, EV_ERROR, uv_err, 0, what);
}

static void on_drain(struct endpoint *ep)
{
	push(ep->owner, EV_DRAIN, 0, 0, NULL);
}

static void on_closed(struct endpoint *ep)
{
	push(ep->owner, EV_CLOSED, 0, 0, NULL);
}

static const struct ep_ops rec_ops = { on_data, on_eof, on_tls, on_error, on_drain, on_closed };

static size_t count(const struct tep *t, enum ev_type type)
{
	size_t n = 0;
	for (size_t i = 0; i < t->nev; i++)
		n += t->ev[i].type == type;
	return n;
}

/* Index of the first event of type, or (size_t)-1. */
static size_t first(const struct tep *t, enum ev_type type)
{
	for (size_t i = 0; i < t->nev; i++)
		if (t->ev[i].type == type)
			return i;
	return (size_t)-1;
}

static size_t last(const struct tep *t, enum ev_type type)
{
	for (size_t i = t->nev; i-- > 0;)
		if (t->ev[i].type == type)
			return i;
	return (size_t)-1;
}

/* The events as text ("tls(0) data(5) drain eof closed"), runs of data and drain events
 * merged, for failure messages. */
static const char *trace(const struct tep *t)
{
	static char s[2048];
	size_t o = 0;
	s[0] = 0;
	for (size_t i = 0; i < t->nev && o < sizeof s - 64; i++) {
		const struct event *e = &t->ev[i];
		if (i && e->type == t->ev[i - 1].type && (e->type == EV_DATA || e->type == EV_DRAIN))
			continue;
		if (e->type == EV_TLS || e->type == EV_ERROR)
			o += (size_t)snprintf(s + o, sizeof s - o, "%s(%d%s%s) ", ev_name[e->type],
					      e->arg, e->what ? " " : "", e->what ? e->what : "");
		else
			o += (size_t)snprintf(s + o, sizeof s - o, "%s ", ev_name[e->type]);
	}
	return s;
}

/* ------------------------------------------------------------------ the peer */

struct peer {
	int fd;
	int reading;     /* recv what arrives */
	size_t chunk;    /* at most this much per step (0: 64 KiB): a slow reader */
	struct buf in;   /* plaintext received (decrypted with tls) */
	size_t raw_in;   /* bytes received from the socket */
	size_t in_at_eof;
	struct buf out;  /* bytes to send (ciphertext with tls) */
	int blocked;     /* a send found the socket full */
	int shut_pending; /* shutdown(SHUT_WR) once out is empty */
	int eof, err;    /* recv returned 0; errno of a failed recv or send */
	struct tls_conn *tls;
	int hs_rc;       /* TLS_AGAIN until the handshake is done (0) or failed */
	int tls_closed;  /* close_notify received */
	int tls_err;
};

static size_t peer_tls(struct peer *p)
{
	size_t moved = 0;
	if (p->hs_rc == TLS_AGAIN) {
		p->hs_rc = tls_conn_handshake(p->tls);
		moved += p->hs_rc != TLS_AGAIN;
	}
	while (p->hs_rc == 0 && !p->tls_closed && !p->tls_err) {
		uint8_t tmp[16384];
		int n = tls_conn_read(p->tls, tmp, sizeof tmp);
		if (n > 0) {
			assert_int_equal(buf_append(&p->in, tmp, (size_t)n), 0);
			moved += (size_t)n;
			continue;
		}
		if (n == TLS_CLOSED)
			p->tls_closed = 1, moved++;
		else if (n != TLS_AGAIN)
			p->tls_err = n, moved++;
		break;
	}
	size_t n = tls_conn_out_len(p->tls);
	if (n) {
		assert_int_equal(buf_append(&p->out, tls_conn_out_data(p->tls), n), 0);
		tls_conn_out_consume(p->tls, n);
		moved += n;
	}
	return moved;
}

/* One round of the peer: receive, run its TLS, send. Returns how much moved. */
static size_t peer_step(struct peer *p)
{
	size_t moved = 0;
	if (p->fd < 0)
		return 0;
	if (p->reading && !p->eof && !p->err) {
		static uint8_t tmp[65536];
		size_t want = p->chunk ? p->chunk : sizeof tmp;
		ssize_t n = recv(p->fd, tmp, want, MSG_DONTWAIT);
		if (n > 0) {
			moved += (size_t)n;
			p->raw_in += (size_t)n;
			if (p->tls)
				assert_int_equal(tls_conn_feed(p->tls, tmp, (size_t)n), 0);
			else
				assert_int_equal(buf_append(&p->in, tmp, (size_t)n), 0);
		} else if (n == 0) {
			p->eof = 1;
			p->in_at_eof = p->in.len;
			moved++;
		} else if (errno != EAGAIN && errno != EINTR) {
			p->err = errno;
			moved++;
		}
	}
	if (p->tls)
		moved += peer_tls(p);
	if (p->out.len && !p->err) {
		ssize_t n = send(p->fd, buf_ptr(&p->out), p->out.len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			buf_consume(&p->out, (size_t)n);
			moved += (size_t)n;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			p->blocked = 1;
		} else if (n < 0 && errno != EINTR) {
			p->err = errno;
			moved++;
		}
	}
	if (!p->out.len && p->shut_pending) {
		shutdown(p->fd, SHUT_WR);
		p->shut_pending = 0;
		moved++;
	}
	return moved;
}

static void peer_send(struct peer *p, const void *d, size_t n)
{
	if (p->tls) {
		assert_int_equal(tls_conn_write(p->tls, d, n), 0);
		peer_tls(p);
	} else {
		assert_int_equal(buf_append(&p->out, d, n), 0);
	}
}

/* ------------------------------------------------------------------ the fixture */

static struct fx {
	uv_loop_t loop;
	int loop_ok;
	struct tep t;
	struct peer p;
	int ep_fd;       /* the endpoint's socket until uv_tcp_open took it */
} F;

static struct tls_ctx *sctx, *sctx_self, *cctx;

static int group_setup(void **state)
{
	(void)state;
	if (tls_global_init() != 0 || fixture_setup("endpoint") != 0)
		return -1;
	if (!have_certs)
		return 0;
	char err[256], cert[600], key[600], ca[600];
	snprintf(cert, sizeof cert, "%s/server.pem", certdir);
	snprintf(key, sizeof key, "%s/server.key", certdir);
	snprintf(ca, sizeof ca, "%s/ca.pem", certdir);
	struct tls_server_opts so = { .cert = cert, .key = key, .min_version = 12 };
	struct tls_client_opts co = { .ca = ca, .min_version = 12 };
	if (tls_ctx_server_new(&so, &sctx, err, sizeof err) ||
	    tls_ctx_client_new(&co, &cctx, err, sizeof err)) {
		fprintf(stderr, "contexts: %s\n", err);
		return -1;
	}
	snprintf(cert, sizeof cert, "%s/selfsigned.pem", certdir);
	snprintf(key, sizeof key, "%s/selfsigned.key", certdir);
	if (tls_ctx_server_new(&so, &sctx_self, err, sizeof err)) {
		fprintf(stderr, "contexts: %s\n", err);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	tls_ctx_free(sctx);
	tls_ctx_free(sctx_self);
	tls_ctx_free(cctx);
	return fixture_teardown();
}

static int setup(void **state)
{
	(void)state;
	memset(&F, 0, sizeof F);
	F.p.fd = F.ep_fd = -1;
	F.p.hs_rc = TLS_AGAIN;
	if (uv_loop_init(&F.loop) != 0)
		return -1;
	F.loop_ok = 1;
	return 0;
}

/* Closes what the test left open; the loop must end with nothing on it. */
static int teardown(void **state)
{
	(void)state;
	int bad = 0;
	if (F.t.ep.open && !F.t.ep.closing)
		ep_close(&F.t.ep);
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (F.t.ep.open && now_ms() < dl)
		uv_run(&F.loop, UV_RUN_NOWAIT);
	if (F.t.ep.open) {
		fprintf(stderr, "teardown: the endpoint never closed\n");
		bad = 1;
	}
	if (F.loop_ok) {
		uv_run(&F.loop, UV_RUN_NOWAIT);
		int rc = uv_loop_close(&F.loop);
		if (rc != 0) {
			fprintf(stderr, "teardown: uv_loop_close: %s\n", uv_strerror(rc));
			bad = 1;
		}
	}
	if (F.ep_fd >= 0)
		close(F.ep_fd);
	if (F.p.fd >= 0)
		close(F.p.fd);
	tls_conn_free(F.p.tls);
	buf_free(&F.p.in);
	buf_free(&F.p.out);
	buf_free(&F.t.data);
	free(F.t.ev);
	memset(&F, 0, sizeof F);
	return bad ? -1 : 0;
}

/* A connected loopback pair; *a is the connecting socket, *b the accepted one. Buffer
 * sizes (0: the system's) apply to a's and b's receive and send buffers. */
struct bufs {
	int a_rcv, a_snd, b_rcv, b_snd;
};

static void tcp_pair(int *a, int *b, const struct bufs *bs)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(l >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (bs && bs->b_rcv)
		assert_int_equal(setsockopt(l, SOL_SOCKET, SO_RCVBUF, &bs->b_rcv, sizeof(int)), 0);
	if (bs && bs->b_snd)
		assert_int_equal(setsockopt(l, SOL_SOCKET, SO_SNDBUF, &bs->b_snd, sizeof(int)), 0);
	assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(l, 4), 0);
	socklen_t sl = sizeof sin;
	assert_int_equal(getsockname(l, (struct sockaddr *)&sin, &sl), 0);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c >= 0);
	if (bs && bs->a_rcv)
		assert_int_equal(setsockopt(c, SOL_SOCKET, SO_RCVBUF, &bs->a_rcv, sizeof(int)), 0);
	if (bs && bs->a_snd)
		assert_int_equal(setsockopt(c, SOL_SOCKET, SO_SNDBUF, &bs->a_snd, sizeof(int)), 0);
	assert_int_equal(connect(c, (struct sockaddr *)&sin, sizeof sin), 0);
	int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(s >= 0);
	close(l);
	*a = c;
	*b = s;
}

static uint8_t readbuf[EP_LOOP_BUF];

/* ep_init on the test's loop and uv_tcp_open of the endpoint's socket. */
static void ep_open(void)
{
	assert_int_equal(ep_init(&F.t.ep, &F.loop, &rec_ops, &F.t, readbuf), 0);
	assert_int_equal(uv_tcp_open(&F.t.ep.tcp, F.ep_fd), 0);
	F.ep_fd = -1;
}

/* The endpoint on one socket of a fresh pair (the accepted one when accepted; bs->a_* are
 * the endpoint's buffers), the peer on the other; ep_init and uv_tcp_open done, not yet
 * connected (ep_connected is the test's). */
static void attach(int accepted, const struct bufs *bs)
{
	int a, b;
	struct bufs mine = { 0 };
	if (bs && !accepted)
		mine = *bs; /* a_* are the endpoint's */
	else if (bs)
		mine = (struct bufs){ bs->b_rcv, bs->b_snd, bs->a_rcv, bs->a_snd };
	tcp_pair(&a, &b, &mine);
	F.ep_fd = accepted ? b : a;
	F.p.fd = accepted ? a : b;
	ep_open();
}

static void step(void)
{
	uv_run(&F.loop, UV_RUN_NOWAIT);
	if (peer_step(&F.p))
		return;
	struct pollfd pf[2] = { { uv_backend_fd(&F.loop), POLLIN, 0 }, { F.p.fd, 0, 0 } };
	if (F.p.reading && !F.p.eof)
		pf[1].events |= POLLIN;
	if (F.p.out.len)
		pf[1].events |= POLLOUT;
	if (!pf[1].events)
		pf[1].fd = -1;
	int to = uv_backend_timeout(&F.loop);
	if (to < 0 || to > 10)
		to = 10;
	poll(pf, 2, to);
}

#define RUN_UNTIL(cond)                                                                      \
	do {                                                                                 \
		int64_t dl_ = now_ms() + TIMEOUT_MS;                                         \
		while (!(cond)) {                                                            \
			if (now_ms() > dl_)                                                  \
				fail_msg("line %d: timed out waiting for %s; events: %s",  \
					 __LINE__, #cond, trace(&F.t));                      \
			step();                                                              \
		}                                                                            \
	} while (0)

/* The endpoint's socket has bytes to read: the kernel holds them, not the endpoint. */
static int ep_readable(void)
{
	uv_os_fd_t fd;
	assert_int_equal(uv_fileno((uv_handle_t *)&F.t.ep.tcp, &fd), 0);
	struct pollfd pf = { fd, POLLIN, 0 };
	return poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN);
}

static void need_certs(void)
{
	if (!have_certs)
		skip();
}

/* ------------------------------------------------------------------ plaintext writes */

/* Bytes written before ep_connected are held (counted by ep_pending, nothing on the wire),
 * then sent in order once connected; ep_pending drops to 0 with an on_drain. */
struct held_case {
	const char *name;
	const char *before[4]; /* writes before ep_connected */
	const char *after;     /* a write right after it */
	int shutdown_before;   /* ep_shutdown before ep_connected: FIN after the held bytes */
};

static void test_plain_held_until_connected(void **state)
{
	(void)state;
	static const struct held_case cases[] = {
		{ "one write", { "hello" }, NULL, 0 },
		{ "three writes and one after", { "a", "bc", "def" }, "ghi", 0 },
		{ "an empty write", { "", "x", "" }, NULL, 0 },
		{ "shutdown before connected", { "last ", "words" }, NULL, 1 },
		{ "nothing held, shutdown", { NULL }, NULL, 1 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct held_case *c = &cases[i];
		print_message("case: %s\n", c->name);
		if (i) {
			assert_int_equal(teardown(NULL), 0);
			assert_int_equal(setup(NULL), 0);
		}
		attach(0, NULL);
		char want[256] = "";
		size_t held = 0;
		for (int k = 0; k < 4 && c->before[k]; k++) {
			assert_int_equal(ep_write(&F.t.ep, c->before[k], strlen(c->before[k])), 0);
			strcat(want, c->before[k]);
			held += strlen(c->before[k]);
			assert_int_equal(ep_pending(&F.t.ep), held);
		}
		assert_int_equal(F.t.ep.held.len, held);
		assert_int_equal(F.t.ep.bytes_written, 0); /* counted when sent */
		if (c->shutdown_before)
			ep_shutdown(&F.t.ep);
		/* Not connected: nothing reaches the peer, however long the loop runs. */
		for (int k = 0; k < 3; k++)
			uv_run(&F.loop, UV_RUN_NOWAIT);
		char tmp[8];
		assert_int_equal(recv(F.p.fd, tmp, sizeof tmp, MSG_DONTWAIT), -1);
		assert_int_equal(errno, EAGAIN);
		assert_int_equal(count(&F.t, EV_DRAIN), 0);

		ep_connected(&F.t.ep);
		/* The held bytes left the held buffer for a write request: still pending. */
		assert_int_equal(F.t.ep.held.len, 0);
		assert_int_equal(ep_pending(&F.t.ep), held);
		if (c->after) {
			assert_int_equal(ep_write(&F.t.ep, c->after, strlen(c->after)), 0);
			strcat(want, c->after);
		}
		F.p.reading = 1;
		RUN_UNTIL(F.p.in.len >= strlen(want) && ep_pending(&F.t.ep) == 0 &&
			  (!held || count(&F.t, EV_DRAIN)) && (!c->shutdown_before || F.p.eof));
		assert_text(&F.p.in, want, "the peer received");
		assert_int_equal(F.t.ep.bytes_written, strlen(want));
		if (held) {
			assert_int_equal(F.t.ev[last(&F.t, EV_DRAIN)].pending, 0);
		}
		if (c->shutdown_before)
			assert_int_equal(F.p.in_at_eof, strlen(want));
		assert_int_equal(count(&F.t, EV_ERROR), 0);
		assert_int_equal(count(&F.t, EV_DATA), 0);
	}
}

/* Several MB to a peer that does not read at first, then reads 4 KiB at a time: the bytes
 * queue in uv_write requests (ep_pending counts them, never more than was written, never
 * growing while nothing is written) and arrive complete and in order. */
static void test_plain_large_writes_slow_reader(void **state)
{
	(void)state;
	enum { CHUNK = 128 * 1024, N = 64, TOTAL = CHUNK * N };
	struct bufs bs = { .a_snd = 32768, .b_rcv = 32768 };
	attach(0, &bs);
	ep_connected(&F.t.ep);
	uint8_t *src = malloc(TOTAL);
	assert_non_null(src);
	fill_pattern(src, TOTAL, 7);
	for (int i = 0; i < N; i++) {
		assert_int_equal(ep_write(&F.t.ep, src + (size_t)i * CHUNK, CHUNK), 0);
		size_t pend = ep_pending(&F.t.ep);
		assert_true(pend <= (size_t)(i + 1) * CHUNK);
		assert_int_equal(pend, F.t.ep.queued); /* no TLS, nothing held */
	}
	assert_int_equal(F.t.ep.bytes_written, TOTAL);
	/* The kernel cannot have taken 8 MB into 64 KiB of buffers. */
	assert_true(ep_pending(&F.t.ep) > TOTAL / 2);
	size_t before = ep_pending(&F.t.ep);
	F.p.reading = 1;
	F.p.chunk = 4096;
	RUN_UNTIL(F.p.in.len == TOTAL && ep_pending(&F.t.ep) == 0 && count(&F.t, EV_DRAIN) &&
		  F.t.ev[last(&F.t, EV_DRAIN)].pending == 0);
	assert_bytes(buf_ptr(&F.p.in), F.p.in.len, src, TOTAL, "the peer received");
	/* Pending only went down after the last write. */
	size_t prev = before;
	for (size_t i = 0; i < F.t.nev; i++) {
		assert_int_equal(F.t.ev[i].type, EV_DRAIN);
		assert_true(F.t.ev[i].pending <= prev);
		prev = F.t.ev[i].pending;
	}
	free(src);
}

/* ------------------------------------------------------------------ plaintext reads */

static void test_plain_reads_in_order(void **state)
{
	(void)state;
	attach(1, NULL);
	ep_connected(&F.t.ep);
	peer_send(&F.p, "one ", 4);
	RUN_UNTIL(F.t.data.len == 4);
	peer_send(&F.p, "two ", 4);
	peer_send(&F.p, "three", 5);
	RUN_UNTIL(F.t.data.len == 13);
	assert_text(&F.t.data, "one two three", "delivered");
	/* 1 MB in one go: complete and in order, whatever the read sizes. */
	enum { BIG = 1 << 20 };
	uint8_t *src = malloc(BIG);
	assert_non_null(src);
	fill_pattern(src, BIG, 3);
	peer_send(&F.p, src, BIG);
	RUN_UNTIL(F.t.data.len == 13 + BIG);
	assert_bytes(buf_ptr(&F.t.data) + 13, F.t.data.len - 13, src, BIG, "delivered");
	assert_int_equal(F.t.ep.bytes_read, 13 + BIG);
	for (size_t i = 0; i < F.t.nev; i++) {
		assert_int_equal(F.t.ev[i].type, EV_DATA);
		assert_true(F.t.ev[i].len <= EP_READ_SIZE);
	}
	free(src);
}

/* ep_pause stops delivery and reading: the peer's writes fill the socket and block; while
 * the bytes wait in the kernel, running the loop delivers none; ep_resume delivers them. */
enum pause_when { PAUSE_BEFORE_CONNECTED, PAUSE_AFTER_CONNECTED, PAUSE_IN_ON_DATA };

static void test_plain_pause_resume(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		enum pause_when when;
	} cases[] = {
		{ "ep_pause before ep_connected", PAUSE_BEFORE_CONNECTED },
		{ "ep_pause after ep_connected", PAUSE_AFTER_CONNECTED },
		{ "ep_pause inside on_data", PAUSE_IN_ON_DATA },
	};
	enum { TOTAL = 4 << 20 };
	uint8_t *src = malloc(TOTAL);
	assert_non_null(src);
	fill_pattern(src, TOTAL, 11);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		print_message("case: %s\n", cases[i].name);
		if (i) {
			assert_int_equal(teardown(NULL), 0);
			assert_int_equal(setup(NULL), 0);
		}
		struct bufs bs = { .a_rcv = 16384, .b_snd = 16384 };
		attach(1, &bs);
		if (cases[i].when == PAUSE_BEFORE_CONNECTED)
			ep_pause(&F.t.ep);
		ep_connected(&F.t.ep);
		if (cases[i].when == PAUSE_AFTER_CONNECTED)
			ep_pause(&F.t.ep);
		if (cases[i].when == PAUSE_IN_ON_DATA)
			F.t.pause_at = 1;
		peer_send(&F.p, src, TOTAL);
		RUN_UNTIL(F.p.blocked && ep_readable() && F.t.ep.paused);
		size_t got = F.t.data.len;
		if (cases[i].when == PAUSE_IN_ON_DATA)
			assert_int_equal(got, F.t.paused_at_len);
		else
			assert_int_equal(got, 0);
		assert_int_equal(F.t.ep.reading, 0);
		/* Bytes wait in the endpoint's socket: a reading endpoint would take them now. */
		size_t out_before = F.p.out.len;
		for (int k = 0; k < 5; k++) {
			uv_run(&F.loop, UV_RUN_NOWAIT);
			peer_step(&F.p);
		}
		assert_true(ep_readable());
		assert_int_equal(F.t.data.len, got);
		assert_int_equal(F.p.out.len, out_before); /* the peer stays blocked */
		ep_resume(&F.t.ep);
		assert_int_equal(F.t.ep.paused, 0);
		RUN_UNTIL(F.t.data.len == TOTAL);
		assert_bytes(buf_ptr(&F.t.data), F.t.data.len, src, TOTAL, "delivered");
		assert_int_equal(count(&F.t, EV_EOF) + count(&F.t, EV_ERROR), 0);
	}
	free(src);
}

/* The peer's FIN: on_eof once; the other direction still works (half-close). */
static void test_plain_eof_once_then_write(void **state)
{
	(void)state;
	attach(1, NULL);
	ep_connected(&F.t.ep);
	peer_send(&F.p, "bye", 3);
	F.p.shut_pending = 1;
	RUN_UNTIL(count(&F.t, EV_EOF) == 1);
	assert_text(&F.t.data, "bye", "delivered");
	assert_true(last(&F.t, EV_DATA) < first(&F.t, EV_EOF));
	assert_int_equal(F.t.ep.eof, 1);
	assert_int_equal(F.t.ep.reading, 0);
	/* The endpoint still writes to a peer that half-closed. */
	assert_int_equal(ep_write(&F.t.ep, "answer", 6), 0);
	ep_shutdown(&F.t.ep);
	F.p.reading = 1;
	RUN_UNTIL(F.p.eof);
	assert_text(&F.p.in, "answer", "the peer received");
	RUN_UNTIL(F.t.ep.shut_done);
	/* Resuming a paused endpoint that saw EOF does not report it again. */
	ep_pause(&F.t.ep);
	ep_resume(&F.t.ep);
	for (int k = 0; k < 3; k++)
		step();
	assert_int_equal(count(&F.t, EV_EOF), 1);
	assert_int_equal(count(&F.t, EV_ERROR), 0);
}

/* A reset by the peer (SO_LINGER 0): on_error, no on_eof; writes then fail with -EPIPE. */
static void test_plain_reset_is_an_error(void **state)
{
	(void)state;
	attach(1, NULL);
	ep_connected(&F.t.ep);
	peer_send(&F.p, "x", 1);
	RUN_UNTIL(F.t.data.len == 1);
	struct linger lg = { 1, 0 };
	assert_int_equal(setsockopt(F.p.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
	close(F.p.fd);
	F.p.fd = -1;
	RUN_UNTIL(count(&F.t, EV_ERROR) == 1);
	const struct event *e = &F.t.ev[first(&F.t, EV_ERROR)];
	assert_int_equal(e->arg, UV_ECONNRESET);
	assert_string_equal(e->what, "connection reset");
	assert_int_equal(count(&F.t, EV_EOF), 0);
	assert_int_equal(F.t.ep.failed, 1);
	assert_int_equal(ep_write(&F.t.ep, "late", 4), -EPIPE);
	assert_int_equal(ep_pending(&F.t.ep), 0);
	for (int k = 0; k < 3; k++)
		uv_run(&F.loop, UV_RUN_NOWAIT);
	assert_int_equal(count(&F.t, EV_ERROR), 1);
}

/* ep_shutdown with bytes queued: the FIN waits for them; the peer reads all, then EOF.
 * The peer's bytes after that are still delivered, then its FIN. */
static void test_plain_shutdown_after_queued(void **state)
{
	(void)state;
	enum { TOTAL = 2 << 20 };
	struct bufs bs = { .a_snd = 32768, .b_rcv = 32768 };
	attach(0, &bs);
	ep_connected(&F.t.ep);
	uint8_t *src = malloc(TOTAL);
	assert_non_null(src);
	fill_pattern(src, TOTAL, 5);
	assert_int_equal(ep_write(&F.t.ep, src, TOTAL), 0);
	assert_true(F.t.ep.queued > 0);
	ep_shutdown(&F.t.ep);
	assert_int_equal(F.t.ep.shut, 1);
	for (int k = 0; k < 3; k++)
		uv_run(&F.loop, UV_RUN_NOWAIT);
	assert_int_equal(F.t.ep.shut_done, 0); /* the queue is not empty */
	assert_int_equal(ep_write(&F.t.ep, "", 0), 0);
	F.p.reading = 1;
	F.p.chunk = 8192;
	RUN_UNTIL(F.p.eof && F.t.ep.shut_done);
	assert_int_equal(F.p.in_at_eof, TOTAL);
	assert_bytes(buf_ptr(&F.p.in), F.p.in.len, src, TOTAL, "the peer received");
	assert_int_equal(ep_pending(&F.t.ep), 0);
	assert_int_equal(F.t.ev[last(&F.t, EV_DRAIN)].pending, 0);
	/* Half-close: the other direction still delivers. */
	peer_send(&F.p, "still here", 10);
	F.p.shut_pending = 1;
	RUN_UNTIL(count(&F.t, EV_EOF) == 1);
	assert_text(&F.t.data, "still here", "delivered");
	assert_int_equal(count(&F.t, EV_ERROR), 0);
	free(src);
}

/* ------------------------------------------------------------------ TLS, client side */

/* The endpoint is the TLS client (a context trusting the test CA), the peer a TLS server
 * over tls.c's memory API. Bytes written before the handshake are held; on_tls(0) runs
 * before any of them is sent; what the owner does there decides what the server gets. */
struct tls_client_case {
	const char *name;
	int starttls;         /* plaintext line first, ep_start_tls after ep_connected */
	int untrusted;        /* the server shows a self-signed certificate */
	int discard, shut, reject_untrusted;
	const char *in_on_tls; /* written inside on_tls */
	const char *want;     /* what the server receives, in order ("<end>" follows) */
	int want_closed;      /* the endpoint closes: the server sees EOF, nothing else */
	int want_close_notify; /* the server sees close_notify after want */
};

static const char HELD[] = "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n";

static void test_tls_client(void **state)
{
	(void)state;
	need_certs();
	static const struct tls_client_case cases[] = {
		{ "held bytes arrive after the handshake", 0, 0, 0, 0, 0, NULL, HELD, 0, 0 },
		{ "STARTTLS: plaintext, then TLS", 1, 0, 0, 0, 0, NULL, HELD, 0, 0 },
		{ "on_tls rejects: ep_discard_held", 0, 0, 1, 0, 0, NULL, "", 0, 0 },
		{ "on_tls rejects: discard and shutdown", 0, 0, 1, 1, 0, NULL, "", 0, 1 },
		{ "on_tls writes: after the held bytes", 0, 0, 0, 0, 0, "QUIT\r\n", "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nQUIT\r\n", 0, 0 },
		{ "on_tls writes, then discards", 0, 0, 1, 0, 0, "RSET\r\n", "", 0, 0 },
		{ "untrusted server: closed in on_tls", 0, 1, 0, 0, 1, NULL, "", 1, 0 },
		{ "untrusted server, owner accepts", 0, 1, 0, 0, 0, NULL, HELD, 0, 0 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct tls_client_case *c = &cases[i];
		print_message("case: %s\n", c->name);
		if (i) {
			assert_int_equal(teardown(NULL), 0);
			assert_int_equal(setup(NULL), 0);
		}
		attach(0, NULL);
		F.t.tls_discard = c->discard;
		F.t.tls_shutdown = c->shut;
		F.t.tls_reject_untrusted = c->reject_untrusted;
		F.t.tls_write = c->in_on_tls;
		F.p.reading = 1;
		struct tls_conn *srv = tls_conn_new(c->untrusted ? sctx_self : sctx, NULL);
		assert_non_null(srv);
		uint64_t plain = c->starttls ? 10 : 0; /* bytes_written before TLS */
		if (c->starttls) {
			ep_connected(&F.t.ep);
			assert_int_equal(ep_write(&F.t.ep, "STARTTLS\r\n", 10), 0);
			RUN_UNTIL(F.p.in.len == 10);
			assert_text(&F.p.in, "STARTTLS\r\n", "plaintext before TLS");
			buf_free(&F.p.in);
			assert_int_equal(ep_start_tls(&F.t.ep, cctx, "localhost"), 0);
			assert_int_equal(ep_write(&F.t.ep, HELD, strlen(HELD)), 0);
			assert_int_equal(F.t.ep.held.len, strlen(HELD));
			F.p.tls = srv; /* the server's TLS starts with the next bytes */
		} else {
			F.p.tls = srv;
			assert_int_equal(ep_start_tls(&F.t.ep, cctx, "localhost"), 0);
			assert_int_equal(ep_write(&F.t.ep, HELD, strlen(HELD)), 0);
			assert_int_equal(ep_pending(&F.t.ep), strlen(HELD));
			ep_connected(&F.t.ep);
		}
		RUN_UNTIL(count(&F.t, EV_TLS) == 1 && (F.p.hs_rc == 0 || c->want_closed));
		/* on_tls(0) ran before any held byte was sent. */
		const struct event *e = &F.t.ev[first(&F.t, EV_TLS)];
		assert_int_equal(e->arg, 0);
		assert_int_equal(F.t.at_tls_written, plain);
		assert_int_equal(F.t.at_tls_held, strlen(HELD));
		assert_int_equal(F.t.at_tls_verify,
				 c->untrusted ? TLS_VERIFY_NOT_TRUSTED : TLS_VERIFY_OK);
		if (c->in_on_tls)
			assert_int_equal(F.t.tls_write_rc, 0);
		if (c->want_closed) {
			RUN_UNTIL(count(&F.t, EV_CLOSED) == 1 && F.p.eof);
			assert_text(&F.p.in, "", "a rejected server received");
			assert_int_equal(F.t.ep.bytes_written, plain);
			continue;
		}
		if (c->want_close_notify) {
			RUN_UNTIL(F.p.tls_closed && F.p.eof);
			assert_text(&F.p.in, c->want, "a rejected server received");
			assert_int_equal(F.t.ep.bytes_written, plain);
			assert_int_equal(ep_pending(&F.t.ep), 0);
			continue;
		}
		if (c->discard)
			assert_int_equal(ep_pending(&F.t.ep) - F.t.ep.queued, 0);
		/* A last write marks the end: whatever came before it has arrived. */
		assert_int_equal(ep_write(&F.t.ep, "<end>", 5), 0);
		char want[512];
		snprintf(want, sizeof want, "%s<end>", c->want);
		RUN_UNTIL(ends_with(&F.p.in, "<end>") && ep_pending(&F.t.ep) == 0);
		assert_text(&F.p.in, want, "the server received");
		assert_int_equal(F.t.ep.bytes_written, plain + strlen(want));
		/* And the other way: the server's bytes arrive decrypted. */
		peer_send(&F.p, "250 OK\r\n", 8);
		RUN_UNTIL(F.t.data.len == 8);
		assert_text(&F.t.data, "250 OK\r\n", "delivered");
		assert_true(first(&F.t, EV_TLS) < first(&F.t, EV_DATA));
		assert_int_equal(count(&F.t, EV_ERROR) + count(&F.t, EV_EOF), 0);
		assert_int_equal(count(&F.t, EV_TLS), 1);
	}
}

/* ------------------------------------------------------------------ TLS, server side */

/* The endpoint is the TLS server on an accepted socket, the peer a TLS client. */
static void tls_server_start(void)
{
	attach(1, NULL);
	F.p.tls = tls_conn_new(cctx, "localhost");
	assert_non_null(F.p.tls);
	F.p.reading = 1;
	assert_int_equal(ep_start_tls(&F.t.ep, sctx, NULL), 0);
	ep_connected(&F.t.ep);
	RUN_UNTIL(F.p.hs_rc == 0 && count(&F.t, EV_TLS) == 1);
	assert_int_equal(F.t.ev[first(&F.t, EV_TLS)].arg, 0);
	assert_int_equal(tls_conn_verify_result(F.p.tls), TLS_VERIFY_OK);
}

static void test_tls_server_data_both_ways(void **state)
{
	(void)state;
	need_certs();
	tls_server_start();
	peer_send(&F.p, "EHLO client\r\n", 13);
	RUN_UNTIL(F.t.data.len == 13);
	assert_text(&F.t.data, "EHLO client\r\n", "delivered");
	assert_int_equal(ep_write(&F.t.ep, "250 hello\r\n", 11), 0);
	RUN_UNTIL(F.p.in.len == 11);
	assert_text(&F.p.in, "250 hello\r\n", "the client received");
	/* 1 MB each way. */
	enum { BIG = 1 << 20 };
	uint8_t *src = malloc(BIG);
	assert_non_null(src);
	fill_pattern(src, BIG, 13);
	peer_send(&F.p, src, BIG);
	assert_int_equal(ep_write(&F.t.ep, src, BIG), 0);
	RUN_UNTIL(F.t.data.len == 13 + BIG && F.p.in.len == 11 + BIG);
	assert_bytes(buf_ptr(&F.t.data) + 13, BIG, src, BIG, "delivered");
	assert_bytes(buf_ptr(&F.p.in) + 11, BIG, src, BIG, "the client received");
	assert_int_equal(F.t.ep.bytes_read, 13 + BIG);
	assert_int_equal(F.t.ep.bytes_written, 11 + BIG);
	/* ep_shutdown: close_notify, then FIN. */
	ep_shutdown(&F.t.ep);
	RUN_UNTIL(F.p.tls_closed && F.p.eof);
	assert_int_equal(count(&F.t, EV_ERROR) + count(&F.t, EV_EOF), 0);
	free(src);
}

/* The peer's close_notify: what came before it is delivered, then on_eof once (not an
 * error); the socket's FIN after it adds nothing. */
static void test_tls_server_close_notify_is_eof(void **state)
{
	(void)state;
	need_certs();
	tls_server_start();
	peer_send(&F.p, "QUIT\r\n", 6);
	assert_int_equal(tls_conn_close_notify(F.p.tls), 0);
	peer_tls(&F.p);
	RUN_UNTIL(count(&F.t, EV_EOF) == 1);
	assert_text(&F.t.data, "QUIT\r\n", "delivered");
	assert_true(last(&F.t, EV_DATA) < first(&F.t, EV_EOF));
	F.p.shut_pending = 1;
	for (int k = 0; k < 5; k++)
		step();
	assert_int_equal(count(&F.t, EV_EOF), 1);
	assert_int_equal(count(&F.t, EV_ERROR), 0);
	/* The endpoint can still answer and close its side. */
	assert_int_equal(ep_write(&F.t.ep, "221 bye\r\n", 9), 0);
	ep_shutdown(&F.t.ep);
	RUN_UNTIL(F.p.eof);
	assert_text(&F.p.in, "221 bye\r\n", "the client received");
}

/* The peer closes (or sends garbage) during the handshake: on_tls(<0), never on_eof. */
static void test_tls_server_handshake_failures(void **state)
{
	(void)state;
	need_certs();
	static const struct {
		const char *name;
		int hello_bytes; /* of a real ClientHello, then FIN (-1: garbage, no FIN) */
	} cases[] = {
		{ "FIN before any byte", 0 },
		{ "FIN in the middle of the ClientHello", 40 },
		{ "plaintext instead of a ClientHello", -1 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		print_message("case: %s\n", cases[i].name);
		if (i) {
			assert_int_equal(teardown(NULL), 0);
			assert_int_equal(setup(NULL), 0);
		}
		attach(1, NULL);
		assert_int_equal(ep_start_tls(&F.t.ep, sctx, NULL), 0);
		assert_int_equal(ep_write(&F.t.ep, "220 held\r\n", 10), 0);
		ep_connected(&F.t.ep);
		F.p.reading = 1;
		if (cases[i].hello_bytes < 0) {
			peer_send(&F.p, "EHLO plaintext\r\n", 16);
		} else {
			struct tls_conn *c = tls_conn_new(cctx, "localhost");
			assert_non_null(c);
			assert_int_equal(tls_conn_handshake(c), TLS_AGAIN);
			assert_true(tls_conn_out_len(c) > (size_t)cases[i].hello_bytes);
			peer_send(&F.p, tls_conn_out_data(c), (size_t)cases[i].hello_bytes);
			tls_conn_free(c);
			F.p.shut_pending = 1;
		}
		RUN_UNTIL(count(&F.t, EV_TLS) == 1);
		const struct event *e = &F.t.ev[first(&F.t, EV_TLS)];
		assert_true(e->arg < 0);
		assert_int_equal(e->arg, TLS_E_HANDSHAKE);
		for (int k = 0; k < 5; k++)
			step();
		assert_int_equal(count(&F.t, EV_EOF), 0);
		assert_int_equal(count(&F.t, EV_DATA), 0);
		assert_int_equal(count(&F.t, EV_TLS), 1);
		assert_int_equal(F.t.ep.bytes_written, 0); /* the held reply never went out */
		assert_int_equal(ep_write(&F.t.ep, "more", 4), -EPIPE);
		ep_close(&F.t.ep);
		RUN_UNTIL(count(&F.t, EV_CLOSED) == 1 && F.p.eof);
		/* Whatever the client got is not the held plaintext. */
		assert_null(memmem(buf_ptr(&F.p.in) ? buf_ptr(&F.p.in) : (uint8_t *)"", F.p.in.len,
				   "220 held", 8));
	}
}

/* Paused inside on_data with whole records still in the TLS layer and nothing left in the
 * socket: nothing more is delivered while paused; ep_resume delivers them at once, before
 * any new read (there is none to come). Then a large transfer with the same pause. */
static void test_tls_server_pause_resume(void **state)
{
	(void)state;
	need_certs();
	tls_server_start();
	/* Records of 1,000 bytes, EP_READ_SIZE - TLS_RECORD_MAX / 2 of them in all: less
	 * ciphertext than one read takes (1,022 bytes a record), more plaintext than one
	 * delivery (the endpoint collects while a whole record still fits in EP_READ_SIZE). */
	enum { REC = 1000, NREC = (EP_READ_SIZE - TLS_RECORD_MAX / 2) / REC, SMALL = REC * NREC };
	uint8_t *src = malloc(SMALL);
	assert_non_null(src);
	fill_pattern(src, SMALL, 19);
	ep_pause(&F.t.ep);
	uv_os_fd_t fd;
	assert_int_equal(uv_fileno((uv_handle_t *)&F.t.ep.tcp, &fd), 0);
	int rcvbuf = 1 << 20; /* room for all of it in the socket (the kernel caps it) */
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	for (int i = 0; i < NREC; i++)
		peer_send(&F.p, src + i * REC, REC);
	size_t cipher = F.p.out.len;
	assert_true(cipher < EP_READ_SIZE);
	int inq = 0;
	RUN_UNTIL(F.p.out.len == 0 && ioctl(fd, FIONREAD, &inq) == 0 && (size_t)inq == cipher);
	assert_int_equal(F.t.data.len, 0);
	F.t.pause_at = 1;
	ep_resume(&F.t.ep);
	RUN_UNTIL(F.t.paused_at_len);
	size_t got = F.t.data.len;
	assert_true(got > 0 && got < SMALL);
	assert_false(ep_readable()); /* the rest is in the TLS layer, not the socket */
	for (int k = 0; k < 5; k++)
		step();
	assert_int_equal(F.t.data.len, got);
	assert_int_equal(F.t.ep.reading, 0);
	ep_resume(&F.t.ep);
	assert_int_equal(F.t.data.len, SMALL); /* from the TLS layer, without the loop */
	assert_bytes(buf_ptr(&F.t.data), F.t.data.len, src, SMALL, "delivered");
	free(src);

	/* 512 KB, paused at the first delivery while most of it is still on its way. */
	enum { TOTAL = 512 * 1024 };
	src = malloc(TOTAL);
	assert_non_null(src);
	fill_pattern(src, TOTAL, 17);
	buf_free(&F.t.data);
	F.t.paused_at_len = 0;
	peer_send(&F.p, src, TOTAL);
	RUN_UNTIL(F.t.paused_at_len && F.p.out.len == 0);
	got = F.t.data.len;
	assert_true(got < TOTAL);
	for (int k = 0; k < 5; k++)
		step();
	assert_int_equal(F.t.data.len, got);
	ep_resume(&F.t.ep);
	RUN_UNTIL(F.t.data.len == TOTAL);
	assert_bytes(buf_ptr(&F.t.data), F.t.data.len, src, TOTAL, "delivered");
	assert_int_equal(count(&F.t, EV_ERROR) + count(&F.t, EV_EOF), 0);
	free(src);
}

/* ------------------------------------------------------------------ ep_close */

struct close_case {
	const char *name;
	int connect;   /* ep_connected before the close */
	size_t queued; /* bytes queued (peer not reading) before the close */
	const char *held; /* written before ep_connected */
};

static void test_close(void **state)
{
	(void)state;
	static const struct close_case cases[] = {
		{ "connected, idle", 1, 0, NULL },
		{ "never connected, bytes held", 0, 0, "held bytes" },
		{ "writes queued", 1, 4 << 20, NULL },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct close_case *c = &cases[i];
		print_message("case: %s\n", c->name);
		if (i) {
			assert_int_equal(teardown(NULL), 0);
			assert_int_equal(setup(NULL), 0);
		}
		struct bufs bs = { .a_snd = 32768, .b_rcv = 32768 };
		attach(0, &bs);
		if (c->held)
			assert_int_equal(ep_write(&F.t.ep, c->held, strlen(c->held)), 0);
		if (c->connect)
			ep_connected(&F.t.ep);
		uint8_t *src = NULL;
		if (c->queued) {
			src = malloc(c->queued);
			assert_non_null(src);
			fill_pattern(src, c->queued, 23);
			assert_int_equal(ep_write(&F.t.ep, src, c->queued), 0);
			assert_true(F.t.ep.queued > 0);
		}
		uint64_t written = F.t.ep.bytes_written;
		size_t nev = F.t.nev;
		ep_close(&F.t.ep);
		ep_close(&F.t.ep);
		assert_int_equal(F.t.ep.closing, 1);
		assert_int_equal(ep_write(&F.t.ep, "after", 5), -EPIPE);
		assert_int_equal(F.t.ep.bytes_written, written);
		RUN_UNTIL(count(&F.t, EV_CLOSED) == 1);
		for (int k = 0; k < 3; k++)
			step();
		ep_close(&F.t.ep); /* after on_closed: nothing */
		assert_int_equal(count(&F.t, EV_CLOSED), 1);
		/* After ep_close, on_closed is the only callback (cancelled writes are silent). */
		assert_int_equal(F.t.nev, nev + 1);
		assert_int_equal(F.t.ev[F.t.nev - 1].type, EV_CLOSED);
		assert_int_equal(ep_pending(&F.t.ep), 0);
		assert_int_equal(F.t.ep.open, 0);
		assert_int_equal(ep_write(&F.t.ep, "after", 5), -EPIPE);
		assert_int_equal(F.t.ep.held.len, 0);
		/* The peer gets what the kernel already had, none of "after", then the end. */
		F.p.reading = 1;
		RUN_UNTIL(F.p.eof || F.p.err);
		if (c->queued)
			assert_bytes(buf_ptr(&F.p.in), F.p.in.len, src, F.p.in.len, "the peer received");
		else
			assert_text(&F.p.in, "", "the peer received");
		assert_true(F.p.in.len < c->queued || !c->queued);
		free(src);
	}
}

/* on_eof closing the endpoint from inside the callback: on_closed once, nothing after. */
static void test_close_inside_callback(void **state)
{
	(void)state;
	attach(1, NULL);
	F.t.close_on_eof = 1;
	ep_connected(&F.t.ep);
	peer_send(&F.p, "data", 4);
	F.p.shut_pending = 1;
	RUN_UNTIL(count(&F.t, EV_CLOSED) == 1);
	assert_text(&F.t.data, "data", "delivered");
	assert_int_equal(count(&F.t, EV_EOF), 1);
	assert_int_equal(F.t.ev[F.t.nev - 1].type, EV_CLOSED);
	assert_int_equal(ep_write(&F.t.ep, "x", 1), -EPIPE);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(120);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_plain_held_until_connected),
		T(test_plain_large_writes_slow_reader),
		T(test_plain_reads_in_order),
		T(test_plain_pause_resume),
		T(test_plain_eof_once_then_write),
		T(test_plain_reset_is_an_error),
		T(test_plain_shutdown_after_queued),
		T(test_tls_client),
		T(test_tls_server_data_both_ways),
		T(test_tls_server_close_notify_is_eof),
		T(test_tls_server_handshake_failures),
		T(test_tls_server_pause_resume),
		T(test_close),
		T(test_close_inside_callback),
	};
	return cmocka_run_group_tests_name("endpoint", tests, group_setup, group_teardown);
}
