/* session.c - one downstream/upstream pair (see session.h). */
#include "session.h"

#include "buf.h"
#include "config.h"
#include "endpoint.h"
#include "late.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "proto.h"
#include "proxyproto.h"
#include "shared.h"
#include "stsmgr.h"
#include "tls.h"
#include "tlsrpt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Backpressure watermarks on the peer's unsent bytes. */
#define HIGH_WATER (256 * 1024)
#define LOW_WATER (64 * 1024)
/* How long a closing session waits for its last bytes (reply, close_notify) to leave. */
#define LINGER_MS 3000

/* Addresses of an upstream host name tried in turn. */
#define SESSION_ADDRS_MAX 8
/* How long a resolved upstream host name is reused. */
#define DNS_CACHE_MS 5000
#define DNS_CACHE_SIZE 32
/* Upstream TLS sessions kept for resumption, per host (worker), and for how long (like
 * Postfix's smtp_tls_session_cache_timeout). */
#define TLS_CACHE_SIZE 64
#define TLS_CACHE_MS (3600 * 1000)

enum timer_kind { T_NONE, T_PROXY, T_DETECT, T_CONNECT, T_HANDSHAKE_CLIENT, T_HANDSHAKE_UPSTREAM, T_IDLE, T_LINGER,
		  T_NAME, T_LINE, T_DATA };
/* How long XCLIENT waits for the client's host name (then NAME=[TEMPUNAVAIL]). */
#define NAME_WAIT_MS 2000

/* A client host name lookup (XCLIENT NAME; lookup_name). */
struct name_req {
	uv_getnameinfo_t ni;
	uv_getaddrinfo_t ai;
	struct session *s;
	char host[NI_MAXHOST];
};

/* What only a late-binding session needs (kept out of struct session, which every
 * connection pays for): each candidate's MX host name and whether the MTA-STS policy names
 * it, the recipient domain, and the current candidate's name and TLSA records as tls.h
 * wants them. */
struct session_late {
	char dst_name[SESSION_ADDRS_MAX][256];
	unsigned char dst_sts_match[SESSION_ADDRS_MAX];
	char domain[256];
	const char *name[1];
	struct tls_tlsa tlsa[LATE_TLSA_MAX];
};

#define SESSION_NAME_MAX 256

struct session {
	struct session *next, *prev; /* in the host's list */
	struct session_host *h;
	struct cfg *cfg;
	struct cfg_route *r;
	char id[17];
	char client[64];
	char upstream[300];
	struct endpoint down, up;
	uv_timer_t timer;
	uv_connect_t connect_req;
	enum timer_kind timer_kind;
	uint64_t started_ms, last_activity_ms, phase_started_ms, client_hs_ms, up_hs_ms;
	/* line_timeout: the module holds part of the client command line line_id (its
	 * client_partial) since line_started_ms (idle_timeout alone cannot end a client
	 * that trickles a line an octet at a time) */
	uint64_t line_started_ms, line_id;
	unsigned line_open : 1;
	/* min_data_rate: while the module reads the client's message data (data_open), the
	 * client must have sent it by data_due_ms; every octet moves that later by
	 * 1000 / min_data_rate ms (data_rem: the remainder, in ms * min_data_rate), never past
	 * line_timeout from now */
	unsigned data_open : 1;
	uint64_t data_due_ms, data_rem;
	int handles; /* open handles: down, up, timer */
	unsigned up_started : 1, up_connected : 1, up_ready : 1, down_ready : 1;
	unsigned ending : 1, closed : 1;
	const char *close_reason;
	char close_detail[160];
	char client_ip[INET6_ADDRSTRLEN];
	unsigned client_port;
	/* the client as the session knows it (logs, client_allow, per-client limits, XCLIENT,
	 * source = client): the socket's peer, or the PROXY header's source */
	struct sockaddr_storage peer;
	/* proxy_protocol_in: the header is read before anything else (pp_reading), its bytes
	 * so far in pp_buf (PP_HEADER_MAX); a header with addresses gave the client (peer)
	 * and the address it connected to (pp_dst) */
	uint8_t *pp_buf;
	size_t pp_len;
	unsigned pp_reading : 1, pp_addr : 1;
	struct sockaddr_storage pp_dst;
	long active; /* open sessions when this one was accepted (max_connections) */
	/* protocol module (NULL for tcp: plain relay) */
	const struct proto_ops *proto;
	void *ps;
	struct proto_actions acts;
	int exec_depth;
	int counted_client; /* holds a max_connections_per_client slot */
	unsigned reconnecting : 1, plain_retry : 1;
	/* upstream TLS resumption: a cached session was offered on this connection; the
	 * upstream refused it and the session reconnected for a full handshake; the session
	 * passed the policy and may be cached for later sessions */
	unsigned resume_offered : 1, resume_retry : 1, tls_cacheable : 1;
	/* tcp routes: client bytes (and a client FIN) that arrived before the upstream was
	 * accepted (connected, and its TLS handshake passed the policy). They stay here, never
	 * in the upstream endpoint, so that a rejected upstream can never receive them. */
	struct buf early;
	unsigned early_eof : 1;
	/* the upstream: candidate addresses (the original destination, the route's address,
	 * or what its host name resolved to), tried in turn; the policy toward the current one */
	struct sockaddr_storage *dst; /* &dst1, or SESSION_ADDRS_MAX of them (dst_many) */
	struct sockaddr_storage dst1;
	int ndst, idst;
	struct session_policy pol;
	uv_getaddrinfo_t gai;
	/* the client's TLS: the route's client_tls, or (auto) what the first bytes showed */
	enum cfg_tls ctls;
	unsigned detecting : 1;
	/* late binding (upstream_policy = mta-sts): the upstream is the first recipient's MX.
	 * dst_name: each candidate's MX host name (what its certificate must name); late_sts:
	 * the bound domain's MTA-STS policy applies (late_mode); up_verified: the upstream's
	 * certificate chain and name verified (what a later recipient's policy may ask). */
	struct late_res *late;
	struct late_req *late_req;
	struct session_late *lt; /* allocated when the session binds late (start) */
	struct sockaddr_storage orig;
	unsigned late_route : 1, late_sts : 1, late_testing : 1, up_verified : 1;
	enum cfg_policy late_level; /* mta-sts, dane or auto: the route's, or its table row's */
	enum cfg_mode late_mode;    /* policy_mode of the route or the row */
	/* DANE: each candidate's TLSA records (NULL when none has any) */
	struct late_cand *cands;
	struct sts_policy *late_pol; /* the bound domain's MTA-STS policy (late_sts) */
	/* xclient: the client's host name for XCLIENT NAME, forward-confirmed (see
	 * lookup_name): "" while the lookup runs, "[UNAVAILABLE]" or "[TEMPUNAVAIL]" */
	char *client_name; /* SESSION_NAME_MAX octets, allocated (start) on xclient routes */
	struct name_req *nreq;
	uint64_t name_started_ms;
};

static const struct ep_ops down_ops, up_ops;
static const char *sni(const struct session *s);
static void tls_cache_put(struct session *s);

static uint64_t now_ms(struct session *s)
{
	return uv_now(s->h->loop);
}

static const char *uv_err_text(int err)
{
	return err ? uv_strerror(err) : NULL;
}

static void addr_text(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)sa;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
		snprintf(buf, len, "%s:%u", host, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)sa;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
		snprintf(buf, len, "[%s]:%u", host, port);
	} else {
		snprintf(buf, len, "unknown");
	}
}

/* ---- the host's list ------------------------------------------------------------- */

static void list(struct session *s)
{
	struct session_host *h = s->h;
	s->prev = NULL;
	s->next = h->sessions;
	if (h->sessions)
		h->sessions->prev = s;
	h->sessions = s;
	h->nsessions++;
}

static void unlist(struct session *s)
{
	struct session_host *h = s->h;
	if (s->prev)
		s->prev->next = s->next;
	else
		h->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	h->nsessions--;
	shared_session_closed(h->shared);
	if (h->stopping && h->nsessions == 0 && h->drained)
		h->drained(h);
}

/* ---- teardown -------------------------------------------------------------------- */

static void handle_closed(struct session *s)
{
	if (--s->handles > 0)
		return;
	if (s->counted_client)
		shared_client_release(s->h->shared, s->r, s->client_ip);
	metrics_conn_close(s->r->metrics);
	unlist(s);
	if (s->proto)
		s->proto->destroy(s->ps);
	if (s->nreq)
		s->nreq->s = NULL; /* its callbacks free it */
	late_cancel(s->late_req);
	late_res_unref(s->late);
	free(s->cands);
	free(s->late_pol);
	free(s->lt);
	free(s->client_name);
	if (s->dst != &s->dst1)
		free(s->dst);
	buf_free(&s->early);
	free(s->pp_buf);
	proto_actions_free(&s->acts);
	cfg_unref(s->cfg);
	free(s);
}

static void timer_closed(uv_handle_t *h)
{
	handle_closed(h->data);
}

static void log_close(struct session *s)
{
	char up[24], down[24], dur[24];
	snprintf(up, sizeof(up), "%llu", (unsigned long long)s->down.bytes_read);
	/* what the client received: the upstream's bytes and the proxy's own replies */
	snprintf(down, sizeof(down), "%llu", (unsigned long long)s->down.bytes_written);
	snprintf(dur, sizeof(dur), "%llu", (unsigned long long)(now_ms(s) - s->started_ms));
	const char *ctls = s->down.tls && s->down.tls_ready ? tls_conn_version(s->down.tls) : "none";
	const char *utls = s->up.tls && s->up.tls_ready ? tls_conn_version(s->up.tls) : "none";
	log_event(LOG_INFO, s->id, s->r->name, "close", "reason", s->close_reason,
		  "detail", s->close_detail[0] ? s->close_detail : NULL, "bytes_up", up,
		  "bytes_down", down, "duration_ms", dur, "client_tls", ctls, "client_cipher",
		  s->down.tls && s->down.tls_ready ? tls_conn_cipher(s->down.tls) : NULL,
		  "upstream_tls", utls, "upstream_cipher",
		  s->up.tls && s->up.tls_ready ? tls_conn_cipher(s->up.tls) : NULL, NULL);
}

void session_close(struct session *s, const char *reason)
{
	if (s->closed)
		return;
	s->closed = 1;
	if (!s->close_reason)
		s->close_reason = reason;
	/* TLS 1.3: the server's tickets came after the handshake */
	if (s->tls_cacheable && s->up.tls && s->up.tls_ready && !s->up.failed)
		tls_cache_put(s);
	log_close(s);
	late_cancel(s->late_req);
	s->late_req = NULL;
	uv_timer_stop(&s->timer);
	uv_close((uv_handle_t *)&s->timer, timer_closed);
	ep_close(&s->down);
	ep_close(&s->up);
}

static void arm_timer(struct session *s);
static void start_upstream(struct session *s);

/* The module greets the client itself and the upstream comes later: under late binding at
 * the first RCPT, under greeting = local at the client's first complete command line. */
static int deferred(const struct session *s)
{
	return s->late_route || s->r->greeting_local;
}

/* Ends the session gracefully: the upstream gets close_notify and FIN (or is closed when it
 * is not usable), the client gets what was queued for it (a final reply, close_notify) and
 * a FIN, then everything closes; LINGER_MS bounds the wait. */
static void session_end(struct session *s, const char *reason, const char *detail)
{
	if (s->ending || s->closed)
		return;
	s->ending = 1;
	s->close_reason = reason;
	if (detail)
		snprintf(s->close_detail, sizeof(s->close_detail), "%s", detail);
	/* An upstream the session never accepted gets nothing more of the client's. */
	buf_free(&s->early);
	if (!s->up_ready)
		ep_discard_held(&s->up);
	if (s->up.connected && !s->up.failed && !s->up.closing &&
	    (!s->up.tls || s->up.tls_ready)) {
		ep_pause(&s->up);
		ep_shutdown(&s->up);
	} else {
		ep_close(&s->up);
	}
	/* A client still in its TLS handshake waits for it only when a reply is queued. */
	if (!s->down.connected || s->down.failed || s->down.closing ||
	    (s->down.tls && !s->down.tls_ready && ep_pending(&s->down) == 0)) {
		session_close(s, reason);
		return;
	}
	ep_pause(&s->down);
	ep_shutdown(&s->down);
	arm_timer(s);
	if (s->down.shut_done)
		session_close(s, reason);
}

