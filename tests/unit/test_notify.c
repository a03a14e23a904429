/* test_notify.c - the service manager's protocols (notify.h): LISTEN_* parsing table by
 * table, and notifications received on a real datagram socket, by path and in the
 * abstract namespace; the environment is cleaned for children. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

/* ------------------------------------------------------------------ LISTEN_* */

static void test_parse_listen(void **state)
{
	(void)state;
	static const struct {
		const char *name, *pid, *nfds, *names;
		long self;
		int rc;
		size_t n;
		const char *got[3]; /* names, in order */
		const char *err;    /* a part of the message */
	} cases[] = {
		{ "nothing set", NULL, NULL, NULL, 10, 0, 0, { NULL }, NULL },
		{ "two named sockets", "10", "2", "smtp-in:submission", 10, 0, 2,
		  { "smtp-in", "submission" }, NULL },
		{ "one socket, no names", "10", "1", NULL, 10, 0, 1, { "" }, NULL },
		{ "empty name kept empty", "10", "2", ":b", 10, 0, 2, { "", "b" }, NULL },
		{ "for another process: ignored", "11", "2", "a:b", 10, 0, 0, { NULL }, NULL },
		{ "zero sockets", "10", "0", NULL, 10, 0, 0, { NULL }, NULL },
		{ "pid not a number", "1x", "1", "a", 10, -EINVAL, 0, { NULL }, "LISTEN_PID" },
		{ "pid missing", NULL, "1", "a", 10, -EINVAL, 0, { NULL }, "LISTEN_PID" },
		{ "count not a number", "10", "two", "a", 10, -EINVAL, 0, { NULL }, "LISTEN_FDS" },
		{ "negative count", "10", "-1", "a", 10, -EINVAL, 0, { NULL }, "LISTEN_FDS" },
		{ "absurd count", "10", "100000", NULL, 10, -EINVAL, 0, { NULL }, "LISTEN_FDS" },
		{ "fewer names than sockets", "10", "3", "a:b", 10, -EINVAL, 0, { NULL },
		  "names 2 of 3" },
		{ "more names than sockets", "10", "1", "a:b", 10, -EINVAL, 0, { NULL },
		  "more than 1" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		print_message("case: %s\n", cases[i].name);
		struct notify_fd *fds = (void *)1;
		size_t n = 99;
		char err[256] = "";
		int rc = notify_parse_listen(cases[i].pid, cases[i].nfds, cases[i].names,
					     cases[i].self, &fds, &n, err, sizeof err);
		assert_int_equal(rc, cases[i].rc);
		assert_int_equal(n, cases[i].n);
		if (cases[i].err && !strstr(err, cases[i].err))
			fail_msg("message \"%s\" lacks \"%s\"", err, cases[i].err);
		if (!cases[i].n) {
			assert_null(fds);
			continue;
		}
		for (size_t k = 0; k < n; k++) {
			assert_int_equal(fds[k].fd, 3 + (int)k);
			assert_string_equal(fds[k].name, cases[i].got[k]);
		}
		free(fds);
	}
	/* a name of 256 bytes does not fit */
	char longname[300];
	memset(longname, 'x', 256);
	longname[256] = 0;
	struct notify_fd *fds;
	size_t n;
	char err[256];
	assert_int_equal(notify_parse_listen("5", "1", longname, 5, &fds, &n, err, sizeof err),
			 -EINVAL);
	assert_non_null(strstr(err, "longer than 255"));
}

/* notify_listen_fds reads the environment, unsets it and marks the descriptors
 * close-on-exec; a descriptor that is not open is an error. */
static void test_listen_fds_env(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	/* put a socket at 3 and 4 as the manager would (no close-on-exec) */
	int s3 = dup2(sv[0], 3), s4 = dup2(sv[1], 4);
	assert_int_equal(s3, 3);
	assert_int_equal(s4, 4);
	char pid[32];
	snprintf(pid, sizeof pid, "%ld", (long)getpid());
	setenv("LISTEN_PID", pid, 1);
	setenv("LISTEN_FDS", "2", 1);
	setenv("LISTEN_FDNAMES", "a:b", 1);
	struct notify_fd *fds;
	size_t n;
	char err[256] = "";
	assert_int_equal(notify_listen_fds(&fds, &n, err, sizeof err), 0);
	assert_int_equal(n, 2);
	assert_string_equal(fds[1].name, "b");
	assert_true(fcntl(3, F_GETFD) & FD_CLOEXEC);
	assert_true(fcntl(4, F_GETFD) & FD_CLOEXEC);
	assert_null(getenv("LISTEN_PID"));
	assert_null(getenv("LISTEN_FDS"));
	assert_null(getenv("LISTEN_FDNAMES"));
	free(fds);
	close(4);
	setenv("LISTEN_PID", pid, 1);
	setenv("LISTEN_FDS", "2", 1);
	assert_int_equal(notify_listen_fds(&fds, &n, err, sizeof err), -EBADF);
	assert_non_null(strstr(err, "descriptor 4"));
	assert_int_equal(n, 0);
	close(3);
	close(sv[0]);
	close(sv[1]);
}

/* ------------------------------------------------------------------ NOTIFY_SOCKET */

static int bind_dgram(const char *path, int abstract)
{
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	size_t len = strlen(path);
	memcpy(a.sun_path + abstract, path, len);
	socklen_t al = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + abstract);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, al), 0);
	return fd;
}

