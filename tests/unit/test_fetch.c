/* test_fetch.c - the HTTPS GET client for MTA-STS policies (fetch.h).
 *
 * Parser tables: each response is fed whole, one byte at a time and in three pieces split
 * at varying places; all three must give the same result (error, status, detail, body),
 * and it must be the one the row expects.
 *
 * Live tests: a real HTTPS server, /usr/bin/python3 with http.server and ssl (the script
 * below, written into the test's temp directory), listening on random ports of 127.0.0.1
 * and ::1 with the test certificates (scripts/gen-test-certs.sh): the CA-signed
 * "localhost" leaf, and the wrong-name, self-signed, expired and other-CA leaves on
 * ports of their own. It writes its ports into a file once every socket listens (the
 * test waits for that file, and fails early if the child died) and logs one line per
 * request, so a test can count what arrived. Paths choose the behaviour: a policy with
 * Content-Length, chunked, close-delimited with and without close_notify, a redirect,
 * 404, text/html, an endless body, a server that never answers. Each fetch runs on a
 * loop of its own; after the callback the loop must close cleanly (no handle left). */
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
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "fetch.h"
#include "tls.h"
#include "unit_fixture.h"
#include "unit_net.h"

/* ================================================================== parser tables */

/* eof: how the input ends after it was fed: NO_EOF (not at all), EOF_FIN (TCP end
 * without close_notify), EOF_NOTIFY (TLS close_notify). */
enum { NO_EOF, EOF_FIN, EOF_NOTIFY };

struct pcase {
	const char *name;
	const char *in;
	size_t max_body;       /* 0: default */
	const char *want_type; /* NULL: any */
	int eof;
	enum fetch_error error;
	int status;
	const char *body;      /* FETCH_OK: the body expected */
	const char *detail;    /* substring of the detail (errors) */
};

#define OKTYPE "Content-Type: text/plain\r\n"
#define POLICY "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 86400\r\n"

