/* test_admin.c - the admin HTTP listener (admin.h) on a loop of the test's own.
 *
 * Each test starts admin_start() on a fresh uv loop, bound to a free loopback port, and runs
 * the loop in a thread; admin_stop() is called on that thread through a uv_async_t, and the
 * thread must then end with uv_run() returning 0 and nothing left on the loop. Clients are
 * plain blocking sockets with poll() deadlines. Contract values: requests of at most 4 KiB,
 * answered within 5 s, once, with Connection: close. */
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
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "config.h"
#include "metrics.h"
#include "unit_net.h"

#define REQ_MAX 4096
#define TIMEOUT_MS 5000

static const char TEXT[] = "text/plain; charset=utf-8";
static const char PROM[] = "text/plain; version=0.0.4; charset=utf-8";

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ the server under test */

struct server {
	uv_loop_t loop;
	uv_async_t stop;
	pthread_t thread;
	int port;
	int run_rc;
	int running;
};

static void stop_cb(uv_async_t *a)
{
	admin_stop();
	uv_close((uv_handle_t *)a, NULL);
}

static void *loop_thread(void *arg)
{
	struct server *s = arg;
	s->run_rc = uv_run(&s->loop, UV_RUN_DEFAULT);
	return NULL;
}

static void fill_addr(struct cfg_addr *a, int port)
{
	char text[64];
	memset(a, 0, sizeof(*a));
	snprintf(text, sizeof text, "127.0.0.1:%d", port);
	assert_int_equal(cfg_parse_hostport(text, a->host, sizeof a->host, &a->port), 0);
	assert_int_equal(a->port, port);
	struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(a->port);
	assert_int_equal(inet_pton(AF_INET, a->host, &sin->sin_addr), 1);
	a->sslen = sizeof(*sin);
}

static void server_start(struct server *s)
{
	memset(s, 0, sizeof(*s));
	assert_int_equal(uv_loop_init(&s->loop), 0);
	assert_int_equal(uv_async_init(&s->loop, &s->stop, stop_cb), 0);
	s->port = free_port();
	struct cfg_addr addr;
	fill_addr(&addr, s->port);
	char err[256] = "";
	int rc = admin_start(&s->loop, &addr, err, sizeof err);
	if (rc != 0)
		print_message("admin_start: %d %s\n", rc, err);
	assert_int_equal(rc, 0);
	s->run_rc = -1;
	assert_int_equal(pthread_create(&s->thread, NULL, loop_thread, s), 0);
	s->running = 1;
}

/* admin_stop() on the loop's thread; the loop must end within wait_ms. Returns 0, or -1
 * after printing what is wrong (a loop that never ends aborts the test program). */
static int server_stop(struct server *s, int wait_ms)
{
	assert_int_equal(uv_async_send(&s->stop), 0);
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += wait_ms / 1000;
	dl.tv_nsec += (long)(wait_ms % 1000) * 1000000;
	if (dl.tv_nsec >= 1000000000) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000;
	}
	int bad = 0;
	if (pthread_timedjoin_np(s->thread, NULL, &dl) != 0) {
		print_message("the loop still runs %d ms after admin_stop\n", wait_ms);
		bad = 1;
		dl.tv_sec += 10;
		if (pthread_timedjoin_np(s->thread, NULL, &dl) != 0) {
			print_message("... and 10 s later: giving up\n");
			abort();
		}
	}
	s->running = 0;
	if (s->run_rc != 0) {
		print_message("uv_run returned %d\n", s->run_rc);
		bad = 1;
	}
	int cl = uv_loop_close(&s->loop);
	if (cl != 0) {
		print_message("uv_loop_close: %s (handles left on the loop)\n", uv_strerror(cl));
		bad = 1;
	}
	return bad ? -1 : 0;
}

/* ------------------------------------------------------------------ the client */

static int client_connect(int port, int rcvbuf)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	if (rcvbuf)
		assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

struct reply {
	char *raw;
	size_t len;
	int eof, reset, timeout; /* how the reading ended */
	int64_t first_ms;        /* when the first byte came (now_ms), 0 if none */
};

