/* probe.h - starttls-proxy --probe HOST:PORT: one session toward a server before a policy
 * is enforced on it, and a report instead of a relay: the greeting, whether STARTTLS is
 * offered, the TLS version and cipher, the chain (subject, issuer, names, expiry), the SPKI
 * pin (the value upstream_fingerprint and sha256= take), the verification result as an RFC
 * 8460 result type, and a verdict for each policy level.
 *
 * Contract: the TLS contexts, the policy decision (policy_decide, the route's table) and
 * the certificate checks (tls_conn_check) are the ones a route uses. probe_run returns the
 * process exit status: 0 when the policy that applies (the route's, else verify) would
 * pass, 1 when it would block, 2 when the server is unreachable or does not speak the
 * protocol. */
#ifndef STP_PROBE_H
#define STP_PROBE_H

#include <stdio.h>

struct probe_opts {
	const char *target;   /* HOST:PORT */
	const char *protocol; /* smtp | lmtp | imap | pop3 | tcp, or NULL */
	const char *tls;      /* starttls | implicit, or NULL */
	const char *name;     /* name to verify (and SNI), or NULL: the host */
	const char *ca;       /* trust store, or NULL */
	const char *config;   /* with route: that route's policy and table */
	const char *route;
	int json;
	int timeout_ms;       /* each step; 0: 10 s */
};

int probe_run(const struct probe_opts *o, FILE *out);

#endif
