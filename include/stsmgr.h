/* stsmgr.h - the MTA-STS policy of a recipient domain (RFC 8461 §3, §5), found on a libuv
 * loop: the _mta-sts TXT record, the policy file over HTTPS, a cache in memory and on disk.
 *
 * Contract: one struct stsmgr per loop (worker) and configuration; it borrows a resolver
 * (dns.h), a client TLS context with the trust store that HTTPS certificates are verified
 * against, and a memory cache (struct sts_cache) that outlives it (kept across reloads).
 * stsmgr_get() never blocks: the answer comes through the callback, exactly once, never
 * from inside stsmgr_get, unless the lookup was cancelled.
 *
 * What a lookup does (RFC 8461 §3.3, §5.1):
 * - a cached policy (memory, else the mta_sts_cache directory) that has not expired and
 *   whose id equals the TXT record's id is used as it is;
 * - a TXT record with another id (or no cached policy) makes the policy file be fetched
 *   from https://mta-sts.DOMAIN/.well-known/mta-sts.txt (certificate valid for that name,
 *   no redirects, 64 KiB, text/plain, 10 s); a valid one replaces the cache entry for
 *   max_age seconds (also on disk, written atomically);
 * - no TXT record, an invalid one, a DNS failure, a failed fetch or an invalid file: a
 *   cached policy that has not expired is used still; without one the domain has no
 *   policy, and a failure to get one is reported (failure: the RFC 8460 result type).
 * Domains are LDH names in lower case (as proto_smtp hands them over). */
#ifndef STP_STSMGR_H
#define STP_STSMGR_H

#include <stdint.h>
#include <uv.h>

#include "mtasts.h"

struct dns;
struct tls_ctx;
struct stsmgr;
struct stsmgr_lookup;

#define STSMGR_CACHE_SIZE 64 /* policies kept in memory per loop */

/* Policies in memory, for one loop: outlives the managers that use it. */
struct sts_cache;
struct sts_cache *sts_cache_new(void);
void sts_cache_free(struct sts_cache *c);

struct stsmgr_opts {
	struct dns *dns;
	struct tls_ctx *tls;     /* a client context with a trust store */
	struct sts_cache *cache;
	const char *dir;         /* mta_sts_cache, or NULL */
	uint16_t port;           /* 443 (mta_sts_port) */
	uint64_t fetch_timeout_ms; /* 0: 10 s */
};

struct stsmgr_answer {
	int found;                      /* a policy applies (mode may still be none) */
	const struct sts_policy *policy; /* found: valid during the callback */
	const char *id;                 /* found: its id */
	int from_cache;                 /* found: the cached policy (not fetched now) */
	const char *failure;            /* NULL, or sts-policy-fetch-error, sts-policy-invalid,
					   sts-webpki-invalid: getting the policy failed (a
					   cached one may still be found) */
	char detail[600];               /* what happened, for the log */
};

typedef void stsmgr_cb(void *arg, const struct stsmgr_answer *a);

int stsmgr_new(uv_loop_t *loop, const struct stsmgr_opts *o, struct stsmgr **out);
/* Cancels the open lookups (their callbacks are not called). */
void stsmgr_free(struct stsmgr *m);
/* NULL when out of memory or the domain is not a lower-case LDH name (cb not called). */
struct stsmgr_lookup *stsmgr_get(struct stsmgr *m, const char *domain, stsmgr_cb *cb, void *arg);
void stsmgr_cancel(struct stsmgr_lookup *l);

/* The cache file format, exported for tests: "KEY: VALUE" header lines (domain, id,
 * fetched, expires: seconds since the epoch), an empty line, then the policy file as it
 * was fetched. stsmgr_file_parse: 0, or -EINVAL (err says why). */
int stsmgr_file_parse(const char *text, size_t len, char *domain, size_t dlen, char *id,
		      int64_t *fetched, int64_t *expires, struct sts_policy *pol, char *err,
		      size_t errlen);

#endif
