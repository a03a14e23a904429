/* proto.h - the interface between a session and a protocol module (SMTP/LMTP, later IMAP
 * and POP3), and the table of modules.
 *
 * Contract: a protocol module does no I/O. The session hands it bytes and events; the
 * module appends actions (send bytes to a side, start TLS on a side, the upstream is
 * ready, a policy failure, end the session) to a struct proto_actions, which the session
 * carries out in order after the call returns. A module never sees a TLS library or a
 * socket; certificate policy is applied by the session before it reports tls_done. The
 * pieces modules share (line reader, expected replies, capability words, the STARTTLS
 * boundary) are in proto_kit.h. */
#ifndef STP_PROTO_H
#define STP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

enum proto_side { PROTO_CLIENT = 0, PROTO_UPSTREAM = 1 };

enum proto_act_type {
	PA_SEND,     /* write data to side */
	PA_STARTTLS, /* begin TLS on side now (everything sent before goes in plaintext) */
	PA_READY,    /* the upstream is usable: the greeting/STARTTLS phase is over */
	PA_CLOSE,    /* end the session after what was sent to the client has left */
	PA_POLICY,   /* a TLS requirement toward the upstream failed: the session logs and
			counts it (reason: RFC 8460 result; off/len: a detail text) */
	/* Late binding (proto_params.late): */
	PA_BIND,     /* the first recipient's domain is known (off/len: the domain, lower
			case): find its policy and upstream, connect, then upstream_connected as
			usual; or bind_failed */
	PA_CHECK,    /* a later recipient's domain (off/len): may the current upstream take it?
			The session answers with rcpt_verdict */
	PA_MESSAGE,  /* a message got the upstream's final reply: the session logs it (off/len:
			a copy, read with proto_message_get) */
	PA_CONNECT,  /* proto_params.defer: the client's first command line is complete: connect
			to the upstream now (then upstream_connected as usual) */
};

/* One message relayed, as a mail admin traces it (event=message). */
struct proto_message {
	char from[320];      /* envelope sender, "" for the null sender <> */
	unsigned rcpts;      /* recipients the upstream accepted for it */
	const char *to;      /* their addresses, comma-separated (whole addresses up to
				SMTP_TO_MAX octets, then ",..."; at most SMTP_TO_MAX + 4) */
	uint64_t size;       /* message octets relayed to the upstream (DATA: as sent, without
				the end marker; BDAT: the chunks' sizes) */
	unsigned delivered;  /* LMTP: recipients whose final reply was 2xx; SMTP: rcpts or 0 */
	int code;            /* the final reply's code (LMTP: the last one's) */
	char reply[256];     /* its last line, without CRLF (e.g. "250 2.0.0 Ok: queued as X") */
};

struct proto_act {
	enum proto_act_type type;
	enum proto_side side;
	size_t off, len;    /* PA_SEND: bytes in proto_actions.buf; PA_POLICY: detail */
	const char *reason; /* PA_CLOSE, PA_POLICY: static string */
};

struct proto_actions {
	struct proto_act *a;
	size_t n, cap;
	uint8_t *buf;
	size_t blen, bcap;
	int failed; /* an allocation failed: actions are missing, the session must end */
};

