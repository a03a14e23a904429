/* proto_imap.c - IMAP STARTTLS: the pure parsing pieces (see proto_imap.h) and the module
 * (proto_imap_ops). Bytes in, actions out; no I/O (proto.h).
 *
 * Two state variables, each changed only through enter_state() (which logs the change):
 * - the upstream state: connecting, greeting, capability, starttls, handshake, tls-capa,
 *   ready, done. Before "ready" the module talks to the upstream itself (for injected
 *   STARTTLS: its own CAPABILITY when the greeting lists none, STARTTLS with a random tag,
 *   and CAPABILITY again inside TLS); nothing of the client goes up.
 * - the client state: command (the next client line starts a command, or continues the
 *   one being sent), raw-line (the upstream's "+" to AUTHENTICATE or IDLE: the next client
 *   line is a SASL response or DONE, forwarded as it is), starttls (nothing counts until
 *   the client's handshake).
 *
 * Commands go up one at a time: a command's first line is looked at only when the one
 * before it got its tagged response (clients that pipeline are slowed, never misread).
 * Literals are followed on both sides (struct imap_reader), so their data is never taken
 * for commands or responses. Capability lists in responses are rewritten for the client:
 * STARTTLS offered while the client may start TLS with the proxy and removed otherwise,
 * LOGINDISABLED added and AUTH= removed under client_policy = encrypt before TLS, and
 * COMPRESS= removed until the upstream accepted a login.
 *
 * COMPRESS (RFC 4978) passes through once the client is authenticated: when the upstream
 * answers the client's COMPRESS with its tagged OK, both directions are compressed from the
 * next octet on, and the module becomes an opaque relay (client state "compressed"): it
 * forwards every octet as it is and reads nothing more. By then nothing is left to police:
 * STARTTLS is over or no longer permitted (RFC 3501 §6.2.1), the login is done, and the
 * upstream's TLS, if any, is established. Before a login the module answers COMPRESS
 * itself (BAD), so a client cannot make the stream unreadable while a policy still has to
 * see its commands. A failure in the compressed stream closes the connection without a
 * BYE (a plaintext line would corrupt the client's inflater). */
#include "proto_imap.h"

#include "buf.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

/* ---- character classes (RFC 3501 §9, RFC 9051 §9) ------------------------------------ */

/* ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ] */
static int atom_char(uint8_t c)
{
	if (c < 0x21 || c > 0x7e)
		return 0;
	return !strchr("(){%*\"\\]", c);
}

/* tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]" */
static int tag_char(uint8_t c)
{
	return c != '+' && (atom_char(c) || c == ']');
}

/* ---- the reader ------------------------------------------------------------------------ */