/* ---- timers ---------------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t);
static void detected(struct session *s, const uint8_t *data, size_t len);
static void pp_refused(struct session *s, const char *reason, const char *close_reason);
static void name_given_up(struct session *s);

static void consider(enum timer_kind *k, uint64_t *due, enum timer_kind kind, uint64_t when)
{
	if (*k == T_NONE || when < *due) {
		*k = kind;
		*due = when;
	}
}

/* One timer per session, armed for the earliest deadline of its current phase. */
static void arm_timer(struct session *s)
{
	if (s->closed)
		return;
	enum timer_kind k = T_NONE;
	uint64_t due = 0;
	const struct cfg_route *r = s->r;
	uint64_t now = now_ms(s);
	if (s->ending) {
		consider(&k, &due, T_LINGER, now + LINGER_MS);
	} else if (s->pp_reading) {
		consider(&k, &due, T_PROXY, s->started_ms + r->handshake_timeout_ms);
	} else if (s->detecting) {
		consider(&k, &due, T_DETECT, s->client_hs_ms + r->detect_timeout_ms);
	} else {
		if (!s->down_ready)
			consider(&k, &due, T_HANDSHAKE_CLIENT, s->client_hs_ms + r->handshake_timeout_ms);
		if (s->up_started && !s->up_connected)
			consider(&k, &due, T_CONNECT, s->phase_started_ms + r->connect_timeout_ms);
		if (s->up_connected && !s->up_ready)
			consider(&k, &due, T_HANDSHAKE_UPSTREAM,
				 s->phase_started_ms + r->handshake_timeout_ms);
		if (s->down_ready && (s->up_ready || (deferred(s) && !s->up_started)))
			consider(&k, &due, T_IDLE, s->last_activity_ms + r->idle_timeout_ms);
		if (s->nreq)
			consider(&k, &due, T_NAME, s->name_started_ms + NAME_WAIT_MS);
		if (s->line_open)
			consider(&k, &due, T_LINE, s->line_started_ms + r->line_timeout_ms);
		if (s->data_open)
			consider(&k, &due, T_DATA, s->data_due_ms);
	}
	s->timer_kind = k;
	if (k != T_NONE)
		uv_timer_start(&s->timer, timer_cb, due > now ? due - now : 0, 0);
}

static void upstream_unreachable(struct session *s, const char *error);
static void policy_failure(struct session *s, const char *result, const char *detail);
static void late_eval_conn(struct session *s, const char *result);
static void exec_actions(struct session *s);
static int start_upstream_tls(struct session *s);
static void late_lookup(struct session *s, const char *domain, int check);

/* The upstream side failed: a protocol module answers the client, tcp just ends. */
static void fail_upstream(struct session *s, enum proto_failure why, const char *result,
			  const char *reason)
{
	if (s->ending || s->closed)
		return;
	if (s->proto) {
		s->proto->fail(s->ps, why, result, &s->acts);
		exec_actions(s);
		if (!s->ending && !s->closed) /* the module always ends; be sure */
			session_end(s, reason, result);
		return;
	}
	session_end(s, reason, result);
}

/* line_timeout: after the module has seen bytes (either side's: an upstream reply can turn
 * held client bytes into a command line), note whether a client command line is open and
 * since when. The timer is armed once per line, not per octet. */
static void line_watch(struct session *s)
{
	if (s->closed || s->ending || !s->proto || !s->proto->client_partial ||
	    !s->r->line_timeout_ms)
		return;
	uint64_t id = s->proto->client_partial(s->ps);
	if (!id) {
		s->line_open = 0;
		return;
	}
	if (s->line_open && id == s->line_id)
		return; /* the same line, an octet further */
	s->line_open = 1;
	s->line_id = id;
	s->line_started_ms = now_ms(s);
	arm_timer(s);
}

/* min_data_rate: after the module has seen bytes (client_octets of them the client's: an
 * upstream reply can begin the client's message data, a client read can end it), note
 * whether the client's message data is being read and move its deadline. Like Postfix's
 * smtpd_min_data_rate: line_timeout to begin with, each octet adds 1/min_data_rate s, the
 * deadline never more than line_timeout away. The timer is armed when the data begins; a
 * deadline that moved is seen when it fires. */
static void data_watch(struct session *s, size_t client_octets)
{
	const struct cfg_route *r = s->r;
	if (s->closed || s->ending || !s->proto || !s->proto->client_in_data ||
	    !r->line_timeout_ms || !r->min_data_rate)
		return;
	if (!s->proto->client_in_data(s->ps)) {
		s->data_open = 0;
		return;
	}
	uint64_t now = now_ms(s);
	if (!s->data_open) {
		s->data_open = 1;
		s->data_due_ms = now + r->line_timeout_ms;
		s->data_rem = 0;
		arm_timer(s);
		return;
	}
	uint64_t add = (uint64_t)client_octets * 1000 + s->data_rem;
	s->data_due_ms += add / r->min_data_rate;
	s->data_rem = add % r->min_data_rate;
	if (s->data_due_ms > now + r->line_timeout_ms) {
		s->data_due_ms = now + r->line_timeout_ms;
		s->data_rem = 0;
	}
}

static void timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	uint64_t now = now_ms(s);
	switch (s->timer_kind) {
	case T_LINGER:
		session_close(s, s->close_reason ? s->close_reason : "linger timeout");
		return;
	case T_NAME: /* the lookup goes on in the pool; its answer is no longer awaited */
		name_given_up(s);
		arm_timer(s);
		return;
	case T_PROXY:
		pp_refused(s, s->pp_len ? "no complete header within handshake_timeout"
					: "no header within handshake_timeout",
			   "proxy protocol timeout");
		return;
	case T_DETECT: /* a client that waits: the plaintext greeting, STARTTLS offered */
		detected(s, NULL, 0);
		return;
	case T_HANDSHAKE_CLIENT:
		metrics_handshake(s->r->metrics, METRICS_CLIENT, NULL, "tls-handshake-failure");
		log_event(LOG_WARN, s->id, s->r->name, "client_tls_failed", "result",
			  "tls-handshake-failure", "error", "handshake timeout", NULL);
		session_close(s, "client handshake timeout");
		return;
	case T_CONNECT:
		upstream_unreachable(s, "connect timeout");
		return;
	case T_HANDSHAKE_UPSTREAM:
		if (s->up.tls && !s->up.tls_ready) {
			metrics_handshake(s->r->metrics, METRICS_UPSTREAM, NULL, "tls-handshake-failure");
			policy_failure(s, "tls-handshake-failure", "handshake timeout");
			fail_upstream(s, PF_TLS_POLICY, "tls-handshake-failure",
				      "upstream handshake timeout");
		} else {
			/* An implicit-TLS port waits silently for a ClientHello: if the
			 * upstream never sent a byte, say so. */
			const char *e = "no reply from the upstream in time";
			if (s->up.bytes_read == 0 && s->pol.tls != CFG_TLS_IMPLICIT)
				e = "no greeting from the upstream in time (an implicit-TLS port "
				    "waits silently for a ClientHello: if this is one, set "
				    "upstream_tls = implicit)";
			log_event(LOG_WARN, s->id, s->r->name, "upstream_unreachable", "result",
				  "upstream-unreachable", "upstream", s->upstream, "error", e,
				  NULL);
			fail_upstream(s, PF_UNREACHABLE, NULL, "upstream timeout");
		}
		return;
	case T_LINE:
		if (s->proto->client_partial(s->ps) == s->line_id &&
		    now - s->line_started_ms >= s->r->line_timeout_ms) {
			snprintf(s->close_detail, sizeof(s->close_detail),
				 "no end of the command line within line_timeout");
			fail_upstream(s, PF_IDLE, NULL, "line timeout");
			if (!s->closed)
				s->close_reason = "line timeout";
			return;
		}
		s->line_open = 0; /* the line ended meanwhile (another may have begun) */
		line_watch(s);
		arm_timer(s);
		return;
	case T_DATA:
		if (!s->proto->client_in_data(s->ps)) { /* it ended meanwhile */
			s->data_open = 0;
			arm_timer(s);
			return;
		}
		if (now >= s->data_due_ms && s->down.paused) {
			/* the proxy is not reading the client (the upstream is slow to take
			 * what it has): that time is not the client's */
			s->data_due_ms = now + s->r->line_timeout_ms;
			s->data_rem = 0;
		}
		if (now >= s->data_due_ms) {
			snprintf(s->close_detail, sizeof(s->close_detail),
				 "message data slower than min_data_rate (%u octets/s)",
				 s->r->min_data_rate);
			fail_upstream(s, PF_IDLE, NULL, "data timeout");
			if (!s->closed)
				s->close_reason = "data timeout";
			return;
		}
		arm_timer(s);
		return;
	case T_IDLE:
		if (now - s->last_activity_ms >= s->r->idle_timeout_ms) {
			fail_upstream(s, PF_IDLE, NULL, "idle timeout");
			return;
		}
		arm_timer(s);
		return;
	default:
		return;
	}
}

/* ---- policy ---------------------------------------------------------------------- */

static int enforcing(const struct session *s)
{
	return s->pol.mode == CFG_MODE_ENFORCE;
}

/* Logs a failed upstream TLS requirement; the caller enforces it. */
static void policy_failure(struct session *s, const char *result, const char *detail)
{
	metrics_policy_failure(s->r->metrics, result, !enforcing(s));
	log_event(LOG_WARN, s->id, s->r->name, "policy_failure", "side", "upstream", "result",
		  result, "mode", enforcing(s) ? "enforce" : "testing", "policy",
		  cfg_policy_name(s->pol.level), "upstream", s->upstream, "detail", detail,
		  NULL);
}

/* The upstream could not be reached. While TCP never connected and the host name gave
 * more addresses, the next one is tried; then the session fails. */
static void upstream_unreachable(struct session *s, const char *error)
{
	if (!s->up_connected && !s->up_ready && s->idst + 1 < s->ndst && !s->ending &&
	    !s->closed && s->up.open) {
		log_event(LOG_INFO, s->id, s->r->name, "upstream_connect_failed", "upstream",
			  s->upstream, "error", error, "action", "next address", NULL);
		s->idst++;
		s->reconnecting = 1; /* on_closed connects to the next address */
		ep_close(&s->up);
		return;
	}
	log_event(LOG_WARN, s->id, s->r->name, "upstream_unreachable", "result",
		  "upstream-unreachable", "upstream", s->upstream, "error", error, NULL);
	metrics_refusal(s->r->metrics, "upstream-unreachable");
	fail_upstream(s, PF_UNREACHABLE, error, "upstream unreachable");
}

/* Applies upstream_policy to a finished handshake. Returns 0 to go on, -1 when the
 * session ends (enforce). */
static int check_upstream_tls(struct session *s)
{
	struct tls_conn *t = s->up.tls;
	const struct cfg_route *r = s->r;
	const struct session_policy *p = &s->pol;
	char detail[200];
	enum tls_check check = p->level == CFG_POLICY_FINGERPRINT ? TLS_CHECK_FINGERPRINT
			       : p->level == CFG_POLICY_VERIFY	   ? TLS_CHECK_VERIFY
								   : TLS_CHECK_NONE;
	int dane = p->level == CFG_POLICY_DANE;
	/* A resumed session is one this route cached after it passed this same policy
	 * toward this same upstream (tls_cache_id): the server proved it holds it, and sent
	 * no certificate to check again. */
	int resumed = tls_conn_resumed(t);
	const char *result = resumed ? NULL
			     : dane ? tls_conn_dane_check(t, p->tlsa, p->ntlsa, p->names, p->nnames,
							  detail, sizeof(detail))
				    : tls_conn_check(t, check, p->names, p->nnames, p->pins,
						     p->npins, detail, sizeof(detail));
	const char *verify = resumed ? "resumed"
			     : check == TLS_CHECK_NONE && !dane ? "skipped"
			     : result ? "failed" : "ok";
	if (s->late_route)
		late_eval_conn(s, result);
	if (s->late_route) { /* what a later recipient's policy may ask of this connection */
		const char *name = s->lt->dst_name[s->idst];
		char d2[200];
		if (resumed || check == TLS_CHECK_VERIFY || dane)
			s->up_verified = (check == TLS_CHECK_VERIFY || dane) && !result;
		else
			s->up_verified = name[0] && !tls_conn_check(t, TLS_CHECK_VERIFY, &name, 1,
								      NULL, 0, d2, sizeof(d2));
	}
	metrics_handshake(r->metrics, METRICS_UPSTREAM, tls_conn_version(t), result);
	metrics_handshake_time(r->metrics, METRICS_UPSTREAM, (now_ms(s) - s->up_hs_ms) * 1000);
	log_event(LOG_INFO, s->id, r->name, "upstream_tls", "version", tls_conn_version(t),
		  "cipher", tls_conn_cipher(t), "verify", verify, "policy",
		  cfg_policy_name(p->level), "resumption",
		  s->resume_offered ? resumed ? "accepted" : "refused" : NULL, "fingerprint",
		  check == TLS_CHECK_FINGERPRINT && !resumed ? result ? "mismatch" : "ok" : NULL,
		  NULL);
	if (!result) {
		s->tls_cacheable = !dane; /* (DANE sessions are not resumed: the key has no TLSA) */
		if (!dane)
			tls_cache_put(s);
		tls_conn_drop_peer_cert(t); /* every check is done: its memory goes back */
		return 0;
	}
	/* What the server presented, so that an admin sees which certificate (and which pin)
	 * it actually has. */
	char subject[256], issuer[256], pin[80] = "";
	uint8_t fp[32];
	tls_conn_peer_names(t, subject, sizeof(subject), issuer, sizeof(issuer));
	if (tls_conn_peer_spki_sha256(t, fp) == 0) {
		int o = snprintf(pin, sizeof(pin), "sha256:");
		for (int i = 0; i < 32; i++)
			o += snprintf(pin + o, sizeof(pin) - (size_t)o, "%02x", fp[i]);
	}
	log_event(LOG_WARN, s->id, r->name, "upstream_certificate", "upstream", s->upstream,
		  "subject", subject[0] ? subject : NULL, "issuer", issuer[0] ? issuer : NULL,
		  "pin", pin[0] ? pin : NULL, NULL);
	tls_conn_drop_peer_cert(t);
	policy_failure(s, result, detail[0] ? detail : NULL);
	if (!enforcing(s))
		return 0;
	fail_upstream(s, PF_TLS_POLICY, result, "upstream policy failure");
	return -1;
}

