/* session.h - one proxied connection: a downstream (client) endpoint and an upstream
 * endpoint, the route's policy, the protocol module, timers, and one teardown path.
 *
 * Contract: session_accept() takes a connection waiting on a listening stream and owns it
 * from then on. The session frees itself after both handles and its timer have closed;
 * session_close() is the one way to end it and logs one close line with the reason and the
 * counters. A session lives on the loop of its struct session_host (one per worker) and
 * is listed there while it lives. */
#ifndef STP_SESSION_H
#define STP_SESSION_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cfg;
struct cfg_route;
struct dns_cache;
struct late_res;
struct sts_cache;
struct session;
struct stp_shared;

/* What sessions need from the event loop that runs them (a worker). */
struct session_host {
	uv_loop_t *loop;
	uint8_t *readbuf;          /* EP_LOOP_BUF bytes, shared by the loop's endpoints */
	struct cfg *cfg;           /* new sessions take a reference to it */
	struct stp_shared *shared; /* counts and ids shared by all hosts */
	struct session *sessions;  /* the open sessions (session_next) */
	long nsessions;
	int stopping;              /* no new sessions; the host waits for the open ones */
	/* Called when the last session ended while stopping. */
	void (*drained)(struct session_host *h);
	void *owner;               /* the worker */
	struct dns_cache *dns;     /* upstream host names resolved lately (session.c) */
	struct tls_cache *tls;     /* upstream TLS sessions to resume (session.c) */
	struct late_res *late;     /* late binding: resolver and MTA-STS lookups (late.h) */
	struct sts_cache *sts_cache; /* MTA-STS policies, kept across reloads */
};

/* Accept one client waiting on the listening stream server, for route. */
void session_accept(struct session_host *h, struct cfg_route *route, uv_stream_t *server);
/* Ends the session now: reason is a static string. */
void session_close(struct session *s, const char *reason);
/* Ends the session because the proxy stops: protocols say so to the client first. */
void session_shutdown(struct session *s);
/* The drain began: a session idle between transactions (the protocol says so) gets its
 * protocol's 421 now and ends; 1 when it did, 0 when it goes on until it is done or
 * drain_timeout. */
int session_drain(struct session *s);
struct session *session_next(struct session *s);
/* Tests (docs/limits.md, per-session buffering): the octets queued toward the upstream
 * (upstream = 1) or toward the client (0) that flow control weighs against its marks
 * (written and not yet taken by the kernel; the client's early bytes of a tcp route not
 * included). Reads nothing else and changes nothing. */
size_t session_queued(const struct session *s, int upstream);
/* Flow control's low water mark, pure: 1 when a side paused because too much was queued
 * toward its peer (or held from it) may be read again with queued octets there: fewer
 * than 65536 (LOW_WATER); else 0. */
int session_below_low_water(size_t queued);
/* The host stops: the late-binding resources (their resolver's handles) are released so
 * that the loop can end; sessions still open keep their own reference. */
void session_host_stop(struct session_host *h);
/* Frees what the host's sessions left behind (the DNS and TLS session caches); no session
 * may be open. */
void session_host_cleanup(struct session_host *h);

#endif
