/* worker.c - event loop threads and their listeners (see worker.h). */
#include "worker.h"

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

struct session_link { /* the first members of struct session */
	struct session *next, *prev;
};

int worker_listen_socket(const struct cfg_addr *a, char *err, size_t errlen)
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

int worker_probe(const struct cfg *cfg, char *err, size_t errlen)
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

int worker_bind(struct worker *w, char *err, size_t errlen)
{
	w->nlisteners = w->cfg->nroutes;
	w->listeners = calloc(w->nlisteners, sizeof(*w->listeners));
	if (!w->listeners)
		return -ENOMEM;
	for (size_t i = 0; i < w->nlisteners; i++) {
		struct listener *l = calloc(1, sizeof(*l));
		if (!l)
			return -ENOMEM;
		w->listeners[i] = l;
		l->w = w;
		l->route = &w->cfg->routes[i];
		l->fd = worker_listen_socket(&l->route->listen, err, errlen);
		if (l->fd < 0)
			return l->fd;
	}
	return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
	struct listener *l = server->data;
	if (status < 0) {
		log_event(LOG_WARN, NULL, l->route->name, "accept_failed", "error",
			  uv_strerror(status), NULL);
		return;
	}
	if (l->w->stopping)
		return;
	session_accept(l->w, l->route, server);
}

static void finish(struct worker *w)
{
	uv_timer_stop(&w->drain_timer);
	if (!uv_is_closing((uv_handle_t *)&w->drain_timer))
		uv_close((uv_handle_t *)&w->drain_timer, NULL);
	if (!uv_is_closing((uv_handle_t *)&w->wake))
		uv_close((uv_handle_t *)&w->wake, NULL);
}

static void drain_timeout(uv_timer_t *t)
{
	struct worker *w = t->data;
	log_event(LOG_WARN, NULL, NULL, "drain_timeout", "sessions_closed",
		  w->nsessions ? "yes" : "no", NULL);
	struct session *s = w->sessions;
	while (s) {
		struct session *next = session_next(s);
		session_shutdown(s);
		s = next;
	}
}

static void listener_closed(uv_handle_t *h)
{
	free(h->data);
}

static void close_listener(struct listener *l)
{
	if (!uv_is_closing((uv_handle_t *)&l->tcp))
		uv_close((uv_handle_t *)&l->tcp, listener_closed);
}

static int open_listener(struct worker *w, struct listener *l)
{
	int rc;
	uv_tcp_init(&w->loop, &l->tcp);
	l->tcp.data = l;
	if ((rc = uv_tcp_open(&l->tcp, l->fd)) < 0 ||
	    (rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection)) < 0)
		log_event(LOG_ERROR, NULL, l->route->name, "listen_failed", "error", uv_strerror(rc),
			  NULL);
	return rc;
}

/* Switches to a new configuration: listeners on addresses that stay are kept (so no
 * connection is refused during a reload), new ones open, the others close. */
static void apply_reload(struct worker *w, struct reload *r)
{
	struct cfg *nc = r->cfg;
	struct listener **nl = calloc(nc->nroutes ? nc->nroutes : 1, sizeof(*nl));
	if (!nl) {
		cfg_unref(nc);
		free(r->fds);
		free(r);
		return;
	}
	for (size_t i = 0; i < nc->nroutes; i++) {
		struct cfg_route *route = &nc->routes[i];
		struct listener *l = NULL;
		if (r->fds[i] < 0) {
			for (size_t j = 0; j < w->nlisteners && !l; j++)
				if (w->listeners[j] &&
				    cfg_addr_equal(&w->listeners[j]->route->listen, &route->listen)) {
					l = w->listeners[j];
					w->listeners[j] = NULL;
				}
		}
		if (!l) {
			l = calloc(1, sizeof(*l));
			if (!l) {
				if (r->fds[i] >= 0)
					close(r->fds[i]);
				continue;
			}
			l->w = w;
			l->fd = r->fds[i];
			l->route = route;
			if (l->fd < 0 || open_listener(w, l) < 0) {
				if (l->fd >= 0)
					close_listener(l);
				else
					free(l);
				continue;
			}
		}
		l->route = route;
		nl[i] = l;
	}
	for (size_t j = 0; j < w->nlisteners; j++)
		if (w->listeners[j])
			close_listener(w->listeners[j]);
	free(w->listeners);
	w->listeners = nl;
	w->nlisteners = nc->nroutes;
	struct cfg *old = w->cfg;
	w->cfg = nc;
	cfg_unref(old); /* open sessions hold their own references */
	free(r->fds);
	free(r);
}

