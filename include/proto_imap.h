/* proto_imap.h - IMAP STARTTLS (RFC 3501, 9051, 2595): the pure parsing pieces the module is
 * built from, exported for table tests and the fuzz harness. No I/O here.
 *
 *   struct imap_reader   splits one side's bytes into line segments and literal data: a
 *                        line that ends in a literal announcement ({n}, {n+}, ~{n}, ~{n+}:
 *                        RFC 3501 §4.3, RFC 7888 LITERAL+/LITERAL-, RFC 3516 literal8) is
 *                        followed by exactly n octets of data, which are never read as lines
 *                        (a "STARTTLS" inside an APPENDed message is data), then the rest of
 *                        the command (or response) continues as another line segment
 *   imap_tag_verb()      a command's tag and verb
 *   imap_classify()      a response line: untagged "*", continuation "+", tagged "TAG ...",
 *                        its status (OK/NO/BAD/PREAUTH/BYE) and its response code
 *   imap_caps_*()        the capability list of "* CAPABILITY ..." or a "[CAPABILITY ...]"
 *                        response code: flags, and the line rewritten (STARTTLS added or
 *                        removed, LOGINDISABLED added and AUTH= removed, COMPRESS= removed)
 *
 * Contract: functions return 0 (or a count, or a kind) or a negative errno; nothing here
 * allocates but the reader's buffer (-ENOMEM from ir_feed). */
#ifndef STP_PROTO_IMAP_H
#define STP_PROTO_IMAP_H

#include <stddef.h>
#include <stdint.h>

#include "proto_kit.h"

/* Bounds. A line segment (up to its LF, terminator included) may be IMAP_LINE_MAX octets:
 * RFC 7162 §4 asks clients to keep command lines within 8192 octets, and a longer segment
 * is refused (IR_TOO_LONG). A literal may announce at most IMAP_LITERAL_MAX octets (an
 * APPENDed message; a larger one is IR_BAD_LITERAL). The reader holds at most one line
 * segment: literal data is handed out as it comes, never buffered whole. */
#define IMAP_LINE_MAX 8192
#define IMAP_LITERAL_MAX (64ULL * 1024 * 1024)
#define IMAP_TAG_MAX 64  /* longest tag the module accepts (RFC: unbounded; real: < 20) */
#define IMAP_VERB_MAX 32 /* longest verb kept (the longest IMAP command is 12 octets) */
/* Response lines (one segment) from the upstream may be longer than commands: a SEARCH
 * result lists every matching number on one line. A longer one ends the session. */
#define IMAP_RESP_LINE_MAX (1024 * 1024)
/* Client bytes held while a command is answered before the session is ended. */
#define IMAP_HOLD_MAX (256 * 1024)

/* ---- the reader ------------------------------------------------------------------------ */

struct imap_reader {
	struct line_reader lr;
	uint64_t lit_max;  /* the largest literal accepted */
	uint64_t lit_left; /* literal octets still due before the next line segment */
	int in_cmd;        /* the next line segment continues a command (one had a literal) */
};

enum {
	IR_MORE = 0,        /* nothing complete yet */
	IR_LINE = 1,        /* a line segment (struct imap_item fields below) */
	IR_DATA = 2,        /* literal data: p/len, part or all of the literal's octets */
	IR_TOO_LONG = 3,    /* a line segment longer than the line bound: its octets are dropped
			       up to its LF; the next segment starts a new command */
	IR_BAD_LITERAL = 4, /* a line segment announced a literal larger than lit_max (the line
			       is in p/len as for IR_LINE): no data is expected after it; a caller
			       that cannot refuse it before the data comes ({n+}) must end the
			       session, since the octets that follow cannot be told from lines */
};

struct imap_item {
	int kind;         /* what ir_next() returned */
	const uint8_t *p;
	size_t len;       /* IR_LINE, IR_BAD_LITERAL: without the terminator; IR_DATA: octets */
	size_t size;      /* what ir_consume() takes */
	int first;        /* IR_LINE: the segment starts a command / response (tag, verb here) */
	int last;         /* IR_LINE: no literal follows: the command / response ends here */
	uint64_t literal; /* IR_LINE, IR_BAD_LITERAL: the announced literal's size */
	int nonsync;      /* {n+}: the data follows without waiting for "+" */
	int binary;       /* ~{n}: a literal8 (RFC 3516), may hold NUL */
};

void ir_init(struct imap_reader *r, size_t line_max, uint64_t lit_max);
void ir_free(struct imap_reader *r);
int ir_feed(struct imap_reader *r, const void *data, size_t n);
/* The next item, not consumed (look again, or ir_consume it). IR_TOO_LONG is consumed
 * already. Returns IR_MORE, IR_LINE, IR_DATA, IR_TOO_LONG or IR_BAD_LITERAL. */
int ir_next(struct imap_reader *r, struct imap_item *it);
/* Takes the item returned by the last ir_next() (all of it). */
void ir_consume(struct imap_reader *r, const struct imap_item *it);
/* A synchronizing literal was refused (the server answered its command with a tagged
 * NO/BAD instead of "+"): the client does not send its data; the next segment starts a new
 * command. */
void ir_cancel_literal(struct imap_reader *r);
/* Everything held is dropped (the STARTTLS boundary) and the reader starts afresh. Returns
 * the count of octets dropped. */
size_t ir_discard(struct imap_reader *r);
static inline size_t ir_pending(const struct imap_reader *r)
{
	return lr_pending(&r->lr);
}

