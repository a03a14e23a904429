/* fetch.c - asynchronous HTTPS GET for MTA-STS policy files, and its response parser
 * (see fetch.h). */
#include "fetch.h"

#include "mtasts.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(FETCH_BODY_DEFAULT == STS_POLICY_MAX, "the default body bound is the policy's");
_Static_assert(FETCH_CHUNK_LINE_MAX <= FETCH_HEADER_MAX, "chunk lines use the line buffer");

const char *fetch_error_name(enum fetch_error e)
{
	switch (e) {
	case FETCH_OK: return "ok";
	case FETCH_E_CONNECT: return "connect";
	case FETCH_E_TLS: return "tls";
	case FETCH_E_CERT: return "cert";
	case FETCH_E_TIMEOUT: return "timeout";
	case FETCH_E_HTTP: return "http";
	case FETCH_E_TYPE: return "content-type";
	case FETCH_E_SIZE: return "size";
	case FETCH_E_NOMEM: return "nomem";
	case FETCH_E_IO: return "io";
	}
	return "unknown";
}

/* ------------------------------------------------------------------ response parser */

enum {
	ST_STATUS,     /* reading a status line */
	ST_HEADERS,    /* reading header field lines */
	ST_BODY_LEN,   /* Content-Length body: remaining bytes */
	ST_BODY_CLOSE, /* body until the connection ends */
	ST_CHUNK_SIZE, /* reading a chunk-size line */
	ST_CHUNK_DATA, /* remaining bytes of a chunk */
	ST_CHUNK_END,  /* the CRLF after a chunk's data */
	ST_TRAILER,    /* trailer field lines */
};

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int is_ows(int c)
{
	return c == ' ' || c == '\t';
}

static int is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* tchar (RFC 9110 §5.6.2) */
static int is_tchar(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* field-vchar, SP, HTAB: anything but controls (obs-text allowed) */
static int is_value_char(int c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int hexval(int c)
{
	if (is_digit(c))
		return c - '0';
	c = lower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int name_is(const char *s, size_t n, const char *want)
{
	size_t k = strlen(want);
	if (n != k)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)s[i]) != want[i])
			return 0;
	return 1;
}

/* A detail line for the log: printable ASCII only (header values may hold obs-text, a
 * certificate's subject anything). */
static void printable(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			*s = '?';
}

/* Ends parsing with err and a detail line; returns 1 (the "finished" of feed/eof). */
static int pfail(struct fetch_parser *p, enum fetch_error err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int pfail(struct fetch_parser *p, enum fetch_error err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(p->detail, sizeof(p->detail), fmt, ap);
	va_end(ap);
	printable(p->detail);
	p->error = err;
	p->done = 1;
	return 1;
}

static int pdone(struct fetch_parser *p)
{
	p->error = FETCH_OK;
	p->detail[0] = '\0';
	p->done = 1;
	if (!p->body) { /* an empty body is still a string */
		p->body = malloc(1);
		if (!p->body)
			return pfail(p, FETCH_E_NOMEM, "out of memory");
		p->cap = 1;
	}
	p->body[p->len] = '\0';
	return 1;
}

/* Room for need more body bytes and a NUL; the caller checked need against max_body. */
static int reserve(struct fetch_parser *p, size_t need)
{
	size_t want = p->len + need + 1;
	if (want <= p->cap)
		return 0;
	size_t cap = p->cap ? p->cap : 1024;
	while (cap < want)
		cap *= 2;
	if (cap > p->max_body + 1)
		cap = p->max_body + 1;
	if (cap < want)
		cap = want;
	uint8_t *b = realloc(p->body, cap);
	if (!b)
		return -ENOMEM;
	p->body = b;
	p->cap = cap;
	return 0;
}

static int append(struct fetch_parser *p, const uint8_t *d, size_t n)
{
	if (reserve(p, n) < 0)
		return -ENOMEM;
	memcpy(p->body + p->len, d, n);
	p->len += n;
	return 0;
}

/* Forgets the fields of an interim (1xx) response. */
static void reset_fields(struct fetch_parser *p)
{
	p->status = 0;
	p->http10 = 0;
	p->content_type[0] = '\0';
	p->location[0] = '\0';
	p->type_seen = p->type_long = p->te_chunked = p->te_other = 0;
	p->cl_seen = p->cl_bad = 0;
	p->cl = 0;
}

void fetch_parser_init(struct fetch_parser *p, size_t max_body, const char *want_type)
{
	memset(p, 0, sizeof(*p));
	p->max_body = max_body ? max_body : FETCH_BODY_DEFAULT;
	if (p->max_body > SIZE_MAX / 4) /* so that max_body + 1 and doubling cannot wrap */
		p->max_body = SIZE_MAX / 4;
	p->want_type = want_type;
	p->state = ST_STATUS;
}

void fetch_parser_free(struct fetch_parser *p)
{
	free(p->body);
	p->body = NULL;
	p->len = p->cap = 0;
}

int fetch_type_matches(const char *value, const char *want)
{
	const char *e = strchr(value, ';');
	size_t n = e ? (size_t)(e - value) : strlen(value);
	while (n && is_ows((unsigned char)value[0]))
		value++, n--;
	while (n && is_ows((unsigned char)value[n - 1]))
		n--;
	size_t k = strlen(want);
	if (n != k || k == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)value[i]) != lower((unsigned char)want[i]))
			return 0;
	return 1;
}

