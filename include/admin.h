/* admin.h - the admin HTTP listener (admin_listen): GET /metrics (Prometheus text),
 * /healthz (the process runs) and /readyz (it accepts connections; 503 while draining).
 *
 * Contract: runs on the main thread's loop; every request is bounded (4 KiB, 5 s) and
 * answered once with Connection: close. */
#ifndef STP_ADMIN_H
#define STP_ADMIN_H

#include <stddef.h>
#include <uv.h>

struct cfg_addr;

int admin_start(uv_loop_t *loop, const struct cfg_addr *addr, char *err, size_t errlen);
void admin_set_ready(int ready);
void admin_stop(void);

/* The request head the endpoint reads: at most ADMIN_REQ_MAX octets. */
#define ADMIN_REQ_MAX 4096

struct admin_req {
	int status;             /* -EINVAL: the status to answer (400, 405, 414 or 431) */
	const char *method;     /* 0 (and 405): within buf, method_len octets, not NUL-ended */
	size_t method_len;
	const char *path;       /* 0: within buf, path_len octets (the query cut off, may be 0) */
	size_t path_len;
};

/* Parses the first len octets a client sent (no I/O). Only the first ADMIN_REQ_MAX octets
 * count. The request is complete once it holds "\r\n\r\n" or "\n\n"; its first line (up to
 * the first LF, cut at a NUL) is "METHOD SP PATH SP HTTP/1.x", tokens separated by white
 * space, at most 15, 199 and 15 octets (a longer token runs into the next one).
 * Returns -EAGAIN while incomplete and shorter than ADMIN_REQ_MAX; -EINVAL with out->status
 * 431 (ADMIN_REQ_MAX octets, still incomplete), 414 (a first line of 256 octets or more),
 * 400 (fewer than three tokens, or a version not "HTTP/1.") or 405 (a method other than
 * GET); else 0 with method "GET" and the path before its first '?': no white space, CR,
 * LF or NUL in it. Once an answer other than -EAGAIN is given, more octets do not change
 * it. */
int admin_parse_request(const char *buf, size_t len, struct admin_req *out);

#endif
