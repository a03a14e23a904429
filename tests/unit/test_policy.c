/* test_policy.c - the policy table (policy.h): the parser (good tables row by row, every
 * error with its FILE:LINE), the matcher (first match wins, CIDR edges, IPv6, v4-mapped
 * addresses, ports, *, host names and *.domain), and policy_decide() (the route's keys,
 * overridden by the matching row). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "policy.h"
#include "unit_fixture.h"

static char *write_table(const char *text)
{
	static int n;
	char *path = malloc(600);
	snprintf(path, 600, "%s/table-%d", tmpdir, n++);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

static struct policy_table *load_ok(const char *text)
{
	char *path = write_table(text);
	struct policy_table *t = NULL;
	struct cfg_errors errs = { 0 };
	int rc = policy_load(path, &t, &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_message("unexpected: %s\n", errs.msg[i]);
	assert_int_equal(rc, 0);
	assert_int_equal(errs.n, 0);
	cfg_errors_free(&errs);
	free(path);
	return t;
}

static struct sockaddr_storage sa(const char *ip, int port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *a = (void *)&ss;
	struct sockaddr_in6 *b = (void *)&ss;
	if (inet_pton(AF_INET, ip, &a->sin_addr) == 1) {
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
	} else {
		assert_int_equal(inet_pton(AF_INET6, ip, &b->sin6_addr), 1);
		b->sin6_family = AF_INET6;
		b->sin6_port = htons((uint16_t)port);
	}
	return ss;
}

/* ---- a good table, field by field ---------------------------------------------------- */

static const char TABLE[] =
	"# destination          level        options\n"
	"10.20.0.0/16:25        verify       names=mx.internal.example,*.internal.example\n"
	"203.0.113.10:587       fingerprint  sha256=9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n"
	"\n"
	"[2001:db8::/32]:*      encrypt      tls=implicit mode=testing\n"
	"relay.example.net:587  verify       min_tls=1.3 ca=/etc/ssl/certs/ca-certificates.crt\n"
	"*.partner.example      may\n"
	"*:465                  encrypt      tls=implicit\n"
	"*:25                   may          mode=testing   # a comment after a row\n"
	"192.0.2.1              none\n"
	"*                      encrypt\n";

static void test_parse_good(void **state)
{
	(void)state;
	struct policy_table *t = load_ok(TABLE);
	assert_int_equal(t->n, 9);
	const struct policy_row *r = &t->rows[0];
	assert_int_equal(r->line, 2);
	assert_int_equal(r->kind, DEST_ADDR);
	assert_int_equal(r->net.family, AF_INET);
	assert_int_equal(r->net.prefix, 16);
	assert_int_equal(r->port, 25);
	assert_int_equal(r->level, CFG_POLICY_VERIFY);
	assert_int_equal(r->nnames, 2);
	assert_string_equal(r->names[0], "mx.internal.example");
	assert_string_equal(r->names[1], "*.internal.example");
	r = &t->rows[1];
	assert_int_equal(r->line, 3);
	assert_int_equal(r->net.prefix, 32);
	assert_int_equal(r->level, CFG_POLICY_FINGERPRINT);
	assert_int_equal(r->npins, 1);
	assert_int_equal(r->pins[0][0], 0x9f);
	assert_int_equal(r->pins[0][31], 0x08);
	r = &t->rows[2];
	assert_int_equal(r->line, 5);
	assert_int_equal(r->net.family, AF_INET6);
	assert_int_equal(r->net.prefix, 32);
	assert_int_equal(r->port, 0);
	assert_true(r->has_tls && r->tls == CFG_TLS_IMPLICIT);
	assert_true(r->has_mode && r->mode == CFG_MODE_TESTING);
	r = &t->rows[3];
	assert_int_equal(r->kind, DEST_HOST);
	assert_string_equal(r->host, "relay.example.net");
	assert_int_equal(r->min_tls, 13);
	assert_string_equal(r->ca, "/etc/ssl/certs/ca-certificates.crt");
	r = &t->rows[4];
	assert_string_equal(r->host, "*.partner.example");
	assert_int_equal(r->port, 0);
	r = &t->rows[6];
	assert_int_equal(r->kind, DEST_ANY);
	assert_int_equal(r->port, 25);
	assert_int_equal(r->line, 9);
	r = &t->rows[7];
	assert_int_equal(r->level, CFG_POLICY_NONE);
	r = &t->rows[8];
	assert_int_equal(r->kind, DEST_ANY);
	assert_int_equal(r->port, 0);
	policy_free(t);
}

