/* tlsrpt.h - SMTP TLS Reporting (RFC 8460): daily aggregate reports of the proxy's
 * outbound policy evaluations (MTA-STS, DANE, no policy), one per recipient domain and
 * period, written to a directory, mailed and POSTed to the domain's rua addresses, and
 * shared by replicas.
 *
 * Contract: tlsrpt_count() is thread-safe (worker threads call it) and only counts, in
 * memory, under one mutex. Everything else of a struct tlsrpt runs on the loop given to
 * tlsrpt_new (the process's main loop), which owns one uv_timer (unreferenced: it never
 * keeps the loop alive by itself) and never blocks: file I/O, the _smtp._tls TXT lookup,
 * gzip, SMTP submission and HTTPS POSTs run in libuv's thread pool (uv_queue_work), one
 * work item at a time. Functions return 0 or a negative errno; errors of tlsrpt_new come
 * with a one-line message.
 *
 * Periods: interval_s long, aligned to multiples of it since the epoch (with the default
 * of 86400, UTC days as RFC 8460 §4.4 wants). An evaluation counts into the period its
 * tlsrpt_count() call falls in.
 *
 * The directory (tlsrpt_dir), shared by replicas:
 *   DIR/spool/BEGIN-END/DOMAIN/SUBMITTER-PID-RANDOM.json   a process's counts (a partial)
 *   DIR/spool/BEGIN-END/DOMAIN/.lock                       flock(2) of the domain+period
 *   DIR/spool/BEGIN-END/DOMAIN/done                        the report was made
 *   DIR/SUBMITTER!DOMAIN!BEGIN!END[!UNIQUE].json[.gz]      the reports (RFC 8460 §5.3)
 * (BEGIN, END: seconds since the epoch.) A partial is itself a valid RFC 8460 report
 * holding one process's counts; it is written as a temporary file and renamed into place
 * while holding the domain's lock.
 * - At a period's end (+ settle: min(1 s, grace/4)) each process writes its partials of
 *   that period. After the grace delay (grace_ms, default min(interval/10, 60 s)) every
 *   process scans the spool; for each domain of a finished period without a done marker
 *   it takes the lock (blocking flock in the thread pool), and whoever holds it and still
 *   finds no done marker merges every partial (counts summed; policies with equal type,
 *   policy strings and mx hosts merged; failure-details with equal result type,
 *   addresses, host names and reason merged, failed-session-count added), writes the
 *   report (.json and the .json.gz it submits), the done marker, removes the partials
 *   and releases the lock; it then looks up rua and submits, outside the lock. Exactly one
 *   report per domain and period is made however many replicas share DIR, as long as
 *   their partials arrive within the grace delay and DIR supports flock (a local file
 *   system; NFSv4 on Linux).
 * - A partial found next to a done marker (a replica whose partial came after the grace
 *   delay, or a crash between the done marker and the removal) is a late partial: it is
 *   never merged into the report already made; the next scan (the next period end or the
 *   next start of any process) makes a separate report of it, named with a unique-id
 *   suffix (SUBMITTER!DOMAIN!BEGIN!END!UNIQUE.json) and its own report-id, and submits it.
 * - tlsrpt_free() writes the counts of every period in memory, finished or not, as
 *   partials: a replica still running merges them at that period's end, or any process
 *   does at its next start (every start scans the spool: finished periods past their
 *   grace time without a done marker are merged then).
 * - Failed merges are retried at later scans (every grace delay, between 1 s and 60 s). A partial that cannot be read back is renamed .bad-NAME and logged.
 *   Spool directories of periods that ended more than 7 intervals ago and have nothing
 *   left to merge are removed. A report whose submission failed is not retried (it stays
 *   in DIR; the log line says why).
 *
 * Submission (RFC 8460 §3, §5.3): the TXT records at _smtp._tls.DOMAIN are looked up with
 * a private libunbound context per work item (ub_resolve, blocking in the thread pool;
 * resolver and trust_anchor as in dns.h; a bogus answer counts as a failed lookup). No
 * record: the report is only written (result=written). Each mailto: URI gets one message
 * through relay (plain SMTP: EHLO, MAIL FROM:<contact>, RCPT TO, DATA; no STARTTLS and no
 * DKIM signature: the relay is meant to be the local MTA, which signs and delivers), a
 * multipart/report; report-type="tlsrpt" with the Subject, TLS-Report-Domain and
 * TLS-Report-Submitter fields of §5.3.1 and the gzipped report as an
 * application/tlsrpt+gzip attachment in base64. Without relay, mailto: URIs are skipped.
 * Each https: URI gets one POST of the gzipped report (Content-Type
 * application/tlsrpt+gzip) over a blocking socket with wolfSSL through tls.c's memory API
 * (certificate verified against ca for the URI's host, RFC 6125; no redirects followed);
 * any 2xx status is success. Host names (relay, https hosts) are resolved with
 * getaddrinfo. Every network exchange has timeout_ms (default 30 s).
 * One log line per report: event=tlsrpt domain= period=BEGIN/END (RFC 3339) sessions_ok=
 * sessions_failed= rua= result=sent|written|failed file= detail=.
 *
 * The report (RFC 8460 §4.4): organization-name, date-range (RFC 3339 UTC), contact-info,
 * report-id (a msg-id: "BEGIN.RANDOM@SUBMITTER", also used in the Subject), policies[]
 * with policy (policy-type, policy-string and mx-host when not empty, policy-domain),
 * summary and failure-details (when any). An evaluation's additional_info (free text) is
 * reported as failure-reason-code: RFC 8460 defines additional-information as a URI,
 * which the proxy never has. Strings are copied as valid UTF-8 (invalid octets become
 * U+FFFD) of at most TLSRPT_STRING_MAX octets, and escaped in JSON. */
