/* test_config.c - configuration parser: value parsers and cfg_load on temporary files.
 *
 * Certificates come from $STP_TEST_CERTS (scripts/gen-test-certs.sh); when it is unset the
 * suite generates them into its temporary directory. Configuration texts are templates:
 * "@C@" becomes the certificate directory and "@T@" the temporary directory. Line numbers
 * are never hard-coded: each case names a unique piece of text on the line the error must
 * point at, and the line is computed from the template. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "unit_fixture.h"

/* ------------------------------------------------------------------ fixtures */

#define MAX_TMPFILES 512
static char *tmpfiles[MAX_TMPFILES];
static size_t ntmpfiles;

static void track(const char *path)
{
	if (ntmpfiles < MAX_TMPFILES)
		tmpfiles[ntmpfiles++] = strdup(path);
}

static int group_setup(void **state)
{
	(void)state;
	if (fixture_setup("config") < 0)
		return -1;

	/* Auxiliary files referenced by the full configuration. */
	char path[600];
	FILE *f;
	snprintf(path, sizeof path, "%s/tickets.key", tmpdir);
	f = fopen(path, "w");
	if (!f)
		return -1;
	for (int i = 0; i < 80; i++)
		fprintf(f, "%02x", (i * 37 + 11) & 0xff);
	fputc('\n', f);
	fclose(f);
	chmod(path, 0600);
	track(path);
	snprintf(path, sizeof path, "%s/policy.table", tmpdir);
	f = fopen(path, "w");
	if (!f)
		return -1;
	fputs("# destination   level    options\n*:465 encrypt tls=implicit\n* encrypt\n", f);
	fclose(f);
	track(path);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	for (size_t i = 0; i < ntmpfiles; i++) {
		unlink(tmpfiles[i]);
		free(tmpfiles[i]);
	}
	ntmpfiles = 0;
	return fixture_teardown();
}

/* Replaces @C@ (certificate dir) and @T@ (temp dir) in a template. */
static char *expand(const char *tmpl)
{
	size_t cap = strlen(tmpl) * 2 + 4096, n = 0;
	char *out = malloc(cap);
	assert_non_null(out);
	for (const char *p = tmpl; *p;) {
		const char *rep = NULL;
		if (!strncmp(p, "@C@", 3))
			rep = certdir;
		else if (!strncmp(p, "@T@", 3))
			rep = tmpdir;
		if (rep) {
			size_t l = strlen(rep);
			if (n + l + 1 >= cap) {
				cap = (n + l + 1) * 2;
				out = realloc(out, cap);
				assert_non_null(out);
			}
			memcpy(out + n, rep, l);
			n += l;
			p += 3;
		} else {
			if (n + 2 >= cap) {
				cap *= 2;
				out = realloc(out, cap);
				assert_non_null(out);
			}
			out[n++] = *p++;
		}
	}
	out[n] = 0;
	return out;
}

/* Writes an expanded template to a new file made with mkstemp; returns its path. */
static char *write_conf(const char *tmpl)
{
	char *text = expand(tmpl);
	size_t plen = strlen(tmpdir) + 32;
	char *path = malloc(plen);
	if (!path)
		abort();
	snprintf(path, plen, "%s/conf-XXXXXX", tmpdir);
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	size_t len = strlen(text);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	free(text);
	track(path);
	return path;
}

/* 1-based line of the n-th (1-based) occurrence of needle in text; 0 when absent. */
static int line_of_nth(const char *text, const char *needle, int nth)
{
	const char *p = text;
	for (int i = 0; i < nth; i++) {
		const char *hit = strstr(p, needle);
		if (!hit)
			return 0;
		if (i == nth - 1) {
			int line = 1;
			for (const char *q = text; q < hit; q++)
				line += *q == '\n';
			return line;
		}
		p = hit + 1;
	}
	return 0;
}

static int line_of(const char *text, const char *needle)
{
	return line_of_nth(text, needle, 1);
}

static void dump_errors(const struct cfg_errors *e)
{
	for (size_t i = 0; i < e->n; i++)
		print_message("    error[%zu]: %s\n", i, e->msg[i]);
}

/* Index of the first error that starts with "PATH:LINE:", or -1. */
static int find_error_at(const struct cfg_errors *e, const char *path, int line)
{
	char prefix[700];
	snprintf(prefix, sizeof prefix, "%s:%d:", path, line);
	for (size_t i = 0; i < e->n; i++)
		if (!strncmp(e->msg[i], prefix, strlen(prefix)))
			return (int)i;
	return -1;
}

static int contains_ci(const char *hay, const char *needle)
{
	return strcasestr(hay, needle) != NULL;
}

static void skip_without_certs(void)
{
	if (!have_certs)
		skip();
}

/* ------------------------------------------------------------------ value parsers */

struct duration_case {
	const char *in;
	int ok;
	uint64_t ms;
};

