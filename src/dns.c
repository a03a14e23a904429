/* dns.c - asynchronous DNSSEC-validating lookups (see dns.h).
 *
 * libunbound runs in the caller's loop through its pluggable event API: the context is
 * made with ub_ctx_create_ub_event() on an event base whose methods (below, "event base
 * on libuv") map libunbound's libevent-style events onto uv_poll_t and uv_timer_t.
 * (ub_ctx_async() + ub_resolve_async() cannot do that: they always run the resolver in
 * a thread or, with ub_ctx_async(ctx, 0), in a forked process.) Queries go out with
 * ub_resolve_event(), whose callback hands over the reply packet (compressed names),
 * parsed here by dns_parse_reply().
 *
 * libunbound may call a query's callback from inside ub_resolve_event() (local zones,
 * cache) and always from inside its own event callbacks, where freeing the context is not
 * allowed. So its callback only records the outcome and moves the query to a ready list;
 * a uv_idle_t delivers the ready queries from the loop, where the user's callback may
 * call dns_query, dns_cancel or dns_free. One uv_timer_t enforces timeout_ms: every query
 * gets the same timeout, so the pending list, in creation order, is in deadline order. */
#include "dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unbound-event.h>
#include <unbound.h>

#define DEFAULT_TIMEOUT_MS 5000
#define CNAME_HOPS_MAX 16 /* CNAMEs followed in one answer */
#define T_CNAME 5
#define T_SOA 6
#define C_IN 1
#define RCODE_SERVFAIL 2
#define RCODE_NXDOMAIN 3

/* ---- names ----------------------------------------------------------------------- */

static int is_ldh(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-';
}

static uint8_t lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/* An uncompressed wire name at rdata[*off..len) as text: lower case, no trailing dot, ""
 * for the root. Labels of LDH octets, '-' neither first nor last. 0 or -EINVAL. */
static int ldh_name(const uint8_t *p, size_t len, size_t *off, char out[256])
{
	size_t i = *off, o = 0, wire = 0;
	for (;;) {
		if (i >= len)
			return -EINVAL;
		uint8_t c = p[i++];
		wire += 1 + (size_t)c;
		if (wire > 255)
			return -EINVAL;
		if (c == 0)
			break;
		if (c > 63 || i + c > len)
			return -EINVAL; /* compression pointer, extended label type, or past len */
		if (p[i] == '-' || p[i + c - 1] == '-')
			return -EINVAL;
		if (o)
			out[o++] = '.';
		for (size_t k = 0; k < c; k++) {
			if (!is_ldh(p[i + k]))
				return -EINVAL;
			out[o++] = (char)lower(p[i + k]);
		}
		i += c;
	}
	out[o] = '\0';
	*off = i;
	return 0;
}

/* A wire name (uncompressed, lower case) as presentation text without the trailing dot:
 * octets other than letters, digits, '-' and '_' as \DDD, cut to fit out. */
static void wire_to_text(const uint8_t *w, char *out, size_t cap)
{
	size_t o = 0;
	out[0] = '\0';
	for (size_t i = 0; w[i] && o + 1 < cap; i += 1 + w[i]) {
		if (i && o + 1 < cap)
			out[o++] = '.';
		for (size_t k = 1; k <= w[i] && o + 1 < cap; k++) {
			uint8_t c = w[i + k];
			if (is_ldh(c) || c == '_') {
				out[o++] = (char)c;
			} else if (o + 4 < cap) {
				snprintf(out + o, cap - o, "\\%03u", c);
				o += 4;
			} else {
				o = cap - 1;
			}
		}
	}
	out[o] = '\0';
}

/* A query name: letters, digits, '-', '_'; labels 1..63; at most 253 octets without the
 * one trailing dot allowed. */