static void wake_cb(uv_async_t *a)
{
	struct worker *w = a->data;
	uv_mutex_lock(&w->lock);
	struct reload *r = w->pending;
	w->pending = NULL;
	int stop = w->stop_requested;
	uv_mutex_unlock(&w->lock);
	if (r) {
		if (w->stopping) {
			for (size_t i = 0; i < r->cfg->nroutes; i++)
				if (r->fds[i] >= 0)
					close(r->fds[i]);
			cfg_unref(r->cfg);
			free(r->fds);
			free(r);
		} else {
			apply_reload(w, r);
		}
	}
	if (!stop || w->stopping)
		return;
	w->stopping = 1;
	for (size_t i = 0; i < w->nlisteners; i++)
		if (w->listeners[i])
			close_listener(w->listeners[i]);
	if (w->nsessions == 0) {
		finish(w);
		return;
	}
	uv_timer_start(&w->drain_timer, drain_timeout, w->cfg->drain_timeout_ms, 0);
}

static void run(void *arg)
{
	struct worker *w = arg;
	uv_run(&w->loop, UV_RUN_DEFAULT);
	__atomic_add_fetch(&w->shared->workers_done, 1, __ATOMIC_RELEASE);
}

int worker_start(struct worker *w)
{
	int rc = uv_loop_init(&w->loop);
	if (rc < 0)
		return rc;
	uv_async_init(&w->loop, &w->wake, wake_cb);
	w->wake.data = w;
	uv_timer_init(&w->loop, &w->drain_timer);
	w->drain_timer.data = w;
	uv_mutex_init(&w->lock);
	for (size_t i = 0; i < w->nlisteners; i++)
		if ((rc = open_listener(w, w->listeners[i])) < 0)
			return rc;
	return uv_thread_create(&w->thread, run, w);
}

void worker_stop(struct worker *w)
{
	uv_mutex_lock(&w->lock);
	w->stop_requested = 1;
	uv_mutex_unlock(&w->lock);
	uv_async_send(&w->wake);
}

void worker_reload(struct worker *w, struct reload *r)
{
	uv_mutex_lock(&w->lock);
	struct reload *old = w->pending;
	w->pending = r;
	uv_mutex_unlock(&w->lock);
	if (old) { /* two reloads before the worker woke: the newer wins */
		for (size_t i = 0; i < old->cfg->nroutes; i++)
			if (old->fds[i] >= 0)
				close(old->fds[i]);
		cfg_unref(old->cfg);
		free(old->fds);
		free(old);
	}
	uv_async_send(&w->wake);
}

void worker_join(struct worker *w)
{
	uv_thread_join(&w->thread);
	uv_loop_close(&w->loop);
	free(w->listeners);
	w->listeners = NULL;
	uv_mutex_destroy(&w->lock);
	cfg_unref(w->cfg);
	w->cfg = NULL;
}

void worker_session_added(struct worker *w, struct session *s)
{
	struct session_link *l = (struct session_link *)s;
	l->prev = NULL;
	l->next = w->sessions;
	if (w->sessions)
		((struct session_link *)w->sessions)->prev = s;
	w->sessions = s;
	w->nsessions++;
	__atomic_add_fetch(&w->shared->active, 1, __ATOMIC_RELAXED);
}

void worker_session_removed(struct worker *w, struct session *s)
{
	struct session_link *l = (struct session_link *)s;
	if (l->prev)
		((struct session_link *)l->prev)->next = l->next;
	else
		w->sessions = l->next;
	if (l->next)
		((struct session_link *)l->next)->prev = l->prev;
	w->nsessions--;
	__atomic_sub_fetch(&w->shared->active, 1, __ATOMIC_RELAXED);
	if (w->stopping && w->nsessions == 0)
		finish(w);
}

struct client_count {
	struct client_count *next;
	const void *route;
	unsigned n;
	char ip[46];
};

static size_t client_bucket(const struct stp_shared *sh, const void *route, const char *ip)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uintptr_t)route ^ sh->id_key;
	for (const char *p = ip; *p; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ULL;
	return (size_t)(h % (sizeof(sh->clients) / sizeof(sh->clients[0])));
}

unsigned client_acquire(struct stp_shared *sh, const void *route, const char *ip)
{
	size_t b = client_bucket(sh, route, ip);
	unsigned n = 0;
	uv_mutex_lock(&sh->clients_lock);
	struct client_count *c = sh->clients[b];
	while (c && !(c->route == route && strcmp(c->ip, ip) == 0))
		c = c->next;
	if (!c && (c = calloc(1, sizeof(*c)))) {
		c->route = route;
		snprintf(c->ip, sizeof(c->ip), "%s", ip);
		c->next = sh->clients[b];
		sh->clients[b] = c;
	}
	if (c)
		n = ++c->n;
	uv_mutex_unlock(&sh->clients_lock);
	return n ? n : (unsigned)-1;
}

void client_release(struct stp_shared *sh, const void *route, const char *ip)
{
	size_t b = client_bucket(sh, route, ip);
	uv_mutex_lock(&sh->clients_lock);
	for (struct client_count **pp = &sh->clients[b]; *pp; pp = &(*pp)->next) {
		struct client_count *c = *pp;
		if (c->route == route && strcmp(c->ip, ip) == 0) {
			if (--c->n == 0) {
				*pp = c->next;
				free(c);
			}
			break;
		}
	}
	uv_mutex_unlock(&sh->clients_lock);
}