/* ---- relay and protocol actions -------------------------------------------------- */

static struct endpoint *peer_of(struct session *s, struct endpoint *ep)
{
	return ep == &s->down ? &s->up : &s->down;
}

static void maybe_done(struct session *s)
{
	if (!s->proto && s->down.eof && s->up.eof && s->down.shut_done && s->up.shut_done)
		session_close(s, "closed");
}

/* The upstream is accepted: connected, and its TLS (if any) passed the policy. Only now
 * do the client's early bytes (tcp routes) move. */
static void up_ready(struct session *s)
{
	/* a recipient's MX without STARTTLS under no policy: reported to the domain too (a
	 * policy that required TLS reported it through PA_POLICY already) */
	if (s->late_route && !s->up.tls && !s->plain_retry && s->pol.level == CFG_POLICY_MAY)
		late_eval_conn(s, "starttls-not-supported");
	s->up_ready = 1;
	s->last_activity_ms = now_ms(s);
	arm_timer(s);
	if (s->proto || s->ending || s->closed)
		return;
	if (s->early.len) {
		struct buf b = s->early;
		memset(&s->early, 0, sizeof(s->early));
		if (ep_write(&s->up, buf_ptr(&b), b.len) == 0 && ep_pending(&s->up) > HIGH_WATER)
			ep_pause(&s->down);
		buf_free(&b);
	}
	if (s->early_eof)
		ep_shutdown(&s->up);
	if (s->down.paused && !s->early_eof && session_below_low_water(ep_pending(&s->up)))
		ep_resume(&s->down);
}

/* The domain of an address ("" for none: the null sender). */
static const char *domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

/* The distinct domains of a comma-separated address list, comma-separated, in order of
 * first appearance (at most cap - 1 octets; "..." when more did not fit). */
static void domains_of(const char *list, char *out, size_t cap)
{
	size_t o = 0;
	out[0] = '\0';
	for (const char *p = list; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t n = comma ? (size_t)(comma - p) : strlen(p);
		const char *at = memchr(p, '@', n);
		const char *d = at ? at + 1 : p + n;
		size_t dn = (size_t)(p + n - d);
		int seen = 0;
		for (const char *q = out; dn && *q && !seen;) {
			const char *c2 = strchr(q, ',');
			size_t qn = c2 ? (size_t)(c2 - q) : strlen(q);
			seen = qn == dn && !strncasecmp(q, d, dn);
			q = c2 ? c2 + 1 : q + qn;
		}
		if (dn && !seen) {
			if (o + dn + 5 >= cap) {
				snprintf(out + o, cap - o, "%s...", o ? "," : "");
				return;
			}
			o += (size_t)snprintf(out + o, cap - o, "%s%.*s", o ? "," : "", (int)dn, d);
		}
		p = comma ? comma + 1 : p + n;
	}
}

/* event=message: one line per message relayed, as mail admins trace mail. Addresses only
 * at log_level = debug; domains, counts, size, the upstream's final reply (its queue id)
 * and the TLS of both legs at info. */
static void log_message(struct session *s, const struct proto_message *m)
{
	char rcpts[16], size[24], delivered[16], domains[512];
	snprintf(rcpts, sizeof(rcpts), "%u", m->rcpts);
	snprintf(delivered, sizeof(delivered), "%u", m->delivered);
	snprintf(size, sizeof(size), "%llu", (unsigned long long)m->size);
	domains_of(m->to, domains, sizeof(domains));
	int debug = log_enabled(LOG_DEBUG);
	const char *result = m->code / 100 == 2 ? "accepted" : m->code / 100 == 4 ? "deferred"
										    : "rejected";
	log_event(LOG_INFO, s->id, s->r->name, "message", "result", result, "from_domain",
		  domain_of(m->from), "from", debug ? m->from : NULL, "rcpts", rcpts,
		  "rcpt_domains", domains, "to", debug ? m->to : NULL, "delivered",
		  s->r->protocol == CFG_PROTO_LMTP ? delivered : NULL, "size", size, "reply",
		  m->reply, "client_tls",
		  s->down.tls && s->down.tls_ready ? tls_conn_version(s->down.tls) : "none",
		  "upstream_tls", s->up.tls && s->up.tls_ready ? tls_conn_version(s->up.tls) : "none",
		  "upstream", s->upstream, NULL);
	metrics_message(s->r->metrics, result);
}

/* Carries out what the protocol module asked for, in order. Actions appended while
 * executing (a write fails, the module answers) are carried out too. */
static void exec_actions(struct session *s)
{
	struct proto_actions *a = &s->acts;
	if (a->failed) { /* some actions are missing: none is carried out */
		proto_actions_clear(a);
		session_end(s, "out of memory", NULL);
		return;
	}
	s->exec_depth++;
	for (size_t i = 0; i < a->n && !s->closed; i++) {
		struct proto_act x = a->a[i];
		struct endpoint *ep = x.side == PROTO_CLIENT ? &s->down : &s->up;
		switch (x.type) {
		case PA_SEND:
			if (s->ending && x.side == PROTO_UPSTREAM)
				break;
			if (ep_write(ep, a->buf + x.off, x.len) == 0 &&
			    ep_pending(ep) > HIGH_WATER) {
				ep_pause(peer_of(s, ep));
				/* Replies the module makes itself grow with the client's input:
				 * a client that does not read them is not read either. */
				if (ep == &s->down)
					ep_pause(&s->down);
			}
			break;
		case PA_STARTTLS:
			if (s->ending)
				break;
			if (x.side == PROTO_CLIENT) {
				s->down_ready = 0;
				s->client_hs_ms = now_ms(s);
				if (ep_start_tls(ep, s->r->client_side_tls, NULL) < 0)
					session_end(s, "out of memory", NULL);
			} else {
				if (start_upstream_tls(s) < 0)
					session_end(s, "out of memory", NULL);
			}
			arm_timer(s);
			break;
		case PA_READY:
			up_ready(s);
			break;
		case PA_CLOSE:
			session_end(s, x.reason, NULL);
			break;
		case PA_POLICY: {
			char detail[200];
			snprintf(detail, sizeof(detail), "%.*s", (int)x.len,
				 (const char *)a->buf + x.off);
			policy_failure(s, x.reason, detail[0] ? detail : NULL);
			late_eval_conn(s, x.reason);
			break;
		}
		case PA_MESSAGE: {
			struct proto_message m;
			if (proto_message_get(a, &x, &m) == 0)
				log_message(s, &m);
			break;
		}
		case PA_CONNECT:
			if (!s->ending && !s->closed && !s->up_started) {
				log_event(LOG_DEBUG, s->id, s->r->name, "upstream_connect", "reason",
					  "first command", NULL);
				start_upstream(s);
			}
			break;
		case PA_BIND:
		case PA_CHECK: {
			char domain[256];
			snprintf(domain, sizeof(domain), "%.*s", (int)x.len,
				 (const char *)a->buf + x.off);
			if (!s->ending)
				late_lookup(s, domain, x.type == PA_CHECK);
			break;
		}
		}
	}
	if (--s->exec_depth == 0) {
		proto_actions_clear(a);
		/* draining: a session that just finished its transaction ends now */
		if (s->h->stopping && !s->ending && !s->closed)
			session_drain(s);
	}
}

static void pp_input(struct session *s, const uint8_t *data, size_t len);

static void on_data(struct endpoint *ep, const uint8_t *data, size_t len)
{
	struct session *s = ep->owner;
	if (s->ending || s->closed)
		return;
	if (s->pp_reading && ep == &s->down) {
		pp_input(s, data, len);
		return;
	}
	if (s->detecting && ep == &s->down) {
		detected(s, data, len);
		return;
	}
	/* A TLS record where a plaintext greeting should be: upstream_tls = starttls (or none)
	 * pointed at an implicit-TLS port whose server spoke first. No mail server starts a
	 * line with a TLS content type byte followed by a TLS major version. */
	if (ep == &s->up && s->proto && !s->up.tls && !s->up_ready && len >= 2 &&
	    data[0] >= 0x14 && data[0] <= 0x17 && data[1] == 0x03) {
		const char *why = "upstream speaks implicit TLS (it sent a TLS record where a "
				  "greeting was expected); set upstream_tls = implicit";
		log_event(LOG_WARN, s->id, s->r->name, "upstream_tls_mismatch", "upstream",
			  s->upstream, "detail", why, NULL);
		upstream_unreachable(s, why);
		return;
	}
	s->last_activity_ms = now_ms(s);
	metrics_bytes(s->r->metrics, ep == &s->down, len);
	if (s->proto) {
		s->proto->data(s->ps, ep == &s->down ? PROTO_CLIENT : PROTO_UPSTREAM, data, len,
			       &s->acts);
		exec_actions(s);
		line_watch(s);
		data_watch(s, ep == &s->down ? len : 0);
		return;
	}
	if (ep == &s->down && !s->up_ready) {
		if (buf_append(&s->early, data, len) < 0) {
			session_end(s, "out of memory", NULL);
			return;
		}
		if (s->early.len > HIGH_WATER)
			ep_pause(ep);
		return;
	}
	struct endpoint *to = peer_of(s, ep);
	if (ep_write(to, data, len) == 0 && ep_pending(to) > HIGH_WATER)
		ep_pause(ep);
}

static void on_eof(struct endpoint *ep)
{
	struct session *s = ep->owner;
	if (s->ending || s->closed)
		return;
	if (ep == &s->down && s->pp_reading) {
		pp_refused(s, s->pp_len ? "closed before the header was complete"
					: "closed without a header",
			   "proxy protocol");
		return;
	}
	if (ep == &s->up) {
		if (!s->up_ready) {
			upstream_unreachable(s, "closed by the upstream before it was ready");
			return;
		}
		if (s->proto) {
			fail_upstream(s, PF_LOST, "closed by the upstream", "upstream closed");
			return;
		}
	} else if (s->proto) {
		s->proto->client_eof(s->ps, &s->acts);
		exec_actions(s);
		return;
	} else if (!s->up_ready) {
		s->early_eof = 1; /* the FIN follows the early bytes once the upstream is accepted */
		return;
	}
	ep_shutdown(peer_of(s, ep));
	maybe_done(s);
}

size_t session_queued(const struct session *s, int upstream)
{
	return ep_pending(upstream ? &s->up : &s->down);
}

int session_below_low_water(size_t queued)
{
	return queued < LOW_WATER;
}

/* A side is read while its peer can take more, and (with a protocol module, which answers
 * some client commands itself) the client while its own replies leave. */
static int may_read(struct session *s, struct endpoint *ep)
{
	if (!session_below_low_water(ep_pending(peer_of(s, ep))))
		return 0;
	if (ep == &s->down && !s->up_ready && !session_below_low_water(s->early.len))
		return 0;
	return !(s->proto && ep == &s->down && !session_below_low_water(ep_pending(&s->down)));
}

static void on_drain(struct endpoint *ep)
{
	struct session *s = ep->owner;
	if (s->closed)
		return;
	if (s->ending) {
		if (ep == &s->down && s->down.shut_done)
			session_close(s, s->close_reason);
		return;
	}
	if (s->up.paused && may_read(s, &s->up))
		ep_resume(&s->up);
	if (s->down.paused && may_read(s, &s->down))
		ep_resume(&s->down);
	maybe_done(s);
}

