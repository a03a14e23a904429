/* test_listener.c - listening sockets (listener.h): listener_socket() and listener_probe()
 * on real loopback addresses, and listener_new/listener_start/listener_close on a uv loop
 * of the test's own (run on the test's thread, NOWAIT, with a deadline).
 *
 * Every error path is checked for descriptors left open: the count of /proc/self/fd
 * entries is the same before and after, and a descriptor a function was given is closed
 * (fcntl(fd, F_GETFD) fails with EBADF) when the function owns it. on_connection needs
 * session_accept(): only its refusal while the host is stopping is tested here (the host
 * has a real configuration and shared state, so that a session made by mistake shows up
 * as a session id taken, not as a crash). */
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
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "endpoint.h"
#include "listener.h"
#include "log.h"
#include "notify.h"
#include "session.h"
#include "shared.h"
#include "unit_fixture.h"
#include "unit_net.h"

#define TIMEOUT_MS 5000

/* host ("127.0.0.1", "::1", ...) and port into a resolved cfg_addr, as config.c makes. */
static void fill_addr(struct cfg_addr *a, const char *host, int port)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->host, sizeof a->host, "%s", host);
	a->port = (uint16_t)port;
	if (strchr(host, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(a->port);
		assert_int_equal(inet_pton(AF_INET6, host, &s6->sin6_addr), 1);
		a->sslen = sizeof(*s6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(a->port);
		assert_int_equal(inet_pton(AF_INET, host, &sin->sin_addr), 1);
		a->sslen = sizeof(*sin);
	}
}

/* A plain listening socket on 127.0.0.1:port: no SO_REUSEPORT unless reuseport. */
static int plain_listener(int port, int reuseport)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	int one = 1;
	if (reuseport)
		assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one), 0);
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