static int valid_qname(const char *name)
{
	size_t len = strlen(name);
	if (len && name[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return 0;
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		uint8_t c = (uint8_t)name[i];
		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (is_ldh(c) || c == '_') {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0;
}

/* ---- rdata parsers --------------------------------------------------------------- */

int dns_parse_mx(const uint8_t *rdata, size_t len, struct dns_mx *out)
{
	if (!rdata || len < 3)
		return -EINVAL;
	size_t off = 2;
	char host[256];
	if (ldh_name(rdata, len, &off, host) < 0 || off != len)
		return -EINVAL;
	out->pref = (uint16_t)(rdata[0] << 8 | rdata[1]);
	memcpy(out->host, host, strlen(host) + 1);
	return 0;
}

int dns_parse_txt(const uint8_t *rdata, size_t len, char *out, size_t cap, size_t *outlen)
{
	if (!rdata || len == 0)
		return -EINVAL;
	size_t total = 0;
	for (size_t i = 0; i < len;) {
		size_t c = rdata[i++];
		if (c > len - i)
			return -EINVAL;
		if (cap && total < cap - 1) {
			size_t k = c < cap - 1 - total ? c : cap - 1 - total;
			memcpy(out + total, rdata + i, k);
		}
		total += c;
		i += c;
	}
	if (cap)
		out[total < cap - 1 ? total : cap - 1] = '\0';
	*outlen = total;
	return 0;
}

int dns_parse_tlsa(const uint8_t *rdata, size_t len, struct dns_tlsa *out)
{
	if (!rdata || len < 4 || len - 3 > UINT16_MAX)
		return -EINVAL;
	out->usage = rdata[0];
	out->selector = rdata[1];
	out->mtype = rdata[2];
	out->len = (uint16_t)(len - 3);
	memset(out->data, 0, sizeof out->data);
	memcpy(out->data, rdata + 3, len - 3 < DNS_TLSA_DATA_MAX ? len - 3 : DNS_TLSA_DATA_MAX);
	return 0;
}

/* ---- reply packets --------------------------------------------------------------- */

/* The name at *off (compression allowed: pointers only backwards, at most 64 of them)
 * into w, uncompressed and in lower case; *off moves past the name where it is stored.
 * 0 or -EINVAL. */
static int read_name(const uint8_t *pkt, size_t len, size_t *off, uint8_t w[256])
{
	size_t p = *off, o = 0, end = 0;
	int jumped = 0, hops = 0;
	for (;;) {
		if (p >= len)
			return -EINVAL;
		uint8_t c = pkt[p];
		if ((c & 0xC0) == 0xC0) {
			if (p + 1 >= len)
				return -EINVAL;
			size_t target = (size_t)(c & 0x3F) << 8 | pkt[p + 1];
			if (!jumped)
				end = p + 2;
			jumped = 1;
			if (target >= p || ++hops > 64)
				return -EINVAL;
			p = target;
			continue;
		}
		if (c & 0xC0)
			return -EINVAL;
		if (p + 1 + c > len || o + 1 + c > 255)
			return -EINVAL;
		w[o++] = c;
		for (size_t k = 1; k <= c; k++)
			w[o++] = lower(pkt[p + k]);
		p += 1 + (size_t)c;
		if (c == 0)
			break;
	}
	*off = jumped ? end : p;
	return 0;
}

static size_t wire_len(const uint8_t *w)
{
	size_t i = 0;
	while (w[i])
		i += 1 + w[i];
	return i + 1;
}

static int name_eq(const uint8_t *a, const uint8_t *b)
{
	size_t n = wire_len(a);
	return n == wire_len(b) && memcmp(a, b, n) == 0;
}

struct rr {
	uint8_t owner[256];
	uint16_t type, class;
	uint32_t ttl;
	size_t rdoff, rdlen;
};

/* The resource record at *off: 0 or -EINVAL; *off moves past it. */
static int next_rr(const uint8_t *pkt, size_t len, size_t *off, struct rr *rr)
{
	if (read_name(pkt, len, off, rr->owner) < 0 || len - *off < 10)
		return -EINVAL;
	const uint8_t *p = pkt + *off;
	rr->type = (uint16_t)(p[0] << 8 | p[1]);
	rr->class = (uint16_t)(p[2] << 8 | p[3]);
	rr->ttl = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
	if (rr->ttl > INT32_MAX) /* RFC 2181 §8 */
		rr->ttl = 0;
	rr->rdlen = (size_t)(p[8] << 8 | p[9]);
	rr->rdoff = *off + 10;
	if (rr->rdlen > len - rr->rdoff)
		return -EINVAL;
	*off = rr->rdoff + rr->rdlen;
	return 0;
}

static uint32_t min_ttl(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

/* One answer record of the type asked, owned by the canonical name, into r->u / r->txt
 * at r->n: 1 when kept, 0 when malformed, -ENOMEM. */
static int take_record(const uint8_t *pkt, size_t len, const struct rr *rr, int rrtype,
		       struct dns_result *r)
{
	const uint8_t *rd = pkt + rr->rdoff;
	size_t i = r->n;
	switch (rrtype) {
	case DNS_T_A: {
		if (rr->rdlen != 4)
			return 0;
		struct sockaddr_in *sin = (struct sockaddr_in *)&r->u.addr[i];
		memset(&r->u.addr[i], 0, sizeof r->u.addr[i]);
		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, rd, 4);
		return 1;
	}
	case DNS_T_AAAA: {
		if (rr->rdlen != 16)
			return 0;
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&r->u.addr[i];
		memset(&r->u.addr[i], 0, sizeof r->u.addr[i]);
		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, rd, 16);
		return 1;
	}
	case DNS_T_MX: {
		/* The exchange may be compressed in a packet: uncompress it, then parse the
		 * rdata as dns_parse_mx sees it. */
		uint8_t buf[2 + 256];
		size_t off = rr->rdoff + 2;
		if (rr->rdlen < 3 || read_name(pkt, len, &off, buf + 2) < 0 ||
		    off != rr->rdoff + rr->rdlen)
			return 0;
		memcpy(buf, rd, 2);
		return dns_parse_mx(buf, 2 + wire_len(buf + 2), &r->u.mx[i]) == 0;
	}
	case DNS_T_TLSA:
		return dns_parse_tlsa(rd, rr->rdlen, &r->u.tlsa[i]) == 0;
	case DNS_T_TXT: {
		size_t full;
		if (dns_parse_txt(rd, rr->rdlen, NULL, 0, &full) < 0)
			return 0;
		size_t keep = full < DNS_TXT_MAX ? full : DNS_TXT_MAX;
		char *t = malloc(keep + 1);
		if (!t)
			return -ENOMEM;
		(void)dns_parse_txt(rd, rr->rdlen, t, keep + 1, &full);
		r->txt[i] = t;
		r->txt_len[i] = keep;
		r->txt_trunc[i] = full > DNS_TXT_MAX;
		return 1;
	}
	}
	return 0;
}

void dns_result_release(struct dns_result *r)
{
	for (size_t i = 0; i < DNS_RR_MAX; i++) {
		free(r->txt[i]);
		r->txt[i] = NULL;
		r->txt_len[i] = 0;
		r->txt_trunc[i] = 0;
	}
	r->n = 0;
}

static int reply_error(struct dns_result *r, int rc)
{
	dns_result_release(r);
	r->status = DNS_ERROR;
	r->ttl = 0;
	r->canonical[0] = '\0';
	return rc;
}

int dns_parse_reply(const uint8_t *pkt, size_t len, int rrtype, struct dns_result *r)
{
	memset(r, 0, sizeof *r);
	r->rrtype = rrtype;
	r->status = DNS_ERROR;
	if (!pkt || len < 12)
		return -EINVAL;
	unsigned rcode = pkt[3] & 0x0F;
	size_t qd = (size_t)(pkt[4] << 8 | pkt[5]), an = (size_t)(pkt[6] << 8 | pkt[7]),
	       ns = (size_t)(pkt[8] << 8 | pkt[9]);
	if (qd != 1)
		return -EINVAL;
	size_t off = 12;
	uint8_t qname[256], cur[256], target[256];
	if (read_name(pkt, len, &off, qname) < 0 || len - off < 4)
		return -EINVAL;
	off += 4;
	size_t answer = off;

	/* Follow the CNAME chain from the question's name through the answer section. */
	memcpy(cur, qname, wire_len(qname));
	uint32_t ttl = UINT32_MAX;
	int hops = 0, found;
	do {
		found = 0;
		off = answer;
		for (size_t k = 0; k < an; k++) {
			struct rr rr;
			if (next_rr(pkt, len, &off, &rr) < 0)
				return reply_error(r, -EINVAL);
			if (rr.type != T_CNAME || rr.class != C_IN || !name_eq(rr.owner, cur))
				continue;
			size_t t = rr.rdoff;
			if (read_name(pkt, len, &t, target) < 0 || t != rr.rdoff + rr.rdlen)
				return reply_error(r, -EINVAL);
			if (++hops > CNAME_HOPS_MAX)
				return reply_error(r, -EINVAL);
			memcpy(cur, target, wire_len(target));
			ttl = min_ttl(ttl, rr.ttl);
			found = 1;
			break;
		}
	} while (found);
	if (hops)
		wire_to_text(cur, r->canonical, sizeof r->canonical);

	/* The records of the type asked, owned by the canonical name. */
	size_t wanted = 0;
	off = answer;
	for (size_t k = 0; k < an; k++) {
		struct rr rr;
		if (next_rr(pkt, len, &off, &rr) < 0)
			return reply_error(r, -EINVAL);
		if (rr.type != rrtype || rr.class != C_IN || !name_eq(rr.owner, cur))
			continue;
		wanted++;
		if (r->n == DNS_RR_MAX)
			continue;
		int rc = take_record(pkt, len, &rr, rrtype, r);
		if (rc < 0)
			return reply_error(r, rc);
		if (rc) {
			r->n++;
			ttl = min_ttl(ttl, rr.ttl);
		}
	}

	if (rcode == RCODE_NXDOMAIN || (rcode == 0 && wanted == 0)) {
		/* Negative TTL (RFC 2308 §5): the SOA in the authority section. */
		r->status = rcode ? DNS_NXDOMAIN : DNS_NODATA;
		ttl = 0;
		for (size_t k = 0; k < ns; k++) {
			struct rr rr;
			if (next_rr(pkt, len, &off, &rr) < 0)
				return reply_error(r, -EINVAL);
			if (rr.type != T_SOA)
				continue;
			size_t t = rr.rdoff;
			uint8_t skip[256];
			if (read_name(pkt, len, &t, skip) < 0 || read_name(pkt, len, &t, skip) < 0 ||
			    t + 20 != rr.rdoff + rr.rdlen)
				return reply_error(r, -EINVAL);
			uint32_t minimum = (uint32_t)pkt[t + 16] << 24 | (uint32_t)pkt[t + 17] << 16 |
					   (uint32_t)pkt[t + 18] << 8 | pkt[t + 19];
			ttl = min_ttl(rr.ttl, minimum);
			break;
		}
		dns_result_release(r);
	} else if (rcode != 0) {
		r->status = DNS_SERVFAIL;
		ttl = 0;
		dns_result_release(r);
	} else if (r->n == 0) {
		/* Records of the type, none well-formed. */
		return reply_error(r, 0);
	} else {
		r->status = DNS_OK;
		if (rrtype == DNS_T_MX) {
			/* Stable insertion sort by preference. */
			for (size_t i = 1; i < r->n; i++) {
				struct dns_mx m = r->u.mx[i];
				size_t j = i;
				for (; j > 0 && r->u.mx[j - 1].pref > m.pref; j--)
					r->u.mx[j] = r->u.mx[j - 1];
				r->u.mx[j] = m;
			}
		}
	}
	r->ttl = ttl == UINT32_MAX ? 0 : ttl;
	return 0;
}

/* ---- event base on libuv ----------------------------------------------------------- */

/* libunbound's events follow libevent: an event has an fd (or -1), bits (UB_EV_READ,
 * UB_EV_WRITE, UB_EV_PERSIST, UB_EV_TIMEOUT) and a callback; add() arms it with an
 * optional timeout; a non-persistent event is disarmed before its callback runs; a
 * persistent one's timeout restarts at each activation. libunbound changes bits and fd
 * only while the event is not armed. The callback may free the event: nothing touches it
 * after the call. free() closes the libuv handles; their close callbacks release the
 * memory, so the loop must run after ub_ctx_delete(). */
struct uvbase {
	struct ub_event_base base; /* first: libunbound hands this pointer back */
	uv_loop_t *loop;
};

struct uvev {
	struct ub_event ev; /* first */
	uv_loop_t *loop;
	int fd;
	short bits;
	void (*cb)(int, short, void *);
	void *arg;
	uv_poll_t *poll; /* for poll_fd, made on demand; a new one when the fd changes */
	int poll_fd;
	uv_timer_t timer;
	uint64_t timeout_ms;
	int has_timeout;
};

static void free_handle(uv_handle_t *h)
{
	free(h);
}

static void free_event(uv_handle_t *h)
{
	free(h->data);
}

static void ev_retire_poll(struct uvev *e)
{
	if (!e->poll)
		return;
	uv_poll_stop(e->poll);
	uv_close((uv_handle_t *)e->poll, free_handle);
	e->poll = NULL;
}

/* A deleted event's poll handle is closed at once, never kept stopped: libunbound closes
 * the fd right after, the number is soon another socket's (a session's), and stopping or
 * closing a uv_poll_t later would remove that socket from epoll (libuv's
 * uv__platform_invalidate_fd acts on the fd number), leaving its handle deaf. */
static int ev_del(struct ub_event *ev)
{
	struct uvev *e = (struct uvev *)ev;
	ev_retire_poll(e);
	uv_timer_stop(&e->timer);
	return 0;
}

static void ev_timer_cb(uv_timer_t *t)
{
	struct uvev *e = t->data;
	if (!(e->bits & UB_EV_PERSIST))
		ev_del(&e->ev);
	else
		uv_timer_start(&e->timer, ev_timer_cb, e->timeout_ms, 0);
	e->cb(e->fd, UB_EV_TIMEOUT, e->arg);
}

static void ev_poll_cb(uv_poll_t *p, int status, int events)
{
	struct uvev *e = p->data;
	short what = 0;
	if (status < 0) {
		what = e->bits & (UB_EV_READ | UB_EV_WRITE); /* let libunbound see the error */
	} else {
		if (events & UV_READABLE)
			what |= UB_EV_READ;
		if (events & UV_WRITABLE)
			what |= UB_EV_WRITE;
		what &= e->bits;
	}
	if (!what)
		return;
	if (!(e->bits & UB_EV_PERSIST))
		ev_del(&e->ev);
	else if (e->has_timeout)
		uv_timer_start(&e->timer, ev_timer_cb, e->timeout_ms, 0);
	e->cb(e->fd, what, e->arg);
}

static int ev_add(struct ub_event *ev, struct timeval *tv)
{
	struct uvev *e = (struct uvev *)ev;
	ev_del(ev);
	int want = (e->bits & UB_EV_READ ? UV_READABLE : 0) |
		   (e->bits & UB_EV_WRITE ? UV_WRITABLE : 0);
	if (e->fd >= 0 && want) {
		if (e->poll && e->poll_fd != e->fd)
			ev_retire_poll(e);
		if (!e->poll) {
			uv_poll_t *p = malloc(sizeof *p);
			if (!p)
				return -1;
			if (uv_poll_init(e->loop, p, e->fd) != 0) {
				free(p);
				return -1;
			}
			p->data = e;
			e->poll = p;
			e->poll_fd = e->fd;
		}
		if (uv_poll_start(e->poll, want, ev_poll_cb) != 0)
			return -1;
	}
	e->has_timeout = tv != NULL;
	if (tv) {
		e->timeout_ms = (uint64_t)tv->tv_sec * 1000 + ((uint64_t)tv->tv_usec + 999) / 1000;
		uv_timer_start(&e->timer, ev_timer_cb, e->timeout_ms, 0);
	}
	return 0;
}

static void ev_add_bits(struct ub_event *ev, short bits)
{
	((struct uvev *)ev)->bits |= bits;
}

static void ev_del_bits(struct ub_event *ev, short bits)
{
	((struct uvev *)ev)->bits &= (short)~bits;
}

static void ev_set_fd(struct ub_event *ev, int fd)
{
	struct uvev *e = (struct uvev *)ev;
	if (e->poll && e->poll_fd != fd)
		ev_retire_poll(e);
	e->fd = fd;
}

static void ev_free(struct ub_event *ev)
{
	struct uvev *e = (struct uvev *)ev;
	if (!e)
		return;
	ev_del(ev);
	ev_retire_poll(e);
	uv_close((uv_handle_t *)&e->timer, free_event);
}

static int ev_add_timer(struct ub_event *ev, struct ub_event_base *base,
			void (*cb)(int, short, void *), void *arg, struct timeval *tv)
{
	(void)base;
	struct uvev *e = (struct uvev *)ev;
	ev_del(ev);
	e->cb = cb;
	e->arg = arg;
	e->bits = UB_EV_TIMEOUT;
	ev_set_fd(ev, -1);
	return ev_add(ev, tv);
}

static int ev_no_signal(struct ub_event *ev, struct timeval *tv)
{
	(void)ev;
	(void)tv;
	return -1;
}

static int ev_no_signal_del(struct ub_event *ev)
{
	(void)ev;
	return -1;
}

static struct ub_event_vmt uvev_vmt = {
	.add_bits = ev_add_bits,
	.del_bits = ev_del_bits,
	.set_fd = ev_set_fd,
	.free = ev_free,
	.add = ev_add,
	.del = ev_del,
	.add_timer = ev_add_timer,
	.del_timer = ev_del,
	.add_signal = ev_no_signal,
	.del_signal = ev_no_signal_del,
};

static struct ub_event *base_new_event(struct ub_event_base *base, int fd, short bits,
				       void (*cb)(int, short, void *), void *arg)
{
	struct uvbase *b = (struct uvbase *)base;
	struct uvev *e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	e->ev.magic = UB_EVENT_MAGIC;
	e->ev.vmt = &uvev_vmt;
	e->loop = b->loop;
	e->fd = fd;
	e->bits = bits;
	e->cb = cb;
	e->arg = arg;
	e->poll_fd = -1;
	uv_timer_init(b->loop, &e->timer);
	e->timer.data = e;
	return &e->ev;
}

static struct ub_event *base_new_signal(struct ub_event_base *base, int fd,
					void (*cb)(int, short, void *), void *arg)
{
	(void)base;
	(void)fd;
	(void)cb;
	(void)arg;
	return NULL; /* libunbound's library worker handles no signals */
}

static void base_free(struct ub_event_base *base)
{
	(void)base; /* part of struct dns */
}

static int base_dispatch(struct ub_event_base *base)
{
	(void)base;
	return -1; /* only for libunbound's own threads, never started here */
}

static int base_loopexit(struct ub_event_base *base, struct timeval *tv)
{
	(void)base;
	(void)tv;
	return 0;
}

static struct ub_event_base_vmt uvbase_vmt = {
	.free = base_free,
	.dispatch = base_dispatch,
	.loopexit = base_loopexit,
	.new_event = base_new_event,
	.new_signal = base_new_signal,
};

/* ---- the resolver ---------------------------------------------------------------- */

enum qstate { Q_PENDING, Q_READY, Q_DELIVERING };

struct dns_query {
	struct dns *d;
	struct dns_query *prev, *next; /* in d->pending or d->ready */
	enum qstate state;
	int ub_id;
	uint64_t deadline; /* uv_now() ms */
	int rrtype;
	dns_cb *cb;
	void *arg;
	/* the outcome, once ready */
	int forced;        /* DNS_TIMEOUT or DNS_ERROR, else 0 */
	int rcode, sec;    /* libunbound's rcode; sec 0 insecure, 1 bogus, 2 secure */
	uint8_t *pkt;
	size_t pkt_len;
	char why_bogus[160];
};

struct qlist {
	struct dns_query *head, *tail;
	size_t n;
};

struct dns {
	uv_loop_t *loop;
	struct uvbase evb;
	struct ub_ctx *ctx;
	uint64_t timeout_ms;
	uv_timer_t timer; /* the first pending query's deadline */
	uv_idle_t idle;   /* delivers ready queries */
	struct qlist pending, ready;
	struct dns_query *delivering;
	int closing;
	int open_handles;
};

static void ql_push(struct qlist *l, struct dns_query *q)
{
	q->next = NULL;
	q->prev = l->tail;
	if (l->tail)
		l->tail->next = q;
	else
		l->head = q;
	l->tail = q;
	l->n++;
}

static void ql_remove(struct qlist *l, struct dns_query *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		l->head = q->next;
	if (q->next)
		q->next->prev = q->prev;
	else
		l->tail = q->prev;
	q->prev = q->next = NULL;
	l->n--;
}

static void query_free(struct dns_query *q)
{
	free(q->pkt);
	free(q);
}

static void deliver_cb(uv_idle_t *idle);
static void timeout_cb(uv_timer_t *t);

/* A pending query has its outcome: to the ready list, delivered from the loop. */
static void make_ready(struct dns_query *q)
{
	struct dns *d = q->d;
	ql_remove(&d->pending, q);
	if (!d->pending.head)
		uv_timer_stop(&d->timer);
	q->state = Q_READY;
	ql_push(&d->ready, q);
	uv_idle_start(&d->idle, deliver_cb);
}

/* libunbound's callback: from inside ub_resolve_event or libunbound's event callbacks. */
static void ub_done(void *arg, int rcode, void *pkt, int len, int sec, char *why_bogus,
		    int was_ratelimited)
{
	(void)was_ratelimited;
	struct dns_query *q = arg;
	if (q->d->closing || q->state != Q_PENDING)
		return;
	q->rcode = rcode;
	q->sec = sec;
	if (why_bogus)
		snprintf(q->why_bogus, sizeof q->why_bogus, "%s", why_bogus);
	if (rcode == 0 && sec != 1 && pkt && len > 0) {
		q->pkt = malloc((size_t)len);
		if (q->pkt) {
			memcpy(q->pkt, pkt, (size_t)len);
			q->pkt_len = (size_t)len;
		} else {
			q->forced = DNS_ERROR;
		}
	}
	make_ready(q);
}

static void timeout_cb(uv_timer_t *t)
{
	struct dns *d = t->data;
	uint64_t now = uv_now(d->loop);
	struct dns_query *q;
	while ((q = d->pending.head) && q->deadline <= now) {
		ub_cancel(d->ctx, q->ub_id);
		q->forced = DNS_TIMEOUT;
		make_ready(q);
	}
	if (q)
		uv_timer_start(&d->timer, timeout_cb, q->deadline - now, 0);
}

static void build_result(const struct dns_query *q, struct dns_result *r)
{
	if (q->forced) {
		memset(r, 0, sizeof *r);
		r->status = q->forced;
	} else if (q->sec == 1) {
		memset(r, 0, sizeof *r);
		r->status = DNS_SERVFAIL;
		r->security = DNS_BOGUS;
		snprintf(r->why_bogus, sizeof r->why_bogus, "%s",
			 q->why_bogus[0] ? q->why_bogus : "DNSSEC validation failed");
	} else if (q->rcode != 0 || !q->pkt) {
		memset(r, 0, sizeof *r);
		r->status = q->rcode == RCODE_NXDOMAIN ? DNS_NXDOMAIN : DNS_SERVFAIL;
	} else {
		(void)dns_parse_reply(q->pkt, q->pkt_len, q->rrtype, r);
		if (r->status == DNS_OK || r->status == DNS_NXDOMAIN || r->status == DNS_NODATA)
			r->security = q->sec == 2 ? DNS_SECURE : DNS_INSECURE;
	}
	r->rrtype = q->rrtype;
}

static void deliver_cb(uv_idle_t *idle)
{
	struct dns *d = idle->data;
	/* Only what is ready now: answers that become ready during a callback (a new query
	 * answered from the cache) wait for the next loop iteration. */
	size_t budget = d->ready.n;
	struct dns_query *q;
	while (budget-- && !d->closing && (q = d->ready.head)) {
		ql_remove(&d->ready, q);
		q->state = Q_DELIVERING;
		d->delivering = q;
		struct dns_result r;
		build_result(q, &r);
		q->cb(q->arg, &r);
		dns_result_release(&r);
		d->delivering = NULL;
		query_free(q);
	}
	if (!d->closing && !d->ready.head)
		uv_idle_stop(&d->idle);
}

struct dns_query *dns_query(struct dns *d, const char *name, int rrtype, dns_cb *cb,
			    void *arg)
{
	if (!d || d->closing || !name || !cb || !valid_qname(name) ||
	    (rrtype != DNS_T_A && rrtype != DNS_T_AAAA && rrtype != DNS_T_MX &&
	     rrtype != DNS_T_TXT && rrtype != DNS_T_TLSA)) {
		errno = EINVAL;
		return NULL;
	}
	struct dns_query *q = calloc(1, sizeof *q);
	if (!q) {
		errno = ENOMEM;
		return NULL;
	}
	q->d = d;
	q->rrtype = rrtype;
	q->cb = cb;
	q->arg = arg;
	q->state = Q_PENDING;
	q->deadline = uv_now(d->loop) + d->timeout_ms;
	ql_push(&d->pending, q);
	int id = 0;
	int rc = ub_resolve_event(d->ctx, name, rrtype, C_IN, q, ub_done, &id);
	if (rc != 0 && q->state == Q_PENDING) {
		ql_remove(&d->pending, q);
		query_free(q);
		errno = rc == UB_NOMEM ? ENOMEM : EINVAL;
		return NULL;
	}
	q->ub_id = id;
	if (q->state == Q_PENDING && !uv_is_active((uv_handle_t *)&d->timer))
		uv_timer_start(&d->timer, timeout_cb, d->timeout_ms, 0);
	return q;
}

void dns_cancel(struct dns_query *q)
{
	if (!q)
		return;
	struct dns *d = q->d;
	switch (q->state) {
	case Q_PENDING:
		ub_cancel(d->ctx, q->ub_id);
		ql_remove(&d->pending, q);
		if (!d->pending.head)
			uv_timer_stop(&d->timer);
		query_free(q);
		break;
	case Q_READY:
		ql_remove(&d->ready, q);
		query_free(q);
		break;
	case Q_DELIVERING:
		break; /* freed when its callback returns */
	}
}

static void dns_handle_closed(uv_handle_t *h)
{
	struct dns *d = h->data;
	if (--d->open_handles == 0)
		free(d);
}

void dns_free(struct dns *d)
{
	if (!d || d->closing)
		return;
	d->closing = 1;
	struct dns_query *q;
	/* Cancelled first: ub_ctx_delete calls back every query it drops, unless cancelled. */
	for (q = d->pending.head; q; q = q->next)
		ub_cancel(d->ctx, q->ub_id);
	ub_ctx_delete(d->ctx);
	d->ctx = NULL;
	while ((q = d->pending.head)) {
		ql_remove(&d->pending, q);
		query_free(q);
	}
	while ((q = d->ready.head)) {
		ql_remove(&d->ready, q);
		query_free(q);
	}
	uv_close((uv_handle_t *)&d->timer, dns_handle_closed);
	uv_close((uv_handle_t *)&d->idle, dns_handle_closed);
}

int dns_parse_resolver(const char *s, char *out, size_t cap)
{
	char addr[INET6_ADDRSTRLEN + 1];
	const char *port = NULL;
	size_t alen;
	const char *colon = strchr(s, ':');
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end)
			return -EINVAL;
		alen = (size_t)(end - s - 1);
		s++;
		if (end[1] == ':')
			port = end + 2;
		else if (end[1])
			return -EINVAL;
	} else if (colon && !strchr(colon + 1, ':')) {
		alen = (size_t)(colon - s);
		port = colon + 1;
	} else {
		alen = strlen(s);
	}
	if (alen == 0 || alen >= sizeof addr)
		return -EINVAL;
	memcpy(addr, s, alen);
	addr[alen] = '\0';
	unsigned char bin[16];
	if (inet_pton(AF_INET, addr, bin) != 1 && inet_pton(AF_INET6, addr, bin) != 1)
		return -EINVAL;
	unsigned long p = 53;
	if (port) {
		char *end;
		if (!*port || *port < '0' || *port > '9')
			return -EINVAL;
		errno = 0;
		p = strtoul(port, &end, 10);
		if (errno || *end || p == 0 || p > 65535)
			return -EINVAL;
	}
	snprintf(out, cap, "%s@%lu", addr, p);
	return 0;
}