/* The recipient-domain levels: rows of a transparent SMTP route's table. */
static void test_parse_late_levels(void **state)
{
	(void)state;
	struct policy_table *t =
		load_ok("10.0.0.0/8:25 mta-sts mode=testing\n*:25 auto tls=starttls\n* dane\n");
	assert_int_equal(t->n, 3);
	assert_int_equal(t->rows[0].level, CFG_POLICY_MTA_STS);
	assert_true(t->rows[0].has_mode && t->rows[0].mode == CFG_MODE_TESTING);
	assert_int_equal(t->rows[1].level, CFG_POLICY_AUTO);
	assert_int_equal(t->rows[2].level, CFG_POLICY_DANE);
	policy_free(t);
}

/* ---- errors: each at its line --------------------------------------------------------- */

static void test_parse_errors(void **state)
{
	(void)state;
	static const struct {
		const char *row;   /* written at line 2, after a good line */
		const char *mention;
	} cases[] = {
		{ "10.0.0.0/33 verify names=a.example", "invalid destination" },
		{ "10.1.2.3/8 may", "bits set past its prefix" },
		{ "10.0.0.0/8:0 may", "invalid port" },
		{ "10.0.0.0/8:65536 may", "invalid port" },
		{ "10.0.0.0/8:x may", "invalid port" },
		{ "[10.0.0.1]:25 may", "brackets are for IPv6" },
		{ "[2001:db8::1:25 may", "expected [IPv6]:PORT" },
		{ "bad_host!:25 may", "invalid destination" },
		{ "-.example may", "invalid destination" },
		{ "a..b may", "invalid destination" },
		{ "*.* may", "invalid destination" },
		{ "mx.example", "missing level" },
		{ "mx.example strict", "invalid level \"strict\"" },
		{ "mx.example verify names=", "empty value" },
		{ "mx.example verify names=a.example,", "empty name" },
		{ "mx.example verify names=a..example", "invalid name" },
		{ "mx.example verify bogus=1", "unknown option \"bogus\"" },
		{ "mx.example verify names", "expected KEY=VALUE" },
		{ "mx.example verify mode=lenient", "mode: invalid value" },
		{ "mx.example verify mode=testing mode=enforce", "duplicate option \"mode\"" },
		{ "mx.example verify tls=smtps", "tls: invalid value" },
		{ "mx.example verify tls=none", "contradicts verify" },
		{ "mx.example none tls=starttls", "contradicts none" },
		{ "mx.example none names=a.example", "need a level with TLS" },
		{ "mx.example verify min_tls=1.4", "min_tls: invalid value" },
		{ "mx.example fingerprint", "fingerprint needs sha256" },
		{ "mx.example fingerprint sha256=abcd", "invalid pin" },
		{ "mx.example fingerprint sha256=9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A0Z",
		  "invalid pin" },
		{ "mx.example verify sha256=9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
		  "needs the fingerprint level" },
		{ "*:25 mta-sts names=mx.example", "takes no names, ca or min_tls" },
		{ "*:25 dane min_tls=1.3", "takes no names, ca or min_tls" },
		{ "*:25 auto tls=implicit", "needs tls=starttls" },
		{ "*:25 mta-sts sha256=9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
		  "needs the fingerprint level" },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char text[512];
		snprintf(text, sizeof text, "* may\n%s\n", cases[i].row);
		char *path = write_table(text);
		struct policy_table *t = NULL;
		struct cfg_errors errs = { 0 };
		int rc = policy_load(path, &t, &errs);
		char want[700];
		snprintf(want, sizeof want, "%s:2: ", path);
		int ok = rc == -EINVAL && t == NULL && errs.n == 1 &&
			 !strncmp(errs.msg[0], want, strlen(want)) &&
			 strstr(errs.msg[0], cases[i].mention);
		if (!ok) {
			print_message("\"%s\": rc %d, %zu errors, first: %s (want \"%s\" at line 2)\n",
				      cases[i].row, rc, errs.n, errs.n ? errs.msg[0] : "-",
				      cases[i].mention);
			failures++;
		}
		policy_free(t);
		cfg_errors_free(&errs);
		free(path);
	}
	assert_int_equal(failures, 0);
}

/* The line bound (LINE_MAX_LEN in policy.c): a row of 4096 characters before its newline
 * is read (its trailing comment makes it long), one more character is "FILE:2: line
 * longer than 4096 characters", with or without a newline after it. */
