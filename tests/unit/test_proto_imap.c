/* test_proto_imap.c - the IMAP parsing pieces (proto_imap.h), table-driven: the reader that
 * splits commands and responses into line segments and literal data, tag/verb extraction,
 * the response classifier, the capability list (found, flags, rewritten).
 *
 * Every reader input runs fed whole, one byte at a time, and split in two at every
 * position; the transcript (line segments with their first/last/literal marks, literal
 * data merged across pieces, too-long and bad-literal reports) must equal the expected one
 * each time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "proto.h"
#include "proto_imap.h"
#include "unit_script.h"

/* ------------------------------------------------------------------ transcripts */

/* Bytes with CR, LF, controls and '|' escaped. */
static void sb_esc(struct sbuf *b, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char t[8];
		if (p[i] == '\r')
			sb_adds(b, "\\r");
		else if (p[i] == '\n')
			sb_adds(b, "\\n");
		else if (p[i] < 32 || p[i] > 126) {
			snprintf(t, sizeof(t), "\\x%02x", p[i]);
			sb_adds(b, t);
		} else
			sb_add(b, p + i, 1);
	}
}

struct run {
	struct imap_reader r;
	struct sbuf out;
	int last_data; /* the transcript ends in a D record (merge the next data into it) */
};

/* Items ready in the reader, appended to the transcript:
 *   F|text|mark   a line segment starting a command (C| for a continuation segment);
 *                 mark "." when it ends the command, else the literal: "+" nonsync,
 *                 "~" binary, then its size
 *   D|bytes       literal data (pieces merged)
 *   TOO_LONG      a segment over the line bound
 *   BADLIT|text|size */
static void drain(struct run *x)
{
	struct imap_item it;
	int k;
	while ((k = ir_next(&x->r, &it)) != IR_MORE) {
		char t[64];
		assert_int_equal(k, it.kind);
		switch (k) {
		case IR_LINE:
			sb_adds(&x->out, it.first ? "F|" : "C|");
			sb_esc(&x->out, it.p, it.len);
			if (it.last)
				sb_adds(&x->out, "|.\n");
			else {
				snprintf(t, sizeof(t), "|%s%s%" PRIu64 "\n", it.nonsync ? "+" : "",
					 it.binary ? "~" : "", it.literal);
				sb_adds(&x->out, t);
			}
			x->last_data = 0;
			break;
		case IR_DATA:
			assert_true(it.len > 0);
			if (x->last_data)
				x->out.n--; /* reopen the D record */
			else
				sb_adds(&x->out, "D|");
			sb_esc(&x->out, it.p, it.len);
			sb_adds(&x->out, "\n");
			x->last_data = 1;
			break;
		case IR_TOO_LONG:
			sb_adds(&x->out, "TOO_LONG\n");
			x->last_data = 0;
			break;
		case IR_BAD_LITERAL:
			sb_adds(&x->out, "BADLIT|");
			sb_esc(&x->out, it.p, it.len);
			snprintf(t, sizeof(t), "|%" PRIu64 "\n", it.literal);
			sb_adds(&x->out, t);
			x->last_data = 0;
			break;
		default:
			fail_msg("ir_next returned %d", k);
		}
		ir_consume(&x->r, &it);
	}
}

#define T_LINE_MAX 64
#define T_LIT_MAX 100

/* The transcript of input fed in pieces: cut[0..ncut) are the offsets where a piece ends
 * (ascending); the rest is fed last. Returns a malloc'd string. */
static char *feed(const char *in, size_t n, const size_t *cut, size_t ncut)
{
	struct run x;
	memset(&x, 0, sizeof(x));
	ir_init(&x.r, T_LINE_MAX, T_LIT_MAX);
	size_t at = 0;
	for (size_t i = 0; i <= ncut; i++) {
		size_t end = i < ncut ? cut[i] : n;
		assert_int_equal(ir_feed(&x.r, in + at, end - at), 0);
		drain(&x);
		at = end;
	}
	sb_adds(&x.out, ""); /* never NULL */
	ir_free(&x.r);
	return x.out.p;
}

static void check_reader(const char *in, size_t n, const char *want)
{
	char *got = feed(in, n, NULL, 0);
	if (strcmp(got, want) != 0)
		print_message("whole: got\n%s\nwant\n%s\n", got, want);
	assert_string_equal(got, want);
	free(got);
	size_t *cuts = malloc((n + 1) * sizeof(*cuts));
	assert_non_null(cuts);
	for (size_t i = 0; i < n; i++)
		cuts[i] = i + 1;
	got = feed(in, n, cuts, n ? n - 1 : 0);
	if (strcmp(got, want) != 0)
		print_message("bytewise: got\n%s\nwant\n%s\n", got, want);
	assert_string_equal(got, want);
	free(got);
	for (size_t c = 1; c < n; c++) {
		got = feed(in, n, &c, 1);
		if (strcmp(got, want) != 0)
			print_message("split at %zu: got\n%s\nwant\n%s\n", c, got, want);
		assert_string_equal(got, want);
		free(got);
	}
	free(cuts);
}

/* ------------------------------------------------------------------ the reader */

static void test_reader(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		size_t n; /* 0: strlen */
		const char *want;
	} t[] = {
		/* plain commands, CRLF and bare LF */
		{ "A1 NOOP\r\nA2 CAPABILITY\nA3 LOGOUT\r\n", 0,
		  "F|A1 NOOP|.\nF|A2 CAPABILITY|.\nF|A3 LOGOUT|.\n" },
		/* nothing complete */
		{ "A1 NOOP", 0, "" },
		/* LOGIN with two synchronizing literals */
		{ "A1 LOGIN {4}\r\nuser {6}\r\nsecret\r\n", 0,
		  "F|A1 LOGIN {4}|4\nD|user\nC| {6}|6\nD|secret\nC||.\n" },
		/* a STARTTLS inside an APPENDed message is data, the next command is a command */
		{ "A2 APPEND INBOX {16}\r\nA3 STARTTLS\r\nx\r\n\r\nA4 NOOP\r\n", 0,
		  "F|A2 APPEND INBOX {16}|16\nD|A3 STARTTLS\\r\\nx\\r\\n\nC||.\nF|A4 NOOP|.\n" },
		/* the same with LITERAL+ */
		{ "A2 APPEND INBOX (\\Seen) {13+}\r\nA3 STARTTLS\r\n\r\nA4 STARTTLS\r\n", 0,
		  "F|A2 APPEND INBOX (\\Seen) {13+}|+13\nD|A3 STARTTLS\\r\\n\nC||.\n"
		  "F|A4 STARTTLS|.\n" },
		/* literal8 (RFC 3516), sync and nonsync, with NUL */
		{ "A5 APPEND INBOX ~{3}\r\na\0b\r\nA6 APPEND INBOX ~{2+}\r\n\0\n\r\n", 54,
		  "F|A5 APPEND INBOX ~{3}|~3\nD|a\\x00b\nC||.\nF|A6 APPEND INBOX ~{2+}|+~2\n"
		  "D|\\x00\\n\nC||.\n" },
		/* zero-length literals */
		{ "A6 LOGIN {0}\r\n {0+}\r\n\r\n", 0, "F|A6 LOGIN {0}|0\nC| {0+}|+0\nC||.\n" },
		/* a literal right after "(" */
		{ "A7 SEARCH ({3}\r\nabc)\r\n", 0, "F|A7 SEARCH ({3}|3\nD|abc\nC|)|.\n" },
		/* literal data that looks like a literal announcement is data */
		{ "A8 LOGIN {5}\r\n{99}\r\r\n", 0, "F|A8 LOGIN {5}|5\nD|{99}\\r\nC||.\n" },
		/* not literals: inside an atom, no digits, a space, a stray "+", text after */
		{ "B1 NOOP x{5}\r\nB2 X {}\r\nB3 X {5 }\r\nB4 X {+}\r\nB5 X {5} \r\nB6 X {5}x\r\n"
		  "B7 X ~{-1}\r\n",
		  0,
		  "F|B1 NOOP x{5}|.\nF|B2 X {}|.\nF|B3 X {5 }|.\nF|B4 X {+}|.\nF|B5 X {5} |.\n"
		  "F|B6 X {5}x|.\nF|B7 X ~{-1}|.\n" },
		/* a literal at the very start of a segment */
		{ "{2}\r\nab\r\n", 0, "F|{2}|2\nD|ab\nC||.\n" },
		/* too large: over lit_max (100), over 64 bits (20 digits), 21 digits (no literal) */
		{ "C1 APPEND INBOX {101}\r\nC2 NOOP\r\nC3 X {100}\r\n", 0,
		  "BADLIT|C1 APPEND INBOX {101}|101\nF|C2 NOOP|.\nF|C3 X {100}|100\n" },
		{ "C4 X {99999999999999999999+}\r\nC5 X {123456789012345678901}\r\n", 0,
		  "BADLIT|C4 X {99999999999999999999+}|18446744073709551615\n"
		  "F|C5 X {123456789012345678901}|.\n" },
		/* the line bound (64 with CRLF): 62 + CRLF passes, 63 + CRLF does not */
		{ "12345678901234567890123456789012345678901234567890123456789012\r\n"
		  "123456789012345678901234567890123456789012345678901234567890123\r\nD1 NOOP\r\n",
		  0,
		  "F|12345678901234567890123456789012345678901234567890123456789012|.\n"
		  "TOO_LONG\nF|D1 NOOP|.\n" },
		/* an overlong continuation segment: the next segment starts a new command */
		{ "D2 LOGIN {1}\r\nx"
		  "123456789012345678901234567890123456789012345678901234567890123\r\nD3 NOOP\r\n",
		  0, "F|D2 LOGIN {1}|1\nD|x\nTOO_LONG\nF|D3 NOOP|.\n" },
		/* a FETCH response whose literal holds a fake tagged OK */
		{ "* 1 FETCH (BODY[] {12}\r\nA1 OK done\r\n)\r\nA1 OK FETCH completed\r\n", 0,
		  "F|* 1 FETCH (BODY[] {12}|12\nD|A1 OK done\\r\\n\nC|)|.\n"
		  "F|A1 OK FETCH completed|.\n" },
		/* two literals in one response segment chain */
		{ "* 2 FETCH (BODY[HEADER] {2}\r\nh\n BODY[TEXT] {2}\r\nt\n)\r\n", 0,
		  "F|* 2 FETCH (BODY[HEADER] {2}|2\nD|h\\n\nC| BODY[TEXT] {2}|2\nD|t\\n\nC|)|.\n" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t n = t[i].n ? t[i].n : strlen(t[i].in);
		check_reader(t[i].in, n, t[i].want);
	}
}