/* "HTTP/1.D SP 3DIGIT [SP reason-phrase]" */
static int parse_status(struct fetch_parser *p, const char *l, size_t n)
{
	if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || !is_digit((unsigned char)l[7]) ||
	    l[8] != ' ' || !is_digit((unsigned char)l[9]) || !is_digit((unsigned char)l[10]) ||
	    !is_digit((unsigned char)l[11]) || (n > 12 && l[12] != ' '))
		return pfail(p, FETCH_E_HTTP, "malformed status line");
	for (size_t i = 13; i < n; i++)
		if (!is_value_char((unsigned char)l[i]))
			return pfail(p, FETCH_E_HTTP, "malformed status line");
	int status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
	if (status < 100)
		return pfail(p, FETCH_E_HTTP, "malformed status line (status %03d)", status);
	p->status = status;
	p->http10 = l[7] == '0';
	p->state = ST_HEADERS;
	return 0;
}

/* A Content-Length value: 1*DIGIT, or a list of them; every value must be the same. */
static void content_length(struct fetch_parser *p, const char *v, size_t n)
{
	size_t i = 0;
	do {
		while (i < n && is_ows((unsigned char)v[i]))
			i++;
		if (i == n || !is_digit((unsigned char)v[i])) {
			p->cl_bad = 1;
			return;
		}
		uint64_t x = 0;
		while (i < n && is_digit((unsigned char)v[i])) {
			/* saturating: anything this large is above every max_body */
			x = x > (UINT64_MAX - 9) / 10 ? UINT64_MAX : x * 10 + (uint64_t)(v[i] - '0');
			i++;
		}
		while (i < n && is_ows((unsigned char)v[i]))
			i++;
		if (i < n && v[i] != ',') {
			p->cl_bad = 1;
			return;
		}
		if (p->cl_seen && x != p->cl)
			p->cl_bad = 2;
		p->cl = x;
		p->cl_seen = 1;
	} while (i++ < n);
}

/* A Transfer-Encoding list: counts "chunked" and the other codings. */
static void transfer_encoding(struct fetch_parser *p, const char *v, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i++;
		while (s < e && is_ows((unsigned char)v[s]))
			s++;
		while (e > s && is_ows((unsigned char)v[e - 1]))
			e--;
		if (e == s)
			continue; /* empty list element */
		if (name_is(v + s, e - s, "chunked"))
			p->te_chunked++;
		else
			p->te_other++;
	}
}

/* A field line "name: value" of a header block (trailer 0) or a trailer (1). */
static int parse_field(struct fetch_parser *p, const char *l, size_t n, int trailer)
{
	if (is_ows((unsigned char)l[0]))
		return pfail(p, FETCH_E_HTTP, "folded header line (obs-fold) refused");
	size_t k = 0;
	while (k < n && is_tchar((unsigned char)l[k]))
		k++;
	if (k == 0 || k == n || l[k] != ':')
		return pfail(p, FETCH_E_HTTP, "malformed %s field", trailer ? "trailer" : "header");
	size_t s = k + 1, e = n;
	while (s < e && is_ows((unsigned char)l[s]))
		s++;
	while (e > s && is_ows((unsigned char)l[e - 1]))
		e--;
	for (size_t i = s; i < e; i++)
		if (!is_value_char((unsigned char)l[i]))
			return pfail(p, FETCH_E_HTTP, "control character in the %.*s field",
				     (int)(k > 40 ? 40 : k), l);
	if (trailer)
		return 0; /* trailer fields are read and ignored */
	const char *v = l + s;
	size_t vn = e - s;
	if (name_is(l, k, "content-length")) {
		content_length(p, v, vn);
	} else if (name_is(l, k, "transfer-encoding")) {
		transfer_encoding(p, v, vn);
	} else if (name_is(l, k, "content-type")) {
		int longer = vn > FETCH_TYPE_MAX;
		size_t keep = longer ? FETCH_TYPE_MAX : vn;
		if (p->type_seen && (longer != p->type_long || strlen(p->content_type) != keep ||
				     memcmp(p->content_type, v, keep) != 0))
			return pfail(p, FETCH_E_HTTP, "several different Content-Type fields");
		memcpy(p->content_type, v, keep);
		p->content_type[keep] = '\0';
		p->type_seen = 1;
		p->type_long = longer;
	} else if (name_is(l, k, "location")) {
		size_t keep = vn > FETCH_LOCATION_MAX ? FETCH_LOCATION_MAX : vn;
		memcpy(p->location, v, keep);
		p->location[keep] = '\0';
	}
	return 0;
}