static void test_line_bound(void **state)
{
	(void)state;
	static const struct {
		size_t len;
		int newline;
		int ok;
	} t[] = {
		{ 4096, 1, 1 },
		{ 4097, 1, 0 },
		{ 4096, 0, 1 },
		{ 4097, 0, 0 },
		{ 3 * 4096, 1, 0 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		static char text[4 * 4096];
		const char *first = "*:25 may\n", *row = "mx.example verify # ";
		size_t n = strlen(first);
		strcpy(text, first);
		strcpy(text + n, row);
		n += strlen(row);
		while (n - strlen(first) < t[i].len)
			text[n++] = 'x';
		if (t[i].newline)
			text[n++] = '\n';
		text[n] = '\0';
		char *path = write_table(text);
		struct policy_table *tab = NULL;
		struct cfg_errors errs = { 0 };
		int rc = policy_load(path, &tab, &errs);
		char want[700];
		snprintf(want, sizeof want, "%s:2: line longer than 4096 characters", path);
		int ok = t[i].ok ? rc == 0 && errs.n == 0 && tab != NULL
				 : rc == -EINVAL && tab == NULL && errs.n == 1 &&
					   !strcmp(errs.msg[0], want);
		if (!ok) {
			print_message("row of %zu characters%s: rc %d, %zu errors, first: %s\n",
				      t[i].len, t[i].newline ? "" : " (no newline)", rc, errs.n,
				      errs.n ? errs.msg[0] : "-");
			failures++;
		}
		policy_free(tab);
		cfg_errors_free(&errs);
		free(path);
	}
	assert_int_equal(failures, 0);
}

/* Several bad rows: every error reported, each at its own line; a missing file names it. */
static void test_parse_many_errors(void **state)
{
	(void)state;
	char *path = write_table("* may\nmx.example bogus\n\n10.0.0.0/8:99999 may\nok.example verify\n"
				 "x.example fingerprint\n");
	struct policy_table *t = NULL;
	struct cfg_errors errs = { 0 };
	assert_int_equal(policy_load(path, &t, &errs), -EINVAL);
	assert_int_equal(errs.n, 3);
	char want[700];
	int lines[] = { 2, 4, 6 };
	for (int i = 0; i < 3; i++) {
		snprintf(want, sizeof want, "%s:%d: ", path, lines[i]);
		assert_true(!strncmp(errs.msg[i], want, strlen(want)));
	}
	cfg_errors_free(&errs);
	char missing[700];
	snprintf(missing, sizeof missing, "%s/no-such-table", tmpdir);
	assert_int_equal(policy_load(missing, &t, &errs), -ENOENT);
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msg[0], ":0: cannot open"));
	cfg_errors_free(&errs);
	free(path);
}

/* ---- matching ---------------------------------------------------------------------------- */