/* A refused synchronizing literal, and the STARTTLS boundary. */
static void test_reader_cancel_discard(void **state)
{
	(void)state;
	struct run x;
	memset(&x, 0, sizeof(x));
	ir_init(&x.r, T_LINE_MAX, T_LIT_MAX);
	const char *a = "A1 LOGIN {5}\r\n";
	assert_int_equal(ir_feed(&x.r, a, strlen(a)), 0);
	drain(&x);
	/* the server said "A1 NO": the client sends no data */
	ir_cancel_literal(&x.r);
	const char *b = "A2 NOOP\r\nA3 STARTTLS\r\nA4 LOGIN a b\r\n";
	assert_int_equal(ir_feed(&x.r, b, strlen(b)), 0);
	struct imap_item it;
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	assert_true(it.first && it.last);
	ir_consume(&x.r, &it);
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	ir_consume(&x.r, &it);
	/* after STARTTLS, what the client pipelined is dropped */
	assert_int_equal(ir_discard(&x.r), strlen("A4 LOGIN a b\r\n"));
	assert_int_equal(ir_pending(&x.r), 0);
	assert_int_equal(ir_next(&x.r, &it), IR_MORE);
	/* and a boundary inside a literal leaves no literal pending */
	const char *c = "A5 APPEND X {10}\r\nabc";
	assert_int_equal(ir_feed(&x.r, c, strlen(c)), 0);
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	ir_consume(&x.r, &it);
	assert_int_equal(ir_discard(&x.r), 3);
	const char *d = "A6 NOOP\r\n";
	assert_int_equal(ir_feed(&x.r, d, strlen(d)), 0);
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	assert_true(it.first && it.last);
	assert_int_equal(it.len, 7);
	ir_consume(&x.r, &it);
	ir_free(&x.r);
	free(x.out.p);
}

/* ------------------------------------------------------------------ commands */

static void test_tag_verb(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		int rc;
		const char *tag, *verb, *uid_verb;
		size_t args;
	} t[] = {
		{ "A1 NOOP", 0, "A1", "NOOP", "", 7 },
		{ "a001 login user pass", 0, "a001", "LOGIN", "", 11 },
		{ "x StartTLS", 0, "x", "STARTTLS", "", 10 },
		{ "A1 UID fetch 1:* (FLAGS)", 0, "A1", "UID", "FETCH", 13 },
		{ "A]1 NOOP", 0, "A]1", "NOOP", "", 8 },
		{ "A.1-x NOOP", 0, "A.1-x", "NOOP", "", 10 },
		{ "A1 AUTHENTICATE PLAIN dGVzdA==", 0, "A1", "AUTHENTICATE", "", 16 },
		{ "A1 APPEND INBOX {5}", 0, "A1", "APPEND", "", 10 },
		/* bad tags */
		{ "", -EINVAL, "", "", "", 0 },
		{ "A1", -EINVAL, "", "", "", 0 },
		{ " NOOP", -EINVAL, "", "", "", 0 },
		{ "A+1 NOOP", -EINVAL, "", "", "", 0 },
		{ "* NOOP", -EINVAL, "", "", "", 0 },
		{ "A{1 NOOP", -EINVAL, "", "", "", 0 },
		{ "A\"1 NOOP", -EINVAL, "", "", "", 0 },
		{ "A%1 NOOP", -EINVAL, "", "", "", 0 },
		{ "A\x01 NOOP", -EINVAL, "", "", "", 0 },
		{ "A\xc3\xa9 NOOP", -EINVAL, "", "", "", 0 },
		{ "0123456789012345678901234567890123456789012345678901234567890123 NOOP", 0,
		  "0123456789012345678901234567890123456789012345678901234567890123", "NOOP", "",
		  69 },
		{ "01234567890123456789012345678901234567890123456789012345678901234 NOOP",
		  -EINVAL, "", "", "", 0 },
		/* bad verbs */
		{ "A1 ", -EINVAL, "", "", "", 0 },
		{ "A1  NOOP", -EINVAL, "", "", "", 0 },
		{ "A1 NO(OP", -EINVAL, "", "", "", 0 },
		{ "A1 UID", -EINVAL, "", "", "", 0 },
		{ "A1 UID ", -EINVAL, "", "", "", 0 },
		{ "A1 ABCDEFGHIJABCDEFGHIJABCDEFGHIJ1", 0, "A1", "ABCDEFGHIJABCDEFGHIJABCDEFGHIJ1",
		  "", 34 },
		{ "A1 ABCDEFGHIJABCDEFGHIJABCDEFGHIJ12", 0, "A1", "ABCDEFGHIJABCDEFGHIJABCDEFGHIJ12",
		  "", 35 }, /* IMAP_VERB_MAX octets */
		{ "A1 ABCDEFGHIJABCDEFGHIJABCDEFGHIJ123", -EINVAL, "", "", "", 0 },
		{ "A1 UID ABCDEFGHIJABCDEFGHIJABCDEFGHIJ12", 0, "A1", "UID",
		  "ABCDEFGHIJABCDEFGHIJABCDEFGHIJ12", 39 },
		{ "A1 UID ABCDEFGHIJABCDEFGHIJABCDEFGHIJ123", -EINVAL, "", "", "", 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct imap_cmd_words w;
		int rc = imap_tag_verb((const uint8_t *)t[i].in, strlen(t[i].in), &w);
		if (rc != t[i].rc)
			print_message("\"%s\": %d, want %d\n", t[i].in, rc, t[i].rc);
		assert_int_equal(rc, t[i].rc);
		if (rc < 0)
			continue;
		assert_string_equal(w.tag, t[i].tag);
		assert_string_equal(w.verb, t[i].verb);
		assert_string_equal(w.uid_verb, t[i].uid_verb);
		assert_int_equal(w.args, t[i].args);
	}
}

/* ------------------------------------------------------------------ responses */

