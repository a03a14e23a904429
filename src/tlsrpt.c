/* tlsrpt.c - SMTP TLS Reporting (RFC 8460): counting, the spool replicas share, reports
 * and their submission (see tlsrpt.h). */
#include "tlsrpt.h"

#include "config.h"
#include "dns.h"
#include "mtasts.h"
#include "fetch.h"
#include "log.h"
#include "tls.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unbound.h>
#include <unistd.h>
#include <zlib.h>

#define DEFAULT_INTERVAL_S 86400
#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_CA "/etc/ssl/certs/ca-certificates.crt"
#define GRACE_MAX_MS 60000
#define RETRY_MAX_MS 60000
#define TIMER_MAX_MS 300000  /* the timer never sleeps longer: clock changes are noticed */
#define KEEP_PERIODS 7       /* spool directories kept this many intervals after the end */
#define DIR_MAX 3000         /* tlsrpt_dir's length */
#define NODES_MAX 200000     /* JSON values of one report read back */
#define DEPTH_MAX 16
#define BUCKETS 1024
#define HTTP_BODY_MAX 65536

/* ================================================================ small helpers */

static int is_alpha(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static int is_alnum(int c)
{
	return is_alpha(c) || is_digit(c);
}

static int is_wsp(int c)
{
	return c == ' ' || c == '\t';
}

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

/* n lower-case hex digits of randomness and a NUL. */
static void rand_hex(char *out, size_t n)
{
	uint8_t b[32];
	size_t k = (n + 1) / 2;
	if (k > sizeof b)
		k = sizeof b;
	if (getrandom(b, k, 0) != (ssize_t)k) {
		/* never expected; still distinct per process and call */
		static uint64_t ctr;
		uint64_t x = (uint64_t)wall_ms() ^ ((uint64_t)getpid() << 32) ^
			     __atomic_add_fetch(&ctr, 0x9e3779b97f4a7c15ULL, __ATOMIC_RELAXED);
		for (size_t i = 0; i < k; i++, x = x * 6364136223846793005ULL + 1442695040888963407ULL)
			b[i] = (uint8_t)(x >> 56);
	}
	static const char hex[] = "0123456789abcdef";
	size_t i;
	for (i = 0; i < n && i / 2 < k; i++)
		out[i] = hex[(b[i / 2] >> (i % 2 ? 0 : 4)) & 15];
	out[i] = '\0';
}

/* Octets of the valid UTF-8 sequence at s (n available, n >= 1), or 0. */
static size_t utf8_seq(const uint8_t *s, size_t n)
{
	uint8_t c = s[0], lo = 0x80, hi = 0xbf;
	size_t k;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		k = 2;
	else if (c == 0xe0)
		k = 3, lo = 0xa0;
	else if (c == 0xed)
		k = 3, hi = 0x9f;
	else if (c >= 0xe1 && c <= 0xef)
		k = 3;
	else if (c == 0xf0)
		k = 4, lo = 0x90;
	else if (c >= 0xf1 && c <= 0xf3)
		k = 4;
	else if (c == 0xf4)
		k = 4, hi = 0x8f;
	else
		return 0;
	if (n < k || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < k; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return k;
}

/* A copy of s as valid UTF-8 (an invalid octet becomes U+FFFD) of at most
 * TLSRPT_STRING_MAX octets, cut at a character boundary. NULL for NULL; NULL with *oom
 * set when out of memory. */
static char *ustrdup(const char *s, int *oom)
{
	if (!s)
		return NULL;
	size_t n = strlen(s), cap = n * 3 < TLSRPT_STRING_MAX ? n * 3 : TLSRPT_STRING_MAX;
	char *o = malloc(cap + 1);
	if (!o) {
		*oom = 1;
		return NULL;
	}
	size_t i = 0, len = 0;
	while (i < n) {
		size_t k = utf8_seq((const uint8_t *)s + i, n - i);
		const char *src = k ? s + i : "\xef\xbf\xbd";
		size_t w = k ? k : 3;
		if (len + w > cap)
			break;
		memcpy(o + len, src, w);
		len += w;
		i += k ? k : 1;
	}
	o[len] = '\0';
	return o;
}

/* A host name into out (lower case, no trailing dot): 0 or -EINVAL. */
static int domain_norm(const char *in, char out[254])
{
	size_t n = strlen(in), lab = 0;
	if (n && in[n - 1] == '.')
		n--;
	if (n == 0 || n > 253)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)in[i];
		if (c == '.') {
			if (lab == 0)
				return -EINVAL;
			lab = 0;
		} else if (!is_alnum(c) && c != '-' && c != '_') {
			return -EINVAL;
		} else if (++lab > 63) {
			return -EINVAL;
		}
		out[i] = (char)lower(c);
	}
	if (lab == 0)
		return -EINVAL;
	out[n] = '\0';
	return 0;
}

int tlsrpt_format_time(int64_t t, char *out, size_t cap)
{
	struct tm tm;
	time_t tt = (time_t)t;
	if (cap < 21 || t < 0 || t > 253402300799LL || !gmtime_r(&tt, &tm)) {
		if (cap)
			out[0] = '\0';
		return -EINVAL;
	}
	snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return 0;
}

/* "YYYY-MM-DDTHH:MM:SSZ", exactly: 0 or -EINVAL. */
static int parse_time(const char *s, int64_t *t)
{
	static const char pat[] = "dddd-dd-ddTdd:dd:ddZ";
	if (strlen(s) != sizeof pat - 1)
		return -EINVAL;
	for (size_t i = 0; pat[i]; i++)
		if (pat[i] == 'd' ? !is_digit((unsigned char)s[i]) : s[i] != pat[i])
			return -EINVAL;
	struct tm tm = { 0 };
	tm.tm_year = atoi(s) - 1900;
	tm.tm_mon = atoi(s + 5) - 1;
	tm.tm_mday = atoi(s + 8);
	tm.tm_hour = atoi(s + 11);
	tm.tm_min = atoi(s + 14);
	tm.tm_sec = atoi(s + 17);
	time_t tt = timegm(&tm);
	char back[32];
	if (tt == (time_t)-1 || tlsrpt_format_time((int64_t)tt, back, sizeof back) < 0 ||
	    strcmp(back, s) != 0)
		return -EINVAL; /* out of range, or not a real date (Feb 30, 24:00, 60 s) */
	*t = (int64_t)tt;
	return 0;
}

const char *tlsrpt_policy_name(enum tlsrpt_policy p)
{
	switch (p) {
	case TLSRPT_STS: return "sts";
	case TLSRPT_TLSA: return "tlsa";
	case TLSRPT_NONE: return "no-policy-found";
	}
	return "?";
}

void tlsrpt_make_report_id(const char *submitter, int64_t begin, char *out, size_t cap)
{
	char rnd[17];
	rand_hex(rnd, 16);
	snprintf(out, cap, "%" PRId64 ".%s@%s", begin, rnd, submitter);
}

/* ================================================================ aggregation */

static void strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void failure_free(struct tlsrpt_failure *f)
{
	free(f->result_type);
	free(f->sending_ip);
	free(f->receiving_mx_hostname);
	free(f->receiving_mx_helo);
	free(f->receiving_ip);
	free(f->reason);
	memset(f, 0, sizeof *f);
}

static void policy_free(struct tlsrpt_policy_result *p)
{
	strv_free(p->strings, p->nstrings);
	strv_free(p->mx_hosts, p->nmx_hosts);
	for (size_t i = 0; i < p->nfailures; i++)
		failure_free(&p->failures[i]);
	free(p->failures);
	memset(p, 0, sizeof *p);
}

int tlsrpt_domain_init(struct tlsrpt_domain *d, const char *domain)
{
	memset(d, 0, sizeof *d);
	if (!domain || domain_norm(domain, d->domain) < 0) {
		d->domain[0] = '\0';
		return -EINVAL;
	}
	return 0;
}

void tlsrpt_domain_free(struct tlsrpt_domain *d)
{
	for (size_t i = 0; i < d->npolicies; i++)
		policy_free(&d->policies[i]);
	free(d->policies);
	d->policies = NULL;
	d->npolicies = 0;
	d->dropped = 0;
}