/* The empty line after a header block: decide what follows. */
static int end_of_headers(struct fetch_parser *p)
{
	if (p->status < 200) {
		if (p->status == 101)
			return pfail(p, FETCH_E_HTTP, "HTTP 101 (protocol switch refused)");
		reset_fields(p); /* an interim response: the final one follows */
		p->state = ST_STATUS;
		return 0;
	}
	if (p->status != 200) {
		if (p->status >= 300 && p->status < 400 && p->location[0])
			return pfail(p, FETCH_E_HTTP, "HTTP %d (redirect to %s not followed)",
				     p->status, p->location);
		return pfail(p, FETCH_E_HTTP, "HTTP %d", p->status);
	}
	int te = p->te_chunked || p->te_other;
	if (te && p->http10)
		return pfail(p, FETCH_E_HTTP, "Transfer-Encoding in an HTTP/1.0 response");
	if (te && (p->te_chunked != 1 || p->te_other))
		return pfail(p, FETCH_E_HTTP, "unsupported Transfer-Encoding (only chunked)");
	if (te && p->cl_seen)
		return pfail(p, FETCH_E_HTTP, "both Transfer-Encoding and Content-Length");
	if (p->cl_bad == 2)
		return pfail(p, FETCH_E_HTTP, "conflicting Content-Length values");
	if (p->cl_bad)
		return pfail(p, FETCH_E_HTTP, "invalid Content-Length");
	if (p->want_type) {
		if (!p->type_seen)
			return pfail(p, FETCH_E_TYPE, "no Content-Type, %s required", p->want_type);
		if (p->type_long || !fetch_type_matches(p->content_type, p->want_type))
			return pfail(p, FETCH_E_TYPE, "Content-Type %s%s, %s required",
				     p->content_type, p->type_long ? "..." : "", p->want_type);
	}
	if (p->cl_seen) {
		if (p->cl > p->max_body)
			return pfail(p, FETCH_E_SIZE, "Content-Length %llu above the limit %zu",
				     (unsigned long long)p->cl, p->max_body);
		if (p->cl == 0)
			return pdone(p);
		if (reserve(p, (size_t)p->cl) < 0)
			return pfail(p, FETCH_E_NOMEM, "out of memory");
		p->remaining = p->cl;
		p->state = ST_BODY_LEN;
	} else if (te) {
		p->state = ST_CHUNK_SIZE;
	} else {
		p->state = ST_BODY_CLOSE;
	}
	return 0;
}

/* "1*HEXDIG [BWS ';' chunk-ext]" */
static int chunk_size_line(struct fetch_parser *p, const char *l, size_t n)
{
	size_t i = 0, digits = 0;
	uint64_t size = 0;
	while (i < n && hexval((unsigned char)l[i]) >= 0) {
		if (size > (UINT64_MAX >> 4))
			size = UINT64_MAX; /* saturated: above every limit */
		else
			size = size * 16 + (uint64_t)hexval((unsigned char)l[i]);
		i++, digits++;
	}
	if (!digits)
		return pfail(p, FETCH_E_HTTP, "malformed chunk size");
	while (i < n && is_ows((unsigned char)l[i]))
		i++;
	if (i < n && l[i] != ';')
		return pfail(p, FETCH_E_HTTP, "malformed chunk size");
	for (; i < n; i++) /* extensions: ignored, but no controls */
		if (!is_value_char((unsigned char)l[i]))
			return pfail(p, FETCH_E_HTTP, "control character in a chunk extension");
	if (size == 0) {
		p->state = ST_TRAILER;
		p->head_total = 0;
		return 0;
	}
	if (size > p->max_body - p->len)
		return pfail(p, FETCH_E_SIZE, "chunked body above the limit %zu", p->max_body);
	p->remaining = size;
	p->state = ST_CHUNK_DATA;
	return 0;
}

