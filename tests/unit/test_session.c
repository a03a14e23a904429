/* test_session.c - struct session (session.h) on a loop of the test's own: real loopback
 * sockets for the client and the upstream, a listener from listener.c, the loop stepped
 * with uv_run(UV_RUN_NOWAIT) between the test's own socket calls.
 *
 * What is checked: a tcp relay both ways with half-close; a rejected upstream (TLS that
 * fails verify, or a connect refused) never receives the client's early bytes, and the
 * client is closed; testing mode delivers them; the protocol's refusal at the per-client
 * limit (SMTP 421 4.7.0), before any upstream connection; the idle timeout (SMTP 421
 * 4.4.2); session_shutdown (SMTP 421 4.3.2); the host's session list and its drained
 * callback. The upstream's TLS side is a tls.c server connection the test drives.
 * Per-session buffering at its edge (docs/limits.md): exactly 262144 octets queued toward
 * an upstream that does not read, held before a TLS upstream is ready, or of the SMTP
 * module's own replies queued toward a client that does not read, and the client is still
 * read; one more and it is not. The low water mark at its edge on the comparison every
 * resumption goes through (session_below_low_water); in the sessions it is only sampled:
 * how much the kernel takes as the other side reads is not the test's to choose. */
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
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "endpoint.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "session.h"
#include "shared.h"
#include "tls.h"
#include "unit_fixture.h"
#include "unit_net.h"

/* ---- sockets ----------------------------------------------------------------------- */

/* A listening socket on 127.0.0.1 (the upstream), its port in *port. */
static int listen_on(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(fd, 16), 0);
	socklen_t sl = sizeof sin;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	*port = ntohs(sin.sin_port);
	return fd;
}

static int connect_to(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
	assert_true(rc == 0 || errno == EINPROGRESS);
	return fd;
}

/* ---- the harness: one host, one configuration, one listener per route ------------------- */

struct harness {
	uv_loop_t loop;
	struct stp_shared shared;
	struct session_host host;
	struct cfg *cfg;
	struct listener *l[4];
	int drained;
	uint8_t readbuf[EP_LOOP_BUF];
};

static void on_drained(struct session_host *h)
{
	((struct harness *)h->owner)->drained++;
}

/* Loads conf (with @CERTS@ replaced) and starts a listener for every route. */
static void harness_start(struct harness *t, const char *conf)
{
	memset(t, 0, sizeof(*t));
	assert_int_equal(uv_loop_init(&t->loop), 0);
	assert_int_equal(shared_init(&t->shared), 0);
	char text[4096], path[600];
	size_t o = 0;
	for (const char *p = conf; *p && o + 600 < sizeof text;) {
		if (!strncmp(p, "@CERTS@", 7)) {
			o += (size_t)snprintf(text + o, sizeof text - o, "%s", certdir);
			p += 7;
		} else {
			text[o++] = *p++;
		}
	}
	text[o] = '\0';
	snprintf(path, sizeof path, "%s/session-%d.conf", tmpdir, rand());
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &t->cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_message("%s\n", errs.msg[i]);
	cfg_errors_free(&errs);
	assert_int_equal(rc, 0);
	t->host = (struct session_host){ .loop = &t->loop, .readbuf = t->readbuf, .cfg = t->cfg,
					 .shared = &t->shared, .drained = on_drained, .owner = t };
	for (size_t i = 0; i < t->cfg->nroutes; i++) {
		t->cfg->routes[i].metrics = metrics_route(t->cfg->routes[i].name);
		char err[200];
		int fd = listener_socket(t->cfg, &t->cfg->routes[i], err, sizeof err);
		assert_true(fd >= 0);
		t->l[i] = listener_new(&t->host, &t->cfg->routes[i], fd);
		assert_int_equal(listener_start(t->l[i]), 0);
	}
}

static void pump(struct harness *t, int ms)
{
	struct timespec ts = { 0, 1000000 };
	for (int i = 0; i < ms; i++) {
		uv_run(&t->loop, UV_RUN_NOWAIT);
		nanosleep(&ts, NULL);
	}
}

/* Steps the loop until cond(arg) holds or ms pass; returns cond's last value. */
static int pump_until(struct harness *t, int (*cond)(void *), void *arg, int ms)
{
	struct timespec ts = { 0, 1000000 };
	for (int i = 0; i < ms; i++) {
		uv_run(&t->loop, UV_RUN_NOWAIT);
		if (cond(arg))
			return 1;
		nanosleep(&ts, NULL);
	}
	return cond(arg);
}

