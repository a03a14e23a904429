/* worker.h - one event loop thread: its listeners, its sessions, its drain.
 *
 * Contract: every worker runs its own uv_loop_t on its own thread and shares nothing
 * mutable with the others but the atomic counters in struct stp_shared. Listening sockets
 * are created (and bound, SO_REUSEPORT) by the main thread before privileges are dropped
 * and handed to the worker as file descriptors. */
#ifndef STP_WORKER_H
#define STP_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "endpoint.h"

struct cfg;
struct cfg_addr;
struct session;

struct client_count;

/* State shared by all workers: atomics, and the per-client table under its mutex. */
struct stp_shared {
	long active;        /* open sessions, all routes */
	uint64_t next_id;   /* session id sequence */
	uint64_t id_key;    /* random, mixes the sequence into ids */
	int workers_done;   /* worker threads whose loop has ended */
	uv_mutex_t clients_lock;
	struct client_count *clients[1024]; /* (route, client address) -> open sessions */
};

/* max_connections_per_client: counts one more session of route from address ip and
 * returns the new count; client_release undoes it. */
unsigned client_acquire(struct stp_shared *sh, const void *route, const char *ip);
void client_release(struct stp_shared *sh, const void *route, const char *ip);

struct listener {
	uv_tcp_t tcp;
	struct worker *w;
	struct cfg_route *route;
	int fd;
};

/* A new configuration on its way to a worker: for route i of cfg, fds[i] is a new
 * listening socket, or -1 to keep the worker's listener on the same address. */
struct reload {
	struct cfg *cfg; /* one reference, given to the worker */
	int *fds;
};

struct worker {
	int index;
	uv_loop_t loop;
	uv_thread_t thread;
	uv_async_t wake;
	uv_timer_t drain_timer;
	struct cfg *cfg; /* the worker's reference; new sessions take theirs from it */
	struct stp_shared *shared;
	struct listener **listeners;
	size_t nlisteners;
	uv_mutex_t lock;         /* guards the two fields below, set from the main thread */
	struct reload *pending;
	int stop_requested;
	struct session *sessions; /* doubly linked through session->next/prev */
	long nsessions;
	int stopping;
	uint8_t readbuf[EP_READ_SIZE];
};

/* Binds every route's address once without SO_REUSEPORT, so that an address another
 * process listens on is an error instead of a silent share. 0 or a negative errno. */
int worker_probe(const struct cfg *cfg, char *err, size_t errlen);
/* Creates the listening sockets of every route for one worker. Returns 0, or a negative
 * errno with a message in err. */
int worker_bind(struct worker *w, char *err, size_t errlen);
int worker_start(struct worker *w);
/* Thread-safe: ask the worker to stop accepting and drain. */
void worker_stop(struct worker *w);
/* Thread-safe: hand the worker a new configuration (see struct reload; the worker owns r
 * from now on). Sessions already open keep the configuration they started with. */
void worker_reload(struct worker *w, struct reload *r);
/* A listening socket for addr (SO_REUSEPORT, so each worker can have its own): the fd, or
 * a negative errno with a message in err. */
int worker_listen_socket(const struct cfg_addr *addr, char *err, size_t errlen);
void worker_join(struct worker *w);

/* For session.c: the session list and the shared counters. */
void worker_session_added(struct worker *w, struct session *s);
void worker_session_removed(struct worker *w, struct session *s);

#endif
