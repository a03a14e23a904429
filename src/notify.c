/* notify.c - sd_notify and socket-activation protocols (see notify.h). */
#include "notify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct sockaddr_un addr;
static socklen_t addrlen;
static int sock = -1;
static uint64_t watchdog_usec;

static void forget(void)
{
	if (sock >= 0)
		close(sock);
	sock = -1;
}

int notify_init(void)
{
	watchdog_usec = 0;
	const char *wd = getenv("WATCHDOG_USEC"), *wpid = getenv("WATCHDOG_PID");
	if (wd && (!wpid || strtol(wpid, NULL, 10) == (long)getpid())) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(wd, &end, 10);
		if (!errno && end != wd && !*end)
			watchdog_usec = v;
	}
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !*path) {
		unsetenv("NOTIFY_SOCKET");
		forget();
		return 0;
	}
	size_t len = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || len >= sizeof(addr.sun_path)) {
		unsetenv("NOTIFY_SOCKET");
		forget();
		return -EINVAL;
	}
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, path, len);
	if (path[0] == '@')
		addr.sun_path[0] = '\0'; /* abstract namespace: no terminating NUL counted */
	addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));
	unsetenv("NOTIFY_SOCKET");
	if (sock < 0)
		sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	return sock < 0 ? -errno : 1;
}

int notify_send(const char *state)
{
	if (sock < 0)
		return 0;
	ssize_t n = sendto(sock, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr,
			   addrlen);
	return n < 0 ? -errno : 0;
}

int notify_sendf(const char *fmt, ...)
{
	if (sock < 0)
		return 0;
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return notify_send(buf);
}

uint64_t notify_watchdog_usec(void)
{
	return sock >= 0 ? watchdog_usec : 0;
}

int notify_active(void)
{
	return sock >= 0;
}

/* A decimal in [min, max] and nothing else; -1 when it is not. */
static long number(const char *s, long min, long max)
{
	if (!s || !*s)
		return -1;
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	return errno || *end || v < min || v > max ? -1 : v;
}

int notify_parse_listen(const char *pid_s, const char *nfds_s, const char *names_s, long self,
			struct notify_fd **fds, size_t *n, char *err, size_t errlen)
{
	*fds = NULL;
	*n = 0;
	if (!pid_s && !nfds_s)
		return 0;
	long pid = number(pid_s, 1, 0x7fffffff);
	if (pid < 0) {
		snprintf(err, errlen, "socket activation: LISTEN_PID=\"%s\" is not a pid",
			 pid_s ? pid_s : "");
		return -EINVAL;
	}
	if (pid != self) /* meant for another process (a parent that exec'd us, say) */
		return 0;
	long nfds = number(nfds_s, 0, 4096);
	if (nfds < 0) {
		snprintf(err, errlen, "socket activation: LISTEN_FDS=\"%s\" is not a count",
			 nfds_s ? nfds_s : "");
		return -EINVAL;
	}
	if (nfds == 0)
		return 0;
	struct notify_fd *a = calloc((size_t)nfds, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	const char *p = names_s;
	for (long i = 0; i < nfds; i++) {
		a[i].fd = 3 + (int)i;
		if (!p)
			continue;
		const char *colon = strchr(p, ':');
		size_t len = colon ? (size_t)(colon - p) : strlen(p);
		if (len >= sizeof(a[i].name)) {
			snprintf(err, errlen, "socket activation: a name in LISTEN_FDNAMES is longer "
				 "than %zu bytes", sizeof(a[i].name) - 1);
			free(a);
			return -EINVAL;
		}
		memcpy(a[i].name, p, len);
		a[i].name[len] = '\0';
		p = colon ? colon + 1 : NULL;
		if (!p && i + 1 < nfds) { /* systemd gives one name per fd, always */
			snprintf(err, errlen, "socket activation: LISTEN_FDNAMES names %ld of %ld "
				 "sockets", i + 1, nfds);
			free(a);
			return -EINVAL;
		}
	}
	if (p) {
		snprintf(err, errlen, "socket activation: LISTEN_FDNAMES names more than %ld "
			 "sockets", nfds);
		free(a);
		return -EINVAL;
	}
	*fds = a;
	*n = (size_t)nfds;
	return 0;
}

int notify_listen_fds(struct notify_fd **fds, size_t *n, char *err, size_t errlen)
{
	int rc = notify_parse_listen(getenv("LISTEN_PID"), getenv("LISTEN_FDS"),
				     getenv("LISTEN_FDNAMES"), (long)getpid(), fds, n, err, errlen);
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	for (size_t i = 0; rc == 0 && i < *n; i++) {
		int flags = fcntl((*fds)[i].fd, F_GETFD);
		if (flags < 0) {
			snprintf(err, errlen, "socket activation: descriptor %d: %s", (*fds)[i].fd,
				 strerror(errno));
			free(*fds);
			*fds = NULL;
			*n = 0;
			return -EBADF;
		}
		fcntl((*fds)[i].fd, F_SETFD, flags | FD_CLOEXEC);
	}
	return rc;
}