static void harness_stop(struct harness *t)
{
	t->host.stopping = 1;
	for (size_t i = 0; i < 4; i++)
		listener_close(t->l[i]);
	for (struct session *s = t->host.sessions; s;) {
		struct session *n = session_next(s);
		session_close(s, "test over");
		s = n;
	}
	for (int i = 0; i < 2000 && uv_run(&t->loop, UV_RUN_NOWAIT); i++)
		;
	assert_int_equal(t->host.nsessions, 0);
	assert_int_equal(uv_loop_close(&t->loop), 0);
	session_host_cleanup(&t->host); /* the DNS and TLS session caches */
	cfg_unref(t->cfg);
	shared_destroy(&t->shared);
}

/* ---- the test's own peers -------------------------------------------------------------- */

struct peer {
	int fd;
	char in[65536];
	size_t n;
	int eof, reset;
};

/* Reads what is there without waiting. */
static void peer_read(struct peer *p)
{
	for (;;) {
		if (p->n == sizeof p->in)
			return;
		ssize_t r = recv(p->fd, p->in + p->n, sizeof p->in - p->n, MSG_DONTWAIT);
		if (r > 0) {
			p->n += (size_t)r;
			continue;
		}
		if (r == 0)
			p->eof = 1;
		else if (errno == ECONNRESET)
			p->reset = 1;
		return;
	}
}

struct wait_bytes {
	struct peer *p;
	size_t want;
};

static int has_bytes(void *arg)
{
	struct wait_bytes *w = arg;
	peer_read(w->p);
	return w->p->n >= w->want;
}

static int closed(void *arg)
{
	struct peer *p = arg;
	peer_read(p);
	return p->eof || p->reset;
}

struct accept_wait {
	int lfd, fd;
};

static int accepted(void *arg)
{
	struct accept_wait *a = arg;
	if (a->fd < 0)
		a->fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK);
	return a->fd >= 0;
}

static void send_all(int fd, const void *d, size_t n)
{
	const char *p = d;
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == ENOTCONN)) {
			struct pollfd pfd = { fd, POLLOUT, 0 };
			poll(&pfd, 1, 100);
			continue;
		}
		assert_true(w > 0);
		p += w;
		n -= (size_t)w;
	}
}

/* ---- cases -------------------------------------------------------------------------------- */

/* A tcp relay: both directions, then the client's FIN reaches the upstream, the upstream's
 * FIN reaches the client, and the session ends. */
static void test_tcp_relay(void **state)
{
	(void)state;
	int upport, lport = free_port();
	int up = listen_on(&upport);
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\n[route relay]\nlisten = 127.0.0.1:%d\n"
		 "protocol = tcp\nupstream = 127.0.0.1:%d\nupstream_tls = none\n", lport, upport);
	struct harness t;
	harness_start(&t, conf);
	struct peer c = { .fd = connect_to(lport) };
	send_all(c.fd, "hello upstream", 14);
	struct accept_wait a = { up, -1 };
	assert_true(pump_until(&t, accepted, &a, 3000));
	struct peer u = { .fd = a.fd };
	struct wait_bytes wu = { &u, 14 };
	assert_true(pump_until(&t, has_bytes, &wu, 3000));
	assert_memory_equal(u.in, "hello upstream", 14);
	send_all(u.fd, "hello client", 12);
	struct wait_bytes wc = { &c, 12 };
	assert_true(pump_until(&t, has_bytes, &wc, 3000));
	assert_memory_equal(c.in, "hello client", 12);
	assert_int_equal(t.host.nsessions, 1);
	shutdown(c.fd, SHUT_WR);
	assert_true(pump_until(&t, closed, &u, 3000)); /* the client's FIN went up */
	assert_true(u.eof);
	send_all(u.fd, "bye", 3); /* half-close: the other way still works */
	struct wait_bytes wb = { &c, 15 };
	assert_true(pump_until(&t, has_bytes, &wb, 3000));
	shutdown(u.fd, SHUT_WR);
	assert_true(pump_until(&t, closed, &c, 3000));
	pump(&t, 50);
	assert_int_equal(t.host.nsessions, 0);
	close(c.fd);
	close(u.fd);
	close(up);
	harness_stop(&t);
}

/* The upstream's TLS server side, run by the test over its socket. */
struct tls_peer {
	struct peer p;
	struct tls_ctx *ctx;
	struct tls_conn *conn;
	char plain[4096];
	size_t plen;
	int done, failed;
};