static void upstream_tls_failed(struct session *s, const char *error);
static void tls_cache_drop(struct session *s);

static void on_error(struct endpoint *ep, const char *what, int err)
{
	struct session *s = ep->owner;
	char detail[160];
	snprintf(detail, sizeof(detail), "%s%s%s", what, err ? ": " : "",
		 err ? uv_err_text(err) : "");
	if (s->closed)
		return;
	if (ep == &s->up && !s->ending) {
		if (ep->tls && !ep->tls_ready && ep->connected)
			upstream_tls_failed(s, detail);
		else if (!s->up_ready)
			upstream_unreachable(s, detail);
		else
			fail_upstream(s, PF_LOST, detail, "upstream error");
		return;
	}
	if (ep == &s->down && s->pp_reading) {
		pp_refused(s, detail, "client error");
		return;
	}
	snprintf(s->close_detail, sizeof(s->close_detail), "%s", detail);
	session_close(s, ep == &s->down ? "client error" : "upstream error");
}

static void retry_plain(struct session *s, const char *error);

/* The upstream TLS handshake failed: a TLS error, or the peer closed or reset the
 * connection during it. Either way a TLS failure, counted and reported under the policy,
 * never "unreachable". */
static void upstream_tls_failed(struct session *s, const char *error)
{
	char why[200];
	if (s->resume_offered && !s->resume_retry && s->up.connected) {
		/* A server that fails a handshake offering an old session gets a full one. */
		tls_cache_drop(s);
		log_event(LOG_INFO, s->id, s->r->name, "upstream_tls", "resumption", "failed",
			  "detail", error, "action", "reconnect for a full handshake", NULL);
		s->resume_retry = 1;
		s->reconnecting = 1;
		s->up_connected = 0;
		s->up_ready = 0;
		if (s->proto)
			s->proto->upstream_retry(s->ps);
		ep_close(&s->up);
		return;
	}
	/* A plaintext greeting where a ServerHello should be: upstream_tls = implicit pointed
	 * at a plaintext (or STARTTLS) port. */
	uint8_t first[8];
	size_t n = s->up.tls ? tls_conn_first_bytes(s->up.tls, first, sizeof(first)) : 0;
	if (n >= 3 && first[0] >= 0x20 && first[0] < 0x7f && first[1] >= 0x20 && first[1] < 0x7f &&
	    first[2] >= 0x20 && first[2] < 0x7f) {
		char text[9];
		size_t k;
		for (k = 0; k < n && first[k] >= 0x20 && first[k] < 0x7f && first[k] != '"' &&
			    first[k] != '\\';
		     k++)
			text[k] = (char)first[k];
		text[k] = '\0';
		snprintf(why, sizeof(why),
			 "upstream speaks plaintext (it sent \"%s...\" where TLS was expected); %s",
			 text, s->proto ? "set upstream_tls = starttls" : "set upstream_tls = none");
		log_event(LOG_WARN, s->id, s->r->name, "upstream_tls_mismatch", "upstream",
			  s->upstream, "detail", why, NULL);
		error = why;
	}
	metrics_handshake(s->r->metrics, METRICS_UPSTREAM, NULL, "tls-handshake-failure");
	if (s->pol.level != CFG_POLICY_MAY)
		policy_failure(s, "tls-handshake-failure", error);
	late_eval_conn(s, "tls-handshake-failure");
	if (s->proto && s->pol.tls == CFG_TLS_STARTTLS && !s->plain_retry &&
	    (s->pol.level == CFG_POLICY_MAY || !enforcing(s))) {
		retry_plain(s, error);
		return;
	}
	fail_upstream(s, PF_TLS_POLICY, "tls-handshake-failure", "upstream handshake failed");
}

static void on_tls(struct endpoint *ep, int status)
{
	struct session *s = ep->owner;
	if (s->ending || s->closed)
		return;
	if (ep == &s->down) {
		if (status < 0) {
			metrics_handshake(s->r->metrics, METRICS_CLIENT, NULL, "tls-handshake-failure");
			const char *offered;
			if (tls_conn_version_too_low(ep->tls, &offered)) {
				char min[32];
				snprintf(min, sizeof(min), "%d.%d", s->r->client_min_tls / 10,
					 s->r->client_min_tls % 10);
				log_event(LOG_WARN, s->id, s->r->name, "client_tls_failed", "result",
					  "tls-version-too-low", "offered", offered ? offered : "unknown",
					  "client_min_tls", min, "client", s->client, "hint",
					  "a legacy device: client_min_tls = 1.0 on a route of its own",
					  NULL);
			} else {
				log_event(LOG_WARN, s->id, s->r->name, "client_tls_failed", "result",
					  "tls-handshake-failure", "error", tls_conn_error_text(ep->tls),
					  NULL);
			}
			session_close(s, "client handshake failed");
			return;
		}
		metrics_handshake(s->r->metrics, METRICS_CLIENT, tls_conn_version(ep->tls), NULL);
		metrics_handshake_time(s->r->metrics, METRICS_CLIENT,
				       (now_ms(s) - s->client_hs_ms) * 1000);
		log_event(LOG_INFO, s->id, s->r->name, "client_tls", "version",
			  tls_conn_version(ep->tls), "cipher", tls_conn_cipher(ep->tls), NULL);
		tls_conn_drop_peer_cert(ep->tls); /* (a client certificate: wolfSSL checked it) */
		s->down_ready = 1;
		arm_timer(s);
		if (s->proto && s->ctls == CFG_TLS_STARTTLS) {
			s->proto->tls_done(s->ps, PROTO_CLIENT, &s->acts);
			exec_actions(s);
		}
		return;
	}
	if (status < 0) {
		const char *e = tls_conn_error_text(ep->tls);
		upstream_tls_failed(s, e[0] ? e : "handshake failed");
		return;
	}
	if (check_upstream_tls(s) < 0)
		return;
	if (!s->proto) {
		up_ready(s);
		return;
	}
	if (s->pol.tls == CFG_TLS_IMPLICIT)
		s->proto->upstream_connected(s->ps, &s->acts);
	else
		s->proto->tls_done(s->ps, PROTO_UPSTREAM, &s->acts);
	exec_actions(s);
}

static void connect_upstream(struct session *s);

static void on_closed(struct endpoint *ep)
{
	struct session *s = ep->owner;
	if (ep == &s->up && s->reconnecting && !s->closed && !s->ending) {
		/* A plaintext retry, or the next address: a fresh connection in the same slot. */
		s->reconnecting = 0;
		if (ep_init(&s->up, s->h->loop, ep->ops, s, s->h->readbuf) == 0) {
			connect_upstream(s);
			return;
		}
		session_close(s, "out of memory");
	}
	handle_closed(s);
}

/* A STARTTLS handshake toward the upstream failed where the policy lets the session go on
 * in plaintext: like Postfix, reconnect and do not ask for TLS again. */
static void retry_plain(struct session *s, const char *error)
{
	log_event(LOG_INFO, s->id, s->r->name, "upstream_tls", "tls", "none", "policy",
		  cfg_policy_name(s->pol.level), "detail", error, "action",
		  "reconnect in plaintext", NULL);
	s->plain_retry = 1;
	s->reconnecting = 1;
	s->up_connected = 0;
	s->up_ready = 0;
	s->proto->upstream_retry_plain(s->ps);
	ep_close(&s->up);
}

static const struct ep_ops down_ops = { on_data, on_eof, on_tls, on_error, on_drain, on_closed };
static const struct ep_ops up_ops = { on_data, on_eof, on_tls, on_error, on_drain, on_closed };

/* ---- the upstream: destination, policy, connect ------------------------------------- */

/* SNI and the first name to verify: the policy's first name (never an IP literal). */
static const char *sni(const struct session *s)
{
	return s->pol.nnames ? s->pol.names[0] : NULL;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)(const void *)ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)(const void *)ss)->sin6_port);
}

/* The session's policy toward the current candidate, decided and logged once per
 * connection attempt; the protocol module is told. */
/* Late binding: the candidate is an MX host of the recipient's domain. Its MTA-STS policy
 * (enforce or testing) asks for a certificate valid for the MX host's name (RFC 8461 §4.2);
 * without a policy, TLS is opportunistic (may), offered with the MX name as SNI. */
static void decide_late(struct session *s)
{
	const struct cfg_route *r = s->r;
	memset(&s->pol, 0, sizeof(s->pol));
	s->pol.tls = CFG_TLS_STARTTLS;
	s->pol.ctx = r->upstream_side_tls;
	s->pol.level = s->late_sts ? CFG_POLICY_VERIFY : CFG_POLICY_MAY;
	s->pol.mode = s->late_testing || s->late_mode == CFG_MODE_TESTING ? CFG_MODE_TESTING
									    : CFG_MODE_ENFORCE;
	const struct late_cand *c = s->cands ? &s->cands[s->idst] : NULL;
	if (c && c->dane) { /* DANE: the host's TLSA records, whatever MTA-STS says */
		size_t usable = 0;
		for (size_t i = 0; i < c->ntlsa; i++) {
			const struct dns_tlsa *t = &c->tlsa[i];
			struct tls_tlsa x = { t->usage, t->selector, t->mtype,
					      t->len <= DNS_TLSA_DATA_MAX ? t->len : 0, t->data };
			s->lt->tlsa[i] = x;
			usable += tls_tlsa_usable(&x) ? 1 : 0;
		}
		s->pol.mode = s->late_mode;
		/* only unusable records: TLS is still mandatory, without authentication (RFC 7672
		 * §2.2: never a downgrade to plaintext) */
		s->pol.level = usable ? CFG_POLICY_DANE : CFG_POLICY_ENCRYPT;
		s->pol.tlsa = s->lt->tlsa;
		s->pol.ntlsa = c->ntlsa;
	}

	if (s->lt->dst_name[s->idst][0]) {
		s->lt->name[0] = s->lt->dst_name[s->idst];
		s->pol.names = s->lt->name;
		s->pol.nnames = 1;
	}
}

static void decide(struct session *s)
{
	const struct sockaddr_storage *d = &s->dst[s->idst];
	if (s->late_route)
		decide_late(s);
	else
		policy_decide(s->r, (const struct sockaddr *)d, port_of(d), &s->pol);
	if (s->plain_retry) /* STARTTLS failed on this destination under may or testing */
		s->pol.tls = CFG_TLS_NONE;
	char src[32];
	if (s->late_route)
		snprintf(src, sizeof(src), "%s",
			 s->pol.level == CFG_POLICY_DANE	 ? "dane"
			 : s->cands && s->cands[s->idst].dane ? "dane-unusable"
			 : s->late_sts				 ? "mta-sts"
								 : "no-policy");
	else
		policy_source(&s->pol, src, sizeof(src));
	addr_text((const struct sockaddr *)d, s->upstream, sizeof(s->upstream));
	metrics_policy_decision(s->r->metrics, src, cfg_policy_name(s->pol.level));
	log_event(LOG_INFO, s->id, s->r->name, "policy", "upstream", s->upstream, "policy",
		  cfg_policy_name(s->pol.level), "mode",
		  s->pol.mode == CFG_MODE_ENFORCE ? "enforce" : "testing", "tls",
		  cfg_tls_name(s->pol.tls), "name", sni(s), "source", src, "domain",
		  s->late_route ? s->lt->domain : NULL, NULL);
	if (s->late_route && s->late_sts && s->pol.level != CFG_POLICY_DANE &&
	    !s->lt->dst_sts_match[s->idst]) {
		char detail[700];
		snprintf(detail, sizeof(detail), "MX host %s is not in the MTA-STS policy of %s",
			 s->lt->dst_name[s->idst][0] ? s->lt->dst_name[s->idst] : "(unknown)", s->lt->domain);
		policy_failure(s, "validation-failure", detail);
	}
	if (s->proto)
		s->proto->set_policy(s->ps, s->pol.tls, s->pol.level, s->pol.mode);
}

static int original_destination(struct session *s, struct sockaddr_storage *out);

/* Where the client connected: the PROXY header's destination (proxy_protocol_in), the
 * original destination on a transparent route, else the accepted socket's own address
 * (family 0 when none is known). */
static void client_destination(struct session *s, struct sockaddr_storage *out)
{
	if (s->pp_addr) {
		*out = s->pp_dst;
		return;
	}
	if ((s->r->upstream.original_dst || s->r->transparent == CFG_TRANSPARENT_TPROXY) &&
	    original_destination(s, out) == 0)
		return;
	int len = sizeof(*out);
	if (uv_tcp_getsockname(&s->down.tcp, (struct sockaddr *)out, &len) < 0)
		memset(out, 0, sizeof(*out));
}

