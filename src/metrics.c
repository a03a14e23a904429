/* metrics.c - per-route counters and their Prometheus text (see metrics.h). */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

static const char *const versions[] = { "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "none" };
#define NVERSIONS 5
static const char *const results[] = {
	"starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
	"certificate-not-trusted", "validation-failure", "tls-handshake-failure",
	"sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid", "tlsa-invalid",
	"dnssec-invalid", "dane-required", "other",
};
#define NRESULTS 13
static const char *const policy_types[] = { "sts", "tlsa", "no-policy-found" };

struct metrics_route {
	struct metrics_route *next;
	uint64_t connections_total;
	int64_t connections_active;
	uint64_t bytes_up, bytes_down;
	uint64_t handshakes[2][NVERSIONS][NRESULTS + 1]; /* side, version, 0 ok or result + 1 */
	uint64_t policy[NRESULTS][2];         /* result, testing */
	uint64_t evals[3][NRESULTS + 1];      /* policy type, 0 success or result + 1 */
	int64_t cert_not_after[2];            /* side; 0: no certificate */
	char name[];
};

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t lock;
static struct metrics_route *routes, **tail = &routes;

static void init(void)
{
	uv_mutex_init(&lock);
}

struct metrics_route *metrics_route(const char *name)
{
	uv_once(&once, init);
	uv_mutex_lock(&lock);
	struct metrics_route *m = routes;
	while (m && strcmp(m->name, name) != 0)
		m = m->next;
	if (!m && (m = calloc(1, sizeof(*m) + strlen(name) + 1))) {
		strcpy(m->name, name);
		*tail = m; /* kept in order of first appearance */
		tail = &m->next;
	}
	uv_mutex_unlock(&lock);
	return m;
}

#define ADD(field, n) __atomic_add_fetch(&(field), (n), __ATOMIC_RELAXED)
#define GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

void metrics_conn_open(struct metrics_route *m)
{
	if (!m)
		return;
	ADD(m->connections_total, 1);
	ADD(m->connections_active, 1);
}

void metrics_conn_close(struct metrics_route *m)
{
	if (m)
		ADD(m->connections_active, -1);
}

void metrics_bytes(struct metrics_route *m, int up, uint64_t n)
{
	if (!m)
		return;
	if (up)
		ADD(m->bytes_up, n);
	else
		ADD(m->bytes_down, n);
}

void metrics_cert_expiry(struct metrics_route *m, int side, int64_t not_after)
{
	if (m)
		__atomic_store_n(&m->cert_not_after[side ? 1 : 0], not_after, __ATOMIC_RELAXED);
}

static int result_index(const char *result)
{
	int r = NRESULTS - 1;
	for (int i = 0; result && i < NRESULTS - 1; i++)
		if (strcmp(result, results[i]) == 0)
			r = i;
	return r;
}

void metrics_handshake(struct metrics_route *m, int side, const char *version,
		       const char *result)
{
	if (!m)
		return;
	int v = NVERSIONS - 1;
	for (int i = 0; version && i < NVERSIONS - 1; i++)
		if (strcmp(version, versions[i]) == 0)
			v = i;
	ADD(m->handshakes[side ? 1 : 0][v][result ? result_index(result) + 1 : 0], 1);
}

void metrics_policy_failure(struct metrics_route *m, const char *result, int testing)
{
	if (!m)
		return;
	ADD(m->policy[result_index(result)][testing ? 1 : 0], 1);
}

void metrics_evaluation(struct metrics_route *m, int type, const char *result)
{
	if (m && type >= 0 && type < 3)
		ADD(m->evals[type][result ? result_index(result) + 1 : 0], 1);
}

struct out {
	char *buf;
	size_t len, cap;
	int failed;
};

static void emit(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(struct out *o, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			o->failed = 1;
			return;
		}
		if ((size_t)n < o->cap - o->len) {
			o->len += (size_t)n;
			return;
		}
		size_t cap = o->cap * 2 + (size_t)n;
		char *nb = realloc(o->buf, cap);
		if (!nb) {
			o->failed = 1;
			return;
		}
		o->buf = nb;
		o->cap = cap;
	}
}