static int tls_peer_step(void *arg)
{
	struct tls_peer *s = arg;
	char buf[16384];
	ssize_t r = recv(s->p.fd, buf, sizeof buf, MSG_DONTWAIT);
	if (r > 0)
		tls_conn_feed(s->conn, buf, (size_t)r);
	else if (r == 0 || (r < 0 && errno != EAGAIN))
		s->p.eof = 1;
	if (!s->done && !s->failed) {
		int rc = tls_conn_handshake(s->conn);
		if (rc == 0)
			s->done = 1;
		else if (rc != TLS_AGAIN)
			s->failed = 1;
	}
	if (s->done) {
		int n;
		while ((n = tls_conn_read(s->conn, s->plain + s->plen,
					  sizeof s->plain - s->plen)) > 0)
			s->plen += (size_t)n;
	}
	size_t out = tls_conn_out_len(s->conn);
	if (out) {
		ssize_t w = send(s->p.fd, tls_conn_out_data(s->conn), out, MSG_NOSIGNAL);
		if (w > 0)
			tls_conn_out_consume(s->conn, (size_t)w);
	}
	return s->p.eof;
}

static struct tls_ctx *server_ctx(const char *cert)
{
	char c[600], k[600], err[256];
	snprintf(c, sizeof c, "%s/%s.pem", certdir, cert);
	snprintf(k, sizeof k, "%s/%s.key", certdir, cert);
	struct tls_server_opts o = { .cert = c, .key = k, .min_version = 12 };
	struct tls_ctx *ctx = NULL;
	assert_int_equal(tls_ctx_server_new(&o, &ctx, err, sizeof err), 0);
	return ctx;
}

/* A tcp route toward a TLS upstream whose certificate fails the policy, the client
 * speaking first: under enforce not one byte reaches the upstream and the client is
 * closed; under testing they arrive. */
static void rejected_upstream(const char *cert, const char *policy, const char *mode,
			      int delivered)
{
	if (!have_certs)
		skip();
	int upport, lport = free_port();
	int up = listen_on(&upport);
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\nca = @CERTS@/ca.pem\n"
		 "[route r]\nlisten = 127.0.0.1:%d\nprotocol = tcp\nupstream = 127.0.0.1:%d\n"
		 "upstream_tls = implicit\nupstream_policy = %s\nupstream_name = localhost\n"
		 "policy_mode = %s\n%s",
		 lport, upport, policy, mode,
		 !strcmp(policy, "fingerprint")
			 ? "upstream_fingerprint = sha256:0000000000000000000000000000000000000000000000000000000000000000\n"
			 : "");
	struct harness t;
	harness_start(&t, conf);
	struct peer c = { .fd = connect_to(lport) };
	send_all(c.fd, "AUTH secret\r\n", 13); /* before the upstream is even connected */
	struct accept_wait a = { up, -1 };
	assert_true(pump_until(&t, accepted, &a, 3000));
	struct tls_peer s = { .p = { .fd = a.fd } };
	s.ctx = server_ctx(cert);
	s.conn = tls_conn_new(s.ctx, NULL);
	assert_non_null(s.conn);
	if (delivered) {
		for (int i = 0; i < 3000 && s.plen < 13; i++) {
			uv_run(&t.loop, UV_RUN_NOWAIT);
			tls_peer_step(&s);
			pump(&t, 1);
		}
		assert_int_equal(s.plen, 13);
		assert_memory_equal(s.plain, "AUTH secret\r\n", 13);
	} else {
		for (int i = 0; i < 3000 && !s.p.eof; i++) {
			uv_run(&t.loop, UV_RUN_NOWAIT);
			tls_peer_step(&s);
			pump(&t, 1);
		}
		assert_true(s.p.eof);      /* the proxy ended the upstream connection */
		assert_true(s.done);       /* after a complete handshake */
		assert_int_equal(s.plen, 0); /* and not one byte of the client's */
		assert_true(pump_until(&t, closed, &c, 3000));
		assert_int_equal(c.n, 0);
	}
	tls_conn_free(s.conn);
	tls_ctx_free(s.ctx);
	close(s.p.fd);
	close(c.fd);
	close(up);
	harness_stop(&t);
}

static void test_rejected_selfsigned(void **state)
{
	(void)state;
	rejected_upstream("selfsigned", "verify", "enforce", 0);
}

static void test_rejected_wrong_name(void **state)
{
	(void)state;
	rejected_upstream("wrongname", "verify", "enforce", 0);
}

static void test_rejected_pin(void **state)
{
	(void)state;
	rejected_upstream("server", "fingerprint", "enforce", 0);
}

static void test_testing_mode_delivers(void **state)
{
	(void)state;
	rejected_upstream("selfsigned", "verify", "testing", 1);
}

static void test_accepted_upstream_delivers(void **state)
{
	(void)state;
	rejected_upstream("server", "verify", "enforce", 1);
}

