/* late.h - late binding: from a recipient domain to the upstream a session connects to and
 * the policy each candidate must meet (upstream_policy = mta-sts), found asynchronously.
 *
 * Contract: a struct late_res holds what lookups need on one loop for one configuration
 * (a resolver, an MTA-STS manager, the TLS context policy files are fetched with); it is
 * reference-counted so that sessions of an older configuration finish with theirs.
 * late_plan() never blocks: the plan comes through the callback, exactly once and never
 * from inside late_plan, unless cancelled. A plan says either where to connect (MX hosts
 * in preference order with their addresses, or the original destination with the MX
 * name found for it) and which MTA-STS policy applies, or why the recipient cannot be
 * bound (the reply for its RCPT, and an RFC 8460 result when a policy refused it).
 *
 * Rules (RFC 5321 §5.1, RFC 7505, RFC 7672 §2, RFC 8461 §4, §5):
 * - MX records sorted by preference; none (NODATA) means the domain itself; a null MX
 *   ("." alone) refuses mail (556 5.1.10); NXDOMAIN is 550 5.1.2; a DNS failure or a
 *   DNSSEC-bogus answer is 451 4.4.3 (try again);
 * - MTA-STS mode enforce: MX hosts outside the policy's mx patterns are never used; none
 *   left is 450 4.7.5 (result validation-failure). mode testing: every host is used and a
 *   mismatch is reported. No policy (or none to be had): every host, as may;
 * - original destination (transparent route): the MX host whose address it is names it;
 *   no MX of the domain there under enforce is 450 4.7.5;
 * - DANE (levels dane, auto): only with a DNSSEC-validated (secure) MX answer (or secure
 *   denial: the domain itself) are TLSA records looked up, at _PORT._tcp.HOST, for hosts
 *   whose addresses are secure too. A secure TLSA answer makes the host a DANE host; a
 *   secure denial leaves it opportunistic; a bogus or failed TLSA lookup makes the host
 *   unusable (RFC 7672 §2.2.2: never downgraded), and when no host is left the recipient
 *   gets 451 4.7.5 (result dnssec-invalid). Level auto uses MTA-STS only when no host has
 *   TLSA records. */
#ifndef STP_LATE_H
#define STP_LATE_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "dns.h"
#include "mtasts.h"

struct cfg;
struct sts_cache;
struct late_res;
struct late_req;

#define LATE_CAND_MAX 8
#define LATE_HOSTS_MAX 6 /* MX hosts whose addresses are looked up */
#define LATE_TLSA_MAX 8  /* TLSA records kept per MX host */

struct late_cand {
	struct sockaddr_storage addr; /* port set */
	char name[STS_NAME_MAX + 1];  /* the MX host ("" when no name is known) */
	int sts_match;                /* the name is in the policy's mx patterns */
	/* DANE (levels dane and auto): the host's DNSSEC-validated TLSA records */
	int dane;
	size_t ntlsa;
	struct dns_tlsa tlsa[LATE_TLSA_MAX];
};

struct late_plan {
	const char *domain;
	int fail;           /* the recipient cannot be bound: reply answers its RCPT */
	char reply[300];
	const char *result; /* RFC 8460 result type of a policy failure (reported), or NULL */
	char detail[700];
	/* DANE applies (some MX host has DNSSEC-validated TLSA records: those hosts are
	 * authenticated by them, RFC 7672); then MTA-STS is not used (level auto) */
	int dane;
	/* the domain's MTA-STS policy (mode none counts as no policy) */
	int sts;
	enum sts_mode mode;
	char sts_id[STS_ID_MAX + 1];
	const struct sts_policy *policy; /* sts: valid during the callback */
	size_t n;
	struct late_cand c[LATE_CAND_MAX];
};

typedef void late_cb(void *arg, const struct late_plan *p);

/* A new set of resources for cfg on loop (1 reference); cache outlives it. 0 or -errno
 * with err set. */
int late_res_new(uv_loop_t *loop, const struct cfg *cfg, struct sts_cache *cache,
		 struct late_res **out, char *err, size_t errlen);
struct late_res *late_res_ref(struct late_res *r);
/* The last reference cancels what is open and closes the resolver's handles (freed once
 * the loop has run their close callbacks). */
void late_res_unref(struct late_res *r);
uint64_t late_res_generation(const struct late_res *r);

/* level: CFG_POLICY_MTA_STS looks up the policy, another level does not. orig: the original
 * destination (transparent route), or NULL for upstream = mx (port: the MX port). testing:
 * the route's policy_mode = testing (an enforce policy filters nothing, only reports). */
struct late_req *late_plan(struct late_res *res, const char *domain, int level,
			   const struct sockaddr_storage *orig, uint16_t port, int testing,
			   late_cb *cb, void *arg);
void late_cancel(struct late_req *q);

#endif
