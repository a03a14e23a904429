/* shared.h - what every worker thread shares: the count of open sessions (for
 * max_connections), the per route and client address counts (max_connections_per_client)
 * and the session id sequence.
 *
 * Contract: every function is thread-safe; the counts are atomics, the per-client table is
 * guarded by its own mutex. */
#ifndef STP_SHARED_H
#define STP_SHARED_H

#include <stdint.h>
#include <uv.h>

struct client_count;
struct tlsrpt;

struct stp_shared {
	long active;        /* open sessions, all routes (atomic) */
	uint64_t next_id;   /* session id sequence (atomic) */
	uint64_t id_key;    /* random: mixes the sequence into ids, and the table's hash */
	int workers_done;   /* worker threads whose loop has ended (atomic) */
	uv_mutex_t clients_lock;
	struct client_count *clients[1024]; /* (route, client address) -> open sessions */
	struct tlsrpt *tlsrpt; /* TLSRPT counts (tlsrpt_dir), or NULL; set before the workers
				  start, freed after they ended (tlsrpt_count is thread-safe) */
};

/* 0, or a negative errno. */
int shared_init(struct stp_shared *sh);
void shared_destroy(struct stp_shared *sh);
/* One more open session; returns how many are open now (this one included). */
long shared_session_opened(struct stp_shared *sh);
void shared_session_closed(struct stp_shared *sh);
/* A fresh 16-hex-digit session id into out[17]. */
void shared_session_id(struct stp_shared *sh, char out[17]);
/* One more session of route from address ip: the new count, or 0 when the table could not
 * grow (the caller treats that as over the limit). client_release() undoes an acquire that
 * returned non-zero. */
unsigned shared_client_acquire(struct stp_shared *sh, const void *route, const char *ip);
void shared_client_release(struct stp_shared *sh, const void *route, const char *ip);

#endif