/* Nobody listens upstream: the early bytes go nowhere and the client is closed. */
static void test_upstream_refused(void **state)
{
	(void)state;
	int lport = free_port(), upport = free_port();
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\n[route r]\nlisten = 127.0.0.1:%d\n"
		 "protocol = tcp\nupstream = 127.0.0.1:%d\nupstream_tls = none\n", lport, upport);
	struct harness t;
	harness_start(&t, conf);
	struct peer c = { .fd = connect_to(lport) };
	send_all(c.fd, "early", 5);
	assert_true(pump_until(&t, closed, &c, 3000));
	assert_int_equal(c.n, 0);
	pump(&t, 20);
	assert_int_equal(t.host.nsessions, 0);
	close(c.fd);
	harness_stop(&t);
}

/* SMTP: the per-client limit answers with the protocol's refusal, and no upstream
 * connection is made for the refused client. */
static void test_smtp_per_client_refusal(void **state)
{
	(void)state;
	int upport, lport = free_port();
	int up = listen_on(&upport);
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\nhelo_name = proxy.unit\n[route s]\n"
		 "listen = 127.0.0.1:%d\nprotocol = smtp\nupstream = 127.0.0.1:%d\n"
		 "upstream_tls = none\nmax_connections_per_client = 1\n", lport, upport);
	struct harness t;
	harness_start(&t, conf);
	struct peer c1 = { .fd = connect_to(lport) };
	struct accept_wait a = { up, -1 };
	assert_true(pump_until(&t, accepted, &a, 3000));
	struct peer c2 = { .fd = connect_to(lport) };
	const char *want = "421 4.7.0 proxy.unit Too many connections, try again later\r\n";
	struct wait_bytes w2 = { &c2, strlen(want) };
	assert_true(pump_until(&t, has_bytes, &w2, 3000));
	assert_memory_equal(c2.in, want, strlen(want));
	assert_true(pump_until(&t, closed, &c2, 3000));
	/* one upstream connection only: the first client's */
	assert_int_equal(accept4(up, NULL, NULL, SOCK_NONBLOCK), -1);
	assert_int_equal(errno, EAGAIN);
	close(a.fd);
	close(c1.fd);
	close(c2.fd);
	close(up);
	harness_stop(&t);
}

/* SMTP: the idle timeout ends a quiet session with 421 4.4.2; session_shutdown with
 * 421 4.3.2; the host's drained callback runs once the last session is gone. */
static void test_smtp_idle_and_shutdown(void **state)
{
	(void)state;
	int upport, lport = free_port();
	int up = listen_on(&upport);
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\nhelo_name = proxy.unit\n[route s]\n"
		 "listen = 127.0.0.1:%d\nprotocol = smtp\nupstream = 127.0.0.1:%d\n"
		 "upstream_tls = none\nidle_timeout = 300ms\n", lport, upport);
	struct harness t;
	harness_start(&t, conf);
	/* idle */
	struct peer c = { .fd = connect_to(lport) };
	struct accept_wait a = { up, -1 };
	assert_true(pump_until(&t, accepted, &a, 3000));
	send_all(a.fd, "220 upstream.unit ESMTP\r\n", 25);
	struct wait_bytes g = { &c, 25 };
	assert_true(pump_until(&t, has_bytes, &g, 3000));
	assert_memory_equal(c.in, "220 upstream.unit ESMTP\r\n", 25);
	assert_true(pump_until(&t, closed, &c, 3000));
	assert_true(c.n > 25);
	assert_memory_equal(c.in + 25, "421 4.4.2 proxy.unit Timeout", 28);
	close(a.fd);
	close(c.fd);
	/* shutdown, with the drain callback */
	struct peer d = { .fd = connect_to(lport) };
	struct accept_wait b = { up, -1 };
	assert_true(pump_until(&t, accepted, &b, 3000));
	send_all(b.fd, "220 upstream.unit ESMTP\r\n", 25);
	struct wait_bytes g2 = { &d, 25 };
	assert_true(pump_until(&t, has_bytes, &g2, 3000));
	assert_int_equal(t.host.nsessions, 1);
	assert_int_equal(t.drained, 0);
	t.host.stopping = 1;
	session_shutdown(t.host.sessions);
	assert_true(pump_until(&t, closed, &d, 3000));
	assert_memory_equal(d.in + 25, "421 4.3.2 proxy.unit Service shutting down", 42);
	pump(&t, 50);
	assert_int_equal(t.host.nsessions, 0);
	assert_int_equal(t.drained, 1);
	close(b.fd);
	close(d.fd);
	close(up);
	harness_stop(&t);
}