int dns_configure_ub(struct ub_ctx *ctx, const struct dns_opts *o, char *err, size_t errlen)
{
	char fwd[INET6_ADDRSTRLEN + 8];
	int ubrc;
	if (o->resolver && dns_parse_resolver(o->resolver, fwd, sizeof fwd) < 0) {
		snprintf(err, errlen, "resolver \"%s\": not IP, IP:PORT or [IPv6]:PORT",
			 o->resolver);
		return -EINVAL;
	}
	const char *what = "do-not-query-localhost";
	/* A forwarder on 127.0.0.1 (a local resolver, the tests' server) is allowed. */
	ubrc = ub_ctx_set_option(ctx, "do-not-query-localhost:", "no");
	if (!ubrc && !o->trust_anchor) {
		what = "module-config";
		ubrc = ub_ctx_set_option(ctx, "module-config:", "iterator");
	}
	if (!ubrc) {
		what = o->resolver ? o->resolver : "/etc/resolv.conf";
		ubrc = o->resolver ? ub_ctx_set_fwd(ctx, fwd) : ub_ctx_resolvconf(ctx, NULL);
	}
	if (!ubrc && o->trust_anchor) {
		what = o->trust_anchor;
		ubrc = ub_ctx_add_ta_file(ctx, o->trust_anchor);
	}
	if (!ubrc) {
		/* Applies the configuration now (reads the trust anchor), so that errors show
		 * here rather than at the first query: libunbound finalizes a context in any
		 * call that needs its local zones, and removing a zone that is not there
		 * changes nothing. */
		what = o->trust_anchor ? o->trust_anchor : "configuration";
		ubrc = ub_ctx_zone_remove(ctx, "stp-dns-finalize.invalid.");
	}
	if (ubrc) {
		snprintf(err, errlen, "libunbound: %s: %s", what, ub_strerror(ubrc));
		return ubrc == UB_NOMEM ? -ENOMEM : -EINVAL;
	}
	return 0;
}

