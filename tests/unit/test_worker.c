/* test_worker.c - worker threads (worker.h) with real configurations: worker_init,
 * worker_start, worker_reload, worker_stop and worker_join, a struct stp_shared from
 * shared_init, and clients on loopback.
 *
 * Each test writes a small configuration (one tcp route on a free loopback port) into the
 * fixture's temp directory and loads it with cfg_load. The upstream is either a port
 * nothing listens on (a session then fails to connect and closes its client: "served")
 * or a listening socket of the test's (the session relays to it). Nothing sleeps to give
 * the worker time: every wait polls for its condition with a deadline. After a stop, the
 * worker's loop must have ended with no handle on it before worker_join. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "listener.h"
#include "log.h"
#include "shared.h"
#include "worker.h"
#include "unit_fixture.h"
#include "unit_net.h"

#define TIMEOUT_MS 5000

static int plain_listener(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(fd, 8), 0);
	return fd;
}

/* A blocking connect to 127.0.0.1:port: the fd, or -errno. */
static int try_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

/* Something listens on 127.0.0.1:port: a socket with SO_REUSEADDR (and without
 * SO_REUSEPORT) cannot bind it, as in listener_probe; connections do not matter. */
static int port_listened(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	int one = 1;
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int rc = bind(fd, (struct sockaddr *)&sin, sizeof sin);
	int e = errno;
	close(fd);
	if (rc < 0 && e != EADDRINUSE)
		fail_msg("bind 127.0.0.1:%d: %s", port, strerror(e));
	return rc < 0;
}

/* The connection ended by the other side (EOF or reset) within ms: 1; still open: 0.
 * Bytes that arrive before the end are skipped. */
static int wait_closed(int fd, int ms)
{
	int64_t dl = now_ms() + ms;
	for (;;) {
		int left = (int)(dl - now_ms());
		if (left <= 0)
			return 0;
		struct pollfd pf = { fd, POLLIN, 0 };
		if (poll(&pf, 1, left) != 1)
			continue;
		char b[256];
		ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			return 1;
	}
}

/* A client to port that the proxy serves: with an unreachable upstream, the session ends
 * and closes it. 1: served and closed; 0: connected but never served; -errno: refused. */
static int served(int port)
{
	int fd = try_connect(port);
	if (fd < 0)
		return fd;
	int rc = wait_closed(fd, TIMEOUT_MS);
	close(fd);
	return rc;
}

