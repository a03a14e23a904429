/* listener.c - listening sockets and the intake of connections (see listener.h). */
#include "listener.h"

#include "config.h"
#include "log.h"
#include "notify.h"
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* [::] listens dual-stack (IPv4 clients too, seen as IPv4 addresses: see session.c); any
 * other IPv6 address only on IPv6. */
static void set_v6only(int fd, const struct cfg_addr *a)
{
	if (a->ss.ss_family != AF_INET6)
		return;
	int v6only = !IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr);
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
}

/* The sockets the service manager passed (socket activation), by FileDescriptorName=. */
static struct notify_fd *inherited;
static size_t ninherited;

static int inherited_fd(const char *name)
{
	for (size_t i = 0; name && i < ninherited; i++)
		if (!strcmp(inherited[i].name, name))
			return inherited[i].fd;
	return -1;
}

int listener_inherit(struct notify_fd *fds, size_t n, const struct cfg *cfg, char *err,
		     size_t errlen)
{
	for (size_t i = 0; i < n; i++) {
		int type = 0, acc = 0;
		socklen_t len = sizeof(type);
		if (getsockopt(fds[i].fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
		    type != SOCK_STREAM || (len = sizeof(acc),
		    getsockopt(fds[i].fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0) || !acc) {
			snprintf(err, errlen, "socket activation: descriptor %d (\"%s\") is not a "
				 "listening stream socket (ListenStream= in the .socket unit)",
				 fds[i].fd, fds[i].name);
			return -EINVAL;
		}
		size_t r = 0;
		while (r < cfg->nroutes && strcmp(cfg->routes[r].name, fds[i].name))
			r++;
		if (r == cfg->nroutes) {
			snprintf(err, errlen, "socket activation: socket \"%s\" (descriptor %d) "
				 "matches no route: FileDescriptorName= must be a route's name",
				 fds[i].name, fds[i].fd);
			return -EINVAL;
		}
	}
	inherited = fds;
	ninherited = n;
	return 0;
}

int listener_is_inherited(const char *name)
{
	return inherited_fd(name) >= 0;
}

int listener_socket(const struct cfg *c, const struct cfg_route *r, char *err, size_t errlen)
{
	const struct cfg_addr *a = &r->listen;
	const char *name = r->name;
	int ifd = inherited_fd(name);
	if (ifd >= 0) { /* one descriptor per worker, all on the manager's socket */
		int one = 1, fd = fcntl(ifd, F_DUPFD_CLOEXEC, 3);
		if (fd < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 ||
		    (a->transparent &&
		     (a->ss.ss_family == AF_INET6
			      ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
			      : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one))) < 0)) {
			int e = errno;
			snprintf(err, errlen, "%s:%d: route \"%s\": inherited socket: %s", c->path,
				 a->line, name, strerror(e));
			if (fd >= 0)
				close(fd);
			return -e;
		}
		return fd;
	}
	int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	set_v6only(fd, a);
	/* TPROXY: accept connections addressed to other hosts (needs CAP_NET_ADMIN) */
	if (a->transparent &&
	    (a->ss.ss_family == AF_INET6
		     ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
		     : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one))) < 0)
		goto fail;
	if (bind(fd, (const struct sockaddr *)&a->ss, a->sslen) < 0)
		goto fail;
	if (listen(fd, 1024) < 0)
		goto fail;
	return fd;
fail:;
	int e = errno;
	snprintf(err, errlen, "%s:%d: route \"%s\": cannot listen on %s:%u: %s", c->path,
		 a->line, name, a->host, a->port, strerror(e));
	if (fd >= 0)
		close(fd);
	return -e;
}

int listener_probe(const struct cfg *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct cfg_addr *a = &cfg->routes[i].listen;
		if (inherited_fd(cfg->routes[i].name) >= 0)
			continue;
		int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int one = 1, rc = 0;
		if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
			rc = -errno;
		if (!rc)
			set_v6only(fd, a);
		if (!rc && bind(fd, (const struct sockaddr *)&a->ss, a->sslen) < 0)
			rc = -errno;
		if (fd >= 0)
			close(fd);
		if (rc) {
			snprintf(err, errlen, "%s:%d: route \"%s\": cannot listen on %s:%u: %s",
				 cfg->path, a->line, cfg->routes[i].name, a->host, a->port,
				 strerror(-rc));
			return rc;
		}
	}
	return 0;
}

struct listener *listener_new(struct session_host *host, struct cfg_route *route, int fd)
{
	struct listener *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->host = host;
	l->route = route;
	l->fd = fd;
	return l;
}

static void on_connection(uv_stream_t *server, int status)
{
	struct listener *l = server->data;
	if (status < 0) {
		log_event(LOG_WARN, NULL, l->route->name, "accept_failed", "error",
			  uv_strerror(status), NULL);
		return;
	}
	if (l->host->stopping)
		return;
	session_accept(l->host, l->route, server);
}

int listener_start(struct listener *l)
{
	int rc = uv_tcp_init(l->host->loop, &l->tcp);
	if (rc < 0)
		return rc;
	l->tcp.data = l;
	if ((rc = uv_tcp_open(&l->tcp, l->fd)) < 0) {
		close(l->fd); /* not the handle's yet */
		l->fd = -1;
	} else {
		rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
	}
	if (rc < 0)
		log_event(LOG_ERROR, NULL, l->route->name, "listen_failed", "error", uv_strerror(rc),
			  NULL);
	return rc;
}

static void closed(uv_handle_t *h)
{
	free(h->data);
}

void listener_close(struct listener *l)
{
	if (!l)
		return;
	if (!l->tcp.loop) { /* never started: only the socket */
		if (l->fd >= 0)
			close(l->fd);
		free(l);
		return;
	}
	if (!uv_is_closing((uv_handle_t *)&l->tcp))
		uv_close((uv_handle_t *)&l->tcp, closed);
}