/* The literal announced at the end of a line (no terminator): returns 1 and sets *size,
 * *nonsync, *binary for "...{n}", "...{n+}", "...~{n}", "...~{n+}" (n: 1 to 20 digits),
 * 0 when the line ends otherwise, -ERANGE when n does not fit 64 bits. The "{" (or "~")
 * must start the line or follow SP or "(": "{" is an atom-special (RFC 3501 §9), so
 * "x{5}" is an atom that a conforming server does not read as a literal, and neither does
 * the reader (octets it took for literal data would escape the module's reading). */
int imap_literal_at_end(const uint8_t *p, size_t len, uint64_t *size, int *nonsync,
			int *binary);

/* ---- commands -------------------------------------------------------------------------- */

struct imap_cmd_words {
	char tag[IMAP_TAG_MAX + 1];
	char verb[IMAP_VERB_MAX + 1]; /* upper case; "UID" for UID commands, whose verb is in */
	char uid_verb[IMAP_VERB_MAX + 1]; /* here (upper case), else "" */
	size_t args;                  /* offset of what follows the verb (and its space) */
};

/* A command line's first segment (no terminator) split into tag and verb. Returns 0, or
 * -EINVAL: no tag (empty, a tag character outside RFC 3501's tag = 1*<ASTRING-CHAR
 * except "+">, or longer than IMAP_TAG_MAX), or no verb (missing, not an atom, or longer
 * than IMAP_VERB_MAX). */
int imap_tag_verb(const uint8_t *p, size_t len, struct imap_cmd_words *w);

/* ---- responses ------------------------------------------------------------------------- */

enum imap_rkind { IMAP_R_UNTAGGED, IMAP_R_CONTINUE, IMAP_R_TAGGED };
enum imap_status {
	IMAP_S_NONE,    /* untagged data ("* 3 EXISTS", "* CAPABILITY ...") or a continuation */
	IMAP_S_OK, IMAP_S_NO, IMAP_S_BAD, IMAP_S_PREAUTH, IMAP_S_BYE,
};

struct imap_resp {
	enum imap_rkind kind;
	enum imap_status status;
	size_t tag_len;   /* IMAP_R_TAGGED: the tag is p[0 .. tag_len) */
	size_t word;      /* offset of the word after the tag / "*" (status or data name) */
	size_t code, code_len; /* the response code inside "[...]" (0, 0: none) */
	int capability;   /* untagged "CAPABILITY" data */
};

/* A response line's first segment (no terminator). Returns 0, or -EINVAL for a line that is
 * not a response: empty, "*" or "+" not followed by SP (or the end, for "+"), a bad tag, a
 * tagged response whose word is not OK/NO/BAD (PREAUTH and BYE are untagged only), a status
 * word not followed by SP or the end. A "[" after the status opens a response code, which
 * ends at the first "]" (none: -EINVAL). */
int imap_classify(const uint8_t *p, size_t len, struct imap_resp *r);

/* ---- capabilities ---------------------------------------------------------------------- */

enum {
	IMAP_CAP_IMAP4 = 1 << 0,         /* IMAP4rev1 or IMAP4rev2 */
	IMAP_CAP_STARTTLS = 1 << 1,
	IMAP_CAP_LOGINDISABLED = 1 << 2,
	IMAP_CAP_AUTH = 1 << 3,          /* some AUTH=mechanism */
	IMAP_CAP_COMPRESS = 1 << 4,      /* some COMPRESS=algorithm (RFC 4978) */
	IMAP_CAP_LITERALPLUS = 1 << 5,   /* LITERAL+ */
	IMAP_CAP_LITERALMINUS = 1 << 6,  /* LITERAL- */
};

/* The capability list a response line (no terminator) carries: the atoms after
 * "* CAPABILITY" (untagged data), or inside a "[CAPABILITY ...]" response code of a status
 * response (greeting, tagged OK). Returns 1 and sets *off, *len (possibly 0: an empty
 * list), 0 when the line carries none, -EINVAL when the line is no response. */
int imap_caps_find(const uint8_t *p, size_t len, size_t *off, size_t *list_len);
/* IMAP_CAP_* of a capability list (atoms separated by spaces). */
unsigned imap_caps_flags(const char *list, size_t len);

/* What imap_caps_rewrite() does. */
enum {
	IMAP_CAPS_ADD_STARTTLS = 1 << 0, /* before the client's TLS: the proxy offers it */
	IMAP_CAPS_DEL_STARTTLS = 1 << 1, /* inside TLS, or the proxy cannot do it */
	IMAP_CAPS_LOGINDISABLED = 1 << 2, /* client_policy = encrypt before TLS: LOGINDISABLED
					     added, every AUTH= removed (RFC 3501 §6.2.3) */
	IMAP_CAPS_DEL_COMPRESS = 1 << 3, /* COMPRESS=* removed: the module cannot read a
					    compressed stream */
};

/* The response line (no terminator) with its capability list rewritten by ops, into out
 * (NUL-terminated, *out_len octets, no terminator). Atoms are kept in their order; one
 * STARTTLS / LOGINDISABLED is appended when asked for and not present; duplicates of
 * either are kept as they are unless removed. Returns 1 (rewritten), 0 (the line carries
 * no capability list: out untouched), -EINVAL (not a response), -ENOSPC (out too small:
 * out_cap >= len + 32 always suffices). */
int imap_caps_rewrite(const uint8_t *p, size_t len, unsigned ops, char *out, size_t out_cap,
		      size_t *out_len);

#endif
