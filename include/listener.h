/* listener.h - listening sockets: created, bound (SO_REUSEPORT, one per worker and route)
 * and probed by the main thread, then listened on by a worker's loop, which hands every
 * incoming connection to session_accept().
 *
 * Contract: functions return 0 (or a file descriptor) or a negative errno, with a message
 * naming the address in err. */
#ifndef STP_LISTENER_H
#define STP_LISTENER_H

#include <stddef.h>
#include <uv.h>

struct cfg;
struct cfg_addr;
struct cfg_route;
struct session_host;

struct listener {
	uv_tcp_t tcp;
	struct session_host *host;
	struct cfg_route *route;
	int fd;
};

/* Binds every route's address once without SO_REUSEPORT, so that an address another
 * process listens on is an error instead of a silent share. */
int listener_probe(const struct cfg *cfg, char *err, size_t errlen);
/* A listening socket for route r of c: a new descriptor of the socket the service manager
 * passed under the route's name, else a new socket bound to its listen address
 * (SO_REUSEPORT, so each worker can have its own): the fd. err names FILE:LINE and route. */
int listener_socket(const struct cfg *c, const struct cfg_route *r, char *err, size_t errlen);
/* Socket activation: the sockets passed (kept, with fds, for the life of the process) are
 * checked (listening stream sockets, each named after a route of cfg) and used from now on
 * by listener_socket and skipped by listener_probe. */
struct notify_fd;
int listener_inherit(struct notify_fd *fds, size_t n, const struct cfg *cfg, char *err,
		     size_t errlen);
/* 1 when the route of that name listens on a socket the manager passed. */
int listener_is_inherited(const char *name);
/* A listener for route on fd, not yet listening; NULL when out of memory. */
struct listener *listener_new(struct session_host *host, struct cfg_route *route, int fd);
/* Starts accepting on the host's loop. */
int listener_start(struct listener *l);
/* Stops and frees it (after its handle closed); a listener never started is freed now. */
void listener_close(struct listener *l);

#endif