static int streq(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static int strv_equal(char *const *a, size_t na, char *const *b, size_t nb)
{
	if (na != nb)
		return 0;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return 0;
	return 1;
}

static int failure_same(const struct tlsrpt_failure *a, const struct tlsrpt_failure *b)
{
	return streq(a->result_type, b->result_type) && streq(a->sending_ip, b->sending_ip) &&
	       streq(a->receiving_mx_hostname, b->receiving_mx_hostname) &&
	       streq(a->receiving_mx_helo, b->receiving_mx_helo) &&
	       streq(a->receiving_ip, b->receiving_ip) && streq(a->reason, b->reason);
}

/* Copies of n strings (at most TLSRPT_STRINGS_MAX kept; NULL entries become ""). */
static int strv_copy(const char *const *in, size_t n, char ***out, size_t *nout)
{
	*out = NULL;
	*nout = 0;
	if (n > TLSRPT_STRINGS_MAX)
		n = TLSRPT_STRINGS_MAX;
	if (n == 0 || !in)
		return 0;
	char **v = calloc(n, sizeof *v);
	if (!v)
		return -ENOMEM;
	int oom = 0;
	for (size_t i = 0; i < n && !oom; i++)
		v[i] = ustrdup(in[i] ? in[i] : "", &oom);
	if (oom) {
		strv_free(v, n);
		return -ENOMEM;
	}
	*out = v;
	*nout = n;
	return 0;
}

/* Adds a policy's counts to d: the policy (type, strings, mx hosts) is found among d's or
 * appended (TLSRPT_POLICIES_MAX: the counts are dropped), then ok, failed and the
 * failure-details (their strings copied; their counts added) are added. */
static int add_counts(struct tlsrpt_domain *d, enum tlsrpt_policy type,
		      const char *const *strings, size_t nstrings, const char *const *mx,
		      size_t nmx, uint64_t ok, uint64_t failed, const struct tlsrpt_failure *fails,
		      size_t nfails)
{
	struct tlsrpt_policy_result cand = { .type = type };
	if (strv_copy(strings, nstrings, &cand.strings, &cand.nstrings) < 0 ||
	    strv_copy(mx, nmx, &cand.mx_hosts, &cand.nmx_hosts) < 0) {
		policy_free(&cand);
		return -ENOMEM;
	}
	struct tlsrpt_policy_result *p = NULL;
	for (size_t i = 0; i < d->npolicies && !p; i++) {
		struct tlsrpt_policy_result *q = &d->policies[i];
		if (q->type == cand.type && strv_equal(q->strings, q->nstrings, cand.strings,
						       cand.nstrings) &&
		    strv_equal(q->mx_hosts, q->nmx_hosts, cand.mx_hosts, cand.nmx_hosts))
			p = q;
	}
	if (p) {
		policy_free(&cand);
	} else if (d->npolicies >= TLSRPT_POLICIES_MAX) {
		policy_free(&cand);
		d->dropped = sat_add(d->dropped, sat_add(ok, failed));
		return 0;
	} else {
		struct tlsrpt_policy_result *np =
			realloc(d->policies, (d->npolicies + 1) * sizeof *np);
		if (!np) {
			policy_free(&cand);
			return -ENOMEM;
		}
		d->policies = np;
		p = &np[d->npolicies++];
		*p = cand;
	}
	p->ok = sat_add(p->ok, ok);
	p->failed = sat_add(p->failed, failed);
	for (size_t i = 0; i < nfails; i++) {
		const struct tlsrpt_failure *in = &fails[i];
		int oom = 0;
		struct tlsrpt_failure f = {
			.result_type = ustrdup(in->result_type ? in->result_type : "validation-failure",
					       &oom),
			.sending_ip = ustrdup(in->sending_ip, &oom),
			.receiving_mx_hostname = ustrdup(in->receiving_mx_hostname, &oom),
			.receiving_mx_helo = ustrdup(in->receiving_mx_helo, &oom),
			.receiving_ip = ustrdup(in->receiving_ip, &oom),
			.reason = ustrdup(in->reason, &oom),
			.count = in->count,
		};
		if (oom) {
			failure_free(&f);
			return -ENOMEM;
		}
		struct tlsrpt_failure *have = NULL;
		for (size_t k = 0; k < p->nfailures && !have; k++)
			if (failure_same(&p->failures[k], &f))
				have = &p->failures[k];
		if (have) {
			have->count = sat_add(have->count, f.count);
			failure_free(&f);
		} else if (p->nfailures >= TLSRPT_FAILURES_MAX) {
			failure_free(&f); /* counted in the summary only */
		} else {
			struct tlsrpt_failure *nf =
				realloc(p->failures, (p->nfailures + 1) * sizeof *nf);
			if (!nf) {
				failure_free(&f);
				return -ENOMEM;
			}
			p->failures = nf;
			nf[p->nfailures++] = f;
		}
	}
	return 0;
}

int tlsrpt_domain_add(struct tlsrpt_domain *d, const struct tlsrpt_eval *e)
{
	struct tlsrpt_failure f = {
		.result_type = (char *)e->result_type,
		.sending_ip = (char *)e->sending_ip,
		.receiving_mx_hostname = (char *)e->receiving_mx_hostname,
		.receiving_mx_helo = (char *)e->receiving_mx_helo,
		.receiving_ip = (char *)e->receiving_ip,
		.reason = (char *)e->additional_info,
		.count = 1,
	};
	enum tlsrpt_policy type = e->type;
	if (type != TLSRPT_STS && type != TLSRPT_TLSA)
		type = TLSRPT_NONE;
	return add_counts(d, type, e->policy_strings, e->npolicy_strings, e->mx_hosts,
			  e->nmx_hosts, e->success ? 1 : 0, e->success ? 0 : 1, &f,
			  e->success ? 0 : 1);
}

int tlsrpt_domain_merge(struct tlsrpt_domain *into, const struct tlsrpt_domain *from)
{
	into->dropped = sat_add(into->dropped, from->dropped);
	for (size_t i = 0; i < from->npolicies; i++) {
		const struct tlsrpt_policy_result *p = &from->policies[i];
		int rc = add_counts(into, p->type, (const char *const *)p->strings, p->nstrings,
				    (const char *const *)p->mx_hosts, p->nmx_hosts, p->ok, p->failed,
				    p->failures, p->nfailures);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* ================================================================ JSON writer */

struct jw {
	char *p;
	size_t len, cap;
	int oom;
	int depth;
	int first[DEPTH_MAX + 2];
};

static void jw_put(struct jw *w, const char *s, size_t n)
{
	if (w->oom)
		return;
	if (w->len + n + 1 > w->cap) {
		size_t cap = w->cap ? w->cap : 1024;
		while (cap < w->len + n + 1)
			cap *= 2;
		char *np = realloc(w->p, cap);
		if (!np) {
			w->oom = 1;
			return;
		}
		w->p = np;
		w->cap = cap;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
	w->p[w->len] = '\0';
}

static void jw_puts(struct jw *w, const char *s)
{
	jw_put(w, s, strlen(s));
}

/* A JSON string: escaped, valid UTF-8 (an invalid octet becomes \ufffd). */
static void jw_str(struct jw *w, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	jw_put(w, "\"", 1);
	size_t n = strlen(s), i = 0;
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\', esc[1] = (char)c;
			jw_put(w, esc, 2);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			const char *short_esc = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t"
					      : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
			if (short_esc) {
				jw_put(w, short_esc, 2);
			} else {
				memcpy(esc, "\\u00", 4);
				esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
				jw_put(w, esc, 6);
			}
			i++;
		} else if (c < 0x80) {
			size_t k = i;
			while (k < n && (unsigned char)s[k] >= 0x20 && (unsigned char)s[k] < 0x7f &&
			       s[k] != '"' && s[k] != '\\')
				k++;
			jw_put(w, s + i, k - i);
			i = k;
		} else {
			size_t k = utf8_seq((const uint8_t *)s + i, n - i);
			if (k) {
				jw_put(w, s + i, k);
				i += k;
			} else {
				jw_put(w, "\\ufffd", 6);
				i++;
			}
		}
	}
	jw_put(w, "\"", 1);
}

static void jw_newline(struct jw *w)
{
	static const char spaces[] = "                                        ";
	jw_put(w, "\n", 1);
	jw_put(w, spaces, (size_t)(2 * w->depth) < sizeof spaces - 1 ? (size_t)(2 * w->depth)
								   : sizeof spaces - 1);
}

/* Before a member or an element: the comma, a new line and the indentation. */
static void jw_sep(struct jw *w)
{
	if (!w->first[w->depth])
		jw_put(w, ",", 1);
	w->first[w->depth] = 0;
	jw_newline(w);
}

static void jw_key(struct jw *w, const char *key)
{
	jw_sep(w);
	jw_str(w, key);
	jw_put(w, ": ", 2);
}

static void jw_open(struct jw *w, const char *c)
{
	jw_puts(w, c);
	w->depth++;
	w->first[w->depth] = 1;
}

static void jw_close(struct jw *w, const char *c)
{
	int empty = w->first[w->depth];
	w->depth--;
	if (!empty)
		jw_newline(w);
	jw_puts(w, c);
}

static void jw_member_str(struct jw *w, const char *key, const char *v)
{
	if (!v)
		return;
	jw_key(w, key);
	jw_str(w, v);
}

static void jw_member_u64(struct jw *w, const char *key, uint64_t v)
{
	char num[24];
	jw_key(w, key);
	snprintf(num, sizeof num, "%" PRIu64, v);
	jw_puts(w, num);
}

static void jw_member_strv(struct jw *w, const char *key, char *const *v, size_t n)
{
	if (n == 0)
		return;
	jw_key(w, key);
	jw_open(w, "[");
	for (size_t i = 0; i < n; i++) {
		jw_sep(w);
		jw_str(w, v[i]);
	}
	jw_close(w, "]");
}

int tlsrpt_report_json(const struct tlsrpt_report_meta *m, const struct tlsrpt_domain *d,
		       char **out, size_t *len)
{
	char start[32], end[32];
	*out = NULL;
	*len = 0;
	if (tlsrpt_format_time(m->begin, start, sizeof start) < 0 ||
	    tlsrpt_format_time(m->end, end, sizeof end) < 0)
		return -EINVAL;
	struct jw w = { 0 };
	jw_open(&w, "{");
	jw_member_str(&w, "organization-name", m->org ? m->org : "");
	jw_key(&w, "date-range");
	jw_open(&w, "{");
	jw_member_str(&w, "start-datetime", start);
	jw_member_str(&w, "end-datetime", end);
	jw_close(&w, "}");
	jw_member_str(&w, "contact-info", m->contact ? m->contact : "");
	jw_member_str(&w, "report-id", m->report_id ? m->report_id : "");
	jw_key(&w, "policies");
	jw_open(&w, "[");
	for (size_t i = 0; i < d->npolicies; i++) {
		const struct tlsrpt_policy_result *p = &d->policies[i];
		jw_sep(&w);
		jw_open(&w, "{");
		jw_key(&w, "policy");
		jw_open(&w, "{");
		jw_member_str(&w, "policy-type", tlsrpt_policy_name(p->type));
		jw_member_strv(&w, "policy-string", p->strings, p->nstrings);
		jw_member_str(&w, "policy-domain", d->domain);
		jw_member_strv(&w, "mx-host", p->mx_hosts, p->nmx_hosts);
		jw_close(&w, "}");
		jw_key(&w, "summary");
		jw_open(&w, "{");
		jw_member_u64(&w, "total-successful-session-count", p->ok);
		jw_member_u64(&w, "total-failure-session-count", p->failed);
		jw_close(&w, "}");
		if (p->nfailures) {
			jw_key(&w, "failure-details");
			jw_open(&w, "[");
			for (size_t k = 0; k < p->nfailures; k++) {
				const struct tlsrpt_failure *f = &p->failures[k];
				jw_sep(&w);
				jw_open(&w, "{");
				jw_member_str(&w, "result-type", f->result_type ? f->result_type
									  : "validation-failure");
				jw_member_str(&w, "sending-mta-ip", f->sending_ip);
				jw_member_str(&w, "receiving-mx-hostname", f->receiving_mx_hostname);
				jw_member_str(&w, "receiving-mx-helo", f->receiving_mx_helo);
				jw_member_str(&w, "receiving-ip", f->receiving_ip);
				jw_member_u64(&w, "failed-session-count", f->count);
				jw_member_str(&w, "failure-reason-code", f->reason);
				jw_close(&w, "}");
			}
			jw_close(&w, "]");
		}
		jw_close(&w, "}");
	}
	jw_close(&w, "]");
	jw_close(&w, "}");
	jw_put(&w, "\n", 1);
	if (w.oom) {
		free(w.p);
		return -ENOMEM;
	}
	*out = w.p;
	*len = w.len;
	return 0;
}

/* ================================================================ JSON reader */

enum { JV_NULL, JV_TRUE, JV_FALSE, JV_NUM, JV_STR, JV_ARR, JV_OBJ };

struct jv {
	int t;
	char *s;      /* JV_STR: decoded, NUL-terminated (never holds a NUL) */
	uint64_t u;   /* JV_NUM with is_uint */
	int is_uint;
	struct jv *v; /* JV_ARR, JV_OBJ */
	char **k;     /* JV_OBJ keys */
	size_t n;
};

struct jp {
	const char *s;
	size_t len, i;
	int depth;
	size_t nodes;
	int oom;
	char err[120];
};

static void jv_free(struct jv *v)
{
	free(v->s);
	for (size_t i = 0; i < v->n; i++) {
		jv_free(&v->v[i]);
		if (v->k)
			free(v->k[i]);
	}
	free(v->v);
	free(v->k);
	memset(v, 0, sizeof *v);
}

static int jp_fail(struct jp *p, const char *what)
{
	if (!p->err[0])
		snprintf(p->err, sizeof p->err, "JSON: %s at offset %zu", what, p->i);
	return -1;
}

static void jp_ws(struct jp *p)
{
	while (p->i < p->len && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
				 p->s[p->i] == '\r'))
		p->i++;
}

static int hexval(int c)
{
	return is_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
				 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
}

static int jp_hex4(struct jp *p, unsigned *cp)
{
	if (p->len - p->i < 4)
		return jp_fail(p, "short \\u escape");
	unsigned x = 0;
	for (int k = 0; k < 4; k++) {
		int h = hexval((unsigned char)p->s[p->i + (size_t)k]);
		if (h < 0)
			return jp_fail(p, "bad \\u escape");
		x = x * 16 + (unsigned)h;
	}
	p->i += 4;
	*cp = x;
	return 0;
}

static int jp_string(struct jp *p, char **out)
{
	/* p->s[p->i] == '"' */
	p->i++;
	size_t cap = 32, n = 0;
	char *b = malloc(cap);
	if (!b) {
		p->oom = 1;
		return -1;
	}
	for (;;) {
		if (p->i >= p->len) {
			free(b);
			return jp_fail(p, "unterminated string");
		}
		if (n + 5 > cap) {
			char *nb = realloc(b, cap *= 2);
			if (!nb) {
				free(b);
				p->oom = 1;
				return -1;
			}
			b = nb;
		}
		unsigned char c = (unsigned char)p->s[p->i];
		if (c == '"') {
			p->i++;
			break;
		}
		if (c < 0x20) {
			free(b);
			return jp_fail(p, "control character in a string");
		}
		if (c >= 0x80) {
			size_t k = utf8_seq((const uint8_t *)p->s + p->i, p->len - p->i);
			if (!k) {
				free(b);
				return jp_fail(p, "invalid UTF-8");
			}
			memcpy(b + n, p->s + p->i, k);
			n += k;
			p->i += k;
			continue;
		}
		if (c != '\\') {
			b[n++] = (char)c;
			p->i++;
			continue;
		}
		if (++p->i >= p->len) {
			free(b);
			return jp_fail(p, "unterminated string");
		}
		c = (unsigned char)p->s[p->i++];
		unsigned cp;
		switch (c) {
		case '"': case '\\': case '/': b[n++] = (char)c; continue;
		case 'b': b[n++] = '\b'; continue;
		case 'f': b[n++] = '\f'; continue;
		case 'n': b[n++] = '\n'; continue;
		case 'r': b[n++] = '\r'; continue;
		case 't': b[n++] = '\t'; continue;
		case 'u': break;
		default: free(b); return jp_fail(p, "bad escape");
		}
		if (jp_hex4(p, &cp) < 0) {
			free(b);
			return -1;
		}
		if (cp >= 0xdc00 && cp <= 0xdfff) {
			free(b);
			return jp_fail(p, "lone low surrogate");
		}
		if (cp >= 0xd800 && cp <= 0xdbff) {
			unsigned lo;
			if (p->len - p->i < 2 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') {
				free(b);
				return jp_fail(p, "lone high surrogate");
			}
			p->i += 2;
			if (jp_hex4(p, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff) {
				free(b);
				return jp_fail(p, "bad surrogate pair");
			}
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		}
		if (cp == 0) {
			free(b);
			return jp_fail(p, "\\u0000 in a string");
		}
		if (cp < 0x80) {
			b[n++] = (char)cp;
		} else if (cp < 0x800) {
			b[n++] = (char)(0xc0 | cp >> 6);
			b[n++] = (char)(0x80 | (cp & 0x3f));
		} else if (cp < 0x10000) {
			b[n++] = (char)(0xe0 | cp >> 12);
			b[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
			b[n++] = (char)(0x80 | (cp & 0x3f));
		} else {
			b[n++] = (char)(0xf0 | cp >> 18);
			b[n++] = (char)(0x80 | ((cp >> 12) & 0x3f));
			b[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
			b[n++] = (char)(0x80 | (cp & 0x3f));
		}
	}
	b[n] = '\0';
	*out = b;
	return 0;
}

static int jp_value(struct jp *p, struct jv *v);

static int jp_push(struct jp *p, struct jv *v, size_t *cap, char *key)
{
	if (v->n == *cap) {
		size_t nc = *cap ? *cap * 2 : 4;
		struct jv *nv = realloc(v->v, nc * sizeof *nv);
		if (!nv) {
			free(key);
			p->oom = 1;
			return -1;
		}
		v->v = nv;
		if (v->t == JV_OBJ) {
			char **nk = realloc(v->k, nc * sizeof *nk);
			if (!nk) {
				free(key);
				p->oom = 1;
				return -1;
			}
			v->k = nk;
		}
		*cap = nc;
	}
	memset(&v->v[v->n], 0, sizeof v->v[0]);
	if (v->t == JV_OBJ)
		v->k[v->n] = key;
	v->n++;
	return 0;
}

static int jp_container(struct jp *p, struct jv *v, int obj)
{
	v->t = obj ? JV_OBJ : JV_ARR;
	p->i++;
	if (++p->depth > DEPTH_MAX)
		return jp_fail(p, "nested too deep");
	size_t cap = 0;
	jp_ws(p);
	if (p->i < p->len && p->s[p->i] == (obj ? '}' : ']')) {
		p->i++;
		p->depth--;
		return 0;
	}
	for (;;) {
		char *key = NULL;
		if (obj) {
			jp_ws(p);
			if (p->i >= p->len || p->s[p->i] != '"')
				return jp_fail(p, "member name expected");
			if (jp_string(p, &key) < 0)
				return -1;
			for (size_t k = 0; k < v->n; k++)
				if (strcmp(v->k[k], key) == 0) {
					free(key);
					return jp_fail(p, "duplicate member name");
				}
			jp_ws(p);
			if (p->i >= p->len || p->s[p->i] != ':') {
				free(key);
				return jp_fail(p, "':' expected");
			}
			p->i++;
		}
		if (jp_push(p, v, &cap, key) < 0 || jp_value(p, &v->v[v->n - 1]) < 0)
			return -1;
		jp_ws(p);
		if (p->i < p->len && p->s[p->i] == ',') {
			p->i++;
			continue;
		}
		if (p->i < p->len && p->s[p->i] == (obj ? '}' : ']')) {
			p->i++;
			p->depth--;
			return 0;
		}
		return jp_fail(p, obj ? "',' or '}' expected" : "',' or ']' expected");
	}
}

static int jp_number(struct jp *p, struct jv *v)
{
	size_t i = p->i;
	int neg = 0, frac = 0;
	v->t = JV_NUM;
	if (p->s[i] == '-')
		neg = 1, i++;
	if (i >= p->len || !is_digit((unsigned char)p->s[i]))
		return jp_fail(p, "bad number");
	size_t ds = i;
	if (p->s[i] == '0')
		i++;
	else
		while (i < p->len && is_digit((unsigned char)p->s[i]))
			i++;
	size_t de = i;
	if (i < p->len && p->s[i] == '.') {
		frac = 1;
		if (++i >= p->len || !is_digit((unsigned char)p->s[i]))
			return jp_fail(p, "bad number");
		while (i < p->len && is_digit((unsigned char)p->s[i]))
			i++;
	}
	if (i < p->len && (p->s[i] == 'e' || p->s[i] == 'E')) {
		frac = 1;
		i++;
		if (i < p->len && (p->s[i] == '+' || p->s[i] == '-'))
			i++;
		if (i >= p->len || !is_digit((unsigned char)p->s[i]))
			return jp_fail(p, "bad number");
		while (i < p->len && is_digit((unsigned char)p->s[i]))
			i++;
	}
	if (!neg && !frac) {
		uint64_t u = 0;
		v->is_uint = 1;
		for (size_t k = ds; k < de; k++) {
			unsigned dgt = (unsigned)(p->s[k] - '0');
			if (u > (UINT64_MAX - dgt) / 10) {
				v->is_uint = 0;
				break;
			}
			u = u * 10 + dgt;
		}
		v->u = u;
	}
	p->i = i;
	return 0;
}

static int jp_value(struct jp *p, struct jv *v)
{
	if (++p->nodes > NODES_MAX)
		return jp_fail(p, "too many values");
	jp_ws(p);
	if (p->i >= p->len)
		return jp_fail(p, "value expected");
	char c = p->s[p->i];
	if (c == '{' || c == '[')
		return jp_container(p, v, c == '{');
	if (c == '"') {
		v->t = JV_STR;
		return jp_string(p, &v->s);
	}
	if (c == '-' || is_digit((unsigned char)c))
		return jp_number(p, v);
	static const struct { const char *w; int t; } lit[] = {
		{ "true", JV_TRUE }, { "false", JV_FALSE }, { "null", JV_NULL } };
	for (size_t k = 0; k < 3; k++) {
		size_t n = strlen(lit[k].w);
		if (p->len - p->i >= n && memcmp(p->s + p->i, lit[k].w, n) == 0) {
			v->t = lit[k].t;
			p->i += n;
			return 0;
		}
	}
	return jp_fail(p, "value expected");
}

static const struct jv *jv_get(const struct jv *o, const char *key, int type)
{
	if (!o || o->t != JV_OBJ)
		return NULL;
	for (size_t i = 0; i < o->n; i++)
		if (strcmp(o->k[i], key) == 0)
			return o->v[i].t == type ? &o->v[i] : NULL;
	return NULL;
}

static int jv_has(const struct jv *o, const char *key)
{
	for (size_t i = 0; o && o->t == JV_OBJ && i < o->n; i++)
		if (strcmp(o->k[i], key) == 0)
			return 1;
	return 0;
}

/* An optional array of strings: NULL/0 when absent; -1 when present and not one. */
static int jv_strv(const struct jv *o, const char *key, const char ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (!jv_has(o, key))
		return 0;
	const struct jv *a = jv_get(o, key, JV_ARR);
	if (!a)
		return -1;
	if (a->n == 0)
		return 0;
	const char **v = calloc(a->n, sizeof *v);
	if (!v)
		return -2;
	for (size_t i = 0; i < a->n; i++) {
		if (a->v[i].t != JV_STR) {
			free(v);
			return -1;
		}
		v[i] = a->v[i].s;
	}
	*out = v;
	*n = a->n;
	return 0;
}

/* An optional string member: 0 (absent: NULL), -1 when present and not a string. */
static int jv_optstr(const struct jv *o, const char *key, const char **out)
{
	*out = NULL;
	if (!jv_has(o, key))
		return 0;
	const struct jv *s = jv_get(o, key, JV_STR);
	if (!s)
		return -1;
	*out = s->s;
	return 0;
}

static int parse_policy(const struct jv *e, struct tlsrpt_domain *out, char *err, size_t errlen,
			size_t idx)
{
	const struct jv *pol = jv_get(e, "policy", JV_OBJ), *sum = jv_get(e, "summary", JV_OBJ);
	const struct jv *type = jv_get(pol, "policy-type", JV_STR);
	const struct jv *dom = jv_get(pol, "policy-domain", JV_STR);
	const struct jv *ok = jv_get(sum, "total-successful-session-count", JV_NUM);
	const struct jv *bad = jv_get(sum, "total-failure-session-count", JV_NUM);
	if (!pol || !sum || !type || !dom || !ok || !bad || !ok->is_uint || !bad->is_uint) {
		snprintf(err, errlen, "policies[%zu]: policy or summary missing or malformed", idx);
		return -EINVAL;
	}
	enum tlsrpt_policy t;
	if (!strcmp(type->s, "sts"))
		t = TLSRPT_STS;
	else if (!strcmp(type->s, "tlsa"))
		t = TLSRPT_TLSA;
	else if (!strcmp(type->s, "no-policy-found"))
		t = TLSRPT_NONE;
	else {
		snprintf(err, errlen, "policies[%zu]: unknown policy-type", idx);
		return -EINVAL;
	}
	char d[254];
	if (domain_norm(dom->s, d) < 0 || (out->domain[0] && strcmp(d, out->domain) != 0)) {
		snprintf(err, errlen, "policies[%zu]: policy-domain not a host name, or another one",
			 idx);
		return -EINVAL;
	}
	memcpy(out->domain, d, sizeof d);
	const char **strings = NULL, **mx = NULL;
	size_t ns = 0, nm = 0, nf = 0;
	struct tlsrpt_failure *fails = NULL;
	int rc = -EINVAL, r1 = jv_strv(pol, "policy-string", &strings, &ns);
	int r2 = jv_strv(pol, "mx-host", &mx, &nm);
	if (r1 == -2 || r2 == -2) {
		rc = -ENOMEM;
		goto out;
	}
	if (r1 < 0 || r2 < 0) {
		snprintf(err, errlen, "policies[%zu]: policy-string or mx-host not strings", idx);
		goto out;
	}
	if (jv_has(e, "failure-details")) {
		const struct jv *fd = jv_get(e, "failure-details", JV_ARR);
		if (!fd) {
			snprintf(err, errlen, "policies[%zu]: failure-details not an array", idx);
			goto out;
		}
		fails = calloc(fd->n ? fd->n : 1, sizeof *fails);
		if (!fails) {
			rc = -ENOMEM;
			goto out;
		}
		for (; nf < fd->n; nf++) {
			const struct jv *f = &fd->v[nf];
			const struct jv *rt = jv_get(f, "result-type", JV_STR);
			const struct jv *cnt = jv_get(f, "failed-session-count", JV_NUM);
			struct tlsrpt_failure *o = &fails[nf];
			const char *s[5];
			if (f->t != JV_OBJ || !rt || !cnt || !cnt->is_uint ||
			    jv_optstr(f, "sending-mta-ip", &s[0]) < 0 ||
			    jv_optstr(f, "receiving-mx-hostname", &s[1]) < 0 ||
			    jv_optstr(f, "receiving-mx-helo", &s[2]) < 0 ||
			    jv_optstr(f, "receiving-ip", &s[3]) < 0 ||
			    jv_optstr(f, "failure-reason-code", &s[4]) < 0) {
				snprintf(err, errlen, "policies[%zu].failure-details[%zu] malformed",
					 idx, nf);
				goto out;
			}
			o->result_type = rt->s;
			o->sending_ip = (char *)s[0];
			o->receiving_mx_hostname = (char *)s[1];
			o->receiving_mx_helo = (char *)s[2];
			o->receiving_ip = (char *)s[3];
			o->reason = (char *)s[4];
			o->count = cnt->u;
		}
	}
	rc = add_counts(out, t, strings, ns, mx, nm, ok->u, bad->u, fails, nf);
out:
	free(strings);
	free(mx);
	free(fails);
	return rc;
}

int tlsrpt_report_parse(const char *json, size_t len, struct tlsrpt_domain *out,
			int64_t *begin, int64_t *end, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	err[0] = '\0';
	if (len > TLSRPT_REPORT_MAX) {
		snprintf(err, errlen, "report of %zu octets (at most %d)", len, TLSRPT_REPORT_MAX);
		return -EINVAL;
	}
	struct jp p = { .s = json, .len = len };
	struct jv root = { 0 };
	int rc = jp_value(&p, &root);
	if (rc == 0) {
		jp_ws(&p);
		if (p.i != p.len)
			rc = jp_fail(&p, "data after the value");
	}
	if (rc < 0) {
		jv_free(&root);
		if (p.oom)
			return -ENOMEM;
		snprintf(err, errlen, "%s", p.err);
		return -EINVAL;
	}
	const struct jv *dr = jv_get(&root, "date-range", JV_OBJ);
	const struct jv *st = jv_get(dr, "start-datetime", JV_STR);
	const struct jv *en = jv_get(dr, "end-datetime", JV_STR);
	const struct jv *pols = jv_get(&root, "policies", JV_ARR);
	rc = -EINVAL;
	if (root.t != JV_OBJ || !st || !en || !pols) {
		snprintf(err, errlen, "not a report: date-range or policies missing");
		goto out;
	}
	if (parse_time(st->s, begin) < 0 || parse_time(en->s, end) < 0 || *end <= *begin) {
		snprintf(err, errlen, "date-range: not YYYY-MM-DDTHH:MM:SSZ, or empty");
		goto out;
	}
	for (size_t i = 0; i < pols->n; i++) {
		if (pols->v[i].t != JV_OBJ) {
			snprintf(err, errlen, "policies[%zu] not an object", i);
			goto out;
		}
		rc = parse_policy(&pols->v[i], out, err, errlen, i);
		if (rc < 0)
			goto out;
	}
	rc = 0;
out:
	jv_free(&root);
	if (rc < 0) {
		tlsrpt_domain_free(out);
		out->domain[0] = '\0';
		if (rc == -ENOMEM)
			snprintf(err, errlen, "out of memory");
	}
	return rc;
}

/* ================================================================ TXT record (RFC 8460 §3) */

/* RFC 3986 characters a tlsrpt-uri may hold raw (",", "!" and ";" must be encoded). */
static int uri_char(int c)
{
	return is_alnum(c) || (c && strchr("-._~%$&'()*+=:@/?#[]", c));
}

/* https://HOST[:PORT][/PATH][?QUERY][#FRAGMENT] (uri NUL-terminated, scheme in any case):
 * host (brackets removed), port (default 443) and the request target (path and query, "/"
 * when empty). 0 or -EINVAL with why. */
static int parse_https(const char *uri, char *host, size_t hostcap, uint16_t *port,
		       char *target, size_t tcap, const char **why)
{
	if (strncasecmp(uri, "https://", 8) != 0) {
		*why = "not https://";
		return -EINVAL;
	}
	const char *a = uri + 8, *e = a + strcspn(a, "/?#");
	const char *h = a, *he, *pe = NULL;
	if (memchr(a, '@', (size_t)(e - a))) {
		*why = "userinfo in an https: URI";
		return -EINVAL;
	}
	if (*h == '[') {
		he = memchr(h, ']', (size_t)(e - h));
		if (!he) {
			*why = "unterminated [IPv6] host";
			return -EINVAL;
		}
		h++;
		pe = he + 1;
		if (pe < e && *pe != ':') {
			*why = "bad [IPv6] host";
			return -EINVAL;
		}
		char v6[INET6_ADDRSTRLEN + 1];
		unsigned char bin[16];
		if ((size_t)(he - h) >= sizeof v6) {
			*why = "bad [IPv6] host";
			return -EINVAL;
		}
		memcpy(v6, h, (size_t)(he - h));
		v6[he - h] = '\0';
		if (inet_pton(AF_INET6, v6, bin) != 1) {
			*why = "bad [IPv6] host";
			return -EINVAL;
		}
	} else {
		he = memchr(h, ':', (size_t)(e - h));
		if (!he)
			he = e;
		pe = he;
		if (he == h) {
			*why = "empty host in an https: URI";
			return -EINVAL;
		}
		for (const char *c = h; c < he; c++)
			if (!is_alnum((unsigned char)*c) && *c != '-' && *c != '.' && *c != '_') {
				*why = "bad host in an https: URI";
				return -EINVAL;
			}
	}
	if ((size_t)(he - h) >= hostcap) {
		*why = "host too long";
		return -EINVAL;
	}
	memcpy(host, h, (size_t)(he - h));
	host[he - h] = '\0';
	*port = 443;
	if (pe < e) { /* ":" PORT */
		unsigned long p = 0;
		const char *c = pe + 1;
		if (c == e) {
			*why = "empty port in an https: URI";
			return -EINVAL;
		}
		for (; c < e; c++) {
			if (!is_digit((unsigned char)*c) || (p = p * 10 + (unsigned long)(*c - '0')) > 65535) {
				*why = "bad port in an https: URI";
				return -EINVAL;
			}
		}
		if (p == 0) {
			*why = "bad port in an https: URI";
			return -EINVAL;
		}
		*port = (uint16_t)p;
	}
	size_t tl = strcspn(e, "#");
	if (tl + 2 > tcap) {
		*why = "path too long";
		return -EINVAL;
	}
	if (e[0] != '/')
		snprintf(target, tcap, "/%.*s", (int)tl, e);
	else
		snprintf(target, tcap, "%.*s", (int)tl, e);
	return 0;
}

/* The one address of a mailto: URI, percent-decoded (hfields after '?' dropped): a
 * local part of printable characters without specials, "@", a host name. 0 or -EINVAL. */
static int mailto_addr(const char *uri, char *out, size_t cap)
{
	if (strncasecmp(uri, "mailto:", 7) != 0)
		return -EINVAL;
	const char *s = uri + 7;
	size_t n = strcspn(s, "?"), o = 0, at = 0, ats = 0;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)s[i];
		if (c == '%') {
			int h1 = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
			int h2 = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
			if (h1 < 0 || h2 < 0)
				return -EINVAL;
			c = h1 * 16 + h2;
			i += 2;
		}
		if (c <= 0x20 || c >= 0x7f || strchr("\"(),:;<>[\\]", c))
			return -EINVAL;
		if (c == '@')
			ats++, at = o;
		if (o + 1 >= cap)
			return -EINVAL;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	char dom[254];
	if (ats != 1 || at == 0 || domain_norm(out + at + 1, dom) < 0 ||
	    out[strlen(out) - 1] == '.')
		return -EINVAL;
	return 0;
}

/* One URI (n octets of RFC 3986 characters) of rua=: 1 and a copy in out (scheme in lower
 * case) when it is a usable mailto: or https: URI, 0 for another scheme, -1 malformed. */
static int check_uri(const char *u, size_t n, char *out, const char **why)
{
	size_t k = 0;
	if (n > TLSRPT_URI_MAX) {
		*why = "URI longer than 511 octets";
		return -1;
	}
	if (n == 0 || !is_alpha((unsigned char)u[0])) {
		*why = "URI without a scheme";
		return -1;
	}
	while (k < n && (is_alnum((unsigned char)u[k]) || u[k] == '+' || u[k] == '-' || u[k] == '.'))
		k++;
	if (k == n || u[k] != ':') {
		*why = "URI without a scheme";
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		if (u[i] == '%' && (i + 2 >= n || hexval((unsigned char)u[i + 1]) < 0 ||
				    hexval((unsigned char)u[i + 2]) < 0)) {
			*why = "bad percent-encoding in a URI";
			return -1;
		}
	memcpy(out, u, n);
	out[n] = '\0';
	for (size_t i = 0; i < k; i++)
		out[i] = (char)lower((unsigned char)out[i]);
	if (k == 6 && memcmp(out, "mailto", 6) == 0) {
		char addr[TLSRPT_URI_MAX + 1];
		if (mailto_addr(out, addr, sizeof addr) < 0) {
			*why = "mailto: URI without exactly one address";
			return -1;
		}
		return 1;
	}
	if (k == 5 && memcmp(out, "https", 5) == 0) {
		char host[256], target[TLSRPT_URI_MAX + 2];
		uint16_t port;
		return parse_https(out, host, sizeof host, &port, target, sizeof target, why) < 0
			       ? -1 : 1;
	}
	return 0;
}

int tlsrpt_parse_txt(const char *const *records, const size_t *lens, size_t n,
		     char rua[][512], size_t *nrua, char *err, size_t errlen)
{
	const char *r;
	size_t len;
	*nrua = 0;
	err[0] = '\0';
	int prc = sts_pick_record(records, lens, n, "v=TLSRPTv1", TLSRPT_TXT_MAX, &r, &len, err,
				  errlen);
	if (prc < 0)
		return prc;
	size_t i = 10, uris = 0; /* after "v=TLSRPTv1" */
	int have_rua = 0;
	for (;;) {
		while (i < len && is_wsp((unsigned char)r[i]))
			i++;
		if (i == len)
			break;
		if (r[i] != ';') {
			snprintf(err, errlen, "TXT record: \";\" expected at offset %zu", i);
			goto bad;
		}
		i++;
		while (i < len && is_wsp((unsigned char)r[i]))
			i++;
		if (i == len)
			break; /* a trailing delimiter */
		size_t k = sts_ext_name_len(r + i, len - i);
		if (k == 0 || i + k >= len || r[i + k] != '=') {
			snprintf(err, errlen, "TXT record: a field name= expected at offset %zu", i);
			goto bad;
		}
		if (k != 3 || memcmp(r + i, "rua", 3) != 0) { /* an extension: skipped */
			i += k + 1;
			size_t v = i;
			while (i < len && sts_ext_char((unsigned char)r[i]))
				i++;
			if (i == v) {
				snprintf(err, errlen, "TXT record: empty or invalid field value at "
						      "offset %zu", v);
				goto bad;
			}
			continue;
		}
		if (have_rua) {
			snprintf(err, errlen, "TXT record: rua= given twice");
			goto bad;
		}
		have_rua = 1;
		i += 4;
		for (;;) {
			size_t u = i;
			while (i < len && uri_char((unsigned char)r[i]))
				i++;
			if (i < len && r[i] != ',' && r[i] != ';' && !is_wsp((unsigned char)r[i])) {
				snprintf(err, errlen, "TXT record: character 0x%02x not allowed in a "
						      "rua URI (offset %zu)", (unsigned char)r[i], i);
				goto bad;
			}
			const char *why = "";
			char copy[512];
			int c = check_uri(r + u, i - u, copy, &why);
			if (c < 0) {
				snprintf(err, errlen, "TXT record: rua URI at offset %zu: %s", u, why);
				goto bad;
			}
			uris++;
			if (c == 1 && *nrua < TLSRPT_RUA_MAX)
				memcpy(rua[(*nrua)++], copy, strlen(copy) + 1);
			size_t j = i;
			while (j < len && is_wsp((unsigned char)r[j]))
				j++;
			if (j < len && r[j] == ',') {
				i = j + 1;
				while (i < len && is_wsp((unsigned char)r[i]))
					i++;
				continue;
			}
			break;
		}
	}
	if (!have_rua) {
		snprintf(err, errlen, "TXT record without rua=");
		goto bad;
	}
	if (*nrua == 0) {
		snprintf(err, errlen, "TXT record: none of the %zu rua URIs is mailto: or https:",
			 uris);
		goto bad;
	}
	return 0;
bad:
	*nrua = 0;
	return -EINVAL;
}

/* ================================================================ gzip, base64 */

static int gzip_buf(const void *in, size_t len, uint8_t **out, size_t *outlen)
{
	z_stream zs;
	memset(&zs, 0, sizeof zs);
	if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return -ENOMEM;
	size_t cap = deflateBound(&zs, (uLong)len) + 32;
	uint8_t *b = malloc(cap);
	if (!b) {
		deflateEnd(&zs);
		return -ENOMEM;
	}
	zs.next_in = (Bytef *)in;
	zs.avail_in = (uInt)len;
	zs.next_out = b;
	zs.avail_out = (uInt)cap;
	int rc = deflate(&zs, Z_FINISH);
	deflateEnd(&zs);
	if (rc != Z_STREAM_END) {
		free(b);
		return -EIO;
	}
	*out = b;
	*outlen = cap - zs.avail_out;
	return 0;
}

/* base64 in lines of 76 characters, each ending in CRLF; appended to a growable buffer. */
struct sb {
	char *p;
	size_t len, cap;
	int oom;
};

static void sb_put(struct sb *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *np = realloc(b->p, cap);
		if (!np) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
	char tmp[1200];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void sb_base64(struct sb *b, const uint8_t *in, size_t len)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char line[80];
	for (size_t i = 0; i < len;) {
		size_t o = 0;
		for (size_t k = 0; k < 19 && i < len; k++, i += 3) {
			uint32_t v = (uint32_t)in[i] << 16;
			size_t m = len - i;
			if (m > 1)
				v |= (uint32_t)in[i + 1] << 8;
			if (m > 2)
				v |= in[i + 2];
			line[o++] = tab[v >> 18 & 63];
			line[o++] = tab[v >> 12 & 63];
			line[o++] = m > 1 ? tab[v >> 6 & 63] : '=';
			line[o++] = m > 2 ? tab[v & 63] : '=';
		}
		line[o++] = '\r';
		line[o++] = '\n';
		sb_put(b, line, o);
	}
}

/* ================================================================ blocking network I/O
 * (thread pool only) */

static int remaining(int64_t deadline)
{
	int64_t r = deadline - mono_ms();
	return r <= 0 ? 0 : r > INT_MAX ? INT_MAX : (int)r;
}

static int wait_fd(int fd, short ev, int64_t deadline)
{
	for (;;) {
		int ms = remaining(deadline);
		if (ms == 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = ev };
		int rc = poll(&p, 1, ms);
		if (rc > 0)
			return 0;
		if (rc == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/* Connects to host:port (getaddrinfo; the addresses in turn) before deadline: a
 * non-blocking socket, or -1 with why. */
static int net_connect(const char *host, uint16_t port, int64_t deadline, char *why, size_t wl)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char ps[8];
	snprintf(ps, sizeof ps, "%u", port);
	int rc = getaddrinfo(host, ps, &hints, &res);
	if (rc != 0) {
		snprintf(why, wl, "resolve %s: %s", host, gai_strerror(rc));
		return -1;
	}
	snprintf(why, wl, "connect %s:%u: no address", host, port);
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		char addr[INET6_ADDRSTRLEN] = "?";
		const void *a = ai->ai_family == AF_INET6
					? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
					: (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
		inet_ntop(ai->ai_family, a, addr, sizeof addr);
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(why, wl, "socket: %s", strerror(errno));
			continue;
		}
		int e = 0;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
			e = errno;
			if (e == EINPROGRESS) {
				e = -wait_fd(fd, POLLOUT, deadline);
				socklen_t sl = sizeof e;
				if (e == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) < 0)
					e = errno;
			}
		}
		if (e == 0) {
			freeaddrinfo(res);
			return fd;
		}
		snprintf(why, wl, "connect %s port %u: %s", addr, port, strerror(e));
		close(fd);
		if (e == ETIMEDOUT && remaining(deadline) == 0)
			break;
	}
	freeaddrinfo(res);
	return -1;
}

static int net_send(int fd, const void *data, size_t n, int64_t deadline)
{
	const char *p = data;
	while (n > 0) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k > 0) {
			p += k;
			n -= (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		int rc = wait_fd(fd, POLLOUT, deadline);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* > 0 octets, 0 at the end of the stream, or -errno (-ETIMEDOUT). */
static ssize_t net_recv(int fd, void *buf, size_t n, int64_t deadline)
{
	for (;;) {
		ssize_t k = recv(fd, buf, n, 0);
		if (k >= 0)
			return k;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		int rc = wait_fd(fd, POLLIN, deadline);
		if (rc < 0)
			return rc;
	}
}

/* Printable ASCII of s (n octets) into out, for a log detail. */
static void printable(const char *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 1 < cap; i++)
		out[o++] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
	out[o] = '\0';
}

/* ---- SMTP */

struct smtp {
	int fd;
	int64_t deadline;
	char in[4096];
	size_t inlen;
	char last[160]; /* the reply's last line */
};

/* One reply, all its lines: the code, or -1 with why. */
static int smtp_reply(struct smtp *s, const char *what, char *why, size_t wl)
{
	for (;;) {
		char *nl = memchr(s->in, '\n', s->inlen);
		if (!nl) {
			if (s->inlen == sizeof s->in) {
				snprintf(why, wl, "%s: reply line too long", what);
				return -1;
			}
			ssize_t k = net_recv(s->fd, s->in + s->inlen, sizeof s->in - s->inlen,
					     s->deadline);
			if (k <= 0) {
				snprintf(why, wl, "%s: %s", what,
					 k == 0 ? "connection closed" : strerror((int)-k));
				return -1;
			}
			s->inlen += (size_t)k;
			continue;
		}
		size_t ll = (size_t)(nl - s->in) + 1, tl = ll - 1;
		if (tl && s->in[tl - 1] == '\r')
			tl--;
		printable(s->in, tl, s->last, sizeof s->last);
		int ok = tl >= 3 && is_digit(s->in[0]) && is_digit(s->in[1]) && is_digit(s->in[2]) &&
			 (tl == 3 || s->in[3] == ' ' || s->in[3] == '-');
		int code = ok ? (s->in[0] - '0') * 100 + (s->in[1] - '0') * 10 + (s->in[2] - '0') : 0;
		int more = ok && tl > 3 && s->in[3] == '-';
		memmove(s->in, s->in + ll, s->inlen - ll);
		s->inlen -= ll;
		if (!ok) {
			snprintf(why, wl, "%s: malformed reply \"%s\"", what, s->last);
			return -1;
		}
		if (!more)
			return code;
	}
}

/* Sends line (without CRLF; NULL: nothing) and wants a reply of class want (2 or 3). */
static int smtp_step(struct smtp *s, const char *line, int want, const char *what, char *why,
		     size_t wl)
{
	if (line) {
		char buf[1100];
		int n = snprintf(buf, sizeof buf, "%s\r\n", line);
		int rc = net_send(s->fd, buf, (size_t)n, s->deadline);
		if (rc < 0) {
			snprintf(why, wl, "%s: %s", what, strerror(-rc));
			return -1;
		}
	}
	int code = smtp_reply(s, what, why, wl);
	if (code < 0)
		return -1;
	if (code / 100 != want) {
		snprintf(why, wl, "%s: %s", what, s->last);
		return -1;
	}
	return 0;
}

/* ================================================================ the object */

struct dentry {
	struct tlsrpt_domain d;
	struct dentry *next;
};

struct period {
	int64_t begin, end;
	struct dentry *tab[BUCKETS];
	size_t n;
	uint64_t dropped_domains;
	struct period *next;
};

struct job {
	uv_work_t req;
	struct tlsrpt *r;
	struct period *flush; /* written to the spool, then freed */
	int scan;
	int64_t next_scan;    /* out (wall ms) */
	struct ub_ctx *ub;    /* made at the first lookup */
	char ub_err[200];
	int ub_failed;
	char rua[TLSRPT_RUA_MAX][512];
};

struct tlsrpt {
	uv_loop_t *loop;
	uv_timer_t timer;
	pthread_mutex_t mu;
	struct period *periods; /* under mu */
	/* immutable after tlsrpt_new (read by the thread pool) */
	char *dir, *org, *submitter, *contact, *relay_host, *resolver, *trust_anchor, *ca, *helo;
	uint16_t relay_port;
	int64_t interval_s, grace_ms, settle_ms, retry_ms, timeout_ms;
	unsigned hold_lock_ms;
	int stop;               /* atomic: tlsrpt_free was called */
	/* the thread pool only (one job at a time) */
	struct tls_ctx *https;
	int https_failed;
	char https_err[200];
	/* the loop only */
	int busy, freeing, timer_closed;
	struct period *pending; /* to flush once the running job is done */
	int64_t next_scan;      /* wall ms */
};

static uint32_t hash_name(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

static void period_free(struct period *p)
{
	for (size_t b = 0; b < BUCKETS; b++)
		for (struct dentry *e = p->tab[b], *n; e; e = n) {
			n = e->next;
			tlsrpt_domain_free(&e->d);
			free(e);
		}
	free(p);
}

void tlsrpt_count(struct tlsrpt *r, const struct tlsrpt_eval *e)
{
	char dom[254];
	if (!r || !e || !e->domain || domain_norm(e->domain, dom) < 0)
		return;
	int64_t now = wall_ms() / 1000, begin = now - now % r->interval_s;
	uint32_t b = hash_name(dom) % BUCKETS;
	pthread_mutex_lock(&r->mu);
	struct period *p = r->periods;
	while (p && p->begin != begin)
		p = p->next;
	if (!p) {
		p = calloc(1, sizeof *p);
		if (!p)
			goto out;
		p->begin = begin;
		p->end = begin + r->interval_s;
		p->next = r->periods;
		r->periods = p;
	}
	struct dentry *d = p->tab[b];
	while (d && strcmp(d->d.domain, dom) != 0)
		d = d->next;
	if (!d) {
		if (p->n >= TLSRPT_DOMAINS_MAX) {
			p->dropped_domains++;
			goto out;
		}
		d = calloc(1, sizeof *d);
		if (!d)
			goto out;
		memcpy(d->d.domain, dom, sizeof dom);
		d->next = p->tab[b];
		p->tab[b] = d;
		p->n++;
	}
	tlsrpt_domain_add(&d->d, e);
out:
	pthread_mutex_unlock(&r->mu);
}

static int stopping(const struct tlsrpt *r)
{
	return __atomic_load_n(&r->stop, __ATOMIC_RELAXED);
}

/* ---- files */

/* snprintf into a PATH_MAX buffer: 0, or -ENAMETOOLONG (cut). */
static int pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pathf(char *out, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(out, PATH_MAX, fmt, ap);
	va_end(ap);
	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

static int mkdir_one(const char *path)
{
	return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : -errno;
}

/* Writes data to DIR/NAME through a temporary file in DIR (fsync'd, then renamed). */
static int write_atomic(const char *dir, const char *name, const void *data, size_t len)
{
	char tmp[PATH_MAX], path[PATH_MAX], rnd[9];
	rand_hex(rnd, 8);
	if (pathf(tmp, "%s/.tmp-%s-%s", dir, rnd, name) < 0 ||
	    pathf(path, "%s/%s", dir, name) < 0)
		return -ENAMETOOLONG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = data;
	size_t left = len;
	int rc = 0;
	while (left > 0 && rc == 0) {
		ssize_t k = write(fd, p, left);
		if (k < 0 && errno != EINTR)
			rc = -errno;
		else if (k > 0)
			p += k, left -= (size_t)k;
	}
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc < 0)
		unlink(tmp);
	return rc;
}

/* Whole file, at most max octets (NUL-terminated): 0, -EFBIG or -errno. */
static int read_file(const char *path, size_t max, char **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t cap = 8192, n = 0;
	char *b = malloc(cap + 1);
	int rc = b ? 0 : -ENOMEM;
	while (rc == 0) {
		if (n == cap) {
			if (cap > max) {
				rc = -EFBIG;
				break;
			}
			char *nb = realloc(b, cap * 2 + 1);
			if (!nb) {
				rc = -ENOMEM;
				break;
			}
			b = nb;
			cap *= 2;
		}
		ssize_t k = read(fd, b + n, cap - n);
		if (k < 0 && errno != EINTR)
			rc = -errno;
		else if (k == 0)
			break;
		else if (k > 0)
			n += (size_t)k;
	}
	close(fd);
	if (rc == 0 && n > max)
		rc = -EFBIG;
	if (rc < 0) {
		free(b);
		return rc;
	}
	b[n] = '\0';
	*out = b;
	*len = n;
	return 0;
}

/* The exclusive lock of a domain's spool directory: the fd, or -errno (-ENOENT: the
 * directory is gone). The lock file is checked to be the one at the path (a cleanup may
 * have removed it while this process waited). */
static int lock_dir(const char *dpath)
{
	char path[PATH_MAX];
	if (pathf(path, "%s/.lock", dpath) < 0)
		return -ENAMETOOLONG;
	for (int tries = 0; tries < 10; tries++) {
		int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0)
			return -errno;
		int rc;
		while ((rc = flock(fd, LOCK_EX)) < 0 && errno == EINTR)
			;
		if (rc < 0) {
			rc = -errno;
			close(fd);
			return rc;
		}
		struct stat a, b;
		if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
		    a.st_dev == b.st_dev)
			return fd;
		close(fd);
	}
	return -EAGAIN;
}

static void unlock_dir(int fd)
{
	flock(fd, LOCK_UN);
	close(fd);
}

static int strcmp_ptr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The entries of a directory whose names pass keep(), sorted. */
static int list_dir(const char *path, int (*keep)(const char *), char ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	size_t cap = 0;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		if (!keep(e->d_name))
			continue;
		if (*n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			char **nv = realloc(*out, nc * sizeof *nv);
			if (!nv) {
				rc = -ENOMEM;
				break;
			}
			*out = nv;
			cap = nc;
		}
		if (!((*out)[*n] = strdup(e->d_name))) {
			rc = -ENOMEM;
			break;
		}
		(*n)++;
	}
	closedir(d);
	if (rc < 0) {
		strv_free(*out, *n);
		*out = NULL;
		*n = 0;
		return rc;
	}
	if (*n > 1)
		qsort(*out, *n, sizeof **out, strcmp_ptr);
	return 0;
}

static int is_partial(const char *n)
{
	size_t l = strlen(n);
	return n[0] != '.' && l > 5 && strcmp(n + l - 5, ".json") == 0;
}

static int is_tmp(const char *n)
{
	return strncmp(n, ".tmp-", 5) == 0;
}

/* "BEGIN-END", two decimal numbers: 0 or -EINVAL. */
static int parse_period(const char *n, int64_t *b, int64_t *e)
{
	int64_t v[2] = { 0, 0 };
	const char *c = n;
	for (int k = 0; k < 2; k++) {
		const char *s = c;
		while (is_digit((unsigned char)*c) && c - s < 12)
			v[k] = v[k] * 10 + (*c++ - '0');
		if (c == s || *c != (k == 0 ? '-' : '\0'))
			return -EINVAL;
		c++;
	}
	if (v[1] <= v[0])
		return -EINVAL;
	*b = v[0];
	*e = v[1];
	return 0;
}

static int is_period_dir(const char *n)
{
	int64_t b, e;
	return parse_period(n, &b, &e) == 0;
}

static int is_domain_dir(const char *n)
{
	char d[254];
	return n[0] != '.' && domain_norm(n, d) == 0 && strcmp(d, n) == 0;
}

/* ================================================================ DNS (thread pool) */

/* A blocking libunbound context configured as dns.c configures its own. */
static struct ub_ctx *make_ub(const struct tlsrpt *r, char *err, size_t errlen)
{
	struct ub_ctx *ub = ub_ctx_create();
	if (!ub) {
		snprintf(err, errlen, "libunbound: cannot create a context");
		return NULL;
	}
	struct dns_opts o = { .resolver = r->resolver, .trust_anchor = r->trust_anchor };
	if (dns_configure_ub(ub, &o, err, errlen) < 0) {
		ub_ctx_delete(ub);
		return NULL;
	}
	return ub;
}

/* The rua URIs of domain: 0, -ENOENT (no TLSRPT record), -EINVAL (an unusable one) or
 * -EIO (the lookup failed); why says what. */
static int lookup_rua(struct job *j, const char *domain, char rua[][512], size_t *nrua,
		      char *why, size_t wl)
{
	char name[300];
	*nrua = 0;
	snprintf(name, sizeof name, "_smtp._tls.%s", domain);
	if (!j->ub && !j->ub_failed) {
		j->ub = make_ub(j->r, j->ub_err, sizeof j->ub_err);
		j->ub_failed = !j->ub;
	}
	if (!j->ub) {
		snprintf(why, wl, "TXT %s: %s", name, j->ub_err);
		return -EIO;
	}
	struct ub_result *res = NULL;
	int rc = ub_resolve(j->ub, name, DNS_T_TXT, 1, &res);
	if (rc) {
		snprintf(why, wl, "TXT %s: %s", name, ub_strerror(rc));
		return -EIO;
	}
	if (res->bogus) {
		snprintf(why, wl, "TXT %s: DNSSEC validation failed: %s", name,
			 res->why_bogus ? res->why_bogus : "bogus");
		ub_resolve_free(res);
		return -EIO;
	}
	if (!res->havedata) {
		int none = res->rcode == 0 || res->nxdomain;
		if (none)
			snprintf(why, wl, "no TLSRPT record at %s (%s)", name,
				 res->nxdomain ? "nxdomain" : "nodata");
		else
			snprintf(why, wl, "TXT %s: rcode %d", name, res->rcode);
		ub_resolve_free(res);
		return none ? -ENOENT : -EIO;
	}
	size_t n = 0;
	char *texts[DNS_RR_MAX];
	size_t lens[DNS_RR_MAX];
	for (size_t i = 0; res->data[i] && n < DNS_RR_MAX; i++) {
		size_t cap = TLSRPT_TXT_MAX + 2, full;
		char *t = malloc(cap);
		if (!t)
			break;
		if (dns_parse_txt((const uint8_t *)res->data[i], (size_t)res->len[i], t, cap, &full) < 0) {
			free(t);
			continue;
		}
		texts[n] = t;
		lens[n++] = full < cap ? full : cap - 1; /* a longer record is refused by length */
	}
	ub_resolve_free(res);
	char err[200];
	rc = tlsrpt_parse_txt((const char *const *)texts, lens, n, rua, nrua, err, sizeof err);
	for (size_t i = 0; i < n; i++)
		free(texts[i]);
	if (rc == -ENOENT)
		snprintf(why, wl, "no TLSRPT record at %s", name);
	else if (rc < 0)
		snprintf(why, wl, "%s: %s", name, err);
	return rc;
}

/* ================================================================ submission (thread pool) */

struct report {
	const char *domain, *report_id, *gzname; /* gzname: the attachment's file name */
	int64_t begin, end;
	const uint8_t *gz;
	size_t gzlen;
};

static void rfc5322_date(time_t t, char *out, size_t cap)
{
	static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;
	gmtime_r(&t, &tm);
	snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d +0000", wd[tm.tm_wday], tm.tm_mday,
		 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* The message of RFC 8460 §5.3.1, dot-stuffed, ending in CRLF "." CRLF. */
static char *build_mail(const struct tlsrpt *r, const char *to, const struct report *rep,
			size_t *len)
{
	struct sb b = { 0 }, out = { 0 };
	char date[64], boundary[40], mid[40], start[32], end[32];
	rfc5322_date(time(NULL), date, sizeof date);
	memcpy(boundary, "=_tlsrpt_", 9);
	rand_hex(boundary + 9, 24);
	rand_hex(mid, 24);
	tlsrpt_format_time(rep->begin, start, sizeof start);
	tlsrpt_format_time(rep->end, end, sizeof end);
	sb_printf(&b, "From: %s\r\nTo: %s\r\nDate: %s\r\nMessage-ID: <%s.tlsrpt@%s>\r\n",
		  r->contact, to, date, mid, r->submitter);
	sb_printf(&b, "Subject: Report Domain: %s\r\n Submitter: %s\r\n Report-ID: <%s>\r\n",
		  rep->domain, r->submitter, rep->report_id);
	sb_printf(&b, "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\nMIME-Version: 1.0\r\n",
		  rep->domain, r->submitter);
	sb_printf(&b, "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
		      " boundary=\"%s\"\r\n\r\nThis is a multipart message in MIME format.\r\n\r\n",
		  boundary);
	sb_printf(&b, "--%s\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n"
		      "Content-Transfer-Encoding: 7bit\r\n\r\n"
		      "This is an aggregate TLS report from %s for %s,\r\n"
		      "sessions from %s to %s.\r\n\r\n",
		  boundary, r->submitter, rep->domain, start, end);
	sb_printf(&b, "--%s\r\nContent-Type: application/tlsrpt+gzip\r\n"
		      "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment;\r\n"
		      " filename=\"%s\"\r\n\r\n",
		  boundary, rep->gzname);
	sb_base64(&b, rep->gz, rep->gzlen);
	sb_printf(&b, "--%s--\r\n", boundary);
	/* dot-stuffing (RFC 5321 §4.5.2) */
	for (size_t i = 0; i < b.len && !b.oom;) {
		const char *nl = memchr(b.p + i, '\n', b.len - i);
		size_t e = nl ? (size_t)(nl - b.p) + 1 : b.len;
		if (b.p[i] == '.')
			sb_put(&out, ".", 1);
		sb_put(&out, b.p + i, e - i);
		i = e;
	}
	sb_put(&out, ".\r\n", 3);
	free(b.p);
	if (b.oom || out.oom) {
		free(out.p);
		return NULL;
	}
	*len = out.len;
	return out.p;
}

static int send_mail(const struct tlsrpt *r, const char *uri, const struct report *rep,
		     char *why, size_t wl)
{
	char addr[TLSRPT_URI_MAX + 1], line[700];
	if (mailto_addr(uri, addr, sizeof addr) < 0) {
		snprintf(why, wl, "not one address");
		return -1;
	}
	size_t mlen;
	char *msg = build_mail(r, addr, rep, &mlen);
	if (!msg) {
		snprintf(why, wl, "out of memory");
		return -1;
	}
	struct smtp s = { .deadline = mono_ms() + r->timeout_ms };
	char cwhy[200];
	s.fd = net_connect(r->relay_host, r->relay_port, s.deadline, cwhy, sizeof cwhy);
	int rc = -1;
	if (s.fd < 0) {
		snprintf(why, wl, "relay: %s", cwhy);
		free(msg);
		return -1;
	}
	if (smtp_step(&s, NULL, 2, "greeting", why, wl) < 0)
		goto out;
	snprintf(line, sizeof line, "EHLO %s", r->helo);
	if (smtp_step(&s, line, 2, "EHLO", why, wl) < 0) {
		if (s.last[0] != '5')
			goto out;
		snprintf(line, sizeof line, "HELO %s", r->helo);
		if (smtp_step(&s, line, 2, "HELO", why, wl) < 0)
			goto out;
	}
	snprintf(line, sizeof line, "MAIL FROM:<%s>", r->contact);
	if (smtp_step(&s, line, 2, "MAIL FROM", why, wl) < 0)
		goto out;
	snprintf(line, sizeof line, "RCPT TO:<%s>", addr);
	if (smtp_step(&s, line, 2, "RCPT TO", why, wl) < 0 ||
	    smtp_step(&s, "DATA", 3, "DATA", why, wl) < 0)
		goto out;
	int k = net_send(s.fd, msg, mlen, s.deadline);
	if (k < 0) {
		snprintf(why, wl, "message: %s", strerror(-k));
		goto out;
	}
	if (smtp_step(&s, NULL, 2, "end of data", why, wl) < 0)
		goto out;
	snprintf(why, wl, "%s", s.last);
	rc = 0;
	char ignore[100];
	smtp_step(&s, "QUIT", 2, "QUIT", ignore, sizeof ignore);
out:
	close(s.fd);
	free(msg);
	return rc;
}

/* Sends the TLS engine's pending output. */
static int tls_flush(struct tls_conn *c, int fd, int64_t deadline)
{
	while (tls_conn_out_len(c) > 0) {
		size_t n = tls_conn_out_len(c);
		int rc = net_send(fd, tls_conn_out_data(c), n, deadline);
		if (rc < 0)
			return rc;
		tls_conn_out_consume(c, n);
	}
	return 0;
}

static int https_post(struct tlsrpt *r, const char *uri, const struct report *rep, char *why,
		      size_t wl)
{
	char host[256], target[TLSRPT_URI_MAX + 2], hosthdr[300];
	uint16_t port;
	const char *bad = NULL;
	if (parse_https(uri, host, sizeof host, &port, target, sizeof target, &bad) < 0) {
		snprintf(why, wl, "%s", bad);
		return -1;
	}
	if (!r->https && !r->https_failed) {
		struct tls_client_opts co = { .ca = r->ca, .min_version = 12 };
		if (tls_ctx_client_new(&co, &r->https, r->https_err, sizeof r->https_err) < 0) {
			r->https = NULL;
			r->https_failed = 1;
		}
	}
	if (!r->https) {
		snprintf(why, wl, "trust store %s: %s", r->ca, r->https_err);
		return -1;
	}
	int v6 = strchr(host, ':') != NULL;
	if (port == 443)
		snprintf(hosthdr, sizeof hosthdr, v6 ? "[%s]" : "%s", host);
	else
		snprintf(hosthdr, sizeof hosthdr, v6 ? "[%s]:%u" : "%s:%u", host, port);
	int64_t deadline = mono_ms() + r->timeout_ms;
	char cwhy[200];
	int fd = net_connect(host, port, deadline, cwhy, sizeof cwhy);
	if (fd < 0) {
		snprintf(why, wl, "%s", cwhy);
		return -1;
	}
	int rc = -1;
	struct fetch_parser p;
	fetch_parser_init(&p, HTTP_BODY_MAX, NULL);
	struct tls_conn *c = tls_conn_new(r->https, host);
	char buf[16384];
	if (!c) {
		snprintf(why, wl, "out of memory");
		goto out;
	}
	for (;;) { /* the handshake */
		int h = tls_conn_handshake(c);
		int f = tls_flush(c, fd, deadline);
		if (f < 0) {
			snprintf(why, wl, "TLS handshake: %s", strerror(-f));
			goto out;
		}
		if (h == 0)
			break;
		if (h != TLS_AGAIN) {
			snprintf(why, wl, "TLS handshake: %s", tls_conn_error_text(c));
			goto out;
		}
		ssize_t k = net_recv(fd, buf, sizeof buf, deadline);
		if (k <= 0) {
			snprintf(why, wl, "TLS handshake: %s",
				 k == 0 ? "connection closed" : strerror((int)-k));
			goto out;
		}
		if (tls_conn_feed(c, buf, (size_t)k) < 0) {
			snprintf(why, wl, "out of memory");
			goto out;
		}
	}
	char detail[200];
	const char *name = host;
	const char *fail = tls_conn_check(c, TLS_CHECK_VERIFY, &name, 1, NULL, 0, detail,
					  sizeof detail);
	if (fail) {
		snprintf(why, wl, "%s%s%s", fail, detail[0] ? ": " : "", detail);
		goto out;
	}
	char head[1200];
	int hl = snprintf(head, sizeof head,
			  "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: starttls-proxy/%s\r\n"
			  "Content-Type: application/tlsrpt+gzip\r\nContent-Length: %zu\r\n"
			  "Connection: close\r\n\r\n",
			  target, hosthdr, STP_VERSION, rep->gzlen);
	if (hl < 0 || (size_t)hl >= sizeof head || tls_conn_write(c, head, (size_t)hl) < 0 ||
	    tls_conn_write(c, rep->gz, rep->gzlen) < 0 || tls_flush(c, fd, deadline) < 0) {
		snprintf(why, wl, "sending the request failed");
		goto out;
	}
	for (;;) { /* the response */
		int k = tls_conn_read(c, buf, sizeof buf);
		if (k > 0) {
			if (fetch_parser_feed(&p, buf, (size_t)k))
				break;
			continue;
		}
		if (k == TLS_CLOSED) {
			fetch_parser_eof(&p, 1);
			break;
		}
		if (k != TLS_AGAIN) {
			snprintf(why, wl, "TLS read: %s", tls_conn_error_text(c));
			goto out;
		}
		if (tls_flush(c, fd, deadline) < 0) {
			snprintf(why, wl, "TLS write failed");
			goto out;
		}
		ssize_t n = net_recv(fd, buf, sizeof buf, deadline);
		if (n < 0) {
			snprintf(why, wl, "reading the response: %s", strerror((int)-n));
			goto out;
		}
		if (n == 0) {
			fetch_parser_eof(&p, 0);
			break;
		}
		if (tls_conn_feed(c, buf, (size_t)n) < 0) {
			snprintf(why, wl, "out of memory");
			goto out;
		}
	}
	if (p.status >= 200 && p.status <= 299) {
		snprintf(why, wl, "HTTP %d", p.status);
		rc = 0;
	} else if (p.status) {
		snprintf(why, wl, "HTTP %d", p.status);
	} else {
		snprintf(why, wl, "%s", p.detail[0] ? p.detail : "no response");
	}
out:
	fetch_parser_free(&p);
	if (c)
		tls_conn_free(c);
	close(fd);
	return rc;
}

static void append(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *out, size_t cap, const char *fmt, ...)
{
	size_t l = strlen(out);
	if (l + 1 >= cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out + l, cap - l, fmt, ap);
	va_end(ap);
}

/* Looks up rua, submits, logs the report's line. */
static void deliver(struct job *j, const struct tlsrpt_domain *agg, const struct report *rep,
		    const char *file)
{
	struct tlsrpt *r = j->r;
	uint64_t ok = 0, failed = 0;
	for (size_t i = 0; i < agg->npolicies; i++) {
		ok = sat_add(ok, agg->policies[i].ok);
		failed = sat_add(failed, agg->policies[i].failed);
	}
	char oks[24], fails[24], period[64], start[32], end[32];
	snprintf(oks, sizeof oks, "%" PRIu64, ok);
	snprintf(fails, sizeof fails, "%" PRIu64, failed);
	tlsrpt_format_time(rep->begin, start, sizeof start);
	tlsrpt_format_time(rep->end, end, sizeof end);
	snprintf(period, sizeof period, "%s/%s", start, end);
	char (*rua)[512] = j->rua;
	size_t nrua = 0;
	char detail[1200] = "", ruas[1000] = "", why[800];
	const char *result;
	int rc = lookup_rua(j, rep->domain, rua, &nrua, why, sizeof why);
	if (rc < 0) {
		result = rc == -EIO ? "failed" : "written"; /* no record, or an unusable one */
		snprintf(detail, sizeof detail, "%s", why);
	} else {
		int sent = 0, bad = 0;
		for (size_t i = 0; i < nrua; i++) {
			append(ruas, sizeof ruas, "%s%s", i ? "," : "", rua[i]);
			append(detail, sizeof detail, "%s%s: ", i ? "; " : "", rua[i]);
			int is_mail = strncmp(rua[i], "mailto:", 7) == 0;
			if (stopping(r)) {
				append(detail, sizeof detail, "not sent (stopping)");
				bad++;
			} else if (is_mail && !r->relay_host) {
				append(detail, sizeof detail, "not sent (no tlsrpt_relay)");
			} else if ((is_mail ? send_mail(r, rua[i], rep, why, sizeof why)
					    : https_post(r, rua[i], rep, why, sizeof why)) < 0) {
				append(detail, sizeof detail, "failed: %s", why);
				bad++;
			} else {
				append(detail, sizeof detail, "sent (%s)", why);
				sent++;
			}
		}
		result = bad ? "failed" : sent ? "sent" : "written";
	}
	log_event(result[0] == 'f' ? LOG_WARN : LOG_INFO, NULL, NULL, "tlsrpt", "domain",
		  rep->domain, "period", period, "sessions_ok", oks, "sessions_failed", fails,
		  "rua", ruas[0] ? ruas : NULL, "result", result, "detail",
		  detail[0] ? detail : NULL, "file", file, "report_id", rep->report_id, NULL);
}

/* ================================================================ the spool (thread pool) */

static void spool_log(int level, const char *domain, int64_t b, int64_t e, const char *what,
		      const char *file, int err)
{
	char period[64], start[32], end[32];
	tlsrpt_format_time(b, start, sizeof start);
	tlsrpt_format_time(e, end, sizeof end);
	snprintf(period, sizeof period, "%s/%s", start, end);
	log_event(level, NULL, NULL, "tlsrpt_spool", "domain", domain, "period", period, "action",
		  what, "file", file, "error", err ? strerror(-err) : NULL, NULL);
}

/* Writes one partial of domain into the period's spool directory, under its lock. */
static int spool_put(const struct tlsrpt *r, const char *pdir, const char *domain,
		     const char *json, size_t len)
{
	char sdir[PATH_MAX], ddir[PATH_MAX], name[400], rnd[17];
	pathf(sdir, "%s/spool", r->dir);
	if (pathf(ddir, "%s/%s", pdir, domain) < 0)
		return -ENAMETOOLONG;
	for (int attempt = 0; attempt < 3; attempt++) {
		int rc = mkdir_one(sdir);
		if (rc == 0)
			rc = mkdir_one(pdir);
		if (rc == 0)
			rc = mkdir_one(ddir);
		if (rc < 0)
			return rc;
		int fd = lock_dir(ddir);
		if (fd == -ENOENT)
			continue; /* removed by a cleanup meanwhile */
		if (fd < 0)
			return fd;
		rand_hex(rnd, 16);
		snprintf(name, sizeof name, "%s-%ld-%s.json", r->submitter, (long)getpid(), rnd);
		rc = write_atomic(ddir, name, json, len);
		unlock_dir(fd);
		return rc;
	}
	return -ENOENT;
}

static void spool_write(const struct tlsrpt *r, const struct period *p)
{
	char pdir[PATH_MAX], rid[400];
	uint64_t dropped = 0;
	pathf(pdir, "%s/spool/%" PRId64 "-%" PRId64, r->dir, p->begin, p->end);
	for (size_t b = 0; b < BUCKETS; b++)
		for (const struct dentry *e = p->tab[b]; e; e = e->next) {
			const struct tlsrpt_domain *d = &e->d;
			dropped = sat_add(dropped, d->dropped);
			if (d->npolicies == 0)
				continue;
			tlsrpt_make_report_id(r->submitter, p->begin, rid, sizeof rid);
			struct tlsrpt_report_meta m = { r->org, r->contact, rid, p->begin, p->end };
			char *json = NULL;
			size_t len = 0;
			int rc = tlsrpt_report_json(&m, d, &json, &len);
			if (rc == 0)
				rc = spool_put(r, pdir, d->domain, json, len);
			free(json);
			if (rc < 0)
				spool_log(LOG_ERROR, d->domain, p->begin, p->end, "counts lost", pdir, rc);
		}
	if (p->dropped_domains || dropped) {
		char nd[24], ne[24];
		snprintf(nd, sizeof nd, "%" PRIu64, p->dropped_domains);
		snprintf(ne, sizeof ne, "%" PRIu64, dropped);
		log_event(LOG_WARN, NULL, NULL, "tlsrpt_spool", "action", "dropped", "domains", nd,
			  "evaluations", ne, NULL);
	}
}

/* Merges the partials of one domain and period into a report (see tlsrpt.h), then
 * submits it. 0, or -errno (the partials stay for a later scan). */
static int merge_domain(struct job *j, int64_t b, int64_t e, const char *pdir,
			const char *domain)
{
	struct tlsrpt *r = j->r;
	char ddir[PATH_MAX], path[PATH_MAX], fname[PATH_MAX], gzname[PATH_MAX];
	if (pathf(ddir, "%s/%s", pdir, domain) < 0)
		return -ENAMETOOLONG;
	int fd = lock_dir(ddir);
	if (fd < 0)
		return fd == -ENOENT ? 0 : fd;
	char **names = NULL;
	size_t n = 0;
	int rc = list_dir(ddir, is_partial, &names, &n);
	if (rc < 0 || n == 0) {
		unlock_dir(fd);
		return rc;
	}
	pathf(path, "%s/done", ddir);
	int done = access(path, F_OK) == 0;
	struct tlsrpt_domain agg;
	tlsrpt_domain_init(&agg, domain);
	char *used = calloc(n, 1);
	char *json = NULL;
	uint8_t *gz = NULL;
	size_t jlen = 0, gzlen = 0;
	if (!used) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		char *text = NULL, err[160];
		size_t len = 0;
		int64_t pb, pe;
		pathf(path, "%s/%s", ddir, names[i]);
		rc = read_file(path, TLSRPT_REPORT_MAX, &text, &len);
		if (rc == -ENOENT)
			continue;
		if (rc < 0 && rc != -EFBIG)
			goto out;
		struct tlsrpt_domain part;
		if (rc == 0) {
			rc = tlsrpt_report_parse(text, len, &part, &pb, &pe, err, sizeof err);
			free(text);
			if (rc == -ENOMEM)
				goto out;
			if (rc == 0 && ((part.domain[0] && strcmp(part.domain, domain) != 0) ||
					pb != b || pe != e)) {
				tlsrpt_domain_free(&part);
				rc = -EINVAL;
			}
		}
		if (rc < 0) { /* unreadable: kept aside for a look, never merged */
			char bad[PATH_MAX];
			pathf(bad, "%s/.bad-%s", ddir, names[i]);
			rename(path, bad);
			spool_log(LOG_WARN, domain, b, e, "partial set aside", bad, rc);
			rc = 0;
			continue;
		}
		rc = tlsrpt_domain_merge(&agg, &part);
		tlsrpt_domain_free(&part);
		if (rc < 0)
			goto out;
		used[i] = 1;
	}
	if (r->hold_lock_ms)
		usleep(r->hold_lock_ms * 1000u);
	char report_id[400];
	tlsrpt_make_report_id(r->submitter, b, report_id, sizeof report_id);
	fname[0] = '\0';
	if (agg.npolicies) {
		struct tlsrpt_report_meta m = { r->org, r->contact, report_id, b, e };
		rc = tlsrpt_report_json(&m, &agg, &json, &jlen);
		if (rc == 0)
			rc = gzip_buf(json, jlen, &gz, &gzlen);
		if (rc < 0)
			goto out;
		pathf(fname, "%s!%s!%" PRId64 "!%" PRId64 ".json", r->submitter,
			 domain, b, e);
		pathf(path, "%s/%s", r->dir, fname);
		if (done || access(path, F_OK) == 0) { /* a late partial: a report of its own */
			char uid[17];
			rand_hex(uid, 16);
			pathf(fname, "%s!%s!%" PRId64 "!%" PRId64 "!%s.json",
				 r->submitter, domain, b, e, uid);
		}
		pathf(gzname, "%s.gz", fname);
		rc = write_atomic(r->dir, fname, json, jlen);
		if (rc == 0)
			rc = write_atomic(r->dir, gzname, gz, gzlen);
		if (rc < 0)
			goto out;
	}
	if (!done) {
		char mark[PATH_MAX + 2];
		int ml = snprintf(mark, sizeof mark, "%s\n", fname);
		rc = write_atomic(ddir, "done", mark, (size_t)ml);
		if (rc < 0)
			goto out;
	}
	for (size_t i = 0; i < n; i++)
		if (used[i]) {
			pathf(path, "%s/%s", ddir, names[i]);
			if (unlink(path) < 0) /* it would be reported again as a late partial */
				spool_log(LOG_ERROR, domain, b, e, "merged partial not removed", path,
					  -errno);
		}
	unlock_dir(fd);
	fd = -1;
	if (agg.npolicies) {
		struct report rep = { domain, report_id, gzname, b, e, gz, gzlen };
		pathf(path, "%s/%s", r->dir, fname);
		deliver(j, &agg, &rep, path);
	}
	rc = 0;
out:
	if (fd >= 0)
		unlock_dir(fd);
	tlsrpt_domain_free(&agg);
	strv_free(names, n);
	free(used);
	free(json);
	free(gz);
	return rc;
}

static int has_partials(const char *ddir)
{
	DIR *d = opendir(ddir);
	struct dirent *e;
	int found = 0;
	while (d && !found && (e = readdir(d)) != NULL)
		found = is_partial(e->d_name);
	if (d)
		closedir(d);
	return found;
}

/* Removes the spool directories of an old period with nothing left to merge. */
static void cleanup_period(const char *pdir, char **doms, size_t nd)
{
	char ddir[PATH_MAX], path[PATH_MAX];
	for (size_t i = 0; i < nd; i++) {
		pathf(ddir, "%s/%s", pdir, doms[i]);
		int fd = lock_dir(ddir);
		if (fd < 0)
			continue;
		char **tmps = NULL;
		size_t nt = 0;
		if (has_partials(ddir)) {
			unlock_dir(fd);
			continue;
		}
		if (list_dir(ddir, is_tmp, &tmps, &nt) == 0)
			for (size_t k = 0; k < nt; k++) {
				pathf(path, "%s/%s", ddir, tmps[k]);
				unlink(path);
			}
		strv_free(tmps, nt);
		pathf(path, "%s/done", ddir);
		unlink(path);
		pathf(path, "%s/.lock", ddir);
		unlink(path);
		unlock_dir(fd);
		rmdir(ddir); /* fails while .bad- files are there */
	}
	rmdir(pdir);
}

/* Merges every domain of every finished period past its grace time; returns when the
 * next scan is due (wall ms). */
static int64_t spool_scan(struct job *j)
{
	struct tlsrpt *r = j->r;
	int64_t now = wall_ms(), next = INT64_MAX;
	char sdir[PATH_MAX], pdir[PATH_MAX], ddir[PATH_MAX];
	pathf(sdir, "%s/spool", r->dir);
	char **periods = NULL;
	size_t np = 0;
	int rc = list_dir(sdir, is_period_dir, &periods, &np);
	if (rc < 0) {
		spool_log(LOG_WARN, NULL, 0, 0, "scan failed", sdir, rc);
		return now + r->retry_ms;
	}
	for (size_t i = 0; i < np; i++) {
		int64_t b, e;
		parse_period(periods[i], &b, &e);
		if (now < e * 1000 + r->grace_ms) {
			if (e * 1000 + r->grace_ms < next)
				next = e * 1000 + r->grace_ms;
			continue;
		}
		if (stopping(r))
			break;
		pathf(pdir, "%s/%s", sdir, periods[i]);
		char **doms = NULL;
		size_t nd = 0;
		if (list_dir(pdir, is_domain_dir, &doms, &nd) < 0)
			continue;
		for (size_t k = 0; k < nd && !stopping(r); k++) {
			pathf(ddir, "%s/%s", pdir, doms[k]);
			if (!has_partials(ddir))
				continue;
			rc = merge_domain(j, b, e, pdir, doms[k]);
			if (rc < 0) {
				spool_log(LOG_WARN, doms[k], b, e, "merge failed, retried later", ddir,
					  rc);
				if (now + r->retry_ms < next)
					next = now + r->retry_ms;
			}
		}
		if (e + KEEP_PERIODS * r->interval_s < now / 1000 && !stopping(r))
			cleanup_period(pdir, doms, nd);
		strv_free(doms, nd);
	}
	strv_free(periods, np);
	return next;
}

/* ================================================================ the loop */

static void tick(struct tlsrpt *r);

static void work_cb(uv_work_t *req)
{
	struct job *j = req->data;
	for (const struct period *p = j->flush; p; p = p->next)
		spool_write(j->r, p);
	if (j->scan)
		j->next_scan = spool_scan(j);
	if (j->ub)
		ub_ctx_delete(j->ub);
	j->ub = NULL;
}

static void destroy(struct tlsrpt *r)
{
	if (r->https)
		tls_ctx_free(r->https);
	free(r->dir);
	free(r->org);
	free(r->submitter);
	free(r->contact);
	free(r->relay_host);
	free(r->resolver);
	free(r->trust_anchor);
	free(r->ca);
	free(r->helo);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

static void maybe_destroy(struct tlsrpt *r)
{
	if (r->freeing && r->timer_closed && !r->busy && !r->pending)
		destroy(r);
}

static void after_work_cb(uv_work_t *req, int status);
static void timer_cb(uv_timer_t *t);

static void start_job(struct tlsrpt *r, struct period *flush, int scan)
{
	struct job *j = calloc(1, sizeof *j);
	if (!j) { /* tried again at the next tick (or the end of tlsrpt_free's flush) */
		struct period **pp = &r->pending;
		while (*pp)
			pp = &(*pp)->next;
		*pp = flush;
		if (!r->freeing)
			uv_timer_start(&r->timer, timer_cb, 1000, 0);
		return;
	}
	j->r = r;
	j->flush = flush;
	j->scan = scan;
	j->next_scan = INT64_MAX;
	j->req.data = j;
	if (scan)
		r->next_scan = INT64_MAX;
	r->busy = 1;
	uv_queue_work(r->loop, &j->req, work_cb, after_work_cb);
}

static void after_work_cb(uv_work_t *req, int status)
{
	(void)status;
	struct job *j = req->data;
	struct tlsrpt *r = j->r;
	r->busy = 0;
	if (j->scan && j->next_scan < r->next_scan)
		r->next_scan = j->next_scan;
	for (struct period *p = j->flush, *n; p; p = n) {
		n = p->next;
		if (p->end * 1000 + r->grace_ms < r->next_scan)
			r->next_scan = p->end * 1000 + r->grace_ms;
		period_free(p);
	}
	free(j);
	if (r->freeing) {
		struct period *p = r->pending;
		r->pending = NULL;
		if (p)
			start_job(r, p, 0);
		else
			maybe_destroy(r);
		return;
	}
	tick(r);
}

static void timer_cb(uv_timer_t *t)
{
	tick(t->data);
}

/* Flushes finished periods, scans when due, or sleeps until one of them is due. */
static void tick(struct tlsrpt *r)
{
	if (r->busy || r->freeing)
		return;
	int64_t now = wall_ms(), next_end = INT64_MAX;
	struct period *flush = r->pending;
	r->pending = NULL;
	pthread_mutex_lock(&r->mu);
	for (struct period **pp = &r->periods; *pp;) {
		struct period *p = *pp;
		if (p->end * 1000 + r->settle_ms <= now) {
			*pp = p->next;
			p->next = flush;
			flush = p;
		} else {
			if (p->end * 1000 + r->settle_ms < next_end)
				next_end = p->end * 1000 + r->settle_ms;
			pp = &p->next;
		}
	}
	pthread_mutex_unlock(&r->mu);
	int scan = now >= r->next_scan;
	if (flush || scan) {
		start_job(r, flush, scan);
		return;
	}
	int64_t s = now / 1000, cur_end = (s - s % r->interval_s + r->interval_s) * 1000 + r->settle_ms;
	int64_t next = r->next_scan;
	if (next_end < next)
		next = next_end;
	if (cur_end < next)
		next = cur_end;
	int64_t delay = next - now;
	if (delay < 1)
		delay = 1;
	if (delay > TIMER_MAX_MS)
		delay = TIMER_MAX_MS;
	uv_timer_start(&r->timer, timer_cb, (uint64_t)delay, 0);
}

static void timer_close_cb(uv_handle_t *h)
{
	struct tlsrpt *r = h->data;
	r->timer_closed = 1;
	maybe_destroy(r);
}

void tlsrpt_free(struct tlsrpt *r)
{
	if (!r || r->freeing)
		return;
	r->freeing = 1;
	__atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
	uv_timer_stop(&r->timer);
	uv_close((uv_handle_t *)&r->timer, timer_close_cb);
	pthread_mutex_lock(&r->mu);
	struct period *all = r->periods;
	r->periods = NULL;
	pthread_mutex_unlock(&r->mu);
	struct period **pp = &r->pending;
	while (*pp)
		pp = &(*pp)->next;
	*pp = all;
	if (!r->busy && r->pending) {
		struct period *p = r->pending;
		r->pending = NULL;
		start_job(r, p, 0);
	}
}

/* A host name as written (any case, no trailing dot). */
static int host_chars(const char *s)
{
	char tmp[254];
	size_t n = strlen(s);
	return n > 0 && s[n - 1] != '.' && domain_norm(s, tmp) == 0;
}

/* An address for MAIL FROM and From: printable, no space, no <>()",;\, one '@'. */
static int addr_ok(const char *s)
{
	const char *at = strchr(s, '@');
	if (!at || at == s || strchr(at + 1, '@') || !host_chars(at + 1) || strlen(s) > 320)
		return 0;
	for (; *s; s++)
		if (*s <= 0x20 || *s >= 0x7f || strchr("<>()\",;\\[]:", *s))
			return 0;
	return 1;
}

static char *dup_or(const char *s, const char *dflt, int *oom)
{
	const char *v = s ? s : dflt;
	if (!v)
		return NULL;
	char *c = strdup(v);
	if (!c)
		*oom = 1;
	return c;
}

int tlsrpt_new(uv_loop_t *loop, const struct tlsrpt_opts *o, struct tlsrpt **out, char *err,
	       size_t errlen)
{
	char relay_host[256] = "", contact[400], fwd[INET6_ADDRSTRLEN + 8] = "", sdir[PATH_MAX];
	uint16_t relay_port = 0;
	*out = NULL;
	if (!o->dir || !o->dir[0] || strlen(o->dir) >= DIR_MAX) {
		snprintf(err, errlen, "tlsrpt_dir: missing or too long");
		return -EINVAL;
	}
	if (!o->submitter || !host_chars(o->submitter)) {
		snprintf(err, errlen, "tlsrpt submitter \"%s\": not a host name",
			 o->submitter ? o->submitter : "");
		return -EINVAL;
	}
	if (o->helo && !host_chars(o->helo)) {
		snprintf(err, errlen, "tlsrpt helo \"%s\": not a host name", o->helo);
		return -EINVAL;
	}
	snprintf(contact, sizeof contact, "%s%s", o->contact ? "" : "postmaster@",
		 o->contact ? o->contact : o->submitter);
	if (!addr_ok(contact)) {
		snprintf(err, errlen, "tlsrpt contact \"%s\": not a plain address local@domain",
			 contact);
		return -EINVAL;
	}
	uint64_t interval = o->interval_s ? o->interval_s : DEFAULT_INTERVAL_S;
	if (interval > 366 * 86400) {
		snprintf(err, errlen, "tlsrpt_interval: at most 366 days");
		return -EINVAL;
	}
	if (o->relay && cfg_parse_hostport(o->relay, relay_host, sizeof relay_host, &relay_port) < 0) {
		snprintf(err, errlen, "tlsrpt_relay \"%s\": not HOST:PORT", o->relay);
		return -EINVAL;
	}
	if (o->resolver && dns_parse_resolver(o->resolver, fwd, sizeof fwd) < 0) {
		snprintf(err, errlen, "resolver \"%s\": not IP, IP:PORT or [IPv6]:PORT", o->resolver);
		return -EINVAL;
	}
	const char *ca = o->ca ? o->ca : DEFAULT_CA;
	if (o->ca && access(o->ca, R_OK) < 0) {
		snprintf(err, errlen, "tlsrpt ca %s: %s", o->ca, strerror(errno));
		return -EINVAL;
	}
	if (o->trust_anchor && access(o->trust_anchor, R_OK) < 0) {
		snprintf(err, errlen, "trust anchor %s: %s", o->trust_anchor, strerror(errno));
		return -EINVAL;
	}
	pathf(sdir, "%s/spool", o->dir);
	int rc = mkdir_one(o->dir);
	if (rc == 0)
		rc = mkdir_one(sdir);
	if (rc == 0 && access(sdir, W_OK) < 0)
		rc = -errno;
	if (rc < 0) {
		snprintf(err, errlen, "tlsrpt_dir %s: %s", o->dir, strerror(-rc));
		return -EINVAL;
	}
	struct tlsrpt *r = calloc(1, sizeof *r);
	if (!r) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int oom = 0;
	r->loop = loop;
	r->dir = dup_or(o->dir, NULL, &oom);
	r->submitter = dup_or(o->submitter, NULL, &oom);
	r->org = dup_or(o->org, o->submitter, &oom);
	r->contact = dup_or(contact, NULL, &oom);
	r->helo = dup_or(o->helo, o->submitter, &oom);
	r->relay_host = o->relay ? dup_or(relay_host, NULL, &oom) : NULL;
	r->relay_port = relay_port;
	r->resolver = dup_or(o->resolver, NULL, &oom);
	r->trust_anchor = dup_or(o->trust_anchor, NULL, &oom);
	r->ca = dup_or(ca, NULL, &oom);
	r->interval_s = (int64_t)interval;
	r->grace_ms = o->grace_ms ? (int64_t)o->grace_ms
				  : (int64_t)(interval * 100 < GRACE_MAX_MS ? interval * 100 : GRACE_MAX_MS);
	r->settle_ms = r->grace_ms / 4 < 1000 ? r->grace_ms / 4 : 1000;
	r->retry_ms = r->grace_ms < 1000 ? 1000 : r->grace_ms > RETRY_MAX_MS ? RETRY_MAX_MS : r->grace_ms;
	r->timeout_ms = o->timeout_ms ? (int64_t)o->timeout_ms : DEFAULT_TIMEOUT_MS;
	r->hold_lock_ms = o->hold_lock_ms;
	pthread_mutex_init(&r->mu, NULL);
	if (oom) {
		destroy(r);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	/* The resolver options and the trust anchor are checked now, not at the first report. */
	struct ub_ctx *ub = make_ub(r, err, errlen);
	if (!ub) {
		destroy(r);
		return -EINVAL;
	}
	ub_ctx_delete(ub);
	uv_timer_init(loop, &r->timer);
	r->timer.data = r;
	uv_unref((uv_handle_t *)&r->timer);
	r->next_scan = 0; /* a scan at once: periods left by earlier runs */
	tick(r);
	*out = r;
	return 0;
}