/* proxy_protocol_out: the first bytes of every upstream connection, before TLS and before
 * anything the protocol module sends: the client (after proxy_protocol_in) and the address
 * it connected to. 0, or -1 when the write failed (on_error has run). */
static int send_proxy_header(struct session *s)
{
	struct sockaddr_storage dst;
	uint8_t hdr[PP_HEADER_MAX];
	client_destination(s, &dst);
	const struct sockaddr *src = s->peer.ss_family ? (const struct sockaddr *)&s->peer : NULL;
	enum pp_version v = s->r->proxy_protocol_out == CFG_PP_V1 ? PP_V1 : PP_V2;
	int n = v == PP_V1 ? pp_build_v1(src, (const struct sockaddr *)&dst, hdr, sizeof(hdr))
			   : pp_build_v2(src, (const struct sockaddr *)&dst, hdr, sizeof(hdr));
	char to[64];
	addr_text((const struct sockaddr *)&dst, to, sizeof(to));
	log_event(LOG_DEBUG, s->id, s->r->name, "proxy_protocol", "side", "upstream", "version",
		  pp_version_name(v), "client", s->client, "destination", to, "upstream",
		  s->upstream, NULL);
	if (n < 0) { /* cannot happen with PP_HEADER_MAX bytes */
		upstream_unreachable(s, "cannot build the PROXY protocol header");
		return -1;
	}
	return ep_write_raw(&s->up, hdr, (size_t)n) < 0 ? -1 : 0;
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct session *s = req->data;
	if (s->closed || s->ending || s->reconnecting || status == UV_ECANCELED)
		return;
	if (status < 0) {
		upstream_unreachable(s, uv_strerror(status));
		return;
	}
	s->up_connected = 1;
	metrics_connect_time(s->r->metrics, (now_ms(s) - s->phase_started_ms) * 1000);
	s->phase_started_ms = now_ms(s);
	log_event(LOG_DEBUG, s->id, s->r->name, "upstream_connected", "upstream", s->upstream,
		  NULL);
	if (s->r->proxy_protocol_out != CFG_PP_NONE && send_proxy_header(s) < 0)
		return;
	if (s->pol.tls == CFG_TLS_IMPLICIT) {
		if (start_upstream_tls(s) < 0) {
			session_end(s, "out of memory", NULL);
			return;
		}
	}
	ep_connected(&s->up);
	if (s->closed || s->ending)
		return;
	if (s->pol.tls != CFG_TLS_IMPLICIT && s->proto) {
		s->proto->upstream_connected(s->ps, &s->acts);
		exec_actions(s);
	} else if (s->pol.tls == CFG_TLS_NONE) {
		up_ready(s);
	}
	arm_timer(s);
}

/* source = client (TPROXY): the upstream socket is bound to the client's own address. */
static int open_as_client(struct session *s, const struct sockaddr_storage *d)
{
	struct sockaddr_storage src = s->peer;
	if (src.ss_family != d->ss_family)
		return -EAFNOSUPPORT;
	socklen_t len = src.ss_family == AF_INET ? sizeof(struct sockaddr_in)
						 : sizeof(struct sockaddr_in6);
	if (src.ss_family == AF_INET)
		((struct sockaddr_in *)(void *)&src)->sin_port = 0;
	else
		((struct sockaddr_in6 *)(void *)&src)->sin6_port = 0;
	int fd = socket(src.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	int rc = src.ss_family == AF_INET
			 ? setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one))
			 : setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
	if (rc < 0 || bind(fd, (struct sockaddr *)&src, len) < 0 ||
	    uv_tcp_open(&s->up.tcp, fd) < 0) {
		rc = -errno;
		close(fd);
		return rc ? rc : -EINVAL;
	}
	return 0;
}

/* Connects to the current candidate address. */
static void connect_upstream(struct session *s)
{
	s->up_started = 1;
	s->phase_started_ms = now_ms(s);
	decide(s);
	const struct sockaddr_storage *d = &s->dst[s->idst];
	if (s->r->source_client) {
		int rc = open_as_client(s, d);
		if (rc < 0) {
			upstream_unreachable(s, uv_strerror(rc));
			return;
		}
	}
	s->connect_req.data = s;
	int rc = uv_tcp_connect(&s->connect_req, &s->up.tcp, (const struct sockaddr *)d, connect_cb);
	if (rc < 0) {
		upstream_unreachable(s, uv_strerror(rc));
		return;
	}
	arm_timer(s);
}

/* ---- upstream TLS sessions --------------------------------------------------------- */

/* A session is resumed only by a later session of the same configuration and route,
 * toward the same address and server name, under the same policy level, trust store
 * (context), names and pins: one that passed no verification is never offered where a
 * verification is required. */
struct tls_cache_entry {
	char *id;
	struct tls_session *sess;
	uint64_t stored;
};

struct tls_cache {
	struct tls_cache_entry e[TLS_CACHE_SIZE];
};

/* The entry's identity for the session's current policy: 0, or -ENOBUFS when it does not
 * fit (not cached). */
static int tls_cache_id(const struct session *s, char *id, size_t len)
{
	const struct session_policy *p = &s->pol;
	int o = snprintf(id, len, "%llu|%s|%p|%d|%s|%s", (unsigned long long)s->cfg->generation,
			 s->r->name, (void *)p->ctx, (int)p->level, s->upstream,
			 sni(s) ? sni(s) : "");
	for (size_t i = 0; i < p->nnames && o > 0 && (size_t)o < len; i++)
		o += snprintf(id + o, len - (size_t)o, "|n:%s", p->names[i] ? p->names[i] : "");
	for (size_t i = 0; i < p->npins && o > 0 && (size_t)o < len; i++)
		for (int k = 0; k < 32 && (size_t)o < len; k++)
			o += snprintf(id + o, len - (size_t)o, k ? "%02x" : "|p:%02x", p->pins[i][k]);
	return o > 0 && (size_t)o < len ? 0 : -ENOBUFS;
}

static struct tls_cache_entry *tls_cache_find(struct session *s, const char *id)
{
	struct tls_cache *c = s->h->tls;
	for (size_t i = 0; c && i < TLS_CACHE_SIZE; i++)
		if (c->e[i].id && strcmp(c->e[i].id, id) == 0)
			return &c->e[i];
	return NULL;
}

static void entry_clear(struct tls_cache_entry *e)
{
	free(e->id);
	tls_session_free(e->sess);
	memset(e, 0, sizeof(*e));
}

/* The session to offer, or NULL (none, or too old). */
static struct tls_session *tls_cache_get(struct session *s)
{
	char id[2048];
	if (tls_cache_id(s, id, sizeof(id)) < 0)
		return NULL;
	struct tls_cache_entry *e = tls_cache_find(s, id);
	if (!e)
		return NULL;
	if (now_ms(s) - e->stored > TLS_CACHE_MS) {
		entry_clear(e);
		return NULL;
	}
	return e->sess;
}

/* Keeps the upstream connection's session (the caller checked it passed the policy): in
 * its own entry, else an empty or the oldest one. */
static void tls_cache_put(struct session *s)
{
	char id[2048];
	if (tls_cache_id(s, id, sizeof(id)) < 0)
		return;
	if (!s->h->tls && !(s->h->tls = calloc(1, sizeof(struct tls_cache))))
		return;
	struct tls_session *sess = tls_conn_get_session(s->up.tls);
	if (!sess)
		return;
	struct tls_cache_entry *e = tls_cache_find(s, id);
	if (!e) {
		struct tls_cache *c = s->h->tls;
		e = &c->e[0];
		for (size_t i = 0; i < TLS_CACHE_SIZE && e->id; i++)
			if (!c->e[i].id || c->e[i].stored < e->stored)
				e = &c->e[i];
		entry_clear(e);
		if (!(e->id = strdup(id))) {
			tls_session_free(sess);
			return;
		}
	} else {
		tls_session_free(e->sess);
	}
	e->sess = sess;
	e->stored = now_ms(s);
}

static void tls_cache_drop(struct session *s)
{
	char id[2048];
	struct tls_cache_entry *e = tls_cache_id(s, id, sizeof(id)) == 0 ? tls_cache_find(s, id)
									  : NULL;
	if (e)
		entry_clear(e);
}

/* TLS toward the upstream, offering a cached session unless one was refused already. */
static int start_upstream_tls(struct session *s)
{
	s->up_hs_ms = now_ms(s);
	int dane = s->pol.level == CFG_POLICY_DANE;
	struct tls_session *cached = s->resume_retry || dane ? NULL : tls_cache_get(s);
	s->resume_offered = cached != NULL;
	int rc = ep_start_tls_resume(&s->up, s->pol.ctx, sni(s), cached);
	if (rc == 0 && dane)
		tls_conn_want_dane(s->up.tls);
	return rc;
}

/* ---- where the upstream is -------------------------------------------------------------- */

/* A resolved upstream host name, shared by the host's sessions for DNS_CACHE_MS. */
struct dns_entry {
	char host[256];
	uint16_t port;
	int n;
	uint64_t expires;
	struct sockaddr_storage a[SESSION_ADDRS_MAX];
};

struct dns_cache {
	struct dns_entry e[DNS_CACHE_SIZE];
	unsigned next;
};

static struct dns_entry *dns_lookup(struct session *s)
{
	struct dns_cache *c = s->h->dns;
	const struct cfg_addr *u = &s->r->upstream;
	for (int i = 0; c && i < DNS_CACHE_SIZE; i++)
		if (c->e[i].n && c->e[i].port == u->port && c->e[i].expires > now_ms(s) &&
		    !strcasecmp(c->e[i].host, u->host))
			return &c->e[i];
	return NULL;
}

/* Room for SESSION_ADDRS_MAX candidates (a name's addresses, a domain's MX hosts): most
 * sessions have one address and keep it in dst1. 0, or -1 when out of memory. */
static int dst_many(struct session *s)
{
	if (s->dst != &s->dst1)
		return 0;
	struct sockaddr_storage *a = calloc(SESSION_ADDRS_MAX, sizeof(*a));
	if (!a)
		return -1;
	s->dst = a;
	return 0;
}

static void dns_store(struct session *s)
{
	if (!s->h->dns && !(s->h->dns = calloc(1, sizeof(struct dns_cache))))
		return;
	struct dns_cache *c = s->h->dns;
	struct dns_entry *e = &c->e[c->next++ % DNS_CACHE_SIZE];
	snprintf(e->host, sizeof(e->host), "%s", s->r->upstream.host);
	e->port = s->r->upstream.port;
	e->n = s->ndst;
	e->expires = now_ms(s) + DNS_CACHE_MS;
	memcpy(e->a, s->dst, sizeof(e->a[0]) * (size_t)s->ndst);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct session *s = req->data;
	if (!s->closed && !s->ending) {
		for (struct addrinfo *ai = res; ai && s->ndst < SESSION_ADDRS_MAX; ai = ai->ai_next)
			if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
			    ai->ai_addrlen <= sizeof(s->dst[0]))
				memcpy(&s->dst[s->ndst++], ai->ai_addr, ai->ai_addrlen);
		if (status < 0 || s->ndst == 0) {
			snprintf(s->upstream, sizeof(s->upstream), "%s:%u", s->r->upstream.host,
				 s->r->upstream.port);
			upstream_unreachable(s, status < 0 ? uv_strerror(status) : "no address");
		} else {
			dns_store(s);
			connect_upstream(s);
		}
	}
	uv_freeaddrinfo(res);
	handle_closed(s); /* the resolver's hold on the session */
}