static void test_classify(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		int rc;
		enum imap_rkind kind;
		enum imap_status status;
		const char *tag;  /* tagged */
		const char *code; /* the response code, NULL none */
		int capability;
	} t[] = {
		{ "* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.", 0, IMAP_R_UNTAGGED,
		  IMAP_S_OK, NULL, "CAPABILITY IMAP4rev1 STARTTLS", 0 },
		{ "* OK IMAP4rev1 ready", 0, IMAP_R_UNTAGGED, IMAP_S_OK, NULL, NULL, 0 },
		{ "* ok", 0, IMAP_R_UNTAGGED, IMAP_S_OK, NULL, NULL, 0 },
		{ "* PREAUTH [CAPABILITY IMAP4rev1] hi", 0, IMAP_R_UNTAGGED, IMAP_S_PREAUTH, NULL,
		  "CAPABILITY IMAP4rev1", 0 },
		{ "* BYE [UNAVAILABLE] go away", 0, IMAP_R_UNTAGGED, IMAP_S_BYE, NULL,
		  "UNAVAILABLE", 0 },
		{ "* NO [ALERT] disk full", 0, IMAP_R_UNTAGGED, IMAP_S_NO, NULL, "ALERT", 0 },
		{ "* BAD nonsense", 0, IMAP_R_UNTAGGED, IMAP_S_BAD, NULL, NULL, 0 },
		{ "* CAPABILITY IMAP4rev1 STARTTLS", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL,
		  1 },
		{ "* capability", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 1 },
		{ "* CAPABILITYX", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 0 },
		{ "* 3 EXISTS", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 0 },
		{ "* OKAY", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 0 },
		{ "+ go ahead", 0, IMAP_R_CONTINUE, IMAP_S_NONE, NULL, NULL, 0 },
		{ "+", 0, IMAP_R_CONTINUE, IMAP_S_NONE, NULL, NULL, 0 },
		{ "+ ", 0, IMAP_R_CONTINUE, IMAP_S_NONE, NULL, NULL, 0 },
		{ "A1 OK Begin TLS negotiation now", 0, IMAP_R_TAGGED, IMAP_S_OK, "A1", NULL, 0 },
		{ "A1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Logged in", 0, IMAP_R_TAGGED, IMAP_S_OK,
		  "A1", "CAPABILITY IMAP4rev1 AUTH=PLAIN", 0 },
		{ "tag.9 no [AUTHENTICATIONFAILED] bad", 0, IMAP_R_TAGGED, IMAP_S_NO, "tag.9",
		  "AUTHENTICATIONFAILED", 0 },
		{ "A1 BAD", 0, IMAP_R_TAGGED, IMAP_S_BAD, "A1", NULL, 0 },
		{ "A1 OK []", 0, IMAP_R_TAGGED, IMAP_S_OK, "A1", "", 0 },
		/* not responses */
		{ "", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "*", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "*OK", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "+go", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 ", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 PREAUTH hi", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 BYE hi", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 OKAY", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 3 EXISTS", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A+1 OK x", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 OK [ALERT no close", -EINVAL, 0, 0, NULL, NULL, 0 },
		/* a tag of IMAP_TAG_MAX octets, and one more */
		{ "0123456789012345678901234567890123456789012345678901234567890123 OK done", 0,
		  IMAP_R_TAGGED, IMAP_S_OK,
		  "0123456789012345678901234567890123456789012345678901234567890123", NULL, 0 },
		{ "01234567890123456789012345678901234567890123456789012345678901234 OK done",
		  -EINVAL, 0, 0, NULL, NULL, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct imap_resp r;
		const uint8_t *p = (const uint8_t *)t[i].in;
		int rc = imap_classify(p, strlen(t[i].in), &r);
		if (rc != t[i].rc)
			print_message("\"%s\": %d, want %d\n", t[i].in, rc, t[i].rc);
		assert_int_equal(rc, t[i].rc);
		if (rc < 0)
			continue;
		assert_int_equal(r.kind, t[i].kind);
		assert_int_equal(r.status, t[i].status);
		assert_int_equal(r.capability, t[i].capability);
		if (t[i].tag) {
			assert_int_equal(r.tag_len, strlen(t[i].tag));
			assert_memory_equal(p, t[i].tag, r.tag_len);
		}
		if (t[i].code) {
			assert_true(r.code > 0);
			assert_int_equal(r.code_len, strlen(t[i].code));
			assert_memory_equal(p + r.code, t[i].code, r.code_len);
		} else {
			assert_int_equal(r.code, 0);
		}
	}
}

/* ------------------------------------------------------------------ capabilities */

static void test_caps_find_flags(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		int rc;
		const char *list;
		unsigned flags;
	} t[] = {
		{ "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN", 1, "IMAP4rev1 STARTTLS AUTH=PLAIN",
		  IMAP_CAP_IMAP4 | IMAP_CAP_STARTTLS | IMAP_CAP_AUTH },
		{ "* CAPABILITY", 1, "", 0 },
		{ "* CAPABILITY  imap4rev2  starttls", 1, "imap4rev2  starttls",
		  IMAP_CAP_IMAP4 | IMAP_CAP_STARTTLS },
		{ "* OK [CAPABILITY IMAP4rev1 LITERAL+ LOGINDISABLED] Dovecot ready.", 1,
		  "IMAP4rev1 LITERAL+ LOGINDISABLED",
		  IMAP_CAP_IMAP4 | IMAP_CAP_LITERALPLUS | IMAP_CAP_LOGINDISABLED },
		{ "A1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE LITERAL-] Logged in", 1,
		  "IMAP4rev1 COMPRESS=DEFLATE LITERAL-",
		  IMAP_CAP_IMAP4 | IMAP_CAP_COMPRESS | IMAP_CAP_LITERALMINUS },
		{ "* PREAUTH [CAPABILITY] x", 1, "", 0 },
		/* look-alikes */
		{ "* CAPABILITY STARTTLSX XSTARTTLS AUTH LOGINDISABLEDX COMPRESS", 1,
		  "STARTTLSX XSTARTTLS AUTH LOGINDISABLEDX COMPRESS", 0 },
		/* no capability list */
		{ "* OK IMAP4rev1 STARTTLS ready", 0, NULL, 0 },
		{ "* OK [CAPABILITYX IMAP4rev1] ready", 0, NULL, 0 },
		{ "* 1 FETCH (BODY[] {5}", 0, NULL, 0 },
		{ "+ [CAPABILITY STARTTLS]", 0, NULL, 0 },
		{ "A1 OK done [CAPABILITY STARTTLS]", 0, NULL, 0 },
		{ "* ENABLED CAPABILITY", 0, NULL, 0 },
		{ "A1 CAPABILITY STARTTLS", -EINVAL, NULL, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t off = 999, len = 999;
		const uint8_t *p = (const uint8_t *)t[i].in;
		int rc = imap_caps_find(p, strlen(t[i].in), &off, &len);
		if (rc != t[i].rc)
			print_message("\"%s\": %d, want %d\n", t[i].in, rc, t[i].rc);
		assert_int_equal(rc, t[i].rc);
		if (rc != 1)
			continue;
		assert_int_equal(len, strlen(t[i].list));
		assert_memory_equal(p + off, t[i].list, len);
		unsigned f = imap_caps_flags((const char *)p + off, len);
		if (f != t[i].flags)
			print_message("\"%s\": flags %#x, want %#x\n", t[i].in, f, t[i].flags);
		assert_int_equal(f, t[i].flags);
	}
}

static void test_caps_rewrite(void **state)
{
	(void)state;
	enum {
		ADD = IMAP_CAPS_ADD_STARTTLS,
		DEL = IMAP_CAPS_DEL_STARTTLS,
		LD = IMAP_CAPS_LOGINDISABLED,
		NOZ = IMAP_CAPS_DEL_COMPRESS,
	};
	static const struct {
		const char *in;
		unsigned ops;
		int rc;
		const char *out;
	} t[] = {
		{ "* CAPABILITY IMAP4rev1 AUTH=PLAIN", ADD, 1,
		  "* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS" },
		{ "* CAPABILITY IMAP4rev1 starttls AUTH=PLAIN", ADD, 1,
		  "* CAPABILITY IMAP4rev1 starttls AUTH=PLAIN" },
		{ "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN STARTTLS", DEL, 1,
		  "* CAPABILITY IMAP4rev1 AUTH=PLAIN" },
		{ "* CAPABILITY", ADD | LD, 1, "* CAPABILITY STARTTLS LOGINDISABLED" },
		{ "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN LOGIN-REFERRALS",
		  ADD | LD, 1,
		  "* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS STARTTLS LOGINDISABLED" },
		{ "* CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN", LD, 1,
		  "* CAPABILITY IMAP4rev1 LOGINDISABLED" },
		{ "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE COMPRESS=X IDLE", NOZ, 1,
		  "* CAPABILITY IMAP4rev1 IDLE" },
		{ "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] Dovecot ready.",
		  ADD | LD | NOZ, 1,
		  "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR STARTTLS LOGINDISABLED] Dovecot "
		  "ready." },
		{ "A1 OK [CAPABILITY IMAP4rev1 STARTTLS IDLE] Logged in", DEL, 1,
		  "A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in" },
		{ "* OK [CAPABILITY] x", ADD, 1, "* OK [CAPABILITY STARTTLS] x" },
		{ "* CAPABILITY  IMAP4rev1   IDLE ", 0, 1, "* CAPABILITY IMAP4rev1 IDLE" },
		/* ADD and DEL together: DEL wins */
		{ "* CAPABILITY STARTTLS", ADD | DEL, 1, "* CAPABILITY" },
		/* no list: untouched */
		{ "* OK IMAP4rev1 STARTTLS", DEL, 0, "unchanged" },
		{ "A1 NOOP", DEL, -EINVAL, "unchanged" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char out[256] = "unchanged";
		size_t olen = 0;
		const uint8_t *p = (const uint8_t *)t[i].in;
		size_t n = strlen(t[i].in);
		int rc = imap_caps_rewrite(p, n, t[i].ops, out, sizeof(out), &olen);
		if (rc != t[i].rc || strcmp(out, t[i].out) != 0)
			print_message("\"%s\": %d \"%s\", want %d \"%s\"\n", t[i].in, rc, out,
				      t[i].rc, t[i].out);
		assert_int_equal(rc, t[i].rc);
		assert_string_equal(out, t[i].out);
		if (rc == 1) {
			assert_int_equal(olen, strlen(out));
			/* the documented size always suffices, one octet less may not */
			char small[256];
			assert_int_equal(imap_caps_rewrite(p, n, t[i].ops, small, n + 32, &olen),
					 1);
			assert_int_equal(imap_caps_rewrite(p, n, t[i].ops, small, olen, &olen),
					 -ENOSPC);
		}
	}
}

/* Rewriting is bounded by the line and never grows it by more than 32 octets, on the
 * longest list a line can hold. */
static void test_caps_rewrite_bound(void **state)
{
	(void)state;
	char line[IMAP_LINE_MAX];
	size_t n = (size_t)snprintf(line, sizeof(line), "* CAPABILITY");
	while (n + 8 < sizeof(line) - 2)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " AUTH=X%c", 'a' + (int)(n % 26));
	static char out[IMAP_LINE_MAX + 32];
	size_t olen;
	assert_int_equal(imap_caps_rewrite((const uint8_t *)line, n,
					   IMAP_CAPS_ADD_STARTTLS | IMAP_CAPS_LOGINDISABLED, out,
					   sizeof(out), &olen),
			 1);
	assert_string_equal(out, "* CAPABILITY STARTTLS LOGINDISABLED");
	assert_int_equal(imap_caps_rewrite((const uint8_t *)line, n, IMAP_CAPS_ADD_STARTTLS,
					   out, sizeof(out), &olen),
			 1);
	assert_int_equal(olen, n + strlen(" STARTTLS"));
}

/* ------------------------------------------------------------------ the module */

/* A script step: what happens, and what the module must answer. In expectations the tag
 * of the module's own commands (random) is written "@", and inputs may use "@" for it. */
enum op { UP, CLI, UPS, TLS_C, TLS_U, EOFC, FAIL };
struct step {
	enum op op;
	const char *in;
	const char *to_client, *to_up; /* exact, after tag substitution */
	const char *acts;              /* "tls:client", "tls:up", "ready", "close" in order */
};

struct mod_params {
	enum cfg_tls ctls, utls;
	enum cfg_policy cpol, upol;
	enum cfg_mode mode;
};

struct mrun {
	void *st;
	char tag[32];
	struct sbuf cl, up, acts;
};

static void collect(struct mrun *m, struct proto_actions *a)
{
	for (size_t i = 0; i < a->n; i++) {
		const struct proto_act *x = &a->a[i];
		switch (x->type) {
		case PA_SEND:
			sb_add(x->side == PROTO_CLIENT ? &m->cl : &m->up, a->buf + x->off, x->len);
			if (x->side == PROTO_UPSTREAM && x->len > 17 && a->buf[x->off] == 'P' &&
			    a->buf[x->off + 17] == ' ') {
				memcpy(m->tag, a->buf + x->off, 17);
				m->tag[17] = '\0';
			}
			break;
		case PA_STARTTLS:
			sb_adds(&m->acts, x->side == PROTO_CLIENT ? "tls:client " : "tls:up ");
			break;
		case PA_READY:
			sb_adds(&m->acts, "ready ");
			break;
		case PA_CLOSE:
			sb_adds(&m->acts, "close ");
			break;
		case PA_POLICY:
			sb_adds(&m->acts, "policy ");
			break;
		default:
			break;
		}
	}
	proto_actions_clear(a);
}

/* s with the module's tag written "@" (or "@" replaced by the tag when fill). */
static char *subst(const char *s, size_t n, const char *tag, int fill)
{
	struct sbuf o = { 0 };
	size_t tl = strlen(tag);
	sb_adds(&o, "");
	for (size_t i = 0; i < n;) {
		if (fill && s[i] == '@') {
			sb_adds(&o, tag);
			i++;
		} else if (!fill && tl && n - i >= tl && memcmp(s + i, tag, tl) == 0) {
			sb_adds(&o, "@");
			i += tl;
		} else {
			sb_add(&o, s + i, 1);
			i++;
		}
	}
	return o.p;
}

/* One script, its inputs fed whole (split 0), a byte at a time (split -1), or cut in two
 * at offset split (an input no longer than that goes whole). */
static void run_script(const struct mod_params *mp, const struct step *steps, size_t n,
		       int split)
{
	int bytewise = split < 0;
	struct proto_params p = { .session_id = "t", .route = "r", .protocol = CFG_PROTO_IMAP,
				  .client_tls = mp->ctls, .upstream_tls = mp->utls,
				  .client_policy = mp->cpol, .upstream_policy = mp->upol,
				  .policy_mode = mp->mode };
	const struct proto_ops *ops = proto_lookup(CFG_PROTO_IMAP);
	assert_non_null(ops);
	struct mrun m;
	memset(&m, 0, sizeof(m));
	m.st = ops->create(&p);
	assert_non_null(m.st);
	struct proto_actions a = { 0 };
	for (size_t i = 0; i < n; i++) {
		const struct step *t = &steps[i];
		char *in = t->in ? subst(t->in, strlen(t->in), m.tag, 1) : NULL;
		size_t len = in ? strlen(in) : 0;
		switch (t->op) {
		case UP: ops->upstream_connected(m.st, &a); break;
		case CLI:
		case UPS:
			if (bytewise)
				for (size_t k = 0; k < len; k++) {
					ops->data(m.st, t->op == CLI ? PROTO_CLIENT : PROTO_UPSTREAM,
						  (const uint8_t *)in + k, 1, &a);
					collect(&m, &a);
				}
			else if (split > 0 && (size_t)split < len) {
				ops->data(m.st, t->op == CLI ? PROTO_CLIENT : PROTO_UPSTREAM,
					  (const uint8_t *)in, (size_t)split, &a);
				collect(&m, &a);
				ops->data(m.st, t->op == CLI ? PROTO_CLIENT : PROTO_UPSTREAM,
					  (const uint8_t *)in + split, len - (size_t)split, &a);
			} else
				ops->data(m.st, t->op == CLI ? PROTO_CLIENT : PROTO_UPSTREAM,
					  (const uint8_t *)in, len, &a);
			break;
		case TLS_C: ops->tls_done(m.st, PROTO_CLIENT, &a); break;
		case TLS_U: ops->tls_done(m.st, PROTO_UPSTREAM, &a); break;
		case EOFC: ops->client_eof(m.st, &a); break;
		case FAIL: (ops->fail)(m.st, PF_LOST, NULL, &a); break;
		}
		collect(&m, &a);
		free(in);
		char *cl = subst(m.cl.p ? m.cl.p : "", m.cl.n, m.tag, 0);
		char *up = subst(m.up.p ? m.up.p : "", m.up.n, m.tag, 0);
		const char *acts = m.acts.p ? m.acts.p : "";
		if (strcmp(cl, t->to_client) || strcmp(up, t->to_up) || strcmp(acts, t->acts)) {
			struct sbuf e = { 0 };
			sb_adds(&e, "");
			sb_esc(&e, (const uint8_t *)cl, strlen(cl));
			sb_adds(&e, "] up [");
			sb_esc(&e, (const uint8_t *)up, strlen(up));
			print_message("step %zu (%s, split %d): client [%s] acts [%s]\n", i,
				      bytewise ? "bytewise" : split ? "cut" : "whole", split, e.p,
				      acts);
			free(e.p);
		}
		assert_string_equal(cl, t->to_client);
		assert_string_equal(up, t->to_up);
		assert_string_equal(acts, t->acts);
		free(cl);
		free(up);
		m.cl.n = m.up.n = m.acts.n = 0;
		if (m.cl.p) m.cl.p[0] = '\0';
		if (m.up.p) m.up.p[0] = '\0';
		if (m.acts.p) m.acts.p[0] = '\0';
	}
	ops->destroy(m.st);
	proto_actions_free(&a);
	free(m.cl.p);
	free(m.up.p);
	free(m.acts.p);
}

/* Every script runs with its inputs whole, byte by byte, and cut in two at every offset. */
static void run_all(const struct mod_params *mp, const struct step *steps, size_t n)
{
	size_t longest = 0;
	for (size_t i = 0; i < n; i++)
		if (steps[i].in && strlen(steps[i].in) > longest)
			longest = strlen(steps[i].in);
	run_script(mp, steps, n, 0);
	run_script(mp, steps, n, -1);
	for (size_t c = 1; c < longest; c++)
		run_script(mp, steps, n, (int)c);
}

#define RUN(mp, steps) run_all(mp, steps, sizeof(steps) / sizeof(steps[0]))

#define GREET_CAPS "* OK [CAPABILITY IMAP4rev1 LITERAL+ STARTTLS AUTH=PLAIN] ready\r\n"

/* Injection: STARTTLS with the module's random tag; untagged responses before its OK and
 * bytes after it dropped; inside TLS CAPABILITY asked again and the client greeted with it
 * (STARTTLS removed). */
static void test_inject(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_POLICY_NONE,
				 CFG_POLICY_ENCRYPT, CFG_MODE_ENFORCE };
	static const struct step s[] = {
		{ UP, NULL, "", "", "" },
		{ CLI, "A1 LOGIN a b\r\n", "", "", "" },
		{ UPS, GREET_CAPS, "", "@ STARTTLS\r\n", "" },
		{ UPS, "* OK [ALERT] fake\r\n@ OK go\r\nA1 OK [CAPABILITY IMAP4rev1] injected\r\n",
		  "", "", "tls:up " },
		{ TLS_U, NULL, "", "@ CAPABILITY\r\n", "" },
		{ UPS, "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN COMPRESS=DEFLATE\r\n@ OK done\r\n",
		  "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Server ready\r\n", "A1 LOGIN a b\r\n",
		  "ready " },
		{ UPS, "A1 OK [CAPABILITY IMAP4rev1 IDLE STARTTLS] Logged in\r\n",
		  "A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n", "", "" },
		{ CLI, "A2 CAPABILITY\r\n", "", "A2 CAPABILITY\r\n", "" },
		{ UPS, "* CAPABILITY IMAP4rev1 STARTTLS\r\nA2 OK done\r\n",
		  "* CAPABILITY IMAP4rev1\r\nA2 OK done\r\n", "", "" },
		{ CLI, "A3 LOGOUT\r\n", "", "A3 LOGOUT\r\n", "" },
		{ UPS, "* BYE bye\r\nA3 OK bye\r\n", "* BYE bye\r\nA3 OK bye\r\n", "", "" },
		{ EOFC, NULL, "", "", "close " },
	};
	RUN(&mp, s);
	/* greeting without capabilities: CAPABILITY asked first */
	static const struct step s2[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK hi\r\n", "", "@ CAPABILITY\r\n", "" },
		{ UPS, "* CAPABILITY IMAP4rev1 STARTTLS\r\n* 1 EXISTS\r\n@ OK done\r\n", "",
		  "@ STARTTLS\r\n", "" },
		{ UPS, "@ OK go\r\n", "", "", "tls:up " },
	};
	RUN(&mp, s2);
}

/* Policy failures under encrypt: no STARTTLS, a refused STARTTLS, PREAUTH, BYE. */
static void test_inject_failures(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_POLICY_NONE,
				 CFG_POLICY_ENCRYPT, CFG_MODE_ENFORCE };
	static const char bye[] = "* BYE [UNAVAILABLE] TLS is required toward the upstream "
				  "server and it does not offer STARTTLS; try again later\r\n";
	static const struct step nostls[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n", bye, "", "policy close " },
	};
	RUN(&mp, nostls);
	static const struct step refused[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, GREET_CAPS, "", "@ STARTTLS\r\n", "" },
		{ UPS, "@ NO not now\r\n", bye, "", "policy close " },
	};
	RUN(&mp, refused);
	static const struct step preauth[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n", bye, "",
		  "policy close " },
	};
	RUN(&mp, preauth);
	static const struct step byeg[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* BYE go away\r\n",
		  "* BYE [UNAVAILABLE] Upstream server refused service; try again later\r\n", "",
		  "close " },
	};
	RUN(&mp, byeg);
	/* a response with another tag than the module's: never taken for its OK */
	static const struct step wrongtag[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, GREET_CAPS, "", "@ STARTTLS\r\n", "" },
		{ UPS, "A1 OK go\r\n", "* BYE [UNAVAILABLE] Upstream protocol error\r\n", "",
		  "close " },
	};
	RUN(&mp, wrongtag);
	/* may: plaintext goes on */
	struct mod_params may = mp;
	may.upol = CFG_POLICY_MAY;
	static const struct step mays[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n",
		  "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n", "", "ready " },
	};
	RUN(&may, mays);
}