/* ---- per-session buffering at its edge (docs/limits.md) ---------------------------------
 *
 * The documented marks, written out so that moving HIGH_WATER or LOW_WATER in
 * src/session.c fails here. Whether the session still reads the client is seen in the
 * route's starttls_proxy_bytes_total{direction="up"} (counted as each read is handed on);
 * what it has queued toward the upstream, in session_queued(). */
#define HIGH_MARK 262144
#define LOW_MARK 65536

/* Plaintext the route read from the client so far (metrics.h; route names are unique per
 * test, counters live as long as the process). */
static uint64_t route_bytes_up(const char *route)
{
	size_t len;
	char *text = metrics_render(&len), key[200];
	assert_non_null(text);
	snprintf(key, sizeof key, "starttls_proxy_bytes_total{route=\"%s\",direction=\"up\"} ",
		 route);
	const char *p = strstr(text, key);
	uint64_t v = p ? strtoull(p + strlen(key), NULL, 10) : 0;
	free(text);
	return v;
}

struct read_wait {
	const char *route;
	uint64_t want;
};

static int route_read(void *arg)
{
	const struct read_wait *w = arg;
	return route_bytes_up(w->route) >= w->want;
}

/* A stream whose octet k is k % 251: a byte lost, doubled or reordered shows. */
struct pattern {
	uint64_t sent, checked;
};

static void send_pattern(int fd, struct pattern *pt, size_t n)
{
	static uint8_t b[65536];
	while (n) {
		size_t k = n < sizeof b ? n : sizeof b;
		for (size_t i = 0; i < k; i++)
			b[i] = (uint8_t)((pt->sent + i) % 251);
		send_all(fd, b, k);
		pt->sent += k;
		n -= k;
	}
}

static void check_pattern(struct pattern *pt, const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n; i++, pt->checked++)
		if (d[i] != (uint8_t)(pt->checked % 251))
			fail_msg("octet %llu of the stream is %u", (unsigned long long)pt->checked,
				 d[i]);
}

/* Sends n pattern octets and waits until the session has read them all: 1, or 0 when it
 * did not within ms. *total: octets the session read so far. */
static int feed(struct harness *t, int fd, struct pattern *pt, const char *route,
		uint64_t *total, size_t n, int ms)
{
	send_pattern(fd, pt, n);
	struct read_wait w = { route, *total + n };
	int ok = pump_until(t, route_read, &w, ms);
	*total = route_bytes_up(route);
	return ok;
}

/* "octets queued toward one side": a tcp relay whose upstream does not read. Once the
 * kernel's buffers toward it are full, the session queues what it reads from the client;
 * at exactly HIGH_MARK queued the client is still read (one more octet is taken), at
 * HIGH_MARK + 1 it is not (one more octet stays unread); once the upstream reads, the
 * client is read again, not before the queue is at or below LOW_MARK; every octet arrives
 * in order. */
