/* fetch.h - a small asynchronous HTTPS GET client on a libuv loop, for MTA-STS policy
 * files (RFC 8461 §3.3), and the HTTP/1.1 response parser it uses.
 *
 * Contract: one fetch is one TCP connection (the caller's addresses tried in order), one
 * TLS handshake whose certificate must be valid for the host name (RFC 6125, the
 * context's trust store), one "GET PATH HTTP/1.1" with "Connection: close", and one
 * response read until its body is complete. Redirects are never followed (RFC 8461 §3.3:
 * a 3xx is a failure), nor are cookies or compression used. Everything is non-blocking
 * on the caller's loop; one timer bounds the whole fetch, connect to last byte. The
 * callback runs exactly once, from the loop, after the fetch's handles are closed (never
 * from inside fetch_start), unless the fetch was cancelled first.
 *
 * Response framing: Content-Length and chunked bodies are complete when their last byte
 * arrived; what the server does afterwards (close_notify or not) does not matter. A body
 * without either (HTTP/1.0, or no length) ends with the connection, and is accepted only
 * when the server ended it with a TLS close_notify: a bare TCP FIN (or a reset) could be
 * an attacker truncating the policy, so it is FETCH_E_HTTP "response truncated".
 *
 * The parser (struct fetch_parser) is pure: no I/O, bounded memory (the header block at
 * most FETCH_HEADER_MAX bytes, the body at most max_body, chunk framing bounded too). It
 * is fed the response bytes in pieces of any size and gives the same result for every
 * way of splitting them. */
#ifndef STP_FETCH_H
#define STP_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct tls_ctx;
struct fetch;

#define FETCH_BODY_DEFAULT 65536    /* max_body when 0: STS_POLICY_MAX */
#define FETCH_TIMEOUT_DEFAULT 10000 /* timeout_ms when 0 */
#define FETCH_TIMEOUT_MAX 86400000  /* timeout_ms above: this (a day) */
#define FETCH_HEADER_MAX 8192       /* status line and header fields (with 1xx responses
				       before them), and separately the chunked trailer */
#define FETCH_CHUNK_LINE_MAX 1024   /* one chunk-size line with its extensions */
#define FETCH_FRAMING_MAX 65536     /* all chunk-size lines and chunk CRLFs of one body */
#define FETCH_TYPE_MAX 128          /* Content-Type value kept (longer: never matches) */
#define FETCH_LOCATION_MAX 100      /* Location value kept for the detail line */

struct fetch_opts {
	const char *host;  /* the name: SNI, the certificate must be valid for it (RFC 6125,
			      tls_conn_check TLS_CHECK_VERIFY), and the Host header; at most
			      253 bytes, no control character, space or '/'; a trailing dot
			      is dropped */
	const char *path;  /* "/.well-known/mta-sts.txt": starts with '/', no control
			      character or space */
	const struct sockaddr_storage *addrs; /* AF_INET or AF_INET6, their port ignored */
	size_t naddrs;     /* tried in order on connect failure; each attempt gets an equal
			      share of the time left (an address that drops SYNs does not eat
			      the whole timeout); 0: FETCH_E_CONNECT */
	uint16_t port;     /* 0: 443. The Host header names it when it is not 443. */
	struct tls_ctx *ctx; /* client context WITH a trust store (tls_ctx_client_new .ca).
				Required: tls.c verifies no chain without one (only the name
				would be checked), and fetch.c cannot tell */
	uint64_t timeout_ms; /* whole fetch, connect to last byte; 0: FETCH_TIMEOUT_DEFAULT */
	size_t max_body;   /* 0: FETCH_BODY_DEFAULT */
	const char *content_type; /* required media type, e.g. "text/plain": compared with the
				     response's type/subtype case-insensitively, parameters
				     ("; charset=utf-8") allowed; at most FETCH_TYPE_MAX bytes;
				     NULL: any, or none */
};

enum fetch_error {
	FETCH_OK = 0,
	FETCH_E_CONNECT, /* no address connected */
	FETCH_E_TLS,     /* the TLS handshake failed (alert, EOF or reset during it) */
	FETCH_E_CERT,    /* certificate not valid for host (not trusted, expired, name
			    mismatch): MTA-STS reports this as sts-webpki-invalid */
	FETCH_E_TIMEOUT, /* timeout_ms passed before the response was complete */
	FETCH_E_HTTP,    /* malformed or truncated response, or a status other than 200
			    (redirects are NOT followed: RFC 8461 §3.3) */
	FETCH_E_TYPE,    /* Content-Type not the one required */
	FETCH_E_SIZE,    /* body larger than max_body (reading stops at once) */
	FETCH_E_NOMEM,
	FETCH_E_IO,      /* the connection failed after the handshake: reset, TLS error,
			    write error */
};