/* A PREAUTH greeting under client_policy = encrypt (client STARTTLS): the client would be
 * authenticated without TLS, so the module closes on every upstream path: plain, implicit
 * TLS, and injecting STARTTLS that a may or testing upstream policy lets go on in plaintext
 * when PREAUTH rules the upgrade out (found by fuzz_imap_session: the injecting path
 * relayed the greeting and then the client's COMPRESS). Under client_policy = may the
 * greeting is relayed. */
static void test_preauth_client_encrypt(void **state)
{
	(void)state;
	static const char bye[] =
		"* BYE [UNAVAILABLE] Upstream server greeted PREAUTH, TLS is required\r\n";
	static const struct step closes[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* PREAUTH [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] hi\r\n", bye, "",
		  "close " },
		{ CLI, "A1 COMPRESS DEFLATE\r\n", "", "", "" },
	};
	static const struct step policy_closes[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* PREAUTH [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] hi\r\n", bye, "",
		  "policy close " },
		{ CLI, "A1 COMPRESS DEFLATE\r\n", "", "", "" },
	};
	const struct {
		enum cfg_tls utls;
		enum cfg_policy upol;
		enum cfg_mode mode;
		int policy; /* the injection's failure is reported first */
	} t[] = {
		{ CFG_TLS_NONE, CFG_POLICY_NONE, CFG_MODE_ENFORCE, 0 },
		{ CFG_TLS_IMPLICIT, CFG_POLICY_VERIFY, CFG_MODE_ENFORCE, 0 },
		{ CFG_TLS_STARTTLS, CFG_POLICY_MAY, CFG_MODE_ENFORCE, 0 },
		{ CFG_TLS_STARTTLS, CFG_POLICY_VERIFY, CFG_MODE_TESTING, 1 },
		{ CFG_TLS_STARTTLS, CFG_POLICY_ENCRYPT, CFG_MODE_TESTING, 1 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct mod_params mp = { CFG_TLS_STARTTLS, t[i].utls, CFG_POLICY_ENCRYPT, t[i].upol,
					 t[i].mode };
		if (t[i].policy)
			RUN(&mp, policy_closes);
		else
			RUN(&mp, closes);
	}
	struct mod_params may = { CFG_TLS_STARTTLS, CFG_TLS_STARTTLS, CFG_POLICY_MAY,
				  CFG_POLICY_MAY, CFG_MODE_ENFORCE };
	static const struct step relayed[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
		  "* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n", "", "ready " },
		{ CLI, "A1 STARTTLS\r\n", "A1 BAD STARTTLS not permitted after authentication\r\n",
		  "", "" },
	};
	RUN(&may, relayed);
}

