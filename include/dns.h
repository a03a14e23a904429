/* dns.h - asynchronous, DNSSEC-validating DNS lookups on a libuv loop (libunbound).
 *
 * Contract: one struct dns per libuv loop (per worker thread); nothing here is thread-safe
 * and every call for a struct dns comes from its loop's thread. libunbound runs inside
 * that loop: its sockets and timers are libuv handles (libunbound's pluggable event API),
 * so no thread and no process is started, and no call here ever blocks the loop.
 * A query's callback always runs later, from the loop, never from inside dns_query,
 * dns_cancel or dns_free. Answers are validated when a trust anchor is given: a bogus
 * answer is reported as such and its records are never handed out. Functions return 0 or
 * a negative errno. The rdata parsers are pure, bounded functions (for tests and fuzzing). */
#ifndef STP_DNS_H
#define STP_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* The record types dns_query takes. */
#define DNS_T_A 1
#define DNS_T_MX 15
#define DNS_T_TXT 16
#define DNS_T_AAAA 28
#define DNS_T_TLSA 52

struct dns;
struct dns_query;

struct dns_opts {
	const char *resolver;     /* the forwarder, queried with RD=1: "IP", "IP:PORT" or
				     "[IPv6]:PORT" (port 53 when absent); NULL: the nameservers
				     of /etc/resolv.conf */
	const char *trust_anchor; /* a file of DS or DNSKEY records in zone-file format
				     (/usr/share/dns/root.key, ldns-keygen's .ds or .key), or
				     NULL: no DNSSEC validation (everything is DNS_INSECURE) */
	uint64_t timeout_ms;      /* per query; 0: 5000 */
};

/* A resolver on loop. The configuration is applied and checked here (the trust anchor
 * file is read): on failure a negative errno (-EINVAL for a bad option or file, -ENOMEM)
 * with a one-line message in err. Nothing is sent until the first query. */
int dns_new(uv_loop_t *loop, const struct dns_opts *o, struct dns **out, char *err,
	    size_t errlen);

/* Cancels every open query (no callback is called afterwards, not even for an answer
 * already received) and closes everything. The close is asynchronous: the memory is
 * given back from close callbacks, so the loop must run afterwards (uv_run until it has
 * no more handles, before uv_loop_close). Safe from inside a dns_cb of the same dns
 * (then no further callback of it runs). NULL is a no-op. */
void dns_free(struct dns *d);

enum dns_status {
	DNS_OK = 0,    /* n >= 1 records */
	DNS_NXDOMAIN,  /* the name (after CNAMEs) does not exist */
	DNS_NODATA,    /* the name exists, without records of the type */
	DNS_SERVFAIL,  /* the resolver gave up (any rcode but NOERROR and NXDOMAIN; bogus) */
	DNS_TIMEOUT,   /* no answer within timeout_ms */
	DNS_ERROR,     /* local failure: out of memory, an answer that cannot be parsed, or
			  records of the type none of which is well-formed */
};
/* DNS_SECURE: the answer (data or denial) was validated from the trust anchor;
 * DNS_INSECURE: no validation (no trust anchor, or the name is outside every anchor's
 * zone, or below a proven insecure delegation) and for every status but OK, NXDOMAIN and
 * NODATA; DNS_BOGUS: validation failed. A bogus answer always has status DNS_SERVFAIL,
 * n == 0 and a reason in why_bogus (like a validating resolver's SERVFAIL). */
enum dns_security { DNS_INSECURE = 0, DNS_SECURE, DNS_BOGUS };

#define DNS_RR_MAX 32        /* records kept per answer; further ones are dropped */
#define DNS_TXT_MAX 4096     /* octets kept of one TXT record */
#define DNS_TLSA_DATA_MAX 64 /* a SHA-512 digest */

/* host: lower case, no trailing dot; "" for the null MX "." (RFC 7505). */
struct dns_mx {
	uint16_t pref;
	char host[256];
};

/* len is the association data's real length. A record with len > DNS_TLSA_DATA_MAX
 * (matching type 0: a whole certificate or public key) keeps only its first
 * DNS_TLSA_DATA_MAX octets in data: it is listed (the RRset exists) but unusable, and
 * callers must treat it so. */
struct dns_tlsa {
	uint8_t usage, selector, mtype;
	uint16_t len;
	uint8_t data[DNS_TLSA_DATA_MAX];
};

