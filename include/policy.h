/* policy.h - the policy table (policy_table = PATH) and "the policy of this session".
 *
 * A table is lines "DESTINATION LEVEL [OPTION...]", '#' comments, first match wins:
 *   DESTINATION  *  |  ADDRESS[/PREFIX]  |  HOST  |  *.DOMAIN      optionally :PORT or :*
 *                (IPv6 in brackets when a port follows: [2001:db8::/32]:25)
 *   LEVEL        none | may | encrypt | fingerprint | verify
 *   OPTION       names=NAME,NAME,*.DOMAIN  (accepted in the certificate; the first is SNI)
 *                sha256=HEX[,HEX]  (SPKI pins, colons allowed; repeatable)
 *                tls=none|starttls|implicit  mode=enforce|testing  min_tls=1.0..1.3  ca=FILE
 * Address rows match the upstream's address; HOST rows match the route's upstream host
 * name (never on a transparent route, which knows only addresses).
 *
 * Contract: no I/O but reading the table file, no libuv, no TLS: a table is parsed into
 * rows, and policy_decide() computes a session's policy from the route and the
 * destination. Functions return 0 or a negative errno; errors are "FILE:LINE: message". */
#ifndef STP_POLICY_H
#define STP_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

enum policy_dest { DEST_ANY, DEST_ADDR, DEST_HOST };

struct policy_row {
	int line;
	enum policy_dest kind;
	struct cfg_cidr net; /* DEST_ADDR */
	char *host;          /* DEST_HOST: lower case; "*.example" matches one more label */
	int port;            /* 0: any port */
	enum cfg_policy level;
	int has_tls, has_mode;
	enum cfg_tls tls;
	enum cfg_mode mode;
	int min_tls;         /* 0: the route's */
	char **names;        /* names= */
	size_t nnames;
	uint8_t (*pins)[32]; /* sha256= */
	size_t npins;
	char *ca;            /* ca= */
	struct tls_ctx *ctx; /* built by config.c when ca or min_tls is set */
};

struct policy_table {
	char *path;
	struct policy_row *rows;
	size_t n;
};

/* Parses path. 0 with *out set, or -EINVAL with every error in errs (-ENOMEM, or the
 * open error). */
int policy_load(const char *path, struct policy_table **out, struct cfg_errors *errs);
void policy_free(struct policy_table *t);

/* The first row matching the destination: its address (dst, or NULL when unknown), the
 * route's upstream host name (host, or NULL on a transparent route) and port. NULL when no
 * row matches. */
const struct policy_row *policy_match(const struct policy_table *t, const struct sockaddr *dst,
				      const char *host, uint16_t port);

/* What a session toward one destination must do. The strings and pins belong to the route
 * or its table (they live as long as the configuration). */
struct session_policy {
	enum cfg_policy level;
	enum cfg_mode mode;
	enum cfg_tls tls;            /* upstream_tls */
	const char *const *names;    /* certificate names accepted (verify); SNI = names[0] */
	size_t nnames;
	const uint8_t (*pins)[32];   /* fingerprint */
	size_t npins;
	struct tls_ctx *ctx;         /* the client context toward the upstream */
	const struct tls_tlsa *tlsa; /* dane (late binding): the MX host's TLSA records */
	size_t ntlsa;
	int row;                     /* the table line that decided, 0: the route's keys */
};

/* The route's own keys, then the first matching row of its table. */
void policy_decide(const struct cfg_route *r, const struct sockaddr *dst, uint16_t port,
		   struct session_policy *out);

/* "route" or "table:LINE", for the log. */
void policy_source(const struct session_policy *p, char *buf, size_t len);

#endif