/* A response whose first segment announces a literal has its capability list rewritten like
 * any other: STARTTLS and LOGINDISABLED added before the client's TLS (client_policy =
 * encrypt), STARTTLS removed inside it; the literal passes as it is. A capability list
 * that runs into a literal (untagged CAPABILITY) ends the session: capabilities are atoms.
 * (Found by fuzz_imap_session: such a segment was relayed unrewritten, STARTTLS offered
 * inside the client's TLS.) */
static void test_caps_before_literal(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_STARTTLS, CFG_TLS_NONE, CFG_POLICY_ENCRYPT,
				 CFG_POLICY_NONE, CFG_MODE_ENFORCE };
	static const struct step s[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK hi\r\n", "* OK hi\r\n", "", "ready " },
		{ UPS, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] x {3}\r\nabc\r\n",
		  "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] x {3}\r\nabc\r\n", "", "" },
		{ CLI, "A1 STARTTLS\r\n", "A1 OK Begin TLS negotiation now\r\n", "", "tls:client " },
		{ TLS_C, NULL, "", "", "" },
		{ UPS, "* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] x {3+}\r\nabc\r\n",
		  "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] x {3+}\r\nabc\r\n", "", "" },
		/* literal data that reads like a capability list is data */
		{ UPS, "* 1 FETCH (BODY[] {24}\r\n* CAPABILITY STARTTLS\r\n)\r\n",
		  "* 1 FETCH (BODY[] {24}\r\n* CAPABILITY STARTTLS\r\n)\r\n", "", "" },
		{ UPS, "* CAPABILITY IMAP4rev1 STARTTLS {3}\r\nabc\r\n",
		  "* BYE [UNAVAILABLE] Upstream protocol error\r\n", "", "close " },
	};
	RUN(&mp, s);
}