static void test_match(void **state)
{
	(void)state;
	struct policy_table *t = load_ok(TABLE);
	static const struct {
		const char *ip; /* NULL: no address known */
		const char *host;
		int port;
		int want_line; /* 0: no match */
	} cases[] = {
		{ "10.20.0.0", NULL, 25, 2 },        /* CIDR edges */
		{ "10.20.255.255", NULL, 25, 2 },
		{ "10.21.0.0", NULL, 25, 9 },        /* outside: "*:25" */
		{ "10.19.255.255", NULL, 25, 9 },
		{ "10.20.1.1", NULL, 587, 11 },      /* right net, wrong port: "*" */
		{ "203.0.113.10", NULL, 587, 3 },
		{ "203.0.113.11", NULL, 587, 11 },
		{ "2001:db8::1", NULL, 587, 5 },     /* IPv6 CIDR, any port */
		{ "2001:db8:ffff::", NULL, 25, 5 },  /* first match wins over "*:25" */
		{ "2001:db9::1", NULL, 25, 9 },
		{ "198.51.100.1", "relay.example.net", 587, 6 }, /* host rows: the route's name */
		{ "198.51.100.1", "RELAY.Example.NET", 587, 6 },
		{ "198.51.100.1", "relay.example.net", 25, 9 },
		{ "198.51.100.1", "mx.partner.example", 2525, 7 }, /* *.domain: one label */
		{ "198.51.100.1", "partner.example", 2525, 11 },
		{ "198.51.100.1", "a.mx.partner.example", 2525, 11 },
		{ "198.51.100.1", NULL, 465, 8 },    /* transparent: no host rows */
		{ "192.0.2.1", NULL, 80, 10 },
		{ "::ffff:192.0.2.1", NULL, 80, 10 }, /* v4-mapped is the IPv4 address */
		{ NULL, NULL, 12345, 11 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct sockaddr_storage ss;
		const struct sockaddr *d = NULL;
		if (cases[i].ip) {
			ss = sa(cases[i].ip, cases[i].port);
			d = (const struct sockaddr *)&ss;
		}
		const struct policy_row *r = policy_match(t, d, cases[i].host, (uint16_t)cases[i].port);
		int got = r ? r->line : 0;
		if (got != cases[i].want_line) {
			print_message("%s %s:%d matched line %d, want %d\n", cases[i].ip ? cases[i].ip : "-",
				      cases[i].host ? cases[i].host : "-", cases[i].port, got,
				      cases[i].want_line);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
	assert_null(policy_match(NULL, NULL, NULL, 25));
	policy_free(t);
	/* no catch-all: no match */
	t = load_ok("10.0.0.0/8 verify names=a.example\n");
	struct sockaddr_storage ss = sa("11.0.0.1", 25);
	assert_null(policy_match(t, (const struct sockaddr *)&ss, NULL, 25));
	policy_free(t);
}

/* ---- the policy of a session --------------------------------------------------------- */

static void test_decide(void **state)
{
	(void)state;
	struct cfg_route r;
	memset(&r, 0, sizeof r);
	r.protocol = CFG_PROTO_SMTP;
	r.upstream_tls = CFG_TLS_STARTTLS;
	r.upstream_policy = CFG_POLICY_MAY;
	r.policy_mode = CFG_MODE_ENFORCE;
	r.upstream_name = "relay.example.net";
	snprintf(r.upstream.host, sizeof r.upstream.host, "relay.example.net");
	r.upstream_side_tls = (struct tls_ctx *)&r; /* any pointer: compared only */
	struct session_policy p;
	char src[32];

	/* no table: the route's keys */
	struct sockaddr_storage ss = sa("198.51.100.1", 587);
	policy_decide(&r, (const struct sockaddr *)&ss, 587, &p);
	assert_int_equal(p.level, CFG_POLICY_MAY);
	assert_int_equal(p.tls, CFG_TLS_STARTTLS);
	assert_int_equal(p.nnames, 1);
	assert_string_equal(p.names[0], "relay.example.net");
	assert_ptr_equal(p.ctx, r.upstream_side_tls);
	policy_source(&p, src, sizeof src);
	assert_string_equal(src, "route");

	/* a table row overrides level, mode, tls and names; the route's ctx stays */
	r.policy = load_ok("relay.example.net:587 verify mode=testing tls=implicit "
			   "names=mx1.example,mx2.example\n* none\n");
	policy_decide(&r, (const struct sockaddr *)&ss, 587, &p);
	assert_int_equal(p.level, CFG_POLICY_VERIFY);
	assert_int_equal(p.mode, CFG_MODE_TESTING);
	assert_int_equal(p.tls, CFG_TLS_IMPLICIT);
	assert_int_equal(p.nnames, 2);
	assert_string_equal(p.names[1], "mx2.example");
	assert_int_equal(p.row, 1);
	policy_source(&p, src, sizeof src);
	assert_string_equal(src, "table:1");
	/* "none" turns TLS off */
	policy_decide(&r, (const struct sockaddr *)&ss, 25, &p);
	assert_int_equal(p.level, CFG_POLICY_NONE);
	assert_int_equal(p.tls, CFG_TLS_NONE);
	assert_int_equal(p.row, 2);
	policy_free(r.policy);

	/* a TLS level on a route without TLS: STARTTLS for a mail protocol */
	r.upstream_tls = CFG_TLS_NONE;
	r.upstream_policy = CFG_POLICY_NONE;
	r.policy = load_ok("* encrypt\n");
	policy_decide(&r, (const struct sockaddr *)&ss, 25, &p);
	assert_int_equal(p.level, CFG_POLICY_ENCRYPT);
	assert_int_equal(p.tls, CFG_TLS_STARTTLS);
	/* ... and implicit TLS for tcp */
	r.protocol = CFG_PROTO_TCP;
	policy_decide(&r, (const struct sockaddr *)&ss, 25, &p);
	assert_int_equal(p.tls, CFG_TLS_IMPLICIT);
	policy_free(r.policy);

	/* on a transparent route host rows never match */
	r.protocol = CFG_PROTO_SMTP;
	r.upstream.original_dst = 1;
	r.policy = load_ok("relay.example.net encrypt\n");
	policy_decide(&r, (const struct sockaddr *)&ss, 25, &p);
	assert_int_equal(p.row, 0);
	policy_free(r.policy);
}

static int setup(void **state)
{
	(void)state;
	return fixture_setup("policy");
}

static int teardown(void **state)
{
	(void)state;
	return fixture_teardown();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_good),
		cmocka_unit_test(test_parse_late_levels),
		cmocka_unit_test(test_parse_errors),
		cmocka_unit_test(test_line_bound),
		cmocka_unit_test(test_parse_many_errors),
		cmocka_unit_test(test_match),
		cmocka_unit_test(test_decide),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
