/* test_metrics.c - per-route counters and their Prometheus text (metrics.h).
 *
 * The counters are process-wide and live forever, so every test uses route names of its own
 * and looks only at the lines of its routes; the first test sees the rendering before any
 * route exists. The whole rendering is checked against a strict reading of the Prometheus
 * text format (version 0.0.4), and the checker is itself checked on known-bad texts. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "metrics.h"

/* ------------------------------------------------------------------ helpers */

static char *render(void)
{
	size_t len = (size_t)-1;
	char *s = metrics_render(&len);
	assert_non_null(s);
	assert_int_equal(len, strlen(s));
	return s;
}

/* The sample lines of one route, in order, each ending in '\n'. */
static char *route_lines(const char *text, const char *route)
{
	size_t cap = 1, len = 0;
	char *out = calloc(1, cap);
	assert_non_null(out);
	char key[4200];
	snprintf(key, sizeof key, "{route=\"%s\"", route);
	size_t kl = strlen(key);
	for (const char *l = text; *l;) {
		const char *e = strchr(l, '\n');
		size_t ll = e ? (size_t)(e - l) + 1 : strlen(l);
		const char *k = memchr(l, '{', ll);
		if (k && (size_t)(l + ll - k) > kl && memcmp(k, key, kl) == 0 &&
		    (k[kl] == ',' || k[kl] == '}')) {
			out = realloc(out, cap + ll);
			assert_non_null(out);
			cap += ll;
			memcpy(out + len, l, ll);
			len += ll;
			out[len] = '\0';
		}
		l += ll;
	}
	return out;
}

static void assert_route_lines(const char *route, const char *want)
{
	char *text = render();
	char *got = route_lines(text, route);
	if (strcmp(got, want) != 0)
		print_message("route %s:\n--- got\n%s--- want\n%s---\n", route, got, want);
	assert_string_equal(got, want);
	free(got);
	free(text);
}

/* ------------------------------------------------------------------ format checker */

struct family {
	char name[128];
	char type[16];
	int help, samples;
};

struct checker {
	struct family fam[48];
	int nfam;
	int current; /* family of the last TYPE line, -1 before any */
	/* the histogram series being read: its labels but le, the last bucket's bound and
	 * cumulative count, the +Inf bucket's count (-1: not seen yet) */
	char hseries[4200];
	double hle, hcum, hinf;
	char **series;
	size_t nseries, cap;
	int problems;
};

static void problem(struct checker *c, int lineno, const char *line, const char *what)
{
	if (c->problems++ < 10)
		print_message("exposition line %d: %s: \"%.*s\"\n", lineno, what,
			      (int)strcspn(line, "\n"), line);
}