static int is_local_address(const struct sockaddr *sa)
{
	struct ifaddrs *ifs, *i;
	int local = 0;
	if (getifaddrs(&ifs) < 0)
		return 0;
	for (i = ifs; i && !local; i = i->ifa_next) {
		const struct sockaddr *a = i->ifa_addr;
		if (!a || a->sa_family != sa->sa_family)
			continue;
		if (a->sa_family == AF_INET)
			local = ((const struct sockaddr_in *)(const void *)a)->sin_addr.s_addr ==
				((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr;
		else
			local = !memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
					&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
	}
	freeifaddrs(ifs);
	return local;
}

/* The address the client dialled: SO_ORIGINAL_DST after a REDIRECT (iptables and nftables),
 * or the accepted socket's own address under TPROXY. 0, or a negative errno. */
static int original_destination(struct session *s, struct sockaddr_storage *out)
{
	int fd;
	memset(out, 0, sizeof(*out));
	if (uv_fileno((const uv_handle_t *)&s->down.tcp, &fd) < 0)
		return -EBADF;
	socklen_t len = sizeof(*out);
	if (s->r->transparent == CFG_TRANSPARENT_TPROXY)
		return getsockname(fd, (struct sockaddr *)out, &len) < 0 ? -errno : 0;
	struct sockaddr_storage local;
	socklen_t llen = sizeof(local);
	if (getsockname(fd, (struct sockaddr *)&local, &llen) < 0)
		return -errno;
	/* SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST are both 80 */
	int rc = local.ss_family == AF_INET6
			 ? getsockopt(fd, SOL_IPV6, 80, out, &len)
			 : getsockopt(fd, SOL_IP, 80, out, &len);
	return rc < 0 ? -errno : 0;
}

/* A destination that is this host on a port the proxy listens on: no redirection took
 * place (a direct connection to the proxy), or a loop. */
static int is_self(struct session *s, const struct sockaddr_storage *d)
{
	uint16_t port = port_of(d);
	int listened = 0;
	for (size_t i = 0; i < s->cfg->nroutes && !listened; i++)
		listened = s->cfg->routes[i].listen.port == port;
	return listened && is_local_address((const struct sockaddr *)d);
}

/* The original destination of a transparent route: 0, or -1 when there is none (the
 * session is closed). */
static int find_original(struct session *s, struct sockaddr_storage *d)
{
	int rc = original_destination(s, d);
	if (rc < 0 || (d->ss_family != AF_INET && d->ss_family != AF_INET6) || is_self(s, d)) {
		char addr[64] = "none";
		if (rc == 0)
			addr_text((const struct sockaddr *)d, addr, sizeof(addr));
		log_event(LOG_WARN, s->id, s->r->name, "refused", "reason",
			  "no original destination", "client", s->client, "destination", addr,
			  "detail",
			  rc < 0 ? strerror(-rc) : "the proxy itself: the connection was not redirected",
			  NULL);
		session_close(s, "no original destination");
		return -1;
	}
	return 0;
}

/* ---- late binding ------------------------------------------------------------------------ */

/* The loop's resources for this configuration (a newer configuration replaces them). */
static struct late_res *late_res_of(struct session *s, char *err, size_t len)
{
	struct session_host *h = s->h;
	if (h->late && late_res_generation(h->late) < s->cfg->generation) {
		late_res_unref(h->late);
		h->late = NULL;
	}
	if (!h->late) {
		if (!h->sts_cache && !(h->sts_cache = sts_cache_new())) {
			snprintf(err, len, "out of memory");
			return NULL;
		}
		if (late_res_new(h->loop, s->cfg, h->sts_cache, &h->late, err, len) < 0)
			return NULL;
	}
	return h->late;
}

/* ---- TLSRPT: one evaluation per session toward an MX, and per refused recipient ---------- */

static void ip_of(const struct sockaddr_storage *a, char *buf, size_t len)
{
	buf[0] = '\0';
	if (a->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)a)->sin_addr, buf,
			  (socklen_t)len);
	else if (a->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)a)->sin6_addr, buf,
			  (socklen_t)len);
}

/* type: TLSRPT_STS (pol), TLSRPT_TLSA (c's records) or TLSRPT_NONE; mx, rip: the MX host
 * and address when a session was made (NULL otherwise); result: NULL for success. */
static void late_eval(struct session *s, const char *domain, enum tlsrpt_policy type,
		      const struct sts_policy *pol, const struct late_cand *c, const char *mx,
		      const struct sockaddr_storage *rip, const char *result)
{
	metrics_evaluation(s->r->metrics, (int)type, result);
	struct tlsrpt *rp = s->h->shared ? s->h->shared->tlsrpt : NULL;
	if (!rp)
		return;
	static __thread char lines[STS_MX_MAX + 3][STS_NAME_MAX + 16];
	const char *strs[STS_MX_MAX + 3], *mxs[STS_MX_MAX];
	size_t ns = 0, nm = 0;
	if (type == TLSRPT_STS && pol) {
		snprintf(lines[ns], sizeof(lines[0]), "version: STSv1");
		strs[ns] = lines[ns], ns++;
		snprintf(lines[ns], sizeof(lines[0]), "mode: %s", sts_mode_name(pol->mode));
		strs[ns] = lines[ns], ns++;
		for (size_t i = 0; i < pol->nmx; i++) {
			snprintf(lines[ns], sizeof(lines[0]), "mx: %s", pol->mx[i]);
			strs[ns] = lines[ns], ns++;
			mxs[nm++] = pol->mx[i];
		}
		snprintf(lines[ns], sizeof(lines[0]), "max_age: %u", (unsigned)pol->max_age);
		strs[ns] = lines[ns], ns++;
	} else if (type == TLSRPT_TLSA && c) {
		for (size_t i = 0; i < c->ntlsa && ns < LATE_TLSA_MAX; i++) {
			const struct dns_tlsa *t = &c->tlsa[i];
			int o = snprintf(lines[ns], sizeof(lines[0]), "%u %u %u ", t->usage, t->selector,
					 t->mtype);
			for (size_t k = 0; k < t->len && k < DNS_TLSA_DATA_MAX &&
					   (size_t)o + 3 < sizeof(lines[0]);
			     k++)
				o += snprintf(lines[ns] + o, sizeof(lines[0]) - (size_t)o, "%02X",
					      t->data[k]);
			strs[ns] = lines[ns], ns++;
		}
	}
	char sip[INET6_ADDRSTRLEN] = "", rips[INET6_ADDRSTRLEN] = "";
	if (rip)
		ip_of(rip, rips, sizeof(rips));
	struct sockaddr_storage local;
	int ll = sizeof(local);
	if (rip && s->up.open && uv_tcp_getsockname(&s->up.tcp, (struct sockaddr *)&local, &ll) == 0)
		ip_of(&local, sip, sizeof(sip));
	struct tlsrpt_eval e = { .domain = domain, .type = type, .policy_strings = strs,
				 .npolicy_strings = ns, .mx_hosts = mxs, .nmx_hosts = nm,
				 .success = result == NULL, .result_type = result,
				 .sending_ip = sip[0] ? sip : NULL,
				 .receiving_mx_hostname = mx && mx[0] ? mx : NULL,
				 .receiving_ip = rips[0] ? rips : NULL };
	tlsrpt_count(rp, &e);
}

/* The session toward the bound domain's MX passed (NULL) or failed the policy. */
static void late_eval_conn(struct session *s, const char *result)
{
	if (!s->late_route || !s->up_started)
		return;
	const struct late_cand *c = s->cands ? &s->cands[s->idst] : NULL;
	enum tlsrpt_policy type = c && c->dane ? TLSRPT_TLSA
				  : s->late_sts	 ? TLSRPT_STS
						 : TLSRPT_NONE;
	late_eval(s, s->lt->domain, type, s->late_pol, c, s->lt->dst_name[s->idst], &s->dst[s->idst],
		  result);
}

/* The policy type a plan's failure is reported under. */
static enum tlsrpt_policy plan_type(const struct late_plan *p, const char *result)
{
	if (p->dane || (result && (!strcmp(result, "dnssec-invalid") || !strcmp(result, "tlsa-invalid") ||
				   !strcmp(result, "dane-required"))))
		return TLSRPT_TLSA;
	if (p->sts || (result && !strncmp(result, "sts-", 4)))
		return TLSRPT_STS;
	return TLSRPT_NONE;
}

/* A recipient domain's policy failure: logged and counted (testing: not enforced). */
static void late_report(struct session *s, const struct late_plan *p, const char *result,
			const char *detail, int testing, int conn)
{
	metrics_policy_failure(s->r->metrics, result, testing);
	/* TLSRPT: against the connected MX (conn) or before any session (the plan) */
	const struct late_cand *c = NULL;
	for (size_t i = 0; conn && i < p->n && !c; i++)
		if (!strcasecmp(p->c[i].name, s->lt->dst_name[s->idst]))
			c = &p->c[i];
	late_eval(s, p->domain, plan_type(p, result), p->policy, c,
		  conn ? s->lt->dst_name[s->idst] : NULL, conn ? &s->dst[s->idst] : NULL, result);
	log_event(LOG_WARN, s->id, s->r->name, "policy_failure", "side", "upstream", "result",
		  result, "mode", testing ? "testing" : "enforce", "policy",
		  p->dane ? "dane" : p->sts ? "mta-sts" : cfg_policy_name(s->late_level),
		  "domain",
		  p->domain, "upstream", s->up_started ? s->upstream : NULL, "detail", detail, NULL);
}

static int late_testing(const struct session *s, const struct late_plan *p)
{
	return s->late_mode == CFG_MODE_TESTING || !p->sts || p->mode != STS_MODE_ENFORCE;
}

static void planned(void *arg, const struct late_plan *p)
{
	struct session *s = arg;
	s->late_req = NULL;
	if (s->closed || s->ending)
		return;
	if (p->result)
		late_report(s, p, p->result, p->detail,
			    !p->fail || s->late_mode == CFG_MODE_TESTING, 0);
	if (p->fail) {
		log_event(LOG_INFO, s->id, s->r->name, "late_bind", "domain", p->domain, "result",
			  "refused", "reply", p->reply, "detail", p->detail, NULL);
		s->proto->bind_failed(s->ps, p->reply, &s->acts);
		exec_actions(s);
		return;
	}
	s->late_sts = p->sts;
	s->late_testing = p->sts && p->mode == STS_MODE_TESTING;
	free(s->late_pol);
	s->late_pol = NULL;
	if (p->sts && p->policy && (s->late_pol = malloc(sizeof(*s->late_pol))))
		*s->late_pol = *p->policy;
	free(s->cands);
	s->cands = NULL;
	if (p->dane && !(s->cands = malloc(sizeof(*s->cands) * p->n))) {
		s->proto->bind_failed(s->ps, "451 4.3.0 Out of memory; try again later", &s->acts);
		exec_actions(s);
		return;
	}
	if (s->cands)
		memcpy(s->cands, p->c, sizeof(*s->cands) * p->n);
	if (dst_many(s) < 0) {
		s->proto->bind_failed(s->ps, "451 4.3.0 Out of memory; try again later", &s->acts);
		exec_actions(s);
		return;
	}
	s->ndst = (int)p->n;
	s->idst = 0;
	for (size_t i = 0; i < p->n; i++) {
		s->dst[i] = p->c[i].addr;
		snprintf(s->lt->dst_name[i], sizeof(s->lt->dst_name[i]), "%s", p->c[i].name);
		s->lt->dst_sts_match[i] = (unsigned char)p->c[i].sts_match;
	}
	log_event(LOG_INFO, s->id, s->r->name, "late_bind", "domain", p->domain, "policy",
		  p->dane ? "dane" : p->sts ? "mta-sts" : "none", "mode",
		  !p->dane && p->sts ? sts_mode_name(p->mode) : NULL,
		  "id", !p->dane && p->sts ? p->sts_id : NULL, "mx",
		  p->c[0].name[0] ? p->c[0].name : NULL,
		  NULL);
	connect_upstream(s);
}

/* A later recipient: may the connected upstream take it? The domain's MX hosts must
 * include it (upstream = mx), and its MTA-STS policy must accept the connection: TLS with a
 * certificate verified for an MX name in the policy's patterns. */
