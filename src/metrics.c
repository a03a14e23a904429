/* metrics.c - per-route counters and their Prometheus text (see metrics.h). */
#include "metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
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

static const char *const refusals[] = { "upstream-unreachable", "max-connections",
				       "max-connections-per-client", "client-not-allowed",
				       "proxy-protocol", "other" };
#define NREFUSALS 6
static const char *const sources[] = { "route", "table", "mta-sts", "dane", "dane-unusable",
				      "no-policy" };
#define NSOURCES 6
static const char *const levels[] = { "none", "may", "encrypt", "fingerprint", "verify",
				     "mta-sts", "dane", "auto", "other" };
#define NLEVELS 9
/* Histogram bucket bounds, microseconds (the text says seconds). */
static const uint64_t bounds_us[] = { 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
				      500000, 1000000, 2500000, 5000000, 10000000 };
#define NBOUNDS (sizeof(bounds_us) / sizeof(bounds_us[0]))

struct hist {
	uint64_t bucket[NBOUNDS + 1]; /* per bucket (not cumulative); the last is +Inf */
	uint64_t sum_us, count;
};

struct metrics_route {
	struct metrics_route *next;
	uint64_t connections_total;
	int64_t connections_active;
	uint64_t bytes_up, bytes_down;
	uint64_t handshakes[2][NVERSIONS][NRESULTS + 1]; /* side, version, 0 ok or result + 1 */
	uint64_t policy[NRESULTS][2];         /* result, testing */
	uint64_t evals[3][NRESULTS + 1];      /* policy type, 0 success or result + 1 */
	int64_t cert_not_after[2];            /* side; 0: no certificate */
	uint64_t messages[3];                 /* accepted, deferred, rejected */
	uint64_t refused[NREFUSALS];
	uint64_t decisions[NSOURCES][NLEVELS];
	struct hist handshake[2], connect;    /* handshake: side */
	char name[];
};

static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t lock;
static struct metrics_route *routes, **tail = &routes;
static double start_time; /* process_start_time_seconds */

