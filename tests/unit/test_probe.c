/* test_probe.c - --probe's reply parsing (probe_parse_reply, probe.h) table by table: each
 * kind of reply complete (its code, whether STARTTLS / STLS is offered, its size and text),
 * incomplete, malformed and overlong; every complete case also fed as each of its prefixes
 * (-EAGAIN before its end) and followed by more bytes (the same answer). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"

struct rcase {
	enum probe_reply_kind kind;
	const char *in;
	int rc;
	int code, offered;
	size_t size; /* 0: strlen(in) */
	const char *text;
};

static const struct rcase cases[] = {
	/* SMTP */
	{ PROBE_SMTP, "220 mx.test ESMTP\r\n", 0, 220, 0, 0, "220 mx.test ESMTP" },
	{ PROBE_SMTP, "220\n", 0, 220, 0, 0, "220" },
	{ PROBE_SMTP, "220-mx.test\r\n220-two\r\n220 three\r\nnext", 0, 220, 0, 33,
	  "220-mx.test\n220-two\n220 three" },
	{ PROBE_SMTP, "250-mx\r\n250-PIPELINING\r\n250-starttls\r\n250 SIZE 10\r\n", 0, 250, 1, 0,
	  "250-mx\n250-PIPELINING\n250-starttls\n250 SIZE 10" },
	{ PROBE_SMTP, "250-mx\r\n250 STARTTLS\r\n", 0, 250, 1, 0, "250-mx\n250 STARTTLS" },
	{ PROBE_SMTP, "250 STARTTLS\r\n", 0, 250, 0, 0, "250 STARTTLS" }, /* the first line */
	{ PROBE_SMTP, "250-mx\r\n250-STARTTLSX\r\n250-X STARTTLS\r\n250 OK\r\n", 0, 250, 0, 0,
	  "250-mx\n250-STARTTLSX\n250-X STARTTLS\n250 OK" },
	{ PROBE_SMTP, "250-mx\r\n250-STARTTLS\r\n220 odd\r\n", 0, 220, 0, 0,
	  "250-mx\n250-STARTTLS\n220 odd" }, /* the last line's code; offered only with 250 */
	{ PROBE_SMTP, "454 4.7.0 TLS not available\r\n", 0, 454, 0, 0, "454 4.7.0 TLS not available" },
	{ PROBE_SMTP, "250\0-more\r\n", 0, 250, 0, 11, "250" }, /* a NUL ends what is looked at */
	{ PROBE_SMTP, "220-mx\r\n220-", -EAGAIN, 0, 0, 0, "220-mx" },
	{ PROBE_SMTP, "", -EAGAIN, 0, 0, 0, "" },
	{ PROBE_SMTP, "SSH-2.0-OpenSSH\r\n", -EPROTO, 0, 0, 0, "" },
	{ PROBE_SMTP, "220-ok\r\n22\r\n", -EPROTO, 0, 0, 0, "220-ok" },
	{ PROBE_SMTP, "199 low\r\n", -EPROTO, 0, 0, 0, "" },
	{ PROBE_SMTP, "600 high\r\n", -EPROTO, 0, 0, 0, "" },
	{ PROBE_SMTP, "220_x\r\n", -EPROTO, 0, 0, 0, "" },
	/* IMAP */
	{ PROBE_IMAP_GREETING, "* OK ready\r\n* more", 0, 1, 0, 12, "* OK ready" },
	{ PROBE_IMAP_GREETING, "* PREAUTH hi\n", 0, 1, 0, 0, "* PREAUTH hi" },
	{ PROBE_IMAP_GREETING, "* bye busy\r\n", 0, 0, 0, 0, "* bye busy" },
	{ PROBE_IMAP_GREETING, "+OK pop\r\n", -EPROTO, 0, 0, 0, "+OK pop" },
	{ PROBE_IMAP_GREETING, "* OK", -EAGAIN, 0, 0, 0, "" },
	{ PROBE_IMAP_CAPABILITY, "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\nP1 OK done\r\n", 0, 1,
	  1, 0, "P1 OK done" },
	{ PROBE_IMAP_CAPABILITY, "* capability  starttls\r\n* OK x\r\nP1 NO\r\n", 0, 0, 1, 0, "P1 NO" },
	{ PROBE_IMAP_CAPABILITY, "* CAPABILITY IMAP4rev1 STARTTLSX\r\np1 OK\r\nP1 OK\r\n", 0, 1, 0, 0,
	  "P1 OK" },
	{ PROBE_IMAP_CAPABILITY, "* OK [CAPABILITY STARTTLS]\r\nP1 OK\r\n", 0, 1, 0, 0, "P1 OK" },
	{ PROBE_IMAP_CAPABILITY, "* CAPABILITY STARTTLS\r\n", -EAGAIN, 0, 0, 0, NULL },
	{ PROBE_IMAP_STARTTLS, "* OK noise\r\nP2 OK go\r\n", 0, 1, 0, 0, "P2 OK go" },
	{ PROBE_IMAP_STARTTLS, "P2 ok go\r\n", 0, 1, 0, 0, "P2 ok go" },
	{ PROBE_IMAP_STARTTLS, "P2 BAD no\r\n", 0, 0, 0, 0, "P2 BAD no" },
	{ PROBE_IMAP_STARTTLS, "P1 OK old\r\n", -EAGAIN, 0, 0, 0, NULL },
	/* POP3 */
	{ PROBE_POP3_GREETING, "+OK ready\r\n", 0, 1, 0, 0, "+OK ready" },
	{ PROBE_POP3_GREETING, "-ERR busy\r\n", -EPROTO, 0, 0, 0, "-ERR busy" },
	{ PROBE_POP3_GREETING, "+ok\r\n", -EPROTO, 0, 0, 0, "+ok" },
	{ PROBE_POP3_CAPA, "+OK\r\nTOP\r\nstls\r\n.\r\n", 0, 1, 1, 0, "." },
	{ PROBE_POP3_CAPA, "+OK\r\nTOP\r\nSTLSX\r\n.\r\n", 0, 1, 0, 0, "." },
	{ PROBE_POP3_CAPA, "-ERR no CAPA\r\nSTLS\r\n.\r\n", 0, 0, 0, 14, "-ERR no CAPA" },
	{ PROBE_POP3_CAPA, "+OK\r\nSTLS\r\n", -EAGAIN, 0, 0, 0, "STLS" },
	{ PROBE_POP3_STLS, "+OK go\r\n", 0, 1, 0, 0, "+OK go" },
	{ PROBE_POP3_STLS, "-ERR no\r\n", 0, 0, 0, 0, "-ERR no" },
	{ PROBE_LINE, "anything\r\n", 0, 1, 0, 0, "anything" },
	{ PROBE_LINE, "\n", 0, 1, 0, 0, "" },
};

