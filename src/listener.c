/* listener.c - listening sockets and the intake of connections (see listener.h). */
#include "listener.h"

#include "config.h"
#include "log.h"
#include "session.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int listener_socket(const struct cfg_addr *a, char *err, size_t errlen)
{
	int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	if (a->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
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
	snprintf(err, errlen, "cannot listen on %s:%u: %s", a->host, a->port, strerror(e));
	if (fd >= 0)
		close(fd);
	return -e;
}

int listener_probe(const struct cfg *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct cfg_addr *a = &cfg->routes[i].listen;
		int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int one = 1, rc = 0;
		if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
			rc = -errno;
		if (!rc && a->ss.ss_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (!rc && bind(fd, (const struct sockaddr *)&a->ss, a->sslen) < 0)
			rc = -errno;
		if (fd >= 0)
			close(fd);
		if (rc) {
			snprintf(err, errlen, "cannot listen on %s:%u: %s", a->host, a->port,
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