int dns_new(uv_loop_t *loop, const struct dns_opts *o, struct dns **out, char *err,
	    size_t errlen)
{
	char fwd[INET6_ADDRSTRLEN + 8];
	int ubrc;
	*out = NULL;
	if (o->resolver && dns_parse_resolver(o->resolver, fwd, sizeof fwd) < 0) {
		snprintf(err, errlen, "resolver \"%s\": not IP, IP:PORT or [IPv6]:PORT",
			 o->resolver);
		return -EINVAL;
	}
	if (o->trust_anchor) {
		FILE *f = fopen(o->trust_anchor, "r");
		if (!f) {
			int e = errno;
			snprintf(err, errlen, "trust anchor %s: %s", o->trust_anchor, strerror(e));
			return -EINVAL;
		}
		fclose(f);
	}
	struct dns *d = calloc(1, sizeof *d);
	if (!d) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	d->loop = loop;
	d->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	d->evb.base.magic = UB_EVENT_MAGIC;
	d->evb.base.vmt = &uvbase_vmt;
	d->evb.loop = loop;
	d->ctx = ub_ctx_create_ub_event(&d->evb.base);
	if (!d->ctx) {
		free(d);
		snprintf(err, errlen, "libunbound: cannot create a context");
		return -ENOMEM;
	}
	ubrc = dns_configure_ub(d->ctx, o, err, errlen);
	if (ubrc < 0) {
		ub_ctx_delete(d->ctx);
		free(d);
		return ubrc;
	}
	uv_timer_init(loop, &d->timer);
	uv_idle_init(loop, &d->idle);
	d->timer.data = d;
	d->idle.data = d;
	d->open_handles = 2;
	*out = d;
	return 0;
}

const char *dns_status_name(enum dns_status s)
{
	switch (s) {
	case DNS_OK: return "ok";
	case DNS_NXDOMAIN: return "nxdomain";
	case DNS_NODATA: return "nodata";
	case DNS_SERVFAIL: return "servfail";
	case DNS_TIMEOUT: return "timeout";
	case DNS_ERROR: return "error";
	}
	return "?";
}

const char *dns_security_name(enum dns_security s)
{
	switch (s) {
	case DNS_INSECURE: return "insecure";
	case DNS_SECURE: return "secure";
	case DNS_BOGUS: return "bogus";
	}
	return "?";
}