static void test_parse_duration(void **state)
{
	(void)state;
	static const struct duration_case cases[] = {
		{ "250ms", 1, 250 },
		{ "0ms", 1, 0 },
		{ "1ms", 1, 1 },
		{ "30s", 1, 30000 },
		{ "1s", 1, 1000 },
		{ "5m", 1, 300000 },
		{ "90m", 1, 5400000 },
		{ "30", 1, 30000 },        /* bare number = seconds */
		{ "0", 1, 0 },
		{ "1", 1, 1000 },
		{ "3600", 1, 3600000 },
		{ "", 0, 0 },
		{ "5x", 0, 0 },
		{ "-1", 0, 0 },
		{ "-5s", 0, 0 },
		{ "ms", 0, 0 },
		{ "s", 0, 0 },
		{ "m", 0, 0 },
		{ "5d", 1, 432000000ULL },
		{ "5w", 0, 0 },
		{ "5sm", 0, 0 },
		{ "5ms5", 0, 0 },
		{ "abc", 0, 0 },
		{ "s5", 0, 0 },
		{ "99999999999999999999", 0, 0 },   /* > UINT64_MAX */
		{ "18446744073709551615", 0, 0 },   /* seconds: overflows when scaled to ms */
		{ "18446744073709552s", 0, 0 },     /* x1000 overflows */
		{ "307445734561825861m", 0, 0 },    /* x60000 overflows */
		{ "99999999999999999999ms", 0, 0 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct duration_case *c = &cases[i];
		uint64_t ms = 0xdeadbeef;
		int rc = cfg_parse_duration(c->in, &ms);
		if (c->ok && (rc != 0 || ms != c->ms)) {
			print_message("duration \"%s\": rc=%d ms=%llu, want 0 and %llu\n", c->in, rc,
				      (unsigned long long)ms, (unsigned long long)c->ms);
			failures++;
		} else if (!c->ok && rc != -EINVAL) {
			print_message("duration \"%s\": rc=%d ms=%llu, want -1\n", c->in, rc,
				      (unsigned long long)ms);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

struct hostport_case {
	const char *in;
	int ok;
	const char *host;
	uint16_t port;
};

static void test_parse_hostport(void **state)
{
	(void)state;
	static const struct hostport_case cases[] = {
		{ "127.0.0.1:25", 1, "127.0.0.1", 25 },
		{ "0.0.0.0:587", 1, "0.0.0.0", 587 },
		{ "10.0.0.5:65535", 1, "10.0.0.5", 65535 },
		{ "localhost:1", 1, "localhost", 1 },
		{ "smtp.example.com:587", 1, "smtp.example.com", 587 },
		{ "mx-1.Example.NET:465", 1, "mx-1.Example.NET", 465 },
		{ "[::1]:2525", 1, "::1", 2525 },
		{ "[::]:993", 1, "::", 993 },
		{ "[2001:db8::5]:143", 1, "2001:db8::5", 143 },
		{ "[::ffff:192.0.2.1]:110", 1, "::ffff:192.0.2.1", 110 },
		/* missing or bad port */
		{ "localhost", 0, NULL, 0 },
		{ "127.0.0.1", 0, NULL, 0 },
		{ "localhost:", 0, NULL, 0 },
		{ "localhost:0", 0, NULL, 0 },
		{ "localhost:65536", 0, NULL, 0 },
		{ "localhost:99999999999999999999", 0, NULL, 0 },
		{ "localhost:-1", 0, NULL, 0 },
		{ "localhost:25x", 0, NULL, 0 },
		{ "localhost:x25", 0, NULL, 0 },
		{ "localhost:smtp", 0, NULL, 0 },
		{ "127.0.0.1:0", 0, NULL, 0 },
		/* empty host */
		{ ":25", 0, NULL, 0 },
		{ "", 0, NULL, 0 },
		/* brackets */
		{ "[::1:25", 0, NULL, 0 },
		{ "::1]:25", 0, NULL, 0 },
		{ "[::1]25", 0, NULL, 0 },
		{ "[::1]", 0, NULL, 0 },
		{ "[::1]:", 0, NULL, 0 },
		{ "[]:25", 0, NULL, 0 },
		{ "[::1]:0", 0, NULL, 0 },
		{ "[::1]:65536", 0, NULL, 0 },
		{ "::1:25", 0, NULL, 0 },   /* IPv6 literal without brackets is ambiguous */
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct hostport_case *c = &cases[i];
		char host[256];
		uint16_t port = 0;
		memset(host, 'Z', sizeof host);
		host[sizeof host - 1] = 0;
		int rc = cfg_parse_hostport(c->in, host, sizeof host, &port);
		if (c->ok && (rc != 0 || strcmp(host, c->host) || port != c->port)) {
			print_message("hostport \"%s\": rc=%d host=\"%s\" port=%u; want 0 \"%s\" %u\n",
				      c->in, rc, rc == 0 ? host : "?", port, c->host, c->port);
			failures++;
		} else if (!c->ok && rc != -EINVAL) {
			print_message("hostport \"%s\": rc=%d host=\"%s\" port=%u; want -1\n", c->in,
				      rc, host, port);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_parse_hostport_small_buffer(void **state)
{
	(void)state;
	char host[8];
	uint16_t port = 0;
	/* Fits exactly: 7 characters + NUL. */
	assert_int_equal(cfg_parse_hostport("abcdefg:25", host, sizeof host, &port), 0);
	assert_string_equal(host, "abcdefg");
	assert_int_equal(port, 25);
	/* One too long: must fail rather than truncate. */
	assert_int_equal(cfg_parse_hostport("abcdefgh:25", host, sizeof host, &port), -EINVAL);
	assert_int_equal(cfg_parse_hostport("[2001:db8::1]:25", host, sizeof host, &port), -EINVAL);
}

static const uint8_t fp_bytes[32] = {
	0x9f, 0x86, 0xd0, 0x81, 0x88, 0x4c, 0x7d, 0x65, 0x9a, 0x2f, 0xea, 0xa0, 0xc5, 0x5a, 0xd0, 0x15,
	0xa3, 0xbf, 0x4f, 0x1b, 0x2b, 0x0b, 0x82, 0x2c, 0xd1, 0x5d, 0x6c, 0x15, 0xb0, 0xf0, 0x0a, 0x08,
};
#define FP_HEX "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#define FP_HEX_UP "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
#define FP_COLON                                                                            \
	"9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:" \
	"B0:F0:0A:08"

struct fp_case {
	const char *in;
	int ok;
};

static void test_parse_fingerprint(void **state)
{
	(void)state;
	static const struct fp_case cases[] = {
		{ "sha256:" FP_HEX, 1 },
		{ "sha256:" FP_HEX_UP, 1 },
		{ "sha256:" FP_COLON, 1 },
		{ FP_HEX, 0 },                                  /* missing prefix */
		{ "sha1:" FP_HEX, 0 },                          /* wrong algorithm */
		{ "sha256" FP_HEX, 0 },                         /* no colon after the prefix */
		{ "sha256:", 0 },
		{ "", 0 },
		{ "sha256:" FP_HEX "00", 0 },                   /* 33 bytes */
		{ "sha256:" FP_HEX "0", 0 },                    /* odd length */
		{ "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a", 0 }, /* 31 */
		{ "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0", 0 }, /* 63 */
		{ "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0g", 0 }, /* bad hex */
		{ "sha256:zz86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", 0 },
		{ "sha256: " FP_HEX, 0 },
		{ "sha256:" FP_HEX " junk", 0 },
		{ "sha256:9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:"
		  "6C:15:B0:F0:0A", 0 },                        /* colon form, 31 bytes */
		{ "sha256:9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:"
		  "6C:15:B0:F0:0A:08:00", 0 },                  /* colon form, 33 bytes */
		{ "sha256:9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:"
		  "6C:15:B0:F0:0A:0G", 0 },                     /* colon form, bad hex */
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		uint8_t out[32];
		memset(out, 0x55, sizeof out);
		int rc = cfg_parse_fingerprint(cases[i].in, out);
		if (cases[i].ok && (rc != 0 || memcmp(out, fp_bytes, 32))) {
			print_message("fingerprint \"%s\": rc=%d or wrong bytes\n", cases[i].in, rc);
			failures++;
		} else if (!cases[i].ok && rc != -EINVAL) {
			print_message("fingerprint \"%s\": rc=%d, want -1\n", cases[i].in, rc);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

struct tlsv_case {
	const char *in;
	int ok, v;
};

static void test_parse_tls_version(void **state)
{
	(void)state;
	static const struct tlsv_case cases[] = {
		{ "1.0", 1, 10 }, { "1.1", 1, 11 }, { "1.2", 1, 12 }, { "1.3", 1, 13 },
		{ "1.4", 0, 0 },  { "0.9", 0, 0 },  { "2.0", 0, 0 },  { "1", 0, 0 },
		{ "12", 0, 0 },   { "", 0, 0 },     { "1.", 0, 0 },   { ".2", 0, 0 },
		{ "1.2x", 0, 0 }, { "1.23", 0, 0 }, { "v1.2", 0, 0 }, { "1,2", 0, 0 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int v = -99;
		int rc = cfg_parse_tls_version(cases[i].in, &v);
		if (cases[i].ok && (rc != 0 || v != cases[i].v)) {
			print_message("tls version \"%s\": rc=%d v=%d, want 0 and %d\n", cases[i].in, rc,
				      v, cases[i].v);
			failures++;
		} else if (!cases[i].ok && rc != -EINVAL) {
			print_message("tls version \"%s\": rc=%d v=%d, want -1\n", cases[i].in, rc, v);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_enum_names(void **state)
{
	(void)state;
	assert_string_equal(cfg_proto_name(CFG_PROTO_SMTP), "smtp");
	assert_string_equal(cfg_proto_name(CFG_PROTO_LMTP), "lmtp");
	assert_string_equal(cfg_proto_name(CFG_PROTO_IMAP), "imap");
	assert_string_equal(cfg_proto_name(CFG_PROTO_POP3), "pop3");
	assert_string_equal(cfg_proto_name(CFG_PROTO_TCP), "tcp");
	assert_string_equal(cfg_tls_name(CFG_TLS_NONE), "none");
	assert_string_equal(cfg_tls_name(CFG_TLS_STARTTLS), "starttls");
	assert_string_equal(cfg_tls_name(CFG_TLS_IMPLICIT), "implicit");
	assert_string_equal(cfg_policy_name(CFG_POLICY_NONE), "none");
	assert_string_equal(cfg_policy_name(CFG_POLICY_MAY), "may");
	assert_string_equal(cfg_policy_name(CFG_POLICY_ENCRYPT), "encrypt");
	assert_string_equal(cfg_policy_name(CFG_POLICY_FINGERPRINT), "fingerprint");
	assert_string_equal(cfg_policy_name(CFG_POLICY_VERIFY), "verify");
}

static void test_errors_add(void **state)
{
	(void)state;
	struct cfg_errors e = { 0 };
	for (int i = 0; i < 100; i++)
		cfg_errors_add(&e, "f.conf:%d: error number %d", i + 1, i);
	assert_int_equal(e.n, 100);
	assert_string_equal(e.msg[0], "f.conf:1: error number 0");
	assert_string_equal(e.msg[99], "f.conf:100: error number 99");
	cfg_errors_free(&e);
	assert_int_equal(e.n, 0);
}

/* ------------------------------------------------------------------ cfg_load: valid */

static const char FULL_CONF[] =
	"# full configuration: every key of the contract this version carries\n"
	"; both comment styles\n"
	"[global]\n"
	"workers         = 2\n"
	"user            = nobody\n"
	"log_level       = debug\n"
	"log_format      = json\n"
	"max_connections = 500\n"
	"helo_name       = proxy.example.net\n"
	"cert            = @C@/server.pem\n"
	"key             = @C@/server.key\n"
	"ca              = @C@/ca.pem\n"
	"drain_timeout   = 10s\n"
	"\n"
	"[route full]\n"
	"listen          = 127.0.0.1:20001\n"
	"protocol        = smtp\n"
	"client_tls      = starttls\n"
	"client_policy   = encrypt\n"
	"upstream        = [::1]:20465\n"
	"upstream_tls    = implicit\n"
	"upstream_policy = fingerprint\n"
	"policy_mode     = testing\n"
	"upstream_name   = mx.example.net\n"
	"cert            = @C@/wildcard.pem\n"
	"key             = @C@/wildcard.key\n"
	"client_ca       = @C@/ca.pem\n"
	"client_min_tls  = 1.3\n"
	"upstream_min_tls = 1.1\n"
	"upstream_ca     = @C@/other-ca.pem\n"
	"upstream_fingerprint = sha256:" FP_HEX "\n"
	"upstream_cert   = @C@/client.pem\n"
	"upstream_key    = @C@/client.key\n"
	"proxy_protocol_in  = none\n"
	"proxy_protocol_out = none\n"
	"xclient         = no\n"
	"connect_timeout = 500ms\n"
	"handshake_timeout = 2m\n"
	"idle_timeout    = 45\n"
	"line_timeout    = 90s\n"
	"min_data_rate   = 250\n"
	"max_connections_per_client = 7\n"
	"transparent     = no\n"
	"\n"
	"[route smtps]\n"
	"listen          = [::1]:20993\n"
	"protocol        = smtp\n"
	"client_tls      = implicit\n"
	"upstream        = localhost:20143\n"
	"upstream_tls    = starttls\n"
	"\n"
	"[route plain]\n"
	"listen          = 127.0.0.1:20002\n"
	"protocol        = tcp\n"
	"upstream        = 127.0.0.1:20003\n"
	"upstream_tls    = none\n"
	"\n"
	"[route verify]\n"
	"listen          = 127.0.0.1:20995\n"
	"protocol        = tcp\n"
	"client_tls      = implicit\n"
	"upstream        = localhost:20110\n"
	"upstream_tls    = implicit\n"
	"upstream_policy = verify\n"
	"upstream_ca     = @C@/ca.pem\n"
	"proxy_protocol_in = none\n"
	"xclient         = no\n"
	"transparent     = no\n"
	"\n"
	"[route lmtp]\n"
	"listen          = 127.0.0.1:20024\n"
	"protocol        = lmtp\n"
	"client_tls      = starttls\n"
	"client_policy   = may\n"
	"upstream        = 127.0.0.1:20025\n"
	"upstream_tls    = implicit\n"
	"upstream_policy = encrypt\n"
	"policy_mode     = enforce\n";

static char *cpath(const char *name)
{
	size_t len = strlen(certdir) + strlen(name) + 2;
	char *p = malloc(len);
	if (!p)
		abort();
	snprintf(p, len, "%s/%s", certdir, name);
	return p;
}

static void assert_str_path(const char *got, const char *name)
{
	char *want = cpath(name);
	assert_non_null(got);
	assert_string_equal(got, want);
	free(want);
}

static const struct cfg_route *find_route(const struct cfg *c, const char *name)
{
	for (size_t i = 0; i < c->nroutes; i++)
		if (c->routes[i].name && !strcmp(c->routes[i].name, name))
			return &c->routes[i];
	return NULL;
}

static struct cfg *load_ok(const char *tmpl, char **path_out)
{
	char *path = write_conf(tmpl);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &cfg, &errs);
	if (rc != 0 || errs.n) {
		print_message("cfg_load(%s) = %d, expected 0\n", path, rc);
		dump_errors(&errs);
	}
	assert_int_equal(rc, 0);
	assert_int_equal(errs.n, 0);
	assert_non_null(cfg);
	cfg_errors_free(&errs);
	if (path_out)
		*path_out = path;
	else
		free(path);
	return cfg;
}

static void test_load_full(void **state)
{
	(void)state;
	skip_without_certs();
	char *path;
	struct cfg *c = load_ok(FULL_CONF, &path);

	/* [global] */
	assert_non_null(c->path);
	assert_string_equal(c->path, path);
	assert_int_equal(c->workers, 2);
	assert_non_null(c->user);
	assert_string_equal(c->user, "nobody");
	assert_int_equal(c->log_level, LOG_DEBUG);
	assert_int_equal(c->log_format, CFG_LOG_JSON);
	assert_int_equal(c->has_admin_listen, 0);
	assert_int_equal(c->max_connections, 500);
	assert_non_null(c->helo_name);
	assert_string_equal(c->helo_name, "proxy.example.net");
	assert_str_path(c->cert, "server.pem");
	assert_str_path(c->key, "server.key");
	assert_str_path(c->ca, "ca.pem");
	assert_int_equal(c->drain_timeout_ms, 10000);
	assert_null(c->ticket_key_file);

	assert_int_equal(c->nroutes, 5);
	/* Routes keep file order. */
	assert_string_equal(c->routes[0].name, "full");
	assert_string_equal(c->routes[1].name, "smtps");
	assert_string_equal(c->routes[2].name, "plain");
	assert_string_equal(c->routes[3].name, "verify");
	assert_string_equal(c->routes[4].name, "lmtp");

	/* [route full]: every key set explicitly. */
	const struct cfg_route *r = find_route(c, "full");
	assert_non_null(r);
	assert_int_equal(r->line, line_of(FULL_CONF, "[route full]"));
	assert_string_equal(r->listen.host, "127.0.0.1");
	assert_int_equal(r->listen.port, 20001);
	assert_int_equal(r->listen.ss.ss_family, AF_INET);
	assert_int_equal(r->listen.sslen, sizeof(struct sockaddr_in));
	assert_int_equal(ntohs(((const struct sockaddr_in *)&r->listen.ss)->sin_port), 20001);
	assert_int_equal(r->listen.original_dst, 0);
	assert_int_equal(r->protocol, CFG_PROTO_SMTP);
	assert_int_equal(r->client_tls, CFG_TLS_STARTTLS);
	assert_int_equal(r->client_policy, CFG_POLICY_ENCRYPT);
	assert_string_equal(r->upstream.host, "::1");
	assert_int_equal(r->upstream.port, 20465);
	assert_int_equal(r->upstream.ss.ss_family, AF_INET6);
	assert_int_equal(r->upstream.sslen, sizeof(struct sockaddr_in6));
	assert_int_equal(ntohs(((const struct sockaddr_in6 *)&r->upstream.ss)->sin6_port), 20465);
	assert_int_equal(r->upstream.original_dst, 0);
	assert_int_equal(r->upstream_tls, CFG_TLS_IMPLICIT);
	assert_int_equal(r->upstream_policy, CFG_POLICY_FINGERPRINT);
	assert_int_equal(r->policy_mode, CFG_MODE_TESTING);
	assert_string_equal(r->upstream_name, "mx.example.net");
	assert_str_path(r->cert, "wildcard.pem");
	assert_str_path(r->key, "wildcard.key");
	assert_str_path(r->client_ca, "ca.pem");
	assert_int_equal(r->client_min_tls, 13);
	assert_int_equal(r->upstream_min_tls, 11);
	assert_str_path(r->upstream_ca, "other-ca.pem");
	assert_int_equal(r->has_upstream_fingerprint, 1);
	assert_memory_equal(r->upstream_fingerprint, fp_bytes, 32);
	assert_str_path(r->upstream_cert, "client.pem");
	assert_str_path(r->upstream_key, "client.key");
	assert_null(r->policy_table);
	assert_int_equal(r->proxy_protocol_in, CFG_PP_NONE);
	assert_int_equal(r->proxy_protocol_out, CFG_PP_NONE);
	assert_int_equal(r->xclient, 0);
	assert_int_equal(r->connect_timeout_ms, 500);
	assert_int_equal(r->handshake_timeout_ms, 120000);
	assert_int_equal(r->idle_timeout_ms, 45000);
	assert_int_equal(r->line_timeout_ms, 90000);
	assert_int_equal(r->min_data_rate, 250);
	assert_int_equal(r->max_connections_per_client, 7);
	assert_int_equal(r->transparent, CFG_TRANSPARENT_NO);
	assert_int_equal(r->source_client, 0);

	/* [route smtps]: defaults. */
	r = find_route(c, "smtps");
	assert_non_null(r);
	assert_int_equal(r->line, line_of(FULL_CONF, "[route smtps]"));
	assert_string_equal(r->listen.host, "::1");
	assert_int_equal(r->listen.port, 20993);
	assert_int_equal(r->listen.ss.ss_family, AF_INET6);
	assert_int_equal(r->protocol, CFG_PROTO_SMTP);
	assert_int_equal(r->client_tls, CFG_TLS_IMPLICIT);
	assert_string_equal(r->upstream.host, "localhost");
	assert_int_equal(r->upstream.port, 20143);
	/* a host name: resolved by each session, not at load */
	assert_int_equal(r->upstream.needs_dns, 1);
	assert_int_equal(r->upstream.sslen, 0);
	assert_int_equal(r->upstream.line, line_of(FULL_CONF, "upstream        = localhost:20143"));
	assert_int_equal(r->upstream_tls, CFG_TLS_STARTTLS);
	assert_int_equal(r->upstream_policy, CFG_POLICY_VERIFY);  /* default with TLS upstream */
	assert_int_equal(r->policy_mode, CFG_MODE_ENFORCE);
	assert_non_null(r->upstream_name);
	assert_string_equal(r->upstream_name, "localhost");       /* default: upstream host */
	assert_str_path(r->cert, "server.pem");                    /* default: global */
	assert_str_path(r->key, "server.key");
	assert_null(r->client_ca);
	assert_int_equal(r->client_min_tls, 12);
	assert_int_equal(r->upstream_min_tls, 12);
	assert_str_path(r->upstream_ca, "ca.pem");                 /* default: global ca */
	assert_int_equal(r->has_upstream_fingerprint, 0);
	assert_null(r->upstream_cert);
	assert_null(r->upstream_key);
	assert_null(r->policy_table);
	assert_int_equal(r->proxy_protocol_in, CFG_PP_NONE);
	assert_int_equal(r->proxy_protocol_out, CFG_PP_NONE);
	assert_int_equal(r->xclient, 0);
	assert_int_equal(r->max_connections_per_client, 50); /* like Postfix's default */
	assert_int_equal(r->bare_newline, CFG_BARE_NORMALIZE);
	assert_int_equal(r->greeting_local, 0);
	assert_int_equal(r->transparent, CFG_TRANSPARENT_NO);
	assert_int_equal(r->source_client, 0);
	assert_true(r->connect_timeout_ms > 0);
	assert_true(r->handshake_timeout_ms > 0);
	assert_true(r->idle_timeout_ms > 0);
	assert_int_equal(r->line_timeout_ms, 60000);
	assert_int_equal(r->min_data_rate, 500); /* Postfix's smtpd_min_data_rate */

	/* [route plain]: upstream_tls = none -> policy none. */
	r = find_route(c, "plain");
	assert_non_null(r);
	assert_int_equal(r->protocol, CFG_PROTO_TCP);
	assert_int_equal(r->client_tls, CFG_TLS_NONE);
	assert_int_equal(r->upstream_tls, CFG_TLS_NONE);
	assert_int_equal(r->upstream_policy, CFG_POLICY_NONE);
	assert_string_equal(r->upstream.host, "127.0.0.1");
	assert_int_equal(r->upstream.port, 20003);
	assert_int_equal(r->upstream.ss.ss_family, AF_INET);
	assert_non_null(r->upstream_name);
	assert_string_equal(r->upstream_name, "127.0.0.1");
	assert_int_equal(r->client_min_tls, 12);
	assert_int_equal(r->upstream_min_tls, 12);

	r = find_route(c, "verify");
	assert_non_null(r);
	assert_int_equal(r->protocol, CFG_PROTO_TCP);
	assert_int_equal(r->upstream_tls, CFG_TLS_IMPLICIT);
	assert_int_equal(r->upstream_policy, CFG_POLICY_VERIFY);
	assert_string_equal(r->upstream_name, "localhost");
	assert_str_path(r->upstream_ca, "ca.pem");
	assert_int_equal(r->proxy_protocol_in, CFG_PP_NONE);
	assert_int_equal(r->xclient, 0);
	assert_int_equal(r->transparent, CFG_TRANSPARENT_NO);

	r = find_route(c, "lmtp");
	assert_non_null(r);
	assert_int_equal(r->protocol, CFG_PROTO_LMTP);
	assert_int_equal(r->client_tls, CFG_TLS_STARTTLS);
	assert_int_equal(r->client_policy, CFG_POLICY_MAY);
	assert_int_equal(r->upstream_tls, CFG_TLS_IMPLICIT);
	assert_int_equal(r->upstream_policy, CFG_POLICY_ENCRYPT);
	assert_int_equal(r->policy_mode, CFG_MODE_ENFORCE);

	cfg_free(c);
	free(path);
}

static void test_load_global_defaults(void **state)
{
	(void)state;
	static const char conf[] =
		"[global]\n"
		"\n"
		"[route r1]\n"
		"listen = 127.0.0.1:20101\n"
		"protocol = tcp\n"
		"upstream = 127.0.0.1:20102\n";
	struct cfg *c = load_ok(conf, NULL);
	assert_true(c->workers >= 1);
	assert_int_equal(c->log_level, LOG_INFO);
	assert_int_equal(c->log_format, CFG_LOG_TEXT);
	assert_int_equal(c->has_admin_listen, 0);
	assert_null(c->cert);
	assert_null(c->key);
	assert_null(c->ticket_key_file);
	assert_int_equal(c->nroutes, 1);
	const struct cfg_route *r = &c->routes[0];
	assert_string_equal(r->name, "r1");
	assert_int_equal(r->client_tls, CFG_TLS_NONE);
	assert_int_equal(r->upstream_tls, CFG_TLS_NONE);
	assert_int_equal(r->upstream_policy, CFG_POLICY_NONE);
	assert_int_equal(r->policy_mode, CFG_MODE_ENFORCE);
	assert_int_equal(r->client_min_tls, 12);
	assert_int_equal(r->upstream_min_tls, 12);
	assert_null(r->cert);
	assert_null(r->key);
	cfg_free(c);
}

static void test_load_workers_auto(void **state)
{
	(void)state;
	static const char conf[] =
		"[global]\n"
		"workers = auto\n"
		"[route r1]\n"
		"listen = 127.0.0.1:20111\n"
		"protocol = tcp\n"
		"upstream = 127.0.0.1:20112\n";
	struct cfg *c = load_ok(conf, NULL);
	assert_true(c->workers >= 1);
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	if (cores > 0)
		assert_true(c->workers <= cores); /* one per core (an upper cap is allowed) */
	cfg_free(c);
}

static const char COMMENTS_CONF[] =
	"# leading hash comment\n"
	"   ; indented semicolon comment\n"
	"\n"
	"\t\n"
	"[global]   \n"
	"log_level=warn ; trailing semicolon comment\n"
	"helo_name =\trelay.example.org   # trailing hash comment\n"
	"\tmax_connections   =   42\t\n"
	"   drain_timeout\t=\t250ms\n"
	"# a comment between sections\n"
	"\n"
	"[route spaced]   ; comment after a section header\n"
	"listen=127.0.0.1:20011\n"
	"protocol\t=\ttcp  # tcp wrapping\n"
	"  upstream = 127.0.0.1:20012 ; the backend\n"
	"\n"
	"idle_timeout = 90s\n"
	"; the end\n";

static void test_load_comments_whitespace(void **state)
{
	(void)state;
	struct cfg *c = load_ok(COMMENTS_CONF, NULL);
	assert_int_equal(c->log_level, LOG_WARN);
	assert_non_null(c->helo_name);
	assert_string_equal(c->helo_name, "relay.example.org");
	assert_int_equal(c->max_connections, 42);
	assert_int_equal(c->drain_timeout_ms, 250);
	assert_int_equal(c->nroutes, 1);
	const struct cfg_route *r = &c->routes[0];
	assert_string_equal(r->name, "spaced");
	assert_int_equal(r->line, line_of(COMMENTS_CONF, "[route spaced]"));
	assert_int_equal(r->protocol, CFG_PROTO_TCP);
	assert_string_equal(r->listen.host, "127.0.0.1");
	assert_int_equal(r->listen.port, 20011);
	assert_string_equal(r->upstream.host, "127.0.0.1");
	assert_int_equal(r->upstream.port, 20012);
	assert_int_equal(r->idle_timeout_ms, 90000);
	cfg_free(c);
}

/* Loading the same file twice gives two independent structs (reload builds a new one). */
static void test_load_twice(void **state)
{
	(void)state;
	struct cfg *a = load_ok(COMMENTS_CONF, NULL);
	struct cfg *b = load_ok(COMMENTS_CONF, NULL);
	assert_ptr_not_equal(a, b);
	assert_string_equal(a->routes[0].name, b->routes[0].name);
	cfg_free(a);
	assert_string_equal(b->routes[0].name, "spaced");
	cfg_free(b);
}

/* ------------------------------------------------------------------ cfg_load: errors */

#define G                                                                                   \
	"[global]\n"                                                                        \
	"cert = @C@/server.pem\n"                                                           \
	"key = @C@/server.key\n"                                                            \
	"ca = @C@/ca.pem\n"
#define G_NOCERT                                                                            \
	"[global]\n"                                                                        \
	"ca = @C@/ca.pem\n"
#define R1                                                                                  \
	"[route r1]\n"                                                                      \
	"listen = 127.0.0.1:20001\n"                                                        \
	"protocol = tcp\n"                                                                  \
	"upstream = 127.0.0.1:20002\n"
#define R2                                                                                  \
	"[route r2]\n"                                                                      \
	"listen = 127.0.0.1:20003\n"                                                        \
	"protocol = tcp\n"                                                                  \
	"upstream = 127.0.0.1:20004\n"

struct err_case {
	const char *name;
	const char *conf;
	const char *at[3]; /* the error's line holds one of these (first occurrence) */
	int nth;           /* occurrence of at[0] (0 = first) */
	const char *mention; /* optional: text the message must contain (case-insensitive) */
	int certs;         /* needs the test certificates */
};

static const struct err_case err_cases[] = {
	{ "unknown key in [global]", G "bogus_key = 1\n" R1, { "bogus_key" }, 0, "bogus_key", 0 },
	{ "unknown key in route", G R1 "frobnicate = yes\n", { "frobnicate" }, 0, "frobnicate", 0 },
	{ "unknown section", G "[frontend x]\n" R1, { "[frontend x]" }, 0, NULL, 0 },
	{ "unknown section (no name)", G "[listeners]\n" R1, { "[listeners]" }, 0, NULL, 0 },
	{ "key outside a section", "# comment\nlog_level = info\n" G R1, { "log_level = info" }, 0,
	  NULL, 0 },
	{ "unterminated section header", G "[route r1\n" "listen = 127.0.0.1:20001\n",
	  { "[route r1" }, 0, NULL, 0 },
	{ "line without =", G "justtext\n" R1, { "justtext" }, 0, NULL, 0 },
	{ "duplicate route name",
	  G R1 "[route r1]\nlisten = 127.0.0.1:20005\nprotocol = tcp\nupstream = 127.0.0.1:20006\n",
	  { "[route r1]" }, 2, "r1", 0 },
	{ "duplicate key in [global]", G "log_level = info\nlog_level = debug\n" R1,
	  { "log_level = debug" }, 0, "log_level", 0 },
	{ "duplicate key in route", G R1 "idle_timeout = 5s\nidle_timeout = 6s\n",
	  { "idle_timeout = 6s" }, 0, "idle_timeout", 0 },
	{ "typo in a route key: a suggestion", G R1 "upstream_polcy = verify\n",
	  { "upstream_polcy" }, 0, "did you mean \"upstream_policy\"?", 0 },
	{ "typo in a global key: a suggestion", G "drain_timout = 5s\n" R1, { "drain_timout" }, 0,
	  "did you mean \"drain_timeout\"?", 0 },
	{ "swapped letters: a suggestion", G R1 "upsteram = 127.0.0.1:1\n", { "upsteram" }, 0,
	  "did you mean \"upstream\"?", 0 },
	{ "a deletion and a swap, upper case: a suggestion", G R1 "IDLE_TMEUOT = 5s\n",
	  { "IDLE_TMEUOT" }, 0, "did you mean \"idle_timeout\"?", 0 },
	{ "line_timeout on a tcp route", G R1 "line_timeout = 5s\n", { "line_timeout = 5s" }, 0,
	  "line_timeout needs protocol = smtp, lmtp or pop3", 0 },
	{ "min_data_rate on a tcp route", G R1 "min_data_rate = 100\n", { "min_data_rate = 100" },
	  0, "min_data_rate needs protocol = smtp or lmtp", 0 },
	{ "greeting on a tcp route", G R1 "greeting = local\n", { "greeting = local" }, 0,
	  "greeting needs protocol = smtp or lmtp", 0 },
	{ "greeting = upstream on a late-binding route",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx\n"
	    "upstream_tls = starttls\nupstream_policy = mta-sts\ngreeting = upstream\n",
	  { "greeting = upstream" }, 0, "greets its clients itself", 0 },
	{ "route key in [global]", G "idle_timeout = 5s\n" R1, { "idle_timeout = 5s" }, 0,
	  "belongs in a [route NAME] section", 0 },
	{ "global key in a route", G R1 "workers = 2\n", { "workers = 2" }, 0,
	  "belongs in [global]", 0 },
	{ "admin_listen on a route's address", G "admin_listen = 127.0.0.1:20001\n" R1,
	  { "admin_listen" }, 0, "overlaps the listen address of route \"r1\"", 0 },
	{ "admin_listen on 0.0.0.0, a route on 127.0.0.1, one port",
	  G "admin_listen = 0.0.0.0:20001\n" R1, { "admin_listen" }, 0, "overlaps", 0 },
	{ "0.0.0.0 and 127.0.0.1 on one port",
	  G R1 "[route r2]\nlisten = 0.0.0.0:20001\nprotocol = tcp\nupstream = 127.0.0.1:20006\n",
	  { "listen = 0.0.0.0:20001" }, 0, "overlaps that of route \"r1\"", 0 },
	{ "[::] (dual-stack) and 127.0.0.1 on one port",
	  G R1 "[route r2]\nlisten = [::]:20001\nprotocol = tcp\nupstream = 127.0.0.1:20006\n",
	  { "listen = [::]:20001" }, 0, "overlaps", 0 },
	{ "same listen address twice",
	  G R1 "[route r2]\nlisten = 127.0.0.1:20001\nprotocol = tcp\nupstream = 127.0.0.1:20006\n",
	  { "listen = 127.0.0.1:20001", "[route r2]" }, 2, NULL, 0 },
	{ "client_tls = implicit without any cert", G_NOCERT R1 "client_tls = implicit\n",
	  { "client_tls = implicit", "[route r1]" }, 0, NULL, 0 },
	{ "client_tls = starttls without any cert",
	  G_NOCERT "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\n"
		   "upstream = 127.0.0.1:20002\nclient_tls = starttls\n",
	  { "client_tls = starttls", "[route r1]" }, 0, NULL, 0 },
	{ "route cert without key", G_NOCERT R1 "client_tls = implicit\ncert = @C@/server.pem\n",
	  { "cert = @C@/server.pem", "client_tls = implicit", "[route r1]" }, 0, NULL, 1 },
	{ "unreadable route cert",
	  G R1 "client_tls = implicit\ncert = @T@/missing-cert.pem\nkey = @C@/server.key\n",
	  { "cert = @T@/missing-cert.pem" }, 0, "missing-cert.pem", 1 },
	{ "unreadable route key",
	  G R1 "client_tls = implicit\ncert = @C@/server.pem\nkey = @T@/missing-key.pem\n",
	  { "key = @T@/missing-key.pem" }, 0, "missing-key.pem", 1 },
	{ "unreadable global cert",
	  "[global]\ncert = /nonexistent/stp/cert.pem\nkey = @C@/server.key\n" R1
	  "client_tls = implicit\n",
	  { "cert = /nonexistent" }, 0, "/nonexistent/stp/cert.pem", 1 },
	{ "unreadable global key",
	  "[global]\ncert = @C@/server.pem\nkey = /nonexistent/stp/key.pem\n" R1
	  "client_tls = implicit\n",
	  { "key = /nonexistent" }, 0, "/nonexistent/stp/key.pem", 1 },
	{ "unreadable global ca", "[global]\nca = /nonexistent/stp/ca.pem\n" R1,
	  { "ca = /nonexistent" }, 0, "/nonexistent/stp/ca.pem", 0 },
	{ "unreadable client_ca", G R1 "client_tls = implicit\nclient_ca = /nonexistent/stp/cca.pem\n",
	  { "client_ca = /nonexistent" }, 0, "/nonexistent/stp/cca.pem", 1 },
	{ "unreadable upstream_ca",
	  G R1 "upstream_tls = implicit\nupstream_ca = /nonexistent/stp/uca.pem\n",
	  { "upstream_ca = /nonexistent" }, 0, "/nonexistent/stp/uca.pem", 1 },
	{ "unreadable upstream_cert",
	  G R1 "upstream_tls = implicit\nupstream_cert = /nonexistent/stp/uc.pem\n"
	       "upstream_key = @C@/client.key\n",
	  { "upstream_cert = /nonexistent" }, 0, "/nonexistent/stp/uc.pem", 1 },
	{ "unreadable upstream_key",
	  G R1 "upstream_tls = implicit\nupstream_cert = @C@/client.pem\n"
	       "upstream_key = /nonexistent/stp/uk.pem\n",
	  { "upstream_key = /nonexistent" }, 0, "/nonexistent/stp/uk.pem", 1 },
	{ "unreadable policy_table", G R1 "policy_table = /nonexistent/stp/policy\n",
	  { "policy_table = /nonexistent" }, 0, NULL, 0 },
	{ "unreadable ticket_key_file", G "ticket_key_file = /nonexistent/stp/tickets\n" R1,
	  { "ticket_key_file = /nonexistent" }, 0, NULL, 0 },
	{ "route cert/key mismatch",
	  G R1 "client_tls = implicit\ncert = @C@/server.pem\nkey = @C@/client.key\n",
	  { "key = @C@/client.key", "cert = @C@/server.pem" }, 0, NULL, 1 },
	{ "global cert/key mismatch",
	  "[global]\ncert = @C@/server.pem\nkey = @C@/client.key\nca = @C@/ca.pem\n" R1
	  "client_tls = implicit\n",
	  { "cert = @C@/server.pem", "key = @C@/client.key" }, 0, NULL, 1 },
	{ "upstream cert/key mismatch",
	  G R1 "upstream_tls = implicit\nupstream_policy = encrypt\n"
	       "upstream_cert = @C@/client.pem\nupstream_key = @C@/server.key\n",
	  { "upstream_key = @C@/server.key", "upstream_cert = @C@/client.pem" }, 0, NULL, 1 },
	{ "cert file is not a certificate",
	  G R1 "client_tls = implicit\ncert = @C@/server.key\nkey = @C@/server.key\n",
	  { "cert = @C@/server.key" }, 0, NULL, 1 },
	{ "key file is not a key",
	  G R1 "client_tls = implicit\ncert = @C@/server.pem\nkey = @C@/server.pem\n",
	  { "key = @C@/server.pem" }, 0, NULL, 1 },
	{ "ca file without certificates",
	  G R1 "upstream_tls = implicit\nupstream_name = localhost\n"
	       "upstream_ca = @C@/client.key\n",
	  { "upstream_ca = @C@/client.key" }, 0, NULL, 1 },
	{ "client_ca file without certificates",
	  G R1 "client_tls = implicit\nclient_ca = @C@/client.key\n",
	  { "client_ca = @C@/client.key" }, 0, NULL, 1 },
	{ "upstream_tls = none with upstream_policy = verify",
	  G R1 "upstream_tls = none\nupstream_policy = verify\n",
	  { "upstream_policy = verify", "upstream_tls = none", "[route r1]" }, 0, NULL, 0 },
	{ "upstream_policy = verify without upstream_tls (defaults to none)",
	  G R1 "upstream_policy = verify\n",
	  { "upstream_policy = verify", "[route r1]" }, 0, NULL, 0 },
	{ "upstream_policy = none with upstream_tls = implicit",
	  G R1 "upstream_tls = implicit\nupstream_policy = none\n",
	  { "upstream_policy = none", "upstream_tls = implicit", "[route r1]" }, 0, NULL, 0 },
	{ "upstream_fingerprint with another policy",
	  G R1 "upstream_tls = implicit\nupstream_policy = encrypt\n"
	       "upstream_fingerprint = sha256:" FP_HEX "\n",
	  { "upstream_fingerprint = ", "upstream_policy = encrypt", "[route r1]" }, 0, NULL, 0 },
	{ "client_policy = encrypt without client TLS", G R1 "client_policy = encrypt\n",
	  { "client_policy = encrypt", "[route r1]" }, 0, NULL, 0 },
	{ "source = client without transparent = tproxy", G R1 "source = client\n",
	  { "source = client", "[route r1]" }, 0, NULL, 0 },
	{ "upstream_cert without upstream_key",
	  G R1 "upstream_tls = implicit\nupstream_policy = encrypt\n"
	       "upstream_cert = @C@/client.pem\n",
	  { "upstream_cert = ", "[route r1]" }, 0, NULL, 1 },
	{ "fingerprint policy without upstream_fingerprint",
	  G R1 "upstream_tls = implicit\nupstream_policy = fingerprint\n",
	  { "upstream_policy = fingerprint", "[route r1]" }, 0, NULL, 0 },
	{ "missing listen", G "[route r1]\nprotocol = tcp\nupstream = 127.0.0.1:20002\n",
	  { "[route r1]" }, 0, "listen", 0 },
	{ "missing upstream", G "[route r1]\nprotocol = tcp\nlisten = 127.0.0.1:20001\n",
	  { "[route r1]" }, 0, "upstream", 0 },
	{ "route without name",
	  G "[route]\nlisten = 127.0.0.1:20001\nprotocol = tcp\nupstream = 127.0.0.1:20002\n",
	  { "[route]" }, 0, NULL, 0 },
	{ "route with blank name",
	  G "[route   ]\nlisten = 127.0.0.1:20001\nprotocol = tcp\nupstream = 127.0.0.1:20002\n",
	  { "[route   ]" }, 0, NULL, 0 },
	{ "second [global]", G R1 "[global]\nlog_level = info\n", { "[global]" }, 2, NULL, 0 },
	{ "unresolvable listen host",
	  G "[route r1]\nlisten = no-such-host.invalid:20001\nprotocol = tcp\n"
	    "upstream = 127.0.0.1:25\n",
	  { "listen = no-such-host.invalid" }, 0, NULL, 0 },
	{ "starttls on protocol tcp", G R1 "upstream_tls = starttls\n",
	  { "upstream_tls = starttls", "[route r1]" }, 0, NULL, 0 },
	/* late binding: mta-sts with upstream = mx or original-destination, SMTP, STARTTLS */
	{ "upstream = mx without mta-sts",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx\n"
	    "upstream_tls = starttls\nupstream_policy = verify\n",
	  { "upstream = mx" }, 0, "mta-sts", 0 },
	{ "mx with a bad port",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx:0\n"
	    "upstream_tls = starttls\nupstream_policy = mta-sts\n",
	  { "upstream = mx:0" }, 0, "mx:PORT", 0 },
	{ "mta-sts toward a fixed host",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = 127.0.0.1:25\n"
	    "upstream_tls = starttls\nupstream_policy = mta-sts\n",
	  { "upstream_policy = mta-sts" }, 0, "upstream = mx or original-destination", 0 },
	{ "mta-sts on lmtp",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = lmtp\nupstream = mx\n"
	    "upstream_tls = starttls\nupstream_policy = mta-sts\n",
	  { "upstream_policy = mta-sts" }, 0, "protocol = smtp", 0 },
	{ "mta-sts with implicit TLS",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx\n"
	    "upstream_tls = implicit\nupstream_policy = mta-sts\n",
	  { "upstream_policy = mta-sts" }, 0, "starttls", 0 },
	{ "mta-sts with upstream_name",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx\n"
	    "upstream_tls = starttls\nupstream_policy = mta-sts\nupstream_name = a.example\n",
	  { "upstream_name" }, 0, "MX host", 0 },
	{ "dane without DNSSEC",
	  G "dnssec_trust_anchor = none\n"
	    "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx\n"
	    "upstream_tls = starttls\nupstream_policy = dane\n",
	  { "upstream_policy = dane" }, 0, "dnssec_trust_anchor", 0 },
	{ "auto without DNSSEC",
	  G "dnssec_trust_anchor = none\n"
	    "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\n"
	    "upstream = original-destination\nupstream_tls = starttls\nupstream_policy = auto\n",
	  { "upstream_policy = auto" }, 0, "DNSSEC", 0 },
	{ "xclient toward recipients' MX",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx\n"
	    "upstream_tls = starttls\nupstream_policy = mta-sts\nxclient = yes\n",
	  { "xclient = yes" }, 0, "Postfix", 0 },
	{ "proxy_protocol_out toward recipients' MX",
	  G "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx\n"
	    "upstream_tls = starttls\nupstream_policy = mta-sts\nproxy_protocol_out = v1\n",
	  { "proxy_protocol_out = v1" }, 0, "MX hosts", 0 },
	{ "resolver not an address", G "resolver = dns.example\n" R1, { "resolver" }, 0,
	  "IP or IP:PORT", 0 },
	{ "unreadable trust anchor", G "dnssec_trust_anchor = @T@/no-such.key\n" R1,
	  { "dnssec_trust_anchor" }, 0, "no-such.key", 0 },
	{ "mta_sts_cache not a directory", G "mta_sts_cache = @C@/ca.pem\n" R1,
	  { "mta_sts_cache" }, 0, "writable directory", 1 },
	{ "mta_sts_port out of range", G "mta_sts_port = 0\n" R1, { "mta_sts_port" }, 0, NULL, 0 },
	{ "tlsrpt_relay without tlsrpt_dir", G "tlsrpt_relay = 127.0.0.1:25\n" R1,
	  { "tlsrpt_relay" }, 0, "needs tlsrpt_dir", 0 },
	{ "tlsrpt_relay not HOST:PORT", G "tlsrpt_dir = @T@/rpt\ntlsrpt_relay = relay\n" R1,
	  { "tlsrpt_relay" }, 0, "HOST:PORT", 0 },
	{ "tlsrpt_interval below 2s", G "tlsrpt_dir = @T@/rpt\ntlsrpt_interval = 500ms\n" R1,
	  { "tlsrpt_interval" }, 0, "at least 2s", 0 },
};

/* One bad value for one key. The line is built into a valid config; for route keys it
 * replaces the base line for that key, if any. */
struct badval_case {
	int route; /* 0: [global], 1: route */
	const char *key, *value;
};

static const struct badval_case badval_cases[] = {
	{ 0, "log_level", "loud" },
	{ 0, "log_format", "xml" },
	{ 0, "workers", "many" },
	{ 0, "workers", "-2" },
	{ 0, "max_connections", "lots" },
	{ 0, "max_connections", "-5" },
	{ 0, "drain_timeout", "10x" },
	{ 0, "drain_timeout", "5x" },
	{ 0, "admin_listen", "127.0.0.1" },
	{ 0, "admin_listen", "127.0.0.1:70000" },
	{ 1, "protocol", "http" },
	{ 1, "client_tls", "maybe" },
	{ 1, "client_policy", "verify" },
	{ 1, "upstream_tls", "tls" },
	{ 1, "upstream_policy", "strict" },
	{ 1, "policy_mode", "relaxed" },
	{ 1, "proxy_protocol_in", "v3" },
	{ 1, "proxy_protocol_out", "v9" },
	{ 1, "xclient", "maybe" },
	{ 1, "bare_newline", "strip" },
	{ 1, "greeting", "postscreen" },
	{ 1, "transparent", "redirect" },
	{ 1, "source", "server" },
	{ 1, "client_min_tls", "1.4" },
	{ 1, "upstream_min_tls", "2.0" },
	{ 1, "connect_timeout", "5x" },
	{ 1, "handshake_timeout", "-1" },
	{ 1, "idle_timeout", "forever" },
	{ 1, "idle_timeout", "" },
	{ 1, "line_timeout", "soon" },
	{ 1, "min_data_rate", "fast" },
	{ 1, "min_data_rate", "-5" },
	{ 1, "max_connections_per_client", "many" },
	{ 1, "listen", "127.0.0.1:70000" },
	{ 1, "listen", "127.0.0.1" },
	{ 1, "listen", "[::1:20001" },
	{ 1, "listen", "127.0.0.1:0" },
	{ 1, "upstream", "127.0.0.1:" },
	{ 1, "upstream", "[::1]20002" },
	{ 1, "upstream_fingerprint", "sha256:1234" },
	{ 1, "upstream_fingerprint", FP_HEX },
};

/* Loads conf (a template) and checks the error contract; returns the number of failures. */
static int check_error_case(const char *name, const char *conf, const char *const at[3], int nth,
			    const char *mention)
{
	char *path = write_conf(conf);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &cfg, &errs);
	int fails = 0;

	int lines[3] = { 0, 0, 0 };
	for (int i = 0; i < 3 && at[i]; i++) {
		lines[i] = line_of_nth(conf, at[i], i == 0 && nth ? nth : 1);
		if (!lines[i]) {
			print_message("[%s] test bug: \"%s\" not in the text\n", name, at[i]);
			fails++;
		}
	}
	if (rc >= 0) {
		print_message("[%s] cfg_load returned %d, expected an error\n", name, rc);
		fails++;
		if (cfg)
			cfg_free(cfg);
	} else {
		int hit = -1;
		for (int i = 0; i < 3 && at[i] && hit < 0; i++)
			hit = find_error_at(&errs, path, lines[i]);
		if (rc != -EINVAL || errs.n == 0) {
			print_message("[%s] cfg_load returned %d and recorded %zu errors\n", name, rc,
				      errs.n);
			fails++;
		}
		if (hit < 0) {
			print_message("[%s] no error at line %d%s (%s:LINE:)\n", name, lines[0],
				      at[1] ? " or the alternatives" : "", path);
			fails++;
		} else if (mention && !contains_ci(errs.msg[hit], mention)) {
			print_message("[%s] message does not mention \"%s\"\n", name, mention);
			fails++;
		}
		for (size_t i = 0; i < errs.n; i++) {
			if (strncmp(errs.msg[i], path, strlen(path)) || errs.msg[i][strlen(path)] != ':' ||
			    strchr(errs.msg[i], '\n') ||
			    (strlen(errs.msg[i]) > 4 &&
			     !strcmp(errs.msg[i] + strlen(errs.msg[i]) - 4, ": ok"))) {
				print_message("[%s] malformed message: \"%s\"\n", name, errs.msg[i]);
				fails++;
			}
		}
		if (fails)
			dump_errors(&errs);
	}
	cfg_errors_free(&errs);
	free(path);
	return fails;
}

static void test_load_errors(void **state)
{
	(void)state;
	int failures = 0, skipped = 0;
	for (size_t i = 0; i < sizeof err_cases / sizeof err_cases[0]; i++) {
		const struct err_case *c = &err_cases[i];
		if (c->certs && !have_certs) {
			skipped++;
			continue;
		}
		failures += check_error_case(c->name, c->conf, c->at, c->nth, c->mention) ? 1 : 0;
	}
	if (skipped)
		print_message("note: %d certificate cases skipped (no certificates)\n", skipped);
	assert_int_equal(failures, 0);
}

static void test_load_bad_values(void **state)
{
	(void)state;
	static const char *const base_route[] = {
		"listen = 127.0.0.1:20001\n", "protocol = tcp\n", "upstream = 127.0.0.1:20002\n"
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof badval_cases / sizeof badval_cases[0]; i++) {
		const struct badval_case *b = &badval_cases[i];
		char line[256], conf[4096], name[300];
		snprintf(line, sizeof line, "%s = %s\n", b->key, b->value);
		snprintf(name, sizeof name, "%s %s = \"%s\"", b->route ? "route" : "global", b->key,
			 b->value);
		strcpy(conf, "[global]\n");
		if (!b->route)
			strcat(conf, line);
		strcat(conf, "[route r1]\n");
		for (size_t k = 0; k < 3; k++) {
			size_t kl = strlen(b->key);
			if (b->route && !strncmp(base_route[k], b->key, kl) &&
			    base_route[k][kl] == ' ')
				continue;
			strcat(conf, base_route[k]);
		}
		if (b->route)
			strcat(conf, line);
		/* The bad line itself is the line to point at. */
		line[strlen(line) - 1] = 0;
		const char *at[3] = { line, NULL, NULL };
		failures += check_error_case(name, conf, at, 0, NULL) ? 1 : 0;
	}
	assert_int_equal(failures, 0);
}

/* The line bound (MAX_LINE in config.c): a line of 4096 characters before its newline is
 * read (here a comment, and a value with a trailing comment), one more character is
 * "FILE:LINE: line longer than 4096 characters", with or without a newline after it. */
static void test_load_line_bound(void **state)
{
	(void)state;
	static const struct {
		const char *head; /* the line starts with this, 'x' up to len characters */
		size_t len;
		int newline; /* the line ends in a newline (else it ends the file) */
		int ok;
	} t[] = {
		{ "# LONG ", 4096, 1, 1 },
		{ "# LONG ", 4097, 1, 0 },
		{ "# LONG ", 4096, 0, 1 },
		{ "# LONG ", 4097, 0, 0 },
		{ "idle_timeout = 90s # LONG ", 4096, 1, 1 },
		{ "idle_timeout = 90s # LONG ", 4097, 1, 0 },
	};
	const char *route = "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = tcp\n"
			    "upstream = 127.0.0.1:20002\n";
	int failures = 0;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		size_t cap = strlen(route) + t[i].len + 8, n = strlen(route);
		char *conf = malloc(cap);
		assert_non_null(conf);
		strcpy(conf, route);
		strcpy(conf + n, t[i].head);
		n += strlen(t[i].head);
		while (n - strlen(route) < t[i].len)
			conf[n++] = 'x';
		if (t[i].newline)
			conf[n++] = '\n';
		conf[n] = '\0';
		char name[80];
		snprintf(name, sizeof name, "%.20s... %zu characters%s", t[i].head, t[i].len,
			 t[i].newline ? "" : ", no newline");
		if (t[i].ok) {
			struct cfg *c = load_ok(conf, NULL);
			if (c->nroutes != 1 ||
			    (t[i].head[0] == 'i' && c->routes[0].idle_timeout_ms != 90000)) {
				print_message("[%s] not read as written\n", name);
				failures++;
			}
			cfg_free(c);
		} else {
			const char *at[3] = { "# LONG", NULL, NULL };
			if (check_error_case(name, conf, at, 0, "line longer than 4096"))
				failures++;
		}
		free(conf);
	}
	assert_int_equal(failures, 0);
}

static void test_load_multiple_errors(void **state)
{
	(void)state;
	static const char conf[] =
		"[global]\n"
		"bogus_one = 1\n"
		"log_level = loud\n"
		"\n"
		"[route r1]\n"
		"listen = 127.0.0.1:20001\n"
		"protocol = tcp\n"
		"upstream = 127.0.0.1:20002\n"
		"idle_timeout = 5x\n"
		"\n"
		"[route r2]\n"
		"listen = 127.0.0.1:20003\n"
		"protocol = pigeon\n"
		"upstream = 127.0.0.1:20004\n";
	char *path = write_conf(conf);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &cfg, &errs);
	if (rc != -EINVAL || errs.n != 4)
		dump_errors(&errs);
	assert_int_equal(rc, -EINVAL);
	assert_int_equal(errs.n, 4);
	assert_true(find_error_at(&errs, path, line_of(conf, "bogus_one")) >= 0);
	assert_true(find_error_at(&errs, path, line_of(conf, "log_level = loud")) >= 0);
	assert_true(find_error_at(&errs, path, line_of(conf, "idle_timeout = 5x")) >= 0);
	assert_true(find_error_at(&errs, path, line_of(conf, "protocol = pigeon")) >= 0);
	/* Errors come in file order. */
	assert_true(find_error_at(&errs, path, line_of(conf, "bogus_one")) <
		    find_error_at(&errs, path, line_of(conf, "protocol = pigeon")));
	cfg_errors_free(&errs);
	free(path);
}

/* Errors accumulate into a list that already holds messages. */
static void test_load_errors_append(void **state)
{
	(void)state;
	static const char conf[] = "[global]\nbogus_two = 1\n" R1;
	char *path = write_conf(conf);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	cfg_errors_add(&errs, "earlier: message");
	int rc = cfg_load(path, &cfg, &errs);
	assert_int_equal(rc, -EINVAL);
	assert_int_equal(errs.n, 2);
	assert_string_equal(errs.msg[0], "earlier: message");
	assert_true(find_error_at(&errs, path, 2) == 1);
	cfg_errors_free(&errs);
	free(path);
}

static void test_load_missing_file(void **state)
{
	(void)state;
	char path[600];
	snprintf(path, sizeof path, "%s/does-not-exist.conf", tmpdir);
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &cfg, &errs);
	assert_int_equal(rc, -EINVAL);
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msg[0], path));
	assert_non_null(strstr(errs.msg[0], ":0: cannot open: No such file or directory"));
	cfg_errors_free(&errs);
}

/* An empty file (or one without routes) has nothing to do: one error, at line 1. */
static void test_load_no_routes(void **state)
{
	(void)state;
	static const char *const confs[] = { "", "[global]\nworkers = 1\n", "# nothing\n" };
	for (size_t i = 0; i < sizeof confs / sizeof confs[0]; i++) {
		char *path = write_conf(confs[i]);
		struct cfg *cfg = NULL;
		struct cfg_errors errs = { 0 };
		int rc = cfg_load(path, &cfg, &errs);
		if (rc != -EINVAL || errs.n != 1)
			dump_errors(&errs);
		assert_int_equal(rc, -EINVAL);
		assert_null(cfg);
		assert_int_equal(errs.n, 1);
		assert_non_null(strstr(errs.msg[0], "no [route NAME] section"));
		cfg_errors_free(&errs);
		free(path);
	}
}


/* Keys of the contract whose feature may come in a later version: either the value is
 * accepted and lands in the struct, or the load fails with errors that all point at the
 * key's line and say so ("not supported"). Never silently ignored. */
struct optional_case {
	const char *global_line, *route_line;
	int feature;
};

enum { OPT_ADMIN, OPT_TICKETS, OPT_POLICY_TABLE, OPT_PP_IN, OPT_PP_OUT, OPT_XCLIENT, OPT_IMAP,
       OPT_POP3, OPT_TPROXY, OPT_ORIGDST, OPT_BARE_REJECT, OPT_PER_CLIENT0,
       OPT_GREETING_LOCAL };

static int optional_field_ok(const struct cfg *c, int feature)
{
	const struct cfg_route *r = &c->routes[0];
	char want[600];
	switch (feature) {
	case OPT_ADMIN:
		return c->has_admin_listen && c->admin_listen.port == 19465 &&
		       !strcmp(c->admin_listen.host, "127.0.0.1");
	case OPT_TICKETS:
		snprintf(want, sizeof want, "%s/tickets.key", tmpdir);
		return c->ticket_key_file && !strcmp(c->ticket_key_file, want);
	case OPT_POLICY_TABLE:
		snprintf(want, sizeof want, "%s/policy.table", tmpdir);
		return r->policy_table && !strcmp(r->policy_table, want);
	case OPT_PP_IN: return r->proxy_protocol_in == CFG_PP_V2;
	case OPT_PP_OUT: return r->proxy_protocol_out == CFG_PP_V1;
	case OPT_XCLIENT: return r->xclient == 1;
	case OPT_IMAP: return r->protocol == CFG_PROTO_IMAP;
	case OPT_POP3: return r->protocol == CFG_PROTO_POP3;
	case OPT_TPROXY: return r->transparent == CFG_TRANSPARENT_TPROXY;
	case OPT_ORIGDST: return r->upstream.original_dst == 1;
	case OPT_BARE_REJECT: return r->bare_newline == CFG_BARE_REJECT;
	case OPT_GREETING_LOCAL: return r->greeting_local == 1;
	case OPT_PER_CLIENT0: return r->max_connections_per_client == 0;
	}
	return 0;
}

/* Late binding: the keys are stored, and the trust anchor and resolver defaults. */
static void test_load_late(void **state)
{
	(void)state;
	char conf[2048];
	snprintf(conf, sizeof conf,
		 "[global]\nca = %s/ca.pem\nresolver = 127.0.0.1:5353\n"
		 "dnssec_trust_anchor = none\nmta_sts_cache = %s\nmta_sts_port = 8443\n"
		 "[route out]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = mx:2525\n"
		 "upstream_tls = starttls\nupstream_policy = mta-sts\npolicy_mode = testing\n"
		 "[route trans]\nlisten = 127.0.0.1:20002\nprotocol = smtp\n"
		 "upstream = original-destination\nupstream_tls = starttls\n"
		 "upstream_policy = mta-sts\n"
		 "[route plain]\nlisten = 127.0.0.1:20003\nprotocol = smtp\n"
		 "upstream = 127.0.0.1:25\n",
		 certdir, tmpdir);
	char *path = write_conf(conf);
	struct cfg *c = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load(path, &c, &errs);
	if (rc)
		dump_errors(&errs);
	assert_int_equal(rc, 0);
	assert_string_equal(c->resolver, "127.0.0.1:5353");
	assert_null(c->dnssec_trust_anchor);
	assert_string_equal(c->mta_sts_cache, tmpdir);
	assert_int_equal(c->mta_sts_port, 8443);
	assert_true(c->late_binding);
	assert_int_equal(c->routes[0].upstream_policy, CFG_POLICY_MTA_STS);
	assert_true(c->routes[0].upstream.mx);
	assert_int_equal(c->routes[0].upstream.port, 2525);
	assert_true(cfg_route_late(&c->routes[0]));
	assert_true(c->routes[1].upstream.original_dst);
	assert_true(cfg_route_late(&c->routes[1]));
	assert_false(cfg_route_late(&c->routes[2]));
	assert_string_equal(cfg_policy_name(CFG_POLICY_MTA_STS), "mta-sts");
	/* the trust store for MX certificates: the global ca */
	assert_non_null(c->routes[0].upstream_side_tls);
	assert_string_equal(c->routes[0].upstream_ca, c->ca);
	cfg_free(c);
	cfg_errors_free(&errs);
	free(path);
	/* defaults: Debian's root key when dns-root-data is there, port 443 */
	snprintf(conf, sizeof conf, "[global]\n[route r]\nlisten = 127.0.0.1:20001\n"
				    "protocol = tcp\nupstream = 127.0.0.1:2\n");
	path = write_conf(conf);
	rc = cfg_load(path, &c, &errs);
	assert_int_equal(rc, 0);
	assert_int_equal(c->mta_sts_port, 443);
	assert_null(c->resolver);
	if (access("/usr/share/dns/root.key", R_OK) == 0)
		assert_string_equal(c->dnssec_trust_anchor, "/usr/share/dns/root.key");
	else
		assert_null(c->dnssec_trust_anchor);
	assert_false(c->late_binding);
	cfg_free(c);
	cfg_errors_free(&errs);
	free(path);
}

/* A policy table may give the recipient-domain levels on a transparent SMTP route only. */
static void test_load_late_table(void **state)
{
	(void)state;
	char table[600], conf[2048];
	snprintf(table, sizeof table, "%s/late.table", tmpdir);
	FILE *f = fopen(table, "w");
	assert_non_null(f);
	fputs("# late\n*:25 mta-sts\n* dane\n", f);
	fclose(f);
	const struct {
		const char *route, *global;
		int ok;
		int line;          /* the table line named */
		const char *mention;
	} cases[] = {
		{ "protocol = smtp\nupstream = original-destination\nupstream_tls = starttls\n"
		  "upstream_policy = may\n", "", 1, 0, NULL },
		{ "protocol = smtp\nupstream = 127.0.0.1:25\nupstream_tls = starttls\n"
		  "upstream_policy = may\n", "", 0, 2, "upstream = original-destination" },
		{ "protocol = smtp\nupstream = original-destination\nupstream_tls = starttls\n"
		  "upstream_policy = may\n", "dnssec_trust_anchor = none\n", 0, 3, "DNSSEC" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		snprintf(conf, sizeof conf,
			 "[global]\nca = %s/ca.pem\n%s[route r]\nlisten = 127.0.0.1:20001\n%s"
			 "policy_table = %s\n",
			 certdir, cases[i].global, cases[i].route, table);
		char *path = write_conf(conf);
		struct cfg *c = NULL;
		struct cfg_errors errs = { 0 };
		int rc = cfg_load(path, &c, &errs);
		if (cases[i].ok) {
			if (rc)
				dump_errors(&errs);
			assert_int_equal(rc, 0);
			assert_true(c->late_binding);
			cfg_free(c);
		} else {
			char want[700];
			snprintf(want, sizeof want, "%s:%d: ", table, cases[i].line);
			int found = 0;
			for (size_t k = 0; k < errs.n; k++)
				found |= !strncmp(errs.msg[k], want, strlen(want)) &&
					 strstr(errs.msg[k], cases[i].mention) != NULL;
			if (!found)
				dump_errors(&errs);
			assert_int_not_equal(rc, 0);
			assert_true(found);
		}
		cfg_errors_free(&errs);
		free(path);
	}
}

static void test_load_optional_features(void **state)
{
	(void)state;
	static const struct optional_case cases[] = {
		{ "admin_listen = 127.0.0.1:19465", NULL, OPT_ADMIN },
		{ "ticket_key_file = @T@/tickets.key", NULL, OPT_TICKETS },
		{ NULL, "policy_table = @T@/policy.table", OPT_POLICY_TABLE },
		{ NULL, "proxy_protocol_in = v2", OPT_PP_IN },
		{ NULL, "proxy_protocol_out = v1", OPT_PP_OUT },
		{ NULL, "xclient = yes", OPT_XCLIENT },
		{ NULL, "bare_newline = reject", OPT_BARE_REJECT },
		{ NULL, "greeting = local", OPT_GREETING_LOCAL },
		{ NULL, "max_connections_per_client = 0", OPT_PER_CLIENT0 },
		{ NULL, "protocol = imap", OPT_IMAP },
		{ NULL, "protocol = pop3", OPT_POP3 },
		{ NULL, "transparent = tproxy", OPT_TPROXY },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct optional_case *oc = &cases[i];
		const char *line = oc->global_line ? oc->global_line : oc->route_line;
		char conf[2048];
		snprintf(conf, sizeof conf,
			 "[global]\n%s%s"
			 "[route r1]\nlisten = 127.0.0.1:20001\n%s\nupstream = 127.0.0.1:20002\n%s%s",
			 oc->global_line ? oc->global_line : "", oc->global_line ? "\n" : "",
			 oc->route_line && !strncmp(oc->route_line, "protocol", 8) ? oc->route_line
										   : "protocol = smtp",
			 oc->route_line && strncmp(oc->route_line, "protocol", 8) ? oc->route_line : "",
			 oc->route_line && strncmp(oc->route_line, "protocol", 8) ? "\n" : "");
		char *path = write_conf(conf);
		struct cfg *c = NULL;
		struct cfg_errors errs = { 0 };
		int rc = cfg_load(path, &c, &errs);
		int at = line_of(conf, line);
		if (rc == 0) {
			if (!optional_field_ok(c, oc->feature)) {
				print_message("[%s] accepted but not stored\n", line);
				failures++;
			}
			cfg_free(c);
		} else {
			int bad = errs.n == 0;
			for (size_t k = 0; k < errs.n; k++)
				if (find_error_at(&errs, path, at) < 0 ||
				    !contains_ci(errs.msg[k], "not supported"))
					bad = 1;
			if (bad) {
				print_message("[%s] refused, but not as \"%s:%d: ... not supported\"\n",
					      line, path, at);
				dump_errors(&errs);
				failures++;
			}
		}
		cfg_errors_free(&errs);
		free(path);
	}
	assert_int_equal(failures, 0);
}

/* client_allow: networks separated by commas, blanks or tabs, in any mix; each entry that
 * is no address or network is an error at the key's line, and the others are kept. The
 * list's room was once counted by commas only: blank-separated entries, and bad entries
 * after good ones, were written past it (found by fuzz_config; seen by ASan here). */
struct allow_case {
	const char *value;
	size_t n;         /* networks kept */
	int errors;       /* entries refused (with none kept, one line more: "no address or
			   * network"), all at the key's line */
	const char *first; /* the first network as family/prefix ("4/24"), or NULL */
};

static void test_load_client_allow(void **state)
{
	(void)state;
	static const struct allow_case cases[] = {
		{ "192.0.2.0/24", 1, 0, "4/24" },
		{ "192.0.2.0/24, 2001:db8::/32", 2, 0, "4/24" },
		{ "10.0.0.1 10.0.0.2\t10.0.0.3 10.0.0.4,10.0.0.5", 5, 0, "4/32" },
		{ "10.0.0.1,,10.0.0.2 ,\t, 10.0.0.3", 3, 0, "4/32" },
		{ "::53 { : x y z", 1, 5, "6/128" },
		{ "::1 ::2 ::3 ::4 ::5 ::6 ::7 ::8", 8, 0, "6/128" },
		{ "10.1.2.3/8", 0, 1, NULL },
		{ "a b c d e f g h", 0, 8, NULL },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct allow_case *ac = &cases[i];
		char conf[1024];
		snprintf(conf, sizeof conf,
			 "[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\n"
			 "upstream = 127.0.0.1:20002\nclient_allow = %s\n",
			 ac->value);
		char *path = write_conf(conf);
		struct cfg *c = NULL;
		struct cfg_errors errs = { 0 };
		int rc = cfg_load_flags(path, CFG_NO_FILES, &c, &errs);
		int at_key = 0;
		for (size_t k = 0; k < errs.n; k++)
			at_key += !strncmp(errs.msg[k], path, strlen(path)) &&
				  !strncmp(errs.msg[k] + strlen(path), ":5:", 3);
		if (ac->errors == 0 && rc == 0) {
			const struct cfg_route *r = &c->routes[0];
			char first[16] = "";
			if (r->nclient_allow)
				snprintf(first, sizeof first, "%d/%d",
					 r->client_allow[0].family == AF_INET ? 4 : 6,
					 r->client_allow[0].prefix);
			if (r->nclient_allow != ac->n || strcmp(first, ac->first) != 0) {
				print_message("[%s]: %zu networks, first %s (want %zu, %s)\n", ac->value,
					      r->nclient_allow, first, ac->n, ac->first);
				failures++;
			}
		} else if (ac->errors && rc == -EINVAL) {
			size_t want = (size_t)ac->errors + (ac->n == 0); /* + "no address or network" */
			if (errs.n != want || at_key != (int)errs.n) {
				print_message("[%s]: %zu errors, %d at line 5 (want %zu)\n", ac->value,
					      errs.n, at_key, want);
				dump_errors(&errs);
				failures++;
			}
		} else {
			print_message("[%s]: rc %d\n", ac->value, rc);
			dump_errors(&errs);
			failures++;
		}
		if (rc == 0)
			cfg_free(c);
		cfg_errors_free(&errs);
		free(path);
	}
	assert_int_equal(failures, 0);
}

/* ticket_key_file: 160 hex digits per line, blank and '#' lines skipped, the first line
 * first; every malformed line is an error at the key file's own FILE:LINE. */
struct ticket_case {
	const char *name, *text;
	int ok;            /* loads */
	size_t nkeys;      /* when it loads */
	int bad_lines[3];  /* when it does not: the key file lines named, 0-terminated */
};

static void hexkey(char *out, int seed)
{
	for (int i = 0; i < 80; i++)
		sprintf(out + 2 * i, "%02x", (i * 7 + seed) & 0xff);
}

static void test_ticket_key_file(void **state)
{
	(void)state;
	char k1[161], k2[161], up[161], longline[700], shortkey[120], nothex[161];
	hexkey(k1, 1);
	hexkey(k2, 2);
	hexkey(up, 3);
	for (char *q = up; *q; q++)
		*q = (char)toupper((unsigned char)*q);
	memset(longline, 'a', sizeof longline - 1);
	longline[sizeof longline - 1] = '\0';
	memcpy(shortkey, k1, sizeof shortkey - 1);
	shortkey[sizeof shortkey - 1] = '\0';
	memcpy(nothex, k1, sizeof nothex);
	nothex[17] = 'g';
	char t[6][2000];
	snprintf(t[0], sizeof t[0], "%s\n", k1);
	snprintf(t[1], sizeof t[1], "# rotated 2026-12-01\n\n  %s  \r\n%s\n%s", k2, k1, up);
	snprintf(t[2], sizeof t[2], "%s\n%s\n", k1, shortkey);
	snprintf(t[3], sizeof t[3], "%s\n\n%s\n%s\n", nothex, k1, longline);
	snprintf(t[4], sizeof t[4], "# nothing but comments\n\n");
	snprintf(t[5], sizeof t[5], "%s %s\n", k1, k2);
	const struct ticket_case cases[] = {
		{ "one key", t[0], 1, 1, { 0 } },
		{ "comments, blanks, CRLF, upper case, no final newline", t[1], 1, 3, { 0 } },
		{ "short key", t[2], 0, 0, { 2, 0 } },
		{ "not hex and too long", t[3], 0, 0, { 1, 4, 0 } },
		{ "no key", t[4], 0, 0, { 2, 0 } },
		{ "two keys on a line", t[5], 0, 0, { 1, 0 } },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct ticket_case *tc = &cases[i];
		char keyfile[600];
		snprintf(keyfile, sizeof keyfile, "%s/tk-%zu.key", tmpdir, i);
		FILE *f = fopen(keyfile, "w");
		assert_non_null(f);
		fputs(tc->text, f);
		fclose(f);
		chmod(keyfile, 0600);
		track(keyfile);
		char conf[1200];
		snprintf(conf, sizeof conf,
			 "[global]\nticket_key_file = %s\n[route r1]\nlisten = 127.0.0.1:20001\n"
			 "protocol = smtp\nclient_tls = implicit\ncert = @C@/server.pem\n"
			 "key = @C@/server.key\nupstream = 127.0.0.1:20002\n", keyfile);
		char *path = write_conf(conf);
		struct cfg *c = NULL;
		struct cfg_errors errs = { 0 };
		int rc = cfg_load(path, &c, &errs);
		if (tc->ok) {
			if (rc != 0 || c->tickets.n != tc->nkeys) {
				print_message("[%s] rc %d, %zu keys (want %zu)\n", tc->name, rc,
					      c ? c->tickets.n : 0, tc->nkeys);
				dump_errors(&errs);
				failures++;
			} else {
				/* the first line read is key[0]: it encrypts new tickets */
				char hex[161];
				for (int k = 0; k < 80; k++)
					sprintf(hex + 2 * k, "%02x", c->tickets.key[0][k]);
				const char *first = i == 1 ? k2 : k1;
				if (strcmp(hex, first) != 0) {
					print_message("[%s] key[0] is not the first line\n", tc->name);
					failures++;
				}
				if (i == 1 && memcmp(c->tickets.key[2], c->tickets.key[0], 80) == 0) {
					print_message("[%s] upper-case key misread\n", tc->name);
					failures++;
				}
			}
		} else {
			size_t want = 0;
			for (; tc->bad_lines[want]; want++)
				if (find_error_at(&errs, keyfile, tc->bad_lines[want]) < 0) {
					print_message("[%s] no error at %s:%d\n", tc->name, keyfile,
						      tc->bad_lines[want]);
					failures++;
				}
			if (rc != -EINVAL || errs.n != want) {
				print_message("[%s] rc %d, %zu errors (want -EINVAL, %zu)\n", tc->name,
					      rc, errs.n, want);
				dump_errors(&errs);
				failures++;
			}
			for (size_t k = 0; k < errs.n; k++)
				if (strstr(errs.msg[k], k1) || strstr(errs.msg[k], "aaaaaaaa")) {
					print_message("[%s] an error shows key bytes\n", tc->name);
					failures++;
				}
		}
		cfg_free(c);
		cfg_errors_free(&errs);
		free(path);
	}
	assert_int_equal(failures, 0);
}

/* An expired certificate is an error at the line that names it (route or [global]); a
 * valid one records its expiry and that line. */
static void test_certificate_expiry(void **state)
{
	(void)state;
	static const char route_conf[] =
		"[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nclient_tls = implicit\n"
		"cert = @C@/expired.pem\nkey = @C@/expired.key\nupstream = 127.0.0.1:20002\n";
	static const char global_conf[] =
		"[global]\ncert = @C@/expired.pem\nkey = @C@/expired.key\n"
		"[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nclient_tls = implicit\n"
		"upstream = 127.0.0.1:20002\n";
	static const char upstream_conf[] =
		"[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nupstream = 127.0.0.1:20002\n"
		"upstream_tls = starttls\nupstream_policy = encrypt\nupstream_cert = @C@/expired.pem\n"
		"upstream_key = @C@/expired.key\n";
	static const char good_conf[] =
		"[global]\ncert = @C@/server.pem\nkey = @C@/server.key\n"
		"[route r1]\nlisten = 127.0.0.1:20001\nprotocol = smtp\nclient_tls = implicit\n"
		"upstream = 127.0.0.1:20002\n";
	const struct { const char *conf, *key; } bad[] = {
		{ route_conf, "cert = " }, { global_conf, "cert = " },
		{ upstream_conf, "upstream_cert = " },
	};
	for (size_t i = 0; i < 3; i++) {
		char *path = write_conf(bad[i].conf);
		struct cfg *c = NULL;
		struct cfg_errors errs = { 0 };
		assert_int_equal(cfg_load(path, &c, &errs), -EINVAL);
		int at = line_of(bad[i].conf, bad[i].key);
		int k = find_error_at(&errs, path, at);
		if (k < 0 || !strstr(errs.msg[k], "expired on"))
			dump_errors(&errs);
		assert_true(k >= 0);
		assert_non_null(strstr(errs.msg[k], "expired on"));
		cfg_errors_free(&errs);
		free(path);
	}
	char *path = write_conf(good_conf);
	struct cfg *c = NULL;
	struct cfg_errors errs = { 0 };
	assert_int_equal(cfg_load(path, &c, &errs), 0);
	time_t now = time(NULL);
	/* the test leaf lives 825 days */
	assert_true(c->routes[0].cert_not_after > (int64_t)now + 800 * 86400LL);
	assert_true(c->routes[0].cert_not_after < (int64_t)now + 826 * 86400LL);
	assert_int_equal(c->routes[0].cert_line, line_of(good_conf, "cert = "));
	assert_int_equal(c->routes[0].upstream_cert_not_after, 0);
	cfg_free(c);
	cfg_errors_free(&errs);
	free(path);
}

/* CFG_NO_FILES: syntax and values only; no file access, no name resolution. */
static void test_load_no_files_flag(void **state)
{
	(void)state;
	static const char conf[] =
		"[global]\n"
		"cert = /nonexistent/stp/cert.pem\n"
		"key = /nonexistent/stp/key.pem\n"
		"[route r1]\n"
		"listen = 127.0.0.1:20001\n"
		"protocol = tcp\n"
		"client_tls = implicit\n"
		"upstream = no-such-host.invalid:443\n"
		"upstream_tls = implicit\n"
		"upstream_ca = /nonexistent/stp/ca.pem\n";
	char *path = write_conf(conf);
	struct cfg *c = NULL;
	struct cfg_errors errs = { 0 };
	int rc = cfg_load_flags(path, CFG_NO_FILES, &c, &errs);
	if (rc != 0)
		dump_errors(&errs);
	assert_int_equal(rc, 0);
	assert_non_null(c);
	assert_string_equal(c->routes[0].upstream.host, "no-such-host.invalid");
	assert_string_equal(c->cert, "/nonexistent/stp/cert.pem");
	assert_null(c->routes[0].client_side_tls);
	cfg_free(c);
	cfg_errors_free(&errs);

	/* Without the flag the same file fails for its unreadable files; the upstream host name
	 * is resolved later, by sessions (a DNS outage at start is no error). */
	rc = cfg_load(path, &c, &errs);
	assert_true(rc < 0);
	assert_true(find_error_at(&errs, path, line_of(conf, "cert = /nonexistent")) >= 0);
	assert_true(find_error_at(&errs, path, line_of(conf, "key = /nonexistent")) >= 0);
	assert_true(find_error_at(&errs, path, line_of(conf, "upstream = no-such")) < 0);
	assert_true(find_error_at(&errs, path, line_of(conf, "upstream_ca = /nonexistent")) >= 0);
	cfg_errors_free(&errs);
	free(path);
}

/* A loaded configuration carries its TLS contexts; references keep it alive. */
static void test_load_tls_contexts_and_refs(void **state)
{
	(void)state;
	skip_without_certs();
	struct cfg *c = load_ok(FULL_CONF, NULL);
	const struct cfg_route *r = find_route(c, "smtps");
	assert_non_null(r->client_side_tls);
	assert_non_null(r->upstream_side_tls);
	r = find_route(c, "plain");
	assert_null(r->client_side_tls);
	assert_null(r->upstream_side_tls);
	assert_int_equal(c->refs, 1);
	assert_ptr_equal(cfg_ref(c), c);
	assert_int_equal(c->refs, 2);
	cfg_unref(c);
	assert_int_equal(c->refs, 1);
	assert_string_equal(c->routes[0].name, "full");
	cfg_unref(c); /* frees; ASan would flag a leak or a double free */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_hostport),
		cmocka_unit_test(test_parse_hostport_small_buffer),
		cmocka_unit_test(test_parse_fingerprint),
		cmocka_unit_test(test_parse_tls_version),
		cmocka_unit_test(test_enum_names),
		cmocka_unit_test(test_errors_add),
		cmocka_unit_test(test_load_full),
		cmocka_unit_test(test_load_global_defaults),
		cmocka_unit_test(test_load_workers_auto),
		cmocka_unit_test(test_load_comments_whitespace),
		cmocka_unit_test(test_load_twice),
		cmocka_unit_test(test_load_errors),
		cmocka_unit_test(test_load_bad_values),
		cmocka_unit_test(test_load_line_bound),
		cmocka_unit_test(test_load_multiple_errors),
		cmocka_unit_test(test_load_errors_append),
		cmocka_unit_test(test_load_missing_file),
		cmocka_unit_test(test_load_no_routes),
		cmocka_unit_test(test_load_optional_features),
		cmocka_unit_test(test_load_client_allow),
		cmocka_unit_test(test_ticket_key_file),
		cmocka_unit_test(test_certificate_expiry),
		cmocka_unit_test(test_load_no_files_flag),
		cmocka_unit_test(test_load_tls_contexts_and_refs),
		cmocka_unit_test(test_load_late),
		cmocka_unit_test(test_load_late_table),
	};
	return cmocka_run_group_tests_name("config", tests, group_setup, group_teardown);
}