static void init(void)
{
	uv_mutex_init(&lock);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

static const char *const message_results[] = { "accepted", "deferred", "rejected" };

void metrics_message(struct metrics_route *m, const char *result)
{
	for (int i = 0; m && i < 3; i++)
		if (!strcmp(result, message_results[i]))
			ADD(m->messages[i], 1);
}

static int index_of(const char *const *names, int n, const char *name)
{
	for (int i = 0; name && i < n - 1; i++)
		if (!strcmp(name, names[i]))
			return i;
	return n - 1;
}

void metrics_refusal(struct metrics_route *m, const char *reason)
{
	if (m)
		ADD(m->refused[index_of(refusals, NREFUSALS, reason)], 1);
}

static void observe(struct hist *h, uint64_t usec)
{
	size_t b = 0;
	while (b < NBOUNDS && usec > bounds_us[b])
		b++;
	ADD(h->bucket[b], 1);
	ADD(h->sum_us, usec);
	ADD(h->count, 1);
}

void metrics_handshake_time(struct metrics_route *m, int side, uint64_t usec)
{
	if (m)
		observe(&m->handshake[side ? 1 : 0], usec);
}

void metrics_connect_time(struct metrics_route *m, uint64_t usec)
{
	if (m)
		observe(&m->connect, usec);
}

void metrics_policy_decision(struct metrics_route *m, const char *source, const char *level)
{
	if (!m)
		return;
	int s = NSOURCES - 1;
	for (int i = 0; source && i < NSOURCES; i++)
		if (!strncmp(source, sources[i], strlen(sources[i])) &&
		    (source[strlen(sources[i])] == '\0' || source[strlen(sources[i])] == ':'))
			s = i;
	ADD(m->decisions[s][index_of(levels, NLEVELS, level)], 1);
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

/* One histogram's lines (cumulative buckets, sum, count); nothing before its first
 * observation. */
static void emit_hist(struct out *o, const char *name, const char *labels, struct hist *h)
{
	uint64_t count = GET(h->count);
	if (!count)
		return;
	uint64_t cum = 0;
	for (size_t b = 0; b <= NBOUNDS; b++) {
		cum += GET(h->bucket[b]);
		if (b < NBOUNDS)
			emit(o, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels,
			     (double)bounds_us[b] / 1e6, (unsigned long long)cum);
		else /* +Inf equals _count: the count is read after the buckets */
			emit(o, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
			     (unsigned long long)(cum > count ? cum : count));
	}
	emit(o, "%s_sum{%s} %.6f\n", name, labels, (double)GET(h->sum_us) / 1e6);
	emit(o, "%s_count{%s} %llu\n", name, labels, (unsigned long long)(cum > count ? cum : count));
}

/* The process: the metric names every Prometheus client library uses. */
static void emit_process(struct out *o)
{
	long fds = 0;
	DIR *d = opendir("/proc/self/fd");
	if (d) {
		struct dirent *e;
		while ((e = readdir(d)))
			fds += e->d_name[0] != '.';
		closedir(d);
		fds--; /* the directory's own descriptor */
	}
	struct rlimit rl = { 0, 0 };
	getrlimit(RLIMIT_NOFILE, &rl);
	unsigned long long vsize = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f) {
		if (fscanf(f, "%llu %llu", &vsize, &rss) != 2)
			vsize = rss = 0;
		fclose(f);
	}
	long page = sysconf(_SC_PAGESIZE);
	struct rusage ru;
	memset(&ru, 0, sizeof(ru));
	getrusage(RUSAGE_SELF, &ru);
	double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
		     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	emit(o, "# HELP process_cpu_seconds_total Total user and system CPU time spent in "
		"seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "
		"%.6f\n", cpu);
	emit(o, "# HELP process_open_fds Number of open file descriptors.\n"
		"# TYPE process_open_fds gauge\nprocess_open_fds %ld\n", fds < 0 ? 0 : fds);
	emit(o, "# HELP process_max_fds Maximum number of open file descriptors.\n"
		"# TYPE process_max_fds gauge\nprocess_max_fds %llu\n",
	     (unsigned long long)rl.rlim_cur);
	emit(o, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
		"# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %llu\n",
	     vsize * (unsigned long long)page);
	emit(o, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
		"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %llu\n",
	     rss * (unsigned long long)page);
	emit(o, "# HELP process_start_time_seconds Start time of the process since unix epoch "
		"in seconds.\n# TYPE process_start_time_seconds gauge\n"
		"process_start_time_seconds %.3f\n", start_time);
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
	emit(&o, "# HELP starttls_proxy_refusals_total Clients and sessions turned away, by "
		 "reason.\n# TYPE starttls_proxy_refusals_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next)
		for (int r = 0; r < NREFUSALS; r++)
			if (GET(m->refused[r]))
				emit(&o, "starttls_proxy_refusals_total{route=\"%s\",reason=\"%s\"} "
					 "%llu\n", m->name, refusals[r],
				     (unsigned long long)GET(m->refused[r]));
	emit(&o, "# HELP starttls_proxy_policy_decisions_total Upstream policies decided, by "
		 "source (route, table, mta-sts, dane, ...) and level.\n"
		 "# TYPE starttls_proxy_policy_decisions_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next)
		for (int a = 0; a < NSOURCES; a++)
			for (int l = 0; l < NLEVELS; l++)
				if (GET(m->decisions[a][l]))
					emit(&o, "starttls_proxy_policy_decisions_total{route=\"%s\","
						 "source=\"%s\",policy=\"%s\"} %llu\n", m->name,
					     sources[a], levels[l],
					     (unsigned long long)GET(m->decisions[a][l]));
	emit(&o, "# HELP starttls_proxy_handshake_duration_seconds TLS handshakes that "
		 "completed, by side.\n"
		 "# TYPE starttls_proxy_handshake_duration_seconds histogram\n");
	for (struct metrics_route *m = first; m; m = m->next)
		for (int sd = 0; sd < 2; sd++) {
			char labels[400];
			snprintf(labels, sizeof(labels), "route=\"%s\",side=\"%s\"", m->name,
				 sd ? "upstream" : "client");
			emit_hist(&o, "starttls_proxy_handshake_duration_seconds", labels,
				  &m->handshake[sd]);
		}
	emit(&o, "# HELP starttls_proxy_upstream_connect_seconds TCP connects to the upstream "
		 "that succeeded.\n# TYPE starttls_proxy_upstream_connect_seconds histogram\n");
	for (struct metrics_route *m = first; m; m = m->next) {
		char labels[300];
		snprintf(labels, sizeof(labels), "route=\"%s\"", m->name);
		emit_hist(&o, "starttls_proxy_upstream_connect_seconds", labels, &m->connect);
	}
	emit(&o, "# HELP starttls_proxy_messages_total Messages relayed, by the upstream's final "
		 "reply (accepted 2xx, deferred 4xx, rejected 5xx).\n"
		 "# TYPE starttls_proxy_messages_total counter\n");
	for (struct metrics_route *m = first; m; m = m->next)
		for (int r = 0; r < 3; r++)
			if (GET(m->messages[r]))
				emit(&o, "starttls_proxy_messages_total{route=\"%s\",result=\"%s\"} "
					 "%llu\n", m->name, message_results[r],
				     (unsigned long long)GET(m->messages[r]));
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
	emit_process(&o);
	if (o.failed) {
		free(o.buf);
		return NULL;
	}
	*len = o.len;
	return o.buf;
}