struct fetch_result {
	enum fetch_error error;
	char detail[200]; /* one line of printable ASCII for the log: "HTTP 404",
			     "certificate-host-mismatch: localhost, certificate ...",
			     "connect 127.0.0.1:443: connection refused"; "" on OK */
	int http_status;  /* 0 when no status line was read */
	const char *body; /* FETCH_OK only (else NULL); valid during the callback */
	size_t len;
};

typedef void fetch_cb(void *arg, const struct fetch_result *r);

/* Starts the fetch (copies everything it needs from o). NULL with errno ENOMEM, or EINVAL
 * for options that break the rules above (host, path, ctx missing or malformed); cb is
 * not called then. Otherwise cb is called exactly once, never from inside fetch_start,
 * unless fetch_cancel came first. */
struct fetch *fetch_start(uv_loop_t *loop, const struct fetch_opts *o, fetch_cb *cb, void *arg);
/* cb will not be called; the handles are closed and the memory freed once the loop has
 * run their close callbacks. Only before cb ran (a no-op from inside cb). */
void fetch_cancel(struct fetch *f);
const char *fetch_error_name(enum fetch_error e); /* "ok", "connect", "tls", "cert", ... */

/* ------------------------------------------------------------------ response parser */

/* An incremental HTTP/1.1 response parser. Rules (RFC 9110, 9112):
 * - status line "HTTP/1.D SP 3DIGIT [SP reason]" (HTTP/1.0 and 1.1; another minor version
 *   is read as 1.1); lines end in CRLF or LF; 1xx responses before the final one are
 *   skipped (101 is an error); a status other than 200 ends parsing at the end of its
 *   header block: FETCH_E_HTTP "HTTP 404" (3xx: with the Location, not followed);
 * - header fields "token: value", no space before the colon, no control characters
 *   but HTAB in values; folded lines (obs-fold) are refused; all header blocks together
 *   at most FETCH_HEADER_MAX bytes;
 * - Content-Length: digits; several (fields or a list) must all be equal; above max_body
 *   is FETCH_E_SIZE as soon as the header block is read;
 * - Transfer-Encoding: exactly "chunked" (any other coding, a list, or HTTP/1.0 is an
 *   error; with Content-Length too, an error: request smuggling); chunk-size lines at
 *   most FETCH_CHUNK_LINE_MAX bytes with extensions ignored, sizes hexadecimal and never
 *   past max_body (FETCH_E_SIZE before the chunk's data), all framing together at most
 *   FETCH_FRAMING_MAX bytes, trailer fields read (as header fields, FETCH_HEADER_MAX)
 *   and ignored;
 * - neither: the body ends with the connection (fetch_parser_eof), at most max_body;
 * - Content-Type checked against the required type after a 200's header block
 *   (FETCH_E_TYPE), before the body is read.
 * Bytes after a complete response are ignored. */
struct fetch_parser {
	/* results, read-only for the caller */
	enum fetch_error error; /* meaningful once fetch_parser_feed/eof returned 1 */
	char detail[200];
	int status;             /* of the final (non-1xx) response; 0 before its status line */
	int http10;             /* it was HTTP/1.0 */
	char content_type[FETCH_TYPE_MAX + 1]; /* "" when absent */
	char location[FETCH_LOCATION_MAX + 1];
	uint8_t *body;          /* decoded body (malloc'd), len bytes; FETCH_OK: complete,
				   NUL-terminated (never NULL) */
	size_t len;
	/* configuration (fetch_parser_init) */
	size_t max_body;
	const char *want_type;
	/* state, private */
	int state, done;
	char line[FETCH_HEADER_MAX]; /* the line being read: status, field, chunk size */
	size_t line_len, head_total, framing;
	uint64_t remaining;     /* Content-Length or chunk bytes still to come */
	size_t cap;
	int type_seen, type_long, te_chunked, te_other, cl_seen, cl_bad;
	uint64_t cl;
};

/* max_body 0: FETCH_BODY_DEFAULT (at most SIZE_MAX / 4); want_type NULL: any (kept by
 * pointer, must outlive p). */
void fetch_parser_init(struct fetch_parser *p, size_t max_body, const char *want_type);
/* Consumes len bytes (a piece of the response, in order). 0: more is needed; 1: the
 * response is finished, p->error (FETCH_OK, or FETCH_E_HTTP/TYPE/SIZE/NOMEM) and
 * p->detail say how, and later calls return 1 and consume nothing. */
int fetch_parser_feed(struct fetch_parser *p, const void *data, size_t len);
/* The connection ended: close_notify 1 for a TLS close_notify, 0 for a TCP end without
 * it. Always 1: a close-delimited body is complete (with close_notify), anything else
 * unfinished is FETCH_E_HTTP "response truncated ..." (or "... no response"). */
int fetch_parser_eof(struct fetch_parser *p, int close_notify);
void fetch_parser_free(struct fetch_parser *p);

/* 1 when the Content-Type value's type/subtype (before any ';', whitespace trimmed)
 * equals want, case-insensitively; else 0. */
int fetch_type_matches(const char *value, const char *want);

#endif