/* One complete line (terminator stripped) in a line-reading state. */
static int line_done(struct fetch_parser *p, const char *l, size_t n)
{
	switch (p->state) {
	case ST_STATUS:
		return parse_status(p, l, n);
	case ST_HEADERS:
		return n == 0 ? end_of_headers(p) : parse_field(p, l, n, 0);
	case ST_CHUNK_SIZE:
		return chunk_size_line(p, l, n);
	case ST_CHUNK_END:
		if (n != 0)
			return pfail(p, FETCH_E_HTTP, "chunk data longer than its size");
		p->state = ST_CHUNK_SIZE;
		return 0;
	case ST_TRAILER:
		return n == 0 ? pdone(p) : parse_field(p, l, n, 1);
	}
	return pfail(p, FETCH_E_HTTP, "internal parser state");
}

/* Reads from d[*i] up to the end of a line into p->line (at most max bytes with its
 * terminator, counted in *total). 1 when a line is complete (in p->line, p->line_len,
 * terminator stripped), 0 when d ran out, -1 when the line is too long. */
static int take_line(struct fetch_parser *p, const uint8_t *d, size_t len, size_t *i,
		     size_t *total, size_t max)
{
	const uint8_t *nl = memchr(d + *i, '\n', len - *i);
	size_t n = nl ? (size_t)(nl - (d + *i)) + 1 : len - *i;
	if (*total + n > max)
		return -1;
	memcpy(p->line + p->line_len, d + *i, n);
	p->line_len += n;
	*total += n;
	*i += n;
	if (!nl)
		return 0;
	p->line_len--; /* the LF */
	if (p->line_len && p->line[p->line_len - 1] == '\r')
		p->line_len--;
	return 1;
}

int fetch_parser_feed(struct fetch_parser *p, const void *data, size_t len)
{
	const uint8_t *d = data;
	size_t i = 0;
	while (!p->done && i < len) {
		size_t n = len - i;
		switch (p->state) {
		case ST_BODY_LEN:
		case ST_CHUNK_DATA:
			if (n > p->remaining)
				n = (size_t)p->remaining;
			if (append(p, d + i, n) < 0)
				return pfail(p, FETCH_E_NOMEM, "out of memory");
			i += n;
			p->remaining -= n;
			if (p->remaining == 0) {
				if (p->state == ST_BODY_LEN)
					return pdone(p);
				p->state = ST_CHUNK_END;
				p->line_len = 0;
			}
			continue;
		case ST_BODY_CLOSE:
			if (n > p->max_body - p->len)
				return pfail(p, FETCH_E_SIZE, "body above the limit %zu", p->max_body);
			if (append(p, d + i, n) < 0)
				return pfail(p, FETCH_E_NOMEM, "out of memory");
			i += n;
			continue;
		}
		/* line states */
		int rc;
		if (p->state == ST_CHUNK_SIZE || p->state == ST_CHUNK_END) {
			int end = p->state == ST_CHUNK_END;
			size_t line_total = p->line_len, at = i;
			rc = take_line(p, d, len, &i, &line_total, end ? 2 : FETCH_CHUNK_LINE_MAX);
			if (rc < 0 && end)
				return pfail(p, FETCH_E_HTTP, "chunk data longer than its size");
			if (rc < 0)
				return pfail(p, FETCH_E_HTTP, "chunk-size line over %d bytes",
					     FETCH_CHUNK_LINE_MAX);
			p->framing += i - at;
			if (p->framing > FETCH_FRAMING_MAX)
				return pfail(p, FETCH_E_HTTP, "chunk framing over %d bytes",
					     FETCH_FRAMING_MAX);
		} else {
			rc = take_line(p, d, len, &i, &p->head_total, FETCH_HEADER_MAX);
			if (rc < 0)
				return pfail(p, FETCH_E_HTTP, "%s over %d bytes",
					     p->state == ST_TRAILER ? "trailer" : "header block",
					     FETCH_HEADER_MAX);
		}
		if (rc == 0)
			break;
		size_t ln = p->line_len;
		p->line_len = 0;
		if (line_done(p, p->line, ln))
			return 1;
	}
	return p->done;
}