/* Reads until EOF, an error or the deadline (now_ms() based). */
static void read_reply(int fd, int64_t deadline, struct reply *r)
{
	memset(r, 0, sizeof(*r));
	size_t cap = 4096;
	r->raw = malloc(cap + 1);
	assert_non_null(r->raw);
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			r->timeout = 1;
			break;
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int pr = poll(&pfd, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			r->timeout = 1;
			break;
		}
		if (r->len == cap) {
			cap *= 2;
			r->raw = realloc(r->raw, cap + 1);
			assert_non_null(r->raw);
		}
		ssize_t n = recv(fd, r->raw + r->len, cap - r->len, 0);
		if (n > 0) {
			if (!r->first_ms)
				r->first_ms = now_ms();
			r->len += (size_t)n;
		} else if (n == 0) {
			r->eof = 1;
			break;
		} else if (errno != EINTR) {
			r->reset = errno == ECONNRESET;
			break;
		}
	}
	r->raw[r->len] = '\0';
}

struct parsed {
	int status;
	char reason[64];
	char type[128];
	long clen;
	int conn_close;
	const char *body;
	size_t blen;
};

/* One complete HTTP/1.1 answer and nothing after it; 0 or -1 with the reason in why. */
static int parse_reply(const struct reply *r, struct parsed *p, char *why, size_t whylen)
{
	memset(p, 0, sizeof(*p));
	p->clen = -1;
	const char *s = r->raw, *end = r->raw + r->len;
	const char *hend = memmem(s, r->len, "\r\n\r\n", 4);
	if (!hend) {
		snprintf(why, whylen, "no complete header (%zu bytes)", r->len);
		return -1;
	}
	int n = 0;
	if (sscanf(s, "HTTP/1.1 %3d %63[^\r]%n", &p->status, p->reason, &n) != 2 || s[n] != '\r') {
		snprintf(why, whylen, "bad status line");
		return -1;
	}
	int nlen = 0;
	for (const char *l = strstr(s, "\r\n") + 2; l < hend; l = strstr(l, "\r\n") + 2) {
		const char *colon = memchr(l, ':', (size_t)(hend - l));
		const char *eol = strstr(l, "\r\n");
		if (!colon || colon > eol || colon[1] != ' ') {
			snprintf(why, whylen, "bad header line");
			return -1;
		}
		size_t kl = (size_t)(colon - l), vl = (size_t)(eol - colon - 2);
		const char *v = colon + 2;
		if (kl == 14 && strncasecmp(l, "Content-Length", kl) == 0) {
			nlen++;
			char num[32];
			snprintf(num, sizeof num, "%.*s", (int)vl, v);
			char *e;
			p->clen = strtol(num, &e, 10);
			if (*e || p->clen < 0) {
				snprintf(why, whylen, "bad Content-Length");
				return -1;
			}
		} else if (kl == 12 && strncasecmp(l, "Content-Type", kl) == 0) {
			snprintf(p->type, sizeof p->type, "%.*s", (int)vl, v);
		} else if (kl == 10 && strncasecmp(l, "Connection", kl) == 0) {
			p->conn_close = vl == 5 && strncasecmp(v, "close", 5) == 0;
		}
	}
	if (nlen != 1) {
		snprintf(why, whylen, "%d Content-Length headers", nlen);
		return -1;
	}
	p->body = hend + 4;
	p->blen = (size_t)(end - p->body);
	if (p->blen != (size_t)p->clen) {
		snprintf(why, whylen, "body of %zu bytes for Content-Length %ld", p->blen, p->clen);
		return -1;
	}
	if (!p->conn_close) {
		snprintf(why, whylen, "no Connection: close");
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ request table */

enum send_mode { SEND_ONCE, SEND_BYTES, SEND_HALF_CLOSE };

struct http_case {
	const char *name;
	const char *req; /* NULL: built by the case's index (long requests) */
	enum send_mode mode;
	int status;
	const char *type;
	const char *body; /* NULL: the metrics rendering */
};

static char *long_request(const char *name, size_t *len)
{
	char *r = malloc(8192);
	assert_non_null(r);
	if (strcmp(name, "request line of 256 bytes") == 0) {
		/* "GET /" + 241 + " HTTP/1.1" + CR = 256 bytes before the LF */
		snprintf(r, 8192, "GET /%0241d HTTP/1.1\r\n\r\n", 0);
	} else if (strcmp(name, "path of 199 bytes") == 0) {
		snprintf(r, 8192, "GET /%0198d HTTP/1.1\r\n\r\n", 0);
	} else if (strcmp(name, "4096 bytes ending in the blank line") == 0) {
		int n = snprintf(r, 8192, "GET /healthz HTTP/1.1\r\nX-Pad: ");
		while (n < REQ_MAX - 4)
			r[n++] = 'p';
		memcpy(r + n, "\r\n\r\n", 5);
	} else if (strcmp(name, "4096 bytes without the blank line") == 0) {
		int n = snprintf(r, 8192, "GET /healthz HTTP/1.1\r\nX-Pad: ");
		while (n < REQ_MAX)
			r[n++] = 'p';
		r[n] = '\0';
	} else if (strcmp(name, "5000 bytes ending in the blank line") == 0) {
		int n = snprintf(r, 8192, "GET /healthz HTTP/1.1\r\nX-Pad: ");
		while (n < 5000 - 4)
			r[n++] = 'p';
		memcpy(r + n, "\r\n\r\n", 5);
	} else {
		fail_msg("no long request named %s", name);
	}
	*len = strlen(r);
	return r;
}

static const struct http_case cases[] = {
	{ "healthz", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", SEND_ONCE, 200, TEXT, "ok\n" },
	{ "healthz, HTTP/1.0, bare LF", "GET /healthz HTTP/1.0\n\n", SEND_ONCE, 200, TEXT, "ok\n" },
	{ "healthz with a query", "GET /healthz?verbose=1 HTTP/1.1\r\n\r\n", SEND_ONCE, 200, TEXT,
	  "ok\n" },
	{ "healthz a byte at a time", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", SEND_BYTES, 200,
	  TEXT, "ok\n" },
	{ "healthz, then the client half-closes", "GET /healthz HTTP/1.1\r\n\r\n", SEND_HALF_CLOSE,
	  200, TEXT, "ok\n" },
	{ "readyz", "GET /readyz HTTP/1.1\r\n\r\n", SEND_ONCE, 200, TEXT, "ready\n" },
	{ "metrics", "GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n", SEND_ONCE, 200, PROM, NULL },
	{ "metrics a byte at a time", "GET /metrics HTTP/1.1\r\n\r\n", SEND_BYTES, 200, PROM,
	  NULL },
	{ "unknown path", "GET /nope HTTP/1.1\r\n\r\n", SEND_ONCE, 404, TEXT, "not found\n" },
	{ "root", "GET / HTTP/1.1\r\n\r\n", SEND_ONCE, 404, TEXT, "not found\n" },
	{ "trailing slash", "GET /healthz/ HTTP/1.1\r\n\r\n", SEND_ONCE, 404, TEXT, "not found\n" },
	{ "prefix of a path", "GET /metricsx HTTP/1.1\r\n\r\n", SEND_ONCE, 404, TEXT,
	  "not found\n" },
	{ "path of 199 bytes", NULL, SEND_ONCE, 404, TEXT, "not found\n" },
	{ "POST", "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", SEND_ONCE, 405, TEXT,
	  "GET only\n" },
	{ "POST with a body", "POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", SEND_ONCE,
	  405, TEXT, "GET only\n" },
	{ "HEAD", "HEAD /healthz HTTP/1.1\r\n\r\n", SEND_ONCE, 405, TEXT, "GET only\n" },
	{ "lower-case get", "get /healthz HTTP/1.1\r\n\r\n", SEND_ONCE, 405, TEXT, "GET only\n" },
	{ "no version (HTTP/0.9)", "GET /healthz\r\n\r\n", SEND_ONCE, 400, TEXT, "bad request\n" },
	{ "HTTP/2.0", "GET /healthz HTTP/2.0\r\n\r\n", SEND_ONCE, 400, TEXT, "bad request\n" },
	{ "garbage line", "hello there\r\n\r\n", SEND_ONCE, 400, TEXT, "bad request\n" },
	{ "empty request line", "\r\n\r\n", SEND_ONCE, 400, TEXT, "bad request\n" },
	{ "bare LFs only", "\n\n", SEND_ONCE, 400, TEXT, "bad request\n" },
	{ "binary", "\x01\x02\x03\xff\xfe\r\n\r\n", SEND_ONCE, 400, TEXT, "bad request\n" },
	{ "pipelined: only the first is answered",
	  "GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n",
	  SEND_ONCE, 200, TEXT, "ok\n" },
	{ "pipelined garbage first", "xyz\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n", SEND_ONCE, 400,
	  TEXT, "bad request\n" },
	{ "request line of 256 bytes", NULL, SEND_ONCE, 414, TEXT, "request line too long\n" },
	{ "4096 bytes ending in the blank line", NULL, SEND_ONCE, 200, TEXT, "ok\n" },
	{ "4096 bytes without the blank line", NULL, SEND_ONCE, 431, TEXT, "request too large\n" },
	{ "5000 bytes ending in the blank line", NULL, SEND_ONCE, 431, TEXT,
	  "request too large\n" },
};

/* One request on a new connection: the answer, then the connection closed by the server. */
static int run_case(int port, const struct http_case *t)
{
	size_t len;
	char *owned = NULL;
	const char *req = t->req;
	if (req) {
		len = strlen(req);
	} else {
		req = owned = long_request(t->name, &len);
	}
	int fd = client_connect(port, 0);
	assert_true(fd >= 0);
	int rc = 0;
	if (t->mode == SEND_BYTES) {
		for (size_t i = 0; i < len && rc == 0; i++) {
			rc = send_all(fd, req + i, 1);
			sleep_ms(1);
		}
	} else {
		rc = send_all(fd, req, len);
		if (t->mode == SEND_HALF_CLOSE)
			shutdown(fd, SHUT_WR);
	}
	free(owned);
	char *want_body = NULL;
	size_t want_len = 0;
	if (!t->body) { /* the routes' part: the process's own metrics move on meanwhile */
		want_body = metrics_render(&want_len);
		char *proc = want_body ? strstr(want_body, "# HELP process_") : NULL;
		if (proc)
			want_len = (size_t)(proc - want_body);
	}
	struct reply r;
	read_reply(fd, now_ms() + 2000, &r);
	close(fd);
	struct parsed p;
	char why[128] = "";
	int bad = rc != 0;
	if (rc != 0)
		snprintf(why, sizeof why, "send failed");
	else if (parse_reply(&r, &p, why, sizeof why) < 0)
		bad = 1;
	else if (p.status != t->status)
		bad = snprintf(why, sizeof why, "status %d, want %d", p.status, t->status) > 0;
	else if (strcmp(p.type, t->type) != 0)
		bad = snprintf(why, sizeof why, "type \"%s\", want \"%s\"", p.type, t->type) > 0;
	else if (t->body && (p.blen != strlen(t->body) || memcmp(p.body, t->body, p.blen) != 0))
		bad = snprintf(why, sizeof why, "body \"%.*s\", want \"%s\"", (int)p.blen, p.body,
			       t->body) > 0;
	else if (!t->body &&
		 (!want_body || p.blen < want_len || memcmp(p.body, want_body, want_len) != 0 ||
		  p.blen - want_len < 15 || memcmp(p.body + want_len, "# HELP process_", 15) != 0))
		bad = snprintf(why, sizeof why, "body is not metrics_render()") > 0;
	else if (!r.eof && !r.reset)
		bad = snprintf(why, sizeof why, "connection not closed after the answer") > 0;
	if (bad)
		print_message("case \"%s\": %s\n--- got %zu bytes\n%.600s\n---\n", t->name, why,
			      r.len, r.raw);
	free(want_body);
	free(r.raw);
	return bad ? -1 : 0;
}

/* ------------------------------------------------------------------ tests */

/* Runs first: /readyz is 503 until admin_set_ready(1), and follows it both ways. */
static void test_readiness(void **state)
{
	(void)state;
	static const struct http_case ready = { "ready",   "GET /readyz HTTP/1.1\r\n\r\n",
						SEND_ONCE, 200,
						TEXT,      "ready\n" };
	static const struct http_case not_ready = { "not ready", "GET /readyz HTTP/1.1\r\n\r\n",
						    SEND_ONCE,   503,
						    TEXT,        "not ready\n" };
	static const struct http_case health = { "health while not ready",
						 "GET /healthz HTTP/1.1\r\n\r\n",
						 SEND_ONCE,
						 200,
						 TEXT,
						 "ok\n" };
	struct server s;
	server_start(&s);
	int failures = 0;
	failures += run_case(s.port, &not_ready) < 0;
	admin_set_ready(1);
	failures += run_case(s.port, &ready) < 0;
	admin_set_ready(0);
	failures += run_case(s.port, &not_ready) < 0;
	failures += run_case(s.port, &health) < 0;
	admin_set_ready(1);
	failures += run_case(s.port, &ready) < 0;
	failures += server_stop(&s, 1000) < 0;
	assert_int_equal(failures, 0);
}

static void test_requests(void **state)
{
	(void)state;
	struct metrics_route *m = metrics_route("admin-test");
	metrics_conn_open(m);
	metrics_bytes(m, 1, 42);
	metrics_handshake(m, METRICS_CLIENT, "TLSv1.3", NULL);
	admin_set_ready(1);
	struct server s;
	server_start(&s);
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		failures += run_case(s.port, &cases[i]) < 0;
	/* The listener is still there after all of them. */
	failures += run_case(s.port, &cases[0]) < 0;
	failures += server_stop(&s, 1000) < 0;
	assert_int_equal(failures, 0);
}

/* A busy port: an error naming the address; admin_stop() then leaves the loop empty. */
static void test_start_on_a_busy_port(void **state)
{
	(void)state;
	int busy = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(busy >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(busy, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(busy, 1), 0);
	socklen_t sl = sizeof sin;
	assert_int_equal(getsockname(busy, (struct sockaddr *)&sin, &sl), 0);
	int port = ntohs(sin.sin_port);

	uv_loop_t loop;
	assert_int_equal(uv_loop_init(&loop), 0);
	struct cfg_addr addr;
	fill_addr(&addr, port);
	char err[256] = "", want[64];
	int rc = admin_start(&loop, &addr, err, sizeof err);
	assert_int_equal(rc, UV_EADDRINUSE);
	snprintf(want, sizeof want, "admin_listen 127.0.0.1:%d: ", port);
	assert_memory_equal(err, want, strlen(want));
	assert_non_null(strstr(err, uv_strerror(UV_EADDRINUSE)));
	admin_stop();
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&loop), 0);
	close(busy);
}

/* Metrics large enough that a client which never reads cannot take the whole answer
 * (loopback socket buffers are at most a few MB). */
static size_t make_metrics_large(void)
{
	static int done;
	if (!done) {
		char name[2100];
		for (int i = 0; i < 2000; i++) {
			snprintf(name, sizeof name, "%04d-%02040d", i, 0);
			metrics_conn_open(metrics_route(name));
		}
		done = 1;
	}
	size_t len = 0;
	free(metrics_render(&len));
	assert_true(len > 12u << 20);
	return len;
}

/* Drains a connection whose reader stopped; the answer must have been cut short. */
static int check_cut_short(int fd, size_t full, const char *what)
{
	struct reply r;
	read_reply(fd, now_ms() + 3000, &r);
	int bad = 0;
	if (r.timeout || r.len >= full) {
		print_message("%s: %zu of %zu bytes, %s\n", what, r.len, full,
			      r.timeout ? "still open" : "the whole answer was sent");
		bad = 1;
	}
	free(r.raw);
	return bad ? -1 : 0;
}

/* Requests that never complete get 408 after 5 s, not before, and are closed; an answer
 * the client never reads does not keep its connection past the 5 s either. */
static void test_timeouts(void **state)
{
	(void)state;
	size_t mlen = make_metrics_large();
	static const struct {
		const char *name;
		const char *bytes;
		size_t len;
	} slow[] = {
		{ "nothing sent", "", 0 },
		{ "headers never end", "GET /healthz HTTP/1.1\r\nHost: x\r\n", 32 },
		{ "request line never ends", "GET /healthz HTTP/1.1", 21 },
		{ "a TLS ClientHello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11 },
		{ "4095 bytes", NULL, 4095 },
	};
	enum { NSLOW = sizeof slow / sizeof slow[0] };
	struct server s;
	server_start(&s);
	int fds[NSLOW];
	int64_t t0 = now_ms();
	for (int i = 0; i < NSLOW; i++) {
		fds[i] = client_connect(s.port, 0);
		assert_true(fds[i] >= 0);
		if (slow[i].bytes) {
			assert_int_equal(send_all(fds[i], slow[i].bytes, slow[i].len), 0);
		} else {
			char pad[4095];
			memset(pad, 'a', sizeof pad);
			assert_int_equal(send_all(fds[i], pad, sizeof pad), 0);
		}
	}
	/* A reader that stops: a small receive window and an answer of many MB. */
	int stuck = client_connect(s.port, 4096);
	assert_true(stuck >= 0);
	assert_int_equal(send_all(stuck, "GET /metrics HTTP/1.1\r\n\r\n", 25), 0);

	int failures = 0;
	for (int i = 0; i < NSLOW; i++) {
		struct reply r;
		read_reply(fds[i], t0 + TIMEOUT_MS + 2000, &r);
		close(fds[i]);
		struct parsed p;
		char why[128] = "";
		int64_t at = r.first_ms ? r.first_ms - t0 : -1;
		if (parse_reply(&r, &p, why, sizeof why) < 0 || p.status != 408 ||
		    strcmp(p.type, TEXT) != 0 || p.blen != 8 ||
		    memcmp(p.body, "timeout\n", 8) != 0 || !(r.eof || r.reset) ||
		    at < TIMEOUT_MS - 500 || at > TIMEOUT_MS + 1500) {
			print_message("%s: %s; answer after %lld ms: %.200s\n", slow[i].name, why,
				      (long long)at, r.raw);
			failures++;
		}
		free(r.raw);
	}
	failures += check_cut_short(stuck, mlen, "reader that stopped") < 0;
	close(stuck);
	failures += server_stop(&s, 1000) < 0;
	assert_int_equal(failures, 0);
}

/* admin_stop() closes the listener and every connection at once, whatever their state, and
 * the loop ends. */
static void test_stop_closes_everything(void **state)
{
	(void)state;
	size_t mlen = make_metrics_large();
	struct server s;
	server_start(&s);
	int idle = client_connect(s.port, 0);
	int partial = client_connect(s.port, 0);
	int stuck = client_connect(s.port, 4096);
	assert_true(idle >= 0 && partial >= 0 && stuck >= 0);
	assert_int_equal(send_all(partial, "GET /healthz HTTP/1.1\r\n", 23), 0);
	assert_int_equal(send_all(stuck, "GET /metrics HTTP/1.1\r\n\r\n", 25), 0);
	/* The metrics answer under way: the stuck connection, and the two accepted before it,
	 * are in the server's hands. */
	struct pollfd pfd = { .fd = stuck, .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, 3000), 1);

	int64_t t0 = now_ms();
	int failures = server_stop(&s, 1000) < 0;
	int64_t took = now_ms() - t0;
	if (took > 1000) {
		print_message("admin_stop took %lld ms to end the loop\n", (long long)took);
		failures++;
	}
	/* The unanswered ones are closed without an answer. */
	int fds[2] = { idle, partial };
	for (int i = 0; i < 2; i++) {
		struct reply r;
		read_reply(fds[i], now_ms() + 1000, &r);
		if (r.len || !(r.eof || r.reset)) {
			print_message("%s connection: %zu bytes, %s\n", i ? "partial" : "idle",
				      r.len, r.timeout ? "still open" : "closed");
			failures++;
		}
		free(r.raw);
		close(fds[i]);
	}
	failures += check_cut_short(stuck, mlen, "reader that stopped") < 0;
	close(stuck);
	/* Nothing listens any more. */
	int fd = client_connect(s.port, 0);
	if (fd >= 0) {
		print_message("the port still accepts connections\n");
		failures++;
		close(fd);
	}
	assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------ admin_parse_request (no I/O) */

static void test_parse_request(void **state)
{
	(void)state;
	static char big[REQ_MAX + 10], long_line[300], long_path[400];
	memset(big, 'x', sizeof big);
	memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
	snprintf(long_line, sizeof long_line, "GET /%0250d HTTP/1.1\r\n\r\n", 0);
	/* a path running into the version: %199s reads 199 octets, the version is the rest */
	snprintf(long_path, sizeof long_path, "GET /%0198dHTTP/1.1x HTTP/1.1\r\n\r\n", 0);
	/* the request line's bound: 255 octets before its LF (its CR included) are read, 256
	 * are 414 (words after the version are ignored) */
	static char line_at[300], line_over[300], path_over[300];
	/* a path of 200 octets: its last octet is read as the version */
	snprintf(path_over, sizeof path_over, "GET /%0199d HTTP/1.1\r\n\r\n", 0);
	snprintf(line_at, sizeof line_at, "GET /metrics HTTP/1.1 %0*d\r\n\r\n", 255 - 23, 0);
	snprintf(line_over, sizeof line_over, "GET /metrics HTTP/1.1 %0*d\r\n\r\n", 256 - 23, 0);
	assert_int_equal(strchr(line_at, '\n') - line_at, 255);
	assert_int_equal(strchr(line_over, '\n') - line_over, 256);
	static const struct {
		const char *req;
		size_t len; /* 0: strlen */
		int rc, status;
		const char *path;
	} cases[] = {
		{ "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 0, 0, 0, "/metrics" },
		{ "GET /healthz HTTP/1.0\n\n", 0, 0, 0, "/healthz" },
		{ "GET /readyz?x=1&y HTTP/1.1\r\n\r\n", 0, 0, 0, "/readyz" },
		{ "GET ?only HTTP/1.1\r\n\r\n", 0, 0, 0, "" },
		{ "  GET\t/a\vHTTP/1.9 trailing words\r\n\r\n", 0, 0, 0, "/a" },
		{ "GET /metrics HTTP/1.1\r\n\r\nmore after the end", 0, 0, 0, "/metrics" },
		{ "GET /metrics HTTP/1.1\r\nHost: x\r\n", 0, -EAGAIN, 0, NULL },
		{ "GET /metrics HTTP/1.1\r\n\r", 0, -EAGAIN, 0, NULL },
		{ "", 0, -EAGAIN, 0, NULL },
		{ "\n\n", 0, -EINVAL, 400, NULL },
		{ "GET /healthz\r\n\r\n", 0, -EINVAL, 400, NULL },
		{ "GET /healthz HTTP/2\r\n\r\n", 0, -EINVAL, 400, NULL },
		{ "GET /healthz http/1.1\r\n\r\n", 0, -EINVAL, 400, NULL },
		{ "GET /healthz\0 HTTP/1.1\r\n\r\n", 26, -EINVAL, 400, NULL },
		{ "POST /metrics HTTP/1.1\r\n\r\n", 0, -EINVAL, 405, NULL },
		{ "get /metrics HTTP/1.1\r\n\r\n", 0, -EINVAL, 405, NULL },
		{ "GETGETGETGETGETGET / HTTP/1.1\r\n\r\n", 0, -EINVAL, 400, NULL }, /* path "GET" */
		{ "GETGETGETGETGETGET /p HTTP/1.1\r\n\r\n", 0, -EINVAL, 400, NULL },
		{ "HEAD /metrics HTTP/1.1 x\r\n\r\n", 0, -EINVAL, 405, NULL },
		{ long_line, 0, -EINVAL, 414, NULL },
		{ line_at, 0, 0, 0, "/metrics" },
		{ line_over, 0, -EINVAL, 414, NULL },
		{ path_over, 0, -EINVAL, 400, NULL },
		{ long_path, 0, 0, 0, NULL }, /* the path: "/" and 198 zeros */
		{ big, REQ_MAX, -EINVAL, 431, NULL },
		{ big, REQ_MAX - 1, -EAGAIN, 0, NULL },
		{ big, REQ_MAX + 10, -EINVAL, 431, NULL }, /* only ADMIN_REQ_MAX octets count */
	};
	assert_int_equal(ADMIN_REQ_MAX, REQ_MAX);
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		size_t len = cases[i].len ? cases[i].len : strlen(cases[i].req);
		struct admin_req r;
		int rc = admin_parse_request(cases[i].req, len, &r);
		const char *want = cases[i].path;
		char path[201];
		if (cases[i].req == long_path) {
			memset(path, '0', 199);
			path[0] = '/';
			path[199] = '\0';
			want = path;
		}
		int ok = rc == cases[i].rc && (rc != -EINVAL || r.status == cases[i].status);
		if (ok && rc == 0)
			ok = r.method_len == 3 && !memcmp(r.method, "GET", 3) &&
			     r.path >= cases[i].req && r.path + r.path_len <= cases[i].req + len &&
			     r.path_len == strlen(want) && !memcmp(r.path, want, r.path_len);
		if (!ok) {
			print_message("case %zu (%.40s): rc %d status %d path \"%.*s\"\n", i,
				      cases[i].req, rc, r.status, rc == 0 ? (int)r.path_len : 0,
				      rc == 0 ? r.path : "");
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(120);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_request),
		cmocka_unit_test(test_readiness),
		cmocka_unit_test(test_requests),
		cmocka_unit_test(test_start_on_a_busy_port),
		cmocka_unit_test(test_timeouts),
		cmocka_unit_test(test_stop_closes_everything),
	};
	return cmocka_run_group_tests_name("admin", tests, NULL, NULL);
}