static void checked(void *arg, const struct late_plan *p)
{
	struct session *s = arg;
	s->late_req = NULL;
	if (s->closed || s->ending)
		return;
	const char *name = s->lt->dst_name[s->idst];
	int ok = 1, reported = 0, routed = 1;
	char reply[300] = "", detail[900];
	if (p->fail) {
		ok = 0;
		snprintf(reply, sizeof(reply), "%s", p->reply);
		if (p->result)
			late_report(s, p, p->result, p->detail, s->late_mode == CFG_MODE_TESTING, 0);
	} else {
		if (p->result)
			late_report(s, p, p->result, p->detail, 1, 0);
		if (!s->r->upstream.original_dst) {
			int same = 0;
			for (size_t i = 0; i < p->n && !same; i++)
				same = !strcasecmp(p->c[i].name, name);
			if (!same) {
				ok = routed = 0;
				snprintf(reply, sizeof(reply),
					 "452 4.5.3 Recipient's domain has other mail servers; send it "
					 "in another transaction");
			}
		}
		/* DANE: the domain's TLSA records for this host must match this connection */
		const struct late_cand *dc = NULL;
		for (size_t i = 0; ok && p->dane && i < p->n && !dc; i++)
			if (p->c[i].dane && !strcasecmp(p->c[i].name, name))
				dc = &p->c[i];
		if (dc) {
			struct tls_tlsa t[LATE_TLSA_MAX];
			for (size_t i = 0; i < dc->ntlsa; i++) {
				struct tls_tlsa x = { dc->tlsa[i].usage, dc->tlsa[i].selector,
						      dc->tlsa[i].mtype,
						      dc->tlsa[i].len <= DNS_TLSA_DATA_MAX ? dc->tlsa[i].len
											   : 0,
						      dc->tlsa[i].data };
				t[i] = x;
			}
			const char *res = s->up.tls && s->up.tls_ready && s->pol.level == CFG_POLICY_DANE
						  ? tls_conn_dane_check(s->up.tls, t, dc->ntlsa, &name, 1,
									detail, sizeof(detail))
						  : "dane-required";
			if (res && !strcmp(res, "dane-required"))
				snprintf(detail, sizeof(detail),
					 "%s has TLSA records for %s; this connection was not "
					 "authenticated by DANE", p->domain, name);
			if (res) {
				late_report(s, p, res, detail, s->late_mode == CFG_MODE_TESTING, 1);
				reported = 1;
				if (s->late_mode != CFG_MODE_TESTING) {
					ok = 0;
					snprintf(reply, sizeof(reply),
						 "450 4.7.5 Recipient domain's DANE TLSA records do not match "
						 "this connection; try again later");
				}
			}
		} else if (ok && p->sts &&
		    !(s->up.tls && s->up.tls_ready && s->up_verified && name[0] &&
		      sts_mx_match(p->policy, name))) {
			snprintf(detail, sizeof(detail),
				 "the connection to %s (%s) does not meet the MTA-STS policy of %s",
				 name[0] ? name : "an unknown MX", s->upstream, p->domain);
			int testing = late_testing(s, p);
			late_report(s, p,
				    s->up.tls && s->up.tls_ready ? "validation-failure"
								 : "starttls-not-supported",
				    detail, testing, 1);
			reported = 1;
			if (!testing) {
				ok = 0;
				snprintf(reply, sizeof(reply),
					 "450 4.7.5 Recipient domain's MTA-STS policy is not met by "
					 "this connection; try again later");
			}
		}
	}
	if (!p->fail && routed && !reported) { /* this connection meets the domain's policy */
		const struct late_cand *c = NULL;
		for (size_t i = 0; i < p->n && !c; i++)
			if (!strcasecmp(p->c[i].name, name))
				c = &p->c[i];
		late_eval(s, p->domain, c && c->dane ? TLSRPT_TLSA : p->sts ? TLSRPT_STS : TLSRPT_NONE,
			  p->policy, c, name, &s->dst[s->idst], NULL);
	}
	log_event(LOG_INFO, s->id, s->r->name, "late_check", "domain", p->domain, "result",
		  ok ? "ok" : "refused", "reply", ok ? NULL : reply, NULL);
	s->proto->rcpt_verdict(s->ps, ok, reply, &s->acts);
	exec_actions(s);
}

/* PA_BIND (the first recipient) or PA_CHECK (a later one, another domain). */
static void late_lookup(struct session *s, const char *domain, int check)
{
	char err[200] = "";
	struct late_res *res = s->late ? s->late : late_res_of(s, err, sizeof(err));
	if (res && !s->late)
		s->late = late_res_ref(res);
	const struct sockaddr_storage *orig = s->r->upstream.original_dst ? &s->orig : NULL;
	uint16_t port = orig ? port_of(orig) : s->r->upstream.port;
	if (!check)
		snprintf(s->lt->domain, sizeof(s->lt->domain), "%s", domain);
	s->late_req = res ? late_plan(res, domain, s->late_level, orig, port,
				      s->late_mode == CFG_MODE_TESTING,
				      check ? checked : planned, s)
			  : NULL;
	if (s->late_req)
		return;
	log_event(LOG_WARN, s->id, s->r->name, "late_bind", "domain", domain, "error",
		  err[0] ? err : "out of memory", NULL);
	const char *reply = "451 4.3.0 Temporary failure looking up the recipient's domain";
	if (check)
		s->proto->rcpt_verdict(s->ps, 0, reply, &s->acts);
	else
		s->proto->bind_failed(s->ps, reply, &s->acts);
	exec_actions(s);
}

/* Finds the upstream's candidate addresses, then connects to the first. */
static void start_upstream(struct session *s)
{
	const struct cfg_addr *u = &s->r->upstream;
	s->ndst = s->idst = 0;
	if (u->original_dst) {
		struct sockaddr_storage d;
		if (find_original(s, &d) < 0)
			return;
		s->dst[s->ndst++] = d;
		connect_upstream(s);
		return;
	}
	if (!u->needs_dns) {
		s->dst[s->ndst++] = u->ss;
		connect_upstream(s);
		return;
	}
	if (dst_many(s) < 0) {
		upstream_unreachable(s, "out of memory");
		return;
	}
	struct dns_entry *e = dns_lookup(s);
	if (e) {
		memcpy(s->dst, e->a, sizeof(e->a[0]) * (size_t)e->n);
		s->ndst = e->n;
		connect_upstream(s);
		return;
	}
	char port[8];
	snprintf(port, sizeof(port), "%u", u->port);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	s->gai.data = s;
	s->up_started = 1;
	s->phase_started_ms = now_ms(s);
	snprintf(s->upstream, sizeof(s->upstream), "%s:%u", u->host, u->port);
	if (uv_getaddrinfo(s->h->loop, &s->gai, resolved, u->host, port, &hints) < 0) {
		upstream_unreachable(s, "cannot resolve");
		return;
	}
	s->handles++; /* released in resolved() */
	arm_timer(s);
}

/* ---- accept ---------------------------------------------------------------------- */

/* The client's address, everywhere the session uses it. */
static void set_client(struct session *s, const struct sockaddr_storage *peer)
{
	s->peer = *peer;
	/* An IPv4 client of a dual-stack [::] listener arrives as ::ffff:a.b.c.d: it is an
	 * IPv4 client for the logs, client_allow, the per-client limit and XCLIENT. */
	const struct sockaddr_in6 *m6 = (const void *)peer;
	if (peer->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&m6->sin6_addr)) {
		struct sockaddr_in *v4 = (struct sockaddr_in *)&s->peer;
		uint16_t port = m6->sin6_port;
		uint8_t a4[4];
		memcpy(a4, &m6->sin6_addr.s6_addr[12], 4);
		memset(&s->peer, 0, sizeof(s->peer));
		v4->sin_family = AF_INET;
		v4->sin_port = port;
		memcpy(&v4->sin_addr, a4, 4);
		peer = &s->peer;
	}
	addr_text((const struct sockaddr *)peer, s->client, sizeof(s->client));
	if (peer->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)peer;
		inet_ntop(AF_INET, &a->sin_addr, s->client_ip, sizeof(s->client_ip));
		s->client_port = ntohs(a->sin_port);
	} else if (peer->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)peer;
		inet_ntop(AF_INET6, &a->sin6_addr, s->client_ip, sizeof(s->client_ip));
		s->client_port = ntohs(a->sin6_port);
	}
}

static void peer_address(struct session *s)
{
	struct sockaddr_storage peer;
	int plen = sizeof(peer);
	if (uv_tcp_getpeername(&s->down.tcp, (struct sockaddr *)&peer, &plen) == 0)
		set_client(s, &peer);
}

static void fill_params(const struct session *s, struct proto_params *out)
{
	const struct cfg_route *r = s->r;
	struct proto_params p = {
		.session_id = s->id, .route = r->name, .protocol = r->protocol,
		.client_tls = s->ctls, .upstream_tls = r->upstream_tls,
		.client_policy = r->client_policy, .upstream_policy = r->upstream_policy,
		.policy_mode = r->policy_mode, .helo_name = s->cfg->helo_name,
		.xclient = r->xclient, .bare_newline = r->bare_newline, .client_ip = s->client_ip, .client_port = s->client_port,
		.late = s->late_route,
		.defer = s->r->greeting_local && !s->late_route,
		.client_name = s->r->xclient ? s->client_name : NULL,
	};
	*out = p;
}

static int start_proto(struct session *s);

/* A transparent SMTP route whose policy table gives the original destination a recipient
 * domain level (mta-sts, dane, auto) binds late, like a route with that level. 0, or -1
 * when the session was closed (no original destination). */
static int late_from_table(struct session *s)
{
	const struct cfg_route *r = s->r;
	if (s->late_route || !r->upstream.original_dst || !r->policy || r->protocol != CFG_PROTO_SMTP)
		return 0;
	struct sockaddr_storage d;
	if (find_original(s, &d) < 0)
		return -1;
	struct session_policy p;
	policy_decide(r, (const struct sockaddr *)&d, port_of(&d), &p);
	if (p.level < CFG_POLICY_MTA_STS)
		return 0;
	s->late_route = 1;
	s->late_level = p.level;
	s->late_mode = p.mode;
	char src[32];
	policy_source(&p, src, sizeof(src));
	log_event(LOG_INFO, s->id, r->name, "late_binding", "policy", cfg_policy_name(p.level),
		  "source", src, NULL);
	return 0;
}

/* The client is who it is (TLS or not): the protocol module starts, then the upstream. */
/* XCLIENT NAME: the client address's PTR name, confirmed by a forward lookup that gives
 * the address back (as Postfix's smtpd does for its own clients); the lookups run in
 * libuv's thread pool while the upstream connects, and a session that ends first leaves
 * the request to free itself. */
static void exec_actions(struct session *s);

/* The name is known (or given up): the module waiting for it goes on. */
static void name_known(struct session *s, const char *name)
{
	snprintf(s->client_name, SESSION_NAME_MAX, "%s", name);
	log_event(LOG_DEBUG, s->id, s->r->name, "client_name", "name", name, NULL);
	s->nreq = NULL;
	if (s->proto && s->proto->client_name_ready && !s->ending && !s->closed) {
		s->proto->client_name_ready(s->ps, &s->acts);
		exec_actions(s);
	}
}

/* name may point into nr (its host): nr is freed last */
static void name_done(struct name_req *nr, const char *name)
{
	struct session *s = nr->s;
	if (s) {
		name_known(s, name);
		arm_timer(s);
	}
	free(nr);
}

static void name_given_up(struct session *s)
{
	if (!s->nreq)
		return;
	s->nreq->s = NULL; /* its callbacks free it */
	name_known(s, "[TEMPUNAVAIL]");
}

static int same_ip(const struct sockaddr *a, const struct sockaddr_storage *b)
{
	if (a->sa_family != b->ss_family)
		return 0;
	if (a->sa_family == AF_INET)
		return !memcmp(&((const struct sockaddr_in *)a)->sin_addr,
			       &((const struct sockaddr_in *)b)->sin_addr, 4);
	return a->sa_family == AF_INET6 &&
	       !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
		       &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
}

static void name_forward(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct name_req *nr = req->data;
	int confirmed = 0;
	for (struct addrinfo *ai = res; status == 0 && nr->s && ai && !confirmed; ai = ai->ai_next)
		confirmed = same_ip(ai->ai_addr, &nr->s->peer);
	if (res)
		uv_freeaddrinfo(res);
	name_done(nr, confirmed ? nr->host
		      : status == UV_EAI_AGAIN ? "[TEMPUNAVAIL]" : "[UNAVAILABLE]");
}

static void name_reverse(uv_getnameinfo_t *req, int status, const char *host,
			 const char *service)
{
	(void)service;
	struct name_req *nr = req->data;
	if (!nr->s || status < 0 || !host || !*host) {
		name_done(nr, status == UV_EAI_AGAIN ? "[TEMPUNAVAIL]" : "[UNAVAILABLE]");
		return;
	}
	snprintf(nr->host, sizeof(nr->host), "%s", host);
	struct addrinfo hints = { .ai_family = nr->s->peer.ss_family, .ai_socktype = SOCK_STREAM };
	nr->ai.data = nr;
	if (uv_getaddrinfo(nr->s->h->loop, &nr->ai, name_forward, nr->host, NULL, &hints) < 0)
		name_done(nr, "[TEMPUNAVAIL]");
}

static void lookup_name(struct session *s)
{
	struct name_req *nr = calloc(1, sizeof(*nr));
	if (!nr) {
		snprintf(s->client_name, SESSION_NAME_MAX, "[TEMPUNAVAIL]");
		return;
	}
	nr->s = s;
	nr->ni.data = nr;
	s->nreq = nr;
	s->name_started_ms = now_ms(s);
	if (uv_getnameinfo(s->h->loop, &nr->ni, name_reverse, (const struct sockaddr *)&s->peer,
			   NI_NAMEREQD) < 0) {
		s->nreq = NULL;
		free(nr);
		snprintf(s->client_name, SESSION_NAME_MAX, "[TEMPUNAVAIL]");
	}
}