static void test_table(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct rcase *c = &cases[i];
		size_t len = strlen(c->in);
		if (c->kind == PROBE_SMTP && !strncmp(c->in, "250", 3) && c->in[3] == '\0')
			len = 11; /* the case with a NUL */
		size_t size = c->size ? c->size : len;
		char text[4096];
		struct probe_reply r;
		int rc = probe_parse_reply(c->kind, c->in, len, &r, text, sizeof text);
		int ok = rc == c->rc && (!c->text || !strcmp(text, c->text));
		if (ok && rc == 0)
			ok = r.code == c->code && r.offered == c->offered && r.size == size;
		if (!ok) {
			print_message("case %zu (%.30s): rc %d code %d offered %d size %zu text \"%s\"\n",
				      i, c->in, rc, r.code, r.offered, r.size, text);
			failures++;
			continue;
		}
		if (rc != 0)
			continue;
		/* every prefix needs more; more bytes change nothing */
		for (size_t k = 0; k < size; k++) {
			struct probe_reply p;
			if (probe_parse_reply(c->kind, c->in, k, &p, text, sizeof text) != -EAGAIN) {
				print_message("case %zu: prefix of %zu octets not -EAGAIN\n", i, k);
				failures++;
				break;
			}
		}
		char more[4200];
		memcpy(more, c->in, size);
		memcpy(more + size, "250 x\r\n* OK\r\n", 13);
		struct probe_reply m;
		if (probe_parse_reply(c->kind, more, size + 13, &m, text, sizeof text) != 0 ||
		    m.size != size || m.code != r.code || m.offered != r.offered) {
			print_message("case %zu: another answer with bytes after it\n", i);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* Bounds: a line of PROBE_LINE_MAX octets (its LF included) passes, one more does not,
 * known as soon as PROBE_LINE_MAX octets came without an LF; what is looked at is cut to
 * PROBE_LINE_KEEP octets; the text to its buffer; SMTP text lines kept only whole; the
 * POP3 CAPA list ends after PROBE_CAPA_LINES lines; IMAP replies at PROBE_REPLY_MAX. */
static void test_bounds(void **state)
{
	(void)state;
	static char buf[PROBE_REPLY_MAX + 8192];
	char text[4096];
	struct probe_reply r;

	memset(buf, 'a', PROBE_LINE_MAX - 1);
	buf[PROBE_LINE_MAX - 1] = '\n';
	assert_int_equal(probe_parse_reply(PROBE_LINE, buf, PROBE_LINE_MAX, &r, text, sizeof text), 0);
	assert_int_equal(strlen(text), PROBE_LINE_KEEP);
	assert_int_equal(probe_parse_reply(PROBE_LINE, buf, PROBE_LINE_MAX, &r, text, 10), 0);
	assert_string_equal(text, "aaaaaaaaa");
	assert_int_equal(probe_parse_reply(PROBE_LINE, buf, PROBE_LINE_MAX - 1, &r, text, sizeof text),
			 -EAGAIN);
	buf[PROBE_LINE_MAX - 1] = 'a';
	assert_int_equal(probe_parse_reply(PROBE_LINE, buf, PROBE_LINE_MAX, &r, text, sizeof text),
			 -EMSGSIZE);
	buf[PROBE_LINE_MAX] = '\n';
	assert_int_equal(probe_parse_reply(PROBE_LINE, buf, PROBE_LINE_MAX + 1, &r, text, sizeof text),
			 -EMSGSIZE);

	/* SMTP: a line that no longer fits the text is left out, STARTTLS in it unseen */
	const char *ehlo = "250-mx.example\r\n250-0123456789\r\n250-STARTTLS\r\n250 OK\r\n";
	assert_int_equal(probe_parse_reply(PROBE_SMTP, ehlo, strlen(ehlo), &r, text, 31), 0);
	assert_string_equal(text, "250-mx.example\n250-0123456789");
	assert_int_equal(r.offered, 0);
	assert_int_equal(probe_parse_reply(PROBE_SMTP, ehlo, strlen(ehlo), &r, text, sizeof text), 0);
	assert_int_equal(r.offered, 1);

	/* POP3: 512 list lines end the list even without "." */
	size_t o = (size_t)sprintf(buf, "+OK\r\n");
	for (int i = 0; i < PROBE_CAPA_LINES; i++)
		o += (size_t)sprintf(buf + o, "%s\r\n", i == PROBE_CAPA_LINES - 1 ? "STLS" : "X");
	size_t list_end = o;
	o += (size_t)sprintf(buf + o, ".\r\n");
	assert_int_equal(probe_parse_reply(PROBE_POP3_CAPA, buf, o, &r, text, sizeof text), 0);
	assert_int_equal(r.size, list_end);
	assert_int_equal(r.offered, 1);
	assert_int_equal(r.lines, PROBE_CAPA_LINES + 1);

	/* IMAP: untagged lines beyond PROBE_REPLY_MAX octets */
	o = 0;
	while (o <= PROBE_REPLY_MAX)
		o += (size_t)sprintf(buf + o, "* OK %0100d\r\n", 0);
	assert_int_equal(probe_parse_reply(PROBE_IMAP_CAPABILITY, buf, o, &r, text, sizeof text),
			 -EMSGSIZE);
	assert_int_equal(probe_parse_reply(PROBE_IMAP_STARTTLS, buf, o - 200, &r, text, sizeof text),
			 -EAGAIN);

	/* SMTP: more than PROBE_REPLY_MAX octets of text */
	o = 0;
	for (size_t t = 0; t <= PROBE_REPLY_MAX; t += 104) /* 104 octets of text a line */
		o += (size_t)sprintf(buf + o, "250-%0100d\r\n", 0);
	o += (size_t)sprintf(buf + o, "250 OK\r\n");
	assert_int_equal(probe_parse_reply(PROBE_SMTP, buf, o, &r, text, sizeof text), -EPROTO);
}

/* PROBE_REPLY_MAX at its edge: SMTP text (lines without their terminators) of exactly
 * PROBE_REPLY_MAX octets is read, one more is -EPROTO; IMAP untagged lines of exactly
 * PROBE_REPLY_MAX octets (terminators included) before the tagged line are read, one more
 * is -EMSGSIZE. */
static void test_reply_max_edge(void **state)
{
	(void)state;
	static const struct {
		enum probe_reply_kind kind;
		size_t extra; /* octets beyond PROBE_REPLY_MAX */
		int rc;
	} t[] = {
		{ PROBE_SMTP, 0, 0 },
		{ PROBE_SMTP, 1, -EPROTO },
		{ PROBE_IMAP_CAPABILITY, 0, 0 },
		{ PROBE_IMAP_CAPABILITY, 1, -EMSGSIZE },
	};
	static char buf[PROBE_REPLY_MAX + 8192];
	char text[4096];
	int failures = 0;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		size_t want = PROBE_REPLY_MAX + t[i].extra, got = 0, o = 0;
		if (t[i].kind == PROBE_SMTP) {
			want -= 6; /* the last line, "250 OK" */
			while (got < want) {
				size_t n = want - got > 2000 ? 2000 : want - got;
				o += (size_t)sprintf(buf + o, "250-%0*d\r\n", (int)n - 4, 0);
				got += n;
			}
			o += (size_t)sprintf(buf + o, "250 OK\r\n");
		} else {
			while (got < want) {
				size_t n = want - got > 2000 ? 2000 : want - got;
				o += (size_t)sprintf(buf + o, "* OK %0*d\r\n", (int)n - 7, 0);
				got += n;
			}
			o += (size_t)sprintf(buf + o, "P1 OK done\r\n");
		}
		struct probe_reply r;
		int rc = probe_parse_reply(t[i].kind, buf, o, &r, text, sizeof text);
		if (rc != t[i].rc || (rc == 0 && r.size != o && t[i].kind == PROBE_SMTP)) {
			print_message("case %zu: %zu octets: rc %d, want %d\n", i, o, rc, t[i].rc);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_reply_max_edge),
	};
	return cmocka_run_group_tests_name("probe", tests, NULL, NULL);
}
