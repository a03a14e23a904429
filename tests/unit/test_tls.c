/* test_tls.c - RFC 6125 name matching and TLS sessions over memory.
 *
 * Two tls_conn (or one tls_conn and a raw wolfSSL peer limited to TLS 1.2) exchange
 * ciphertext through the test's hands: tls_conn_out_data()/tls_conn_out_consume() on one
 * side, tls_conn_feed() on the other. No sockets. Certificates come from $STP_TEST_CERTS
 * (scripts/gen-test-certs.sh); stand-alone runs generate them into a temp directory. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "tls.h"
#include "unit_fixture.h"

/* ------------------------------------------------------------------ fixtures */

static int group_setup(void **state)
{
	(void)state;
	if (tls_global_init() != 0)
		return -1;
	return fixture_setup("tls");
}

static int group_teardown(void **state)
{
	(void)state;
	return fixture_teardown();
}

/* Certificate path in a static rotating buffer: valid for the next 31 calls. */
static const char *C(const char *name)
{
	static char bufs[32][600];
	static int i;
	char *b = bufs[i++ % 32];
	snprintf(b, sizeof bufs[0], "%s/%s", certdir, name);
	return b;
}

static void need_certs(void)
{
	if (!have_certs)
		skip();
}

/* SHA-256 of a certificate's SubjectPublicKeyInfo, computed with the openssl CLI. */
static void spki_sha256_openssl(const char *certfile, uint8_t out[32])
{
	char cmd[1400], line[256];
	snprintf(cmd, sizeof cmd,
		 "openssl x509 -in '%s' -pubkey -noout | openssl pkey -pubin -outform DER | "
		 "openssl dgst -sha256 -r",
		 certfile);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	assert_non_null(fgets(line, sizeof line, p));
	assert_int_equal(pclose(p), 0);
	for (int i = 0; i < 32; i++) {
		unsigned v;
		assert_int_equal(sscanf(line + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

/* Compares two SHA-256 values, printing both in hex on a mismatch. */
static void assert_sha256_equal(const uint8_t got[32], const uint8_t want[32])
{
	if (!memcmp(got, want, 32))
		return;
	char g[65], w[65];
	for (int i = 0; i < 32; i++) {
		sprintf(g + 2 * i, "%02x", got[i]);
		sprintf(w + 2 * i, "%02x", want[i]);
	}
	fail_msg("SPKI sha256 %s, expected (openssl) %s", g, w);
}

static struct tls_ctx *server_ctx(const char *cert, const char *key, const char *client_ca,
				  int min_version)
{
	struct tls_server_opts o = { 0 };
	char err[256] = "";
	struct tls_ctx *ctx = NULL;
	o.cert = C(cert);
	o.key = C(key);
	o.client_ca = client_ca ? C(client_ca) : NULL;
	o.min_version = min_version;
	int rc = tls_ctx_server_new(&o, &ctx, err, sizeof err);
	if (rc != 0)
		print_message("tls_ctx_server_new: %d %s\n", rc, err);
	assert_int_equal(rc, 0);
	assert_non_null(ctx);
	return ctx;
}

static struct tls_ctx *client_ctx(const char *ca, const char *cert, const char *key,
				  int min_version)
{
	struct tls_client_opts o = { 0 };
	char err[256] = "";
	struct tls_ctx *ctx = NULL;
	o.ca = ca ? C(ca) : NULL;
	o.cert = cert ? C(cert) : NULL;
	o.key = key ? C(key) : NULL;
	o.min_version = min_version;
	int rc = tls_ctx_client_new(&o, &ctx, err, sizeof err);
	if (rc != 0)
		print_message("tls_ctx_client_new: %d %s\n", rc, err);
	assert_int_equal(rc, 0);
	assert_non_null(ctx);
	return ctx;
}

/* Moves all pending ciphertext from a to b; returns the byte count. */
static size_t move(struct tls_conn *a, struct tls_conn *b)
{
	size_t n = tls_conn_out_len(a);
	if (n) {
		assert_non_null(tls_conn_out_data(a));
		assert_int_equal(tls_conn_feed(b, tls_conn_out_data(a), n), 0);
		tls_conn_out_consume(a, n);
		assert_int_equal(tls_conn_out_len(a), 0);
	}
	return n;
}

/* Moves at most one byte from a to b. */
static size_t move1(struct tls_conn *a, struct tls_conn *b)
{
	if (!tls_conn_out_len(a))
		return 0;
	assert_int_equal(tls_conn_feed(b, tls_conn_out_data(a), 1), 0);
	tls_conn_out_consume(a, 1);
	return 1;
}

static int is_err(int rc)
{
	return rc < 0 && rc != TLS_AGAIN;
}

/* Drives both handshakes, pumping bytes; bytewise feeds one byte per step each way.
 * Returns 0 when both completed, else the first error code (or TLS_AGAIN on a stall). */
static int handshake_pair(struct tls_conn *c, struct tls_conn *s, int bytewise, int *rc_c_out,
			  int *rc_s_out)
{
	int rc_c = TLS_AGAIN, rc_s = TLS_AGAIN;
	for (int i = 0; i < 200000; i++) {
		if (rc_c != 0 && !is_err(rc_c))
			rc_c = tls_conn_handshake(c);
		if (rc_s != 0 && !is_err(rc_s))
			rc_s = tls_conn_handshake(s);
		size_t moved = bytewise ? move1(c, s) + move1(s, c) : move(c, s) + move(s, c);
		if (is_err(rc_c) || is_err(rc_s)) {
			/* Deliver the alert and let the other side see it. */
			move(c, s);
			move(s, c);
			if (!is_err(rc_c) && rc_c != 0)
				rc_c = tls_conn_handshake(c);
			if (!is_err(rc_s) && rc_s != 0)
				rc_s = tls_conn_handshake(s);
			break;
		}
		if (rc_c == 0 && rc_s == 0 && !moved && !tls_conn_out_len(c) &&
		    !tls_conn_out_len(s))
			break;
		if (!moved && !tls_conn_out_len(c) && !tls_conn_out_len(s) &&
		    (rc_c == TLS_AGAIN || rc_s == TLS_AGAIN)) {
			/* Nothing in flight: one more call each, then give up. */
			if (rc_c == TLS_AGAIN)
				rc_c = tls_conn_handshake(c);
			if (rc_s == TLS_AGAIN)
				rc_s = tls_conn_handshake(s);
			if (!tls_conn_out_len(c) && !tls_conn_out_len(s))
				break;
		}
	}
	if (rc_c_out)
		*rc_c_out = rc_c;
	if (rc_s_out)
		*rc_s_out = rc_s;
	if (is_err(rc_c))
		return rc_c;
	if (is_err(rc_s))
		return rc_s;
	if (rc_c == 0 && rc_s == 0)
		return 0;
	return TLS_AGAIN;
}

/* Reads plaintext until TLS_AGAIN (or an error); returns bytes read, *last = final rc. */
static size_t read_avail(struct tls_conn *c, uint8_t *buf, size_t cap, int *last)
{
	size_t got = 0;
	int rc;
	for (;;) {
		uint8_t tmp[16384];
		rc = tls_conn_read(c, tmp, sizeof tmp);
		if (rc <= 0)
			break;
		assert_true((size_t)rc <= sizeof tmp);
		assert_true(got + (size_t)rc <= cap);
		memcpy(buf + got, tmp, (size_t)rc);
		got += (size_t)rc;
	}
	if (last)
		*last = rc;
	return got;
}

struct pair {
	struct tls_ctx *sctx, *cctx;
	struct tls_conn *s, *c;
};

static void pair_new(struct pair *p, struct tls_ctx *sctx, struct tls_ctx *cctx, const char *sni)
{
	p->sctx = sctx;
	p->cctx = cctx;
	p->s = tls_conn_new(sctx, NULL);
	p->c = tls_conn_new(cctx, sni);
	assert_non_null(p->s);
	assert_non_null(p->c);
}

static void pair_free(struct pair *p)
{
	tls_conn_free(p->c);
	tls_conn_free(p->s);
	tls_ctx_free(p->cctx);
	tls_ctx_free(p->sctx);
}

/* Default pair: server.pem for localhost, client trusting ca.pem, handshake done. */
static void pair_default(struct pair *p)
{
	pair_new(p, server_ctx("server.pem", "server.key", NULL, 12),
		 client_ctx("ca.pem", NULL, NULL, 12), "localhost");
	assert_int_equal(handshake_pair(p->c, p->s, 0, NULL, NULL), 0);
}

static void fill_pattern(uint8_t *b, size_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (uint8_t)x;
	}
}

/* ------------------------------------------------------------------ name matching */

struct name_case {
	const char *pattern;
	size_t len; /* 0: strlen(pattern) */
	const char *host;
	int want;
};

static void test_name_match_table(void **state)
{
	(void)state;
	static const struct name_case cases[] = {
		/* exact, case-insensitive */
		{ "example.com", 0, "example.com", 1 },
		{ "mail.example.com", 0, "mail.example.com", 1 },
		{ "Example.COM", 0, "example.com", 1 },
		{ "example.com", 0, "EXAMPLE.com", 1 },
		{ "MX1.Example.Net", 0, "mx1.EXAMPLE.net", 1 },
		{ "localhost", 0, "localhost", 1 },
		{ "example.com", 0, "www.example.com", 0 },
		{ "www.example.com", 0, "example.com", 0 },
		{ "example.com", 0, "example.co", 0 },
		{ "example.co", 0, "example.com", 0 },
		{ "example.com", 0, "example.com.evil", 0 },
		{ "example.com", 0, "xexample.com", 0 },
		{ "a.example.com", 0, "b.example.com", 0 },
		/* trailing dot: an absolute name equals its relative form */
		{ "example.com", 0, "example.com.", 1 },
		{ "example.com.", 0, "example.com", 1 },
		{ "*.example.com", 0, "a.example.com.", 1 },
		{ "example.com", 0, "example.com..", 0 },
		/* wildcard: whole left-most label, exactly one non-empty label */
		{ "*.example.com", 0, "a.example.com", 1 },
		{ "*.example.com", 0, "mail.example.com", 1 },
		{ "*.example.com", 0, "A.EXAMPLE.COM", 1 },
		{ "*.Example.Com", 0, "a.example.com", 1 },
		{ "*.example.com", 0, "example.com", 0 },
		{ "*.example.com", 0, "a.b.example.com", 0 },
		{ "*.example.com", 0, ".example.com", 0 },
		{ "*.example.com", 0, "a.example.org", 0 },
		{ "*.example.com", 0, "aexample.com", 0 },
		{ "*.example.com", 0, "a.example.com.evil", 0 },
		/* no partial-label or non-left-most wildcards */
		{ "f*.example.com", 0, "foo.example.com", 0 },
		{ "*a.example.com", 0, "ba.example.com", 0 },
		{ "a*b.example.com", 0, "axb.example.com", 0 },
		{ "*oo.example.com", 0, "foo.example.com", 0 },
		{ "www.*.com", 0, "www.example.com", 0 },
		{ "a.*.example.com", 0, "a.b.example.com", 0 },
		{ "*.*.example.com", 0, "a.b.example.com", 0 },
		{ "**.example.com", 0, "a.example.com", 0 },
		{ "example.*", 0, "example.com", 0 },
		/* no wildcard over a public-suffix-like two-label pattern, nor a bare one */
		{ "*.com", 0, "example.com", 0 },
		{ "*.localhost", 0, "a.localhost", 0 },
		{ "*", 0, "com", 0 },
		{ "*", 0, "localhost", 0 },
		{ "*.", 0, "a.", 0 },
		/* IDNA A-labels never match a wildcard */
		{ "*.example.com", 0, "xn--caf-dma.example.com", 0 },
		{ "*.example.com", 0, "XN--caf-dma.example.com", 0 },
		{ "xn--caf-dma.example.com", 0, "xn--caf-dma.example.com", 1 },
		{ "xn--*.example.com", 0, "xn--caf-dma.example.com", 0 },
		/* the pattern length is the length argument, not strlen */
		{ "example.com\0.evil.com", 21, "example.com", 0 },
		{ "*.example.com\0", 14, "a.example.com", 0 },
		{ "example.comXYZ", 11, "example.com", 1 },
		{ "*.example.com.evil", 13, "a.example.com", 1 },
		{ "example.com", 7, "example.com", 0 },
		/* empty strings */
		{ "", 0, "", 0 },
		{ "", 0, "example.com", 0 },
		{ "example.com", 0, "", 0 },
		{ "*.example.com", 0, "", 0 },
		{ ".", 0, ".", 0 },
		{ "example.com", 0, ".", 0 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct name_case *c = &cases[i];
		size_t len = c->len ? c->len : strlen(c->pattern);
		int got = tls_name_match(c->pattern, len, c->host);
		if (got != c->want) {
			print_message("tls_name_match(\"%.*s\"%s, %zu, \"%s\") = %d, want %d\n",
				      (int)strlen(c->pattern), c->pattern,
				      len > strlen(c->pattern) ? "\\0..." : "", len, c->host, got,
				      c->want);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_names_and_errors(void **state)
{
	(void)state;
	assert_string_equal(tls_verify_result_name(TLS_VERIFY_NOT_TRUSTED),
			    "certificate-not-trusted");
	assert_string_equal(tls_verify_result_name(TLS_VERIFY_EXPIRED), "certificate-expired");
	assert_string_equal(tls_verify_result_name(TLS_VERIFY_FAILURE), "validation-failure");
	assert_non_null(tls_verify_result_name(TLS_VERIFY_OK));
	static const int codes[] = { TLS_AGAIN, TLS_CLOSED, TLS_E_HANDSHAKE, TLS_E_IO, TLS_E_NOMEM,
				     TLS_E_CONFIG };
	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
		const char *s = tls_strerror(codes[i]);
		assert_non_null(s);
		assert_true(strlen(s) > 0);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(s, tls_strerror(codes[j]));
	}
	assert_non_null(tls_library_version());
	assert_true(strlen(tls_library_version()) > 0);
}

/* ------------------------------------------------------------------ contexts */

static void test_ctx_errors(void **state)
{
	(void)state;
	need_certs();
	struct tls_ctx *ctx = NULL;
	char err[256];

	struct tls_server_opts so = { .cert = C("server.pem"), .key = C("client.key"),
				      .min_version = 12 };
	err[0] = 0;
	assert_int_equal(tls_ctx_server_new(&so, &ctx, err, sizeof err), TLS_E_CONFIG);
	assert_true(strlen(err) > 0);

	so.cert = C("nonexistent.pem");
	so.key = C("server.key");
	err[0] = 0;
	assert_int_equal(tls_ctx_server_new(&so, &ctx, err, sizeof err), TLS_E_CONFIG);
	assert_true(strlen(err) > 0);

	so.cert = C("server.pem");
	so.key = C("nonexistent.key");
	err[0] = 0;
	assert_int_equal(tls_ctx_server_new(&so, &ctx, err, sizeof err), TLS_E_CONFIG);
	assert_true(strlen(err) > 0);

	so.key = C("server.key");
	so.client_ca = C("nonexistent-ca.pem");
	err[0] = 0;
	assert_int_equal(tls_ctx_server_new(&so, &ctx, err, sizeof err), TLS_E_CONFIG);
	assert_true(strlen(err) > 0);

	struct tls_client_opts co = { .ca = C("nonexistent-ca.pem"), .min_version = 12 };
	err[0] = 0;
	assert_int_equal(tls_ctx_client_new(&co, &ctx, err, sizeof err), TLS_E_CONFIG);
	assert_true(strlen(err) > 0);

	co.ca = C("ca.pem");
	co.cert = C("client.pem");
	co.key = C("server.key");
	err[0] = 0;
	assert_int_equal(tls_ctx_client_new(&co, &ctx, err, sizeof err), TLS_E_CONFIG);
	assert_true(strlen(err) > 0);

	/* The good ones build. */
	so.cert = C("server.pem");
	so.key = C("server.key");
	so.client_ca = C("ca.pem");
	assert_int_equal(tls_ctx_server_new(&so, &ctx, err, sizeof err), 0);
	tls_ctx_free(ctx);
	co.ca = C("ca.pem");
	co.cert = C("client.pem");
	co.key = C("client.key");
	assert_int_equal(tls_ctx_client_new(&co, &ctx, err, sizeof err), 0);
	tls_ctx_free(ctx);
	/* A client context without any trust store or identity builds too. */
	struct tls_client_opts bare = { .min_version = 12 };
	assert_int_equal(tls_ctx_client_new(&bare, &ctx, err, sizeof err), 0);
	tls_ctx_free(ctx);
}

/* ------------------------------------------------------------------ handshakes */

static void test_again_paths(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_new(&p, server_ctx("server.pem", "server.key", NULL, 12),
		 client_ctx("ca.pem", NULL, NULL, 12), "localhost");

	/* Server with no input: nothing to do yet, nothing to send. */
	assert_int_equal(tls_conn_handshake(p.s), TLS_AGAIN);
	assert_int_equal(tls_conn_out_len(p.s), 0);
	assert_int_equal(tls_conn_handshake_done(p.s), 0);
	assert_int_equal(tls_conn_in_len(p.s), 0);

	/* Client: ClientHello goes out, then it waits. */
	assert_int_equal(tls_conn_handshake(p.c), TLS_AGAIN);
	assert_true(tls_conn_out_len(p.c) > 5);
	assert_int_equal(tls_conn_out_data(p.c)[0], 0x16); /* handshake record */
	assert_int_equal(tls_conn_out_data(p.c)[1], 0x03);
	assert_int_equal(tls_conn_handshake_done(p.c), 0);
	/* Calling again with no input does not complete it. */
	assert_int_equal(tls_conn_handshake(p.c), TLS_AGAIN);
	assert_int_equal(tls_conn_handshake_done(p.c), 0);

	/* Half a ClientHello: server still waits. */
	size_t n = tls_conn_out_len(p.c);
	assert_int_equal(tls_conn_feed(p.s, tls_conn_out_data(p.c), n / 2), 0);
	tls_conn_out_consume(p.c, n / 2);
	assert_int_equal(tls_conn_handshake(p.s), TLS_AGAIN);
	assert_int_equal(tls_conn_handshake_done(p.s), 0);

	assert_int_equal(handshake_pair(p.c, p.s, 0, NULL, NULL), 0);
	assert_int_equal(tls_conn_handshake_done(p.c), 1);
	assert_int_equal(tls_conn_handshake_done(p.s), 1);
	/* Handshake after completion keeps answering 0. */
	assert_int_equal(tls_conn_handshake(p.c), 0);
	assert_int_equal(tls_conn_handshake(p.s), 0);

	/* Reads with nothing to read. */
	uint8_t buf[64];
	move(p.s, p.c); /* e.g. TLS 1.3 session tickets */
	assert_int_equal(tls_conn_read(p.s, buf, sizeof buf), TLS_AGAIN);
	assert_int_equal(tls_conn_read(p.c, buf, sizeof buf), TLS_AGAIN);
	assert_int_equal(tls_conn_read(p.c, buf, sizeof buf), TLS_AGAIN);

	/* A partial record: still TLS_AGAIN, then the data. */
	assert_int_equal(tls_conn_write(p.c, "ping", 4), 0);
	n = tls_conn_out_len(p.c);
	assert_true(n > 4);
	assert_int_equal(tls_conn_feed(p.s, tls_conn_out_data(p.c), 3), 0);
	tls_conn_out_consume(p.c, 3);
	assert_int_equal(tls_conn_read(p.s, buf, sizeof buf), TLS_AGAIN);
	move(p.c, p.s);
	assert_int_equal(tls_conn_read(p.s, buf, sizeof buf), 4);
	assert_memory_equal(buf, "ping", 4);
	assert_int_equal(tls_conn_read(p.s, buf, sizeof buf), TLS_AGAIN);
	pair_free(&p);
}

static void test_handshake_tls13_and_peer_info(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_default(&p);
	assert_string_equal(tls_conn_version(p.c), "TLSv1.3");
	assert_string_equal(tls_conn_version(p.s), "TLSv1.3");
	assert_non_null(tls_conn_cipher(p.c));
	assert_true(!strncmp(tls_conn_cipher(p.c), "TLS_", 4));
	assert_string_equal(tls_conn_cipher(p.c), tls_conn_cipher(p.s));

	assert_int_equal(tls_conn_verify_result(p.c), TLS_VERIFY_OK);
	assert_int_equal(tls_conn_has_peer_cert(p.c), 1);
	assert_int_equal(tls_conn_peer_name_matches(p.c, "localhost"), 1);
	assert_int_equal(tls_conn_peer_name_matches(p.c, "LOCALHOST"), 1);
	assert_int_equal(tls_conn_peer_name_matches(p.c, "other"), 0);
	assert_int_equal(tls_conn_peer_name_matches(p.c, "localhost.localdomain"), 0);
	assert_int_equal(tls_conn_peer_name_matches(p.c, ""), 0);

	uint8_t got[32], want[32];
	spki_sha256_openssl(C("server.pem"), want);
	assert_int_equal(tls_conn_peer_spki_sha256(p.c, got), 0);
	assert_sha256_equal(got, want);

	/* The server asked for no client certificate. */
	assert_int_equal(tls_conn_has_peer_cert(p.s), 0);
	assert_int_equal(tls_conn_peer_spki_sha256(p.s, got), TLS_E_HANDSHAKE);
	assert_non_null(tls_conn_error_text(p.c));
	pair_free(&p);
}

static void test_handshake_bytewise(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_new(&p, server_ctx("server.pem", "server.key", NULL, 12),
		 client_ctx("ca.pem", NULL, NULL, 12), "localhost");
	assert_int_equal(handshake_pair(p.c, p.s, 1, NULL, NULL), 0);
	assert_string_equal(tls_conn_version(p.c), "TLSv1.3");
	assert_int_equal(tls_conn_verify_result(p.c), TLS_VERIFY_OK);
	pair_free(&p);
}

static void test_sni_ip_literal_and_none(void **state)
{
	(void)state;
	need_certs();
	const char *names[] = { "127.0.0.1", "::1", NULL };
	for (size_t i = 0; i < 3; i++) {
		struct pair p;
		pair_new(&p, server_ctx("server.pem", "server.key", NULL, 12),
			 client_ctx("ca.pem", NULL, NULL, 12), names[i]);
		assert_int_equal(handshake_pair(p.c, p.s, 0, NULL, NULL), 0);
		assert_int_equal(tls_conn_verify_result(p.c), TLS_VERIFY_OK);
		pair_free(&p);
	}
}

/* ------------------------------------------------------------------ data */

static void transfer(struct tls_conn *from, struct tls_conn *to, const uint8_t *data, size_t len,
		     size_t chunk)
{
	uint8_t *got = malloc(len + 1);
	assert_non_null(got);
	size_t have = 0;
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		assert_int_equal(tls_conn_write(from, data + off, n), 0);
		move(from, to);
		int last;
		have += read_avail(to, got + have, len - have, &last);
		assert_int_equal(last, TLS_AGAIN);
		move(to, from);
	}
	assert_int_equal(have, len);
	assert_memory_equal(got, data, len);
	free(got);
}

static void test_data_both_ways(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_default(&p);
	transfer(p.c, p.s, (const uint8_t *)"hello, server", 13, 13);
	transfer(p.s, p.c, (const uint8_t *)"hello, client", 13, 13);
	transfer(p.c, p.s, (const uint8_t *)"x", 1, 1);

	size_t big = 1 << 20;
	uint8_t *data = malloc(big);
	assert_non_null(data);
	fill_pattern(data, big, 1);
	transfer(p.c, p.s, data, big, 16384);   /* record-sized chunks */
	fill_pattern(data, big, 2);
	transfer(p.s, p.c, data, big, 10000);   /* odd chunks */
	fill_pattern(data, big, 3);
	transfer(p.c, p.s, data, big, big);     /* one write of 1 MB */
	fill_pattern(data, big, 4);
	transfer(p.s, p.c, data, big, 1500);
	free(data);
	pair_free(&p);
}

static void test_data_fed_bytewise(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_default(&p);
	size_t len = 20000;
	uint8_t *data = malloc(len), *got = malloc(len);
	assert_non_null(data);
	assert_non_null(got);
	fill_pattern(data, len, 7);
	assert_int_equal(tls_conn_write(p.c, data, len), 0);
	size_t have = 0, agains = 0;
	while (tls_conn_out_len(p.c)) {
		move1(p.c, p.s);
		int last;
		size_t n = read_avail(p.s, got + have, len - have, &last);
		have += n;
		if (!n)
			agains++;
		assert_int_equal(last, TLS_AGAIN);
	}
	assert_int_equal(have, len);
	assert_memory_equal(got, data, len);
	assert_true(agains > len / 2); /* most single bytes complete nothing */

	/* And the other direction, with the reader polled after every byte. */
	fill_pattern(data, len, 8);
	assert_int_equal(tls_conn_write(p.s, data, len), 0);
	have = 0;
	while (tls_conn_out_len(p.s)) {
		move1(p.s, p.c);
		have += read_avail(p.c, got + have, len - have, NULL);
	}
	assert_int_equal(have, len);
	assert_memory_equal(got, data, len);
	free(data);
	free(got);
	pair_free(&p);
}

/* tls_conn_lend: ciphertext read in place from a buffer that is overwritten after every
 * tls_conn_unlend (as the endpoint's shared read buffer is): cuts that end inside records,
 * octets fed earlier still unread when more is lent (they come first), a lend nothing reads
 * (all of it kept), the handshake itself through lent buffers; in_len counts lent octets. */
static void lend_all(struct tls_conn *from, struct tls_conn *to, size_t cut, uint8_t *scratch,
		     uint8_t *got, size_t *have, size_t cap)
{
	while (tls_conn_out_len(from)) {
		size_t n = tls_conn_out_len(from) < cut ? tls_conn_out_len(from) : cut;
		memcpy(scratch, tls_conn_out_data(from), n);
		tls_conn_out_consume(from, n);
		assert_int_equal(tls_conn_lend(to, scratch, n), 0);
		if (got) {
			int last;
			*have += read_avail(to, got + *have, cap - *have, &last);
			assert_int_equal(last, TLS_AGAIN);
		} else {
			int rc = tls_conn_handshake(to);
			assert_true(rc == 0 || rc == TLS_AGAIN);
		}
		assert_int_equal(tls_conn_unlend(to), 0);
		memset(scratch, 0xAA, n); /* the buffer is reused: what was not read was copied */
	}
}

static void test_data_lent(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_new(&p, server_ctx("server.pem", "server.key", NULL, 12),
		 client_ctx("ca.pem", NULL, NULL, 12), "localhost");
	uint8_t *scratch = malloc(1 << 18);
	assert_non_null(scratch);
	/* the handshake, every flight lent in cuts of 100 octets */
	for (int i = 0; i < 10 && !(tls_conn_handshake_done(p.c) && tls_conn_handshake_done(p.s));
	     i++) {
		int rc = tls_conn_handshake(p.c);
		assert_true(rc == 0 || rc == TLS_AGAIN);
		lend_all(p.c, p.s, 100, scratch, NULL, NULL, 0);
		lend_all(p.s, p.c, 100, scratch, NULL, NULL, 0);
	}
	assert_int_equal(tls_conn_handshake_done(p.c), 1);
	assert_int_equal(tls_conn_handshake_done(p.s), 1);

	size_t len = 200000, have = 0;
	uint8_t *data = malloc(len), *got = malloc(len);
	assert_non_null(data);
	assert_non_null(got);
	fill_pattern(data, len, 11);
	assert_int_equal(tls_conn_write(p.c, data, len), 0);
	lend_all(p.c, p.s, 7001, scratch, got, &have, len); /* cuts inside records */
	assert_int_equal(have, len);
	assert_memory_equal(got, data, len);

	/* 10 octets fed, then a lend: the fed ones first, the lent ones copied behind them
	 * (the client reads first what it has: the server's session tickets) */
	int last;
	assert_int_equal(read_avail(p.c, got, len, &last), 0);
	assert_int_equal(tls_conn_in_len(p.c), 0);
	fill_pattern(data, 5000, 12);
	assert_int_equal(tls_conn_write(p.s, data, 5000), 0);
	size_t n = tls_conn_out_len(p.s);
	assert_int_equal(tls_conn_feed(p.c, tls_conn_out_data(p.s), 10), 0);
	memcpy(scratch, tls_conn_out_data(p.s) + 10, n - 10);
	tls_conn_out_consume(p.s, n);
	assert_int_equal(tls_conn_lend(p.c, scratch, n - 10), 0);
	assert_int_equal(tls_conn_in_len(p.c), n);
	have = read_avail(p.c, got, len, &last);
	assert_int_equal(tls_conn_unlend(p.c), 0);
	memset(scratch, 0xAA, n);
	assert_int_equal(have, 5000);
	assert_memory_equal(got, data, 5000);
	assert_int_equal(tls_conn_in_len(p.c), 0);

	/* lent and not read at all: every octet kept */
	fill_pattern(data, 3000, 13);
	assert_int_equal(tls_conn_write(p.s, data, 3000), 0);
	n = tls_conn_out_len(p.s);
	memcpy(scratch, tls_conn_out_data(p.s), n);
	tls_conn_out_consume(p.s, n);
	assert_int_equal(tls_conn_lend(p.c, scratch, n), 0);
	assert_int_equal(tls_conn_in_len(p.c), n);
	assert_int_equal(tls_conn_unlend(p.c), 0);
	assert_int_equal(tls_conn_unlend(p.c), 0); /* nothing lent: nothing to do */
	memset(scratch, 0xAA, n);
	assert_int_equal(tls_conn_in_len(p.c), n);
	have = read_avail(p.c, got, len, &last);
	assert_int_equal(have, 3000);
	assert_memory_equal(got, data, 3000);
	free(data);
	free(got);
	free(scratch);
	pair_free(&p);
}

static void test_close_notify(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_default(&p);
	move(p.s, p.c);
	uint8_t buf[64];
	assert_int_equal(tls_conn_read(p.c, buf, sizeof buf), TLS_AGAIN);

	/* Data before the close_notify arrives first, then TLS_CLOSED. */
	assert_int_equal(tls_conn_write(p.c, "bye", 3), 0);
	assert_int_equal(tls_conn_close_notify(p.c), 0);
	assert_true(tls_conn_out_len(p.c) > 0);
	move(p.c, p.s);
	assert_int_equal(tls_conn_read(p.s, buf, sizeof buf), 3);
	assert_memory_equal(buf, "bye", 3);
	assert_int_equal(tls_conn_read(p.s, buf, sizeof buf), TLS_CLOSED);

	/* The other direction, close_notify alone. */
	assert_int_equal(tls_conn_close_notify(p.s), 0);
	move(p.s, p.c);
	assert_int_equal(tls_conn_read(p.c, buf, sizeof buf), TLS_CLOSED);
	pair_free(&p);
}

static void test_tampered_record(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_default(&p);
	move(p.s, p.c);
	uint8_t buf[256];
	assert_int_equal(tls_conn_read(p.c, buf, sizeof buf), TLS_AGAIN);
	assert_int_equal(tls_conn_write(p.c, "secret data", 11), 0);
	size_t n = tls_conn_out_len(p.c);
	assert_true(n < sizeof buf);
	memcpy(buf, tls_conn_out_data(p.c), n);
	tls_conn_out_consume(p.c, n);
	buf[n - 1] ^= 0x01; /* the AEAD tag */
	assert_int_equal(tls_conn_feed(p.s, buf, n), 0);
	uint8_t out[64];
	assert_int_equal(tls_conn_read(p.s, out, sizeof out), TLS_E_IO);
	pair_free(&p);
}

static void test_garbage_handshake(void **state)
{
	(void)state;
	need_certs();
	struct tls_ctx *sctx = server_ctx("server.pem", "server.key", NULL, 12);
	struct tls_conn *s = tls_conn_new(sctx, NULL);
	assert_non_null(s);
	static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
	assert_int_equal(tls_conn_feed(s, http, sizeof http - 1), 0);
	assert_int_equal(tls_conn_handshake(s), TLS_E_HANDSHAKE);
	assert_non_null(tls_conn_error_text(s));
	tls_conn_free(s);

	/* A client receiving garbage instead of a ServerHello fails too. */
	struct tls_ctx *cctx = client_ctx("ca.pem", NULL, NULL, 12);
	struct tls_conn *c = tls_conn_new(cctx, "localhost");
	assert_non_null(c);
	assert_int_equal(tls_conn_handshake(c), TLS_AGAIN);
	static const char smtp[] = "220 mail.example.com ESMTP ready\r\n";
	assert_int_equal(tls_conn_feed(c, smtp, sizeof smtp - 1), 0);
	assert_int_equal(tls_conn_handshake(c), TLS_E_HANDSHAKE);
	tls_conn_free(c);
	tls_ctx_free(cctx);
	tls_ctx_free(sctx);
}

/* ------------------------------------------------------------------ verification */

struct verify_case {
	const char *cert, *key;
	enum tls_verify want;
	const char *name_yes, *name_no;
};

static void test_verify_results(void **state)
{
	(void)state;
	need_certs();
	static const struct verify_case cases[] = {
		{ "server.pem", "server.key", TLS_VERIFY_OK, "localhost", "wrong.example" },
		{ "selfsigned.pem", "selfsigned.key", TLS_VERIFY_NOT_TRUSTED, "localhost", "other" },
		{ "expired.pem", "expired.key", TLS_VERIFY_EXPIRED, "localhost", "other" },
		{ "otherca-server.pem", "otherca-server.key", TLS_VERIFY_NOT_TRUSTED, "localhost",
		  "other" },
		{ "wrongname.pem", "wrongname.key", TLS_VERIFY_OK, "wrong.example", "localhost" },
		{ "wildcard.pem", "wildcard.key", TLS_VERIFY_OK, "mx.example.test", "example.test" },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct verify_case *v = &cases[i];
		struct pair p;
		pair_new(&p, server_ctx(v->cert, v->key, NULL, 12),
			 client_ctx("ca.pem", NULL, NULL, 12), "localhost");
		/* Verification never aborts the handshake by itself. */
		int rc = handshake_pair(p.c, p.s, 0, NULL, NULL);
		if (rc != 0) {
			print_message("%s: handshake %d (%s), want 0\n", v->cert, rc,
				      tls_conn_error_text(p.c));
			failures++;
			pair_free(&p);
			continue;
		}
		enum tls_verify got = tls_conn_verify_result(p.c);
		if (got != v->want) {
			print_message("%s: verify %d (%s), want %d (%s)\n", v->cert, got,
				      tls_verify_result_name(got), v->want,
				      tls_verify_result_name(v->want));
			failures++;
		}
		if (tls_conn_peer_name_matches(p.c, v->name_yes) != 1) {
			print_message("%s: name %s should match\n", v->cert, v->name_yes);
			failures++;
		}
		if (tls_conn_peer_name_matches(p.c, v->name_no) != 0) {
			print_message("%s: name %s should not match\n", v->cert, v->name_no);
			failures++;
		}
		uint8_t got_fp[32], want_fp[32];
		spki_sha256_openssl(C(v->cert), want_fp);
		if (tls_conn_peer_spki_sha256(p.c, got_fp) != 0 || memcmp(got_fp, want_fp, 32)) {
			print_message("%s: SPKI sha256 differs from openssl's\n", v->cert);
			failures++;
		}
		/* The session still carries data. */
		transfer(p.c, p.s, (const uint8_t *)"data", 4, 4);
		pair_free(&p);
	}
	assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ DANE */

/* The hex output of an openssl pipeline over a certificate file, as bytes. */
static size_t openssl_bytes(const char *pipeline, const char *certfile, uint8_t *out, size_t cap)
{
	char cmd[2000], hex[8200];
	snprintf(cmd, sizeof cmd, pipeline, certfile);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(hex, 1, sizeof hex - 1, p);
	assert_int_equal(pclose(p), 0);
	hex[n] = '\0';
	size_t k = 0;
	for (size_t i = 0; i + 1 < n && isxdigit((unsigned char)hex[i]) && k < cap; i += 2) {
		unsigned v;
		assert_int_equal(sscanf(hex + i, "%2x", &v), 1);
		out[k++] = (uint8_t)v;
	}
	return k;
}

#define SPKI_DER "openssl x509 -in '%s' -pubkey -noout | openssl pkey -pubin -outform DER"
#define CERT_DER "openssl x509 -in '%s' -outform DER"
#define DGST256 " | openssl dgst -sha256 -r"
#define DGST512 " | openssl dgst -sha512 -r"
#define HEX " | od -An -v -tx1 | tr -d ' \\n'"

struct dane_case {
	const char *name;
	const char *server;   /* certificate file (the key is NAME.key) */
	int with_ca;          /* the server presents its CA too: which one (1 ca, 2 other-ca) */
	struct { int usage, selector, mtype; const char *of; int cut; } rec[3];
	const char *names[2];
	const char *want;     /* NULL: matches */
	int no_want_dane;     /* the chain was not kept */
};

static void test_dane_check(void **state)
{
	(void)state;
	need_certs();
	static const struct dane_case cases[] = {
		{ "EE spki sha256", "server", 0, { { 3, 1, 1, "server.pem", 0 } }, { "x.invalid" }, NULL, 0 },
		{ "EE spki sha512", "server", 0, { { 3, 1, 2, "server.pem", 0 } }, { NULL }, NULL, 0 },
		{ "EE cert sha256", "server", 0, { { 3, 0, 1, "server.pem", 0 } }, { NULL }, NULL, 0 },
		{ "EE cert exact", "server", 0, { { 3, 0, 0, "server.pem", 0 } }, { NULL }, NULL, 0 },
		{ "EE spki exact", "server", 0, { { 3, 1, 0, "server.pem", 0 } }, { NULL }, NULL, 0 },
		{ "EE self-signed, any name", "selfsigned", 0, { { 3, 1, 1, "selfsigned.pem", 0 } },
		  { "mx.example" }, NULL, 0 },
		{ "EE expired: dates not checked", "expired", 0, { { 3, 1, 1, "expired.pem", 0 } },
		  { NULL }, NULL, 0 },
		{ "EE another key", "server", 0, { { 3, 1, 1, "selfsigned.pem", 0 } }, { NULL, 0 },
		  "validation-failure", 0 },
		{ "EE full cert of another", "server", 0, { { 3, 0, 1, "wrongname.pem", 0 } }, { NULL, 0 },
		  "validation-failure", 0 },
		{ "TA ca cert", "server", 1, { { 2, 0, 1, "ca.pem", 0 } }, { "localhost" }, NULL, 0 },
		{ "TA ca spki", "server", 1, { { 2, 1, 1, "ca.pem", 0 } }, { "localhost" }, NULL, 0 },
		{ "TA wrong name", "server", 1, { { 2, 0, 1, "ca.pem", 0 } }, { "mx.example" },
		  "certificate-host-mismatch", 0 },
		{ "TA not presented", "server", 0, { { 2, 0, 1, "ca.pem", 0 } }, { "localhost", 0 },
		  "validation-failure", 0 },
		{ "TA of another chain", "otherca-server", 2, { { 2, 0, 1, "ca.pem", 0 } },
		  { "localhost" }, "validation-failure", 0 },
		{ "TA presented, did not sign", "otherca-server", 1, { { 2, 0, 1, "ca.pem", 0 } },
		  { "localhost" }, "validation-failure", 0 },
		{ "TA other chain's own CA", "otherca-server", 2, { { 2, 0, 1, "other-ca.pem", 0 } },
		  { "localhost" }, NULL, 0 },
		{ "TA record for the leaf", "server", 1, { { 2, 0, 1, "server.pem", 0 } },
		  { "localhost" }, "validation-failure", 0 },
		{ "PKIX-EE unusable", "server", 0, { { 1, 1, 1, "server.pem", 0 } }, { NULL, 0 },
		  "tlsa-invalid", 0 },
		{ "PKIX-TA unusable", "server", 1, { { 0, 0, 1, "ca.pem", 0 } }, { "localhost", 0 },
		  "tlsa-invalid", 0 },
		{ "sha256 of 31 octets", "server", 0, { { 3, 1, 1, "server.pem", 1 } }, { NULL, 0 },
		  "tlsa-invalid", 0 },
		{ "selector 2", "server", 0, { { 3, 2, 1, "server.pem", 0 } }, { NULL }, "tlsa-invalid", 0 },
		{ "unusable, mismatch, match", "server", 0,
		  { { 1, 1, 1, "server.pem", 0 }, { 3, 1, 1, "wrongname.pem", 0 },
		    { 3, 1, 1, "server.pem", 0 } },
		  { NULL }, NULL, 0 },
		{ "chain not kept", "server", 0, { { 3, 1, 1, "server.pem", 0 } }, { NULL, 0 },
		  "validation-failure", 1 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct dane_case *d = &cases[i];
		char cert[64], chain[700];
		snprintf(cert, sizeof cert, "%s.pem", d->server);
		if (d->with_ca) { /* a chain file: the leaf, then its CA */
			snprintf(chain, sizeof chain, "%s/dane-chain-%zu.pem", tmpdir, i);
			char cmd[2400];
			snprintf(cmd, sizeof cmd, "cat '%s' '%s' >'%s'", C(cert),
				 C(d->with_ca == 1 ? "ca.pem" : "other-ca.pem"), chain);
			assert_int_equal(system(cmd), 0);
		}
		char key[64];
		snprintf(key, sizeof key, "%s.key", d->server);
		struct tls_server_opts so = { .cert = d->with_ca ? chain : C(cert),
					      .key = C(key), .min_version = 12 };
		struct tls_ctx *sctx = NULL;
		char err[256];
		assert_int_equal(tls_ctx_server_new(&so, &sctx, err, sizeof err), 0);
		struct pair p;
		pair_new(&p, sctx, client_ctx("ca.pem", NULL, NULL, 12), "localhost");
		if (!d->no_want_dane)
			tls_conn_want_dane(p.c);
		assert_int_equal(handshake_pair(p.c, p.s, 0, NULL, NULL), 0);
		static uint8_t data[3][4096];
		struct tls_tlsa t[3];
		size_t n = 0;
		for (; n < 3 && d->rec[n].of; n++) {
			const char *pipe = d->rec[n].selector == 0 ? CERT_DER : SPKI_DER;
			char pl[600];
			snprintf(pl, sizeof pl, "%s%s", pipe,
				 d->rec[n].mtype == 1 ? DGST256 : d->rec[n].mtype == 2 ? DGST512 : HEX);
			size_t len = openssl_bytes(pl, C(d->rec[n].of), data[n], sizeof data[n]);
			assert_true(len > 0);
			struct tls_tlsa x = { (uint8_t)d->rec[n].usage, (uint8_t)d->rec[n].selector,
					      (uint8_t)d->rec[n].mtype, len - (size_t)d->rec[n].cut,
					      data[n] };
			t[n] = x;
		}
		size_t nn = d->names[0] ? 1 : 0;
		char detail[300];
		const char *got = tls_conn_dane_check(p.c, t, n, d->names, nn, detail, sizeof detail);
		if ((got == NULL) != (d->want == NULL) || (got && strcmp(got, d->want))) {
			print_message("[%s] got %s (%s), want %s\n", d->name, got ? got : "match",
				      detail, d->want ? d->want : "match");
			failures++;
		}
		pair_free(&p);
	}
	assert_int_equal(failures, 0);
}

static void test_verify_without_trust_store(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_new(&p, server_ctx("server.pem", "server.key", NULL, 12),
		 client_ctx(NULL, NULL, NULL, 12), "localhost");
	/* No trust store (encrypt/fingerprint policies): the handshake completes; what
	 * tls_conn_verify_result says then is not part of the contract. */
	assert_int_equal(handshake_pair(p.c, p.s, 0, NULL, NULL), 0);
	assert_int_equal(tls_conn_has_peer_cert(p.c), 1);
	/* Pinning works without a trust store. */
	uint8_t got[32], want[32];
	spki_sha256_openssl(C("server.pem"), want);
	assert_int_equal(tls_conn_peer_spki_sha256(p.c, got), 0);
	assert_sha256_equal(got, want);
	pair_free(&p);
}

/* ------------------------------------------------------------------ client certificates */

static void test_client_cert_required_missing(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_new(&p, server_ctx("server.pem", "server.key", "ca.pem", 12),
		 client_ctx("ca.pem", NULL, NULL, 12), "localhost");
	int rc_c, rc_s;
	int rc = handshake_pair(p.c, p.s, 0, &rc_c, &rc_s);
	assert_int_not_equal(rc, 0);
	assert_int_equal(rc_s, TLS_E_HANDSHAKE);
	assert_int_equal(tls_conn_handshake_done(p.s), 0);
	/* The client learns it from the alert: either the handshake or the first read fails. */
	if (rc_c == 0) {
		uint8_t buf[64];
		int r = tls_conn_read(p.c, buf, sizeof buf);
		assert_true(r < 0 && r != TLS_AGAIN);
	} else {
		assert_int_equal(rc_c, TLS_E_HANDSHAKE);
	}
	pair_free(&p);
}

/* A finished handshake where the server requires, and the client presents, a certificate. */
static void pair_client_cert(struct pair *p)
{
	pair_new(p, server_ctx("server.pem", "server.key", "ca.pem", 12),
		 client_ctx("ca.pem", "client.pem", "client.key", 12), "localhost");
	assert_int_equal(handshake_pair(p->c, p->s, 0, NULL, NULL), 0);
}

static void test_client_cert_required_present(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_client_cert(&p);
	assert_int_equal(tls_conn_has_peer_cert(p.s), 1);
	assert_int_equal(tls_conn_verify_result(p.s), TLS_VERIFY_OK);
	uint8_t got[32], want[32];
	spki_sha256_openssl(C("client.pem"), want);
	assert_int_equal(tls_conn_peer_spki_sha256(p.s, got), 0);
	assert_sha256_equal(got, want);
	/* No SAN: the CN is the name. */
	assert_int_equal(tls_conn_peer_name_matches(p.s, "test-client"), 1);
	assert_int_equal(tls_conn_peer_name_matches(p.s, "localhost"), 0);
	transfer(p.s, p.c, (const uint8_t *)"welcome", 7, 7);
	transfer(p.c, p.s, (const uint8_t *)"thanks", 6, 6);
	pair_free(&p);
}

/* After the checks the proxy drops the peer certificate (its memory goes back): the
 * connection goes on relaying, every accessor then sees no certificate, a policy check made
 * afterwards fails closed, and a second drop (or one where none was held) is harmless. */
static void test_peer_cert_dropped(void **state)
{
	(void)state;
	need_certs();
	struct pair p;
	pair_client_cert(&p);
	assert_int_equal(tls_conn_has_peer_cert(p.c), 1);
	assert_int_equal(tls_conn_has_peer_cert(p.s), 1);
	tls_conn_drop_peer_cert(p.c);
	tls_conn_drop_peer_cert(p.s);
	tls_conn_drop_peer_cert(p.s);
	assert_int_equal(tls_conn_has_peer_cert(p.c), 0);
	assert_int_equal(tls_conn_has_peer_cert(p.s), 0);
	uint8_t got[32];
	assert_int_equal(tls_conn_peer_spki_sha256(p.c, got), TLS_E_HANDSHAKE);
	assert_int_equal(tls_conn_peer_name_matches(p.c, "localhost"), 0);
	char subject[256], issuer[256], detail[200];
	tls_conn_peer_names(p.c, subject, sizeof(subject), issuer, sizeof(issuer));
	assert_string_equal(subject, "");
	const char *host = "localhost";
	assert_string_equal(tls_conn_check(p.c, TLS_CHECK_VERIFY, &host, 1, NULL, 0, detail,
					   sizeof(detail)),
			    "validation-failure");
	transfer(p.s, p.c, (const uint8_t *)"welcome", 7, 7);
	transfer(p.c, p.s, (const uint8_t *)"thanks", 6, 6);
	pair_free(&p);

	pair_default(&p); /* the server asked for no client certificate: none was held */
	tls_conn_drop_peer_cert(p.s);
	transfer(p.c, p.s, (const uint8_t *)"hello", 5, 5);
	pair_free(&p);
}

/* ------------------------------------------------------------------ versions */

static void test_min_versions(void **state)
{
	(void)state;
	need_certs();
	static const int mins[][2] = { { 13, 12 }, { 12, 13 }, { 13, 13 }, { 10, 10 } };
	for (size_t i = 0; i < sizeof mins / sizeof mins[0]; i++) {
		struct pair p;
		pair_new(&p, server_ctx("server.pem", "server.key", NULL, mins[i][0]),
			 client_ctx("ca.pem", NULL, NULL, mins[i][1]), "localhost");
		assert_int_equal(handshake_pair(p.c, p.s, 0, NULL, NULL), 0);
		assert_string_equal(tls_conn_version(p.c), "TLSv1.3");
		pair_free(&p);
	}
}

/* A raw wolfSSL peer limited to TLS 1.2, over the same kind of memory buffers. */
struct raw_peer {
	WOLFSSL_CTX *ctx;
	WOLFSSL *ssl;
	uint8_t *in, *out;
	size_t in_len, in_off, out_len, in_cap, out_cap;
};

static int raw_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	(void)ssl;
	struct raw_peer *r = arg;
	size_t avail = r->in_len - r->in_off;
	if (!avail)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	size_t n = avail < (size_t)sz ? avail : (size_t)sz;
	memcpy(buf, r->in + r->in_off, n);
	r->in_off += n;
	return (int)n;
}

static int raw_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	(void)ssl;
	struct raw_peer *r = arg;
	if (r->out_len + (size_t)sz > r->out_cap) {
		r->out_cap = (r->out_len + (size_t)sz) * 2;
		r->out = realloc(r->out, r->out_cap);
		if (!r->out)
			return WOLFSSL_CBIO_ERR_GENERAL;
	}
	memcpy(r->out + r->out_len, buf, (size_t)sz);
	r->out_len += (size_t)sz;
	return sz;
}

static void raw_new(struct raw_peer *r, int server)
{
	memset(r, 0, sizeof *r);
	r->ctx = wolfSSL_CTX_new(server ? wolfTLSv1_2_server_method() : wolfTLSv1_2_client_method());
	assert_non_null(r->ctx);
	if (server) {
		assert_int_equal(wolfSSL_CTX_use_certificate_chain_file(r->ctx, C("server.pem")),
				 WOLFSSL_SUCCESS);
		assert_int_equal(wolfSSL_CTX_use_PrivateKey_file(r->ctx, C("server.key"),
								 WOLFSSL_FILETYPE_PEM),
				 WOLFSSL_SUCCESS);
	}
	wolfSSL_CTX_set_verify(r->ctx, WOLFSSL_VERIFY_NONE, NULL);
	wolfSSL_CTX_SetIORecv(r->ctx, raw_recv);
	wolfSSL_CTX_SetIOSend(r->ctx, raw_send);
	r->ssl = wolfSSL_new(r->ctx);
	assert_non_null(r->ssl);
	wolfSSL_SetIOReadCtx(r->ssl, r);
	wolfSSL_SetIOWriteCtx(r->ssl, r);
}

static void raw_free(struct raw_peer *r)
{
	wolfSSL_free(r->ssl);
	wolfSSL_CTX_free(r->ctx);
	free(r->in);
	free(r->out);
}

static void raw_feed(struct raw_peer *r, const uint8_t *d, size_t n)
{
	if (r->in_off == r->in_len)
		r->in_off = r->in_len = 0;
	if (r->in_len + n > r->in_cap) {
		r->in_cap = (r->in_len + n) * 2;
		r->in = realloc(r->in, r->in_cap);
		assert_non_null(r->in);
	}
	memcpy(r->in + r->in_len, d, n);
	r->in_len += n;
}

/* Moves bytes both ways between a tls_conn and a raw peer. */
static size_t raw_pump(struct tls_conn *c, struct raw_peer *r)
{
	size_t moved = 0, n = tls_conn_out_len(c);
	if (n) {
		raw_feed(r, tls_conn_out_data(c), n);
		tls_conn_out_consume(c, n);
		moved += n;
	}
	if (r->out_len) {
		assert_int_equal(tls_conn_feed(c, r->out, r->out_len), 0);
		moved += r->out_len;
		r->out_len = 0;
	}
	return moved;
}

/* 1: raw done, 0: in progress, -1: failed. */
static int raw_step(struct raw_peer *r, int server)
{
	int ret = server ? wolfSSL_accept(r->ssl) : wolfSSL_connect(r->ssl);
	if (ret == WOLFSSL_SUCCESS)
		return 1;
	int e = wolfSSL_get_error(r->ssl, ret);
	return e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE ? 0 : -1;
}

/* Returns tls_conn's final handshake code; *raw_state the raw peer's. */
static int raw_handshake(struct tls_conn *c, struct raw_peer *r, int raw_is_server,
			 int *raw_state)
{
	int rc = TLS_AGAIN, rs = 0;
	for (int i = 0; i < 100; i++) {
		if (rc == TLS_AGAIN)
			rc = tls_conn_handshake(c);
		if (rs == 0)
			rs = raw_step(r, raw_is_server);
		size_t moved = raw_pump(c, r);
		if ((rc == 0 || is_err(rc)) && rs != 0 && !moved)
			break;
		if (!moved && rc == TLS_AGAIN && rs == 0)
			break;
	}
	*raw_state = rs;
	return rc;
}

static void test_tls12_server_with_legacy_client(void **state)
{
	(void)state;
	need_certs();
	struct tls_ctx *sctx = server_ctx("server.pem", "server.key", NULL, 12);
	struct tls_conn *s = tls_conn_new(sctx, NULL);
	struct raw_peer r;
	raw_new(&r, 0);
	int rs;
	assert_int_equal(raw_handshake(s, &r, 0, &rs), 0);
	assert_int_equal(rs, 1);
	assert_string_equal(tls_conn_version(s), "TLSv1.2");
	assert_non_null(tls_conn_cipher(s));

	/* Data both ways over TLS 1.2. */
	uint8_t buf[64];
	assert_int_equal(wolfSSL_write(r.ssl, "legacy hello", 12), 12);
	raw_pump(s, &r);
	int last;
	assert_int_equal(read_avail(s, buf, sizeof buf, &last), 12);
	assert_memory_equal(buf, "legacy hello", 12);
	assert_int_equal(tls_conn_write(s, "modern reply", 12), 0);
	raw_pump(s, &r);
	assert_int_equal(wolfSSL_read(r.ssl, buf, sizeof buf), 12);
	assert_memory_equal(buf, "modern reply", 12);

	/* close_notify from the legacy side. */
	wolfSSL_shutdown(r.ssl);
	raw_pump(s, &r);
	assert_int_equal(tls_conn_read(s, buf, sizeof buf), TLS_CLOSED);

	raw_free(&r);
	tls_conn_free(s);
	tls_ctx_free(sctx);
}

static void test_tls13_server_refuses_tls12_client(void **state)
{
	(void)state;
	need_certs();
	struct tls_ctx *sctx = server_ctx("server.pem", "server.key", NULL, 13);
	struct tls_conn *s = tls_conn_new(sctx, NULL);
	struct raw_peer r;
	raw_new(&r, 0);
	int rs;
	assert_int_equal(raw_handshake(s, &r, 0, &rs), TLS_E_HANDSHAKE);
	assert_int_not_equal(rs, 1);
	raw_free(&r);
	tls_conn_free(s);
	tls_ctx_free(sctx);
}

static void test_tls12_client_with_legacy_server(void **state)
{
	(void)state;
	need_certs();
	struct tls_ctx *cctx = client_ctx("ca.pem", NULL, NULL, 12);
	struct tls_conn *c = tls_conn_new(cctx, "localhost");
	struct raw_peer r;
	raw_new(&r, 1);
	int rs;
	assert_int_equal(raw_handshake(c, &r, 1, &rs), 0);
	assert_int_equal(rs, 1);
	assert_string_equal(tls_conn_version(c), "TLSv1.2");
	assert_int_equal(tls_conn_verify_result(c), TLS_VERIFY_OK);
	assert_int_equal(tls_conn_peer_name_matches(c, "localhost"), 1);
	uint8_t got[32], want[32];
	spki_sha256_openssl(C("server.pem"), want);
	assert_int_equal(tls_conn_peer_spki_sha256(c, got), 0);
	assert_sha256_equal(got, want);
	raw_free(&r);
	tls_conn_free(c);
	tls_ctx_free(cctx);
}

static void test_tls13_client_refuses_tls12_server(void **state)
{
	(void)state;
	need_certs();
	struct tls_ctx *cctx = client_ctx("ca.pem", NULL, NULL, 13);
	struct tls_conn *c = tls_conn_new(cctx, "localhost");
	struct raw_peer r;
	raw_new(&r, 1);
	int rs;
	assert_int_equal(raw_handshake(c, &r, 1, &rs), TLS_E_HANDSHAKE);
	assert_int_not_equal(rs, 1);
	raw_free(&r);
	tls_conn_free(c);
	tls_ctx_free(cctx);
}

/* Many connections on one context, interleaved, each with its own data. */
static void test_many_connections_one_ctx(void **state)
{
	(void)state;
	need_certs();
	struct tls_ctx *sctx = server_ctx("server.pem", "server.key", NULL, 12);
	struct tls_ctx *cctx = client_ctx("ca.pem", NULL, NULL, 12);
	enum { N = 8 };
	struct tls_conn *s[N], *c[N];
	for (int i = 0; i < N; i++) {
		s[i] = tls_conn_new(sctx, NULL);
		c[i] = tls_conn_new(cctx, "localhost");
		assert_non_null(s[i]);
		assert_non_null(c[i]);
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(handshake_pair(c[i], s[i], 0, NULL, NULL), 0);
	for (int i = 0; i < N; i++) {
		char msg[32];
		int n = snprintf(msg, sizeof msg, "conn %d", i);
		transfer(c[i], s[i], (const uint8_t *)msg, (size_t)n, (size_t)n);
	}
	for (int i = 0; i < N; i++) {
		tls_conn_free(s[i]);
		tls_conn_free(c[i]);
	}
	tls_ctx_free(cctx);
	tls_ctx_free(sctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_match_table),
		cmocka_unit_test(test_names_and_errors),
		cmocka_unit_test(test_ctx_errors),
		cmocka_unit_test(test_again_paths),
		cmocka_unit_test(test_handshake_tls13_and_peer_info),
		cmocka_unit_test(test_handshake_bytewise),
		cmocka_unit_test(test_sni_ip_literal_and_none),
		cmocka_unit_test(test_data_both_ways),
		cmocka_unit_test(test_data_fed_bytewise),
		cmocka_unit_test(test_data_lent),
		cmocka_unit_test(test_close_notify),
		cmocka_unit_test(test_tampered_record),
		cmocka_unit_test(test_garbage_handshake),
		cmocka_unit_test(test_verify_results),
		cmocka_unit_test(test_verify_without_trust_store),
		cmocka_unit_test(test_client_cert_required_missing),
		cmocka_unit_test(test_client_cert_required_present),
		cmocka_unit_test(test_peer_cert_dropped),
		cmocka_unit_test(test_min_versions),
		cmocka_unit_test(test_tls12_server_with_legacy_client),
		cmocka_unit_test(test_tls13_server_refuses_tls12_client),
		cmocka_unit_test(test_tls12_client_with_legacy_server),
		cmocka_unit_test(test_tls13_client_refuses_tls12_server),
		cmocka_unit_test(test_many_connections_one_ctx),
		cmocka_unit_test(test_dane_check),
	};
	return cmocka_run_group_tests_name("tls", tests, group_setup, group_teardown);
}