int fetch_parser_eof(struct fetch_parser *p, int close_notify)
{
	if (p->done)
		return 1;
	switch (p->state) {
	case ST_BODY_CLOSE:
		if (close_notify)
			return pdone(p);
		return pfail(p, FETCH_E_HTTP,
			     "response truncated: closed without TLS close_notify (body without "
			     "length, %zu bytes)", p->len);
	case ST_STATUS:
		if (p->head_total == 0)
			return pfail(p, FETCH_E_HTTP, "connection closed without a response");
		/* fall through */
	case ST_HEADERS:
		return pfail(p, FETCH_E_HTTP, "response truncated in the header block");
	case ST_BODY_LEN:
		return pfail(p, FETCH_E_HTTP, "response truncated: %zu of %llu body bytes", p->len,
			     (unsigned long long)p->cl);
	default:
		return pfail(p, FETCH_E_HTTP, "response truncated in the chunked body (%zu bytes)",
			     p->len);
	}
}

/* ------------------------------------------------------------------ the client */

/* Life of a fetch: the timer and (one at a time) a TCP handle are open; an address that
 * fails is closed and the next one tried from its close callback. finish() records the
 * result once and closes everything; when the last handle's close callback has run, cb
 * is called (unless cancelled) and the memory freed. So cb never runs inside fetch_start
 * and finds every handle closed. */
struct fetch {
	uv_loop_t *loop;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_connect_t creq;
	struct tls_conn *tls;
	struct tls_ctx *ctx;
	fetch_cb *cb;
	void *arg;
	struct sockaddr_storage *addrs;
	size_t naddrs, next;   /* next: addresses tried so far */
	uint64_t deadline, timeout;
	char host[STS_NAME_MAX + 1];
	char want_type[FETCH_TYPE_MAX + 1];
	char *request;
	size_t reqlen;
	size_t queued;         /* bytes in uv_write requests not completed */
	int handles;           /* open libuv handles (timer, tcp) */
	unsigned tcp_open : 1, tcp_closing : 1, timer_open : 1, connected : 1, handshook : 1,
		done : 1, cancelled : 1, in_cb : 1;
	struct fetch_parser parser;
	struct fetch_result res;
	char connect_err[160]; /* what each failed address said */
	uint8_t rbuf[65536];
	uint8_t pbuf[TLS_RECORD_MAX];
};

struct wreq {
	uv_write_t req;
	struct fetch *f;
	size_t len;
	uint8_t data[];
};

static void addr_text(const struct sockaddr_storage *a, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)a;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		snprintf(out, len, "%s:%u", ip, ntohs(s->sin_port));
	} else if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		snprintf(out, len, "[%s]:%u", ip, ntohs(s->sin6_port));
	} else {
		snprintf(out, len, "(address family %d)", a->ss_family);
	}
}

static void free_fetch(struct fetch *f)
{
	tls_conn_free(f->tls);
	fetch_parser_free(&f->parser);
	free(f->request);
	free(f->addrs);
	free(f);
}

/* A handle's close callback ran: the last one delivers the result and frees. */
static void handle_closed(struct fetch *f)
{
	if (--f->handles > 0)
		return;
	if (!f->cancelled) {
		f->in_cb = 1;
		f->cb(f->arg, &f->res);
	}
	free_fetch(f);
}

static void connect_next(struct fetch *f);

static void tcp_closed(uv_handle_t *h)
{
	struct fetch *f = h->data;
	f->tcp_open = f->tcp_closing = 0;
	f->connected = 0;
	if (f->done)
		handle_closed(f);
	else {
		f->handles--;
		connect_next(f);
	}
}

static void timer_closed(uv_handle_t *h)
{
	struct fetch *f = h->data;
	f->timer_open = 0;
	handle_closed(f);
}

static void close_tcp(struct fetch *f)
{
	if (!f->tcp_open || f->tcp_closing)
		return;
	f->tcp_closing = 1;
	uv_close((uv_handle_t *)&f->tcp, tcp_closed);
}

/* Records the result (once) and closes everything; the callback follows the closes. */
static void finish(struct fetch *f, enum fetch_error err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void finish(struct fetch *f, enum fetch_error err, const char *fmt, ...)
{
	if (f->done)
		return;
	f->done = 1;
	f->res.error = err;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->res.detail, sizeof(f->res.detail), fmt, ap);
	va_end(ap);
	printable(f->res.detail);
	f->res.http_status = f->parser.status;
	if (err == FETCH_OK) {
		f->res.body = (const char *)f->parser.body;
		f->res.len = f->parser.len;
	}
	close_tcp(f);
	if (f->timer_open)
		uv_close((uv_handle_t *)&f->timer, timer_closed);
}