static size_t metric_name_len(const char *s)
{
	size_t i = 0;
	if (!(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
		return 0;
	while (isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':')
		i++;
	return i;
}

static size_t label_name_len(const char *s)
{
	size_t i = 0;
	if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
		return 0;
	while (isalnum((unsigned char)s[i]) || s[i] == '_')
		i++;
	return i;
}

static int find_family(struct checker *c, const char *name, size_t nl)
{
	for (int i = 0; i < c->nfam; i++)
		if (strlen(c->fam[i].name) == nl && memcmp(c->fam[i].name, name, nl) == 0)
			return i;
	return -1;
}

static int add_family(struct checker *c, const char *name, size_t nl)
{
	int f = find_family(c, name, nl);
	if (f >= 0 || c->nfam == 48 || nl >= sizeof(c->fam[0].name))
		return f;
	f = c->nfam++;
	memset(&c->fam[f], 0, sizeof(c->fam[f]));
	memcpy(c->fam[f].name, name, nl);
	return f;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_label(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* One sample line: name{label="value",...} integer. Labels are sorted into a series key. */
static void check_sample(struct checker *c, int lineno, const char *line, size_t ll)
{
	size_t nl = metric_name_len(line);
	if (!nl) {
		problem(c, lineno, line, "bad metric name");
		return;
	}
	int f = find_family(c, line, nl);
	/* a histogram's samples: NAME_bucket{...,le="B"}, NAME_sum, NAME_count */
	int hpart = 0; /* 1 bucket, 2 sum, 3 count */
	static const char *const suffixes[] = { "_bucket", "_sum", "_count" };
	for (int k = 0; f < 0 && k < 3; k++) {
		size_t sl = strlen(suffixes[k]);
		if (nl > sl && !memcmp(line + nl - sl, suffixes[k], sl)) {
			int hf = find_family(c, line, nl - sl);
			if (hf >= 0 && !strcmp(c->fam[hf].type, "histogram")) {
				f = hf;
				hpart = k + 1;
			}
		}
	}
	if (f < 0 || !c->fam[f].type[0]) {
		problem(c, lineno, line, "sample without a TYPE");
		return;
	}
	if (!hpart && !strcmp(c->fam[f].type, "histogram")) {
		problem(c, lineno, line, "histogram sample without _bucket/_sum/_count");
		return;
	}
	if (f != c->current)
		problem(c, lineno, line, "sample outside its family's block");
	c->fam[f].samples++;
	const char *p = line + nl, *end = line + ll;
	char labels[16][4200];
	int nlabels = 0;
	if (*p == '{') {
		p++;
		while (p < end && *p != '}') {
			size_t ln = label_name_len(p);
			if (!ln || p[ln] != '=' || p[ln + 1] != '"') {
				problem(c, lineno, line, "bad label");
				return;
			}
			if (nlabels == 16) {
				problem(c, lineno, line, "too many labels");
				return;
			}
			char *o = labels[nlabels];
			size_t ol = 0;
			memcpy(o, p, ln + 2);
			ol = ln + 2;
			p += ln + 2;
			while (p < end && *p != '"') {
				if (*p == '\n') {
					problem(c, lineno, line, "raw newline in a label value");
					return;
				}
				if (*p == '\\') {
					if (p[1] != '\\' && p[1] != '"' && p[1] != 'n') {
						problem(c, lineno, line,
							"bad escape in a label value");
						return;
					}
					o[ol++] = *p++;
				}
				if (ol >= sizeof(labels[0]) - 2) {
					problem(c, lineno, line,
						"label value too long for the checker");
					return;
				}
				o[ol++] = *p++;
			}
			if (p >= end) {
				problem(c, lineno, line, "unterminated label value");
				return;
			}
			o[ol++] = '"';
			o[ol] = '\0';
			p++;
			for (int i = 0; i < nlabels; i++)
				if (strncmp(labels[i], o, ln + 1) == 0)
					problem(c, lineno, line, "duplicate label name");
			nlabels++;
			if (*p == ',' && p[1] != '}')
				p++;
			else if (*p != '}') {
				problem(c, lineno, line, "expected ',' or '}' after a label");
				return;
			}
		}
		if (p >= end) {
			problem(c, lineno, line, "unterminated label set");
			return;
		}
		p++;
	}
	if (*p != ' ') {
		problem(c, lineno, line, "expected one space before the value");
		return;
	}
	p++;
	const char *v = p;
	if (*p == '-') {
		if (strcmp(c->fam[f].type, "gauge") != 0)
			problem(c, lineno, line, "negative counter or histogram value");
		p++;
	}
	const char *digits = p;
	if (!isdigit((unsigned char)*p))
		problem(c, lineno, line, "value is not a number");
	while (isdigit((unsigned char)*p))
		p++;
	if (*digits == '0' && p - digits > 1)
		problem(c, lineno, line, "leading zero");
	if (*p == '.') { /* a fraction: digits on both sides */
		p++;
		if (!isdigit((unsigned char)*p))
			problem(c, lineno, line, "a '.' without digits after it");
		while (isdigit((unsigned char)*p))
			p++;
	}
	if (p != end)
		problem(c, lineno, line, "trailing text after the value");
	double value = strtod(v, NULL);
	/* histograms: buckets cumulative, in increasing le, ending with +Inf = _count */
	if (hpart) {
		char rest[4200] = "", le[64] = "";
		size_t rl = 0;
		for (int i = 0; i < nlabels; i++) {
			if (!strncmp(labels[i], "le=\"", 4)) {
				snprintf(le, sizeof le, "%.*s", (int)strlen(labels[i]) - 5,
					 labels[i] + 4);
				continue;
			}
			rl += (size_t)snprintf(rest + rl, sizeof rest - rl, "%s,", labels[i]);
		}
		if (hpart == 1) {
			if (!le[0]) {
				problem(c, lineno, line, "bucket without le");
			} else if (strcmp(c->hseries, rest) != 0) { /* the series' first bucket */
				if (c->hinf < 0 && c->hseries[0])
					problem(c, lineno, line, "previous histogram without +Inf");
				snprintf(c->hseries, sizeof c->hseries, "%s", rest);
				c->hle = strtod(le, NULL);
				c->hcum = value;
				c->hinf = !strcmp(le, "+Inf") ? value : -1;
			} else {
				double b = !strcmp(le, "+Inf") ? 1e300 : strtod(le, NULL);
				if (b <= c->hle)
					problem(c, lineno, line, "le not increasing");
				if (value < c->hcum)
					problem(c, lineno, line, "bucket counts not cumulative");
				c->hle = b;
				c->hcum = value;
				if (!strcmp(le, "+Inf"))
					c->hinf = value;
			}
		} else if (le[0]) {
			problem(c, lineno, line, "le on _sum or _count");
		} else if (strcmp(c->hseries, rest) != 0 || c->hinf < 0) {
			problem(c, lineno, line, "_sum/_count without its buckets up to +Inf");
		} else if (hpart == 3 && value != c->hinf) {
			problem(c, lineno, line, "_count differs from the +Inf bucket");
		}
	}
	/* The series key: the name and its labels sorted. */
	qsort(labels, (size_t)nlabels, sizeof(labels[0]), cmp_label);
	size_t kl = nl + 3;
	for (int i = 0; i < nlabels; i++)
		kl += strlen(labels[i]) + 1;
	char *key = malloc(kl);
	assert_non_null(key);
	memcpy(key, line, nl);
	size_t kp = nl;
	key[kp++] = '{';
	for (int i = 0; i < nlabels; i++) {
		size_t l = strlen(labels[i]);
		memcpy(key + kp, labels[i], l);
		kp += l;
		key[kp++] = ',';
	}
	key[kp++] = '}';
	key[kp] = '\0';
	if (c->nseries == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 64;
		c->series = realloc(c->series, c->cap * sizeof(*c->series));
		assert_non_null(c->series);
	}
	c->series[c->nseries++] = key;
}

/* Returns the number of problems (printed); *samples gets the number of sample lines. */
static int check_exposition(const char *text, size_t len, int *samples)
{
	struct checker c = { .current = -1, .hinf = -1 };
	if (len != strlen(text))
		problem(&c, 0, "", "NUL byte in the text");
	if (len == 0 || text[len - 1] != '\n')
		problem(&c, 0, "", "the text does not end with a newline");
	int lineno = 0;
	for (const char *l = text; *l;) {
		const char *e = strchr(l, '\n');
		size_t ll = e ? (size_t)(e - l) : strlen(l);
		lineno++;
		if (ll == 0) {
			problem(&c, lineno, l, "empty line");
		} else if (strncmp(l, "# HELP ", 7) == 0 || strncmp(l, "# TYPE ", 7) == 0) {
			int help = l[2] == 'H';
			const char *n = l + 7;
			size_t nl = metric_name_len(n);
			if (!nl || n[nl] != ' ' || (size_t)(n + nl + 1 - l) >= ll) {
				problem(&c, lineno, l, "bad HELP/TYPE line");
			} else {
				int f = add_family(&c, n, nl);
				const char *rest = n + nl + 1;
				size_t rl = ll - (size_t)(rest - l);
				if (f < 0) {
					problem(&c, lineno, l, "too many families");
				} else if (help) {
					if (c.fam[f].help++)
						problem(&c, lineno, l, "second HELP");
					for (size_t i = 0; i < rl; i++)
						if (rest[i] == '\\' && rest[i + 1] != '\\' &&
						    rest[i + 1] != 'n')
							problem(&c, lineno, l,
								"bad escape in HELP");
						else if (rest[i] == '\\')
							i++;
				} else {
					if (c.fam[f].type[0])
						problem(&c, lineno, l, "second TYPE");
					else if (c.fam[f].samples)
						problem(&c, lineno, l, "TYPE after samples");
					if ((rl == 7 && memcmp(rest, "counter", 7) == 0) ||
					    (rl == 5 && memcmp(rest, "gauge", 5) == 0) ||
					    (rl == 9 && memcmp(rest, "histogram", 9) == 0))
						memcpy(c.fam[f].type, rest, rl);
					else
						problem(&c, lineno, l, "unknown TYPE");
					c.current = f;
				}
			}
		} else if (l[0] == '#') {
			problem(&c, lineno, l, "comment line");
		} else {
			check_sample(&c, lineno, l, ll);
		}
		l += ll + (e ? 1 : 0);
	}
	for (int f = 0; f < c.nfam; f++) {
		if (!c.fam[f].help || !c.fam[f].type[0])
			problem(&c, 0, c.fam[f].name, "family without both HELP and TYPE");
		if (strcmp(c.fam[f].type, "counter") == 0 &&
		    strcmp(c.fam[f].name + strlen(c.fam[f].name) - 6, "_total") != 0)
			problem(&c, 0, c.fam[f].name, "counter not named *_total");
	}
	if (c.nseries)
		qsort(c.series, c.nseries, sizeof(*c.series), cmp_str);
	for (size_t i = 1; i < c.nseries; i++)
		if (strcmp(c.series[i - 1], c.series[i]) == 0)
			problem(&c, 0, c.series[i], "duplicate series");
	for (size_t i = 0; i < c.nseries; i++)
		free(c.series[i]);
	free(c.series);
	if (samples)
		*samples = (int)c.nseries;
	return c.problems;
}

/* The checker rejects each of these bodies marked bad, accepts the others. */
#define H "# HELP h H.\n# TYPE h histogram\n"
static void test_checker_self_check(void **state)
{
	(void)state;
	static const char head[] = "# HELP a_total A.\n# TYPE a_total counter\n";
	static const struct {
		const char *body;
		int bad;
	} cases[] = {
		{ "a_total{route=\"r\",x=\"q\\\"\\\\\\n\"} 3\na_total{route=\"s\"} 0\n", 0 },
		{ "a_total{route=\"r\"} 1\na_total{route=\"r\"} 2\n", 1 }, /* duplicate series */
		{ "a_total{x=\"1\",y=\"2\"} 1\na_total{y=\"2\",x=\"1\"} 2\n",
		  1 },                                         /* same, reordered */
		{ "a_total{route=\"r\"q\"} 1\n", 1 },          /* raw quote */
		{ "a_total{route=\"r\\q\"} 1\n", 1 },          /* bad escape */
		{ "a_total{route=\"r\"} -1\n", 1 },            /* negative counter */
		{ "a_total{route=\"r\"} 1 1700000000\n", 1 },  /* timestamp */
		{ "a_total{route=\"r\"}  1\n", 1 },            /* two spaces */
		{ "a_total{route=\"r\",route=\"s\"} 1\n", 1 }, /* label twice */
		{ "a_total{9x=\"r\"} 1\n", 1 },                /* label name */
		{ "a_total{route=\"r\"} 1\n\n", 1 },           /* empty line */
		{ "a_total{route=\"r\"} 1", 1 },               /* no final newline */
		{ "b_total{route=\"r\"} 1\n", 1 },             /* no TYPE */
		{ "# comment\n", 1 },                          /* comment line */
		{ "# TYPE a_total counter\n", 1 },             /* second TYPE */
		{ "# HELP b_total B.\n# TYPE b_total counter\na_total 1\n", 1 }, /* interleaved */
		{ "# TYPE g gauge\n", 1 }, /* TYPE without HELP */
		{ "a_total 1.5\n", 0 },                           /* a fraction */
		{ "a_total 1.\n", 1 },                            /* a bare '.' */
		{ "a_total 01\n", 1 },                            /* leading zero */
		{ H "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n", 0 },
		{ H "h_bucket{le=\"0.1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n", 1 },
		{ H "h_bucket{le=\"0.2\"} 1\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
		    "h_sum 0\nh_count 1\n", 1 },                /* le decreasing */
		{ H "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 3\n", 1 },
		{ H "h_bucket{le=\"0.1\"} 1\nh_sum 0.3\nh_count 1\n", 1 }, /* no +Inf */
		{ H "h 1\n", 1 },                                  /* bare histogram sample */
		{ H "h_bucket 1\n", 1 },                           /* bucket without le */
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char text[512];
		snprintf(text, sizeof text, "%s%s", head, cases[i].body);
		size_t len = strlen(text);
		int bad = check_exposition(text, len, NULL) > 0;
		if (bad != cases[i].bad) {
			print_message("checker case %zu: %s, want %s\n", i,
				      bad ? "rejected" : "accepted",
				      cases[i].bad ? "rejected" : "accepted");
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ rendering */

static const char *const families[][2] = {
	{ "starttls_proxy_connections_total", "counter" },
	{ "starttls_proxy_connections_active", "gauge" },
	{ "starttls_proxy_tls_handshakes_total", "counter" },
	{ "starttls_proxy_policy_failures_total", "counter" },
	{ "starttls_proxy_policy_evaluations_total", "counter" },
	{ "starttls_proxy_refusals_total", "counter" },
	{ "starttls_proxy_policy_decisions_total", "counter" },
	{ "starttls_proxy_handshake_duration_seconds", "histogram" },
	{ "starttls_proxy_upstream_connect_seconds", "histogram" },
	{ "starttls_proxy_messages_total", "counter" },
	{ "starttls_proxy_bytes_total", "counter" },
	{ "starttls_proxy_certificate_expiry_seconds", "gauge" },
};
#define NFAMILIES (sizeof families / sizeof families[0])

/* Runs first: with no route, the text is the families' HELP and TYPE lines only. */
static void test_render_without_routes(void **state)
{
	(void)state;
	size_t len = 0;
	char *text = metrics_render(&len);
	assert_non_null(text);
	int samples = -1;
	assert_int_equal(check_exposition(text, len, &samples), 0);
	assert_int_equal(samples, 6); /* the process's own: cpu, fds, max fds, memory x2, start */
	const char *p = text;
	for (size_t i = 0; i < NFAMILIES; i++) {
		char help[128], type[128];
		snprintf(help, sizeof help, "# HELP %s ", families[i][0]);
		snprintf(type, sizeof type, "# TYPE %s %s\n", families[i][0], families[i][1]);
		assert_memory_equal(p, help, strlen(help));
		p = strchr(p, '\n');
		assert_non_null(p);
		p++;
		assert_memory_equal(p, type, strlen(type));
		p += strlen(type);
	}
	/* then the process's metrics, with values that are this process's */
	static const char *const proc[] = { "process_cpu_seconds_total", "process_open_fds",
					    "process_max_fds", "process_virtual_memory_bytes",
					    "process_resident_memory_bytes",
					    "process_start_time_seconds" };
	for (size_t i = 0; i < 6; i++) {
		char want[128];
		snprintf(want, sizeof want, "# HELP %s ", proc[i]);
		assert_memory_equal(p, want, strlen(want));
		p = strchr(strchr(p, '\n') + 1, '\n') + 1; /* HELP, TYPE */
		size_t nl = strlen(proc[i]);
		assert_memory_equal(p, proc[i], nl);
		double v = strtod(p + nl + 1, NULL);
		if (!strcmp(proc[i], "process_open_fds"))
			assert_true(v >= 3 && v < 1000); /* stdin, stdout, stderr at least */
		else if (!strcmp(proc[i], "process_resident_memory_bytes"))
			assert_true(v > 100000);
		else if (!strcmp(proc[i], "process_start_time_seconds"))
			assert_true(fabs(v - (double)time(NULL)) < 600);
		p = strchr(p, '\n') + 1;
	}
	assert_int_equal(*p, '\0');
	free(text);
}

/* Refusals by reason, policy decisions by source and level, and the two histograms:
 * cumulative buckets in seconds, the sum, the count; an unknown reason or source is
 * counted as "other" / "no-policy", never dropped. */
static void test_refusals_decisions_histograms(void **state)
{
	(void)state;
	struct metrics_route *m = metrics_route("hist-route");
	assert_non_null(m);
	metrics_refusal(m, "client-not-allowed");
	metrics_refusal(m, "client-not-allowed");
	metrics_refusal(m, "upstream-unreachable");
	metrics_refusal(m, "something-new");
	metrics_policy_decision(m, "table:12", "verify");
	metrics_policy_decision(m, "route", "may");
	metrics_policy_decision(m, "mta-sts", "mta-sts");
	metrics_handshake_time(m, METRICS_CLIENT, 3000);     /* 3 ms */
	metrics_handshake_time(m, METRICS_CLIENT, 20000000); /* 20 s: only +Inf */
	metrics_connect_time(m, 1000);                       /* exactly 1 ms: le 0.001 */
	char *text = render();
	assert_int_equal(check_exposition(text, strlen(text), NULL), 0);
	static const char *const want[] = {
		"starttls_proxy_refusals_total{route=\"hist-route\",reason=\"upstream-unreachable\"} 1\n",
		"starttls_proxy_refusals_total{route=\"hist-route\",reason=\"client-not-allowed\"} 2\n",
		"starttls_proxy_refusals_total{route=\"hist-route\",reason=\"other\"} 1\n",
		"starttls_proxy_policy_decisions_total{route=\"hist-route\",source=\"route\",policy=\"may\"} 1\n",
		"starttls_proxy_policy_decisions_total{route=\"hist-route\",source=\"table\",policy=\"verify\"} 1\n",
		"starttls_proxy_policy_decisions_total{route=\"hist-route\",source=\"mta-sts\",policy=\"mta-sts\"} 1\n",
		"starttls_proxy_handshake_duration_seconds_bucket{route=\"hist-route\",side=\"client\",le=\"0.0025\"} 0\n",
		"starttls_proxy_handshake_duration_seconds_bucket{route=\"hist-route\",side=\"client\",le=\"0.005\"} 1\n",
		"starttls_proxy_handshake_duration_seconds_bucket{route=\"hist-route\",side=\"client\",le=\"10\"} 1\n",
		"starttls_proxy_handshake_duration_seconds_bucket{route=\"hist-route\",side=\"client\",le=\"+Inf\"} 2\n",
		"starttls_proxy_handshake_duration_seconds_sum{route=\"hist-route\",side=\"client\"} 20.003000\n",
		"starttls_proxy_handshake_duration_seconds_count{route=\"hist-route\",side=\"client\"} 2\n",
		"starttls_proxy_upstream_connect_seconds_bucket{route=\"hist-route\",le=\"0.001\"} 1\n",
		"starttls_proxy_upstream_connect_seconds_count{route=\"hist-route\"} 1\n",
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		if (!strstr(text, want[i]))
			fail_msg("missing: %s", want[i]);
	/* no upstream handshake was observed: no series for that side */
	assert_null(strstr(text, "side=\"upstream\",le="));
	free(text);
}

static void test_route_find_or_create(void **state)
{
	(void)state;
	char long_a[300], long_b[300], huge[4000];
	memset(long_a, 'a', sizeof long_a - 1);
	long_a[sizeof long_a - 1] = '\0';
	memcpy(long_b, long_a, sizeof long_b);
	long_b[sizeof long_b - 2] = 'b'; /* differs only in its last character */
	memset(huge, 'h', sizeof huge - 1);
	huge[sizeof huge - 1] = '\0';
	const char *names[] = {
		"find-a", "find-b", "find-a.b", "find_A", "f", long_a, long_b, huge
	};
	enum { N = sizeof names / sizeof names[0] };
	struct metrics_route *first[N];
	for (int i = 0; i < N; i++) {
		first[i] = metrics_route(names[i]);
		assert_non_null(first[i]);
	}
	for (int i = 0; i < N; i++) {
		/* A copy of the name, not the same pointer, finds the same counters. */
		char *copy = strdup(names[i]);
		assert_ptr_equal(metrics_route(copy), first[i]);
		free(copy);
		for (int j = 0; j < i; j++)
			assert_ptr_not_equal(first[i], first[j]);
	}
	/* Each name is one series per metric, with the name in full. */
	for (int i = 0; i < N; i++)
		metrics_conn_open(first[i]);
	char *text = render();
	assert_int_equal(check_exposition(text, strlen(text), NULL), 0);
	for (int i = 0; i < N; i++) {
		char *lines = route_lines(text, names[i]);
		size_t n = 0;
		for (const char *p = lines; *p; p++)
			n += *p == '\n';
		if (n != 4)
			print_message("route %.20s... (%zu chars): %zu lines\n", names[i],
				      strlen(names[i]), n);
		assert_int_equal(n, 4); /* total, active, bytes up, bytes down */
		free(lines);
	}
	free(text);
}

static void test_render_known_updates(void **state)
{
	(void)state;
	struct metrics_route *m = metrics_route("known");
	assert_non_null(m);
	assert_route_lines("known",
			   "starttls_proxy_connections_total{route=\"known\"} 0\n"
			   "starttls_proxy_connections_active{route=\"known\"} 0\n"
			   "starttls_proxy_bytes_total{route=\"known\",direction=\"up\"} 0\n"
			   "starttls_proxy_bytes_total{route=\"known\",direction=\"down\"} 0\n");

	for (int i = 0; i < 3; i++)
		metrics_conn_open(m);
	metrics_conn_close(m);
	metrics_bytes(m, 1, 100);
	metrics_bytes(m, 1, 23);
	metrics_bytes(m, 0, 7);
	metrics_bytes(m, 0, 0);
	metrics_handshake(m, METRICS_CLIENT, "TLSv1.3", NULL);
	metrics_handshake(m, METRICS_UPSTREAM, "TLSv1.2", NULL);
	metrics_handshake(m, METRICS_UPSTREAM, "TLSv1.2", NULL);
	metrics_handshake(m, METRICS_UPSTREAM, NULL, "tls-handshake-failure");
	metrics_policy_failure(m, "certificate-expired", 0);
	metrics_policy_failure(m, "starttls-not-supported", 1);
	metrics_policy_failure(m, "starttls-not-supported", 1);
	assert_route_lines("known",
			   "starttls_proxy_connections_total{route=\"known\"} 3\n"
			   "starttls_proxy_connections_active{route=\"known\"} 2\n"
			   "starttls_proxy_tls_handshakes_total{route=\"known\",side=\"client\","
			   "version=\"TLSv1.3\",result=\"ok\"} 1\n"
			   "starttls_proxy_tls_handshakes_total{route=\"known\",side=\"upstream\","
			   "version=\"TLSv1.2\",result=\"ok\"} 2\n"
			   "starttls_proxy_tls_handshakes_total{route=\"known\",side=\"upstream\","
			   "version=\"none\",result=\"tls-handshake-failure\"} 1\n"
			   "starttls_proxy_policy_failures_total{route=\"known\","
			   "result=\"starttls-not-supported\",mode=\"testing\"} 2\n"
			   "starttls_proxy_policy_failures_total{route=\"known\","
			   "result=\"certificate-expired\",mode=\"enforce\"} 1\n"
			   "starttls_proxy_bytes_total{route=\"known\",direction=\"up\"} 123\n"
			   "starttls_proxy_bytes_total{route=\"known\",direction=\"down\"} 7\n");

	/* The certificate gauges: seconds left (negative once expired), one per side that
	 * has a certificate; 0 removes a side's line. */
	time_t now = time(NULL);
	metrics_cert_expiry(m, METRICS_CLIENT, (int64_t)now + 86400);
	metrics_cert_expiry(m, METRICS_UPSTREAM, (int64_t)now - 10);
	{
		char *t = render();
		char *l = route_lines(t, "known");
		long long left = -1, past = 0;
		const char *p = strstr(l, "starttls_proxy_certificate_expiry_seconds{route=\"known\","
					  "side=\"client\"} ");
		assert_non_null(p);
		left = strtoll(strchr(p, '}') + 2, NULL, 10);
		assert_true(left <= 86400 && left >= 86400 - 5);
		p = strstr(l, "starttls_proxy_certificate_expiry_seconds{route=\"known\","
			      "side=\"upstream\"} ");
		assert_non_null(p);
		past = strtoll(strchr(p, '}') + 2, NULL, 10);
		assert_true(past <= -10 && past >= -15);
		assert_int_equal(check_exposition(t, strlen(t), NULL), 0);
		free(l);
		free(t);
	}
	metrics_cert_expiry(m, METRICS_CLIENT, 0);
	metrics_cert_expiry(m, METRICS_UPSTREAM, 0);
	metrics_cert_expiry(NULL, METRICS_CLIENT, 1); /* out of memory: a no-op */

	/* The active gauge goes back down to zero (and below, if closes outnumber opens). */
	metrics_conn_close(m);
	metrics_conn_close(m);
	metrics_conn_close(m);
	char *text = render();
	char *lines = route_lines(text, "known");
	assert_non_null(strstr(lines, "starttls_proxy_connections_total{route=\"known\"} 3\n"));
	assert_non_null(strstr(lines, "starttls_proxy_connections_active{route=\"known\"} -1\n"));
	assert_int_equal(check_exposition(text, strlen(text), NULL), 0);
	free(lines);
	free(text);
	metrics_conn_open(m);

	/* Counters of another route are untouched; a NULL route (out of memory) is a no-op. */
	assert_non_null(metrics_route("known-other"));
	assert_route_lines(
		"known-other",
		"starttls_proxy_connections_total{route=\"known-other\"} 0\n"
		"starttls_proxy_connections_active{route=\"known-other\"} 0\n"
		"starttls_proxy_bytes_total{route=\"known-other\",direction=\"up\"} 0\n"
		"starttls_proxy_bytes_total{route=\"known-other\",direction=\"down\"} 0\n");
	char *before = render();
	metrics_conn_open(NULL);
	metrics_conn_close(NULL);
	metrics_bytes(NULL, 1, 5);
	metrics_handshake(NULL, METRICS_CLIENT, "TLSv1.3", NULL);
	metrics_policy_failure(NULL, "other", 0);
	char *after = render();
	/* (the process's own metrics, CPU time and all, move on between two renderings) */
	*strstr(before, "# HELP process_") = '\0';
	*strstr(after, "# HELP process_") = '\0';
	assert_string_equal(before, after);
	free(before);
	free(after);
}

/* Every version and result value, and what unknown ones become. */
static void test_label_values(void **state)
{
	(void)state;
	static const struct {
		int side;
		const char *version;
		const char *result;
		const char *labels;
	} hs[] = {
		{ METRICS_CLIENT, "TLSv1", NULL, "side=\"client\",version=\"TLSv1\",result=\"ok\"" },
		{ METRICS_CLIENT, "TLSv1.1", "tls-handshake-failure",
		  "side=\"client\",version=\"TLSv1.1\",result=\"tls-handshake-failure\"" },
		{ METRICS_UPSTREAM, "TLSv1.2", NULL,
		  "side=\"upstream\",version=\"TLSv1.2\",result=\"ok\"" },
		/* a handshake that passed TLS but not the policy's check: never "ok" */
		{ METRICS_UPSTREAM, "TLSv1.3", "certificate-host-mismatch",
		  "side=\"upstream\",version=\"TLSv1.3\",result=\"certificate-host-mismatch\"" },
		{ METRICS_UPSTREAM, "TLSv1.3", "validation-failure",
		  "side=\"upstream\",version=\"TLSv1.3\",result=\"validation-failure\"" },
		{ METRICS_CLIENT, NULL, "tls-handshake-failure",
		  "side=\"client\",version=\"none\",result=\"tls-handshake-failure\"" },
		{ METRICS_CLIENT, "SSLv3", NULL, "side=\"client\",version=\"none\",result=\"ok\"" },
		{ METRICS_UPSTREAM, "TLSv1.3 ", NULL,
		  "side=\"upstream\",version=\"none\",result=\"ok\"" },
		{ METRICS_UPSTREAM, "", "no-such-result",
		  "side=\"upstream\",version=\"none\",result=\"other\"" },
		{ 7, "TLSv1.3", NULL, "side=\"upstream\",version=\"TLSv1.3\",result=\"ok\"" },
		{ METRICS_CLIENT, "TLSv1.3", NULL,
		  "side=\"client\",version=\"TLSv1.3\",result=\"ok\"" },
	};
	static const struct {
		const char *result;
		int testing;
		const char *labels;
	} pf[] = {
		{ "starttls-not-supported", 0,
		  "result=\"starttls-not-supported\",mode=\"enforce\"" },
		{ "certificate-host-mismatch", 1,
		  "result=\"certificate-host-mismatch\",mode=\"testing\"" },
		{ "certificate-expired", 0, "result=\"certificate-expired\",mode=\"enforce\"" },
		{ "certificate-not-trusted", 1,
		  "result=\"certificate-not-trusted\",mode=\"testing\"" },
		{ "validation-failure", 0, "result=\"validation-failure\",mode=\"enforce\"" },
		{ "tls-handshake-failure", 1, "result=\"tls-handshake-failure\",mode=\"testing\"" },
		{ "other", 0, "result=\"other\",mode=\"enforce\"" },
		{ "no-such-result", 1, "result=\"other\",mode=\"testing\"" },
		{ NULL, 0, "result=\"other\",mode=\"enforce\"" },
		{ "validation-failure", 9, "result=\"validation-failure\",mode=\"testing\"" },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
		char name[32], want[300];
		snprintf(name, sizeof name, "hs-%zu", i);
		struct metrics_route *m = metrics_route(name);
		metrics_handshake(m, hs[i].side, hs[i].version, hs[i].result);
		snprintf(want, sizeof want,
			 "starttls_proxy_tls_handshakes_total{route=\"%s\",%s} 1\n", name,
			 hs[i].labels);
		char *text = render();
		char *lines = route_lines(text, name);
		if (!strstr(lines, want) ||
		    strstr(lines, "starttls_proxy_tls_handshakes_total") != strstr(lines, want)) {
			print_message("handshake case %zu:\n%swant %s", i, lines, want);
			failures++;
		}
		free(lines);
		free(text);
	}
	for (size_t i = 0; i < sizeof pf / sizeof pf[0]; i++) {
		char name[32], want[300];
		snprintf(name, sizeof name, "pf-%zu", i);
		struct metrics_route *m = metrics_route(name);
		metrics_policy_failure(m, pf[i].result, pf[i].testing);
		snprintf(want, sizeof want,
			 "starttls_proxy_policy_failures_total{route=\"%s\",%s} 1\n", name,
			 pf[i].labels);
		char *text = render();
		char *lines = route_lines(text, name);
		if (!strstr(lines, want) ||
		    strstr(lines, "starttls_proxy_policy_failures_total") != strstr(lines, want)) {
			print_message("policy case %zu:\n%swant %s", i, lines, want);
			failures++;
		}
		free(lines);
		free(text);
	}
	assert_int_equal(failures, 0);
}

/* Route names go into label values unescaped: that is safe because the configuration
 * only accepts names that need no escaping. Every byte is tried in a route name. */
static void test_route_names_need_no_escaping(void **state)
{
	(void)state;
	char path[] = "/tmp/stp-unit-metrics-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	int accepted = 0, failures = 0;
	for (int ch = 1; ch < 256; ch++) {
		FILE *f = fopen(path, "w");
		assert_non_null(f);
		fprintf(f,
			"[route a%cb]\nlisten = 127.0.0.1:20001\nprotocol = tcp\n"
			"upstream = 127.0.0.1:20002\n",
			ch);
		fclose(f);
		struct cfg *c = NULL;
		struct cfg_errors errs = { 0 };
		if (cfg_load_flags(path, CFG_NO_FILES, &c, &errs) == 0) {
			accepted++;
			const char *name = c->routes[0].name;
			for (const char *p = name; *p; p++)
				if (*p == '"' || *p == '\\' || *p == '\n' ||
				    (unsigned char)*p >= 0x80 || !isprint((unsigned char)*p)) {
					print_message("byte 0x%02x: route name \"%s\" accepted\n",
						      ch, name);
					failures++;
					break;
				}
			/* And its rendering passes the checker. */
			struct metrics_route *m = metrics_route(name);
			metrics_conn_open(m);
			char *text = render();
			if (check_exposition(text, strlen(text), NULL) != 0)
				failures++;
			free(text);
			cfg_free(c);
		}
		cfg_errors_free(&errs);
	}
	unlink(path);
	assert_int_equal(failures, 0);
	/* Letters, digits and "-_." at least: the test does try names that load. */
	assert_true(accepted >= 26 + 26 + 10 + 3);
}

/* The whole text after all the tests above, and after many routes. */
static void test_exposition_format(void **state)
{
	(void)state;
	for (int i = 0; i < 200; i++) {
		char name[32];
		snprintf(name, sizeof name, "fmt-%03d", i);
		struct metrics_route *m = metrics_route(name);
		metrics_conn_open(m);
		metrics_bytes(m, i & 1, (uint64_t)i * 1000003u);
		metrics_handshake(m, i & 1, i % 3 ? "TLSv1.3" : "TLSv1.2",
				  i % 5 ? NULL : "certificate-expired");
		metrics_policy_failure(m, i % 2 ? "other" : "validation-failure", i % 4 == 0);
	}
	/* The largest values print in full. */
	struct metrics_route *big = metrics_route("fmt-big");
	metrics_bytes(big, 1, UINT64_MAX);
	size_t len = 0;
	char *text = metrics_render(&len);
	assert_non_null(text);
	int samples = 0;
	assert_int_equal(check_exposition(text, len, &samples), 0);
	assert_true(samples >= 200 * 6);
	assert_non_null(strstr(text,
			       "starttls_proxy_bytes_total{route=\"fmt-big\",direction=\"up\"} "
			       "18446744073709551615\n"));
	free(text);
}

/* ------------------------------------------------------------------ threads */

#define NTHREADS 8
#define ITER 200000

static struct metrics_route *seen[NTHREADS];
static volatile int stop_side;

static void *updater(void *arg)
{
	int id = (int)(intptr_t)arg;
	struct metrics_route *m = metrics_route("concurrent");
	seen[id] = m;
	for (int i = 0; i < ITER; i++) {
		metrics_conn_open(m);
		metrics_bytes(m, 1, 3);
		metrics_bytes(m, 0, 5);
		metrics_handshake(m, METRICS_UPSTREAM, "TLSv1.3", NULL);
		metrics_policy_failure(m, "certificate-expired", i & 1);
		if (i & 1)
			metrics_conn_close(m);
	}
	return NULL;
}

/* While the counters move: new routes appear and the text is rendered, and each rendering
 * is well-formed. */
static void *creator(void *arg)
{
	(void)arg;
	for (int i = 0; !__atomic_load_n(&stop_side, __ATOMIC_RELAXED) && i < 2000; i++) {
		char name[32];
		snprintf(name, sizeof name, "conc-new-%d", i);
		metrics_conn_open(metrics_route(name));
	}
	return NULL;
}

static int render_problems;

static void *renderer(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stop_side, __ATOMIC_RELAXED)) {
		size_t len = 0;
		char *text = metrics_render(&len);
		if (!text || check_exposition(text, len, NULL) != 0)
			render_problems++;
		free(text);
	}
	return NULL;
}

static void test_concurrent_updates(void **state)
{
	(void)state;
	pthread_t t[NTHREADS], side[2];
	stop_side = 0;
	assert_int_equal(pthread_create(&side[0], NULL, creator, NULL), 0);
	assert_int_equal(pthread_create(&side[1], NULL, renderer, NULL), 0);
	for (int i = 0; i < NTHREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, updater, (void *)(intptr_t)i), 0);
	for (int i = 0; i < NTHREADS; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	__atomic_store_n(&stop_side, 1, __ATOMIC_RELAXED);
	assert_int_equal(pthread_join(side[0], NULL), 0);
	assert_int_equal(pthread_join(side[1], NULL), 0);
	assert_int_equal(render_problems, 0);
	for (int i = 1; i < NTHREADS; i++)
		assert_ptr_equal(seen[i], seen[0]);

	char want[2048];
	unsigned long long n = (unsigned long long)NTHREADS * ITER;
	snprintf(want, sizeof want,
		 "starttls_proxy_connections_total{route=\"concurrent\"} %llu\n"
		 "starttls_proxy_connections_active{route=\"concurrent\"} %llu\n"
		 "starttls_proxy_tls_handshakes_total{route=\"concurrent\",side=\"upstream\","
		 "version=\"TLSv1.3\",result=\"ok\"} %llu\n"
		 "starttls_proxy_policy_failures_total{route=\"concurrent\","
		 "result=\"certificate-expired\",mode=\"enforce\"} %llu\n"
		 "starttls_proxy_policy_failures_total{route=\"concurrent\","
		 "result=\"certificate-expired\",mode=\"testing\"} %llu\n"
		 "starttls_proxy_bytes_total{route=\"concurrent\",direction=\"up\"} %llu\n"
		 "starttls_proxy_bytes_total{route=\"concurrent\",direction=\"down\"} %llu\n",
		 n, n / 2, n, n / 2, n / 2, 3 * n, 5 * n);
	assert_route_lines("concurrent", want);
	char *text = render();
	assert_int_equal(check_exposition(text, strlen(text), NULL), 0);
	free(text);
}

/* Recipient-domain evaluations: per policy type and result, success as "success", an
 * unknown result as "other". */
static void test_evaluations(void **state)
{
	(void)state;
	struct metrics_route *m = metrics_route("evals");
	assert_non_null(m);
	metrics_evaluation(m, 0, NULL);
	metrics_evaluation(m, 1, "dnssec-invalid");
	metrics_evaluation(m, 1, "dnssec-invalid");
	metrics_evaluation(m, 2, "no-such-result");
	metrics_evaluation(m, 7, NULL); /* not a type: ignored */
	size_t len;
	char *text = metrics_render(&len);
	assert_non_null(text);
	assert_non_null(strstr(text, "starttls_proxy_policy_evaluations_total{route=\"evals\","
				     "policy_type=\"sts\",result=\"success\"} 1\n"));
	assert_non_null(strstr(text, "starttls_proxy_policy_evaluations_total{route=\"evals\","
				     "policy_type=\"tlsa\",result=\"dnssec-invalid\"} 2\n"));
	assert_non_null(strstr(text, "starttls_proxy_policy_evaluations_total{route=\"evals\","
				     "policy_type=\"no-policy-found\",result=\"other\"} 1\n"));
	int samples = -1;
	assert_int_equal(check_exposition(text, len, &samples), 0);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_render_without_routes),
		cmocka_unit_test(test_checker_self_check),
		cmocka_unit_test(test_route_find_or_create),
		cmocka_unit_test(test_render_known_updates),
		cmocka_unit_test(test_label_values),
		cmocka_unit_test(test_route_names_need_no_escaping),
		cmocka_unit_test(test_exposition_format),
		cmocka_unit_test(test_concurrent_updates),
		cmocka_unit_test(test_evaluations),
		cmocka_unit_test(test_refusals_decisions_histograms),
	};
	return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
