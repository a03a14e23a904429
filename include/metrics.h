/* metrics.h - per-route counters for the Prometheus endpoint (admin.c).
 *
 * Contract: counters are looked up by route name once (metrics_route) and then updated
 * with atomic operations from any worker thread. A route's counters live as long as the
 * process, so they survive reloads. */
#ifndef STP_METRICS_H
#define STP_METRICS_H

#include <stddef.h>
#include <stdint.h>

enum { METRICS_CLIENT = 0, METRICS_UPSTREAM = 1 };

struct metrics_route;

/* Finds or creates the counters of a route; NULL only when out of memory. */
struct metrics_route *metrics_route(const char *name);
void metrics_conn_open(struct metrics_route *m);
void metrics_conn_close(struct metrics_route *m);
/* Plaintext read from the client (up = 1) or from the upstream (up = 0). */
void metrics_bytes(struct metrics_route *m, int up, uint64_t n);
/* version: "TLSv1.3" ... (NULL or unknown when the handshake failed); result: NULL when the
 * handshake and the policy's checks passed ("ok"), else the RFC 8460 result type
 * ("tls-handshake-failure", "certificate-host-mismatch", ...). */
void metrics_handshake(struct metrics_route *m, int side, const char *version,
		       const char *result);
/* The expiry (seconds since the epoch) of the certificate the route presents on a side:
 * exported as seconds left; 0 removes the gauge (the side has no certificate). */
void metrics_cert_expiry(struct metrics_route *m, int side, int64_t not_after);
void metrics_policy_failure(struct metrics_route *m, const char *result, int testing);
/* One recipient-domain policy evaluation (a session toward an MX, TLSRPT's unit): type 0
 * sts, 1 tlsa, 2 no-policy-found (enum tlsrpt_policy); result NULL for success, else the
 * RFC 8460 result type. */
void metrics_evaluation(struct metrics_route *m, int type, const char *result);
/* A message got the upstream's final reply: result "accepted", "deferred" or "rejected". */
void metrics_message(struct metrics_route *m, const char *result);
/* A client or session turned away, by reason: "upstream-unreachable", "max-connections",
 * "max-connections-per-client", "client-not-allowed", "proxy-protocol" (others: "other"). */
void metrics_refusal(struct metrics_route *m, const char *reason);
/* Durations, into histograms: a TLS handshake on a side, a TCP connect to the upstream. */
void metrics_handshake_time(struct metrics_route *m, int side, uint64_t usec);
void metrics_connect_time(struct metrics_route *m, uint64_t usec);
/* A policy decided for an upstream connection: source "route", "table", "mta-sts", "dane",
 * "dane-unusable" or "no-policy"; level its name (cfg_policy_name). */
void metrics_policy_decision(struct metrics_route *m, const char *source, const char *level);
/* The exposition text (malloc'd, NUL-terminated), the process's own metrics included
 * (process_open_fds, process_resident_memory_bytes, process_cpu_seconds_total, ...);
 * NULL when out of memory. */
char *metrics_render(size_t *len);

#endif
