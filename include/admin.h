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

#endif