static void finish_parsed(struct fetch *f)
{
	finish(f, f->parser.error, "%s", f->parser.detail);
}

static void write_cb(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct fetch *f = w->f;
	f->queued -= w->len;
	free(w);
	if (status < 0 && status != UV_ECANCELED)
		finish(f, FETCH_E_IO, "write: %s", uv_strerror(status));
}

/* Sends the TLS layer's output: 0, or -1 when the fetch failed (finish ran). */
static int flush(struct fetch *f)
{
	size_t n = tls_conn_out_len(f->tls);
	if (n == 0 || f->done)
		return f->done ? -1 : 0;
	const uint8_t *d = tls_conn_out_data(f->tls);
	size_t off = 0;
	if (f->queued == 0) {
		uv_buf_t b = uv_buf_init((char *)d, (unsigned)n);
		int rc = uv_try_write((uv_stream_t *)&f->tcp, &b, 1);
		if (rc > 0)
			off = (size_t)rc;
		else if (rc != UV_EAGAIN && rc != UV_ENOSYS) {
			tls_conn_out_consume(f->tls, n);
			finish(f, f->handshook ? FETCH_E_IO : FETCH_E_TLS, "write: %s",
			       uv_strerror(rc));
			return -1;
		}
	}
	if (off < n) {
		struct wreq *w = malloc(sizeof(*w) + (n - off));
		if (!w) {
			tls_conn_out_consume(f->tls, n);
			finish(f, FETCH_E_NOMEM, "out of memory");
			return -1;
		}
		w->f = f;
		w->len = n - off;
		memcpy(w->data, d + off, w->len);
		uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
		int rc = uv_write(&w->req, (uv_stream_t *)&f->tcp, &b, 1, write_cb);
		if (rc < 0) {
			free(w);
			tls_conn_out_consume(f->tls, n);
			finish(f, f->handshook ? FETCH_E_IO : FETCH_E_TLS, "write: %s",
			       uv_strerror(rc));
			return -1;
		}
		f->queued += w->len;
	}
	tls_conn_out_consume(f->tls, n);
	return 0;
}

/* The handshake is done: apply the certificate check, send the request. */
static int after_handshake(struct fetch *f)
{
	char why[160], subject[160], issuer[160];
	const char *host = f->host;
	const char *bad = tls_conn_check(f->tls, TLS_CHECK_VERIFY, &host, 1, NULL, 0, why,
					 sizeof(why));
	if (bad) {
		tls_conn_peer_names(f->tls, subject, sizeof(subject), issuer, sizeof(issuer));
		finish(f, FETCH_E_CERT, "%s: %s%scertificate %s from %s", bad, why,
		       why[0] ? ", " : "", subject[0] ? subject : "(none)",
		       issuer[0] ? issuer : "(none)");
		return -1;
	}
	if (tls_conn_write(f->tls, f->request, f->reqlen) < 0) {
		finish(f, FETCH_E_IO, "TLS write: %s", tls_conn_error_text(f->tls));
		return -1;
	}
	return flush(f);
}

