/* test_mtasts.c - MTA-STS (mtasts.h) table by table: TXT records (which count as MTA-STS
 * records, the one-record rule, id and extension syntax), policy files (every field, line
 * endings, duplicates, extensions, each error with its line), and MX pattern matching. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "mtasts.h"

struct txt_case {
	const char *name;
	const char *records[3];
	int rc;
	const char *id;    /* rc 0 */
	const char *err;   /* rc -EINVAL: a part of the message */
};

static void test_txt(void **state)
{
	(void)state;
	char longrec[STS_TXT_MAX + 40];
	snprintf(longrec, sizeof longrec, "v=STSv1; id=1; x=%0*d", STS_TXT_MAX, 0);
	const struct txt_case cases[] = {
		{ "plain", { "v=STSv1; id=20160831085700Z;" }, 0, "20160831085700Z", NULL },
		{ "no trailing delimiter", { "v=STSv1; id=abc" }, 0, "abc", NULL },
		{ "no spaces", { "v=STSv1;id=abc;" }, 0, "abc", NULL },
		{ "tabs and spaces", { "v=STSv1 \t;  id=abc  ; " }, 0, "abc", NULL },
		{ "extension fields", { "v=STSv1; ext_1.a-b=x:y<>; id=Z9; more=1" }, 0, "Z9", NULL },
		{ "id of 32", { "v=STSv1; id=0123456789abcdef0123456789ABCDEF" }, 0,
		  "0123456789abcdef0123456789ABCDEF", NULL },
		{ "first id kept", { "v=STSv1; id=one; id=two" }, 0, "one", NULL },
		{ "others skipped", { "v=spf1 -all", "v=STSv1; id=x", "something" }, 0, "x", NULL },
		{ "none", { "v=spf1 -all", "v=STSv10; id=1", "V=STSV1; id=1" }, -ENOENT, NULL, NULL },
		{ "no records", { NULL }, -ENOENT, NULL, NULL },
		{ "v=STSv1x is not one", { "v=STSv1x; id=1" }, -ENOENT, NULL, NULL },
		{ "two records", { "v=STSv1; id=1", "v=STSv1; id=2" }, -EINVAL, NULL, "2 TXT records" },
		{ "no id", { "v=STSv1; a=b" }, -EINVAL, NULL, "without id" },
		{ "bare version", { "v=STSv1" }, -EINVAL, NULL, "without id" },
		{ "id of 33", { "v=STSv1; id=0123456789abcdef0123456789ABCDEFx" }, -EINVAL, NULL,
		  "1 to 32" },
		{ "id with a dash", { "v=STSv1; id=ab-c" }, -EINVAL, NULL, "\";\" expected" },
		{ "empty id", { "v=STSv1; id=" }, -EINVAL, NULL, "1 to 32" },
		{ "double delimiter", { "v=STSv1;; id=1" }, -EINVAL, NULL, "field name" },
		{ "space in a value", { "v=STSv1; id=1; x=a b" }, -EINVAL, NULL, "\";\" expected" },
		{ "field without =", { "v=STSv1; id=1; flag" }, -EINVAL, NULL, "field name" },
		{ "too long", { longrec }, -EINVAL, NULL, "octets" },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct txt_case *c = &cases[i];
		size_t n = 0, lens[3];
		while (n < 3 && c->records[n]) {
			lens[n] = strlen(c->records[n]);
			n++;
		}
		char id[STS_ID_MAX + 1], err[200];
		int rc = sts_parse_txt(c->records, lens, n, id, err, sizeof err);
		int ok = rc == c->rc && (rc != 0 || strcmp(id, c->id) == 0) &&
			 (rc != -EINVAL || (err[0] && strstr(err, c->err) && !strchr(err, '\n')));
		if (!ok) {
			print_message("[%s] rc %d (want %d), id \"%s\", err \"%s\"\n", c->name, rc,
				      c->rc, rc == 0 ? id : "", err);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

struct policy_case {
	const char *name, *text;
	int rc;
	enum sts_mode mode;
	uint32_t max_age;
	const char *mx; /* the patterns, comma-separated */
	const char *err;
};

static void test_policy(void **state)
{
	(void)state;
	const struct policy_case cases[] = {
		{ "RFC example", "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
				 "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
		  0, STS_MODE_ENFORCE, 604800, "mail.example.com,*.example.net,backupmx.example.com",
		  NULL },
		{ "LF, no final newline, any order", "max_age:86400\nmx: MX.Example.ORG\nmode: testing\nversion: STSv1",
		  0, STS_MODE_TESTING, 86400, "mx.example.org", NULL },
		{ "none without mx", "version: STSv1\nmode: none\nmax_age: 0\n", 0, STS_MODE_NONE, 0,
		  "", NULL },
		{ "blank lines, trailing blanks, extensions",
		  "version: STSv1  \n\nmode: enforce\t\nfoo_bar.x-1: a=b:c\nmx: a.example\nmax_age: 1\n", 0,
		  STS_MODE_ENFORCE, 1, "a.example", NULL },
		{ "first of a duplicate wins", "version: STSv1\nmode: testing\nmode: enforce\nmax_age: 5\n"
					       "max_age: 6\nmx: a.example\n",
		  0, STS_MODE_TESTING, 5, "a.example", NULL },
		{ "max_age above the maximum is capped", "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 9999999999\n",
		  0, STS_MODE_ENFORCE, STS_MAX_AGE_MAX, "a.b", NULL },
		{ "wrong version", "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", -EINVAL, 0, 0,
		  NULL, "line 1: version" },
		{ "no version", "mode: enforce\nmx: a.b\nmax_age: 1\n", -EINVAL, 0, 0, NULL,
		  "without version" },
		{ "no mode", "version: STSv1\nmx: a.b\nmax_age: 1\n", -EINVAL, 0, 0, NULL, "without mode" },
		{ "no max_age", "version: STSv1\nmode: enforce\nmx: a.b\n", -EINVAL, 0, 0, NULL,
		  "without max_age" },
		{ "enforce without mx", "version: STSv1\nmode: enforce\nmax_age: 1\n", -EINVAL, 0, 0, NULL,
		  "without mx" },
		{ "bad mode", "version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 1\n", -EINVAL, 0, 0, NULL,
		  "line 2: mode" },
		{ "max_age of 11 digits", "version: STSv1\nmode: none\nmax_age: 12345678901\n", -EINVAL, 0,
		  0, NULL, "line 3: max_age" },
		{ "negative max_age", "version: STSv1\nmode: none\nmax_age: -1\n", -EINVAL, 0, 0, NULL,
		  "line 3: max_age" },
		{ "wildcard in the middle", "version: STSv1\nmode: enforce\nmax_age: 1\nmx: a.*.b\n",
		  -EINVAL, 0, 0, NULL, "line 4: mx" },
		{ "bare wildcard domain", "version: STSv1\nmode: enforce\nmax_age: 1\nmx: *.com\n", -EINVAL,
		  0, 0, NULL, "line 4: mx" },
		{ "empty label", "version: STSv1\nmode: enforce\nmax_age: 1\nmx: a..b\n", -EINVAL, 0, 0,
		  NULL, "line 4: mx" },
		{ "no colon", "version STSv1\n", -EINVAL, 0, 0, NULL, "line 1: \"key: value\"" },
		{ "space inside a value", "version: STSv1\nmode: enforce\nmax_age: 1\nmx: a b\n", -EINVAL,
		  0, 0, NULL, "line 4: invalid character" },
		{ "empty value", "version: STSv1\nmode:\n", -EINVAL, 0, 0, NULL, "line 2: empty" },
		{ "HTML instead of a policy", "<html><body>404</body></html>\n", -EINVAL, 0, 0, NULL,
		  "line 1" },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct policy_case *c = &cases[i];
		struct sts_policy p;
		char err[200], mx[2000] = "";
		int rc = sts_parse_policy(c->text, strlen(c->text), &p, err, sizeof err);
		for (size_t k = 0; rc == 0 && k < p.nmx; k++)
			snprintf(mx + strlen(mx), sizeof mx - strlen(mx), "%s%s", k ? "," : "", p.mx[k]);
		int ok = rc == c->rc;
		if (ok && rc == 0)
			ok = p.mode == c->mode && p.max_age == c->max_age && strcmp(mx, c->mx) == 0;
		if (ok && rc != 0)
			ok = strstr(err, c->err) && !strchr(err, '\n') && p.nmx == 0;
		if (!ok) {
			print_message("[%s] rc %d (want %d) mode %s max_age %u mx \"%s\" err \"%s\"\n",
				      c->name, rc, c->rc, sts_mode_name(p.mode), p.max_age, mx, err);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_policy_bounds(void **state)
{
	(void)state;
	static char big[STS_POLICY_MAX + 2];
	memset(big, '\n', sizeof big);
	struct sts_policy p;
	char err[200];
	assert_int_equal(sts_parse_policy(big, sizeof big, &p, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "octets"));
	/* more mx lines than kept: refused, never written past the array */
	char many[STS_MX_MAX * 16 + 100];
	size_t o = (size_t)snprintf(many, sizeof many, "version: STSv1\nmode: enforce\nmax_age: 1\n");
	for (int i = 0; i <= STS_MX_MAX; i++)
		o += (size_t)snprintf(many + o, sizeof many - o, "mx: m%d.example\n", i);
	assert_int_equal(sts_parse_policy(many, o, &p, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "more than"));
	/* a NUL inside */
	static const char nul[] = "version: STSv1\nmode: none\0\nmax_age: 1\n";
	assert_int_equal(sts_parse_policy(nul, sizeof nul - 1, &p, err, sizeof err), -EINVAL);
	/* a label of 64 */
	char lab[200];
	snprintf(lab, sizeof lab, "version: STSv1\nmode: enforce\nmax_age: 1\nmx: %0*d.example\n", 64, 0);
	assert_int_equal(sts_parse_policy(lab, strlen(lab), &p, err, sizeof err), -EINVAL);
	snprintf(lab, sizeof lab, "version: STSv1\nmode: enforce\nmax_age: 1\nmx: %0*d.example\n", 63, 0);
	assert_int_equal(sts_parse_policy(lab, strlen(lab), &p, err, sizeof err), 0);
}

/* Every MTA-STS bound at its edge and one beyond: a TXT record of STS_TXT_MAX octets, a
 * policy of STS_POLICY_MAX octets (padded with an extension field), STS_MX_MAX mx
 * patterns, an mx pattern of STS_NAME_MAX octets, max_age above STS_MAX_AGE_MAX (kept
 * at it). */
static void test_sts_edges(void **state)
{
	(void)state;
	int failures = 0;
	/* TXT: "v=STSv1; id=1; x=" and zeros up to len */
	static const struct {
		size_t len;
		int rc;
	} txt[] = { { STS_TXT_MAX, 0 }, { STS_TXT_MAX + 1, -EINVAL } };
	for (size_t i = 0; i < sizeof txt / sizeof txt[0]; i++) {
		static char rec[STS_TXT_MAX + 8];
		snprintf(rec, sizeof rec, "v=STSv1; id=1; x=%0*d", (int)txt[i].len - 17, 0);
		const char *recs[1] = { rec };
		size_t lens[1] = { strlen(rec) };
		char id[STS_ID_MAX + 1], err[200] = "";
		int rc = sts_parse_txt(recs, lens, 1, id, err, sizeof err);
		if (lens[0] != txt[i].len || rc != txt[i].rc) {
			print_message("TXT of %zu octets: rc %d (want %d) %s\n", lens[0], rc,
				      txt[i].rc, err);
			failures++;
		}
	}
	/* policies: a head, then what the case adds */
	static const char head[] = "version: STSv1\nmode: enforce\nmax_age: 86400\n";
	static const struct {
		const char *name;
		size_t len;   /* pad with "x_pad: aaa\n" up to this length (0: no padding) */
		int mx;       /* mx lines "mx: mN.example" */
		size_t name_len; /* one mx pattern of this many octets (0: none) */
		const char *age; /* a max_age line instead of the head's (NULL: none) */
		int rc;
		uint32_t want_age;
	} pol[] = {
		{ "policy of STS_POLICY_MAX octets", STS_POLICY_MAX, 1, 0, NULL, 0, 86400 },
		{ "policy of STS_POLICY_MAX + 1 octets", STS_POLICY_MAX + 1, 1, 0, NULL, -EINVAL,
		  0 },
		{ "STS_MX_MAX mx patterns", 0, STS_MX_MAX, 0, NULL, 0, 86400 },
		{ "STS_MX_MAX + 1 mx patterns", 0, STS_MX_MAX + 1, 0, NULL, -EINVAL, 0 },
		{ "mx of STS_NAME_MAX octets", 0, 0, STS_NAME_MAX, NULL, 0, 86400 },
		{ "mx of STS_NAME_MAX + 1 octets", 0, 0, STS_NAME_MAX + 1, NULL, -EINVAL, 0 },
		{ "max_age at STS_MAX_AGE_MAX", 0, 1, 0, "31557600", 0, STS_MAX_AGE_MAX },
		{ "max_age beyond STS_MAX_AGE_MAX", 0, 1, 0, "31557601", 0, STS_MAX_AGE_MAX },
		{ "max_age of ten digits", 0, 1, 0, "9999999999", 0, STS_MAX_AGE_MAX },
	};
	static char text[STS_POLICY_MAX + 4096];
	for (size_t i = 0; i < sizeof pol / sizeof pol[0]; i++) {
		size_t o = 0;
		if (pol[i].age)
			o += (size_t)sprintf(text + o,
					     "version: STSv1\nmode: enforce\nmax_age: %s\n",
					     pol[i].age);
		else
			o += (size_t)sprintf(text + o, "%s", head);
		for (int k = 0; k < pol[i].mx; k++)
			o += (size_t)sprintf(text + o, "mx: m%d.example\n", k);
		if (pol[i].name_len) {
			/* labels of 63 and a last one making name_len octets in all */
			size_t left = pol[i].name_len;
			o += (size_t)sprintf(text + o, "mx: ");
			while (left) {
				size_t l = left > 64 ? 63 : left;
				memset(text + o, 'a', l);
				o += l;
				left -= l;
				if (left) {
					text[o++] = '.';
					left--;
				}
			}
			text[o++] = '\n';
		}
		if (pol[i].len) {
			o += (size_t)sprintf(text + o, "x_pad: ");
			while (o < pol[i].len - 1)
				text[o++] = 'a';
			text[o++] = '\n';
		}
		struct sts_policy p;
		char err[200] = "";
		int rc = sts_parse_policy(text, o, &p, err, sizeof err);
		if ((pol[i].len && o != pol[i].len) || rc != pol[i].rc ||
		    (rc == 0 && (p.max_age != pol[i].want_age ||
				 p.nmx != (size_t)pol[i].mx + (pol[i].name_len ? 1 : 0) ||
				 (pol[i].name_len && strlen(p.mx[p.nmx - 1]) != pol[i].name_len)))) {
			print_message("[%s] %zu octets: rc %d (want %d) max_age %u nmx %zu %s\n",
				      pol[i].name, o, rc, pol[i].rc, rc == 0 ? p.max_age : 0,
				      rc == 0 ? p.nmx : 0, err);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_mx_match(void **state)
{
	(void)state;
	static const char text[] = "version: STSv1\nmode: enforce\nmax_age: 1\n"
				   "mx: mail.example.com\nmx: *.example.net\n";
	struct sts_policy p;
	char err[200];
	assert_int_equal(sts_parse_policy(text, sizeof text - 1, &p, err, sizeof err), 0);
	static const struct { const char *host; int match; } cases[] = {
		{ "mail.example.com", 1 },     { "MAIL.Example.COM.", 1 },
		{ "mail.example.com..", 0 },   { "example.com", 0 },
		{ "x.mail.example.com", 0 },   { "mx1.example.net", 1 },
		{ "MX1.EXAMPLE.NET.", 1 },     { "example.net", 0 },
		{ ".example.net", 0 },         { "a.b.example.net", 0 },
		{ "mx1.example.net.evil", 0 }, { "mx1example.net", 0 },
		{ "", 0 },                     { ".", 0 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		if (sts_mx_match(&p, cases[i].host) != cases[i].match) {
			print_message("[%s] matched %d\n", cases[i].host, !cases[i].match);
			failures++;
		}
	assert_int_equal(failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_txt),
		cmocka_unit_test(test_policy),
		cmocka_unit_test(test_policy_bounds),
		cmocka_unit_test(test_sts_edges),
		cmocka_unit_test(test_mx_match),
	};
	return cmocka_run_group_tests_name("mtasts", tests, NULL, NULL);
}
