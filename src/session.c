/* session.c - one downstream/upstream pair (see session.h). */
#include "session.h"

#include "config.h"
#include "log.h"
#include "tls.h"
#include "worker.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Backpressure watermarks on the peer's unsent bytes. */
#define HIGH_WATER (256 * 1024)
#define LOW_WATER (64 * 1024)
/* How long a closing session waits for its last bytes (reply, close_notify) to leave. */
#define LINGER_MS 3000

enum timer_kind { T_NONE, T_CONNECT, T_HANDSHAKE_CLIENT, T_HANDSHAKE_UPSTREAM, T_IDLE, T_LINGER };

struct session {
	struct session *next, *prev;
	struct worker *w;
	struct cfg *cfg;
	struct cfg_route *r;
	char id[17];
	char client[64];
	char upstream[300];
	struct endpoint down, up;
	uv_timer_t timer;
	uv_connect_t connect_req;
	enum timer_kind timer_kind;
	uint64_t started_ms, last_activity_ms, phase_started_ms;
	int handles; /* open handles: down, up, timer */
	unsigned up_started : 1, up_connected : 1, up_ready : 1, down_ready : 1;
	unsigned ending : 1, closed : 1;
	const char *close_reason;
	char close_detail[160];
	char verify_desc[16];
};

static const struct ep_ops down_ops, up_ops;