/* New ciphertext arrived: handshake, then plaintext into the parser. */
static void progress(struct fetch *f)
{
	if (!f->handshook) {
		int rc = tls_conn_handshake(f->tls);
		if (flush(f) < 0 || rc == TLS_AGAIN)
			return;
		if (rc < 0) {
			const char *e = tls_conn_error_text(f->tls);
			finish(f, FETCH_E_TLS, "TLS handshake failed%s%s", e[0] ? ": " : "", e);
			return;
		}
		f->handshook = 1;
		if (after_handshake(f) < 0)
			return;
	}
	for (;;) {
		int n = tls_conn_read(f->tls, f->pbuf, sizeof(f->pbuf));
		if (flush(f) < 0)
			return;
		if (n > 0) {
			if (fetch_parser_feed(&f->parser, f->pbuf, (size_t)n)) {
				finish_parsed(f);
				return;
			}
		} else if (n == TLS_AGAIN) {
			return;
		} else if (n == TLS_CLOSED) {
			fetch_parser_eof(&f->parser, 1);
			finish_parsed(f);
			return;
		} else {
			const char *e = tls_conn_error_text(f->tls);
			finish(f, FETCH_E_IO, "TLS error%s%s", e[0] ? ": " : "", e);
			return;
		}
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	(void)suggested;
	struct fetch *f = h->data;
	b->base = (char *)f->rbuf;
	b->len = sizeof(f->rbuf);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
	struct fetch *f = s->data;
	if (f->done || nread == 0)
		return;
	if (nread > 0) {
		if (tls_conn_feed(f->tls, b->base, (size_t)nread) < 0)
			finish(f, FETCH_E_NOMEM, "out of memory");
		else
			progress(f);
		return;
	}
	if (!f->handshook) {
		finish(f, FETCH_E_TLS, "TLS handshake: %s",
		       nread == UV_EOF ? "connection closed by the server" : uv_strerror((int)nread));
	} else if (nread == UV_EOF) {
		fetch_parser_eof(&f->parser, 0); /* no close_notify came */
		finish_parsed(f);
	} else {
		finish(f, FETCH_E_IO, "read: %s", uv_strerror((int)nread));
	}
}

static void timer_cb(uv_timer_t *t);

/* The timer fires at loop time at (an attempt's share, or the deadline). */
static void arm_timer(struct fetch *f, uint64_t at)
{
	uint64_t now = uv_now(f->loop);
	uv_timer_start(&f->timer, timer_cb, at > now ? at - now : 0, 0);
}

static void note_connect_error(struct fetch *f, const struct sockaddr_storage *a,
			       const char *what)
{
	char at[64];
	addr_text(a, at, sizeof(at));
	size_t o = strlen(f->connect_err);
	if (o + 2 < sizeof(f->connect_err))
		snprintf(f->connect_err + o, sizeof(f->connect_err) - o, "%s%s: %s",
			 o ? "; " : "", at, what);
}

static void timer_cb(uv_timer_t *t)
{
	struct fetch *f = t->data;
	if (f->done)
		return;
	uint64_t now = uv_now(f->loop);
	if (!f->connected && f->tcp_open && !f->tcp_closing && now < f->deadline) {
		/* this address had its share of the time: on to the next one */
		note_connect_error(f, &f->addrs[f->next - 1], "timed out");
		close_tcp(f);
		return;
	}
	char phase[96];
	if (!f->connected && f->next > 0) {
		char at[64];
		addr_text(&f->addrs[f->next - 1], at, sizeof(at));
		snprintf(phase, sizeof(phase), "connecting to %s", at);
	} else if (!f->connected) {
		snprintf(phase, sizeof(phase), "connecting");
	} else if (!f->handshook) {
		snprintf(phase, sizeof(phase), "in the TLS handshake");
	} else if (f->parser.status == 0) {
		snprintf(phase, sizeof(phase), "waiting for the response");
	} else {
		snprintf(phase, sizeof(phase), "reading the response (%zu body bytes)",
			 f->parser.len);
	}
	finish(f, FETCH_E_TIMEOUT, "timed out after %llu ms, %s", (unsigned long long)f->timeout,
	       phase);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct fetch *f = req->data;
	if (status == UV_ECANCELED || f->done)
		return;
	if (status < 0) {
		note_connect_error(f, &f->addrs[f->next - 1], uv_strerror(status));
		close_tcp(f); /* tcp_closed tries the next address */
		return;
	}
	f->connected = 1;
	arm_timer(f, f->deadline); /* the rest of the time for the whole exchange */
	f->tls = tls_conn_new(f->ctx, f->host);
	if (!f->tls) {
		finish(f, FETCH_E_NOMEM, "out of memory");
		return;
	}
	uv_tcp_nodelay(&f->tcp, 1);
	int rc = uv_read_start((uv_stream_t *)&f->tcp, alloc_cb, read_cb);
	if (rc < 0) {
		finish(f, FETCH_E_IO, "read: %s", uv_strerror(rc));
		return;
	}
	progress(f); /* sends the ClientHello */
}

/* Opens a TCP handle toward the next address, or gives up. */
static void connect_next(struct fetch *f)
{
	while (f->next < f->naddrs) {
		struct sockaddr_storage *a = &f->addrs[f->next++];
		int rc = uv_tcp_init(f->loop, &f->tcp);
		if (rc < 0) {
			finish(f, FETCH_E_NOMEM, "tcp: %s", uv_strerror(rc));
			return;
		}
		f->tcp.data = f;
		f->tcp_open = 1;
		f->handles++;
		f->creq.data = f;
		rc = uv_tcp_connect(&f->creq, &f->tcp, (const struct sockaddr *)a, connect_cb);
		if (rc < 0) {
			note_connect_error(f, a, uv_strerror(rc));
			close_tcp(f); /* tcp_closed comes back here */
			return;
		}
		/* This attempt gets an equal share of the time left. */
		uint64_t now = uv_now(f->loop);
		uint64_t left = f->deadline > now ? f->deadline - now : 0;
		arm_timer(f, now + left / (f->naddrs - f->next + 1));
		return;
	}
	if (f->connect_err[0])
		finish(f, FETCH_E_CONNECT, "connect %s", f->connect_err);
	else
		finish(f, FETCH_E_CONNECT, "connect: no address");
}

/* host: 1..253 bytes, no controls, space or '/'; path: '/' then no controls or space. */
static int valid_opts(const struct fetch_opts *o)
{
	if (!o->host || !o->path || !o->ctx || (!o->addrs && o->naddrs))
		return 0;
	size_t n = strlen(o->host);
	if (n == 0 || n > STS_NAME_MAX || !strcmp(o->host, "."))
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)o->host[i];
		if (c <= 0x20 || c == 0x7f || c == '/')
			return 0;
	}
	if (o->path[0] != '/' || (o->content_type && strlen(o->content_type) > FETCH_TYPE_MAX))
		return 0;
	for (const char *c = o->path; *c; c++)
		if ((unsigned char)*c <= 0x20 || *c == 0x7f)
			return 0;
	return 1;
}