void proto_send(struct proto_actions *a, enum proto_side side, const void *data, size_t len);
void proto_sendf(struct proto_actions *a, enum proto_side side, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void proto_starttls(struct proto_actions *a, enum proto_side side);
void proto_ready(struct proto_actions *a);
void proto_connect(struct proto_actions *a);
void proto_close(struct proto_actions *a, const char *reason);
void proto_policy(struct proto_actions *a, const char *result, const char *detail);
void proto_bind(struct proto_actions *a, enum proto_act_type type, const char *domain);
void proto_message(struct proto_actions *a, const struct proto_message *m);
/* The message of a PA_MESSAGE action (m->to points into the actions' buffer). */
int proto_message_get(const struct proto_actions *a, const struct proto_act *x,
		      struct proto_message *m);
void proto_actions_clear(struct proto_actions *a);
void proto_actions_free(struct proto_actions *a);

/* What the module needs to know of its session and route. Strings outlive the module. */
struct proto_params {
	const char *session_id;
	const char *route;
	enum cfg_proto protocol;
	enum cfg_tls client_tls, upstream_tls;
	enum cfg_policy client_policy, upstream_policy;
	enum cfg_mode policy_mode;
	const char *helo_name;
	int xclient;
	enum cfg_bare_newline bare_newline;
	const char *client_ip; /* textual, without brackets */
	unsigned client_port;
	/* Late binding: the upstream is the first recipient's MX, chosen by the session once
	 * the module reports that recipient's domain (PA_BIND). Until then the module answers
	 * the client itself (late_start). */
	int late;
	/* greeting = local (not under late): the module greets the client itself (late_start)
	 * and holds the client's first command line until the upstream is ready; once that
	 * line is complete it asks for the upstream (PA_CONNECT). A client that never ends a
	 * line never costs an upstream connection. */
	int defer;
	/* xclient: the client's forward-confirmed host name for XCLIENT NAME, filled in while
	 * the upstream connects ("" while the lookup runs: a module that needs it waits for
	 * client_name_ready); NULL: none is looked up ([UNAVAILABLE]). */
	const char *client_name;
};

/* Why the session turns a client away before anything else happened. */
enum proto_refusal {
	PR_LIMIT,       /* max_connections or max_connections_per_client */
	PR_NOT_ALLOWED, /* client_allow */
};

/* Why the session is failing the upstream side. */
enum proto_failure {
	PF_UNREACHABLE,  /* could not connect, or closed/stalled before its greeting */
	PF_LOST,         /* reset, closed, or failed after it was usable */
	PF_TLS_POLICY,   /* TLS toward the upstream failed the policy (enforce) */
	PF_IDLE,         /* idle timeout */
	PF_SHUTDOWN,     /* the proxy is stopping */
};

struct proto_ops {
	const char *name;
	void *(*create)(const struct proto_params *p);
	void (*destroy)(void *st);
	/* The upstream is connected: TCP for plaintext/STARTTLS, or implicit TLS done and
	 * accepted by the policy. */
	void (*upstream_connected)(void *st, struct proto_actions *a);
	void (*data)(void *st, enum proto_side from, const uint8_t *d, size_t n,
		     struct proto_actions *a);
	/* A STARTTLS handshake the module asked for finished and passed the policy. */
	void (*tls_done)(void *st, enum proto_side side, struct proto_actions *a);
	/* The client finished sending. */
	void (*client_eof)(void *st, struct proto_actions *a);
	/* The STARTTLS handshake toward the upstream failed and the policy allows plaintext
	 * (may, or testing mode): the session reconnects and calls upstream_connected again;
	 * the module must not ask for STARTTLS on the new connection. */
	void (*upstream_retry_plain)(void *st);
	/* The same for a new connection with the same TLS: an offered TLS session that the
	 * upstream did not take is dropped and the handshake made again in full. */
	void (*upstream_retry)(void *st);
	/* The upstream failed; result is an RFC 8460 type for PF_TLS_POLICY, else detail. */
	void (*fail)(void *st, enum proto_failure why, const char *result, struct proto_actions *a);
	/* The session decided its policy toward the upstream it is about to connect to (a
	 * policy table may choose per destination): before every upstream_connected. */
	void (*set_policy)(void *st, enum cfg_tls tls, enum cfg_policy level, enum cfg_mode mode);
	/* Late binding, and greeting = local (defer). late_start: the session connects nowhere
	 * yet; the module greets the client itself. bind_failed: the upstream for the PA_BIND domain could not be chosen
	 * (no MX, DNS failure, policy refuses every MX) before any connection was made: reply
	 * answers the waiting recipient and the module is unbound again. rcpt_verdict: the
	 * answer to PA_CHECK (ok, or the reply for that recipient). */
	void (*late_start)(void *st, struct proto_actions *a);
	void (*bind_failed)(void *st, const char *reply, struct proto_actions *a);
	void (*rcpt_verdict)(void *st, int ok, const char *reply, struct proto_actions *a);
	/* The protocol's refusal of a client turned away before any exchange (no module state
	 * exists): the reply to send, then PA_CLOSE. */
	void (*refuse)(const struct proto_params *p, enum proto_refusal why,
		       struct proto_actions *a);
	/* 1 when the session sits between transactions with nothing in flight either way:
	 * the proxy, draining, may end it at once (fail PF_SHUTDOWN: the protocol's 421). */
	int (*idle)(void *st);
	/* proto_params.client_name is filled in now (a name, [UNAVAILABLE] or, when the lookup
	 * took too long, [TEMPUNAVAIL]): a module that waits for it goes on. May be NULL. */
	void (*client_name_ready)(void *st, struct proto_actions *a);
	/* Nonzero while the module holds the start of a client command line (or AUTH response
	 * line) whose end has not come, a value that names that line (lr_partial); 0 otherwise,
	 * and inside message data, BDAT chunks or literals. The session bounds how long one
	 * line may take (line_timeout). May be NULL: no such bound. */
	uint64_t (*client_partial)(void *st);
	/* 1 while the module reads the client's message data (a DATA body before its end, a
	 * BDAT chunk's octets), 0 otherwise. The session bounds how slowly it may come
	 * (min_data_rate). May be NULL: no such bound. */
	int (*client_in_data)(void *st);
};

extern const struct proto_ops proto_smtp_ops; /* smtp and lmtp */
extern const struct proto_ops proto_pop3_ops;
extern const struct proto_ops proto_imap_ops;

/* The module of a protocol, or NULL for tcp (a plain relay). */
const struct proto_ops *proto_lookup(enum cfg_proto protocol);

#endif
