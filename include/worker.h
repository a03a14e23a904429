/* worker.h - one event loop thread: its listeners, its sessions, its reloads and drain.
 *
 * Contract: every worker runs its own uv_loop_t on its own thread and shares nothing
 * mutable with the others but struct stp_shared (shared.h). Listening sockets are created
 * (and bound, SO_REUSEPORT) by the main thread before privileges are dropped and handed to
 * the worker as file descriptors. Functions return 0 or a negative errno. */
#ifndef STP_WORKER_H
#define STP_WORKER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "endpoint.h"
#include "session.h"

struct cfg;
struct listener;
struct stp_shared;

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
	uv_timer_t beat_timer;   /* every WORKER_BEAT_MS: beat = uv_hrtime() */
	uint64_t beat;           /* atomic */
	struct session_host host; /* its cfg is the worker's reference */
	struct listener **listeners;
	size_t nlisteners;
	uv_mutex_t lock;         /* guards the two fields below, set from the main thread */
	struct reload *pending;
	int stop_requested;
	uint8_t readbuf[EP_LOOP_BUF];
};

/* Prepares w (index, configuration reference, shared state) and creates the listening
 * sockets of every route; err names the address that failed. */
int worker_init(struct worker *w, int index, struct cfg *cfg, struct stp_shared *shared,
		char *err, size_t errlen);
int worker_start(struct worker *w);
/* Thread-safe: ask the worker to stop accepting and drain. */
void worker_stop(struct worker *w);
/* Thread-safe: hand the worker a new configuration (see struct reload; the worker owns r
 * from now on). Sessions already open keep the configuration they started with. */
void worker_reload(struct worker *w, struct reload *r);
void worker_join(struct worker *w);
/* Thread-safe: when the worker's loop last turned (uv_hrtime() ns); a loop stuck in one
 * callback stops beating, and the service manager's watchdog is then left unfed. */
#define WORKER_BEAT_MS 1000
uint64_t worker_beat(const struct worker *w);
/* The beat's period for workers started from now on (default WORKER_BEAT_MS): a quarter of
 * the watchdog interval at most, so that a loop that turns is never taken for a stuck one. */
void worker_set_beat(uint64_t ms);

#endif