static int fd_closed(int fd)
{
	return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

static int getopt_int(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof v;
	assert_int_equal(getsockopt(fd, level, name, &v, &l), 0);
	return v;
}

static int group_setup(void **state)
{
	(void)state;
	log_setup(LOG_ERROR, 0);
	return fixture_setup("listener");
}

static int group_teardown(void **state)
{
	(void)state;
	return fixture_teardown();
}

/* ------------------------------------------------------------------ listener_socket */

/* listener_socket for a route "r" of a configuration "test.conf" listening on *a (line 7). */
static int sock_for(const struct cfg_addr *a, char *err, size_t errlen)
{
	struct cfg_route r;
	struct cfg c;
	memset(&r, 0, sizeof r);
	memset(&c, 0, sizeof c);
	r.name = "r";
	r.listen = *a;
	r.listen.line = 7;
	c.path = "test.conf";
	c.routes = &r;
	c.nroutes = 1;
	return listener_socket(&c, &r, err, errlen);
}

static void check_listening_socket(int fd, int port)
{
	assert_true(fd >= 0);
	assert_int_equal(getopt_int(fd, SOL_SOCKET, SO_REUSEPORT), 1);
	assert_int_equal(getopt_int(fd, SOL_SOCKET, SO_ACCEPTCONN), 1);
	assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
	int got = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
					   : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	assert_int_equal(got, port);
}

/* Two sockets on one address (one per worker): both bind, both listen; the kernel gives
 * a connection to one of them. */
static void test_socket_binds_with_reuseport(void **state)
{
	(void)state;
	int port = free_port();
	struct cfg_addr a;
	fill_addr(&a, "127.0.0.1", port);
	char err[256] = "";
	int fd1 = sock_for(&a, err, sizeof err);
	if (fd1 < 0)
		fail_msg("listener_socket: %d %s", fd1, err);
	check_listening_socket(fd1, port);
	int fd2 = sock_for(&a, err, sizeof err);
	if (fd2 < 0)
		fail_msg("second listener_socket on the same address: %d %s", fd2, err);
	check_listening_socket(fd2, port);
	assert_int_not_equal(fd1, fd2);
	int c = try_connect(port);
	assert_true(c >= 0);
	struct pollfd pf[2] = { { fd1, POLLIN, 0 }, { fd2, POLLIN, 0 } };
	assert_int_equal(poll(pf, 2, TIMEOUT_MS), 1);
	close(c);
	close(fd1);
	close(fd2);

	/* IPv6: only IPv6 (IPV6_V6ONLY), when the host has ::1. */
	int probe = socket(AF_INET6, SOCK_STREAM, 0);
	if (probe < 0)
		return;
	close(probe);
	fill_addr(&a, "::1", port);
	int fd6 = sock_for(&a, err, sizeof err);
	if (fd6 == -EADDRNOTAVAIL || fd6 == -EAFNOSUPPORT) {
		print_message("no ::1 here (%s): IPv6 part skipped\n", err);
		return;
	}
	if (fd6 < 0)
		fail_msg("listener_socket [::1]: %d %s", fd6, err);
	check_listening_socket(fd6, port);
	assert_int_equal(getopt_int(fd6, IPPROTO_IPV6, IPV6_V6ONLY), 1);
	close(fd6);
}

/* Failures: a negative errno, a message naming the address, no descriptor left open. */
static void test_socket_errors(void **state)
{
	(void)state;
	static const struct {
		const char *name, *host;
		int family_unspec; /* an address of no family */
		int occupied;      /* a plain socket (no SO_REUSEPORT) listens there */
		int want;
	} cases[] = {
		{ "address in use by a socket without SO_REUSEPORT", "127.0.0.1", 0, 1, -EADDRINUSE },
		{ "address not on this host", "192.0.2.1", 0, 0, -EADDRNOTAVAIL },
		{ "address of no family", "127.0.0.1", 1, 0, -EAFNOSUPPORT },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		print_message("case: %s\n", cases[i].name);
		int port = free_port();
		int busy = cases[i].occupied ? plain_listener(port, 0) : -1;
		struct cfg_addr a;
		fill_addr(&a, cases[i].host, port);
		if (cases[i].family_unspec)
			a.ss.ss_family = AF_UNSPEC;
		int before = count_fds();
		char err[256] = "", want[64];
		int rc = sock_for(&a, err, sizeof err);
		assert_int_equal(rc, cases[i].want);
		assert_int_equal(count_fds(), before);
		snprintf(want, sizeof want, "%s:%d", cases[i].host, port);
		if (!strstr(err, want))
			fail_msg("message \"%s\" does not name %s", err, want);
		assert_non_null(strstr(err, strerror(-cases[i].want)));
		if (!strstr(err, "test.conf:7: route \"r\": "))
			fail_msg("message \"%s\" does not name FILE:LINE and the route", err);
		if (busy >= 0)
			close(busy);
	}
}

/* ------------------------------------------------------------------ listener_probe */

static void test_probe(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		int occupy;    /* route index whose port is taken (-1: none) */
		int reuseport; /* ... by a socket with SO_REUSEPORT (a silent share without probe) */
		int nroutes;
	} cases[] = {
		{ "every address free", -1, 0, 2 },
		{ "no routes", -1, 0, 0 },
		{ "second route's port taken by a plain socket", 1, 0, 2 },
		{ "first route's port taken by a plain socket", 0, 0, 2 },
		{ "port taken by a socket with SO_REUSEPORT", 1, 1, 2 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		print_message("case: %s\n", cases[i].name);
		struct cfg_route routes[2];
		memset(routes, 0, sizeof routes);
		int ports[2] = { free_port(), free_port() };
		while (ports[1] == ports[0])
			ports[1] = free_port();
		for (int k = 0; k < 2; k++) {
			routes[k].name = k ? "r2" : "r1";
			fill_addr(&routes[k].listen, "127.0.0.1", ports[k]);
		}
		struct cfg c;
		memset(&c, 0, sizeof c);
		c.path = "test.conf";
		c.routes = routes;
		c.nroutes = (size_t)cases[i].nroutes;
		int busy = -1;
		if (cases[i].occupy >= 0)
			busy = plain_listener(ports[cases[i].occupy], cases[i].reuseport);
		int before = count_fds();
		char err[256] = "";
		int rc = listener_probe(&c, err, sizeof err);
		assert_int_equal(count_fds(), before);
		if (cases[i].occupy < 0) {
			if (rc != 0)
				fail_msg("listener_probe: %d %s", rc, err);
			/* Nothing stays bound: a plain socket can take every port now. */
			for (int k = 0; k < cases[i].nroutes; k++)
				close(plain_listener(ports[k], 0));
			continue;
		}
		assert_int_equal(rc, -EADDRINUSE);
		char want[64];
		snprintf(want, sizeof want, "127.0.0.1:%d", ports[cases[i].occupy]);
		if (!strstr(err, want))
			fail_msg("message \"%s\" does not name %s", err, want);
		close(busy);
		/* Once the other socket is gone, the same configuration probes fine. */
		err[0] = 0;
		rc = listener_probe(&c, err, sizeof err);
		if (rc != 0)
			fail_msg("listener_probe after the port was freed: %d %s", rc, err);
	}
}

/* ------------------------------------------------------------------ socket activation */

/* Sockets the service manager passed, by FileDescriptorName= = route name: the route
 * listens on a new descriptor of that socket (accepting what connects to it) and
 * listener_probe skips it, though its address is taken (by the manager's socket). A
 * descriptor that is not a listening stream socket, or whose name matches no route, is
 * refused with a message naming it; nothing is adopted then. */
static void test_inherited_sockets(void **state)
{
	(void)state;
	int port = free_port(), other = free_port();
	while (other == port)
		other = free_port();
	int passed = plain_listener(port, 0); /* what systemd would have bound */
	struct cfg_route routes[2];
	memset(routes, 0, sizeof routes);
	routes[0].name = "smtp-in";
	fill_addr(&routes[0].listen, "127.0.0.1", other); /* the socket's address wins */
	routes[1].name = "other";
	fill_addr(&routes[1].listen, "127.0.0.1", free_port());
	struct cfg c;
	memset(&c, 0, sizeof c);
	c.path = "test.conf";
	c.routes = routes;
	c.nroutes = 2;
	char err[256] = "";

	/* refusals first */
	int dgram = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int unlistened = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct notify_fd bad[] = { { dgram, "smtp-in" }, { unlistened, "smtp-in" },
				   { passed, "nosuchroute" } };
	static const char *const want[] = { "is not a listening stream socket",
					    "is not a listening stream socket",
					    "socket \"nosuchroute\" (descriptor" };
	for (int i = 0; i < 3; i++) {
		err[0] = 0;
		assert_int_equal(listener_inherit(&bad[i], 1, &c, err, sizeof err), -EINVAL);
		if (!strstr(err, want[i]))
			fail_msg("case %d: message \"%s\" lacks \"%s\"", i, err, want[i]);
		assert_int_equal(listener_is_inherited("smtp-in"), 0);
	}
	close(dgram);
	close(unlistened);

	/* without the passed socket, the probe finds the port taken... */
	fill_addr(&routes[0].listen, "127.0.0.1", port);
	assert_int_equal(listener_probe(&c, err, sizeof err), -EADDRINUSE);
	/* ...with it, the route is the manager's and the probe passes */
	struct notify_fd good = { passed, "smtp-in" };
	assert_int_equal(listener_inherit(&good, 1, &c, err, sizeof err), 0);
	assert_int_equal(listener_is_inherited("smtp-in"), 1);
	assert_int_equal(listener_is_inherited("other"), 0);
	if (listener_probe(&c, err, sizeof err) != 0)
		fail_msg("listener_probe with the socket passed: %s", err);
	int fd = listener_socket(&c, &routes[0], err, sizeof err);
	if (fd < 0)
		fail_msg("listener_socket on the passed socket: %d %s", fd, err);
	assert_int_not_equal(fd, passed);
	assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	int cl = try_connect(port);
	assert_true(cl >= 0);
	struct pollfd pf = { fd, POLLIN, 0 };
	assert_int_equal(poll(&pf, 1, TIMEOUT_MS), 1); /* the same socket */
	close(cl);
	close(fd);
	/* the other route binds its own socket */
	fd = listener_socket(&c, &routes[1], err, sizeof err);
	if (fd < 0)
		fail_msg("listener_socket for the other route: %d %s", fd, err);
	check_listening_socket(fd, routes[1].listen.port);
	close(fd);
	assert_int_equal(listener_inherit(NULL, 0, &c, err, sizeof err), 0);
	close(passed);
}

/* ------------------------------------------------------------------ on a loop */

struct lfx {
	uv_loop_t loop;
	struct session_host host;
	struct cfg_route route;
};

static void lfx_init(struct lfx *f)
{
	memset(f, 0, sizeof(*f));
	assert_int_equal(uv_loop_init(&f->loop), 0);
	f->host.loop = &f->loop;
	f->route.name = "r";
}

/* Runs the loop until nothing is left on it (uv_run returns 0), then closes it. */
static void lfx_finish(struct lfx *f)
{
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (uv_run(&f->loop, UV_RUN_NOWAIT) != 0) {
		if (now_ms() > dl)
			fail_msg("the loop still has active handles %d ms after listener_close",
				 TIMEOUT_MS);
		struct pollfd pf = { uv_backend_fd(&f->loop), POLLIN, 0 };
		poll(&pf, 1, 10);
	}
	assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* Start, then close: the loop ends with no handles, the socket is closed, the port
 * refuses connections. */
static void test_start_then_close(void **state)
{
	(void)state;
	struct lfx f;
	lfx_init(&f);
	int port = free_port();
	struct cfg_addr a;
	fill_addr(&a, "127.0.0.1", port);
	f.route.listen = a;
	char err[256];
	int fd = sock_for(&a, err, sizeof err);
	assert_true(fd >= 0);
	struct listener *l = listener_new(&f.host, &f.route, fd);
	assert_non_null(l);
	assert_ptr_equal(l->host, &f.host);
	assert_ptr_equal(l->route, &f.route);
	assert_int_equal(l->fd, fd);
	assert_int_equal(listener_start(l), 0);
	assert_int_equal(uv_run(&f.loop, UV_RUN_NOWAIT), 1); /* the listener is active */
	assert_true(uv_is_active((uv_handle_t *)&l->tcp));
	listener_close(l);
	listener_close(NULL);
	lfx_finish(&f);
	assert_true(fd_closed(fd));
	assert_int_equal(try_connect(port), -ECONNREFUSED);
}

/* A listener never started owns only its socket: listener_close closes it at once. */
static void test_close_never_started(void **state)
{
	(void)state;
	struct lfx f;
	lfx_init(&f);
	int port = free_port();
	fill_addr(&f.route.listen, "127.0.0.1", port);
	char err[256];
	int fd = sock_for(&f.route.listen, err, sizeof err);
	assert_true(fd >= 0);
	struct listener *l = listener_new(&f.host, &f.route, fd);
	assert_non_null(l);
	listener_close(l);
	assert_true(fd_closed(fd));
	assert_int_equal(try_connect(port), -ECONNREFUSED);
	assert_int_equal(uv_run(&f.loop, UV_RUN_NOWAIT), 0); /* nothing was put on the loop */
	assert_int_equal(uv_loop_close(&f.loop), 0);
}

/* listener_start on a descriptor that cannot listen: a negative errno; after
 * listener_close the descriptor is closed, not leaked, and the loop ends clean. */
static void test_start_on_a_non_socket(void **state)
{
	(void)state;
	enum { REGULAR_FILE, PIPE, UDP_SOCKET, CLOSED_FD };
	static const struct {
		const char *name;
		int kind;
		int want; /* 0: any negative errno */
	} cases[] = {
		{ "a regular file", REGULAR_FILE, -ENOTSOCK },
		{ "a pipe", PIPE, -ENOTSOCK },
		{ "a UDP socket", UDP_SOCKET, -EOPNOTSUPP },
		{ "a closed descriptor", CLOSED_FD, -EBADF },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		print_message("case: %s\n", cases[i].name);
		int before = count_fds(); /* the loop's own descriptors go with uv_loop_close */
		struct lfx f;
		lfx_init(&f);
		int fd = -1, other = -1;
		char path[600];
		switch (cases[i].kind) {
		case REGULAR_FILE:
			snprintf(path, sizeof path, "%s/not-a-socket", tmpdir);
			fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
			break;
		case PIPE: {
			int p[2];
			assert_int_equal(pipe2(p, O_CLOEXEC), 0);
			fd = p[0];
			other = p[1];
			before++; /* the write end stays open until the end of the case */
			break;
		}
		case UDP_SOCKET:
			fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
			break;
		case CLOSED_FD: /* high: the loop's own descriptors will not take the number */
			fd = 1000;
			while (!fd_closed(fd))
				fd++;
			break;
		}
		assert_true(fd >= 0);
		struct listener *l = listener_new(&f.host, &f.route, fd);
		assert_non_null(l);
		int rc = listener_start(l);
		assert_int_equal(rc, cases[i].want);
		listener_close(l);
		lfx_finish(&f);
		assert_true(fd_closed(fd));
		assert_int_equal(count_fds(), before);
		if (other >= 0)
			close(other);
	}
}

/* A connection while the host is stopping makes no session; it ends when the listener
 * closes. (libuv accepts a connection before it calls on_connection: one not taken stays
 * with the libuv handle, which then stops watching the socket, until uv_close.) */
static void test_stopping_host_makes_no_session(void **state)
{
	(void)state;
	int port = free_port(), up = free_port();
	char path[600], text[512];
	snprintf(path, sizeof path, "%s/stopping.conf", tmpdir);
	snprintf(text, sizeof text,
		 "[global]\nworkers = 1\nlog_level = error\n\n"
		 "[route r]\nlisten = 127.0.0.1:%d\nprotocol = tcp\nupstream = 127.0.0.1:%d\n",
		 port, up);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &cfg, &errs);
	if (rc != 0)
		fail_msg("cfg_load: %d %s", rc, errs.n ? errs.msg[0] : "");
	cfg_errors_free(&errs);
	struct stp_shared sh;
	assert_int_equal(shared_init(&sh), 0);
	static uint8_t readbuf[EP_LOOP_BUF];

	struct lfx f;
	lfx_init(&f);
	f.host.cfg = cfg;
	f.host.shared = &sh;
	f.host.readbuf = readbuf;
	f.host.stopping = 1;
	char err[256];
	int fd = listener_socket(cfg, &cfg->routes[0], err, sizeof err);
	assert_true(fd >= 0);
	struct listener *l = listener_new(&f.host, &cfg->routes[0], fd);
	assert_non_null(l);
	assert_int_equal(listener_start(l), 0);
	int c = try_connect(port);
	assert_true(c >= 0);
	/* Until on_connection has run (libuv took the connection and offered it). */
	int64_t dl = now_ms() + TIMEOUT_MS;
	while (l->tcp.accepted_fd < 0) {
		if (now_ms() > dl)
			fail_msg("on_connection never ran");
		uv_run(&f.loop, UV_RUN_NOWAIT);
		struct pollfd pf = { uv_backend_fd(&f.loop), POLLIN, 0 };
		poll(&pf, 1, 10);
	}
	uv_run(&f.loop, UV_RUN_NOWAIT);
	assert_int_equal(__atomic_load_n(&sh.next_id, __ATOMIC_ACQUIRE), 0); /* no session id */
	assert_int_equal(f.host.nsessions, 0);
	assert_null(f.host.sessions);
	char b;
	assert_int_equal(recv(c, &b, 1, MSG_DONTWAIT), -1); /* nobody served or closed it */
	assert_int_equal(errno, EAGAIN);
	listener_close(l);
	lfx_finish(&f);
	assert_true(fd_closed(fd));
	/* The held connection was closed with the listener. */
	struct pollfd pf = { c, POLLIN, 0 };
	assert_int_equal(poll(&pf, 1, TIMEOUT_MS), 1);
	ssize_t n = recv(c, &b, 1, 0);
	assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
	close(c);
	cfg_unref(cfg);
	shared_destroy(&sh);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(120);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_socket_binds_with_reuseport),
		cmocka_unit_test(test_socket_errors),
		cmocka_unit_test(test_probe),
		cmocka_unit_test(test_inherited_sockets),
		cmocka_unit_test(test_start_then_close),
		cmocka_unit_test(test_close_never_started),
		cmocka_unit_test(test_start_on_a_non_socket),
		cmocka_unit_test(test_stopping_host_makes_no_session),
	};
	return cmocka_run_group_tests_name("listener", tests, group_setup, group_teardown);
}
