/* test_stsmgr.c - the MTA-STS cache file (stsmgr_file_parse) table by table, and the
 * manager's argument checks. Lookups themselves (TXT, HTTPS, cache, fallbacks) run against
 * real servers in tests/integration/test_mta_sts.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "stsmgr.h"

#define HEAD(d, id, f, e) "# starttls-proxy MTA-STS policy cache\ndomain: " d "\nid: " id \
			  "\nfetched: " f "\nexpires: " e "\n\n"
#define POLICY "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.net\r\nmax_age: 86400\r\n"

struct file_case {
	const char *name;
	const char *text;
	int rc;
	const char *err; /* a part of the message when rc < 0 */
};

static void test_file_parse(void **state)
{
	(void)state;
	const struct file_case cases[] = {
		{ "as written", HEAD("example.net", "20260101", "1700000000", "1700086400") POLICY, 0,
		  NULL },
		{ "header order free", "id: x1\nexpires: 5\ndomain: example.net\nfetched: 4\n\n" POLICY,
		  0, NULL },
		{ "no policy after the header", HEAD("example.net", "a", "1", "2"), -EINVAL, "version" },
		{ "header not ended", "domain: example.net\nid: a\n", -EINVAL, "header not ended" },
		{ "no id", "domain: example.net\nfetched: 1\nexpires: 2\n\n" POLICY, -EINVAL,
		  "incomplete" },
		{ "id too long", HEAD("example.net", "0123456789abcdef0123456789abcdefX", "1", "2") POLICY,
		  -EINVAL, "incomplete" },
		{ "no space after the colon", "domain:example.net\n", -EINVAL, "bad header line" },
		{ "value too long",
		  "domain: "
		  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
		  -EINVAL, "too long" },
		{ "an invalid policy", HEAD("example.net", "a", "1", "2") "version: STSv2\r\n", -EINVAL,
		  "version" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct file_case *c = &cases[i];
		char domain[256], id[STS_ID_MAX + 1], err[200] = "";
		int64_t fetched = -1, expires = -1;
		struct sts_policy pol;
		int rc = stsmgr_file_parse(c->text, strlen(c->text), domain, sizeof domain, id, &fetched,
					   &expires, &pol, err, sizeof err);
		if (rc != c->rc || (c->err && !strstr(err, c->err)))
			print_message("[%s] rc %d (want %d), err \"%s\"\n", c->name, rc, c->rc, err);
		assert_int_equal(rc, c->rc);
		if (c->err)
			assert_non_null(strstr(err, c->err));
		if (rc == 0) {
			assert_string_equal(domain, "example.net");
			assert_int_equal(pol.mode, STS_MODE_ENFORCE);
			assert_int_equal(pol.nmx, 1);
			assert_string_equal(pol.mx[0], "mx1.example.net");
		}
	}
	/* the values */
	char domain[256], id[STS_ID_MAX + 1], err[200];
	int64_t fetched, expires;
	struct sts_policy pol;
	const char *t = HEAD("example.net", "20260101", "1700000000", "1700086400") POLICY;
	assert_int_equal(stsmgr_file_parse(t, strlen(t), domain, sizeof domain, id, &fetched,
					   &expires, &pol, err, sizeof err), 0);
	assert_string_equal(id, "20260101");
	assert_int_equal(fetched, 1700000000);
	assert_int_equal(expires, 1700086400);
	assert_int_equal(pol.max_age, 86400);
}

/* A domain that is not a lower-case LDH name never reaches DNS or the file system (it
 * names the cache file). */
static void test_get_refuses_bad_domains(void **state)
{
	(void)state;
	struct stsmgr_opts o = { 0 };
	struct stsmgr *m = NULL;
	assert_int_equal(stsmgr_new(NULL, &o, &m), 0);
	const char *bad[] = { "", "../etc", "a/b.example", "Example.NET", ".example", "example.",
			      "a..b", "a b", "a\nb" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		errno = 0;
		assert_null(stsmgr_get(m, bad[i], NULL, NULL));
		assert_int_equal(errno, EINVAL);
	}
	stsmgr_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_file_parse),
		cmocka_unit_test(test_get_refuses_bad_domains),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