struct dns_result {
	enum dns_status status;
	enum dns_security security;
	char why_bogus[160];      /* libunbound's reason when DNS_BOGUS, else "" */
	int rrtype;               /* the type asked */
	size_t n;                 /* records parsed (at most DNS_RR_MAX); 0 unless DNS_OK */
	union {
		struct dns_mx mx[DNS_RR_MAX];       /* sorted by preference (stable) */
		struct sockaddr_storage addr[DNS_RR_MAX]; /* A: sockaddr_in, AAAA:
							     sockaddr_in6; port 0 */
		struct dns_tlsa tlsa[DNS_RR_MAX];
	} u;
	/* TXT: each record's character-strings concatenated, NUL-terminated (a string may
	 * hold NUL octets: txt_len counts them): at most DNS_TXT_MAX octets; a longer record
	 * is cut there and has txt_trunc set. */
	char *txt[DNS_RR_MAX];
	size_t txt_len[DNS_RR_MAX];
	uint8_t txt_trunc[DNS_RR_MAX];
	char canonical[256];      /* the name after CNAMEs (lower case, no trailing dot), ""
				     when there was no CNAME */
	uint32_t ttl;             /* OK: the smallest TTL of the records and CNAMEs used;
				     NXDOMAIN/NODATA: the negative TTL from the SOA (min of its
				     TTL and MINIMUM) or 0; else 0 */
};

/* r (and everything it points to) is valid only during the call. */
typedef void dns_cb(void *arg, const struct dns_result *r);

/* Starts a query for name (a host name: letters, digits, '-', '_', labels of 1 to 63
 * octets, at most 253 octets; one trailing dot allowed) and rrtype (one of DNS_T_*).
 * Returns the query's handle, or NULL with errno set (EINVAL: bad name or type, or the
 * resolver failed to start it; ENOMEM), and then cb is never called. Otherwise cb is
 * called exactly once, later, from the loop, unless the query is cancelled first. The
 * handle is valid until cb returns or dns_cancel is called. */
struct dns_query *dns_query(struct dns *d, const char *name, int rrtype, dns_cb *cb,
			    void *arg);

/* Cancels a query whose callback has not run yet: it never will. Safe from inside any
 * callback of the same dns (cancelling the query whose callback is running is a no-op).
 * NULL is a no-op. */
void dns_cancel(struct dns_query *q);

/* Rdata parsers (wire format as libunbound hands it out: names uncompressed), strict and
 * bounded: 0, or -EINVAL for malformed rdata (nothing useful in *out then).
 * MX: a 16-bit preference and a name ending exactly at len, labels of letters, digits
 * and '-' (not first nor last), or the root alone (the null MX: host ""). */
int dns_parse_mx(const uint8_t *rdata, size_t len, struct dns_mx *out);
/* TXT: one or more character-strings filling rdata exactly. Writes at most cap - 1
 * octets and a NUL to out (out may be NULL when cap is 0) and sets *outlen to the full
 * length, like snprintf: the text was cut when *outlen >= cap. */
int dns_parse_txt(const uint8_t *rdata, size_t len, char *out, size_t cap, size_t *outlen);
/* TLSA: usage, selector, matching type and at least one octet of data (see dns_tlsa). */
int dns_parse_tlsa(const uint8_t *rdata, size_t len, struct dns_tlsa *out);

/* A whole reply packet (compressed names, as libunbound's event API hands it out) for a
 * query of rrtype: fills everything in *out but security and why_bogus (the packet does
 * not carry them), following the CNAME chain from the question's name. 0, or -EINVAL
 * (malformed: status DNS_ERROR) or -ENOMEM; either way dns_result_release(out) afterwards.
 * Exported for the tests and fuzzing. */
int dns_parse_reply(const uint8_t *pkt, size_t len, int rrtype, struct dns_result *out);
/* Frees the TXT buffers of a result filled by dns_parse_reply (n and txt[] reset). */
void dns_result_release(struct dns_result *r);

/* "IP", "IP:PORT", "[IPv6]:PORT" or a bare IPv6 address (dns_opts.resolver) as
 * libunbound's "IP@PORT" (port 53 when absent): 0, or -EINVAL. */
int dns_parse_resolver(const char *s, char *out, size_t cap);
/* Applies o's resolver and trust anchor to a libunbound context as dns_new does (also for a
 * blocking context of tlsrpt.c's thread-pool lookups) and reads the anchor now: 0, or
 * -EINVAL / -ENOMEM with err. */
struct ub_ctx;
int dns_configure_ub(struct ub_ctx *ctx, const struct dns_opts *o, char *err, size_t errlen);

const char *dns_status_name(enum dns_status s);     /* "ok", "nxdomain", "nodata",
						       "servfail", "timeout", "error" */
const char *dns_security_name(enum dns_security s); /* "insecure", "secure", "bogus" */

#endif