static uint64_t now_ms(struct session *s)
{
	return uv_now(&s->w->loop);
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

/* ---- teardown -------------------------------------------------------------------- */

static void handle_closed(struct session *s)
{
	if (--s->handles > 0)
		return;
	worker_session_removed(s->w, s);
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
	snprintf(down, sizeof(down), "%llu", (unsigned long long)s->up.bytes_read);
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
	log_close(s);
	uv_timer_stop(&s->timer);
	uv_close((uv_handle_t *)&s->timer, timer_closed);
	ep_close(&s->down);
	ep_close(&s->up);
}

static void arm_timer(struct session *s);

/* Ends the session gracefully: the upstream is dropped, the client gets what was queued
 * for it (a final reply, close_notify) and a FIN, then everything closes. */
static void session_end(struct session *s, const char *reason, const char *detail)
{
	if (s->ending || s->closed)
		return;
	s->ending = 1;
	s->close_reason = reason;
	if (detail)
		snprintf(s->close_detail, sizeof(s->close_detail), "%s", detail);
	ep_close(&s->up);
	if (!s->down.connected || s->down.failed || s->down.closing ||
	    (s->down.tls && !s->down.tls_ready)) {
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
	} else {
		if (!s->down_ready)
			consider(&k, &due, T_HANDSHAKE_CLIENT, s->started_ms + r->handshake_timeout_ms);
		if (s->up_started && !s->up_connected)
			consider(&k, &due, T_CONNECT, s->phase_started_ms + r->connect_timeout_ms);
		if (s->up_connected && !s->up_ready)
			consider(&k, &due, T_HANDSHAKE_UPSTREAM,
				 s->phase_started_ms + r->handshake_timeout_ms);
		if (s->down_ready && s->up_ready)
			consider(&k, &due, T_IDLE, s->last_activity_ms + r->idle_timeout_ms);
	}
	s->timer_kind = k;
	if (k != T_NONE)
		uv_timer_start(&s->timer, timer_cb, due > now ? due - now : 0, 0);
}

static void upstream_unreachable(struct session *s, const char *error);
static void policy_failure(struct session *s, const char *result, const char *detail);

static void timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	uint64_t now = now_ms(s);
	switch (s->timer_kind) {
	case T_LINGER:
		session_close(s, s->close_reason ? s->close_reason : "linger timeout");
		return;
	case T_HANDSHAKE_CLIENT:
		log_event(LOG_WARN, s->id, s->r->name, "client_tls_failed", "result",
			  "tls-handshake-failure", "error", "handshake timeout", NULL);
		session_close(s, "client handshake timeout");
		return;
	case T_CONNECT:
		upstream_unreachable(s, "connect timeout");
		return;
	case T_HANDSHAKE_UPSTREAM:
		policy_failure(s, "tls-handshake-failure", "handshake timeout");
		if (!s->ending && !s->closed)
			session_end(s, "upstream handshake timeout", NULL);
		return;
	case T_IDLE:
		if (now - s->last_activity_ms >= s->r->idle_timeout_ms) {
			session_end(s, "idle timeout", NULL);
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
	return s->r->policy_mode == CFG_MODE_ENFORCE;
}

/* Logs (and, by the caller, enforces) a failed upstream TLS requirement. */
static void policy_failure(struct session *s, const char *result, const char *detail)
{
	log_event(LOG_WARN, s->id, s->r->name, "policy_failure", "side", "upstream", "result",
		  result, "mode", enforcing(s) ? "enforce" : "testing", "policy",
		  cfg_policy_name(s->r->upstream_policy), "upstream", s->upstream, "detail", detail,
		  NULL);
}

static void upstream_unreachable(struct session *s, const char *error)
{
	log_event(LOG_WARN, s->id, s->r->name, "upstream_unreachable", "result",
		  "upstream-unreachable", "upstream", s->upstream, "error", error, NULL);
	session_end(s, "upstream unreachable", error);
}

/* Applies upstream_policy to a finished handshake. Returns 0 to go on, -1 when the
 * session must end (enforce). */
static int check_upstream_tls(struct session *s)
{
	struct tls_conn *t = s->up.tls;
	const struct cfg_route *r = s->r;
	const char *result = NULL, *detail = NULL;
	const char *verify = "skipped";
	if (r->upstream_policy == CFG_POLICY_FINGERPRINT) {
		uint8_t fp[32];
		verify = "ok";
		if (tls_conn_peer_spki_sha256(t, fp) < 0) {
			result = "validation-failure";
			detail = "no peer certificate";
		} else if (memcmp(fp, r->upstream_fingerprint, 32) != 0) {
			result = "validation-failure";
			detail = "fingerprint mismatch";
		}
	} else if (r->upstream_policy == CFG_POLICY_VERIFY) {
		verify = "ok";
		enum tls_verify v = tls_conn_verify_result(t);
		if (!tls_conn_has_peer_cert(t)) {
			result = "validation-failure";
			detail = "no peer certificate";
		} else if (v != TLS_VERIFY_OK) {
			result = tls_verify_result_name(v);
		} else if (!tls_conn_peer_name_matches(t, r->upstream_name)) {
			result = "certificate-host-mismatch";
			detail = r->upstream_name;
		}
	}
	if (result)
		verify = "failed";
	log_event(LOG_INFO, s->id, r->name, "upstream_tls", "version", tls_conn_version(t),
		  "cipher", tls_conn_cipher(t), "verify", verify, "policy",
		  cfg_policy_name(r->upstream_policy),
		  r->upstream_policy == CFG_POLICY_FINGERPRINT ? "fingerprint" : NULL,
		  result ? "mismatch" : "ok", NULL);
	if (!result)
		return 0;
	policy_failure(s, result, detail);
	if (!enforcing(s))
		return 0;
	session_end(s, "upstream policy failure", result);
	return -1;
}

/* ---- relay ----------------------------------------------------------------------- */

static struct endpoint *peer_of(struct session *s, struct endpoint *ep)
{
	return ep == &s->down ? &s->up : &s->down;
}

static void maybe_done(struct session *s)
{
	if (s->down.eof && s->up.eof && s->down.shut_done && s->up.shut_done)
		session_close(s, "closed");
}

static void relay(struct session *s, struct endpoint *from, const uint8_t *data, size_t len)
{
	struct endpoint *to = peer_of(s, from);
	s->last_activity_ms = now_ms(s);
	if (ep_write(to, data, len) < 0)
		return;
	if (ep_pending(to) > HIGH_WATER)
		ep_pause(from);
}

static void on_data(struct endpoint *ep, const uint8_t *data, size_t len)
{
	struct session *s = ep->owner;
	if (s->ending || s->closed)
		return;
	relay(s, ep, data, len);
}

static void on_eof(struct endpoint *ep)
{
	struct session *s = ep->owner;
	if (s->ending || s->closed)
		return;
	struct endpoint *to = peer_of(s, ep);
	if (ep == &s->up && !s->up_ready) {
		upstream_unreachable(s, "closed by upstream before it was ready");
		return;
	}
	ep_shutdown(to);
	maybe_done(s);
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
	struct endpoint *from = peer_of(s, ep);
	if (from->paused && ep_pending(ep) < LOW_WATER)
		ep_resume(from);
	maybe_done(s);
}

static void on_error(struct endpoint *ep, const char *what, int err)
{
	struct session *s = ep->owner;
	char detail[160];
	snprintf(detail, sizeof(detail), "%s%s%s", what, err ? ": " : "",
		 err ? uv_err_text(err) : "");
	if (ep == &s->up && !s->up_ready && !s->ending) {
		upstream_unreachable(s, detail);
		return;
	}
	snprintf(s->close_detail, sizeof(s->close_detail), "%s", detail);
	if (ep == &s->up && !s->ending) {
		session_end(s, "upstream error", detail);
		return;
	}
	session_close(s, ep == &s->down ? "client error" : "upstream error");
}

static void up_ready(struct session *s)
{
	s->up_ready = 1;
	s->last_activity_ms = now_ms(s);
	arm_timer(s);
}

static void on_tls(struct endpoint *ep, int status)
{
	struct session *s = ep->owner;
	if (s->ending || s->closed)
		return;
	if (ep == &s->down) {
		if (status < 0) {
			log_event(LOG_WARN, s->id, s->r->name, "client_tls_failed", "result",
				  "tls-handshake-failure", "error", tls_conn_error_text(ep->tls),
				  NULL);
			session_close(s, "client handshake failed");
			return;
		}
		log_event(LOG_INFO, s->id, s->r->name, "client_tls", "version",
			  tls_conn_version(ep->tls), "cipher", tls_conn_cipher(ep->tls), NULL);
		s->down_ready = 1;
		arm_timer(s);
		return;
	}
	if (status < 0) {
		policy_failure(s, "tls-handshake-failure", tls_conn_error_text(ep->tls)[0]
						     ? tls_conn_error_text(ep->tls) : "handshake failed");
		session_end(s, "upstream handshake failed", NULL);
		return;
	}
	if (check_upstream_tls(s) < 0)
		return;
	up_ready(s);
}

static void on_closed(struct endpoint *ep)
{
	handle_closed(ep->owner);
}

static const struct ep_ops down_ops = { on_data, on_eof, on_tls, on_error, on_drain, on_closed };
static const struct ep_ops up_ops = { on_data, on_eof, on_tls, on_error, on_drain, on_closed };

/* ---- upstream connect ------------------------------------------------------------ */

static void connect_cb(uv_connect_t *req, int status)
{
	struct session *s = req->data;
	if (s->closed || s->ending)
		return;
	if (status < 0) {
		upstream_unreachable(s, uv_strerror(status));
		return;
	}
	s->up_connected = 1;
	s->phase_started_ms = now_ms(s);
	log_event(LOG_DEBUG, s->id, s->r->name, "upstream_connected", "upstream", s->upstream,
		  NULL);
	if (s->r->upstream_tls == CFG_TLS_IMPLICIT) {
		if (ep_start_tls(&s->up, s->r->upstream_side_tls, s->r->upstream_name) < 0) {
			session_end(s, "out of memory", NULL);
			return;
		}
	}
	ep_connected(&s->up);
	if (s->closed || s->ending)
		return;
	if (s->r->upstream_tls == CFG_TLS_NONE)
		up_ready(s);
	else
		arm_timer(s);
}

static void connect_upstream(struct session *s)
{
	const struct cfg_route *r = s->r;
	s->up_started = 1;
	s->phase_started_ms = now_ms(s);
	addr_text((const struct sockaddr *)&r->upstream.ss, s->upstream, sizeof(s->upstream));
	s->connect_req.data = s;
	int rc = uv_tcp_connect(&s->connect_req, &s->up.tcp,
				(const struct sockaddr *)&r->upstream.ss, connect_cb);
	if (rc < 0) {
		upstream_unreachable(s, uv_strerror(rc));
		return;
	}
	arm_timer(s);
}

/* ---- accept ---------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

void session_accept(struct worker *w, struct cfg_route *r, uv_stream_t *server)
{
	struct session *s = calloc(1, sizeof(*s));
	if (!s)
		return;
	s->w = w;
	s->cfg = cfg_ref(w->cfg);
	s->r = r;
	uint64_t seq = __atomic_add_fetch(&w->shared->next_id, 1, __ATOMIC_RELAXED);
	snprintf(s->id, sizeof(s->id), "%016llx",
		 (unsigned long long)mix64(seq ^ w->shared->id_key));
	s->started_ms = s->last_activity_ms = now_ms(s);
	uv_timer_init(&w->loop, &s->timer);
	s->timer.data = s;
	s->handles = 1;
	if (ep_init(&s->down, &w->loop, &down_ops, s, w->readbuf) == 0)
		s->handles++;
	if (ep_init(&s->up, &w->loop, &up_ops, s, w->readbuf) == 0)
		s->handles++;
	worker_session_added(w, s);
	if (s->handles != 3 || uv_accept(server, (uv_stream_t *)&s->down.tcp) < 0) {
		session_close(s, "accept failed");
		return;
	}
	struct sockaddr_storage peer;
	int plen = sizeof(peer);
	if (uv_tcp_getpeername(&s->down.tcp, (struct sockaddr *)&peer, &plen) == 0)
		addr_text((struct sockaddr *)&peer, s->client, sizeof(s->client));
	long active = __atomic_load_n(&w->shared->active, __ATOMIC_RELAXED);
	log_event(LOG_INFO, s->id, r->name, "accept", "client", s->client, NULL);
	if ((unsigned long)active > w->cfg->max_connections) {
		log_event(LOG_WARN, s->id, r->name, "refused", "reason", "max_connections", NULL);
		session_close(s, "max_connections");
		return;
	}
	if (r->client_tls == CFG_TLS_IMPLICIT) {
		if (ep_start_tls(&s->down, r->client_side_tls, NULL) < 0) {
			session_close(s, "out of memory");
			return;
		}
	} else {
		s->down_ready = 1;
	}
	ep_connected(&s->down);
	if (s->closed)
		return;
	arm_timer(s);
	connect_upstream(s);
}

struct session *session_next(struct session *s)
{
	return s->next;
}