static void start(struct session *s)
{
	if (late_from_table(s) < 0)
		return;
	if ((s->late_route && !(s->lt = calloc(1, sizeof(*s->lt)))) ||
	    (s->r->xclient && !(s->client_name = calloc(1, SESSION_NAME_MAX)))) {
		session_close(s, "out of memory");
		return;
	}
	if (s->r->xclient && !s->late_route)
		lookup_name(s);
	if (start_proto(s) < 0) {
		session_close(s, "out of memory");
		return;
	}
	arm_timer(s);
	if (!deferred(s)) {
		start_upstream(s);
		return;
	}
	/* late binding: the module greets the client; the upstream comes at the first RCPT.
	 * greeting = local: at the client's first complete command line (PA_CONNECT). */
	if (s->late_route && s->r->upstream.original_dst && find_original(s, &s->orig) < 0)
		return;
	s->proto->late_start(s->ps, &s->acts);
	exec_actions(s);
	arm_timer(s);
}

/* client_tls = auto: the client's first bytes (or its silence until detect_timeout) tell
 * whether it starts TLS (a TLS handshake record, 0x16) or waits for a plaintext greeting. */
static void detected(struct session *s, const uint8_t *data, size_t len)
{
	s->detecting = 0;
	if (len && data[0] == 0x16) {
		s->ctls = CFG_TLS_IMPLICIT;
		s->down_ready = 0;
		s->client_hs_ms = now_ms(s);
		log_event(LOG_DEBUG, s->id, s->r->name, "client_detected", "tls", "implicit", NULL);
		if (ep_start_tls_with(&s->down, s->r->client_side_tls, data, len) < 0) {
			session_close(s, "out of memory");
			return;
		}
		if (!s->closed && !s->ending)
			start(s);
		return;
	}
	s->ctls = CFG_TLS_STARTTLS;
	s->down_ready = 1;
	log_event(LOG_DEBUG, s->id, s->r->name, "client_detected", "tls",
		  len ? "plaintext" : "none (waits)", NULL);
	start(s);
	if (len && !s->closed && !s->ending)
		on_data(&s->down, data, len);
}

static int start_proto(struct session *s)
{
	s->proto = proto_lookup(s->r->protocol);
	if (!s->proto)
		return 0;
	struct proto_params p;
	fill_params(s, &p);
	s->ps = s->proto->create(&p);
	return s->ps ? 0 : -1;
}

/* A connection over a limit: mail protocols get a temporary reply before the close (inside
 * TLS for implicit TLS, after the handshake; the client retries later either way). data:
 * the client's first bytes, read with a PROXY header (its ClientHello, on implicit TLS). */
static void refuse(struct session *s, enum proto_refusal kind, const char *why,
		   const uint8_t *data, size_t len)
{
	log_event(LOG_WARN, s->id, s->r->name, "refused", "reason", why, "client", s->client,
		  kind == PR_NOT_ALLOWED ? "result" : NULL, "client-not-allowed", NULL);
	metrics_refusal(s->r->metrics, kind == PR_NOT_ALLOWED ? "client-not-allowed"
				       : !strcmp(why, "max_connections") ? "max-connections"
									  : "max-connections-per-client");
	const struct proto_ops *ops = proto_lookup(s->r->protocol);
	if (!ops) {
		session_close(s, why);
		return;
	}
	/* implicit TLS: the refusal inside TLS, where the client can read it */
	if (s->ctls == CFG_TLS_IMPLICIT &&
	    (len ? ep_start_tls_with(&s->down, s->r->client_side_tls, data, len)
		 : ep_start_tls(&s->down, s->r->client_side_tls, NULL)) < 0) {
		session_close(s, why);
		return;
	}
	s->down_ready = s->ctls != CFG_TLS_IMPLICIT;
	if (!s->down.connected)
		ep_connected(&s->down);
	struct proto_params p;
	fill_params(s, &p);
	ops->refuse(&p, kind, &s->acts);
	for (size_t i = 0; i < s->acts.n; i++) /* the reply; its PA_CLOSE is session_end's */
		if (s->acts.a[i].type == PA_SEND)
			ep_write(&s->down, s->acts.buf + s->acts.a[i].off, s->acts.a[i].len);
	proto_actions_clear(&s->acts);
	session_end(s, why, NULL);
}

/* client_allow: the client's address is in one of the networks. */
static int client_allowed(struct session *s)
{
	if (s->peer.ss_family != AF_INET && s->peer.ss_family != AF_INET6)
		return 0;
	for (size_t i = 0; i < s->r->nclient_allow; i++)
		if (cfg_cidr_match(&s->r->client_allow[i], (const struct sockaddr *)&s->peer))
			return 1;
	return 0;
}

static void reject_closed(uv_handle_t *h)
{
	free(h);
}

/* No session can be made (out of memory): the connection is taken and closed at once,
 * so that it does not wait in the backlog. */
static void reject(uv_loop_t *loop, uv_stream_t *server)
{
	uv_tcp_t *t = malloc(sizeof(*t));
	if (!t)
		return;
	uv_tcp_init(loop, t);
	if (uv_accept(server, (uv_stream_t *)t) < 0)
		log_event(LOG_WARN, NULL, NULL, "accept_failed", "error", "out of memory", NULL);
	uv_close((uv_handle_t *)t, reject_closed);
}

/* The client is known (its socket's peer, or the PROXY header's source): the limits, then
 * its TLS, then the session starts. data: the client's first bytes, read with the PROXY
 * header (none without one), processed as if they had just arrived. */
static void admit(struct session *s, const uint8_t *data, size_t len)
{
	struct cfg_route *r = s->r;
	struct session_host *h = s->h;
	s->client_hs_ms = now_ms(s); /* detect_timeout and handshake_timeout start now */
	if (r->nclient_allow && !client_allowed(s)) {
		refuse(s, PR_NOT_ALLOWED, "client-not-allowed", data, len);
		return;
	}
	if ((unsigned long)s->active > h->cfg->max_connections) {
		refuse(s, PR_LIMIT, "max_connections", data, len);
		return;
	}
	if (r->max_connections_per_client) {
		unsigned n = shared_client_acquire(h->shared, r, s->client_ip);
		s->counted_client = n > 0;
		if (n == 0 || n > r->max_connections_per_client) {
			refuse(s, PR_LIMIT, "max_connections_per_client", data, len);
			return;
		}
	}
	if (r->client_tls == CFG_TLS_AUTO) {
		s->detecting = 1;
		s->down_ready = 1; /* reads flow; detected() decides */
		if (len) {
			detected(s, data, len);
			return;
		}
		if (!s->down.connected)
			ep_connected(&s->down);
		arm_timer(s);
		return;
	}
	if (r->client_tls == CFG_TLS_IMPLICIT) {
		if ((len ? ep_start_tls_with(&s->down, r->client_side_tls, data, len)
			 : ep_start_tls(&s->down, r->client_side_tls, NULL)) < 0) {
			session_close(s, "out of memory");
			return;
		}
	} else {
		s->down_ready = 1;
	}
	if (!s->down.connected)
		ep_connected(&s->down);
	if (s->closed)
		return;
	start(s);
	if (len && r->client_tls != CFG_TLS_IMPLICIT && !s->closed && !s->ending)
		on_data(&s->down, data, len);
}

/* proxy_protocol_in: a header that is not there, not whole, or not valid ends the session
 * before anything else happened: no reply to the client, no upstream connection. */
static void pp_refused(struct session *s, const char *reason, const char *close_reason)
{
	char got[24];
	snprintf(got, sizeof(got), "%zu", s->pp_len);
	log_event(LOG_WARN, s->id, s->r->name, "proxy_protocol", "result", "invalid", "reason",
		  reason, "version", s->r->proxy_protocol_in == CFG_PP_V1 ? "v1" : "v2", "client",
		  s->client, "received", got, NULL);
	metrics_refusal(s->r->metrics, "proxy-protocol");
	snprintf(s->close_detail, sizeof(s->close_detail), "%s", reason);
	session_close(s, close_reason);
}

/* proxy_protocol_in: the header's bytes as they arrive. Once it is whole, its addresses
 * replace the socket's, and the bytes after it in this read are the client's first. */
static void pp_input(struct session *s, const uint8_t *data, size_t len)
{
	if (!s->pp_buf && !(s->pp_buf = malloc(PP_HEADER_MAX))) {
		session_close(s, "out of memory");
		return;
	}
	size_t before = s->pp_len;
	size_t take = len < PP_HEADER_MAX - before ? len : PP_HEADER_MAX - before;
	memcpy(s->pp_buf + before, data, take);
	s->pp_len += take;
	struct pp_result res;
	const char *why = NULL;
	enum pp_version v = s->r->proxy_protocol_in == CFG_PP_V1 ? PP_V1 : PP_V2;
	int rc = pp_parse(v, s->pp_buf, s->pp_len, &res, &why);
	if (rc == -EAGAIN && s->pp_len < PP_HEADER_MAX)
		return;
	if (rc < 0) { /* (-EAGAIN at PP_HEADER_MAX bytes: the parser's bounds forbid it) */
		pp_refused(s, why ? why : "header too long", "proxy protocol");
		return;
	}
	/* every earlier call needed more, so the header ends in this read */
	size_t used = (size_t)rc > before ? (size_t)rc - before : 0;
	free(s->pp_buf);
	s->pp_buf = NULL;
	s->pp_reading = 0;
	char proxy[64], dst[64] = "";
	snprintf(proxy, sizeof(proxy), "%s", s->client);
	if (res.has_addr) {
		s->pp_addr = 1;
		s->pp_dst = res.dst;
		set_client(s, &res.src);
		addr_text((const struct sockaddr *)&res.dst, dst, sizeof(dst));
	}
	log_event(LOG_INFO, s->id, s->r->name, "proxy_protocol", "result", "ok", "version",
		  pp_version_name(v), "command", res.local ? "local" : NULL, "client", s->client,
		  "proxy", proxy, "destination", dst[0] ? dst : NULL, "address",
		  res.has_addr ? NULL : "none", NULL);
	admit(s, data + used, len - used);
}

void session_accept(struct session_host *h, struct cfg_route *r, uv_stream_t *server)
{
	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		reject(h->loop, server);
		return;
	}
	s->h = h;
	s->cfg = cfg_ref(h->cfg);
	s->r = r;
	s->dst = &s->dst1;
	s->late_route = cfg_route_late(r) && proto_lookup(r->protocol) != NULL;
	s->late_level = r->upstream_policy;
	s->late_mode = r->policy_mode;
	shared_session_id(h->shared, s->id);
	s->started_ms = s->last_activity_ms = s->client_hs_ms = now_ms(s);
	uv_timer_init(h->loop, &s->timer);
	s->timer.data = s;
	s->handles = 1;
	if (ep_init(&s->down, h->loop, &down_ops, s, h->readbuf) == 0)
		s->handles++;
	if (ep_init(&s->up, h->loop, &up_ops, s, h->readbuf) == 0)
		s->handles++;
	list(s);
	long active = shared_session_opened(h->shared);
	metrics_conn_open(r->metrics);
	if (s->handles != 3 || uv_accept(server, (uv_stream_t *)&s->down.tcp) < 0) {
		session_close(s, "accept failed");
		return;
	}
	peer_address(s);
	log_event(LOG_INFO, s->id, r->name, "accept", "client", s->client, NULL);
	/* auto: plaintext until the client shows otherwise (a refusal goes out in plaintext) */
	s->ctls = r->client_tls == CFG_TLS_AUTO ? CFG_TLS_STARTTLS : r->client_tls;
	s->active = active;
	if (r->proxy_protocol_in != CFG_PP_NONE) {
		/* the header first: nothing else happens until it is in (pp_input) */
		s->pp_reading = 1;
		ep_connected(&s->down);
		arm_timer(s);
		return;
	}
	admit(s, NULL, 0);
}

void session_shutdown(struct session *s)
{
	if (s->proto && !s->ending && !s->closed)
		fail_upstream(s, PF_SHUTDOWN, NULL, "shutdown");
	else
		session_close(s, "shutdown");
}

int session_drain(struct session *s)
{
	if (!s->proto || !s->proto->idle || s->ending || s->closed || !s->down_ready ||
	    !s->proto->idle(s->ps))
		return 0;
	session_shutdown(s);
	return 1;
}

struct session *session_next(struct session *s)
{
	return s->next;
}

void session_host_stop(struct session_host *h)
{
	late_res_unref(h->late);
	h->late = NULL;
}

void session_host_cleanup(struct session_host *h)
{
	session_host_stop(h);
	sts_cache_free(h->sts_cache);
	h->sts_cache = NULL;
	free(h->dns);
	h->dns = NULL;
	for (size_t i = 0; h->tls && i < TLS_CACHE_SIZE; i++)
		entry_clear(&h->tls->e[i]);
	free(h->tls);
	h->tls = NULL;
}