static void test_relay_high_water_edge(void **state)
{
	(void)state;
	const char *route = "relay_hw";
	int upport, lport = free_port();
	int up = listen_on(&upport);
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\n[route %s]\nlisten = 127.0.0.1:%d\n"
		 "protocol = tcp\nupstream = 127.0.0.1:%d\nupstream_tls = none\n", route, lport,
		 upport);
	struct harness t;
	harness_start(&t, conf);
	struct peer c = { .fd = connect_to(lport) };
	struct accept_wait a = { up, -1 };
	assert_true(pump_until(&t, accepted, &a, 3000));
	struct pattern pt = { 0, 0 };
	uint64_t total = route_bytes_up(route);
	uint64_t base = total;
	/* one octet through: the upstream is ready, the relay runs */
	assert_true(feed(&t, c.fd, &pt, route, &total, 1, 3000));
	struct peer u = { .fd = a.fd };
	struct wait_bytes g = { &u, 1 };
	assert_true(pump_until(&t, has_bytes, &g, 3000));
	check_pattern(&pt, (const uint8_t *)u.in, 1);
	struct session *s = t.host.sessions;
	assert_non_null(s);
	assert_int_equal(session_queued(s, 1), 0);
	/* fill the kernel's buffers toward the upstream, until the session queues */
	while (session_queued(s, 1) == 0) {
		assert_true(feed(&t, c.fd, &pt, route, &total, 65536, 3000));
		assert_true(total - base < 256u << 20);
	}
	/* then exactly HIGH_MARK queued, in reads of at most 64 KiB */
	while (session_queued(s, 1) < HIGH_MARK) {
		size_t need = HIGH_MARK - session_queued(s, 1);
		if (!feed(&t, c.fd, &pt, route, &total, need < 65536 ? need : 65536, 3000))
			fail_msg("the client was no longer read at %zu queued", session_queued(s, 1));
	}
	assert_int_equal(session_queued(s, 1), HIGH_MARK);
	/* at the edge: still read */
	if (!feed(&t, c.fd, &pt, route, &total, 1, 3000))
		fail_msg("at %d queued the client is no longer read", HIGH_MARK);
	assert_int_equal(session_queued(s, 1), HIGH_MARK + 1);
	/* beyond: not read */
	uint64_t before = total;
	send_pattern(c.fd, &pt, 1);
	pump(&t, 300);
	total = route_bytes_up(route);
	if (total != before)
		fail_msg("at %d queued the client is still read", HIGH_MARK + 1);
	assert_int_equal(session_queued(s, 1), HIGH_MARK + 1);
	/* the upstream reads: the last octet is read once the queue is below LOW_MARK, and
	 * then the queue (that octet included) is never above LOW_MARK again */
	int64_t until = now_ms() + 10000;
	int resumed = 0;
	static uint8_t rb[1 << 16];
	while ((uint64_t)pt.checked < pt.sent && now_ms() < until) {
		ssize_t r = recv(u.fd, rb, sizeof rb, MSG_DONTWAIT);
		if (r > 0)
			check_pattern(&pt, rb, (size_t)r);
		uv_run(&t.loop, UV_RUN_NOWAIT);
		size_t q = session_queued(s, 1);
		if (route_bytes_up(route) > before) {
			resumed = 1;
			if (q > LOW_MARK)
				fail_msg("the client was read again with %zu queued", q);
		}
	}
	assert_true(resumed);
	assert_int_equal(pt.checked, pt.sent);
	assert_int_equal(route_bytes_up(route) - base, pt.sent);
	close(u.fd);
	close(c.fd);
	close(up);
	harness_stop(&t);
}

/* "client octets before the upstream is ready (tcp routes)": a TLS upstream that has not
 * answered the handshake yet. The client's early octets are held: at exactly HIGH_MARK
 * held the client is still read, at HIGH_MARK + 1 it is not; once the handshake is done,
 * the upstream gets every octet in order, and the client is read again. */
static void test_early_high_water_edge(void **state)
{
	(void)state;
	if (!have_certs)
		skip();
	const char *route = "early_hw";
	int upport, lport = free_port();
	int up = listen_on(&upport);
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\nca = @CERTS@/ca.pem\n"
		 "[route %s]\nlisten = 127.0.0.1:%d\nprotocol = tcp\nupstream = 127.0.0.1:%d\n"
		 "upstream_tls = implicit\nupstream_policy = verify\nupstream_name = localhost\n",
		 route, lport, upport);
	struct harness t;
	harness_start(&t, conf);
	struct peer c = { .fd = connect_to(lport) };
	struct accept_wait a = { up, -1 };
	assert_true(pump_until(&t, accepted, &a, 3000));
	struct pattern pt = { 0, 0 };
	uint64_t total = route_bytes_up(route), base = total;
	/* HIGH_MARK octets held, in reads of at most 64 KiB */
	for (int i = 0; i < HIGH_MARK / 65536; i++)
		if (!feed(&t, c.fd, &pt, route, &total, 65536, 3000))
			fail_msg("the client was no longer read at %llu held",
				 (unsigned long long)(total - base));
	assert_int_equal(total - base, HIGH_MARK);
	assert_int_equal(session_queued(t.host.sessions, 1), 0); /* held, not queued */
	/* at the edge: still read */
	if (!feed(&t, c.fd, &pt, route, &total, 1, 3000))
		fail_msg("at %d held the client is no longer read", HIGH_MARK);
	/* beyond: not read */
	uint64_t before = total;
	send_pattern(c.fd, &pt, 1);
	pump(&t, 300);
	if (route_bytes_up(route) != before)
		fail_msg("at %d held the client is still read", HIGH_MARK + 1);
	/* the handshake: everything arrives, the last octet too */
	struct tls_peer s = { .p = { .fd = a.fd } };
	s.ctx = server_ctx("server");
	s.conn = tls_conn_new(s.ctx, NULL);
	assert_non_null(s.conn);
	int64_t until = now_ms() + 10000;
	while (pt.checked < pt.sent && !s.failed && now_ms() < until) {
		uv_run(&t.loop, UV_RUN_NOWAIT);
		tls_peer_step(&s);
		if (s.plen) {
			check_pattern(&pt, (const uint8_t *)s.plain, s.plen);
			s.plen = 0;
		}
	}
	assert_false(s.failed);
	assert_int_equal(pt.checked, pt.sent);
	assert_int_equal(route_bytes_up(route) - base, pt.sent);
	tls_conn_free(s.conn);
	tls_ctx_free(s.ctx);
	close(s.p.fd);
	close(c.fd);
	close(up);
	harness_stop(&t);
}