char *metrics_render(size_t *len)
{
	uv_once(&once, init);
	struct out o = { .buf = malloc(8192), .cap = 8192 };
	if (!o.buf)
		return NULL;
	o.buf[0] = '\0';
	uv_mutex_lock(&lock);
	struct metrics_route *first = routes;
	emit(&o, "# HELP starttls_proxy_connections_total Client connections accepted.\n"
		 "# TYPE starttls_proxy_connections_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next)
		emit(&o, "starttls_proxy_connections_total{route=\"%s\"} %llu\n", m->name,
		     (unsigned long long)GET(m->connections_total));
	emit(&o, "# HELP starttls_proxy_connections_active Sessions open now.\n"
		 "# TYPE starttls_proxy_connections_active gauge\n");
	for (struct metrics_route *m = first; m; m = m->next)
		emit(&o, "starttls_proxy_connections_active{route=\"%s\"} %lld\n", m->name,
		     (long long)GET(m->connections_active));
	emit(&o, "# HELP starttls_proxy_tls_handshakes_total TLS handshakes by side, version "
		 "and result.\n# TYPE starttls_proxy_tls_handshakes_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next)
		for (int s = 0; s < 2; s++)
			for (int v = 0; v < NVERSIONS; v++)
				for (int r = 0; r <= NRESULTS; r++) {
					uint64_t n = GET(m->handshakes[s][v][r]);
					if (n)
						emit(&o,
						     "starttls_proxy_tls_handshakes_total{route=\"%s\","
						     "side=\"%s\",version=\"%s\",result=\"%s\"} %llu\n",
						     m->name, s ? "upstream" : "client", versions[v],
						     r ? results[r - 1] : "ok", (unsigned long long)n);
				}
	emit(&o, "# HELP starttls_proxy_policy_failures_total Failed TLS requirements (RFC 8460 "
		 "result types).\n# TYPE starttls_proxy_policy_failures_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next)
		for (int r = 0; r < NRESULTS; r++)
			for (int t = 0; t < 2; t++) {
				uint64_t n = GET(m->policy[r][t]);
				if (n)
					emit(&o,
					     "starttls_proxy_policy_failures_total{route=\"%s\","
					     "result=\"%s\",mode=\"%s\"} %llu\n",
					     m->name, results[r], t ? "testing" : "enforce",
					     (unsigned long long)n);
			}
	emit(&o, "# HELP starttls_proxy_policy_evaluations_total Recipient-domain policy "
		 "evaluations (TLSRPT sessions) by policy type and result.\n"
		 "# TYPE starttls_proxy_policy_evaluations_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next)
		for (int t = 0; t < 3; t++)
			for (int r = 0; r <= NRESULTS; r++) {
				uint64_t n = GET(m->evals[t][r]);
				if (n)
					emit(&o,
					     "starttls_proxy_policy_evaluations_total{route=\"%s\","
					     "policy_type=\"%s\",result=\"%s\"} %llu\n",
					     m->name, policy_types[t], r ? results[r - 1] : "success",
					     (unsigned long long)n);
			}
	emit(&o, "# HELP starttls_proxy_bytes_total Plaintext bytes relayed (up: client to "
		 "upstream).\n# TYPE starttls_proxy_bytes_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next) {
		emit(&o, "starttls_proxy_bytes_total{route=\"%s\",direction=\"up\"} %llu\n", m->name,
		     (unsigned long long)GET(m->bytes_up));
		emit(&o, "starttls_proxy_bytes_total{route=\"%s\",direction=\"down\"} %llu\n",
		     m->name, (unsigned long long)GET(m->bytes_down));
	}
	emit(&o, "# HELP starttls_proxy_certificate_expiry_seconds Seconds until the route's "
		 "certificate expires (negative: expired).\n"
		 "# TYPE starttls_proxy_certificate_expiry_seconds gauge\n");
	int64_t now = (int64_t)time(NULL);
	for (struct metrics_route *m = first; m; m = m->next)
		for (int s = 0; s < 2; s++) {
			int64_t t = GET(m->cert_not_after[s]);
			if (t)
				emit(&o, "starttls_proxy_certificate_expiry_seconds{route=\"%s\","
					 "side=\"%s\"} %lld\n",
				     m->name, s ? "upstream" : "client", (long long)(t - now));
		}
	uv_mutex_unlock(&lock);
	if (o.failed) {
		free(o.buf);
		return NULL;
	}
	*len = o.len;
	return o.buf;
}