/* A command that arrives while an upstream response is open (inside its literal) waits
 * for the response's end: a local answer (LOGIN refused, STARTTLS) never lands inside the
 * literal's data, and commands that go up keep their order. */
static void test_command_waits_for_open_response(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_STARTTLS, CFG_TLS_NONE, CFG_POLICY_ENCRYPT,
				 CFG_POLICY_NONE, CFG_MODE_ENFORCE };
	static const struct step s[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK hi\r\n", "* OK hi\r\n", "", "ready " },
		{ UPS, "* 1 FETCH (BODY[] {10}\r\nabc", "* 1 FETCH (BODY[] {10}\r\nabc", "", "" },
		{ CLI, "A1 LOGIN a b\r\nA2 NOOP\r\n", "", "", "" },
		{ UPS, "defg", "defg", "", "" },
		{ UPS, "hij)\r\n",
		  "hij)\r\nA1 NO [PRIVACYREQUIRED] Must issue a STARTTLS command first\r\n",
		  "A2 NOOP\r\n", "" },
		{ UPS, "A2 OK done\r\n", "A2 OK done\r\n", "", "" },
		{ UPS, "* 2 FETCH (BODY[] {3}\r\nxyz", "* 2 FETCH (BODY[] {3}\r\nxyz", "", "" },
		{ CLI, "A3 STARTTLS\r\n", "", "", "" },
		{ UPS, ")\r\n", ")\r\nA3 OK Begin TLS negotiation now\r\n", "", "tls:client " },
	};
	RUN(&mp, s);
}

/* Termination: STARTTLS offered and answered locally, pipelined bytes after it dropped, what
 * the upstream says during the client's handshake held until it ends;
 * under client_policy = encrypt LOGINDISABLED and no AUTH= before TLS, LOGIN refused
 * locally; inside TLS the list is shown without STARTTLS and LOGIN goes up. */
static void test_terminate(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_STARTTLS, CFG_TLS_NONE, CFG_POLICY_ENCRYPT,
				 CFG_POLICY_NONE, CFG_MODE_ENFORCE };
	static const struct step s[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN COMPRESS=DEFLATE] hi\r\n",
		  "* OK [CAPABILITY IMAP4rev1 LITERAL+ STARTTLS LOGINDISABLED] hi\r\n", "",
		  "ready " },
		{ CLI, "A1 LOGIN a b\r\n",
		  "A1 NO [PRIVACYREQUIRED] Must issue a STARTTLS command first\r\n", "", "" },
		{ CLI, "A2 AUTHENTICATE PLAIN\r\n",
		  "A2 NO [PRIVACYREQUIRED] Must issue a STARTTLS command first\r\n", "", "" },
		{ CLI, "A3 CAPABILITY\r\n", "", "A3 CAPABILITY\r\n", "" },
		{ UPS, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nA3 OK done\r\n",
		  "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\nA3 OK done\r\n", "", "" },
		{ CLI, "A4 COMPRESS DEFLATE\r\n",
		  "A4 BAD COMPRESS is permitted only after login\r\n", "", "" },
		/* the rest of a command answered locally never goes up */
		{ CLI, "B1 COMPRESS {23+}\r\nB2 LOGIN alice secret\r\n\r\n",
		  "B1 BAD COMPRESS is permitted only after login\r\n", "", "" },
		{ CLI, "B3 LOGIN {5}\r\n",
		  "B3 NO [PRIVACYREQUIRED] Must issue a STARTTLS command first\r\n", "", "" },
		{ CLI, "B4 NOOP\r\n", "", "B4 NOOP\r\n", "" },
		{ UPS, "B4 OK done\r\n", "B4 OK done\r\n", "", "" },
		{ CLI, "B5 STARTTLS {3}\r\n", "B5 BAD Unexpected arguments\r\n", "", "" },
		{ CLI, "B6 COMPRESS {2+}\r\nx {1}\r\n", "B6 BAD COMPRESS is permitted only after login\r\n", "", "" },
		{ CLI, "A5 STARTTLS\r\nA6 LOGIN a b\r\n", "A5 OK Begin TLS negotiation now\r\n", "",
		  "tls:client " },
		/* the upstream's words during the client's handshake wait for its end */
		{ UPS, "* OK [ALERT] meanwhile\r\n", "", "", "" },
		{ TLS_C, NULL, "* OK [ALERT] meanwhile\r\n", "", "" },
		{ CLI, "A7 CAPABILITY\r\n", "", "A7 CAPABILITY\r\n", "" },
		{ UPS, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nA7 OK done\r\n",
		  "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nA7 OK done\r\n", "", "" },
		{ CLI, "A8 STARTTLS\r\n", "A8 BAD TLS already active\r\n", "", "" },
		{ CLI, "A9 LOGIN a b\r\n", "", "A9 LOGIN a b\r\n", "" },
		{ UPS, "A9 OK done\r\n", "A9 OK done\r\n", "", "" },
	};
	RUN(&mp, s);
}

/* Literals: a STARTTLS inside an APPENDed message is data (synchronizing and LITERAL+); a
 * refused synchronizing literal; a FETCH literal holding a fake tagged OK; IDLE and
 * AUTHENTICATE continuation lines go up as they are. */
static void test_literals(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_STARTTLS, CFG_TLS_NONE, CFG_POLICY_NONE,
				 CFG_POLICY_NONE, CFG_MODE_ENFORCE };
	static const struct step s[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK hi\r\n", "* OK hi\r\n", "", "ready " },
		{ CLI, "A1 APPEND INBOX {13}\r\n", "", "A1 APPEND INBOX {13}\r\n", "" },
		{ UPS, "+ go\r\n", "+ go\r\n", "", "" },
		{ CLI, "A2 STARTTLS\r\n\r\n", "", "A2 STARTTLS\r\n\r\n", "" },
		{ UPS, "A1 OK appended\r\n", "A1 OK appended\r\n", "", "" },
		{ CLI, "B1 APPEND INBOX {13+}\r\nB2 STARTTLS\r\n\r\n", "",
		  "B1 APPEND INBOX {13+}\r\nB2 STARTTLS\r\n\r\n", "" },
		{ UPS, "B1 OK appended\r\n", "B1 OK appended\r\n", "", "" },
		{ CLI, "C1 APPEND INBOX {999}\r\n", "", "C1 APPEND INBOX {999}\r\n", "" },
		{ UPS, "C1 NO [OVERQUOTA] no\r\n", "C1 NO [OVERQUOTA] no\r\n", "", "" },
		{ CLI, "C2 FETCH 1 BODY[]\r\n", "", "C2 FETCH 1 BODY[]\r\n", "" },
		{ UPS, "* 1 FETCH (BODY[] {12}\r\nC2 OK done\r\n)\r\nC2 OK fetched\r\n",
		  "* 1 FETCH (BODY[] {12}\r\nC2 OK done\r\n)\r\nC2 OK fetched\r\n", "", "" },
		{ CLI, "D1 IDLE\r\n", "", "D1 IDLE\r\n", "" },
		{ UPS, "+ idling\r\n* 2 EXISTS\r\n", "+ idling\r\n* 2 EXISTS\r\n", "", "" },
		{ CLI, "DONE\r\n", "", "DONE\r\n", "" },
		{ UPS, "D1 OK idle done\r\n", "D1 OK idle done\r\n", "", "" },
		{ CLI, "E1 AUTHENTICATE PLAIN\r\n", "", "E1 AUTHENTICATE PLAIN\r\n", "" },
		{ UPS, "+ \r\n", "+ \r\n", "", "" },
		{ CLI, "AGEAYg==\r\n", "", "AGEAYg==\r\n", "" },
		{ UPS, "E1 OK [CAPABILITY IMAP4rev1 STARTTLS] in\r\n",
		  "E1 OK [CAPABILITY IMAP4rev1] in\r\n", "", "" },
		{ CLI, "F1 STARTTLS\r\n", "F1 BAD STARTTLS not permitted after authentication\r\n",
		  "", "" },
	};
	RUN(&mp, s);
}