/* "replies a protocol module queues to a client that does not read them": an SMTP route
 * binding late (upstream = mx), whose module answers the client itself until the first
 * RCPT after MAIL: NOOP gets "250 2.0.0 Ok" (14 octets with CRLF), RCPT before MAIL "503
 * 5.5.1 Need MAIL command" (29), so that any count of reply octets above 363 can be made
 * exactly. The client never reads; once the kernel's buffers toward it are full, the
 * replies queue. Two clients: one brought to exactly HIGH_MARK queued is still read (one
 * more NOOP is taken), one brought to exactly HIGH_MARK + 1 (by that NOOP) is not; once it
 * reads its replies, it is read again, not before its queue is at or below LOW_MARK (its
 * new reply aside). */
#define NOOP_REPLY 14
#define RCPT_REPLY 29

static void send_lines(int fd, const char *line, size_t n)
{
	static char b[65536];
	size_t l = strlen(line), o = 0;
	for (size_t i = 0; i < n; i++) {
		if (o + l > sizeof b) {
			send_all(fd, b, o);
			o = 0;
		}
		memcpy(b + o, line, l);
		o += l;
	}
	send_all(fd, b, o);
}

/* Sends commands whose replies make exactly octets (> 363) and waits until they are read. */
static int replies_of(struct harness *t, int fd, const char *route, uint64_t *total,
		      size_t octets)
{
	size_t y = 0; /* RCPT lines */
	while (y < NOOP_REPLY && (octets < RCPT_REPLY * y || (octets - RCPT_REPLY * y) % NOOP_REPLY))
		y++;
	assert_true(y < NOOP_REPLY && octets >= RCPT_REPLY * y);
	size_t x = (octets - RCPT_REPLY * y) / NOOP_REPLY;
	static const char noop[] = "NOOP\r\n", rcpt[] = "RCPT TO:<a@b.example>\r\n";
	send_lines(fd, noop, x);
	send_lines(fd, rcpt, y);
	struct read_wait w = { route, *total + x * (sizeof noop - 1) + y * (sizeof rcpt - 1) };
	int ok = pump_until(t, route_read, &w, 3000);
	*total = route_bytes_up(route);
	return ok;
}

/* A new client of the route, greeted, its queue brought to exactly target octets. */
static struct session *client_queued_to(struct harness *t, int lport, const char *route,
					struct peer *c, uint64_t *total, size_t target)
{
	struct session *before = t->host.sessions;
	c->fd = connect_to(lport);
	struct wait_bytes g = { c, 5 };
	assert_true(pump_until(t, has_bytes, &g, 3000));
	assert_memory_equal(c->in, "220 ", 4);
	struct session *s = t->host.sessions;
	assert_true(s != NULL && s != before);
	pump(t, 20);
	peer_read(c);
	assert_int_equal(session_queued(s, 0), 0);
	/* the replies are what the arithmetic takes them for */
	c->n = 0;
	send_all(c->fd, "NOOP\r\nRCPT TO:<a@b.example>\r\n", 29);
	struct wait_bytes r = { c, NOOP_REPLY + RCPT_REPLY };
	assert_true(pump_until(t, has_bytes, &r, 3000));
	pump(t, 20);
	peer_read(c);
	*total = route_bytes_up(route);
	assert_int_equal(c->n, NOOP_REPLY + RCPT_REPLY);
	assert_memory_equal(c->in, "250 2.0.0 Ok\r\n503 5.5.1 Need MAIL command\r\n", 43);
	/* fill the kernel's buffers toward the client, until the session queues */
	while (session_queued(s, 0) == 0)
		assert_true(replies_of(t, c->fd, route, total, 4000 * RCPT_REPLY));
	while (session_queued(s, 0) < target) {
		size_t need = target - session_queued(s, 0);
		if (!replies_of(t, c->fd, route, total, need > 60000 ? 50000 : need))
			fail_msg("the client was no longer read at %zu queued", session_queued(s, 0));
	}
	assert_int_equal(session_queued(s, 0), target);
	return s;
}