static const struct pcase pcases[] = {
	{ "content-length", "HTTP/1.1 200 OK\r\n" OKTYPE "Content-Length: 5\r\n\r\nhello", 0,
	  "text/plain", NO_EOF, FETCH_OK, 200, "hello", NULL },
	{ "content-length, bytes after it ignored",
	  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloGARBAGE", 0, NULL, NO_EOF, FETCH_OK,
	  200, "hello", NULL },
	{ "content-length 0", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, NULL, NO_EOF,
	  FETCH_OK, 200, "", NULL },
	{ "HTTP/1.0 with length", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab", 0, NULL,
	  NO_EOF, FETCH_OK, 200, "ab", NULL },
	{ "LF line ends", "HTTP/1.1 200 OK\nContent-Length: 2\n\nab", 0, NULL, NO_EOF, FETCH_OK,
	  200, "ab", NULL },
	{ "status line without reason", "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nab", 0, NULL,
	  NO_EOF, FETCH_OK, 200, "ab", NULL },
	{ "identical duplicate Content-Length",
	  "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 0, NULL,
	  NO_EOF, FETCH_OK, 200, "abc", NULL },
	{ "Content-Length list of equal values",
	  "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", 0, NULL, NO_EOF, FETCH_OK, 200,
	  "abc", NULL },
	{ "chunked, extensions, trailers",
	  "HTTP/1.1 200 OK\r\n" OKTYPE "Transfer-Encoding: chunked\r\n\r\n"
	  "5;name=value\r\nhello\r\n1\r\n \r\nA ; a=\"q\" ;b\r\n0123456789\r\n1a\r\n"
	  "abcdefghijklmnopqrstuvwxyz\r\n0;last\r\nX-Trailer: yes\r\nOther: 1\r\n\r\n",
	  0, "text/plain", NO_EOF, FETCH_OK, 200, "hello 0123456789abcdefghijklmnopqrstuvwxyz",
	  NULL },
	{ "chunked, Transfer-Encoding in capitals, no trailer",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_OK, 200, "abc", NULL },
	{ "chunked, LF only", "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n", 0,
	  NULL, NO_EOF, FETCH_OK, 200, "abc", NULL },
	{ "chunked, exactly max_body",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n",
	  10, NULL, NO_EOF, FETCH_OK, 200, "1234567890", NULL },
	{ "close-delimited HTTP/1.0, close_notify", "HTTP/1.0 200 OK\r\n" OKTYPE "\r\n" POLICY, 0,
	  "text/plain", EOF_NOTIFY, FETCH_OK, 200, POLICY, NULL },
	{ "close-delimited HTTP/1.1, close_notify", "HTTP/1.1 200 OK\r\n\r\nbody", 0, NULL,
	  EOF_NOTIFY, FETCH_OK, 200, "body", NULL },
	{ "close-delimited, empty", "HTTP/1.0 200 OK\r\n\r\n", 0, NULL, EOF_NOTIFY, FETCH_OK, 200,
	  "", NULL },
	{ "close-delimited, TCP end without close_notify", "HTTP/1.0 200 OK\r\n\r\nbody", 0, NULL,
	  EOF_FIN, FETCH_E_HTTP, 200, NULL, "without TLS close_notify" },
	{ "close-delimited, not ended yet", "HTTP/1.0 200 OK\r\n\r\nbody", 0, NULL, NO_EOF,
	  -1, 200, NULL, NULL },
	{ "interim 100 Continue skipped",
	  "HTTP/1.1 100 Continue\r\nX: y\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", 0,
	  NULL, NO_EOF, FETCH_OK, 200, "z", NULL },
	{ "101 refused", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 101, NULL, "HTTP 101" },
	/* status */
	{ "301 with Location",
	  "HTTP/1.1 301 Moved Permanently\r\nLocation: https://evil.example/p\r\n"
	  "Content-Length: 0\r\n\r\n",
	  0, NULL, NO_EOF, FETCH_E_HTTP, 301, NULL, "HTTP 301 (redirect to https://evil.example/p" },
	{ "302 without Location", "HTTP/1.1 302 Found\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 302,
	  NULL, "HTTP 302" },
	{ "404", "HTTP/1.1 404 Not Found\r\n" OKTYPE "Content-Length: 9\r\n\r\nnot found", 0,
	  "text/plain", NO_EOF, FETCH_E_HTTP, 404, NULL, "HTTP 404" },
	{ "204", "HTTP/1.1 204 No Content\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 204, NULL,
	  "HTTP 204" },
	{ "status line HTTP/2", "HTTP/2 200 OK\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 0, NULL,
	  "malformed status line" },
	{ "status line two digits", "HTTP/1.1 20 OK\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 0,
	  NULL, "malformed status line" },
	{ "status line no space", "HTTP/1.1 200OK\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 0, NULL,
	  "malformed status line" },
	{ "status line lower case", "http/1.1 200 OK\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 0,
	  NULL, "malformed status line" },
	{ "status line ICY", "ICY 200 OK\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 0, NULL,
	  "malformed status line" },
	{ "status 099", "HTTP/1.1 099 Low\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 0, NULL,
	  "malformed status line" },
	{ "status line with a bare CR", "HTTP/1.1 200 O\rK\r\n\r\n", 0, NULL, NO_EOF,
	  FETCH_E_HTTP, 0, NULL, "malformed status line" },
	{ "not HTTP at all", "SSH-2.0-OpenSSH_9.2\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP, 0, NULL,
	  "malformed status line" },
	/* header fields */
	{ "folded header", "HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 1\r\n\r\nz", 0,
	  NULL, NO_EOF, FETCH_E_HTTP, 200, NULL, "folded" },
	{ "folded header with HTAB", "HTTP/1.1 200 OK\r\nX-Long: a\r\n\tb\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "folded" },
	{ "space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nz", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "malformed header field" },
	{ "field without colon", "HTTP/1.1 200 OK\r\nContent-Length\r\n\r\n", 0, NULL, NO_EOF,
	  FETCH_E_HTTP, 200, NULL, "malformed header field" },
	{ "control character in a value", "HTTP/1.1 200 OK\r\nX-A: a\001b\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "control character in the X-A field" },
	{ "NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_HTTP,
	  200, NULL, "control character" },
	{ "conflicting Content-Length",
	  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhelloo", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "conflicting Content-Length" },
	{ "conflicting Content-Length list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
	  0, NULL, NO_EOF, FETCH_E_HTTP, 200, NULL, "conflicting Content-Length" },
	{ "Content-Length not a number", "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello", 0,
	  NULL, NO_EOF, FETCH_E_HTTP, 200, NULL, "invalid Content-Length" },
	{ "Content-Length negative", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "invalid Content-Length" },
	{ "Content-Length empty", "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", 0, NULL, NO_EOF,
	  FETCH_E_HTTP, 200, NULL, "invalid Content-Length" },
	{ "Transfer-Encoding and Content-Length",
	  "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	  0, NULL, NO_EOF, FETCH_E_HTTP, 200, NULL, "both Transfer-Encoding and Content-Length" },
	{ "Transfer-Encoding gzip, chunked",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 0, NULL, NO_EOF,
	  FETCH_E_HTTP, 200, NULL, "unsupported Transfer-Encoding" },
	{ "Transfer-Encoding chunked twice",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 0,
	  NULL, NO_EOF, FETCH_E_HTTP, 200, NULL, "unsupported Transfer-Encoding" },
	{ "Transfer-Encoding in HTTP/1.0",
	  "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "HTTP/1.0" },
	/* Content-Type */
	{ "type text/plain", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nz",
	  0, "text/plain", NO_EOF, FETCH_OK, 200, "z", NULL },
	{ "type Text/Plain; charset=utf-8",
	  "HTTP/1.1 200 OK\r\nContent-Type: Text/Plain; charset=utf-8\r\nContent-Length: 1\r\n\r\nz",
	  0, "text/plain", NO_EOF, FETCH_OK, 200, "z", NULL },
	{ "type TEXT/PLAIN with spaces",
	  "HTTP/1.1 200 OK\r\nContent-Type:   TEXT/PLAIN   ;charset=\"utf-8\"  \r\nContent-Length: 1\r\n\r\nz",
	  0, "text/plain", NO_EOF, FETCH_OK, 200, "z", NULL },
	{ "type text/html refused",
	  "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1\r\n\r\nz", 0,
	  "text/plain", NO_EOF, FETCH_E_TYPE, 200, NULL, "Content-Type text/html, text/plain required" },
	{ "type text/plainx refused",
	  "HTTP/1.1 200 OK\r\nContent-Type: text/plainx\r\nContent-Length: 1\r\n\r\nz", 0,
	  "text/plain", NO_EOF, FETCH_E_TYPE, 200, NULL, "text/plainx" },
	{ "type missing refused", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", 0, "text/plain",
	  NO_EOF, FETCH_E_TYPE, 200, NULL, "no Content-Type, text/plain required" },
	{ "type missing, none required", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", 0, NULL,
	  NO_EOF, FETCH_OK, 200, "z", NULL },
	{ "type text/html, none required",
	  "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1\r\n\r\nz", 0, NULL,
	  NO_EOF, FETCH_OK, 200, "z", NULL },
	{ "two different types",
	  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\n", 0,
	  "text/plain", NO_EOF, FETCH_E_HTTP, 200, NULL, "several different Content-Type" },
	/* bounds */
	{ "Content-Length above max_body", "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", 10,
	  NULL, NO_EOF, FETCH_E_SIZE, 200, NULL, "Content-Length 11 above the limit 10" },
	{ "Content-Length above the default",
	  "HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n", 0, NULL, NO_EOF, FETCH_E_SIZE, 200,
	  NULL, "above the limit 65536" },
	{ "Content-Length of 30 digits",
	  "HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999999999999999\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_SIZE, 200, NULL, "above the limit" },
	{ "chunked running above max_body",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n123456\r\n5\r\n", 10, NULL,
	  NO_EOF, FETCH_E_SIZE, 200, NULL, "chunked body above the limit 10" },
	{ "chunk size of 40 hex digits",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffffffffffffffffffff\r\n",
	  0, NULL, NO_EOF, FETCH_E_SIZE, 200, NULL, "chunked body above" },
	{ "close-delimited above max_body", "HTTP/1.0 200 OK\r\n\r\n12345678901", 10, NULL,
	  NO_EOF, FETCH_E_SIZE, 200, NULL, "body above the limit 10" },
	/* chunked framing */
	{ "chunk size not hex",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, NULL, NO_EOF,
	  FETCH_E_HTTP, 200, NULL, "malformed chunk size" },
	{ "chunk size with a sign",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "malformed chunk size" },
	{ "chunk data longer than its size",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "chunk data longer than its size" },
	{ "chunk data without its CRLF",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc0\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "chunk data longer than its size" },
	{ "folded trailer",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: b\r\n c\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "folded" },
	{ "malformed trailer",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a field\r\n\r\n", 0, NULL,
	  NO_EOF, FETCH_E_HTTP, 200, NULL, "malformed trailer field" },
	/* truncation */
	{ "nothing at all", "", 0, NULL, EOF_FIN, FETCH_E_HTTP, 0, NULL,
	  "connection closed without a response" },
	{ "nothing at all, close_notify", "", 0, NULL, EOF_NOTIFY, FETCH_E_HTTP, 0, NULL,
	  "connection closed without a response" },
	{ "truncated status line", "HTTP/1.1 2", 0, NULL, EOF_FIN, FETCH_E_HTTP, 0, NULL,
	  "truncated in the header block" },
	{ "truncated header block", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", 0, NULL, EOF_NOTIFY,
	  FETCH_E_HTTP, 200, NULL, "truncated in the header block" },
	{ "truncated Content-Length body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 0,
	  NULL, EOF_NOTIFY, FETCH_E_HTTP, 200, NULL, "truncated: 3 of 5 body bytes" },
	{ "truncated chunked body",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", 0, NULL,
	  EOF_NOTIFY, FETCH_E_HTTP, 200, NULL, "truncated in the chunked body" },
	{ "truncated before the trailer's end",
	  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n", 0, NULL,
	  EOF_FIN, FETCH_E_HTTP, 200, NULL, "truncated in the chunked body" },
	{ "incomplete, no end yet", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 0, NULL,
	  NO_EOF, -1, 200, NULL, NULL },
};

struct presult {
	int finished;
	enum fetch_error error;
	int status;
	char detail[200];
	uint8_t *body;
	size_t len;
};

/* Feeds in[0..len) in pieces ending at cuts[] (ascending, the last == len), then the end
 * the row asks for. */
static void run_parser(const char *in, size_t len, size_t max_body, const char *want_type,
		       int eof, const size_t *cuts, size_t ncuts, struct presult *r)
{
	struct fetch_parser p;
	fetch_parser_init(&p, max_body, want_type);
	assert_true(ncuts > 0 && cuts[ncuts - 1] == len);
	size_t at = 0;
	int fin = 0;
	for (size_t i = 0; i < ncuts && !fin; i++) {
		fin = fetch_parser_feed(&p, in + at, cuts[i] - at);
		at = cuts[i];
	}
	if (fin) /* a finished parser consumes nothing more */
		assert_int_equal(fetch_parser_feed(&p, "more", 4), 1);
	if (!fin && eof != NO_EOF)
		fin = fetch_parser_eof(&p, eof == EOF_NOTIFY);
	memset(r, 0, sizeof(*r));
	r->finished = fin;
	r->error = p.error;
	r->status = p.status;
	snprintf(r->detail, sizeof(r->detail), "%s", p.detail);
	if (fin && p.error == FETCH_OK) {
		assert_non_null(p.body);
		assert_int_equal(p.body[p.len], 0); /* NUL-terminated */
		r->body = malloc(p.len + 1);
		assert_non_null(r->body);
		memcpy(r->body, p.body, p.len);
		r->len = p.len;
	}
	fetch_parser_free(&p);
}

static int presult_equal(const struct presult *a, const struct presult *b)
{
	if (a->finished != b->finished)
		return 0;
	if (!a->finished)
		return a->status == b->status;
	return a->error == b->error && a->status == b->status && !strcmp(a->detail, b->detail) &&
	       a->len == b->len && (!a->len || !memcmp(a->body, b->body, a->len));
}

static int printable_line(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			return 0;
	return 1;
}

/* One row: its verdict against the expectation; 0 when it holds, else a message. */
static int check_row(const struct pcase *c, size_t len, const struct presult *r)
{
	(void)len;
	int ok;
	if ((int)c->error == -1) {
		ok = !r->finished && r->status == c->status;
	} else {
		ok = r->finished && r->error == c->error && r->status == c->status &&
		     printable_line(r->detail);
		if (ok && c->error == FETCH_OK)
			ok = r->detail[0] == '\0' && r->len == strlen(c->body) &&
			     !memcmp(r->body, c->body, r->len);
		if (ok && c->error != FETCH_OK)
			ok = r->detail[0] && (!c->detail || strstr(r->detail, c->detail));
	}
	if (!ok)
		print_message("[%s] finished %d, error %s (want %s), status %d (want %d), "
			      "detail \"%s\" (want \"%s\"), body %zu bytes \"%.*s\"\n",
			      c->name, r->finished, fetch_error_name(r->error),
			      (int)c->error == -1 ? "unfinished" : fetch_error_name(c->error),
			      r->status, c->status, r->detail, c->detail ? c->detail : "", r->len,
			      (int)(r->len > 60 ? 60 : r->len), r->body ? (char *)r->body : "");
	return ok ? 0 : 1;
}

/* Input lengths: the rows are C strings, except the one with a NUL inside. */
static size_t row_len(const struct pcase *c)
{
	if (!strcmp(c->name, "NUL in a value"))
		return strlen(c->in) + 1 + strlen(c->in + strlen(c->in) + 1);
	return strlen(c->in);
}

/* Every row: whole, byte by byte, and in three pieces at several places. */
static void check_rows(const struct pcase *rows, size_t n)
{
	int failures = 0;
	for (size_t i = 0; i < n; i++) {
		const struct pcase *c = &rows[i];
		size_t len = row_len(c);
		struct presult whole, r;
		size_t cut[1] = { len };
		run_parser(c->in, len, c->max_body, c->want_type, c->eof, cut, 1, &whole);
		failures += check_row(c, len, &whole);
		/* byte by byte */
		size_t *cuts = malloc((len + 1) * sizeof(*cuts));
		assert_non_null(cuts);
		for (size_t k = 0; k < len; k++)
			cuts[k] = k + 1;
		cuts[0] = len ? 1 : 0; /* (an empty input: one empty piece) */
		run_parser(c->in, len, c->max_body, c->want_type, c->eof, cuts, len ? len : 1, &r);
		if (!presult_equal(&whole, &r)) {
			print_message("[%s] byte by byte differs: \"%s\" vs \"%s\"\n", c->name,
				      r.detail, whole.detail);
			failures++;
		}
		free(r.body);
		free(cuts);
		/* three pieces */
		for (size_t a = 0; a <= len; a += 1 + len / 7) {
			size_t b = a + (len - a) / 2, three[3] = { a, b, len };
			run_parser(c->in, len, c->max_body, c->want_type, c->eof, three, 3, &r);
			if (!presult_equal(&whole, &r)) {
				print_message("[%s] pieces at %zu,%zu differ: \"%s\" vs \"%s\"\n",
					      c->name, a, b, r.detail, whole.detail);
				failures++;
			}
			free(r.body);
		}
		free(whole.body);
	}
	assert_int_equal(failures, 0);
}

static void test_parser_table(void **state)
{
	(void)state;
	check_rows(pcases, sizeof(pcases) / sizeof(pcases[0]));
}

/* Responses built at run time: bounds on the header block, chunk lines, framing. */
static char *repeat_into(char *o, const char *s, size_t times)
{
	size_t n = strlen(s);
	for (size_t i = 0; i < times; i++, o += n)
		memcpy(o, s, n);
	*o = '\0';
	return o;
}

static void test_parser_bounds(void **state)
{
	(void)state;
	size_t cap = 400000;
	char *big = malloc(cap), *o;
	char *exact = malloc(cap), *chunky = malloc(cap), *longline = malloc(cap),
	     *trailer = malloc(cap), *justfits = malloc(cap), *bigbody = malloc(cap);
	assert_true(big && exact && chunky && longline && trailer && justfits && bigbody);

	/* a header block over FETCH_HEADER_MAX: 9000 bytes of fields */
	o = big + sprintf(big, "HTTP/1.1 200 OK\r\n");
	o = repeat_into(o, "X-Filler: 0123456789012345678901234567890123456789\r\n", 180);
	strcpy(o, "Content-Length: 1\r\n\r\nz");

	/* a header block of exactly FETCH_HEADER_MAX bytes is fine */
	o = exact + sprintf(exact, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Pad: ");
	size_t used = (size_t)(o - exact) + 4; /* the CRLF of X-Pad and the empty line */
	memset(o, 'p', FETCH_HEADER_MAX - used);
	o += FETCH_HEADER_MAX - used;
	strcpy(o, "\r\n\r\nz");

	/* one chunk-size line over FETCH_CHUNK_LINE_MAX (extensions) */
	o = longline + sprintf(longline, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;x=");
	memset(o, 'e', FETCH_CHUNK_LINE_MAX);
	strcpy(o + FETCH_CHUNK_LINE_MAX, "\r\nz\r\n0\r\n\r\n");

	/* framing over FETCH_FRAMING_MAX: 20000 one-byte chunks (5 bytes of framing each) */
	o = chunky + sprintf(chunky, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
	o = repeat_into(o, "1\r\nz\r\n", 20000);
	strcpy(o, "0\r\n\r\n");

	/* 2000 one-byte chunks: well within every bound */
	o = justfits + sprintf(justfits, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
	o = repeat_into(o, "1\r\nz\r\n", 2000);
	strcpy(o, "0\r\n\r\n");
	char *zs = malloc(2001);
	assert_non_null(zs);
	memset(zs, 'z', 2000);
	zs[2000] = 0;

	/* a trailer over FETCH_HEADER_MAX */
	o = trailer + sprintf(trailer, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
	o = repeat_into(o, "X-Trailer-Filler: 0123456789012345678901234567890123456789\r\n", 160);
	strcpy(o, "\r\n");

	/* a close-delimited body of exactly the default limit */
	o = bigbody + sprintf(bigbody, "HTTP/1.0 200 OK\r\n\r\n");
	memset(o, 'b', FETCH_BODY_DEFAULT);
	o[FETCH_BODY_DEFAULT] = 0;

	const struct pcase rows[] = {
		{ "header block over the bound", big, 0, NULL, NO_EOF, FETCH_E_HTTP, 200, NULL,
		  "header block over 8192 bytes" },
		{ "header block of exactly the bound", exact, 0, NULL, NO_EOF, FETCH_OK, 200, "z",
		  NULL },
		{ "chunk-size line over the bound", longline, 0, NULL, NO_EOF, FETCH_E_HTTP, 200,
		  NULL, "chunk-size line over 1024 bytes" },
		{ "chunk framing over the bound", chunky, 0, NULL, NO_EOF, FETCH_E_HTTP, 200, NULL,
		  "chunk framing over 65536 bytes" },
		{ "2000 small chunks", justfits, 0, NULL, NO_EOF, FETCH_OK, 200, zs, NULL },
		{ "trailer over the bound", trailer, 0, NULL, NO_EOF, FETCH_E_HTTP, 200, NULL,
		  "trailer over 8192 bytes" },
		{ "body of exactly the default limit", bigbody, 0, NULL, EOF_NOTIFY, FETCH_OK, 200,
		  bigbody + 19, NULL },
	};
	check_rows(rows, sizeof(rows) / sizeof(rows[0]));
	/* one more byte than the limit */
	strcat(bigbody, "b");
	const struct pcase over[] = {
		{ "body of the default limit + 1", bigbody, 0, NULL, EOF_NOTIFY, FETCH_E_SIZE, 200,
		  NULL, "body above the limit 65536" },
	};
	/* byte by byte over 65 KiB: once is enough */
	struct presult r;
	size_t cut[1] = { strlen(bigbody) };
	run_parser(bigbody, cut[0], 0, NULL, EOF_NOTIFY, cut, 1, &r);
	assert_int_equal(check_row(&over[0], cut[0], &r), 0);
	free(r.body);
	free(big), free(exact), free(chunky), free(longline), free(trailer), free(justfits);
	free(bigbody), free(zs);
}

/* The chunked-body bounds at their edge and one octet beyond, and the header block one
 * octet over: a chunk-size line of FETCH_CHUNK_LINE_MAX octets (CRLF included) is read,
 * one more is refused; framing (chunk-size lines and chunk CRLFs) of FETCH_FRAMING_MAX
 * octets is read, one more is refused (13000 one-octet chunks, 65000 octets of framing,
 * and a last-chunk line padded with an extension). */
static void test_parser_edges(void **state)
{
	(void)state;
	size_t cap = 200000;
	char *line_at = malloc(cap), *line_over = malloc(cap), *frame_at = malloc(cap),
	     *frame_over = malloc(cap), *head_over = malloc(cap), *zs = malloc(13001), *o;
	assert_true(line_at && line_over && frame_at && frame_over && head_over && zs);
	/* "1;x=eee...\r\n" of n octets, then the chunk and the last chunk */
	for (int k = 0; k < 2; k++) {
		char *b = k ? line_over : line_at;
		size_t n = FETCH_CHUNK_LINE_MAX + (size_t)k;
		o = b + sprintf(b, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;x=");
		memset(o, 'e', n - 6);
		strcpy(o + n - 6, "\r\nz\r\n0\r\n\r\n");
	}
	for (int k = 0; k < 2; k++) {
		char *b = k ? frame_over : frame_at;
		size_t last = FETCH_FRAMING_MAX - 65000 + (size_t)k; /* the last-chunk line */
		o = b + sprintf(b, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
		o = repeat_into(o, "1\r\nz\r\n", 13000);
		o += sprintf(o, "0;x=");
		memset(o, 'e', last - 6);
		strcpy(o + last - 6, "\r\n\r\n");
	}
	memset(zs, 'z', 13000);
	zs[13000] = '\0';
	/* a header block of FETCH_HEADER_MAX + 1 octets */
	o = head_over + sprintf(head_over, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Pad: ");
	size_t used = (size_t)(o - head_over) + 4;
	memset(o, 'p', FETCH_HEADER_MAX + 1 - used);
	strcpy(o + FETCH_HEADER_MAX + 1 - used, "\r\n\r\nz");
	/* a Content-Type value of FETCH_TYPE_MAX octets is compared, a longer one never matches */
	char type_at[400], type_over[400];
	for (int k = 0; k < 2; k++) {
		char *b = k ? type_over : type_at;
		o = b + sprintf(b, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
				   "Content-Type: text/plain;x=");
		memset(o, 'v', FETCH_TYPE_MAX + (size_t)k - 13);
		strcpy(o + FETCH_TYPE_MAX + k - 13, "\r\n\r\nz");
	}
	/* a trailer (its fields and the blank line) of FETCH_HEADER_MAX octets, and one more */
	char *tr_at = malloc(cap), *tr_over = malloc(cap);
	assert_true(tr_at && tr_over);
	for (int k = 0; k < 2; k++) {
		char *b = k ? tr_over : tr_at;
		o = b + sprintf(b, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
				   "1\r\nz\r\n0\r\nX-T: ");
		memset(o, 't', FETCH_HEADER_MAX + (size_t)k - 9);
		strcpy(o + FETCH_HEADER_MAX + k - 9, "\r\n\r\n");
	}
	const struct pcase rows[] = {
		{ "trailer of exactly the bound", tr_at, 0, NULL, NO_EOF, FETCH_OK, 200, "z", NULL },
		{ "trailer one octet over", tr_over, 0, NULL, NO_EOF, FETCH_E_HTTP, 200, NULL,
		  "trailer over 8192 bytes" },
		{ "Content-Type of exactly the bound", type_at, 0, "text/plain", NO_EOF, FETCH_OK,
		  200, "z", NULL },
		{ "Content-Type one octet over", type_over, 0, "text/plain", NO_EOF, FETCH_E_TYPE,
		  200, NULL, "..., text/plain required" },
		{ "chunk-size line of exactly the bound", line_at, 0, NULL, NO_EOF, FETCH_OK, 200,
		  "z", NULL },
		{ "chunk-size line one octet over", line_over, 0, NULL, NO_EOF, FETCH_E_HTTP, 200,
		  NULL, "chunk-size line over 1024 bytes" },
		{ "chunk framing of exactly the bound", frame_at, 0, NULL, NO_EOF, FETCH_OK, 200, zs,
		  NULL },
		{ "chunk framing one octet over", frame_over, 0, NULL, NO_EOF, FETCH_E_HTTP, 200,
		  NULL, "chunk framing over 65536 bytes" },
		{ "header block one octet over", head_over, 0, NULL, NO_EOF, FETCH_E_HTTP, 200, NULL,
		  "header block over 8192 bytes" },
	};
	check_rows(rows, sizeof(rows) / sizeof(rows[0]));
	free(line_at), free(line_over), free(frame_at), free(frame_over), free(head_over);
	free(zs), free(tr_at), free(tr_over);
}

static void test_type_matches(void **state)
{
	(void)state;
	assert_true(fetch_type_matches("text/plain", "text/plain"));
	assert_true(fetch_type_matches("Text/Plain; charset=utf-8", "text/plain"));
	assert_true(fetch_type_matches(" text/plain ;x", "TEXT/PLAIN"));
	assert_false(fetch_type_matches("text/html", "text/plain"));
	assert_false(fetch_type_matches("text/plain2", "text/plain"));
	assert_false(fetch_type_matches("text/plai", "text/plain"));
	assert_false(fetch_type_matches("", "text/plain"));
	assert_false(fetch_type_matches("text/plain", ""));
	assert_string_equal(fetch_error_name(FETCH_E_CERT), "cert");
	assert_string_equal(fetch_error_name(FETCH_OK), "ok");
}

/* ================================================================== live server */

static const char server_py[] =
	"import http.server, os, socket, ssl, sys, threading, time\n"
	"log_path, ready_path = sys.argv[1], sys.argv[2]\n"
	"lock = threading.Lock()\n"
	"def log(line):\n"
	"    with lock:\n"
	"        with open(log_path, 'a') as f:\n"
	"            f.write(line + '\\n')\n"
	"with open(os.path.join(os.path.dirname(sys.argv[0]), 'policy.txt'), 'rb') as f:\n"
	"    POLICY = f.read()\n"
	"BIG = bytes((i * 7 + 3) % 256 for i in range(60000))\n"
	"class H(http.server.BaseHTTPRequestHandler):\n"
	"    protocol_version = 'HTTP/1.1'\n"
	"    def log_message(self, *a):\n"
	"        pass\n"
	"    def reply(self, status, body, ctype='text/plain', extra=()):\n"
	"        self.send_response(status)\n"
	"        if ctype:\n"
	"            self.send_header('Content-Type', ctype)\n"
	"        self.send_header('Content-Length', str(len(body)))\n"
	"        for k, v in extra:\n"
	"            self.send_header(k, v)\n"
	"        self.end_headers()\n"
	"        self.wfile.write(body)\n"
	"    def do_GET(self):\n"
	"        h = self.headers\n"
	"        log('%s GET %s host=%s ua=%s accept=%s connection=%s fields=%d' % (self.server.name,\n"
	"            self.path, h.get('Host'), h.get('User-Agent'), h.get('Accept'),\n"
	"            h.get('Connection'), len(h)))\n"
	"        p = self.path\n"
	"        if p in ('/.well-known/mta-sts.txt', '/redirect-target'):\n"
	"            self.reply(200, POLICY, 'text/plain; charset=utf-8')\n"
	"        elif p == '/big':\n"
	"            self.reply(200, BIG, 'application/octet-stream')\n"
	"        elif p == '/chunked':\n"
	"            self.send_response(200)\n"
	"            self.send_header('Content-Type', 'text/plain')\n"
	"            self.send_header('Transfer-Encoding', 'chunked')\n"
	"            self.end_headers()\n"
	"            for i in range(0, len(POLICY), 7):\n"
	"                c = POLICY[i:i + 7]\n"
	"                self.wfile.write(b'%x;n=%d\\r\\n' % (len(c), i) + c + b'\\r\\n')\n"
	"                self.wfile.flush()\n"
	"            self.wfile.write(b'0\\r\\nX-Trailer: done\\r\\n\\r\\n')\n"
	"        elif p in ('/close', '/close-no-notify'):\n"
	"            self.protocol_version = 'HTTP/1.0'\n"
	"            self.close_connection = True\n"
	"            self.send_response(200)\n"
	"            self.send_header('Content-Type', 'text/plain')\n"
	"            self.end_headers()\n"
	"            self.wfile.write(POLICY)\n"
	"            self.wfile.flush()\n"
	"            if p == '/close':\n"
	"                try:\n"
	"                    self.connection.unwrap()\n"
	"                except Exception:\n"
	"                    pass\n"
	"        elif p == '/redirect':\n"
	"            self.reply(302, b'moved', 'text/plain', [('Location',\n"
	"                'https://localhost:%d/redirect-target' % self.server.server_address[1])])\n"
	"        elif p == '/missing':\n"
	"            self.reply(404, b'not found')\n"
	"        elif p == '/html':\n"
	"            self.reply(200, b'<html></html>', 'text/html')\n"
	"        elif p == '/huge':\n"
	"            self.send_response(200)\n"
	"            self.send_header('Content-Type', 'text/plain')\n"
	"            self.send_header('Transfer-Encoding', 'chunked')\n"
	"            self.end_headers()\n"
	"            block = b'%x\\r\\n' % 65536 + b'x' * 65536 + b'\\r\\n'\n"
	"            sent = 0\n"
	"            try:\n"
	"                for i in range(1024):\n"
	"                    self.wfile.write(block)\n"
	"                    sent += 65536\n"
	"                self.wfile.write(b'0\\r\\n\\r\\n')\n"
	"                self.wfile.flush()\n"
	"                log('huge-complete')\n"
	"            except Exception:\n"
	"                log('huge-aborted after %d' % sent)\n"
	"        elif p == '/silent':\n"
	"            time.sleep(30)\n"
	"        else:\n"
	"            self.reply(404, b'no such test path')\n"
	"class S(http.server.ThreadingHTTPServer):\n"
	"    daemon_threads = True\n"
	"    def finish_request(self, request, client_address):\n"
	"        try:\n"
	"            conn = self.ctx.wrap_socket(request, server_side=True)\n"
	"        except Exception as e:\n"
	"            log('%s handshake failed: %s' % (self.name, e))\n"
	"            return\n"
	"        try:\n"
	"            self.RequestHandlerClass(conn, client_address, self)\n"
	"        except Exception as e:\n"
	"            log('%s handler: %s' % (self.name, e))\n"
	"        try:\n"
	"            conn.close()\n"
	"        except Exception:\n"
	"            pass\n"
	"class S6(S):\n"
	"    address_family = socket.AF_INET6\n"
	"lines = []\n"
	"for spec in sys.argv[3:]:\n"
	"    name, family, cert, key = spec.split(',')\n"
	"    cls = S6 if family == '6' else S\n"
	"    srv = cls(('::1' if family == '6' else '127.0.0.1', 0), H)\n"
	"    srv.name = name\n"
	"    srv.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
	"    srv.ctx.load_cert_chain(cert, key)\n"
	"    threading.Thread(target=srv.serve_forever, daemon=True).start()\n"
	"    lines.append('%s %d\\n' % (name, srv.server_address[1]))\n"
	"with open(ready_path + '.tmp', 'w') as f:\n"
	"    f.write(''.join(lines))\n"
	"os.rename(ready_path + '.tmp', ready_path)\n"
	"while True:\n"
	"    time.sleep(3600)\n";

enum { SRV_GOOD, SRV_GOOD6, SRV_WRONGNAME, SRV_SELFSIGNED, SRV_EXPIRED, SRV_OTHERCA, SRV_N };
static const char *const srv_name[SRV_N] = { "good", "good6", "wrongname", "selfsigned",
					     "expired", "otherca" };
static const char *const srv_cert[SRV_N] = { "server", "server", "wrongname", "selfsigned",
					     "expired", "otherca-server" };

static pid_t server_pid = -1;
static int server_port[SRV_N];
static char server_log[600], server_err[600];
static struct tls_ctx *client_ctx;
static int live; /* the server runs */

static void server_stderr_dump(void)
{
	char cmd[700];
	snprintf(cmd, sizeof cmd, "cat '%s' >&2", server_err);
	if (system(cmd) != 0)
		fprintf(stderr, "(no server stderr)\n");
}

/* Starts the python server; returns 0 once every port listens. */
static int server_start(void)
{
	char script[600], ready[600];
	snprintf(script, sizeof script, "%s/server.py", tmpdir);
	snprintf(ready, sizeof ready, "%s/ready", tmpdir);
	snprintf(server_log, sizeof server_log, "%s/requests.log", tmpdir);
	snprintf(server_err, sizeof server_err, "%s/server.err", tmpdir);
	FILE *f = fopen(script, "w");
	if (!f)
		return -1;
	fputs(server_py, f);
	fclose(f);
	char policy_file[600];
	snprintf(policy_file, sizeof policy_file, "%s/policy.txt", tmpdir);
	f = fopen(policy_file, "w");
	if (!f)
		return -1;
	fputs(POLICY, f);
	fclose(f);
	char specs[SRV_N][1400];
	for (int i = 0; i < SRV_N; i++)
		snprintf(specs[i], sizeof specs[i], "%s,%d,%s/%s.pem,%s/%s.key", srv_name[i],
			 i == SRV_GOOD6 ? 6 : 4, certdir, srv_cert[i], certdir, srv_cert[i]);
	server_pid = fork();
	if (server_pid < 0)
		return -1;
	if (server_pid == 0) {
		int fd = open(server_err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		char *argv[5 + SRV_N] = { "/usr/bin/python3", script, server_log, ready };
		for (int i = 0; i < SRV_N; i++)
			argv[4 + i] = specs[i];
		argv[4 + SRV_N] = NULL;
		execv(argv[0], argv);
		_exit(127);
	}
	/* the condition: the ready file (written after every socket listens) */
	int64_t until = now_ms() + 15000;
	struct stat st;
	while (stat(ready, &st) != 0) {
		int status;
		if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
			fprintf(stderr, "test server exited (status %d):\n", status);
			server_stderr_dump();
			server_pid = -1;
			return -1;
		}
		if (now_ms() > until) {
			fprintf(stderr, "test server not ready after 15 s\n");
			server_stderr_dump();
			return -1;
		}
		usleep(10000);
	}
	f = fopen(ready, "r");
	if (!f)
		return -1;
	char name[64];
	int port, n = 0;
	while (fscanf(f, "%63s %d", name, &port) == 2)
		for (int i = 0; i < SRV_N; i++)
			if (!strcmp(name, srv_name[i]))
				server_port[i] = port, n++;
	fclose(f);
	return n == SRV_N ? 0 : -1;
}

static void server_stop(void)
{
	if (server_pid > 0) {
		kill(server_pid, SIGTERM);
		waitpid(server_pid, NULL, 0);
		server_pid = -1;
	}
}

static int group_setup(void **state)
{
	(void)state;
	if (tls_global_init() != 0 || fixture_setup("fetch") != 0)
		return -1;
	struct stat st;
	if (!have_certs || stat("/usr/bin/python3", &st) != 0) {
		fprintf(stderr, "note: no certificates or no /usr/bin/python3: live tests skip\n");
		return 0;
	}
	char ca[600], err[256] = "";
	snprintf(ca, sizeof ca, "%s/ca.pem", certdir);
	struct tls_client_opts o = { .ca = ca };
	if (tls_ctx_client_new(&o, &client_ctx, err, sizeof err) != 0) {
		fprintf(stderr, "tls_ctx_client_new: %s\n", err);
		return -1;
	}
	if (server_start() != 0) {
		server_stop();
		return -1;
	}
	live = 1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	server_stop();
	tls_ctx_free(client_ctx);
	return fixture_teardown();
}

static void need_live(void)
{
	if (!live)
		skip();
}

/* ------------------------------------------------------------------ requests log */

static size_t log_lines(void)
{
	FILE *f = fopen(server_log, "r");
	if (!f)
		return 0;
	size_t n = 0;
	int c;
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

/* The log from line `from` on (0-based), in a static buffer. */
static const char *log_since(size_t from)
{
	static char out[8192];
	out[0] = 0;
	FILE *f = fopen(server_log, "r");
	if (!f)
		return out;
	char line[1024];
	size_t n = 0, o = 0;
	while (fgets(line, sizeof line, f))
		if (n++ >= from && o + strlen(line) + 1 < sizeof out)
			o += (size_t)snprintf(out + o, sizeof out - o, "%s", line);
	fclose(f);
	return out;
}

/* ------------------------------------------------------------------ fetching */

struct res {
	int calls;
	enum fetch_error error;
	char detail[200];
	int status;
	uint8_t *body;
	size_t len;
	int64_t at;              /* now_ms() when the callback ran */
	struct fetch *f;
	int cancel_in_cb;
};

static void on_done(void *arg, const struct fetch_result *r)
{
	struct res *x = arg;
	x->calls++;
	x->at = now_ms();
	x->error = r->error;
	x->status = r->http_status;
	snprintf(x->detail, sizeof x->detail, "%s", r->detail);
	if (r->error == FETCH_OK) {
		assert_non_null(r->body);
		x->body = malloc(r->len + 1);
		assert_non_null(x->body);
		memcpy(x->body, r->body, r->len);
		x->len = r->len;
	} else {
		assert_null(r->body);
	}
	if (x->cancel_in_cb)
		fetch_cancel(x->f); /* a no-op from inside the callback */
}

static struct sockaddr_storage v4(const char *ip)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *s = (struct sockaddr_in *)&ss;
	s->sin_family = AF_INET;
	s->sin_port = htons(9); /* ignored: opts.port counts */
	assert_int_equal(inet_pton(AF_INET, ip, &s->sin_addr), 1);
	return ss;
}

static struct sockaddr_storage v6(const char *ip)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
	s->sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, ip, &s->sin6_addr), 1);
	return ss;
}

static struct fetch_opts opts_for(int srv, const char *path, const struct sockaddr_storage *a,
				  size_t n)
{
	struct fetch_opts o = {
		.host = "localhost",
		.path = path,
		.addrs = a,
		.naddrs = n,
		.port = (uint16_t)server_port[srv],
		.ctx = client_ctx,
		.timeout_ms = 5000,
		.content_type = "text/plain",
	};
	return o;
}

/* Runs one fetch on a loop of its own to the end: the callback ran exactly once (never
 * inside fetch_start) and the loop closes without a handle left. */
static void run_fetch(const struct fetch_opts *o, struct res *r)
{
	uv_loop_t loop;
	assert_int_equal(uv_loop_init(&loop), 0);
	memset(r, 0, sizeof(*r));
	r->f = fetch_start(&loop, o, on_done, r);
	assert_non_null(r->f);
	assert_int_equal(r->calls, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(r->calls, 1);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void expect(const struct res *r, enum fetch_error e, const char *detail)
{
	if (getenv("STP_VERBOSE"))
		print_message("    fetch: %s \"%s\" (HTTP %d)\n", fetch_error_name(r->error),
			      r->detail, r->status);
	if (r->error == e && (!detail || strstr(r->detail, detail)))
		return;
	fail_msg("fetch: %s \"%s\" (HTTP %d), expected %s \"%s\"", fetch_error_name(r->error),
		 r->detail, r->status, fetch_error_name(e), detail ? detail : "");
}

static const char policy[] = POLICY;

static void test_live_good(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", &a, 1);
	size_t before = log_lines();
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.detail, "");
	assert_int_equal(r.len, strlen(policy));
	assert_memory_equal(r.body, policy, r.len);
	free(r.body);
	/* the request as it arrived: one, with these fields and no others */
	assert_int_equal(log_lines(), before + 1);
	char want[256];
	snprintf(want, sizeof want,
		 "good GET /.well-known/mta-sts.txt host=localhost:%d ua=starttls-proxy "
		 "accept=text/plain connection=close fields=4\n",
		 server_port[SRV_GOOD]);
	assert_string_equal(log_since(before), want);
	/* the absolute form of the name: the dot is not part of SNI, Host or the check */
	o.host = "localhost.";
	before = log_lines();
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	free(r.body);
	assert_string_equal(log_since(before), want);
}

static void test_live_big_body(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/big", &a, 1);
	o.content_type = NULL;
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	assert_int_equal(r.len, 60000);
	for (size_t i = 0; i < r.len; i++)
		if (r.body[i] != (uint8_t)((i * 7 + 3) % 256))
			fail_msg("body byte %zu differs", i);
	free(r.body);
	/* the same with a smaller limit: FETCH_E_SIZE from the Content-Length alone */
	o.max_body = 59999;
	run_fetch(&o, &r);
	expect(&r, FETCH_E_SIZE, "Content-Length 60000 above the limit 59999");
	/* and a required type it does not have */
	o.max_body = 0;
	o.content_type = "text/plain";
	run_fetch(&o, &r);
	expect(&r, FETCH_E_TYPE, "Content-Type application/octet-stream, text/plain required");
}

static void test_live_ipv6(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v6("::1");
	struct fetch_opts o = opts_for(SRV_GOOD6, "/.well-known/mta-sts.txt", &a, 1);
	size_t before = log_lines();
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	assert_int_equal(r.len, strlen(policy));
	assert_memory_equal(r.body, policy, r.len);
	free(r.body);
	assert_non_null(strstr(log_since(before), "good6 GET /.well-known/mta-sts.txt"));
}

static void test_live_chunked(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/chunked", &a, 1);
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	assert_int_equal(r.len, strlen(policy));
	assert_memory_equal(r.body, policy, r.len);
	free(r.body);
}

static void test_live_close_delimited(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/close", &a, 1);
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	assert_int_equal(r.len, strlen(policy));
	assert_memory_equal(r.body, policy, r.len);
	free(r.body);
	/* the same body ended by a bare TCP close: it could be truncated */
	o.path = "/close-no-notify";
	run_fetch(&o, &r);
	expect(&r, FETCH_E_HTTP, "without TLS close_notify");
	assert_int_equal(r.status, 200);
}

static void test_live_cert_errors(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	static const struct {
		int srv;
		const char *detail;
	} rows[] = {
		{ SRV_WRONGNAME, "certificate-host-mismatch: localhost, certificate /CN=wrong.example" },
		{ SRV_SELFSIGNED, "certificate-not-trusted" },
		{ SRV_OTHERCA, "certificate-not-trusted" },
		{ SRV_EXPIRED, "certificate-expired" },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		struct fetch_opts o = opts_for(rows[i].srv, "/.well-known/mta-sts.txt", &a, 1);
		size_t before = log_lines();
		struct res r;
		run_fetch(&o, &r);
		expect(&r, FETCH_E_CERT, rows[i].detail);
		assert_int_equal(r.status, 0);
		/* refused before the request: the server saw none */
		assert_string_equal(log_since(before), "");
	}
	/* a name the good certificate does not have */
	struct fetch_opts o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", &a, 1);
	o.host = "mta-sts.example.com";
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_E_CERT, "certificate-host-mismatch: mta-sts.example.com");
}

static void test_live_redirect_not_followed(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/redirect", &a, 1);
	size_t before = log_lines();
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_E_HTTP, "HTTP 302");
	assert_int_equal(r.status, 302);
	assert_non_null(strstr(r.detail, "/redirect-target not followed"));
	/* one request, the redirect's: the Location was not fetched */
	assert_int_equal(log_lines(), before + 1);
	assert_null(strstr(log_since(before), "redirect-target"));
	o.path = "/missing";
	run_fetch(&o, &r);
	expect(&r, FETCH_E_HTTP, "HTTP 404");
	assert_int_equal(r.status, 404);
}

static void test_live_wrong_type(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/html", &a, 1);
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_E_TYPE, "Content-Type text/html, text/plain required");
	assert_int_equal(r.status, 200);
	o.content_type = NULL; /* any type */
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	assert_int_equal(r.len, 13);
	free(r.body);
}

static void wait_log(size_t from, const char *what, int64_t ms)
{
	int64_t until = now_ms() + ms;
	while (!strstr(log_since(from), what)) {
		if (now_ms() > until)
			fail_msg("the server did not log \"%s\"; log: %s", what, log_since(from));
		usleep(10000);
	}
}

static void test_live_huge_body(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/huge", &a, 1);
	size_t before = log_lines();
	int64_t t0 = now_ms();
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_E_SIZE, "chunked body above the limit 65536");
	assert_int_equal(r.status, 200);
	/* it stopped early: the server could not send its 64 MiB */
	wait_log(before, "huge-", 10000);
	const char *l = log_since(before);
	if (!strstr(l, "huge-aborted") || strstr(l, "huge-complete"))
		fail_msg("the server sent everything: %s", l);
	assert_true(r.at - t0 < 3000);
}

/* A TCP listener that never accepts (the kernel completes the handshakes). */
static int silent_listener(const char *ip, int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	assert_int_equal(inet_pton(AF_INET, ip, &sin.sin_addr), 1);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(fd, 16), 0);
	return fd;
}

static void test_live_timeout(void **state)
{
	(void)state;
	need_live();
	/* accepted by the kernel, never answered: the TLS handshake waits */
	int port = free_port();
	int fd = silent_listener("127.0.0.1", port);
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", &a, 1);
	o.port = (uint16_t)port;
	o.timeout_ms = 600;
	int64_t t0 = now_ms();
	struct res r;
	run_fetch(&o, &r);
	int64_t took = r.at - t0;
	close(fd);
	expect(&r, FETCH_E_TIMEOUT, "timed out after 600 ms, in the TLS handshake");
	if (took < 590 || took > 600 + 400)
		fail_msg("timed out after %lld ms, expected 600 (+400)", (long long)took);
	/* a server that reads the request and never answers */
	o = opts_for(SRV_GOOD, "/silent", &a, 1);
	o.timeout_ms = 700;
	t0 = now_ms();
	run_fetch(&o, &r);
	took = r.at - t0;
	expect(&r, FETCH_E_TIMEOUT, "timed out after 700 ms, waiting for the response");
	if (took < 690 || took > 700 + 400)
		fail_msg("timed out after %lld ms, expected 700 (+400)", (long long)took);
}

/* A peer that is not a TLS server: it answers the ClientHello in plain HTTP, or closes. */
static void test_live_not_tls(void **state)
{
	(void)state;
	need_live();
	static const char *const answers[] = { "HTTP/1.1 400 Bad Request\r\n\r\n", "" };
	static const char *const want[] = { "TLS handshake failed",
					    "TLS handshake: connection closed by the server" };
	for (int i = 0; i < 2; i++) {
		int port = free_port();
		int lfd = silent_listener("127.0.0.1", port);
		struct sockaddr_storage a = v4("127.0.0.1");
		struct fetch_opts o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", &a, 1);
		o.port = (uint16_t)port;
		uv_loop_t loop;
		assert_int_equal(uv_loop_init(&loop), 0);
		struct res r;
		memset(&r, 0, sizeof r);
		r.f = fetch_start(&loop, &o, on_done, &r);
		assert_non_null(r.f);
		int fd = -1;
		int64_t until = now_ms() + 5000;
		while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) < 0) {
			uv_run(&loop, UV_RUN_NOWAIT);
			assert_true(now_ms() < until);
			usleep(1000);
		}
		char hello[512];
		while (recv(fd, hello, sizeof hello, 0) <= 0) { /* the ClientHello arrived */
			uv_run(&loop, UV_RUN_NOWAIT);
			assert_true(now_ms() < until);
			usleep(1000);
		}
		assert_int_equal(send(fd, answers[i], strlen(answers[i]), 0), (ssize_t)strlen(answers[i]));
		close(fd);
		uv_run(&loop, UV_RUN_DEFAULT);
		close(lfd);
		assert_int_equal(r.calls, 1);
		assert_int_equal(uv_loop_close(&loop), 0);
		expect(&r, FETCH_E_TLS, want[i]);
	}
}

static void test_live_second_address(void **state)
{
	(void)state;
	need_live();
	/* 127.0.0.2 on the good server's port: nothing listens there (refused) */
	struct sockaddr_storage a[2] = { v4("127.0.0.2"), v4("127.0.0.1") };
	struct fetch_opts o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", a, 2);
	struct res r;
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	assert_memory_equal(r.body, policy, r.len);
	free(r.body);
	/* IPv6 refused first (::1 listens on good6's port, not on good's), then IPv4 */
	struct sockaddr_storage b[2] = { v6("::1"), v4("127.0.0.1") };
	o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", b, 2);
	run_fetch(&o, &r);
	expect(&r, FETCH_OK, NULL);
	free(r.body);
	/* every address refused: FETCH_E_CONNECT naming each */
	struct sockaddr_storage c[2] = { v4("127.0.0.2"), v4("127.0.0.3") };
	o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", c, 2);
	o.port = (uint16_t)free_port();
	run_fetch(&o, &r);
	char want[200];
	snprintf(want, sizeof want,
		 "connect 127.0.0.2:%d: connection refused; 127.0.0.3:%d: connection refused",
		 o.port, o.port);
	expect(&r, FETCH_E_CONNECT, want);
	assert_int_equal(r.status, 0);
}

/* The first address drops SYNs (a listener whose accept queue is full): it gets its share
 * of the time, then the second one is tried, well before the whole timeout. */
static void test_live_blackhole_first(void **state)
{
	(void)state;
	need_live();
	int port = server_port[SRV_GOOD];
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(lfd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	inet_pton(AF_INET, "127.0.0.3", &sin.sin_addr);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(lfd, 0), 0);
	int fill[3];
	for (int i = 0; i < 3; i++) { /* the queue takes one; the others wait in SYN_SENT */
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		assert_true(fill[i] >= 0);
		connect(fill[i], (struct sockaddr *)&sin, sizeof sin);
	}
	/* the first filler's handshake completed: the queue is full from here on */
	struct pollfd pfd = { .fd = fill[0], .events = POLLOUT };
	assert_int_equal(poll(&pfd, 1, 2000), 1);
	int soerr = -1;
	socklen_t sl = sizeof soerr;
	assert_int_equal(getsockopt(fill[0], SOL_SOCKET, SO_ERROR, &soerr, &sl), 0);
	assert_int_equal(soerr, 0);
	struct sockaddr_storage a[2] = { v4("127.0.0.3"), v4("127.0.0.1") };
	struct fetch_opts o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", a, 2);
	o.timeout_ms = 3000;
	int64_t t0 = now_ms();
	struct res r;
	run_fetch(&o, &r);
	int64_t took = r.at - t0;
	for (int i = 0; i < 3; i++)
		close(fill[i]);
	close(lfd);
	expect(&r, FETCH_OK, NULL);
	free(r.body);
	/* 1500 ms for the first address, then a quick fetch */
	if (took < 1400 || took > 2700)
		fail_msg("took %lld ms, expected about 1500", (long long)took);
}

/* ------------------------------------------------------------------ cancel, API */

static void test_cancel(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/silent", &a, 1);
	struct res r;
	memset(&r, 0, sizeof r);
	uv_loop_t loop;
	assert_int_equal(uv_loop_init(&loop), 0);

	/* at once */
	r.f = fetch_start(&loop, &o, on_done, &r);
	assert_non_null(r.f);
	fetch_cancel(r.f);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(r.calls, 0);

	/* once the request reached the server, with the response pending */
	size_t before = log_lines();
	r.f = fetch_start(&loop, &o, on_done, &r);
	assert_non_null(r.f);
	int64_t until = now_ms() + 5000;
	while (!strstr(log_since(before), "/silent")) {
		uv_run(&loop, UV_RUN_NOWAIT);
		assert_true(now_ms() < until);
		usleep(2000);
	}
	fetch_cancel(r.f);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(r.calls, 0);

	/* inside the callback: a no-op */
	o.path = "/.well-known/mta-sts.txt";
	r.cancel_in_cb = 1;
	r.f = fetch_start(&loop, &o, on_done, &r);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(r.calls, 1);
	expect(&r, FETCH_OK, NULL);
	free(r.body);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_api_errors(void **state)
{
	(void)state;
	need_live();
	struct sockaddr_storage a = v4("127.0.0.1");
	struct fetch_opts o = opts_for(SRV_GOOD, "/.well-known/mta-sts.txt", &a, 1);
	uv_loop_t loop;
	assert_int_equal(uv_loop_init(&loop), 0);
	struct res r;
	memset(&r, 0, sizeof r);
	/* malformed options: NULL, EINVAL, no callback */
	const char *bad_hosts[] = { "", "a b", "evil\r\nX: y", "a/b", NULL };
	for (size_t i = 0; i < sizeof bad_hosts / sizeof bad_hosts[0]; i++) {
		struct fetch_opts b = o;
		b.host = bad_hosts[i];
		errno = 0;
		assert_null(fetch_start(&loop, &b, on_done, &r));
		assert_int_equal(errno, EINVAL);
	}
	const char *bad_paths[] = { "", "x", "/a b", "/a\r\nHost: evil", NULL };
	for (size_t i = 0; i < sizeof bad_paths / sizeof bad_paths[0]; i++) {
		struct fetch_opts b = o;
		b.path = bad_paths[i];
		errno = 0;
		assert_null(fetch_start(&loop, &b, on_done, &r));
		assert_int_equal(errno, EINVAL);
	}
	struct fetch_opts b = o;
	b.ctx = NULL;
	assert_null(fetch_start(&loop, &b, on_done, &r));
	assert_int_equal(errno, EINVAL);
	assert_int_equal(r.calls, 0);
	/* no address, or one libuv refuses at once: the callback still comes from the loop */
	b = o;
	b.naddrs = 0;
	b.addrs = NULL;
	run_fetch(&b, &r);
	expect(&r, FETCH_E_CONNECT, "connect: no address");
	struct sockaddr_storage unix_addr;
	memset(&unix_addr, 0, sizeof unix_addr);
	unix_addr.ss_family = AF_UNIX;
	b = o;
	b.addrs = &unix_addr;
	run_fetch(&b, &r);
	expect(&r, FETCH_E_CONNECT, "connect (address family 1)");
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(180);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parser_table),
		cmocka_unit_test(test_parser_bounds),
		cmocka_unit_test(test_parser_edges),
		cmocka_unit_test(test_type_matches),
		cmocka_unit_test(test_live_good),
		cmocka_unit_test(test_live_big_body),
		cmocka_unit_test(test_live_ipv6),
		cmocka_unit_test(test_live_chunked),
		cmocka_unit_test(test_live_close_delimited),
		cmocka_unit_test(test_live_cert_errors),
		cmocka_unit_test(test_live_redirect_not_followed),
		cmocka_unit_test(test_live_wrong_type),
		cmocka_unit_test(test_live_huge_body),
		cmocka_unit_test(test_live_timeout),
		cmocka_unit_test(test_live_not_tls),
		cmocka_unit_test(test_live_second_address),
		cmocka_unit_test(test_live_blackhole_first),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_api_errors),
	};
	return cmocka_run_group_tests_name("fetch", tests, group_setup, group_teardown);
}
