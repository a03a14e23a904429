/* notify.h - the service manager's side channels: readiness notification (sd_notify(3)
 * protocol) and socket activation (sd_listen_fds_with_names(3) protocol).
 *
 * A small own implementation rather than libsystemd: both protocols are stable and
 * documented (a datagram of "KEY=VALUE" lines to the AF_UNIX socket named by NOTIFY_SOCKET;
 * inherited descriptors from 3 on, described by LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES),
 * they take some 150 lines, and the binary then runs the same in a FROM-scratch container
 * or on a host without systemd, with no library to load.
 *
 * Contract: without NOTIFY_SOCKET every notify_* call is a no-op returning 0; functions
 * return 0 or a negative errno. Not thread-safe: the main thread calls them. */
#ifndef STP_NOTIFY_H
#define STP_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

/* Reads NOTIFY_SOCKET (a path, or "@name" for the abstract namespace) and, when
 * WATCHDOG_PID is absent or ours, WATCHDOG_USEC; unsets them so that no child inherits
 * them. Returns 1 when a socket is set, 0 when not, negative when it is unusable. */
int notify_init(void);
/* 1 when notify_init found a socket. */
int notify_active(void);
/* Sends state, one or more "KEY=VALUE" lines ("READY=1", "STATUS=...\nMAINPID=..."). */
int notify_send(const char *state);
/* printf-style notify_send. */
int notify_sendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The watchdog interval the manager asked for (WATCHDOG_USEC), 0 when none or when there
 * is no socket to feed it through. */
uint64_t notify_watchdog_usec(void);

struct notify_fd {
	int fd;
	char name[256]; /* FileDescriptorName=, "" when the manager gave none */
};

/* The sockets the manager passed (LISTEN_FDS, LISTEN_FDNAMES, when LISTEN_PID is ours):
 * *fds a malloc'd array of *n entries (NULL, 0 when none), each marked close-on-exec.
 * The variables are unset. -EINVAL when they are malformed (err says how). */
int notify_listen_fds(struct notify_fd **fds, size_t *n, char *err, size_t errlen);

/* The parsing behind notify_listen_fds, for tests: pid_s, nfds_s and names_s are the
 * variables' values (names_s may be NULL), self our pid. Fills *fds (fd numbers from 3),
 * *n. */
int notify_parse_listen(const char *pid_s, const char *nfds_s, const char *names_s, long self,
			struct notify_fd **fds, size_t *n, char *err, size_t errlen);

#endif