static void test_reply_high_water_edge(void **state)
{
	(void)state;
	const char *route = "reply_hw";
	int lport = free_port();
	char conf[1024];
	snprintf(conf, sizeof conf,
		 "[global]\nworkers = 1\nlog_level = error\nhelo_name = proxy.unit\n"
		 "resolver = 127.0.0.1:9\n[route %s]\nlisten = 127.0.0.1:%d\nprotocol = smtp\n"
		 "upstream = mx:25\nupstream_tls = starttls\nupstream_policy = dane\n",
		 route, lport);
	struct harness t;
	harness_start(&t, conf);
	uint64_t total = route_bytes_up(route);
	static const char noop[] = "NOOP\r\n";
	/* at the edge: HIGH_MARK queued, still read */
	static struct peer a, b;
	memset(&a, 0, sizeof a);
	struct session *s = client_queued_to(&t, lport, route, &a, &total, HIGH_MARK);
	uint64_t before = total;
	send_all(a.fd, noop, 6);
	struct read_wait w = { route, before + 6 };
	if (!pump_until(&t, route_read, &w, 3000))
		fail_msg("at %d queued toward the client it is no longer read", HIGH_MARK);
	total = route_bytes_up(route);
	assert_int_equal(session_queued(s, 0), HIGH_MARK + NOOP_REPLY);
	/* beyond: HIGH_MARK + 1 queued, not read */
	memset(&b, 0, sizeof b);
	s = client_queued_to(&t, lport, route, &b, &total, HIGH_MARK + 1 - NOOP_REPLY);
	send_all(b.fd, noop, 6);
	w.want = total + 6;
	assert_true(pump_until(&t, route_read, &w, 3000));
	total = route_bytes_up(route);
	assert_int_equal(session_queued(s, 0), HIGH_MARK + 1);
	before = total;
	send_all(b.fd, noop, 6);
	pump(&t, 300);
	if (route_bytes_up(route) != before)
		fail_msg("at %d queued toward the client it is still read", HIGH_MARK + 1);
	assert_int_equal(session_queued(s, 0), HIGH_MARK + 1);
	/* the client reads its replies: the NOOP is read again once the queue is below
	 * LOW_MARK; from then on the queue (its reply included) stays at or below
	 * LOW_MARK - 1 + NOOP_REPLY */
	int64_t until = now_ms() + 10000;
	int resumed = 0;
	static char rb[1 << 16];
	while (!resumed && now_ms() < until) {
		while (recv(b.fd, rb, sizeof rb, MSG_DONTWAIT) > 0)
			;
		uv_run(&t.loop, UV_RUN_NOWAIT);
		size_t q = session_queued(s, 0);
		if (route_bytes_up(route) > before) {
			resumed = 1;
			if (q > LOW_MARK - 1 + NOOP_REPLY)
				fail_msg("the client was read again with %zu queued", q);
		}
	}
	assert_true(resumed);
	close(a.fd);
	close(b.fd);
	session_host_stop(&t.host);
	harness_stop(&t);
}

/* LOW_WATER at its edge: the comparison every resumption goes through
 * (session_below_low_water: after a write completes, for the side paused toward it, the
 * early bytes of a tcp route, a module's own replies; and once the upstream is ready). A
 * paused side is read again with 65535 queued, not with 65536. (The tests above check the
 * sessions' resumptions only where they were sampled.) */
static void test_low_water_edge(void **state)
{
	(void)state;
	static const struct { size_t queued; int below; } cases[] = {
		{ 0, 1 }, { LOW_MARK - 1, 1 }, { LOW_MARK, 0 }, { LOW_MARK + 1, 0 },
		{ HIGH_MARK, 0 }, { HIGH_MARK + 1, 0 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		if (session_below_low_water(cases[i].queued) != cases[i].below)
			fail_msg("%zu queued: read again %d, want %d", cases[i].queued,
				 session_below_low_water(cases[i].queued), cases[i].below);
}

static int setup(void **state)
{
	(void)state;
	log_setup(LOG_ERROR, 0);
	tls_global_init();
	return fixture_setup("session");
}

static int teardown(void **state)
{
	(void)state;
	return fixture_teardown();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tcp_relay),
		cmocka_unit_test(test_rejected_selfsigned),
		cmocka_unit_test(test_rejected_wrong_name),
		cmocka_unit_test(test_rejected_pin),
		cmocka_unit_test(test_testing_mode_delivers),
		cmocka_unit_test(test_accepted_upstream_delivers),
		cmocka_unit_test(test_upstream_refused),
		cmocka_unit_test(test_smtp_per_client_refusal),
		cmocka_unit_test(test_smtp_idle_and_shutdown),
		cmocka_unit_test(test_relay_high_water_edge),
		cmocka_unit_test(test_early_high_water_edge),
		cmocka_unit_test(test_reply_high_water_edge),
		cmocka_unit_test(test_low_water_edge),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
