/* session.h - one proxied connection: a downstream (client) endpoint and an upstream
 * endpoint, the route's policy, timers, and one teardown path.
 *
 * Contract: session_start() takes an accepted client and owns it from then on. The session
 * frees itself after both handles and its timer have closed; session_close() is the only
 * way to end it and logs one close line with the reason and the counters. */
#ifndef STP_SESSION_H
#define STP_SESSION_H

#include "endpoint.h"

struct worker;
struct cfg;
struct cfg_route;
struct session;

/* Accept one client from the listener stream. */
void session_accept(struct worker *w, struct cfg_route *route, uv_stream_t *server);
/* Ends the session now: reason is a static string. */
void session_close(struct session *s, const char *reason);
/* Ends the session because the proxy stops: protocols say so to the client first. */
void session_shutdown(struct session *s);
struct session *session_next(struct session *s);

#endif