/* Bounds and refusals: an oversized line and literal end the session with BYE; a
 * malformed command gets BAD; refusals are BYE; idle only between commands. */
static void test_bounds_refuse_idle(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_NONE, CFG_TLS_NONE, CFG_POLICY_NONE, CFG_POLICY_NONE,
				 CFG_MODE_ENFORCE };
	static char longline[IMAP_LINE_MAX + 16];
	memset(longline, 'a', sizeof(longline) - 3);
	memcpy(longline, "A1 NOOP ", 8);
	memcpy(longline + sizeof(longline) - 3, "\r\n", 3);
	const struct step s[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK hi\r\n", "* OK hi\r\n", "", "ready " },
		{ CLI, "+bad\r\n", "* BAD Malformed command\r\n", "", "" },
		{ CLI, longline, "* BYE [TOOBIG] Line too long, closing connection\r\n", "",
		  "close " },
	};
	RUN(&mp, s);
	static const struct step s2[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK hi\r\n", "* OK hi\r\n", "", "ready " },
		{ CLI, "A1 APPEND INBOX {99999999999}\r\n",
		  "* BYE [TOOBIG] Literal too large, closing connection\r\n", "", "close " },
	};
	RUN(&mp, s2);
	static const struct step s3[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK hi\r\n", "* OK hi\r\n", "", "ready " },
		{ CLI, "A1 NOOP\r\n", "", "A1 NOOP\r\n", "" },
		{ FAIL, NULL, "* BYE [UNAVAILABLE] Upstream connection lost\r\n", "", "close " },
	};
	RUN(&mp, s3);

	struct proto_params p = { .session_id = "t", .route = "r", .protocol = CFG_PROTO_IMAP };
	const struct proto_ops *ops = proto_lookup(CFG_PROTO_IMAP);
	struct proto_actions a = { 0 };
	ops->refuse(&p, PR_NOT_ALLOWED, &a);
	assert_int_equal(a.n, 2);
	assert_memory_equal(a.buf + a.a[0].off, "* BYE Access denied\r\n", a.a[0].len);
	assert_int_equal(a.a[1].type, PA_CLOSE);
	proto_actions_clear(&a);
	ops->refuse(&p, PR_LIMIT, &a);
	assert_memory_equal(a.buf + a.a[0].off, "* BYE [UNAVAILABLE]", 19);
	proto_actions_clear(&a);

	void *st = ops->create(&p);
	assert_int_equal(ops->idle(st), 0);
	ops->upstream_connected(st, &a);
	ops->data(st, PROTO_UPSTREAM, (const uint8_t *)"* OK hi\r\n", 9, &a);
	assert_int_equal(ops->idle(st), 1);
	ops->data(st, PROTO_CLIENT, (const uint8_t *)"A1 NOOP\r\n", 9, &a);
	assert_int_equal(ops->idle(st), 0);
	ops->data(st, PROTO_UPSTREAM, (const uint8_t *)"A1 OK\r\n", 7, &a);
	assert_int_equal(ops->idle(st), 1);
	ops->destroy(st);
	proto_actions_free(&a);
}

/* Appends prefix, 'x' octets and suffix so that exactly total octets are added. */
static void sb_fill(struct sbuf *b, const char *prefix, size_t total, const char *suffix)
{
	size_t start = b->n;
	sb_adds(b, prefix);
	while (b->n - start + strlen(suffix) < total)
		sb_adds(b, "x");
	sb_adds(b, suffix);
	assert_int_equal(b->n - start, total);
}

#define BYE_LINE "* BYE [TOOBIG] Line too long, closing connection\r\n"
#define BYE_LITERAL "* BYE [TOOBIG] Literal too large, closing connection\r\n"
#define BYE_PIPELINE "* BYE [UNAVAILABLE] Too much pipelined input, closing connection\r\n"
#define BYE_UPSTREAM "* BYE [UNAVAILABLE] Upstream protocol error\r\n"

/* Every bound of docs/limits.md's IMAP table, exactly at its value (accepted) and one octet
 * beyond it (refused as documented). Inputs are fed whole and byte by byte (bytewise is
 * left out for the megabyte response line: the reader looks for its LF in all it holds). */
static void test_bounds_edge(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_NONE, CFG_TLS_NONE, CFG_POLICY_NONE, CFG_POLICY_NONE,
				 CFG_MODE_ENFORCE };
	struct sbuf cmd_at = { 0 }, cmd_over = { 0 }, resp_at = { 0 }, resp_over = { 0 };
	struct sbuf hold_at = { 0 }, first_held = { 0 };
	sb_fill(&cmd_at, "A1 NOOP ", IMAP_LINE_MAX, "\r\n");
	sb_fill(&cmd_over, "A1 NOOP ", IMAP_LINE_MAX + 1, "\r\n");
	sb_fill(&resp_at, "* OK ", IMAP_RESP_LINE_MAX, "\r\n");
	sb_fill(&resp_over, "* OK ", IMAP_RESP_LINE_MAX + 1, "\r\n");
	/* held behind a command in flight: IMAP_HOLD_MAX + IMAP_LINE_MAX octets of commands */
	sb_fill(&first_held, "A2 NOOP ", 4096, "\r\n");
	for (int i = 0; i < (IMAP_HOLD_MAX + IMAP_LINE_MAX) / 4096; i++)
		sb_adds(&hold_at, first_held.p);
	assert_int_equal(hold_at.n, IMAP_HOLD_MAX + IMAP_LINE_MAX);
	char lit_at[64], lit_over[64], litp_at[64], litp_over[64];
	snprintf(lit_at, sizeof(lit_at), "A1 APPEND INBOX {%llu}\r\n",
		 (unsigned long long)IMAP_LITERAL_MAX);
	snprintf(lit_over, sizeof(lit_over), "A1 APPEND INBOX {%llu}\r\n",
		 (unsigned long long)IMAP_LITERAL_MAX + 1);
	snprintf(litp_at, sizeof(litp_at), "A1 APPEND INBOX {%llu+}\r\n",
		 (unsigned long long)IMAP_LITERAL_MAX);
	snprintf(litp_over, sizeof(litp_over), "A1 APPEND INBOX {%llu+}\r\n",
		 (unsigned long long)IMAP_LITERAL_MAX + 1);
#define OPEN { UP, NULL, "", "", "" }, { UPS, "* OK hi\r\n", "* OK hi\r\n", "", "ready " }
	const struct step s_cmd_at[] = { OPEN, { CLI, cmd_at.p, "", cmd_at.p, "" } };
	const struct step s_cmd_over[] = { OPEN, { CLI, cmd_over.p, BYE_LINE, "", "close " } };
	const struct step s_lit_at[] = {
		OPEN,
		{ CLI, lit_at, "", lit_at, "" },
		{ UPS, "+ go ahead\r\n", "+ go ahead\r\n", "", "" },
		{ CLI, "abc", "", "abc", "" },
	};
	const struct step s_lit_over[] = { OPEN, { CLI, lit_over, BYE_LITERAL, "", "close " } };
	const struct step s_litp_at[] = {
		OPEN,
		{ CLI, litp_at, "", litp_at, "" },
		{ CLI, "abc", "", "abc", "" },
	};
	const struct step s_litp_over[] = { OPEN, { CLI, litp_over, BYE_LITERAL, "", "close " } };
	const struct step s_hold_at[] = {
		OPEN,
		{ CLI, "A1 NOOP\r\n", "", "A1 NOOP\r\n", "" },
		{ CLI, hold_at.p, "", "", "" },
		{ UPS, "A1 OK done\r\n", "A1 OK done\r\n", first_held.p, "" },
	};
	const struct step s_hold_over[] = {
		OPEN,
		{ CLI, "A1 NOOP\r\n", "", "A1 NOOP\r\n", "" },
		{ CLI, hold_at.p, "", "", "" },
		{ CLI, "A", BYE_PIPELINE, "", "close " },
	};
	const struct step s_resp_at[] = { OPEN, { UPS, resp_at.p, resp_at.p, "", "" } };
	const struct step s_resp_over[] = { OPEN, { UPS, resp_over.p, BYE_UPSTREAM, "", "close " } };