struct fetch *fetch_start(uv_loop_t *loop, const struct fetch_opts *o, fetch_cb *cb, void *arg)
{
	if (!valid_opts(o) || !cb) {
		errno = EINVAL;
		return NULL;
	}
	struct fetch *f = calloc(1, sizeof(*f));
	if (!f) {
		errno = ENOMEM;
		return NULL;
	}
	f->loop = loop;
	f->ctx = o->ctx;
	f->cb = cb;
	f->arg = arg;
	snprintf(f->host, sizeof(f->host), "%s", o->host);
	size_t hl = strlen(f->host);
	if (hl > 1 && f->host[hl - 1] == '.') /* absolute form: not in SNI, Host or the check */
		f->host[hl - 1] = '\0';
	uint16_t port = o->port ? o->port : 443;
	/* RFC 9110 §7.2: the port only when it is not the scheme's default */
	char hostport[STS_NAME_MAX + 8];
	if (port == 443)
		snprintf(hostport, sizeof(hostport), "%s", f->host);
	else
		snprintf(hostport, sizeof(hostport), "%s:%u", f->host, port);
	static const char fmt[] = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: starttls-proxy\r\n"
				  "Accept: text/plain\r\nConnection: close\r\n\r\n";
	int n = snprintf(NULL, 0, fmt, o->path, hostport);
	f->request = malloc((size_t)n + 1);
	f->addrs = o->naddrs ? calloc(o->naddrs, sizeof(*f->addrs)) : NULL;
	if (!f->request || (o->naddrs && !f->addrs)) {
		free_fetch(f);
		errno = ENOMEM;
		return NULL;
	}
	f->reqlen = (size_t)snprintf(f->request, (size_t)n + 1, fmt, o->path, hostport);
	f->naddrs = o->naddrs;
	for (size_t i = 0; i < o->naddrs; i++) {
		f->addrs[i] = o->addrs[i];
		if (f->addrs[i].ss_family == AF_INET)
			((struct sockaddr_in *)&f->addrs[i])->sin_port = htons(port);
		else if (f->addrs[i].ss_family == AF_INET6)
			((struct sockaddr_in6 *)&f->addrs[i])->sin6_port = htons(port);
	}
	if (o->content_type)
		snprintf(f->want_type, sizeof(f->want_type), "%s", o->content_type);
	fetch_parser_init(&f->parser, o->max_body, o->content_type ? f->want_type : NULL);
	if (uv_timer_init(loop, &f->timer) < 0) {
		free_fetch(f);
		errno = ENOMEM;
		return NULL;
	}
	f->timer.data = f;
	f->timer_open = 1;
	f->handles = 1;
	f->timeout = o->timeout_ms ? o->timeout_ms : FETCH_TIMEOUT_DEFAULT;
	if (f->timeout > FETCH_TIMEOUT_MAX)
		f->timeout = FETCH_TIMEOUT_MAX;
	f->deadline = uv_now(loop) + f->timeout;
	arm_timer(f, f->deadline);
	connect_next(f);
	return f;
}

void fetch_cancel(struct fetch *f)
{
	if (!f || f->in_cb)
		return;
	f->cancelled = 1;
	finish(f, FETCH_E_TIMEOUT, "cancelled"); /* closes what is open; nothing if done */
}