/* Receives exactly n bytes within TIMEOUT_MS into b; returns how many came. */
static size_t recv_n(int fd, char *b, size_t n)
{
	size_t got = 0;
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (got < n && now_ms() < dl) {
		struct pollfd pf = { fd, POLLIN, 0 };
		if (poll(&pf, 1, (int)(dl - now_ms())) != 1)
			continue;
		ssize_t r = recv(fd, b + got, n - got, MSG_DONTWAIT);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return got;
}

/* Accepts one connection on a listening socket within TIMEOUT_MS: the fd or -1. */
static int accept_within(int lfd, int ms)
{
	struct pollfd pf = { lfd, POLLIN, 0 };
	if (poll(&pf, 1, ms) != 1)
		return -1;
	return accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	assert_non_null(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static int refs(struct cfg *c)
{
	return __atomic_load_n(&c->refs, __ATOMIC_ACQUIRE);
}

/* Sessions release their reference when they are freed, a moment after their client saw
 * the end: waits (with a deadline) for the count to become n. */
static void wait_refs(struct cfg *c, int n)
{
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (refs(c) != n) {
		if (now_ms() > dl)
			fail_msg("the configuration has %d references, expected %d", refs(c), n);
		poll(NULL, 0, 5);
	}
}

/* ------------------------------------------------------------------ configurations */

struct route_spec {
	int listen, upstream;
};

static struct cfg *load_conf(const char *name, const struct route_spec *routes, int n,
			     const char *drain)
{
	char path[600], text[2048];
	snprintf(path, sizeof path, "%s/%s.conf", tmpdir, name);
	int o = snprintf(text, sizeof text, "[global]\nworkers = 1\nlog_level = error\n%s%s%s\n",
			 drain ? "drain_timeout = " : "", drain ? drain : "", drain ? "\n" : "");
	for (int i = 0; i < n; i++)
		o += snprintf(text + o, sizeof text - (size_t)o,
			      "[route r%d]\nlisten = 127.0.0.1:%d\nprotocol = tcp\n"
			      "upstream = 127.0.0.1:%d\nconnect_timeout = 2s\n\n",
			      i + 1, routes[i].listen, routes[i].upstream);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &cfg, &errs);
	if (rc != 0)
		fail_msg("cfg_load %s: %d %s", path, rc, errs.n ? errs.msg[0] : "");
	cfg_errors_free(&errs);
	assert_int_equal(refs(cfg), 1);
	return cfg;
}

/* ------------------------------------------------------------------ the worker */

static struct worker W;
static struct stp_shared SH;
static int started, joined; /* a test that failed half-way leaves no thread behind */
static int poisoned;        /* ... or one that would not stop */

static int group_setup(void **state)
{
	(void)state;
	log_setup(getenv("STP_DEBUG") ? LOG_DEBUG : LOG_ERROR, 0);
	/* libuv opens a process-wide signal pipe with the first loop: before any count. */
	uv_loop_t l;
	if (uv_loop_init(&l) != 0 || uv_loop_close(&l) != 0)
		return -1;
	return fixture_setup("worker");
}

static int group_teardown(void **state)
{
	(void)state;
	return fixture_teardown();
}

static int setup(void **state)
{
	(void)state;
	if (poisoned)
		return -1;
	memset(&W, 0, sizeof W);
	started = joined = 0;
	return shared_init(&SH);
}

static int teardown(void **state)
{
	(void)state;
	if (started && !joined) {
		worker_stop(&W);
		int64_t dl = now_ms() + 3 * TIMEOUT_MS;
		while (__atomic_load_n(&SH.workers_done, __ATOMIC_ACQUIRE) == 0 && now_ms() < dl)
			poll(NULL, 0, 5);
		if (__atomic_load_n(&SH.workers_done, __ATOMIC_ACQUIRE) == 0) {
			/* A thread that runs on cannot be taken back: it keeps W and SH, and
			 * the tests after this one do not run. */
			print_message("teardown: the worker does not stop\n");
			poisoned = 1;
			return -1;
		}
		worker_join(&W);
	}
	shared_destroy(&SH);
	return 0;
}

static void count_handle(uv_handle_t *h, void *arg)
{
	(void)h;
	(*(int *)arg)++;
}

/* Waits for the worker's loop to end (shared.workers_done), checks that nothing is left on
 * it, and joins the thread. */
static void wait_and_join(int ms)
{
	int64_t dl = now_ms() + ms;
	while (__atomic_load_n(&SH.workers_done, __ATOMIC_ACQUIRE) == 0) {
		if (now_ms() > dl)
			fail_msg("the worker still runs %d ms after worker_stop (%ld sessions)", ms,
				 W.host.nsessions);
		poll(NULL, 0, 5);
	}
	int handles = 0;
	uv_walk(&W.loop, count_handle, &handles);
	assert_int_equal(handles, 0);
	assert_int_equal(W.host.nsessions, 0);
	joined = 1;
	worker_join(&W);
	assert_int_equal(__atomic_load_n(&SH.workers_done, __ATOMIC_ACQUIRE), 1);
	assert_null(W.host.cfg);
}

static void init_and_start(struct cfg *cfg)
{
	char err[256] = "";
	int rc = worker_init(&W, 0, cfg, &SH, err, sizeof err);
	if (rc != 0)
		fail_msg("worker_init: %d %s", rc, err);
	assert_int_equal(refs(cfg), 2);
	assert_int_equal(worker_start(&W), 0);
	started = 1;
}

/* A reload as main.c makes it: new addresses get new sockets, kept ones -1. */
static void reload_to(struct cfg *nc, const struct cfg *old)
{
	struct reload *r = malloc(sizeof(*r));
	assert_non_null(r);
	r->cfg = cfg_ref(nc);
	r->fds = malloc(nc->nroutes * sizeof(int));
	assert_non_null(r->fds);
	for (size_t i = 0; i < nc->nroutes; i++) {
		int kept = 0;
		for (size_t j = 0; j < old->nroutes; j++)
			kept |= cfg_addr_equal(&old->routes[j].listen, &nc->routes[i].listen);
		char err[256];
		r->fds[i] = kept ? -1 : listener_socket(nc, &nc->routes[i], err, sizeof err);
		if (!kept && r->fds[i] < 0)
			fail_msg("listener_socket: %s", err);
	}
	worker_reload(&W, r);
}

/* ------------------------------------------------------------------ the tests */

/* worker_init makes one listening socket per route; the started worker serves clients
 * (the session fails to reach the upstream and closes the client); worker_stop ends the
 * loop; after worker_join the port refuses and the configuration reference is back. */
static void test_start_serve_stop(void **state)
{
	(void)state;
	int port = free_port();
	struct route_spec rs = { port, free_port() };
	struct cfg *cfg = load_conf("serve", &rs, 1, NULL);
	int before = count_fds();
	char err[256] = "";
	assert_int_equal(worker_init(&W, 3, cfg, &SH, err, sizeof err), 0);
	assert_int_equal(W.index, 3);
	assert_int_equal(W.nlisteners, 1);
	assert_non_null(W.listeners[0]);
	assert_ptr_equal(W.listeners[0]->route, &cfg->routes[0]);
	int lfd = W.listeners[0]->fd;
	int acc = 0;
	socklen_t sl = sizeof acc;
	assert_int_equal(getsockopt(lfd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &sl), 0);
	assert_int_equal(acc, 1);
	assert_int_equal(refs(cfg), 2);
	assert_int_equal(worker_start(&W), 0);
	started = 1;

	for (int i = 0; i < 3; i++)
		assert_int_equal(served(port), 1);
	assert_int_equal(__atomic_load_n(&SH.next_id, __ATOMIC_ACQUIRE), 3); /* three sessions */
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (__atomic_load_n(&SH.active, __ATOMIC_ACQUIRE) != 0 && now_ms() < dl)
		poll(NULL, 0, 5);
	assert_int_equal(__atomic_load_n(&SH.active, __ATOMIC_ACQUIRE), 0);
	assert_int_equal(__atomic_load_n(&SH.workers_done, __ATOMIC_ACQUIRE), 0);

	worker_stop(&W);
	wait_and_join(TIMEOUT_MS);
	assert_int_equal(refs(cfg), 1);
	assert_int_equal(try_connect(port), -ECONNREFUSED);
	assert_int_equal(count_fds(), before);
	cfg_unref(cfg);
}

/* A reload to a different port: the new port is served, the old one refuses; the old
 * configuration's reference is released, the new one held. */
static void test_reload_to_another_port(void **state)
{
	(void)state;
	int p1 = free_port(), p2 = free_port();
	while (p2 == p1)
		p2 = free_port();
	struct route_spec r1 = { p1, free_port() }, r2 = { p2, free_port() };
	struct cfg *c1 = load_conf("reload1", &r1, 1, NULL);
	struct cfg *c2 = load_conf("reload2", &r2, 1, NULL);
	init_and_start(c1);
	assert_int_equal(served(p1), 1);
	reload_to(c2, c1);
	/* Connections to the new port wait in its backlog until the worker listens there. */
	assert_int_equal(served(p2), 1);
	assert_int_equal(try_connect(p1), -ECONNREFUSED);
	wait_refs(c1, 1); /* the worker's and its sessions' references are gone */
	wait_refs(c2, 2); /* the worker's */
	assert_int_equal(served(p2), 1);
	worker_stop(&W);
	wait_and_join(TIMEOUT_MS);
	assert_int_equal(refs(c2), 1);
	assert_int_equal(try_connect(p2), -ECONNREFUSED);
	cfg_unref(c1);
	cfg_unref(c2);
}

/* A reload keeping the address: the same listening socket stays (no refused connection),
 * and new sessions follow the new route (here: an upstream that answers). */
static void test_reload_keeps_the_listener(void **state)
{
	(void)state;
	int port = free_port(), up = free_port();
	int ulfd = plain_listener(up);
	struct route_spec r1 = { port, free_port() }, r2 = { port, up };
	struct cfg *c1 = load_conf("keep1", &r1, 1, NULL);
	struct cfg *c2 = load_conf("keep2", &r2, 1, NULL);
	char err[256];
	assert_int_equal(worker_init(&W, 0, c1, &SH, err, sizeof err), 0);
	int lfd = W.listeners[0]->fd;
	struct stat st0;
	assert_int_equal(fstat(lfd, &st0), 0);
	assert_int_equal(worker_start(&W), 0);
	started = 1;
	assert_int_equal(served(port), 1);
	reload_to(c2, c1);
	/* Until the worker applies it, a session may still take the old route. */
	int client = -1, ufd = -1;
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (ufd < 0) {
		if (now_ms() > dl)
			fail_msg("no session reached the new route's upstream");
		client = try_connect(port);
		assert_true(client >= 0); /* never refused during the reload */
		struct pollfd pf[2] = { { ulfd, POLLIN, 0 }, { client, POLLIN, 0 } };
		assert_int_equal(poll(pf, 2, TIMEOUT_MS) > 0, 1);
		if (pf[0].revents & POLLIN) {
			ufd = accept4(ulfd, NULL, NULL, SOCK_CLOEXEC);
			assert_true(ufd >= 0);
		} else {
			assert_int_equal(wait_closed(client, TIMEOUT_MS), 1); /* old route */
			close(client);
		}
	}
	/* The same socket still listens. */
	struct stat st1;
	assert_int_equal(fstat(lfd, &st1), 0);
	assert_int_equal(st1.st_ino, st0.st_ino);
	wait_refs(c1, 1);
	/* The session relays both ways. */
	char b[16];
	assert_int_equal(send(client, "ping", 4, MSG_NOSIGNAL), 4);
	assert_int_equal(recv_n(ufd, b, 4), 4);
	assert_memory_equal(b, "ping", 4);
	assert_int_equal(send(ufd, "pong", 4, MSG_NOSIGNAL), 4);
	assert_int_equal(recv_n(client, b, 4), 4);
	assert_memory_equal(b, "pong", 4);
	close(client);
	assert_int_equal(wait_closed(ufd, TIMEOUT_MS), 1);
	close(ufd);
	worker_stop(&W);
	wait_and_join(TIMEOUT_MS);
	close(ulfd);
	cfg_unref(c1);
	cfg_unref(c2);
}

/* worker_stop with a session open: the listener closes at once, the session goes on (both
 * ways) until its client and upstream are done, then the loop ends. */
static void test_stop_drains_open_sessions(void **state)
{
	(void)state;
	int port = free_port(), up = free_port();
	int ulfd = plain_listener(up);
	struct route_spec rs = { port, up };
	struct cfg *cfg = load_conf("drain", &rs, 1, "30s");
	init_and_start(cfg);
	int client = try_connect(port);
	assert_true(client >= 0);
	int ufd = accept_within(ulfd, TIMEOUT_MS);
	assert_true(ufd >= 0);
	worker_stop(&W);
	/* The listener closes (watched without connecting: a connection made before the stop
	 * reached the worker would be one more session); the session stays. */
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (port_listened(port)) {
		if (now_ms() > dl)
			fail_msg("the port still listens %d ms after worker_stop", TIMEOUT_MS);
		poll(NULL, 0, 5);
	}
	assert_int_equal(try_connect(port), -ECONNREFUSED);
	char b[16];
	assert_int_equal(send(client, "late", 4, MSG_NOSIGNAL), 4);
	assert_int_equal(recv_n(ufd, b, 4), 4);
	assert_memory_equal(b, "late", 4);
	assert_int_equal(send(ufd, "reply", 5, MSG_NOSIGNAL), 5);
	assert_int_equal(recv_n(client, b, 5), 5);
	assert_memory_equal(b, "reply", 5);
	assert_int_equal(__atomic_load_n(&SH.workers_done, __ATOMIC_ACQUIRE), 0);
	/* The client finishes: the upstream sees EOF and closes; the session ends, the loop too. */
	shutdown(client, SHUT_WR);
	assert_int_equal(wait_closed(ufd, TIMEOUT_MS), 1);
	close(ufd);
	assert_int_equal(wait_closed(client, TIMEOUT_MS), 1);
	close(client);
	wait_and_join(TIMEOUT_MS);
	close(ulfd);
	assert_int_equal(refs(cfg), 1);
	cfg_unref(cfg);
}

/* A session that does not finish is closed when drain_timeout expires, not before. */
static void test_drain_timeout_closes_sessions(void **state)
{
	(void)state;
	int port = free_port(), up = free_port();
	int ulfd = plain_listener(up);
	struct route_spec rs = { port, up };
	struct cfg *cfg = load_conf("timeout", &rs, 1, "300ms");
	init_and_start(cfg);
	int client = try_connect(port);
	assert_true(client >= 0);
	int ufd = accept_within(ulfd, TIMEOUT_MS);
	assert_true(ufd >= 0);
	int64_t t0 = now_ms();
	worker_stop(&W);
	assert_int_equal(wait_closed(client, TIMEOUT_MS), 1);
	assert_int_equal(wait_closed(ufd, TIMEOUT_MS), 1);
	int64_t waited = now_ms() - t0;
	if (waited < 280)
		fail_msg("the session was closed %lld ms after worker_stop; drain_timeout is 300 ms",
			 (long long)waited);
	wait_and_join(TIMEOUT_MS);
	close(client);
	close(ufd);
	close(ulfd);
	cfg_unref(cfg);
}

/* worker_init fails when a route's address is taken (by a socket without SO_REUSEPORT):
 * the message names it, and nothing is left behind (descriptors, memory, the reference). */
static void test_init_failure_leaves_nothing(void **state)
{
	(void)state;
	int p1 = free_port(), p2 = free_port();
	while (p2 == p1)
		p2 = free_port();
	struct route_spec rs[2] = { { p1, free_port() }, { p2, free_port() } };
	struct cfg *cfg = load_conf("busy", rs, 2, NULL);
	int busy = plain_listener(p2);
	int before = count_fds();
	char err[256] = "", want[64];
	int rc = worker_init(&W, 0, cfg, &SH, err, sizeof err);
	assert_int_equal(rc, -EADDRINUSE);
	snprintf(want, sizeof want, "127.0.0.1:%d", p2);
	if (!strstr(err, want))
		fail_msg("message \"%s\" does not name %s", err, want);
	assert_int_equal(count_fds(), before);
	assert_int_equal(refs(cfg), 1);
	assert_int_equal(try_connect(p1), -ECONNREFUSED); /* the first route's socket is gone */
	close(busy);
	cfg_unref(cfg);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(120);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_start_serve_stop),
		T(test_reload_to_another_port),
		T(test_reload_keeps_the_listener),
		T(test_stop_drains_open_sessions),
		T(test_drain_timeout_closes_sessions),
		T(test_init_failure_leaves_nothing),
	};
	return cmocka_run_group_tests_name("worker", tests, group_setup, group_teardown);
}