#undef OPEN
	/* the upstream's octets held during the client's TLS handshake: as many as the
	 * client's held input (relayed when the handshake is done), one more ends it */
	struct mod_params mt = { CFG_TLS_STARTTLS, CFG_TLS_NONE, CFG_POLICY_ENCRYPT,
				 CFG_POLICY_NONE, CFG_MODE_ENFORCE };
	struct sbuf up_held = { 0 }, up_line = { 0 };
	sb_fill(&up_line, "* OK ", 4096, "\r\n");
	for (int i = 0; i < (IMAP_HOLD_MAX + IMAP_LINE_MAX) / 4096; i++)
		sb_adds(&up_held, up_line.p);
#define TOPEN                                                                               \
	{ UP, NULL, "", "", "" },                                                           \
	{ UPS, "* OK [CAPABILITY IMAP4rev1] hi\r\n",                                        \
	  "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi\r\n", "", "ready " },       \
	{ CLI, "A5 STARTTLS\r\n", "A5 OK Begin TLS negotiation now\r\n", "", "tls:client " }
	const struct step s_tls_at[] = {
		TOPEN,
		{ UPS, up_held.p, "", "", "" },
		{ TLS_C, NULL, up_held.p, "", "" },
	};
	const struct step s_tls_over[] = {
		TOPEN,
		{ UPS, up_held.p, "", "", "" },
		/* (the session holds what is written to the client until its handshake is done) */
		{ UPS, "*", BYE_UPSTREAM, "", "close " },
	};
#undef TOPEN
	static const int bothways[] = { 0, -1 };
#define EDGE(steps, nsplits)                                                                \
	for (size_t k = 0; k < (nsplits); k++)                                              \
		run_script(&mp, steps, sizeof(steps) / sizeof(steps[0]), bothways[k])
	EDGE(s_cmd_at, 2);
	EDGE(s_cmd_over, 2);
	EDGE(s_lit_at, 2);
	EDGE(s_lit_over, 2);
	EDGE(s_litp_at, 2);
	EDGE(s_litp_over, 2);
	EDGE(s_hold_at, 2);
	EDGE(s_hold_over, 2);
	for (int k = 0; k < 2; k++) {
		run_script(&mt, s_tls_at, sizeof(s_tls_at) / sizeof(s_tls_at[0]), bothways[k]);
		run_script(&mt, s_tls_over, sizeof(s_tls_over) / sizeof(s_tls_over[0]), bothways[k]);
	}
	EDGE(s_resp_at, 1);
	EDGE(s_resp_over, 1);
	/* and cut where the reader decides: before the LF, and at the bound */
	run_script(&mp, s_resp_at, sizeof(s_resp_at) / sizeof(s_resp_at[0]),
		   IMAP_RESP_LINE_MAX - 1);
	run_script(&mp, s_resp_over, sizeof(s_resp_over) / sizeof(s_resp_over[0]),
		   IMAP_RESP_LINE_MAX);
#undef EDGE
	free(cmd_at.p);
	free(cmd_over.p);
	free(resp_at.p);
	free(resp_over.p);
	free(hold_at.p);
	free(first_held.p);
	free(up_held.p);
	free(up_line.p);
}

/* COMPRESS (RFC 4978): answered BAD before a login; after one, COMPRESS= is shown and the
 * command goes up; a NO changes nothing; after the upstream's OK both directions are relayed
 * as they are (client bytes held behind the command included, and a STARTTLS in the
 * compressed stream is not looked at); a failure then closes without a plaintext BYE. */
static void test_compress(void **state)
{
	(void)state;
	struct mod_params mp = { CFG_TLS_STARTTLS, CFG_TLS_NONE, CFG_POLICY_MAY, CFG_POLICY_NONE,
				 CFG_MODE_ENFORCE };
	static const struct step s[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] hi\r\n",
		  "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n", "", "ready " },
		{ CLI, "A1 STARTTLS\r\n", "A1 OK Begin TLS negotiation now\r\n", "", "tls:client " },
		{ TLS_C, NULL, "", "", "" },
		{ CLI, "A2 COMPRESS DEFLATE\r\n", "A2 BAD COMPRESS is permitted only after login\r\n",
		  "", "" },
		{ CLI, "A3 LOGIN a b\r\n", "", "A3 LOGIN a b\r\n", "" },
		{ UPS, "A3 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] in\r\n",
		  "A3 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] in\r\n", "", "" },
		{ CLI, "A4 COMPRESS {7}\r\n", "A4 BAD Unexpected literal\r\n", "", "" },
		{ CLI, "A5 COMPRESS DEFLATE\r\n", "", "A5 COMPRESS DEFLATE\r\n", "" },
		{ UPS, "A5 NO [COMPRESSIONACTIVE] no\r\n", "A5 NO [COMPRESSIONACTIVE] no\r\n", "",
		  "" },
		{ CLI, "A6 COMPRESS DEFLATE\r\n\x03\x04", "", "A6 COMPRESS DEFLATE\r\n", "" },
		{ UPS, "A6 OK DEFLATE active\r\n\x01\xff\r\nA7 OK [CAPABILITY STARTTLS] x\r\n",
		  "A6 OK DEFLATE active\r\n\x01\xff\r\nA7 OK [CAPABILITY STARTTLS] x\r\n",
		  "\x03\x04", "" },
		{ CLI, "\x02\xfe A9 STARTTLS\r\nA8 LOGIN {99999999999}\r\n", "",
		  "\x02\xfe A9 STARTTLS\r\nA8 LOGIN {99999999999}\r\n", "" },
		{ FAIL, NULL, "", "", "close " },
	};
	RUN(&mp, s);
	static const struct step s2[] = {
		{ UP, NULL, "", "", "" },
		{ UPS, "* PREAUTH hi\r\n", "* PREAUTH hi\r\n", "", "ready " },
		{ CLI, "A1 COMPRESS DEFLATE\r\n", "", "A1 COMPRESS DEFLATE\r\n", "" },
		{ UPS, "A1 OK on\r\n", "A1 OK on\r\n", "", "" },
		{ UPS, "\x05", "\x05", "", "" },
		{ EOFC, NULL, "", "", "close " },
	};
	RUN(&mp, s2);

	/* idle: never once compressed (the module cannot tell, and could not say BYE) */
	struct proto_params p = { .session_id = "t", .route = "r", .protocol = CFG_PROTO_IMAP };
	const struct proto_ops *ops = proto_lookup(CFG_PROTO_IMAP);
	struct proto_actions a = { 0 };
	void *st = ops->create(&p);
	ops->upstream_connected(st, &a);
	ops->data(st, PROTO_UPSTREAM, (const uint8_t *)"* PREAUTH hi\r\n", 14, &a);
	ops->data(st, PROTO_CLIENT, (const uint8_t *)"A1 COMPRESS DEFLATE\r\n", 21, &a);
	ops->data(st, PROTO_UPSTREAM, (const uint8_t *)"A1 OK\r\n", 7, &a);
	assert_int_equal(ops->idle(st), 0);
	ops->destroy(st);
	proto_actions_free(&a);
}

int main(void)
{
	log_setup(LOG_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reader),
		cmocka_unit_test(test_reader_cancel_discard),
		cmocka_unit_test(test_tag_verb),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_caps_find_flags),
		cmocka_unit_test(test_caps_rewrite),
		cmocka_unit_test(test_caps_rewrite_bound),
		cmocka_unit_test(test_inject),
		cmocka_unit_test(test_inject_failures),
		cmocka_unit_test(test_preauth_client_encrypt),
		cmocka_unit_test(test_caps_before_literal),
		cmocka_unit_test(test_command_waits_for_open_response),
		cmocka_unit_test(test_terminate),
		cmocka_unit_test(test_literals),
		cmocka_unit_test(test_bounds_refuse_idle),
		cmocka_unit_test(test_bounds_edge),
		cmocka_unit_test(test_compress),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