#ifndef STP_TLSRPT_H
#define STP_TLSRPT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define TLSRPT_TXT_MAX 4096        /* one _smtp._tls TXT record (strings concatenated) */
#define TLSRPT_RUA_MAX 8           /* rua URIs kept (further ones are ignored) */
#define TLSRPT_URI_MAX 511         /* octets of one rua URI */
#define TLSRPT_DOMAINS_MAX 10000   /* domains per period and process; more are dropped
				      (counted, logged at the period's end) */
#define TLSRPT_POLICIES_MAX 16     /* policies[] of one domain; evaluations of further
				      policies are dropped (counted) */
#define TLSRPT_FAILURES_MAX 64     /* failure-details of one policy; further ones are
				      counted in the summary only */
#define TLSRPT_STRINGS_MAX 128     /* policy-string and mx-host entries kept per policy */
#define TLSRPT_STRING_MAX 1024     /* octets kept of one string */
#define TLSRPT_REPORT_MAX (16 << 20) /* a report or partial read back */

struct tlsrpt;

struct tlsrpt_opts {
	const char *dir;          /* tlsrpt_dir: reports and the spool live here (required;
				     made when missing) */
	const char *org;          /* organization-name (NULL: submitter) */
	const char *submitter;    /* the proxy's host name (helo_name): file names, Subject,
				     TLS-Report-Submitter, report-id (required: letters,
				     digits, '-', '_', '.') */
	const char *contact;      /* contact-info and MAIL FROM / From (NULL:
				     postmaster@SUBMITTER) */
	uint64_t interval_s;      /* report period; 0: 86400 */
	const char *relay;        /* "HOST:PORT" (SMTP relay for mailto: rua), or NULL */
	const char *resolver;     /* as dns_opts.resolver (NULL: /etc/resolv.conf) */
	const char *trust_anchor; /* as dns_opts.trust_anchor (NULL: no validation) */
	const char *ca;           /* trust store for https: rua (NULL:
				     /etc/ssl/certs/ca-certificates.crt) */
	const char *helo;         /* EHLO name toward the relay (NULL: submitter) */
	uint64_t grace_ms;        /* merge delay after a period's end; 0: min(interval/10,
				     60 s) */
	uint64_t timeout_ms;      /* each SMTP or HTTPS exchange; 0: 30000 */
	unsigned hold_lock_ms;    /* tests only: sleep this long while holding a merge lock
				     (widens the window in which replicas race); 0 */
};

enum tlsrpt_policy { TLSRPT_STS, TLSRPT_TLSA, TLSRPT_NONE /* no-policy-found */ };

/* One policy evaluation = one session toward one MX (RFC 8460 counts sessions). */
struct tlsrpt_eval {
	const char *domain;       /* policy-domain (the recipient domain); folded to lower
				     case, a trailing dot dropped; not a host name: ignored */
	enum tlsrpt_policy type;
	const char *const *policy_strings; /* sts: the policy file's lines; tlsa: the TLSA */
	size_t npolicy_strings;            /* records in presentation format; none: 0 */
	const char *const *mx_hosts;       /* sts: the policy's mx patterns */
	size_t nmx_hosts;
	int success;
	const char *result_type;  /* failure: an RFC 8460 result type ("certificate-host-
				     mismatch", "starttls-not-supported", "validation-failure",
				     "sts-policy-fetch-error", "sts-policy-invalid",
				     "sts-webpki-invalid", "tlsa-invalid", "dnssec-invalid",
				     "dane-required", "certificate-expired",
				     "certificate-not-trusted", "tls-handshake-failure");
				     NULL: "validation-failure" */
	const char *sending_ip;   /* the proxy's source address of that session, or NULL */
	const char *receiving_mx_hostname, *receiving_ip, *receiving_mx_helo; /* or NULL */
	const char *additional_info; /* free text (failure-reason-code), or NULL; keep it
					free of per-session details, or failure-details will
					not aggregate */
};

/* Makes DIR and DIR/spool, checks the options (submitter, relay, resolver, trust anchor,
 * ca) and schedules the first spool scan (at once). -EINVAL or -ENOMEM with err. */
int tlsrpt_new(uv_loop_t *loop, const struct tlsrpt_opts *o, struct tlsrpt **out, char *err,
	       size_t errlen);
/* Thread-safe: counts one evaluation into the current period, in memory. NULL r is a
 * no-op. */
void tlsrpt_count(struct tlsrpt *r, const struct tlsrpt_eval *e);
/* Stops the timer and writes every period still in memory to the spool (see above: an
 * unfinished period's report is not made here). A work item already running finishes
 * first (its remaining submissions are skipped). Asynchronous like dns_free: the memory
 * is given back from the loop, which must run afterwards until it has nothing left. NULL
 * is a no-op. */
void tlsrpt_free(struct tlsrpt *r);

/* ------------------------------------------------------------ pure parts (tests, fuzz) */

/* The TXT records at _smtp._tls.DOMAIN (each one's strings concatenated, lens[i] octets):
 * records that do not start with "v=TLSRPTv1" followed by ";" (spaces or tabs before it
 * allowed) or the end are skipped; exactly one must remain (RFC 8460 §3). Its fields:
 * "rua=" (case-sensitive, required, once) with URIs separated by "," (spaces or tabs
 * around it); extensions NAME=VALUE (NAME: a letter or digit, then up to 31 letters,
 * digits, "_", "-", "."; VALUE: 1* of %x21-3A / %x3C / %x3E-7E) are ignored; fields are
 * separated by *WSP ";" *WSP, one trailing ";" allowed. A URI is RFC 3986 characters
 * without a raw "," "!" or ";" (percent-encoded instead), with a scheme; mailto:ADDRESS
 * (one address, local@domain after percent-decoding; ?hfields allowed and ignored) and
 * https://HOST[:PORT][/PATH] (no userinfo) are kept, schemes folded to lower case, other
 * schemes ignored, at most TLSRPT_RUA_MAX (further ones ignored), each at most
 * TLSRPT_URI_MAX octets. 0 with *nrua >= 1; -ENOENT when no record starts with
 * v=TLSRPTv1 (the domain does not take reports); -EINVAL with a one-line err for two
 * records, a record longer than TLSRPT_TXT_MAX, a syntax error, a malformed URI, or no
 * mailto: or https: URI. */
int tlsrpt_parse_txt(const char *const *records, const size_t *lens, size_t n,
		     char rua[][512], size_t *nrua, char *err, size_t errlen);

/* Aggregated counts of one domain and period: what a report's policies[] holds. Build it
 * with tlsrpt_domain_init/add/merge (which apply the limits above and copy every string
 * as valid UTF-8); all strings are owned. */
struct tlsrpt_failure {
	char *result_type;        /* never NULL */
	char *sending_ip, *receiving_mx_hostname, *receiving_mx_helo, *receiving_ip;
	char *reason;             /* failure-reason-code */
	uint64_t count;           /* failed-session-count */
};

struct tlsrpt_policy_result {
	enum tlsrpt_policy type;
	char **strings;           /* policy-string */
	size_t nstrings;
	char **mx_hosts;          /* mx-host */
	size_t nmx_hosts;
	uint64_t ok, failed;      /* summary */
	struct tlsrpt_failure *failures;
	size_t nfailures;
};

struct tlsrpt_domain {
	char domain[254];         /* policy-domain, lower case */
	struct tlsrpt_policy_result *policies;
	size_t npolicies;
	uint64_t dropped;         /* evaluations not counted (TLSRPT_POLICIES_MAX) */
};

/* domain: a host name (letters, digits, '-', '_'; labels of 1 to 63; at most 253 octets;
 * one trailing dot dropped), kept in lower case. 0 or -EINVAL. */
int tlsrpt_domain_init(struct tlsrpt_domain *d, const char *domain);
/* Counts e (its domain is not looked at). 0, or -ENOMEM (the counts may be incomplete). */
int tlsrpt_domain_add(struct tlsrpt_domain *d, const struct tlsrpt_eval *e);
/* Adds every count of from into into (same rules as add; the domains are not compared).
 * 0 or -ENOMEM (into may then hold part of from). */
int tlsrpt_domain_merge(struct tlsrpt_domain *into, const struct tlsrpt_domain *from);
void tlsrpt_domain_free(struct tlsrpt_domain *d); /* then empty, and reusable after init */

struct tlsrpt_report_meta {
	const char *org;          /* organization-name */
	const char *contact;      /* contact-info */
	const char *report_id;
	int64_t begin, end;       /* date-range, seconds since the epoch */
};

/* The RFC 8460 report of d (pretty-printed JSON, valid UTF-8, ending in a newline), in a
 * malloc'd NUL-terminated buffer of *len octets. 0, -EINVAL (a time out of range), or
 * -ENOMEM. */
int tlsrpt_report_json(const struct tlsrpt_report_meta *m, const struct tlsrpt_domain *d,
		       char **out, size_t *len);

/* Reads a report back (a partial, or any RFC 8460 report with one policy-domain): strict
 * JSON (RFC 8259, UTF-8, nesting at most 16 deep), date-range as
 * "YYYY-MM-DDTHH:MM:SSZ", every policy's policy-domain the same host name (the domain of
 * out; "" when there is no policy), known policy types, counts as non-negative integers;
 * unknown members are ignored. 0 with out initialized and filled (free it), or -EINVAL
 * with a one-line err (out empty), or -ENOMEM. */
int tlsrpt_report_parse(const char *json, size_t len, struct tlsrpt_domain *out,
			int64_t *begin, int64_t *end, char *err, size_t errlen);

/* A fresh report-id: "BEGIN.RANDOM@SUBMITTER" (RANDOM: 16 hex digits from getrandom), a
 * valid msg-id body (RFC 5322 id-left "@" id-right). */
void tlsrpt_make_report_id(const char *submitter, int64_t begin, char *out, size_t cap);

/* "2026-12-02T00:00:00Z" (cap >= 21); 0 or -EINVAL for a time gmtime cannot take. */
int tlsrpt_format_time(int64_t t, char *out, size_t cap);

const char *tlsrpt_policy_name(enum tlsrpt_policy p); /* "sts", "tlsa", "no-policy-found" */

#endif
