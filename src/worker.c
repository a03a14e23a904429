/* worker.c - event loop threads: listeners, reloads and drain (see worker.h). */
#include "worker.h"

#include "config.h"
#include "listener.h"
#include "log.h"
#include "shared.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void free_reload(struct reload *r)
{
	for (size_t i = 0; i < r->cfg->nroutes; i++)
		if (r->fds[i] >= 0)
			close(r->fds[i]);
	cfg_unref(r->cfg);
	free(r->fds);
	free(r);
}

static void finish(struct session_host *h)
{
	struct worker *w = h->owner;
	session_host_stop(h);
	uv_timer_stop(&w->drain_timer);
	if (!uv_is_closing((uv_handle_t *)&w->drain_timer))
		uv_close((uv_handle_t *)&w->drain_timer, NULL);
	if (!uv_is_closing((uv_handle_t *)&w->beat_timer))
		uv_close((uv_handle_t *)&w->beat_timer, NULL);
	if (!uv_is_closing((uv_handle_t *)&w->wake))
		uv_close((uv_handle_t *)&w->wake, NULL);
}

/* A failed worker_init leaves nothing behind: sockets, memory, the reference. */
static int init_failed(struct worker *w, int rc)
{
	for (size_t i = 0; w->listeners && i < w->nlisteners; i++)
		listener_close(w->listeners[i]); /* never started: closes its socket */
	free(w->listeners);
	w->listeners = NULL;
	w->nlisteners = 0;
	cfg_unref(w->host.cfg);
	w->host.cfg = NULL;
	return rc;
}

int worker_init(struct worker *w, int index, struct cfg *cfg, struct stp_shared *shared,
		char *err, size_t errlen)
{
	memset(w, 0, sizeof(*w));
	w->index = index;
	w->host.cfg = cfg_ref(cfg);
	w->host.shared = shared;
	w->host.readbuf = w->readbuf;
	w->host.loop = &w->loop;
	w->host.drained = finish;
	w->host.owner = w;
	w->nlisteners = cfg->nroutes;
	w->listeners = calloc(w->nlisteners ? w->nlisteners : 1, sizeof(*w->listeners));
	if (!w->listeners) {
		snprintf(err, errlen, "out of memory");
		return init_failed(w, -ENOMEM);
	}
	for (size_t i = 0; i < w->nlisteners; i++) {
		int fd = listener_socket(cfg, &cfg->routes[i], err, errlen);
		if (fd < 0)
			return init_failed(w, fd);
		w->listeners[i] = listener_new(&w->host, &cfg->routes[i], fd);
		if (!w->listeners[i]) {
			close(fd);
			snprintf(err, errlen, "out of memory");
			return init_failed(w, -ENOMEM);
		}
	}
	return 0;
}

static void drain_timeout(uv_timer_t *t)
{
	struct worker *w = t->data;
	char n[24];
	snprintf(n, sizeof(n), "%zu", (size_t)w->host.nsessions);
	log_event(LOG_WARN, NULL, NULL, "drain_timeout", "sessions_closed", n, NULL);
	struct session *s = w->host.sessions;
	while (s) {
		struct session *next = session_next(s);
		session_shutdown(s);
		s = next;
	}
}

/* Switches to a new configuration: listeners on addresses that stay are kept (so no
 * connection is refused during a reload), new ones open, the others close. */
static void apply_reload(struct worker *w, struct reload *r)
{
	struct cfg *nc = r->cfg;
	struct listener **nl = calloc(nc->nroutes ? nc->nroutes : 1, sizeof(*nl));
	if (!nl) {
		log_event(LOG_ERROR, NULL, NULL, "reload", "result", "failed", "error",
			  "out of memory", NULL);
		free_reload(r);
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
		} else {
			l = listener_new(&w->host, route, r->fds[i]);
			if (!l)
				close(r->fds[i]);
			else if (listener_start(l) < 0) {
				listener_close(l);
				l = NULL;
			}
			r->fds[i] = -1;
		}
		if (l)
			l->route = route;
		nl[i] = l;
	}
	for (size_t j = 0; j < w->nlisteners; j++)
		listener_close(w->listeners[j]);
	free(w->listeners);
	w->listeners = nl;
	w->nlisteners = nc->nroutes;
	struct cfg *old = w->host.cfg;
	w->host.cfg = nc;
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
		if (w->host.stopping)
			free_reload(r);
		else
			apply_reload(w, r);
	}
	if (!stop || w->host.stopping)
		return;
	w->host.stopping = 1;
	for (size_t i = 0; i < w->nlisteners; i++) {
		listener_close(w->listeners[i]);
		w->listeners[i] = NULL;
	}
	size_t open = w->host.nsessions, idle = 0;
	for (struct session *x = w->host.sessions; x;) {
		struct session *next = session_next(x);
		idle += (size_t)session_drain(x);
		x = next;
	}
	char n_open[24], n_idle[24], wi[16];
	snprintf(n_open, sizeof(n_open), "%zu", open);
	snprintf(n_idle, sizeof(n_idle), "%zu", idle);
	snprintf(wi, sizeof(wi), "%d", w->index);
	log_event(LOG_INFO, NULL, NULL, "drain", "worker", wi, "sessions", n_open, "idle_closed",
		  n_idle, NULL);
	if (w->host.nsessions == 0) {
		finish(&w->host);
		return;
	}
	uv_timer_start(&w->drain_timer, drain_timeout, w->host.cfg->drain_timeout_ms, 0);
}

/* The loop turns: the main thread's watchdog reads w->beat (see worker_beat). */
static void beat(uv_timer_t *t)
{
	struct worker *w = t->data;
	__atomic_store_n(&w->beat, uv_hrtime(), __ATOMIC_RELAXED);
}

static uint64_t beat_ms = WORKER_BEAT_MS;

void worker_set_beat(uint64_t ms)
{
	beat_ms = ms < 20 ? 20 : ms;
}

uint64_t worker_beat(const struct worker *w)
{
	return __atomic_load_n(&w->beat, __ATOMIC_RELAXED);
}

static void run(void *arg)
{
	struct worker *w = arg;
	char name[16]; /* "stp-worker-N" in top -H, ps -L and /proc/PID/task/TID/comm */
	snprintf(name, sizeof(name), "stp-worker-%d", w->index);
	pthread_setname_np(pthread_self(), name);
	uv_run(&w->loop, UV_RUN_DEFAULT);
	__atomic_add_fetch(&w->host.shared->workers_done, 1, __ATOMIC_RELEASE);
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
	uv_timer_init(&w->loop, &w->beat_timer);
	w->beat_timer.data = w;
	w->beat = uv_hrtime();
	uv_timer_start(&w->beat_timer, beat, beat_ms, beat_ms);
	uv_mutex_init(&w->lock);
	for (size_t i = 0; i < w->nlisteners; i++)
		if ((rc = listener_start(w->listeners[i])) < 0)
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
	if (old) /* two reloads before the worker woke: the newer wins */
		free_reload(old);
	uv_async_send(&w->wake);
}

void worker_join(struct worker *w)
{
	uv_thread_join(&w->thread);
	uv_loop_close(&w->loop);
	session_host_cleanup(&w->host);
	free(w->listeners);
	w->listeners = NULL;
	uv_mutex_destroy(&w->lock);
	cfg_unref(w->host.cfg);
	w->host.cfg = NULL;
}