int imap_literal_at_end(const uint8_t *p, size_t len, uint64_t *size, int *nonsync,
			int *binary)
{
	if (!len || p[len - 1] != '}')
		return 0;
	size_t i = len - 1; /* at '}' */
	int plus = 0;
	if (i && p[i - 1] == '+') {
		plus = 1;
		i--;
	}
	size_t end = i; /* one past the last digit */
	while (i && isdigit(p[i - 1]))
		i--;
	size_t digits = end - i;
	if (!digits || digits > 20 || !i || p[i - 1] != '{')
		return 0;
	size_t brace = i - 1;
	int bin = 0;
	size_t start = brace;
	if (start && p[start - 1] == '~') {
		bin = 1;
		start--;
	}
	if (start && p[start - 1] != ' ' && p[start - 1] != '(')
		return 0;
	uint64_t v = 0;
	for (size_t k = i; k < end; k++) {
		unsigned d = (unsigned)(p[k] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*size = v;
	*nonsync = plus;
	*binary = bin;
	return 1;
}

void ir_init(struct imap_reader *r, size_t line_max, uint64_t lit_max)
{
	memset(r, 0, sizeof(*r));
	lr_init(&r->lr, line_max);
	r->lit_max = lit_max;
}

void ir_free(struct imap_reader *r)
{
	lr_free(&r->lr);
	r->lit_left = 0;
	r->in_cmd = 0;
}

int ir_feed(struct imap_reader *r, const void *data, size_t n)
{
	return lr_feed(&r->lr, data, n);
}

int ir_next(struct imap_reader *r, struct imap_item *it)
{
	memset(it, 0, sizeof(*it));
	if (r->lit_left) {
		size_t n = lr_pending(&r->lr);
		if (!n)
			return it->kind = IR_MORE;
		if (n > r->lit_left)
			n = (size_t)r->lit_left;
		it->p = lr_data(&r->lr);
		it->len = it->size = n;
		return it->kind = IR_DATA;
	}
	struct line l;
	int rc = lr_next(&r->lr, &l);
	if (rc == LR_MORE)
		return it->kind = IR_MORE;
	if (rc == LR_TOO_LONG) {
		r->in_cmd = 0;
		return it->kind = IR_TOO_LONG;
	}
	it->p = l.p;
	it->len = l.len;
	it->size = l.size;
	it->first = !r->in_cmd;
	it->last = 1;
	uint64_t size = 0;
	int nonsync = 0, binary = 0;
	rc = imap_literal_at_end(l.p, l.len, &size, &nonsync, &binary);
	if (rc < 0 || (rc == 1 && size > r->lit_max)) {
		it->literal = rc < 0 ? UINT64_MAX : size;
		it->nonsync = nonsync;
		it->binary = binary;
		return it->kind = IR_BAD_LITERAL;
	}
	if (rc == 1) {
		it->last = 0;
		it->literal = size;
		it->nonsync = nonsync;
		it->binary = binary;
	}
	return it->kind = IR_LINE;
}

void ir_consume(struct imap_reader *r, const struct imap_item *it)
{
	switch (it->kind) {
	case IR_DATA:
		lr_consume(&r->lr, it->size);
		r->lit_left -= it->size;
		break;
	case IR_LINE:
		lr_consume(&r->lr, it->size);
		r->in_cmd = !it->last;
		r->lit_left = it->last ? 0 : it->literal;
		break;
	case IR_BAD_LITERAL:
		lr_consume(&r->lr, it->size);
		r->in_cmd = 0;
		r->lit_left = 0;
		break;
	default: /* IR_MORE, IR_TOO_LONG: nothing to take */
		break;
	}
}

void ir_cancel_literal(struct imap_reader *r)
{
	r->lit_left = 0;
	r->in_cmd = 0;
}

size_t ir_discard(struct imap_reader *r)
{
	size_t n = lr_pending(&r->lr);
	lr_discard(&r->lr);
	r->lit_left = 0;
	r->in_cmd = 0;
	return n;
}

/* ---- commands -------------------------------------------------------------------------- */

/* The atom at p[*i], upper-cased into out (cap octets with the NUL); *i moves past it and
 * the one SP after it. Returns 0, or -EINVAL (empty, too long, not followed by SP or the
 * end). */
static int take_atom(const uint8_t *p, size_t len, size_t *i, char *out, size_t cap)
{
	size_t k = 0;
	while (*i < len && atom_char(p[*i])) {
		if (k + 1 >= cap)
			return -EINVAL;
		out[k++] = (char)toupper(p[*i]);
		(*i)++;
	}
	out[k] = '\0';
	if (!k || (*i < len && p[*i] != ' '))
		return -EINVAL;
	if (*i < len)
		(*i)++;
	return 0;
}

int imap_tag_verb(const uint8_t *p, size_t len, struct imap_cmd_words *w)
{
	memset(w, 0, sizeof(*w));
	size_t i = 0;
	while (i < len && tag_char(p[i])) {
		if (i >= IMAP_TAG_MAX)
			return -EINVAL;
		w->tag[i] = (char)p[i];
		i++;
	}
	if (!i || i >= len || p[i] != ' ')
		return -EINVAL;
	i++;
	if (take_atom(p, len, &i, w->verb, sizeof(w->verb)) < 0)
		return -EINVAL;
	if (strcmp(w->verb, "UID") == 0 &&
	    take_atom(p, len, &i, w->uid_verb, sizeof(w->uid_verb)) < 0)
		return -EINVAL;
	w->args = i;
	return 0;
}

/* ---- responses ------------------------------------------------------------------------- */

/* 1 when p[i..) starts with the word w (ignoring case) followed by SP, the end, or (for a
 * code) "]". */
static int word_at(const uint8_t *p, size_t len, size_t i, const char *w, int in_code)
{
	size_t k = strlen(w);
	if (len - i < k || strncasecmp((const char *)p + i, w, k) != 0)
		return 0;
	return i + k == len || p[i + k] == ' ' || (in_code && p[i + k] == ']');
}

int imap_classify(const uint8_t *p, size_t len, struct imap_resp *r)
{
	static const struct {
		const char *w;
		enum imap_status s;
	} st[] = { { "OK", IMAP_S_OK }, { "NO", IMAP_S_NO }, { "BAD", IMAP_S_BAD },
		   { "PREAUTH", IMAP_S_PREAUTH }, { "BYE", IMAP_S_BYE } };
	memset(r, 0, sizeof(*r));
	if (!len)
		return -EINVAL;
	if (p[0] == '+') {
		if (len > 1 && p[1] != ' ')
			return -EINVAL;
		r->kind = IMAP_R_CONTINUE;
		r->word = len > 1 ? 2 : 1;
		return 0;
	}
	size_t i;
	if (p[0] == '*') {
		if (len < 2 || p[1] != ' ')
			return -EINVAL;
		r->kind = IMAP_R_UNTAGGED;
		i = 2;
	} else {
		i = 0;
		while (i < len && tag_char(p[i]))
			i++;
		if (!i || i > IMAP_TAG_MAX || i >= len || p[i] != ' ')
			return -EINVAL;
		r->kind = IMAP_R_TAGGED;
		r->tag_len = i;
		i++;
	}
	r->word = i;
	size_t n = r->kind == IMAP_R_TAGGED ? 3 : 5;
	for (size_t k = 0; k < n; k++) {
		if (word_at(p, len, i, st[k].w, 0)) {
			r->status = st[k].s;
			i += strlen(st[k].w);
			break;
		}
	}
	if (r->status == IMAP_S_NONE) {
		if (r->kind == IMAP_R_TAGGED)
			return -EINVAL;
		r->capability = word_at(p, len, i, "CAPABILITY", 0);
		return 0;
	}
	if (i + 1 < len && p[i + 1] == '[') {
		const uint8_t *close = memchr(p + i + 2, ']', len - i - 2);
		if (!close)
			return -EINVAL;
		r->code = i + 2;
		r->code_len = (size_t)(close - (p + r->code));
	}
	return 0;
}

/* ---- capabilities ---------------------------------------------------------------------- */

/* Where the list is: *kw_end just after the word CAPABILITY, *end where the list stops
 * (the end of the line, or the code's "]"). Returns 1, 0 or -EINVAL as imap_caps_find. */
static int caps_span(const uint8_t *p, size_t len, size_t *kw_end, size_t *end)
{
	struct imap_resp r;
	if (imap_classify(p, len, &r) < 0)
		return -EINVAL;
	if (r.capability) {
		*kw_end = r.word + strlen("CAPABILITY");
		*end = len;
		return 1;
	}
	if (r.status != IMAP_S_NONE && r.code_len &&
	    word_at(p, r.code + r.code_len, r.code, "CAPABILITY", 0)) {
		*kw_end = r.code + strlen("CAPABILITY");
		*end = r.code + r.code_len;
		return 1;
	}
	return 0;
}

int imap_caps_find(const uint8_t *p, size_t len, size_t *off, size_t *list_len)
{
	size_t a, b;
	int rc = caps_span(p, len, &a, &b);
	if (rc <= 0)
		return rc;
	while (a < b && p[a] == ' ')
		a++;
	*off = a;
	*list_len = b - a;
	return 1;
}

/* The next atom of a space-separated list at list[*i..len): *a its start, returns its
 * length (0: no more); *i moves past it. */
static size_t next_atom(const char *list, size_t len, size_t *i, size_t *a)
{
	while (*i < len && list[*i] == ' ')
		(*i)++;
	*a = *i;
	while (*i < len && list[*i] != ' ')
		(*i)++;
	return *i - *a;
}

unsigned imap_caps_flags(const char *list, size_t len)
{
	static const struct {
		const char *kw;
		unsigned flag;
	} t[] = { { "IMAP4rev1", IMAP_CAP_IMAP4 },         { "IMAP4rev2", IMAP_CAP_IMAP4 },
		  { "STARTTLS", IMAP_CAP_STARTTLS },       { "LOGINDISABLED", IMAP_CAP_LOGINDISABLED },
		  { "AUTH=", IMAP_CAP_AUTH },              { "COMPRESS=", IMAP_CAP_COMPRESS },
		  { "LITERAL+", IMAP_CAP_LITERALPLUS },    { "LITERAL-", IMAP_CAP_LITERALMINUS } };
	unsigned f = 0;
	size_t i = 0, a, n;
	while ((n = next_atom(list, len, &i, &a)) > 0)
		for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++)
			if (cap_word_is(list + a, n, t[k].kw))
				f |= t[k].flag;
	return f;
}

static int put(char *out, size_t cap, size_t *o, const void *d, size_t n)
{
	if (*o + n + 1 > cap)
		return -ENOSPC;
	memcpy(out + *o, d, n);
	*o += n;
	out[*o] = '\0';
	return 0;
}

/* 1 when the atom is dropped under ops. */
static int dropped(const char *atom, size_t n, unsigned ops)
{
	if ((ops & (IMAP_CAPS_DEL_STARTTLS | IMAP_CAPS_ADD_STARTTLS)) &&
	    cap_word_is(atom, n, "STARTTLS"))
		return (ops & IMAP_CAPS_DEL_STARTTLS) != 0;
	if ((ops & IMAP_CAPS_LOGINDISABLED) && cap_word_is(atom, n, "AUTH="))
		return 1;
	if ((ops & IMAP_CAPS_DEL_COMPRESS) && cap_word_is(atom, n, "COMPRESS="))
		return 1;
	return 0;
}

int imap_caps_rewrite(const uint8_t *p, size_t len, unsigned ops, char *out, size_t out_cap,
		      size_t *out_len)
{
	size_t kw_end, end;
	int rc = caps_span(p, len, &kw_end, &end);
	if (rc <= 0)
		return rc;
	const char *list = (const char *)p + kw_end;
	size_t llen = end - kw_end;
	unsigned have = imap_caps_flags(list, llen);
	size_t o = 0;
	if (!out_cap)
		return -ENOSPC;
	out[0] = '\0';
	if (put(out, out_cap, &o, p, kw_end) < 0)
		return -ENOSPC;
	size_t i = 0, a, n;
	while ((n = next_atom(list, llen, &i, &a)) > 0) {
		if (dropped(list + a, n, ops))
			continue;
		if (put(out, out_cap, &o, " ", 1) < 0 || put(out, out_cap, &o, list + a, n) < 0)
			return -ENOSPC;
	}
	if ((ops & IMAP_CAPS_ADD_STARTTLS) && !(ops & IMAP_CAPS_DEL_STARTTLS) &&
	    !(have & IMAP_CAP_STARTTLS) && put(out, out_cap, &o, " STARTTLS", 9) < 0)
		return -ENOSPC;
	if ((ops & IMAP_CAPS_LOGINDISABLED) && !(have & IMAP_CAP_LOGINDISABLED) &&
	    put(out, out_cap, &o, " LOGINDISABLED", 14) < 0)
		return -ENOSPC;
	if (put(out, out_cap, &o, p + end, len - end) < 0)
		return -ENOSPC;
	*out_len = o;
	return 1;
}

/* ==== the module ======================================================================== */

enum ustate {
	U_CONNECTING, /* waiting for TCP (or implicit TLS) */
	U_GREETING,   /* waiting for the greeting */
	U_CAPA,       /* our CAPABILITY sent (before TLS), looking for STARTTLS */
	U_STLS,       /* our STARTTLS sent, waiting for its tagged OK */
	U_HANDSHAKE,  /* TLS handshake running */
	U_TLS_CAPA,   /* our CAPABILITY sent inside TLS: the client's greeting lists it */
	U_READY,      /* relaying */
	U_DONE,       /* failed or closing */
};
static const char *const ustate_names[] = { "connecting", "greeting", "capability", "starttls",
					    "handshake", "tls-capa", "ready", "done" };

enum cstate {
	C_COMMAND,  /* command lines (and their literals) */
	C_RAWLINE,  /* the next client line answers a "+" (SASL response, DONE) */
	C_STARTTLS, /* STARTTLS accepted: nothing counts until the client's handshake */
	C_COMPRESSED, /* COMPRESS accepted by the upstream: an opaque relay both ways */
};
static const char *const cstate_names[] = { "command", "raw-line", "starttls", "compressed" };

/* What the command in flight is. */
enum ckind { K_NONE, K_OTHER, K_LOGIN, K_AUTH, K_IDLE, K_LOGOUT, K_COMPRESS };

struct imap {
	struct proto_params p;
	enum ustate u;
	enum cstate c;
	/* client side */
	struct imap_reader cin;
	int client_greeted;
	int client_tls;    /* TLS active toward the client */
	int auth_done;     /* the upstream accepted a login (or greeted PREAUTH) */
	int client_eof, logout_seen;
	int sending;       /* a command's first segment went up, its last has not */
	int skipping;      /* the rest of a command answered locally is dropped (its
			      LITERAL+ data and continuation segments never go up) */
	char tag[IMAP_TAG_MAX + 1]; /* the command in flight ("" none) */
	enum ckind kind;
	/* upstream side */
	struct imap_reader uin;
	int upstream_tls;  /* TLS active toward the upstream */
	int resp_open;     /* a response's literal or continuation segment is next */
	int resp_drop;     /* ... and it is dropped (before ready) */
	char own_tag[24];  /* the tag of the module's own command */
	int stls_offered;
	struct buf greeting; /* the greeting line without terminator (not injected) */
	struct buf caps;     /* capability list learned inside TLS (U_TLS_CAPA) */
};

static void enter_state(struct imap *s, enum proto_side side, int to)
{
	int from = side == PROTO_UPSTREAM ? (int)s->u : (int)s->c;
	if (from == to)
		return;
	const char *const *names = side == PROTO_UPSTREAM ? ustate_names : cstate_names;
	log_event(LOG_DEBUG, s->p.session_id, s->p.route, "imap_state", "side",
		  side == PROTO_UPSTREAM ? "upstream" : "client", "from", names[from], "to",
		  names[to], NULL);
	if (side == PROTO_UPSTREAM)
		s->u = (enum ustate)to;
	else
		s->c = (enum cstate)to;
}

static void finish(struct imap *s, struct proto_actions *a, const char *reply,
		   const char *reason)
{
	if (s->u == U_DONE)
		return;
	if (reply)
		proto_sendf(a, PROTO_CLIENT, "%s\r\n", reply);
	enter_state(s, PROTO_UPSTREAM, U_DONE);
	proto_close(a, reason);
}

static void out_of_memory(struct imap *s, struct proto_actions *a)
{
	finish(s, a, "* BYE [UNAVAILABLE] Out of memory, closing connection", "out of memory");
}

static void protocol_error(struct imap *s, struct proto_actions *a, const char *what)
{
	log_event(LOG_WARN, s->p.session_id, s->p.route, "protocol_error", "side", "upstream",
		  "error", what, NULL);
	finish(s, a, s->resp_open ? NULL : "* BYE [UNAVAILABLE] Upstream protocol error",
	       "upstream protocol error");
}

/* LOGIN and AUTHENTICATE are refused (client_policy = encrypt before the client's TLS). */
static int hide_auth(const struct imap *s)
{
	return s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls &&
	       s->p.client_policy == CFG_POLICY_ENCRYPT;
}

/* How capability lists are shown to the client now. */
static unsigned client_ops(const struct imap *s)
{
	unsigned ops = s->auth_done ? 0 : IMAP_CAPS_DEL_COMPRESS;
	if (s->p.client_tls == CFG_TLS_STARTTLS && !s->client_tls && !s->auth_done)
		ops |= IMAP_CAPS_ADD_STARTTLS;
	else
		ops |= IMAP_CAPS_DEL_STARTTLS;
	if (hide_auth(s))
		ops |= IMAP_CAPS_LOGINDISABLED;
	return ops;
}

/* A line (no terminator) to the client, its capability list rewritten when it has one. */
static void send_rewritten(struct imap *s, struct proto_actions *a, const uint8_t *p,
			   size_t len)
{
	size_t cap = len + 40, olen;
	char *out = malloc(cap);
	if (!out) {
		out_of_memory(s, a);
		return;
	}
	int rc = imap_caps_rewrite(p, len, client_ops(s), out, cap, &olen);
	if (rc == 1) {
		proto_send(a, PROTO_CLIENT, out, olen);
	} else {
		proto_send(a, PROTO_CLIENT, p, len);
	}
	proto_send(a, PROTO_CLIENT, "\r\n", 2);
	free(out);
}

/* A fresh tag for the module's own commands: 8 random octets from getrandom(2) (the kernel
 * CSPRNG; no file, no socket), so that nobody can answer a command of the module before
 * seeing it. Returns 0 or -EIO. */
static int new_tag(struct imap *s)
{
	uint8_t r[8];
	if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
		return -EIO;
	static const char hex[] = "0123456789abcdef";
	char *o = s->own_tag;
	*o++ = 'P';
	for (size_t i = 0; i < sizeof(r); i++) {
		*o++ = hex[r[i] >> 4];
		*o++ = hex[r[i] & 15];
	}
	*o = '\0';
	return 0;
}

static void send_own(struct imap *s, struct proto_actions *a, const char *cmd, enum ustate to)
{
	if (new_tag(s) < 0) {
		finish(s, a, "* BYE [UNAVAILABLE] No randomness, closing connection",
		       "no randomness");
		return;
	}
	proto_sendf(a, PROTO_UPSTREAM, "%s %s\r\n", s->own_tag, cmd);
	enter_state(s, PROTO_UPSTREAM, to);
}

static void process_client(struct imap *s, struct proto_actions *a);

/* The upstream is usable: the client gets its greeting and is heard. */
static void upstream_ready(struct imap *s, struct proto_actions *a)
{
	if (s->auth_done && hide_auth(s)) {
		/* PREAUTH: the client would be in the authenticated state without TLS (and
		 * STARTTLS is not allowed there), which client_policy = encrypt forbids; on every
		 * path here, the injecting one that a may or testing upstream policy lets go on
		 * in plaintext included */
		finish(s, a, "* BYE [UNAVAILABLE] Upstream server greeted PREAUTH, TLS is required",
		       "upstream preauth");
		return;
	}
	enter_state(s, PROTO_UPSTREAM, U_READY);
	proto_ready(a);
	if (s->caps.len || (s->upstream_tls && s->p.upstream_tls == CFG_TLS_STARTTLS)) {
		/* injected: the greeting read before TLS is nobody's word; ours lists what the
		 * upstream said inside TLS */
		struct buf g = { 0 };
		const char *pre = "* OK [CAPABILITY ";
		if (buf_append(&g, pre, strlen(pre)) < 0 ||
		    buf_append(&g, buf_ptr(&s->caps), s->caps.len) < 0 ||
		    buf_append(&g, "] Server ready", 14) < 0) {
			buf_free(&g);
			out_of_memory(s, a);
			return;
		}
		send_rewritten(s, a, buf_ptr(&g), g.len);
		buf_free(&g);
	} else {
		send_rewritten(s, a, buf_ptr(&s->greeting), s->greeting.len);
	}
	buf_free(&s->greeting);
	buf_free(&s->caps);
	s->client_greeted = 1;
	process_client(s, a);
}

/* The upstream does not offer STARTTLS, or refused it. */
static void starttls_unavailable(struct imap *s, struct proto_actions *a, const char *detail)
{
	if (kit_starttls_unavailable(a, &s->p, detail)) {
		upstream_ready(s, a);
		return;
	}
	finish(s, a,
	       "* BYE [UNAVAILABLE] TLS is required toward the upstream server and it does not "
	       "offer STARTTLS; try again later",
	       "upstream policy failure");
}

static int injecting(const struct imap *s)
{
	return s->p.upstream_tls == CFG_TLS_STARTTLS && !s->upstream_tls;
}

/* The greeting (first segment, no terminator). */
static void on_greeting(struct imap *s, struct proto_actions *a, const uint8_t *p, size_t len,
			const struct imap_resp *r)
{
	if (r->kind != IMAP_R_UNTAGGED ||
	    (r->status != IMAP_S_OK && r->status != IMAP_S_PREAUTH && r->status != IMAP_S_BYE)) {
		protocol_error(s, a, "malformed greeting");
		return;
	}
	if (r->status == IMAP_S_BYE) {
		log_event(LOG_WARN, s->p.session_id, s->p.route, "upstream_refused", "code", "BYE",
			  NULL);
		if (injecting(s) || s->p.upstream_tls == CFG_TLS_STARTTLS)
			finish(s, a, "* BYE [UNAVAILABLE] Upstream server refused service; try again later",
			       "upstream refused service");
		else {
			proto_send(a, PROTO_CLIENT, p, len);
			proto_send(a, PROTO_CLIENT, "\r\n", 2);
			finish(s, a, NULL, "upstream refused service");
		}
		return;
	}
	if (buf_append(&s->greeting, p, len) < 0) {
		out_of_memory(s, a);
		return;
	}
	if (injecting(s)) {
		if (r->status == IMAP_S_PREAUTH) {
			/* authenticated already: STARTTLS is no longer allowed (RFC 3501 §6.2.1) */
			s->auth_done = 1;
			starttls_unavailable(s, a, "PREAUTH greeting");
			return;
		}
		size_t off, n;
		if (imap_caps_find(p, len, &off, &n) == 1) {
			if (imap_caps_flags((const char *)p + off, n) & IMAP_CAP_STARTTLS)
				send_own(s, a, "STARTTLS", U_STLS);
			else
				starttls_unavailable(s, a, "STARTTLS not offered");
			return;
		}
		s->stls_offered = 0;
		send_own(s, a, "CAPABILITY", U_CAPA);
		return;
	}
	if (r->status == IMAP_S_PREAUTH)
		s->auth_done = 1;
	upstream_ready(s, a);
}

/* A response's first segment while the module talks to the upstream itself. */
static void on_own(struct imap *s, struct proto_actions *a, const uint8_t *p, size_t len,
		   const struct imap_resp *r)
{
	if (r->kind == IMAP_R_UNTAGGED) {
		size_t off, n;
		if (r->status == IMAP_S_BYE) {
			finish(s, a, "* BYE [UNAVAILABLE] Upstream server closed; try again later",
			       "upstream closed");
			return;
		}
		if (imap_caps_find(p, len, &off, &n) == 1) {
			if (imap_caps_flags((const char *)p + off, n) & IMAP_CAP_STARTTLS)
				s->stls_offered = 1;
			if (s->u == U_TLS_CAPA) {
				s->caps.len = 0;
				s->caps.off = 0;
				if (buf_append(&s->caps, p + off, n) < 0)
					out_of_memory(s, a);
			}
		}
		return; /* other untagged responses before TLS: dropped */
	}
	if (r->kind != IMAP_R_TAGGED || r->tag_len != strlen(s->own_tag) ||
	    memcmp(p, s->own_tag, r->tag_len) != 0) {
		protocol_error(s, a, "response to no command of the module");
		return;
	}
	int ok = r->status == IMAP_S_OK;
	switch (s->u) {
	case U_CAPA:
		if (ok && s->stls_offered)
			send_own(s, a, "STARTTLS", U_STLS);
		else
			starttls_unavailable(s, a, ok ? "STARTTLS not offered" : "CAPABILITY refused");
		return;
	case U_STLS:
		if (!ok) {
			starttls_unavailable(s, a, "STARTTLS refused");
			return;
		}
		enter_state(s, PROTO_UPSTREAM, U_HANDSHAKE);
		/* the caller consumed the line: what follows it was sent before TLS */
		return;
	case U_TLS_CAPA:
		if (!ok || !s->caps.len) {
			protocol_error(s, a, "no capabilities inside TLS");
			return;
		}
		upstream_ready(s, a);
		return;
	default:
		protocol_error(s, a, "unexpected response");
		return;
	}
}

/* A response's first segment in U_READY: relayed (capabilities rewritten). */
static void on_response(struct imap *s, struct proto_actions *a, const uint8_t *p, size_t len,
			const struct imap_resp *r)
{
	int mine = r->kind == IMAP_R_TAGGED && s->tag[0] && r->tag_len == strlen(s->tag) &&
		   memcmp(p, s->tag, r->tag_len) == 0;
	/* a login's OK may list capabilities: shown as after the login (no STARTTLS) */
	if (mine && r->status == IMAP_S_OK && (s->kind == K_LOGIN || s->kind == K_AUTH))
		s->auth_done = 1;
	send_rewritten(s, a, p, len);
	if (r->kind == IMAP_R_CONTINUE) {
		if (s->kind == K_AUTH || s->kind == K_IDLE)
			enter_state(s, PROTO_CLIENT, C_RAWLINE);
		return;
	}
	if (!mine)
		return;
	/* the command in flight is answered */
	if (s->sending) /* a synchronizing literal refused: its data will not come */
		ir_cancel_literal(&s->cin);
	s->sending = 0;
	s->tag[0] = '\0';
	if (s->kind == K_LOGOUT)
		s->logout_seen = 1;
	int compress = s->kind == K_COMPRESS && r->status == IMAP_S_OK;
	s->kind = K_NONE;
	enter_state(s, PROTO_CLIENT, compress ? C_COMPRESSED : C_COMMAND);
}

/* Compressed from here on: what each side sent after the switch goes across as it is (the
 * client's held bytes first: they came before the upstream's OK was read). A client that
 * has finished sending gets the OK and the session ends, as after any command answered
 * once the client is gone (what else the upstream sent is not relayed). */
static void relay_rest(struct imap *s, struct proto_actions *a)
{
	size_t n = ir_pending(&s->cin);
	if (n)
		proto_send(a, PROTO_UPSTREAM, lr_data(&s->cin.lr), n);
	ir_discard(&s->cin);
	n = ir_pending(&s->uin);
	if (n && !s->client_eof)
		proto_send(a, PROTO_CLIENT, lr_data(&s->uin.lr), n);
	ir_discard(&s->uin);
	if (s->client_eof)
		finish(s, a, NULL, "client closed");
}

/* The first segment of a response that announces a literal: relayed with its capability
 * list rewritten like any other (a [CAPABILITY ...] code closes before the literal; a
 * server that lists STARTTLS there would otherwise have it offered inside the client's TLS,
 * found by fuzz_imap_session). A capability list that runs into the literal (untagged
 * CAPABILITY) is not IMAP: capabilities are atoms. */
static void literal_response(struct imap *s, struct proto_actions *a, const struct imap_item *it)
{
	size_t kw_end, end;
	if (caps_span(it->p, it->len, &kw_end, &end) != 1) {
		proto_send(a, PROTO_CLIENT, it->p, it->size);
		return;
	}
	if (end == it->len) {
		s->resp_open = 0; /* nothing of it went out: the client can still get a BYE */
		protocol_error(s, a, "literal in a capability list");
		return;
	}
	send_rewritten(s, a, it->p, it->len);
}

static void upstream_bytes(struct imap *s, struct proto_actions *a)
{
	/* during the client's TLS handshake nothing may be written to it: the upstream's
	 * responses wait in the reader until the handshake is done */
	while (s->u != U_DONE && s->u != U_HANDSHAKE &&
	       !(s->u == U_READY && s->c == C_STARTTLS)) {
		struct imap_item it;
		int k = ir_next(&s->uin, &it);
		if (k == IR_MORE)
			break;
		if (k == IR_TOO_LONG || k == IR_BAD_LITERAL) {
			protocol_error(s, a, k == IR_TOO_LONG ? "line too long" : "literal too large");
			return;
		}
		int relay = s->u == U_READY;
		if (k == IR_DATA || !it.first) {
			if (relay)
				proto_send(a, PROTO_CLIENT, it.p, it.size);
			s->resp_open = k == IR_DATA || !it.last;
			ir_consume(&s->uin, &it);
			if (relay && !s->resp_open && !s->tag[0])
				process_client(s, a); /* the commands held while it was open */
			continue;
		}
		struct imap_resp r;
		if (imap_classify(it.p, it.len, &r) < 0) {
			ir_consume(&s->uin, &it);
			protocol_error(s, a, "malformed response");
			return;
		}
		s->resp_open = !it.last;
		if (s->u == U_GREETING) {
			on_greeting(s, a, it.p, it.len, &r);
		} else if (s->u == U_READY) {
			if (it.last)
				on_response(s, a, it.p, it.len, &r);
			else
				literal_response(s, a, &it); /* e.g. FETCH with a literal */
		} else {
			enum ustate before = s->u;
			on_own(s, a, it.p, it.len, &r);
			if (s->u == U_HANDSHAKE && before != U_HANDSHAKE) {
				ir_consume(&s->uin, &it);
				kit_injection(&s->p, PROTO_UPSTREAM, kit_starttls(a, PROTO_UPSTREAM, &s->uin.lr));
				ir_discard(&s->uin);
				return;
			}
		}
		ir_consume(&s->uin, &it);
		if (s->c == C_COMPRESSED) {
			relay_rest(s, a);
			return;
		}
		if (s->u == U_READY && s->client_eof && !s->tag[0] && !s->resp_open)
			break; /* the client is gone and its last command is answered */
		if (s->u == U_READY && !s->tag[0])
			process_client(s, a);
	}
	if (s->u == U_READY && s->client_eof && !s->tag[0] && !s->resp_open)
		finish(s, a, NULL, s->logout_seen ? "logout" : "client closed");
}

/* ---- client commands ---------------------------------------------------------------- */

static void local_tagged(struct proto_actions *a, const char *tag, const char *text)
{
	proto_sendf(a, PROTO_CLIENT, "%s %s\r\n", tag, text);
}

/* The first segment of a command. Returns 1 when it goes up. */
static int command(struct imap *s, struct proto_actions *a, const struct imap_item *it)
{
	struct imap_cmd_words w;
	if (imap_tag_verb(it->p, it->len, &w) < 0 || memchr(it->p, '\0', it->len) ||
	    memchr(it->p, '\r', it->len)) {
		if (!it->last) {
			/* its literal cannot be refused before the data comes */
			finish(s, a, "* BYE [UNAVAILABLE] Malformed command, closing connection",
			       "client protocol error");
			return 0;
		}
		proto_sendf(a, PROTO_CLIENT, "* BAD Malformed command\r\n");
		return 0;
	}
	const char *v = w.verb;
	if (strcmp(v, "STARTTLS") == 0) {
		if (s->client_tls)
			local_tagged(a, w.tag, "BAD TLS already active");
		else if (s->p.client_tls != CFG_TLS_STARTTLS)
			local_tagged(a, w.tag, "BAD STARTTLS not available");
		else if (s->auth_done)
			local_tagged(a, w.tag, "BAD STARTTLS not permitted after authentication");
		else if (!it->last)
			local_tagged(a, w.tag, "BAD Unexpected arguments");
		else {
			local_tagged(a, w.tag, "OK Begin TLS negotiation now");
			enter_state(s, PROTO_CLIENT, C_STARTTLS);
		}
		return 0;
	}
	int login = strcmp(v, "LOGIN") == 0 || strcmp(v, "AUTHENTICATE") == 0;
	if (login && hide_auth(s)) {
		if (!it->last && it->nonsync) {
			finish(s, a, "* BYE [PRIVACYREQUIRED] TLS required, closing connection",
			       "client policy");
			return 0;
		}
		local_tagged(a, w.tag, "NO [PRIVACYREQUIRED] Must issue a STARTTLS command first");
		return 0;
	}
	if (strcmp(v, "COMPRESS") == 0) {
		if (!s->auth_done) /* RFC 4978: valid only in the authenticated state */
			local_tagged(a, w.tag, "BAD COMPRESS is permitted only after login");
		else if (!it->last)
			local_tagged(a, w.tag, "BAD Unexpected literal");
		else {
			snprintf(s->tag, sizeof(s->tag), "%s", w.tag);
			s->kind = K_COMPRESS;
			return 1;
		}
		return 0;
	}
	snprintf(s->tag, sizeof(s->tag), "%s", w.tag);
	s->kind = strcmp(v, "LOGIN") == 0 ? K_LOGIN
		  : strcmp(v, "AUTHENTICATE") == 0 ? K_AUTH
		  : strcmp(v, "IDLE") == 0 ? K_IDLE
		  : strcmp(v, "LOGOUT") == 0 ? K_LOGOUT : K_OTHER;
	return 1;
}

static void process_client(struct imap *s, struct proto_actions *a)
{
	while (s->u == U_READY && s->client_greeted && s->c != C_COMPRESSED) {
		if (s->c == C_STARTTLS) {
			kit_injection(&s->p, PROTO_CLIENT, ir_pending(&s->cin));
			ir_discard(&s->cin);
			return;
		}
		struct imap_item it;
		int k = ir_next(&s->cin, &it);
		if (k == IR_MORE)
			return;
		if (k == IR_TOO_LONG) {
			finish(s, a, "* BYE [TOOBIG] Line too long, closing connection",
			       "client line too long");
			return;
		}
		if (k == IR_BAD_LITERAL) {
			finish(s, a, "* BYE [TOOBIG] Literal too large, closing connection",
			       "client literal too large");
			return;
		}
		if (s->c == C_RAWLINE && k == IR_LINE && it.first) {
			proto_send(a, PROTO_UPSTREAM, it.p, it.size);
			ir_consume(&s->cin, &it);
			enter_state(s, PROTO_CLIENT, C_COMMAND);
			continue;
		}
		if (k == IR_DATA || !it.first) {
			if (!s->skipping)
				proto_send(a, PROTO_UPSTREAM, it.p, it.size);
			if (k == IR_LINE && it.last)
				s->sending = s->skipping = 0;
			ir_consume(&s->cin, &it);
			if (s->skipping && k == IR_LINE && !it.last && !it.nonsync) {
				/* a synchronizing literal nobody will answer "+" to */
				ir_cancel_literal(&s->cin);
				s->skipping = 0;
			}
			continue;
		}
		if (s->tag[0] || s->resp_open)
			return; /* one command at a time: wait for the tagged response; and no local
				 * answer inside an upstream response that is still open (its
				 * literal's data, found by reading the session's code) */
		int up = command(s, a, &it);
		if (up) {
			proto_send(a, PROTO_UPSTREAM, it.p, it.size);
			s->sending = !it.last;
		}
		if (s->u == U_DONE)
			return;
		ir_consume(&s->cin, &it);
		if (!up && !it.last) {
			/* answered locally: a synchronizing literal's data will not come (the
			 * client got a tagged response, not "+"); LITERAL+ data is dropped */
			if (it.nonsync)
				s->skipping = 1;
			else
				ir_cancel_literal(&s->cin);
		}
		if (s->c == C_STARTTLS) {
			kit_injection(&s->p, PROTO_CLIENT, kit_starttls(a, PROTO_CLIENT, &s->cin.lr));
			ir_discard(&s->cin);
			return;
		}
	}
}

/* ---- module interface ------------------------------------------------------------------- */

static void *imap_create(const struct proto_params *p)
{
	struct imap *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->p = *p;
	s->u = U_CONNECTING;
	s->c = C_COMMAND;
	s->client_tls = p->client_tls == CFG_TLS_IMPLICIT;
	ir_init(&s->cin, IMAP_LINE_MAX, IMAP_LITERAL_MAX);
	ir_init(&s->uin, IMAP_RESP_LINE_MAX, UINT64_MAX);
	return s;
}

static void imap_destroy(void *st)
{
	struct imap *s = st;
	if (!s)
		return;
	ir_free(&s->cin);
	ir_free(&s->uin);
	buf_free(&s->greeting);
	buf_free(&s->caps);
	free(s);
}

static void imap_upstream_connected(void *st, struct proto_actions *a)
{
	struct imap *s = st;
	(void)a;
	s->upstream_tls = s->p.upstream_tls == CFG_TLS_IMPLICIT;
	enter_state(s, PROTO_UPSTREAM, U_GREETING);
}

static void imap_data(void *st, enum proto_side from, const uint8_t *d, size_t n,
		      struct proto_actions *a)
{
	struct imap *s = st;
	if (s->u == U_DONE || n == 0)
		return;
	if (s->c == C_COMPRESSED) {
		proto_send(a, from == PROTO_UPSTREAM ? PROTO_CLIENT : PROTO_UPSTREAM, d, n);
		return;
	}
	if (from == PROTO_UPSTREAM) {
		if (s->u == U_HANDSHAKE)
			return;
		if (s->c == C_STARTTLS && ir_pending(&s->uin) + n > IMAP_HOLD_MAX + IMAP_LINE_MAX) {
			protocol_error(s, a, "too much data during the client's TLS handshake");
			return;
		}
		if (ir_feed(&s->uin, d, n) < 0) {
			out_of_memory(s, a);
			return;
		}
		upstream_bytes(s, a);
		return;
	}
	if (s->c == C_STARTTLS) {
		kit_injection(&s->p, PROTO_CLIENT, n);
		return;
	}
	if (ir_pending(&s->cin) + n > IMAP_HOLD_MAX + IMAP_LINE_MAX) {
		finish(s, a, "* BYE [UNAVAILABLE] Too much pipelined input, closing connection",
		       "client pipelining overflow");
		return;
	}
	if (ir_feed(&s->cin, d, n) < 0) {
		out_of_memory(s, a);
		return;
	}
	process_client(s, a);
}

static void imap_tls_done(void *st, enum proto_side side, struct proto_actions *a)
{
	struct imap *s = st;
	if (side == PROTO_UPSTREAM) {
		/* nothing learned before TLS is kept: ask again inside */
		s->upstream_tls = 1;
		ir_discard(&s->uin);
		s->resp_open = 0;
		s->stls_offered = 0;
		s->auth_done = 0;
		buf_free(&s->greeting);
		send_own(s, a, "CAPABILITY", U_TLS_CAPA);
		return;
	}
	s->client_tls = 1;
	ir_discard(&s->cin);
	enter_state(s, PROTO_CLIENT, C_COMMAND);
	upstream_bytes(s, a); /* what the upstream said during the handshake */
}

static void imap_set_policy(void *st, enum cfg_tls tls, enum cfg_policy level, enum cfg_mode mode)
{
	struct imap *s = st;
	s->p.upstream_tls = tls;
	s->p.upstream_policy = level;
	s->p.policy_mode = mode;
}

static void imap_upstream_retry(void *st)
{
	struct imap *s = st;
	s->upstream_tls = 0;
	ir_discard(&s->uin);
	s->resp_open = 0;
	s->stls_offered = 0;
	s->auth_done = 0;
	buf_free(&s->greeting);
	buf_free(&s->caps);
	enter_state(s, PROTO_UPSTREAM, U_CONNECTING);
}

static void imap_upstream_retry_plain(void *st)
{
	struct imap *s = st;
	s->p.upstream_tls = CFG_TLS_NONE;
	imap_upstream_retry(st);
}

static void imap_client_eof(void *st, struct proto_actions *a)
{
	struct imap *s = st;
	s->client_eof = 1;
	if (s->u == U_DONE)
		return;
	if (!s->tag[0] || !s->client_greeted || s->c == C_COMPRESSED)
		finish(s, a, NULL, s->logout_seen ? "logout" : "client closed");
}

static void imap_fail(void *st, enum proto_failure why, const char *result,
		      struct proto_actions *a)
{
	struct imap *s = st;
	char r[300];
	if (s->u == U_DONE)
		return;
	const char *reason = why == PF_TLS_POLICY ? "upstream policy failure"
			     : why == PF_IDLE	  ? "idle timeout"
			     : why == PF_SHUTDOWN ? "shutdown"
			     : why == PF_UNREACHABLE ? "upstream unreachable"
						     : "upstream lost";
	if (why == PF_LOST && s->logout_seen) {
		finish(s, a, NULL, "logout");
		return;
	}
	if (s->c == C_COMPRESSED) { /* no plaintext line fits in a compressed stream */
		finish(s, a, NULL, why == PF_LOST ? "upstream closed" : reason);
		return;
	}
	switch (why) {
	case PF_UNREACHABLE:
		snprintf(r, sizeof(r), "* BYE [UNAVAILABLE] Upstream server unreachable, try again later");
		break;
	case PF_LOST:
		snprintf(r, sizeof(r), "* BYE [UNAVAILABLE] Upstream connection lost");
		break;
	case PF_TLS_POLICY:
		snprintf(r, sizeof(r),
			 "* BYE [UNAVAILABLE] TLS policy failure toward the upstream server (%s); "
			 "try again later", result ? result : "tls");
		break;
	case PF_IDLE:
		snprintf(r, sizeof(r), "* BYE Autologout; idle for too long");
		break;
	default:
		snprintf(r, sizeof(r), "* BYE [UNAVAILABLE] Service shutting down, try again later");
		break;
	}
	/* inside a response's literal any line would be taken as its data */
	finish(s, a, s->resp_open ? NULL : r, reason);
}

static void imap_refuse(const struct proto_params *p, enum proto_refusal why,
			struct proto_actions *a)
{
	(void)p;
	if (why == PR_NOT_ALLOWED)
		proto_sendf(a, PROTO_CLIENT, "* BYE Access denied\r\n");
	else
		proto_sendf(a, PROTO_CLIENT, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n");
	proto_close(a, why == PR_NOT_ALLOWED ? "client not allowed" : "connection limit");
}

static int imap_idle(void *st)
{
	const struct imap *s = st;
	/* compressed: the module cannot tell, and could not say BYE */
	return s->u == U_READY && s->client_greeted && s->c == C_COMMAND && !s->tag[0] &&
	       !s->resp_open && ir_pending(&s->cin) == 0 && !s->logout_seen;
}

const struct proto_ops proto_imap_ops = {
	.name = "imap",
	.create = imap_create,
	.destroy = imap_destroy,
	.upstream_connected = imap_upstream_connected,
	.data = imap_data,
	.tls_done = imap_tls_done,
	.client_eof = imap_client_eof,
	.upstream_retry_plain = imap_upstream_retry_plain,
	.upstream_retry = imap_upstream_retry,
	.set_policy = imap_set_policy,
	.fail = imap_fail,
	.refuse = imap_refuse,
	.idle = imap_idle,
};