static void expect(int fd, const char *want)
{
	struct pollfd pf = { fd, POLLIN, 0 };
	assert_int_equal(poll(&pf, 1, 2000), 1);
	char buf[1100];
	ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
	assert_true(n >= 0);
	buf[n] = 0;
	assert_string_equal(buf, want);
}

static void test_notify_path_and_abstract(void **state)
{
	(void)state;
	char dir[] = "/tmp/stp-notify-XXXXXX", path[128];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/notify", dir);
	int fd = bind_dgram(path, 0);

	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(notify_init(), 0); /* none: every call a no-op */
	assert_int_equal(notify_send("READY=1"), 0);

	setenv("NOTIFY_SOCKET", path, 1);
	setenv("WATCHDOG_USEC", "3000000", 1);
	char pid[32];
	snprintf(pid, sizeof pid, "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(notify_init(), 1);
	assert_null(getenv("NOTIFY_SOCKET")); /* children do not inherit it */
	assert_null(getenv("WATCHDOG_USEC"));
	assert_int_equal(notify_watchdog_usec(), 3000000);
	assert_int_equal(notify_send("READY=1"), 0);
	expect(fd, "READY=1");
	assert_int_equal(notify_sendf("STATUS=%d sessions\nMAINPID=%d", 3, 42), 0);
	expect(fd, "STATUS=3 sessions\nMAINPID=42");
	close(fd);
	unlink(path);
	/* the manager went away: an error, not a crash */
	assert_true(notify_send("WATCHDOG=1") < 0);

	char abs[64];
	snprintf(abs, sizeof abs, "stp-notify-test-%ld", (long)getpid());
	fd = bind_dgram(abs, 1);
	char at[70];
	snprintf(at, sizeof at, "@%s", abs);
	setenv("NOTIFY_SOCKET", at, 1);
	setenv("WATCHDOG_USEC", "5000000", 1);
	setenv("WATCHDOG_PID", "1", 1); /* another process's watchdog: not ours */
	assert_int_equal(notify_init(), 1);
	assert_int_equal(notify_watchdog_usec(), 0);
	assert_int_equal(notify_send("STOPPING=1"), 0);
	expect(fd, "STOPPING=1");
	close(fd);

	setenv("NOTIFY_SOCKET", "relative/path", 1);
	assert_int_equal(notify_init(), -EINVAL);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_listen),
		cmocka_unit_test(test_listen_fds_env),
		cmocka_unit_test(test_notify_path_and_abstract),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
