/* test_tlsrpt.c - SMTP TLS Reporting (tlsrpt.h).
 *
 * Pure parts, table by table: _smtp._tls TXT records (which count, the one-record rule,
 * rua URIs and their schemes, extensions, bounds); the JSON report of known counts against
 * a golden text (field order, RFC 3339 UTC dates, aggregation of failure-details, optional
 * members left out, escaping of quotes, controls and invalid UTF-8), read back and written
 * again unchanged, merged (counts summed); the limits; malformed reports refused; report
 * ids unique. The bounds of docs/limits.md at their edge and one beyond, their documented
 * values written out: rua URIs (8), a report read back (16 MiB, parsed and from the
 * spool), domains per period (10000).
 *
 * Live, on uv loops with a period of 2 s (grace 1 s), each test with a tlsrpt_dir of
 * its own: evaluations counted from two threads become one report with the RFC 8460 file
 * name and the exact counts (and its .gz); two replicas sharing a directory make exactly
 * one report per domain and period, with the summed counts (each holds the merge lock
 * 300 ms, so a missing lock shows as a second report); a replica freed mid-period leaves
 * its partial counts, which the other merges; a spool left by a stopped process is merged
 * by the next start; a late partial becomes a report of its own with a unique-id suffix.
 * Submission against real servers: aiosmtpd (tests/integration/tools/smtp_sink.py) as the
 * relay, a python3 HTTPS server (http.server + ssl, the test CA's "localhost" leaf) for
 * https: rua (and one with a leaf for another name: nothing is POSTed to it), and NSD
 * (tests/integration/dns_lib.sh, an unsigned "example." zone) for the _smtp._tls TXT
 * records: the stored message is multipart/report; report-type="tlsrpt"
 * with the Subject and TLS-Report-* fields, and its base64 attachment gunzips to the report
 * file; the POST body too; a 500 is logged as result=failed. The log lines (stderr) are
 * captured while the loops run and checked. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

#include "log.h"
#include "tls.h"
#include "tlsrpt.h"
#include "unit_fixture.h"
#include "unit_net.h"

#define WAIT_MS 15000
#define INTERVAL 2
#define GRACE_MS 1000 /* merges wait this long after a period's end (partials of replicas
			 written at end + 250 ms have time even on a loaded machine) */

/* ================================================================== TXT records */

struct txt_case {
	const char *name;
	const char *records[3];
	int rc;
	size_t nrua;
	const char *rua[2]; /* the first ones expected */
	const char *err;    /* rc -EINVAL: a part of the message */
};

#define MA "mailto:reports@example.com"

static void check_txt_cases(const struct txt_case *cases, size_t ncases, int *failures)
{
	for (size_t i = 0; i < ncases; i++) {
		const struct txt_case *c = &cases[i];
		size_t n = 0, lens[3], nrua = 99;
		while (n < 3 && c->records[n]) {
			lens[n] = strlen(c->records[n]);
			n++;
		}
		char rua[TLSRPT_RUA_MAX][512], err[200];
		memset(rua, 0, sizeof rua);
		int rc = tlsrpt_parse_txt(c->records, lens, n, rua, &nrua, err, sizeof err);
		int ok = rc == c->rc;
		if (ok && rc == 0) {
			ok = nrua == c->nrua;
			for (size_t k = 0; ok && k < 2 && c->rua[k]; k++)
				ok = strcmp(rua[k], c->rua[k]) == 0;
		} else if (ok) {
			ok = nrua == 0 && !strchr(err, '\n') &&
			     (rc == -ENOENT || (err[0] && (!c->err || strstr(err, c->err))));
		}
		if (!ok) {
			print_message("[%s] rc %d (want %d), nrua %zu (want %zu), rua[0] \"%s\", err "
				      "\"%s\"\n", c->name, rc, c->rc, nrua, c->nrua, rua[0], err);
			(*failures)++;
		}
	}
}

static void test_parse_txt(void **state)
{
	(void)state;
	static char long_rec[TLSRPT_TXT_MAX + 40], max_rec[TLSRPT_TXT_MAX + 1], ten[1200];
	static char uri511[600], uri512[600], rec511[700], rec512[700];
	int pre = snprintf(max_rec, sizeof max_rec, "v=TLSRPTv1; rua=" MA "; x=");
	memset(max_rec + pre, '0', TLSRPT_TXT_MAX - (size_t)pre);
	max_rec[TLSRPT_TXT_MAX] = '\0';
	snprintf(long_rec, sizeof long_rec, "%s0", max_rec);
	size_t o = (size_t)snprintf(ten, sizeof ten, "v=TLSRPTv1; rua=");
	for (int i = 0; i < 10; i++)
		o += (size_t)snprintf(ten + o, sizeof ten - o, "%smailto:r%d@example.com",
				      i ? "," : "", i);
	/* https://r.example/ and a path filling 511 (512) octets */
	snprintf(uri511, sizeof uri511, "https://r.example/%0*d", 511 - 18, 0);
	snprintf(uri512, sizeof uri512, "https://r.example/%0*d", 512 - 18, 0);
	snprintf(rec511, sizeof rec511, "v=TLSRPTv1; rua=%s", uri511);
	snprintf(rec512, sizeof rec512, "v=TLSRPTv1; rua=%s", uri512);
	const struct txt_case cases[] = {
		{ "mailto", { "v=TLSRPTv1; rua=" MA }, 0, 1, { MA }, NULL },
		{ "no spaces", { "v=TLSRPTv1;rua=" MA }, 0, 1, { MA }, NULL },
		{ "https", { "v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt" }, 0, 1,
		  { "https://reporting.example.com/v1/tlsrpt" }, NULL },
		{ "two, spaces around the comma",
		  { "v=TLSRPTv1; rua=" MA " ,\thttps://r.example/x?y=1&z=%2C" }, 0, 2,
		  { MA, "https://r.example/x?y=1&z=%2C" }, NULL },
		{ "trailing delimiter, WSP before ;", { "v=TLSRPTv1 ; rua=" MA " ; " }, 0, 1, { MA },
		  NULL },
		{ "extensions ignored",
		  { "v=TLSRPTv1; ext_1.a-b=x:y<>; rua=" MA "; more=1;" }, 0, 1, { MA }, NULL },
		{ "schemes folded",
		  { "v=TLSRPTv1; rua=MAILTO:A@Example.com,HTTPS://R.example/P" }, 0, 2,
		  { "mailto:A@Example.com", "https://R.example/P" }, NULL },
		{ "percent-encoded local part, hfields",
		  { "v=TLSRPTv1; rua=mailto:a%2Bb@example.com?subject=tls%20report" }, 0, 1,
		  { "mailto:a%2Bb@example.com?subject=tls%20report" }, NULL },
		{ "other schemes skipped",
		  { "v=TLSRPTv1; rua=http://r.example/,ftp://f.example/x," MA }, 0, 1, { MA }, NULL },
		{ "https port and IPv6", { "v=TLSRPTv1; rua=https://[2001:db8::1]:8443/r" }, 0, 1,
		  { "https://[2001:db8::1]:8443/r" }, NULL },
		{ "other records skipped",
		  { "v=spf1 -all", "v=TLSRPTv1; rua=" MA, "hello" }, 0, 1, { MA }, NULL },
		{ "ten URIs: eight kept", { ten }, 0, 8,
		  { "mailto:r0@example.com", "mailto:r1@example.com" }, NULL },
		{ "URI of 511", { rec511 }, 0, 1, { uri511 }, NULL },
		{ "record of TLSRPT_TXT_MAX", { max_rec }, 0, 1, { MA }, NULL },
		{ "none", { "v=spf1 -all", "v=TLSRPTv10; rua=" MA, "V=TLSRPTV1; rua=" MA },
		  -ENOENT, 0, { NULL }, NULL },
		{ "no records", { NULL }, -ENOENT, 0, { NULL }, NULL },
		{ "wrong version", { "v=TLSRPTv2; rua=" MA }, -ENOENT, 0, { NULL }, NULL },
		{ "two records", { "v=TLSRPTv1; rua=" MA, "v=TLSRPTv1; rua=mailto:b@example.com" },
		  -EINVAL, 0, { NULL }, "2 TXT records" },
		{ "bare version", { "v=TLSRPTv1" }, -EINVAL, 0, { NULL }, "without rua" },
		{ "no rua", { "v=TLSRPTv1; ext=1" }, -EINVAL, 0, { NULL }, "without rua" },
		{ "rua in capitals is an extension", { "v=TLSRPTv1; RUA=" MA }, -EINVAL, 0, { NULL },
		  "without rua" },
		{ "rua twice", { "v=TLSRPTv1; rua=" MA "; rua=" MA }, -EINVAL, 0, { NULL }, "twice" },
		{ "empty rua", { "v=TLSRPTv1; rua=" }, -EINVAL, 0, { NULL }, "without a scheme" },
		{ "empty URI in the list", { "v=TLSRPTv1; rua=" MA ",,https://r.example/" }, -EINVAL,
		  0, { NULL }, "without a scheme" },
		{ "raw !", { "v=TLSRPTv1; rua=mailto:a!b@example.com" }, -EINVAL, 0, { NULL },
		  "0x21" },
		{ "raw \"", { "v=TLSRPTv1; rua=mailto:a\"b@example.com" }, -EINVAL, 0, { NULL },
		  "0x22" },
		{ "space inside a URI", { "v=TLSRPTv1; rua=mailto:a b@example.com" }, -EINVAL, 0,
		  { NULL }, "one address" },
		{ "space after a URI", { "v=TLSRPTv1; rua=" MA " x@example.com" }, -EINVAL, 0,
		  { NULL }, "\";\" expected" },
		{ "bad percent-encoding", { "v=TLSRPTv1; rua=mailto:a%2@example.com" }, -EINVAL, 0,
		  { NULL }, "percent" },
		{ "no scheme", { "v=TLSRPTv1; rua=reports@example.com" }, -EINVAL, 0, { NULL },
		  "without a scheme" },
		{ "mailto without @", { "v=TLSRPTv1; rua=mailto:postmaster" }, -EINVAL, 0, { NULL },
		  "one address" },
		{ "mailto with two addresses",
		  { "v=TLSRPTv1; rua=mailto:a@example.com%2Cb@example.com" }, -EINVAL, 0, { NULL },
		  "one address" },
		{ "mailto with a bad domain", { "v=TLSRPTv1; rua=mailto:a@exa$mple.com" }, -EINVAL, 0,
		  { NULL }, "one address" },
		{ "https userinfo", { "v=TLSRPTv1; rua=https://u@r.example/" }, -EINVAL, 0, { NULL },
		  "userinfo" },
		{ "https without host", { "v=TLSRPTv1; rua=https:///x" }, -EINVAL, 0, { NULL },
		  "empty host" },
		{ "https without //", { "v=TLSRPTv1; rua=https:r.example" }, -EINVAL, 0, { NULL },
		  "https://" },
		{ "https bad port", { "v=TLSRPTv1; rua=https://r.example:99999/" }, -EINVAL, 0,
		  { NULL }, "bad port" },
		{ "https bad IPv6", { "v=TLSRPTv1; rua=https://[zz::1]/" }, -EINVAL, 0, { NULL },
		  "IPv6" },
		{ "only other schemes", { "v=TLSRPTv1; rua=http://r.example/" }, -EINVAL, 0, { NULL },
		  "none of the 1" },
		{ "double delimiter", { "v=TLSRPTv1;; rua=" MA }, -EINVAL, 0, { NULL }, "field name" },
		{ "space in an extension value", { "v=TLSRPTv1; rua=" MA "; x=a b" }, -EINVAL, 0,
		  { NULL }, "\";\" expected" },
		{ "= in an extension value", { "v=TLSRPTv1; rua=" MA "; x=a=b" }, -EINVAL, 0,
		  { NULL }, "\";\" expected" },
		{ "field without =", { "v=TLSRPTv1; rua=" MA "; flag" }, -EINVAL, 0, { NULL },
		  "field name" },
		{ "empty extension value", { "v=TLSRPTv1; rua=" MA "; x=" }, -EINVAL, 0, { NULL },
		  "empty or invalid" },
		{ "extension name of 33",
		  { "v=TLSRPTv1; rua=" MA "; a23456789012345678901234567890123=1" }, -EINVAL, 0,
		  { NULL }, "field name" },
		{ "URI of 512", { rec512 }, -EINVAL, 0, { NULL }, "longer than 511" },
		{ "record longer than TLSRPT_TXT_MAX", { long_rec }, -EINVAL, 0, { NULL }, "octets" },
	};
	int failures = 0;
	check_txt_cases(cases, sizeof cases / sizeof cases[0], &failures);
	/* a NUL octet inside the record (TXT strings may hold one) */
	static const char nul_rec[] = "v=TLSRPTv1; rua=" MA "; x=a\0b";
	const char *recs[1] = { nul_rec };
	size_t lens[1] = { sizeof nul_rec - 1 }, nrua;
	char rua[TLSRPT_RUA_MAX][512], err[200];
	assert_int_equal(tlsrpt_parse_txt(recs, lens, 1, rua, &nrua, err, sizeof err), -EINVAL);
	lens[0] = strlen(nul_rec); /* the part before the NUL is fine */
	assert_int_equal(tlsrpt_parse_txt(recs, lens, 1, rua, &nrua, err, sizeof err), 0);
	assert_int_equal(failures, 0);
}

/* TLSRPT_RUA_MAX at its edge, the documented 8 (docs/limits.md; written out, so that moving
 * the constant fails here): a record of 8 URIs keeps all 8, one of 9 keeps the first 8. */
#define RUA_EDGE 8

static void test_rua_max_edge(void **state)
{
	(void)state;
	for (int n = RUA_EDGE - 1; n <= RUA_EDGE + 1; n++) {
		char rec[1000];
		size_t o = (size_t)snprintf(rec, sizeof rec, "v=TLSRPTv1; rua=");
		for (int i = 0; i < n; i++)
			o += (size_t)snprintf(rec + o, sizeof rec - o, "%smailto:r%d@example.com",
					      i ? "," : "", i);
		const char *recs[1] = { rec };
		size_t lens[1] = { o }, nrua = 99;
		/* room past the bound: a bound moved up must show as a count, not an overflow */
		char rua[TLSRPT_RUA_MAX + 2][512], err[200] = "";
		memset(rua, 0, sizeof rua);
		int rc = tlsrpt_parse_txt(recs, lens, 1, rua, &nrua, err, sizeof err);
		size_t want = n < RUA_EDGE ? (size_t)n : RUA_EDGE;
		if (rc != 0 || nrua != want)
			print_message("%d URIs: rc %d, %zu kept (want %zu) %s\n", n, rc, nrua, want, err);
		assert_int_equal(rc, 0);
		assert_int_equal(nrua, want);
		for (size_t i = 0; i < want; i++) {
			char uri[64];
			snprintf(uri, sizeof uri, "mailto:r%zu@example.com", i);
			assert_string_equal(rua[i], uri);
		}
	}
}

/* ================================================================== the JSON report */

#define BEGIN 1796169600 /* 2026-12-02T00:00:00Z */
#define END (BEGIN + 86400)

static const char *const sts_lines[] = { "version: STSv1", "mode: enforce",
					 "mx: mx1.rpt.example", "max_age: 86400" };
static const char *const sts_mx[] = { "mx1.rpt.example" };
static const char *const tlsa_rr[] = {
	"3 1 1 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF" };

/* The known set of counts of the golden report. */
static void fill_known(struct tlsrpt_domain *d)
{
	assert_int_equal(tlsrpt_domain_init(d, "Rpt.Example."), 0);
	struct tlsrpt_eval sts = { .domain = "rpt.example", .type = TLSRPT_STS,
				   .policy_strings = sts_lines, .npolicy_strings = 4,
				   .mx_hosts = sts_mx, .nmx_hosts = 1, .success = 1 };
	for (int i = 0; i < 3; i++)
		assert_int_equal(tlsrpt_domain_add(d, &sts), 0);
	struct tlsrpt_eval exp = sts;
	exp.success = 0;
	exp.result_type = "certificate-expired";
	exp.sending_ip = "192.0.2.1";
	exp.receiving_mx_hostname = "mx1.rpt.example";
	exp.receiving_mx_helo = "mx1.rpt.example";
	exp.receiving_ip = "198.51.100.7";
	exp.additional_info = "expired 2026-11-30T00:00:00Z";
	for (int i = 0; i < 2; i++) /* aggregated: one entry, failed-session-count 2 */
		assert_int_equal(tlsrpt_domain_add(d, &exp), 0);
	struct tlsrpt_eval nostarttls = sts;
	nostarttls.success = 0;
	nostarttls.result_type = "starttls-not-supported";
	nostarttls.receiving_mx_hostname = "mx1.rpt.example";
	nostarttls.receiving_ip = "198.51.100.7";
	assert_int_equal(tlsrpt_domain_add(d, &nostarttls), 0);
	struct tlsrpt_eval none = { .domain = "rpt.example", .type = TLSRPT_NONE, .success = 1 };
	assert_int_equal(tlsrpt_domain_add(d, &none), 0);
	struct tlsrpt_eval tlsa = { .domain = "rpt.example", .type = TLSRPT_TLSA,
				    .policy_strings = tlsa_rr, .npolicy_strings = 1,
				    .result_type = "tlsa-invalid",
				    .receiving_mx_hostname = "mx2.rpt.example",
				    .additional_info = "q\"b\\n\nc\x01" "d\x7f" "e\xc3\xa9" "f\xff" "g" };
	assert_int_equal(tlsrpt_domain_add(d, &tlsa), 0);
}

static const char golden[] =
	"{\n"
	"  \"organization-name\": \"Example \\\"Org\\\"\",\n"
	"  \"date-range\": {\n"
	"    \"start-datetime\": \"2026-12-02T00:00:00Z\",\n"
	"    \"end-datetime\": \"2026-12-03T00:00:00Z\"\n"
	"  },\n"
	"  \"contact-info\": \"postmaster@proxy.example\",\n"
	"  \"report-id\": \"1796169600.0123456789abcdef@proxy.example\",\n"
	"  \"policies\": [\n"
	"    {\n"
	"      \"policy\": {\n"
	"        \"policy-type\": \"sts\",\n"
	"        \"policy-string\": [\n"
	"          \"version: STSv1\",\n"
	"          \"mode: enforce\",\n"
	"          \"mx: mx1.rpt.example\",\n"
	"          \"max_age: 86400\"\n"
	"        ],\n"
	"        \"policy-domain\": \"rpt.example\",\n"
	"        \"mx-host\": [\n"
	"          \"mx1.rpt.example\"\n"
	"        ]\n"
	"      },\n"
	"      \"summary\": {\n"
	"        \"total-successful-session-count\": 3,\n"
	"        \"total-failure-session-count\": 3\n"
	"      },\n"
	"      \"failure-details\": [\n"
	"        {\n"
	"          \"result-type\": \"certificate-expired\",\n"
	"          \"sending-mta-ip\": \"192.0.2.1\",\n"
	"          \"receiving-mx-hostname\": \"mx1.rpt.example\",\n"
	"          \"receiving-mx-helo\": \"mx1.rpt.example\",\n"
	"          \"receiving-ip\": \"198.51.100.7\",\n"
	"          \"failed-session-count\": 2,\n"
	"          \"failure-reason-code\": \"expired 2026-11-30T00:00:00Z\"\n"
	"        },\n"
	"        {\n"
	"          \"result-type\": \"starttls-not-supported\",\n"
	"          \"receiving-mx-hostname\": \"mx1.rpt.example\",\n"
	"          \"receiving-ip\": \"198.51.100.7\",\n"
	"          \"failed-session-count\": 1\n"
	"        }\n"
	"      ]\n"
	"    },\n"
	"    {\n"
	"      \"policy\": {\n"
	"        \"policy-type\": \"no-policy-found\",\n"
	"        \"policy-domain\": \"rpt.example\"\n"
	"      },\n"
	"      \"summary\": {\n"
	"        \"total-successful-session-count\": 1,\n"
	"        \"total-failure-session-count\": 0\n"
	"      }\n"
	"    },\n"
	"    {\n"
	"      \"policy\": {\n"
	"        \"policy-type\": \"tlsa\",\n"
	"        \"policy-string\": [\n"
	"          \"3 1 1 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF\"\n"
	"        ],\n"
	"        \"policy-domain\": \"rpt.example\"\n"
	"      },\n"
	"      \"summary\": {\n"
	"        \"total-successful-session-count\": 0,\n"
	"        \"total-failure-session-count\": 1\n"
	"      },\n"
	"      \"failure-details\": [\n"
	"        {\n"
	"          \"result-type\": \"tlsa-invalid\",\n"
	"          \"receiving-mx-hostname\": \"mx2.rpt.example\",\n"
	"          \"failed-session-count\": 1,\n"
	"          \"failure-reason-code\": \"q\\\"b\\\\n\\nc\\u0001d\\u007fe\xc3\xa9" "f\xef\xbf\xbdg\"\n"
	"        }\n"
	"      ]\n"
	"    }\n"
	"  ]\n"
	"}\n";

static const struct tlsrpt_report_meta known_meta = {
	"Example \"Org\"", "postmaster@proxy.example",
	"1796169600.0123456789abcdef@proxy.example", BEGIN, END };

/* Prints where two texts first differ. */
static void show_diff(const char *got, const char *want)
{
	size_t i = 0;
	while (got[i] && got[i] == want[i])
		i++;
	size_t from = i > 60 ? i - 60 : 0;
	print_message("differ at %zu:\n--- got ---\n%.160s\n--- want ---\n%.160s\n", i, got + from,
		      want + from);
}

static void test_json_golden(void **state)
{
	(void)state;
	struct tlsrpt_domain d;
	fill_known(&d);
	assert_string_equal(d.domain, "rpt.example");
	char *json;
	size_t len;
	assert_int_equal(tlsrpt_report_json(&known_meta, &d, &json, &len), 0);
	assert_int_equal(len, strlen(json));
	if (strcmp(json, golden) != 0)
		show_diff(json, golden);
	assert_string_equal(json, golden);
	free(json);
	/* a time gmtime cannot take */
	struct tlsrpt_report_meta bad = known_meta;
	bad.begin = -1;
	assert_int_equal(tlsrpt_report_json(&bad, &d, &json, &len), -EINVAL);
	assert_null(json);
	/* no policies: an empty array */
	struct tlsrpt_domain empty;
	assert_int_equal(tlsrpt_domain_init(&empty, "e.example"), 0);
	assert_int_equal(tlsrpt_report_json(&known_meta, &empty, &json, &len), 0);
	assert_non_null(strstr(json, "\"policies\": []\n}\n"));
	free(json);
	tlsrpt_domain_free(&d);
	char t[32];
	assert_int_equal(tlsrpt_format_time(0, t, sizeof t), 0);
	assert_string_equal(t, "1970-01-01T00:00:00Z");
	assert_int_equal(tlsrpt_format_time(BEGIN + 86399, t, sizeof t), 0);
	assert_string_equal(t, "2026-12-02T23:59:59Z");
}

static void test_json_read_back(void **state)
{
	(void)state;
	struct tlsrpt_domain d, back;
	int64_t b = 0, e = 0;
	char err[200], *again;
	size_t len;
	assert_int_equal(tlsrpt_report_parse(golden, strlen(golden), &back, &b, &e, err, sizeof err),
			 0);
	assert_int_equal(b, BEGIN);
	assert_int_equal(e, END);
	assert_string_equal(back.domain, "rpt.example");
	assert_int_equal(back.npolicies, 3);
	assert_int_equal(back.policies[0].ok, 3);
	assert_int_equal(back.policies[0].failed, 3);
	assert_int_equal(back.policies[0].nfailures, 2);
	assert_int_equal(back.policies[0].failures[0].count, 2);
	assert_string_equal(back.policies[2].failures[0].reason,
			    "q\"b\\n\nc\x01" "d\x7f" "e\xc3\xa9" "f\xef\xbf\xbd" "g");
	assert_int_equal(tlsrpt_report_json(&known_meta, &back, &again, &len), 0);
	assert_string_equal(again, golden);
	free(again);
	/* merged with itself: every count doubled, nothing else changes */
	fill_known(&d);
	assert_int_equal(tlsrpt_domain_merge(&back, &d), 0);
	assert_int_equal(back.npolicies, 3);
	assert_int_equal(back.policies[0].ok, 6);
	assert_int_equal(back.policies[0].failed, 6);
	assert_int_equal(back.policies[0].nfailures, 2);
	assert_int_equal(back.policies[0].failures[0].count, 4);
	assert_int_equal(back.policies[0].failures[1].count, 2);
	assert_int_equal(back.policies[1].ok, 2);
	assert_int_equal(back.policies[2].failed, 2);
	assert_int_equal(back.policies[2].failures[0].count, 2);
	/* a policy of another mx list is a policies[] entry of its own */
	static const char *const other_mx[] = { "mx9.rpt.example" };
	struct tlsrpt_eval other = { .domain = "rpt.example", .type = TLSRPT_STS,
				     .policy_strings = sts_lines, .npolicy_strings = 4,
				     .mx_hosts = other_mx, .nmx_hosts = 1, .success = 1 };
	assert_int_equal(tlsrpt_domain_add(&back, &other), 0);
	assert_int_equal(back.npolicies, 4);
	tlsrpt_domain_free(&back);
	tlsrpt_domain_free(&d);
}

static void test_limits(void **state)
{
	(void)state;
	struct tlsrpt_domain d;
	assert_int_equal(tlsrpt_domain_init(&d, "lim.example"), 0);
	char line[64], big[5000], mx[300];
	const char *one[1] = { line };
	for (int i = 0; i < TLSRPT_POLICIES_MAX + 4; i++) {
		snprintf(line, sizeof line, "version: STSv%d", i);
		struct tlsrpt_eval e = { .domain = "lim.example", .type = TLSRPT_STS,
					 .policy_strings = one, .npolicy_strings = 1, .success = 1 };
		assert_int_equal(tlsrpt_domain_add(&d, &e), 0);
	}
	assert_int_equal(d.npolicies, TLSRPT_POLICIES_MAX);
	assert_int_equal(d.dropped, 4);
	tlsrpt_domain_free(&d);
	assert_int_equal(d.npolicies, 0);
	/* failure-details: at most TLSRPT_FAILURES_MAX; the summary counts every session */
	for (int i = 0; i < TLSRPT_FAILURES_MAX + 6; i++) {
		snprintf(mx, sizeof mx, "mx%d.lim.example", i);
		struct tlsrpt_eval e = { .domain = "lim.example", .type = TLSRPT_NONE,
					 .result_type = "starttls-not-supported",
					 .receiving_mx_hostname = mx };
		assert_int_equal(tlsrpt_domain_add(&d, &e), 0);
	}
	assert_int_equal(d.npolicies, 1);
	assert_int_equal(d.policies[0].failed, TLSRPT_FAILURES_MAX + 6);
	assert_int_equal(d.policies[0].nfailures, TLSRPT_FAILURES_MAX);
	tlsrpt_domain_free(&d);
	/* strings: TLSRPT_STRINGS_MAX entries of TLSRPT_STRING_MAX octets, valid UTF-8 */
	static const char *many[TLSRPT_STRINGS_MAX + 20];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	big[TLSRPT_STRING_MAX - 1] = '\xc3'; /* a 2-octet character across the limit */
	big[TLSRPT_STRING_MAX] = '\xa9';
	for (size_t i = 0; i < sizeof many / sizeof many[0]; i++)
		many[i] = i == 0 ? big : i == 1 ? "\xff\xfe" : i == 2 ? "\xed\xa0\x80" : "x";
	struct tlsrpt_eval e = { .domain = "lim.example", .type = TLSRPT_STS, .policy_strings = many,
				 .npolicy_strings = sizeof many / sizeof many[0], .success = 1 };
	assert_int_equal(tlsrpt_domain_add(&d, &e), 0);
	assert_int_equal(d.policies[0].nstrings, TLSRPT_STRINGS_MAX);
	assert_int_equal(strlen(d.policies[0].strings[0]), TLSRPT_STRING_MAX - 1);
	assert_string_equal(d.policies[0].strings[1], "\xef\xbf\xbd\xef\xbf\xbd");
	assert_string_equal(d.policies[0].strings[2], "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
	tlsrpt_domain_free(&d);
	/* domains */
	static const struct { const char *in, *out; } doms[] = {
		{ "Example.COM.", "example.com" }, { "a_b-c.example", "a_b-c.example" },
		{ "", NULL }, { ".", NULL }, { "a..b", NULL }, { ".a", NULL }, { "a/b", NULL },
		{ "../x", NULL }, { "a b", NULL }, { "a.b..", NULL },
	};
	for (size_t i = 0; i < sizeof doms / sizeof doms[0]; i++) {
		int rc = tlsrpt_domain_init(&d, doms[i].in);
		assert_int_equal(rc, doms[i].out ? 0 : -EINVAL);
		if (doms[i].out)
			assert_string_equal(d.domain, doms[i].out);
	}
	char lab[80];
	snprintf(lab, sizeof lab, "%0*d.example", 64, 0);
	assert_int_equal(tlsrpt_domain_init(&d, lab), -EINVAL);
	snprintf(lab, sizeof lab, "%0*d.example", 63, 0);
	assert_int_equal(tlsrpt_domain_init(&d, lab), 0);
}

struct bad_case {
	const char *name, *json, *err;
};

#define HEAD "{\"date-range\":{\"start-datetime\":\"2026-12-02T00:00:00Z\",\"end-datetime\":\"2026-12-03T00:00:00Z\"},"
#define POL(x) HEAD "\"policies\":[{\"policy\":{\"policy-type\":\"sts\",\"policy-domain\":\"a.example\"" x "}]}"
#define SUM "},\"summary\":{\"total-successful-session-count\":1,\"total-failure-session-count\":0}"

static void test_parse_report(void **state)
{
	(void)state;
	char deep[200] = HEAD "\"policies\":[], \"x\":", err[200];
	for (int i = 0; i < 17; i++)
		strcat(deep, "[");
	for (int i = 0; i < 17; i++)
		strcat(deep, "]");
	strcat(deep, "}");
	const struct bad_case bad[] = {
		{ "empty", "", "value expected" },
		{ "not an object", "[]", "not a report" },
		{ "trailing data", HEAD "\"policies\":[]} x", "after the value" },
		{ "no policies", HEAD "\"x\":1}", "not a report" },
		{ "no date-range", "{\"policies\":[]}", "not a report" },
		{ "bad date", "{\"date-range\":{\"start-datetime\":\"2026-12-02 00:00:00Z\","
			      "\"end-datetime\":\"2026-12-03T00:00:00Z\"},\"policies\":[]}", "date-range" },
		{ "not a real date", "{\"date-range\":{\"start-datetime\":\"2026-02-30T00:00:00Z\","
				     "\"end-datetime\":\"2026-12-03T00:00:00Z\"},\"policies\":[]}",
		  "date-range" },
		{ "end before begin", "{\"date-range\":{\"start-datetime\":\"2026-12-03T00:00:00Z\","
				      "\"end-datetime\":\"2026-12-02T00:00:00Z\"},\"policies\":[]}",
		  "date-range" },
		{ "negative count", POL("},\"summary\":{\"total-successful-session-count\":-1,"
				       "\"total-failure-session-count\":0}"), "policies[0]" },
		{ "fraction", POL("},\"summary\":{\"total-successful-session-count\":1.5,"
				 "\"total-failure-session-count\":0}"), "policies[0]" },
		{ "count past 2^64", POL("},\"summary\":{\"total-successful-session-count\":"
					"18446744073709551616,\"total-failure-session-count\":0}"),
		  "policies[0]" },
		{ "no summary", POL("}"), "policies[0]" },
		{ "unknown policy-type",
		  HEAD "\"policies\":[{\"policy\":{\"policy-type\":\"dane\",\"policy-domain\":"
		       "\"a.example\"" SUM "}]}", "unknown policy-type" },
		{ "two domains",
		  HEAD "\"policies\":[{\"policy\":{\"policy-type\":\"sts\",\"policy-domain\":\"a.example\""
		  SUM "},{\"policy\":{\"policy-type\":\"sts\",\"policy-domain\":\"b.example\"" SUM "}]}",
		  "another one" },
		{ "domain not a host name",
		  HEAD "\"policies\":[{\"policy\":{\"policy-type\":\"sts\",\"policy-domain\":\"../x\""
		  SUM "}]}", "not a host name" },
		{ "policy-string not strings", POL(",\"policy-string\":[1]" SUM), "not strings" },
		{ "failure-details not an array", POL(SUM ",\"failure-details\":{}"), "not an array" },
		{ "failure without count",
		  POL(SUM ",\"failure-details\":[{\"result-type\":\"x\"}]"), "malformed" },
		{ "failure with a number as ip",
		  POL(SUM ",\"failure-details\":[{\"result-type\":\"x\",\"failed-session-count\":1,"
		      "\"receiving-ip\":1}]"), "malformed" },
		{ "lone surrogate", HEAD "\"policies\":[],\"x\":\"\\ud800\"}", "surrogate" },
		{ "low surrogate first", HEAD "\"policies\":[],\"x\":\"\\udc00\\ud800\"}", "surrogate" },
		{ "\\u0000", HEAD "\"policies\":[],\"x\":\"a\\u0000\"}", "\\u0000" },
		{ "invalid UTF-8", HEAD "\"policies\":[],\"x\":\"\xc3\x28\"}", "UTF-8" },
		{ "overlong UTF-8", HEAD "\"policies\":[],\"x\":\"\xc0\xaf\"}", "UTF-8" },
		{ "raw control character", HEAD "\"policies\":[],\"x\":\"a\tb\"}", "control" },
		{ "bad escape", HEAD "\"policies\":[],\"x\":\"\\x\"}", "bad escape" },
		{ "duplicate member", HEAD "\"policies\":[],\"policies\":[]}", "duplicate" },
		{ "nested 17 deep", deep, "too deep" },
		{ "leading zero", HEAD "\"policies\":[],\"x\":01}", "expected" },
		{ "trailing comma", HEAD "\"policies\":[],}", "member name" },
		{ "single quotes", "{'a':1}", "member name" },
		{ "bare word", HEAD "\"policies\":[],\"x\":nul}", "value expected" },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct tlsrpt_domain d;
		int64_t b, e;
		int rc = tlsrpt_report_parse(bad[i].json, strlen(bad[i].json), &d, &b, &e, err,
					     sizeof err);
		if (rc != -EINVAL || !strstr(err, bad[i].err) || strchr(err, '\n') ||
		    d.npolicies != 0) {
			print_message("[%s] rc %d, err \"%s\" (want \"%s\")\n", bad[i].name, rc, err,
				      bad[i].err);
			failures++;
		}
		if (rc == 0)
			tlsrpt_domain_free(&d);
	}
	assert_int_equal(failures, 0);
	/* accepted: unknown members, escapes, a surrogate pair, numbers of every form in
	 * members that are not read, no failure-details */
	static const char ok[] =
		" {\"x\":[1.5e3,-0,true,false,null,{}],\"date-range\":{\"start-datetime\":"
		"\"2026-12-02T00:00:00Z\",\"end-datetime\":\"2026-12-03T00:00:00Z\",\"z\":1},"
		"\"policies\":[{\"policy\":{\"policy-type\":\"sts\",\"policy-domain\":\"A.Example\","
		"\"policy-string\":[\"\\u00e9\\ud83d\\ude00\\/\\b\\f\\r\\t\"],\"mx-host\":[]},"
		"\"summary\":{\"total-successful-session-count\":18446744073709551615,"
		"\"total-failure-session-count\":2},\"failure-details\":[{\"result-type\":\"x\","
		"\"failed-session-count\":2,\"additional-information\":\"https://i.example/\","
		"\"extra\":{}}]}]}\r\n";
	struct tlsrpt_domain d;
	int64_t b, e;
	assert_int_equal(tlsrpt_report_parse(ok, sizeof ok - 1, &d, &b, &e, err, sizeof err), 0);
	assert_string_equal(d.domain, "a.example");
	assert_int_equal(d.npolicies, 1);
	assert_true(d.policies[0].ok == UINT64_MAX);
	assert_int_equal(d.policies[0].nmx_hosts, 0);
	assert_string_equal(d.policies[0].strings[0], "\xc3\xa9\xf0\x9f\x98\x80/\b\f\r\t");
	assert_int_equal(d.policies[0].failures[0].count, 2);
	assert_null(d.policies[0].failures[0].reason);
	/* counts saturate instead of wrapping */
	assert_int_equal(tlsrpt_domain_merge(&d, &d), 0);
	assert_true(d.policies[0].ok == UINT64_MAX);
	assert_int_equal(d.policies[0].failed, 4);
	tlsrpt_domain_free(&d);
	/* no policies: domain "" */
	static const char none[] = HEAD "\"policies\":[]}";
	assert_int_equal(tlsrpt_report_parse(none, sizeof none - 1, &d, &b, &e, err, sizeof err), 0);
	assert_string_equal(d.domain, "");
}

/* TLSRPT_REPORT_MAX at its edge, the documented 16 MiB (written out): a report of exactly
 * 16777216 octets (a small one padded with trailing white space, which JSON allows) is
 * read; one of 16777217 is refused before it is parsed. */
#define REPORT_EDGE 16777216

/* A valid report of one domain (ok sessions) padded with spaces to exactly size octets;
 * malloc'd. */
static char *padded_report(const char *domain, int64_t begin, int64_t end, int ok, size_t size)
{
	struct tlsrpt_domain d;
	assert_int_equal(tlsrpt_domain_init(&d, domain), 0);
	struct tlsrpt_eval e = { .domain = domain, .type = TLSRPT_NONE, .success = 1 };
	for (int i = 0; i < ok; i++)
		assert_int_equal(tlsrpt_domain_add(&d, &e), 0);
	struct tlsrpt_report_meta m = { "Pad", "postmaster@pad.example", "1.2@pad.example", begin,
					end };
	char *json;
	size_t len;
	assert_int_equal(tlsrpt_report_json(&m, &d, &json, &len), 0);
	tlsrpt_domain_free(&d);
	assert_true(len < size);
	char *out = malloc(size + 1);
	assert_non_null(out);
	memcpy(out, json, len);
	memset(out + len, ' ', size - len);
	out[size] = '\0';
	free(json);
	return out;
}

static void test_report_max_edge(void **state)
{
	(void)state;
	for (size_t size = REPORT_EDGE - 1; size <= REPORT_EDGE + 1; size++) {
		char *text = padded_report("big.example", BEGIN, END, 3, size), err[200] = "";
		struct tlsrpt_domain d;
		int64_t b, e;
		int rc = tlsrpt_report_parse(text, size, &d, &b, &e, err, sizeof err);
		free(text);
		if (rc != (size <= REPORT_EDGE ? 0 : -EINVAL))
			print_message("report of %zu octets: rc %d %s\n", size, rc, err);
		if (size <= REPORT_EDGE) {
			assert_int_equal(rc, 0);
			assert_string_equal(d.domain, "big.example");
			assert_int_equal(d.npolicies, 1);
			assert_int_equal(d.policies[0].ok, 3);
			tlsrpt_domain_free(&d);
		} else {
			assert_int_equal(rc, -EINVAL);
			assert_string_equal(err, "report of 16777217 octets (at most 16777216)");
			assert_int_equal(d.npolicies, 0);
		}
	}
}

static void test_report_id(void **state)
{
	(void)state;
	enum { N = 1000 };
	static char ids[N][128];
	for (int i = 0; i < N; i++) {
		tlsrpt_make_report_id("proxy.example", BEGIN, ids[i], sizeof ids[i]);
		/* BEGIN "." 16 hex "@" submitter: a msg-id's id-left "@" id-right */
		assert_int_equal(strlen(ids[i]), 10 + 1 + 16 + 1 + 13);
		assert_memory_equal(ids[i], "1796169600.", 11);
		for (int k = 11; k < 27; k++)
			assert_non_null(strchr("0123456789abcdef", ids[i][k]));
		assert_string_equal(ids[i] + 27, "@proxy.example");
	}
	qsort(ids, N, sizeof ids[0], (int (*)(const void *, const void *))strcmp);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	assert_string_equal(tlsrpt_policy_name(TLSRPT_NONE), "no-policy-found");
}

/* ================================================================== live helpers */

static struct {
	int ok;
	char why[1000];
	char dns_dir[300], resolver[64];
	long dns_pid;
	pid_t sink_pid, https_pid, wrong_pid;
	int sink_port, https_port, wrong_port;
	char sink_store[300], https_store[300], https_log[300];
	char ca[600];
} L;

static char log_path[300]; /* captured stderr */
static int saved_stderr = -1;

static void capture_start(void)
{
	snprintf(log_path, sizeof log_path, "%s/stderr.log", tmpdir);
	int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved_stderr = dup(2);
	dup2(fd, 2);
	close(fd);
}

/* Restores stderr; with STP_VERBOSE the captured lines are shown. */
static void capture_stop(void)
{
	if (saved_stderr < 0)
		return;
	dup2(saved_stderr, 2);
	close(saved_stderr);
	saved_stderr = -1;
	if (getenv("STP_VERBOSE")) {
		char cmd[400];
		snprintf(cmd, sizeof cmd, "cat '%s' >&2", log_path);
		if (system(cmd) != 0)
			fprintf(stderr, "(no log)\n");
	}
}

/* The whole file (malloc'd, NUL-terminated), or NULL. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	char *b = malloc(cap + 1);
	size_t k;
	while (b && (k = fread(b + n, 1, cap - n, f)) > 0) {
		n += k;
		if (n == cap) {
			char *nb = realloc(b, cap * 2 + 1);
			if (!nb) {
				free(b);
				b = NULL;
				break;
			}
			b = nb;
			cap *= 2;
		}
	}
	fclose(f);
	if (b)
		b[n] = '\0';
	if (len)
		*len = n;
	return b;
}

static void spit(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* Log lines (captured) that contain every one of the NULL-terminated needles. */
static int log_count(const char *first, ...)
{
	char *text = slurp(log_path, NULL);
	int n = 0;
	if (!text)
		return 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		va_list ap;
		va_start(ap, first);
		int all = 1;
		for (const char *s = first; s && all; s = va_arg(ap, const char *))
			all = strstr(line, s) != NULL;
		va_end(ap);
		n += all;
	}
	free(text);
	return n;
}

/* The names in dir that contain sub and end with suffix. */
static int count_files(const char *dir, const char *sub, const char *suffix, char *first,
		       size_t cap)
{
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name), sl = strlen(suffix);
		if (e->d_name[0] == '.' && sub[0] != '.')
			continue; /* .bad-, .tmp- files only when asked for */
		if (strstr(e->d_name, sub) && l > sl && strcmp(e->d_name + l - sl, suffix) == 0) {
			if (first && (n == 0 || strcmp(e->d_name, first) < 0))
				snprintf(first, cap, "%s", e->d_name);
			n++;
		}
	}
	closedir(d);
	return n;
}

struct wait {
	uv_timer_t t;
	int (*cond)(void *);
	void *arg;
	int64_t until;
	int met;
};

static void wait_tick(uv_timer_t *t)
{
	struct wait *w = t->data;
	if ((w->cond && w->cond(w->arg)) || now_ms() >= w->until) {
		w->met = w->cond ? w->cond(w->arg) : 1;
		uv_timer_stop(t);
		uv_stop(t->loop);
	}
}

/* Runs loop until cond(arg) (checked every 20 ms) or ms passed; cond NULL: just ms. */
static int run_until(uv_loop_t *loop, int (*cond)(void *), void *arg, int64_t ms)
{
	struct wait w = { .cond = cond, .arg = arg, .until = now_ms() + ms };
	uv_timer_init(loop, &w.t);
	w.t.data = &w;
	uv_timer_start(&w.t, wait_tick, 20, 20);
	uv_run(loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&w.t, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
	return w.met;
}

/* Runs loop until the next period boundary + 100 ms: counting then stays in one period.
 * Returns the period's begin. */
static int64_t align_period(uv_loop_t *loop)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	int64_t next = (ms / (INTERVAL * 1000) + 1) * INTERVAL * 1000;
	run_until(loop, NULL, NULL, next + 100 - ms);
	return next / 1000;
}

/* Frees r and runs the loop until everything of it is gone. */
static void free_and_drain(uv_loop_t *loop, struct tlsrpt *r)
{
	tlsrpt_free(r);
	uv_run(loop, UV_RUN_DEFAULT);
}

static struct tlsrpt *make(uv_loop_t *loop, const char *dir, const char *submitter,
			   unsigned hold)
{
	struct tlsrpt_opts o = { .dir = dir, .submitter = submitter, .interval_s = INTERVAL,
				 .org = "Example Org", .contact = "postmaster@proxy.example",
				 .resolver = L.ok ? L.resolver : "127.0.0.1:9",
				 .hold_lock_ms = hold, .ca = L.ca[0] ? L.ca : NULL,
				 .timeout_ms = 5000, .grace_ms = GRACE_MS };
	char relay[64];
	if (L.sink_port) {
		snprintf(relay, sizeof relay, "127.0.0.1:%d", L.sink_port);
		o.relay = relay;
	}
	struct tlsrpt *r = NULL;
	char err[300] = "";
	int rc = tlsrpt_new(loop, &o, &r, err, sizeof err);
	if (rc != 0)
		print_message("tlsrpt_new: %s\n", err);
	assert_int_equal(rc, 0);
	return r;
}

static void count_n(struct tlsrpt *r, const char *domain, int ok, int failed)
{
	for (int i = 0; i < ok + failed; i++) {
		struct tlsrpt_eval e = { .domain = domain, .type = TLSRPT_STS,
					 .policy_strings = sts_lines, .npolicy_strings = 4,
					 .mx_hosts = sts_mx, .nmx_hosts = 1, .success = i < ok,
					 .result_type = "certificate-host-mismatch",
					 .receiving_mx_hostname = "mx1.rpt.example",
					 .receiving_ip = "127.0.0.1" };
		tlsrpt_count(r, &e);
	}
}

/* Reads a report (or partial) file back: the sums over its policies. */
static void read_counts(const char *path, uint64_t *ok, uint64_t *failed, char *report_id,
			size_t ridcap)
{
	size_t len;
	char *text = slurp(path, &len), err[200];
	assert_non_null(text);
	struct tlsrpt_domain d;
	int64_t b, e;
	int rc = tlsrpt_report_parse(text, len, &d, &b, &e, err, sizeof err);
	if (rc != 0)
		print_message("%s: %s\n", path, err);
	assert_int_equal(rc, 0);
	*ok = *failed = 0;
	for (size_t i = 0; i < d.npolicies; i++) {
		*ok += d.policies[i].ok;
		*failed += d.policies[i].failed;
	}
	if (report_id) {
		char *s = strstr(text, "\"report-id\": \"");
		assert_non_null(s);
		s += 14;
		snprintf(report_id, ridcap, "%.*s", (int)strcspn(s, "\""), s);
	}
	tlsrpt_domain_free(&d);
	free(text);
}

static void gunzip_equals(const char *gzpath, const char *jsonpath)
{
	size_t glen, jlen;
	char *gz = slurp(gzpath, &glen), *json = slurp(jsonpath, &jlen);
	assert_non_null(gz);
	assert_non_null(json);
	uLongf cap = (uLongf)jlen + 1000;
	char *out = malloc(cap);
	z_stream zs = { 0 };
	assert_int_equal(inflateInit2(&zs, 16 + MAX_WBITS), Z_OK);
	zs.next_in = (Bytef *)gz;
	zs.avail_in = (uInt)glen;
	zs.next_out = (Bytef *)out;
	zs.avail_out = (uInt)cap;
	assert_int_equal(inflate(&zs, Z_FINISH), Z_STREAM_END);
	assert_int_equal(zs.total_out, jlen);
	assert_memory_equal(out, json, jlen);
	inflateEnd(&zs);
	free(out);
	free(gz);
	free(json);
}

static int json_valid(const char *path)
{
	char cmd[1700];
	snprintf(cmd, sizeof cmd,
		 "/usr/bin/python3 -c 'import json,sys; json.load(open(sys.argv[1], \"rb\"))' '%s'",
		 path);
	return system(cmd) == 0;
}

struct counter_arg {
	struct tlsrpt *r;
	const char *domain;
	int ok, failed;
};

static void *counter(void *arg)
{
	struct counter_arg *a = arg;
	count_n(a->r, a->domain, a->ok, a->failed);
	return NULL;
}

static void live_dir(const char *name, char *out, size_t cap)
{
	snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* ================================================================== live tests */

/* Two threads counting at once into one instance: the partial it writes on tlsrpt_free
 * holds exactly every evaluation (no period end needed: interval one day). */
static void test_count_threads(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400];
	live_dir("threads", dir, sizeof dir);
	struct tlsrpt_opts o = { .dir = dir, .submitter = "proxy.example",
				 .resolver = "127.0.0.1:9" };
	struct tlsrpt *r;
	char err[200];
	assert_int_equal(tlsrpt_new(&loop, &o, &r, err, sizeof err), 0);
	enum { N = 20000 };
	struct counter_arg a = { r, "threads.example", N, N / 4 };
	struct counter_arg b = { r, "Threads.Example.", N / 2, N / 10 };
	pthread_t t1, t2;
	assert_int_equal(pthread_create(&t1, NULL, counter, &a), 0);
	assert_int_equal(pthread_create(&t2, NULL, counter, &b), 0);
	tlsrpt_count(r, NULL);
	struct tlsrpt_eval invalid = { .domain = "not a domain", .success = 1 };
	tlsrpt_count(r, &invalid);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	free_and_drain(&loop, r);
	assert_int_equal(uv_loop_close(&loop), 0);
	/* the one partial of the current period */
	char spool[500], cmd[1200], path[900] = "";
	snprintf(spool, sizeof spool, "%s/spool", dir);
	snprintf(cmd, sizeof cmd, "find '%s' -name '*.json' > '%s/found'", spool, tmpdir);
	assert_int_equal(system(cmd), 0);
	snprintf(cmd, sizeof cmd, "%s/found", tmpdir);
	char *found = slurp(cmd, NULL);
	assert_non_null(found);
	int lines = 0;
	for (char *c = found; *c; c++)
		lines += *c == '\n';
	assert_int_equal(lines, 1);
	snprintf(path, sizeof path, "%.*s", (int)strcspn(found, "\n"), found);
	free(found);
	assert_non_null(strstr(path, "/threads.example/proxy.example-"));
	uint64_t ok, failed;
	read_counts(path, &ok, &failed, NULL, 0);
	assert_int_equal(ok, N + N / 2);
	assert_int_equal(failed, N / 4 + N / 10);
	assert_true(json_valid(path));
}

/* TLSRPT_DOMAINS_MAX at its edge, the documented 10000 (written out): an instance counting
 * 10000 domains in one period writes a partial for every one of them and logs nothing
 * dropped; one counting 10001 keeps the first 10000 (each written), drops the 10001st (no
 * partial) and logs event=tlsrpt_spool action=dropped domains=1 when it writes the period;
 * a domain it keeps is still counted after the drop. (One period of 366 days, written by
 * tlsrpt_free; the spool on /dev/shm when it has room, as 20,001 fsync'd partials are
 * slow on a disk.) */
#define DOMAINS_EDGE 10000

/* The entries of dir that do not start with '.'; the first one's name in first. */
static int dir_entries(const char *dir, char *first, size_t cap)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.') {
			if (first && n == 0)
				snprintf(first, cap, "%s", e->d_name);
			n++;
		}
	closedir(d);
	return n;
}

static void domains_run(int n)
{
	char dir[400], cmd[1000];
	struct statvfs vfs; /* each partial takes a page there: 10001 of them, 40 MiB */
	if (statvfs("/dev/shm", &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize >= 256u << 20)
		snprintf(dir, sizeof dir, "/dev/shm/stp-unit-tlsrpt-%ld-domains-%d", (long)getpid(), n);
	else
		snprintf(dir, sizeof dir, "%s/domains-%d", tmpdir, n);
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct tlsrpt_opts o = { .dir = dir, .submitter = "proxy.example",
				 .interval_s = 366 * 86400, .resolver = "127.0.0.1:9" };
	struct tlsrpt *r;
	char err[200], name[64];
	assert_int_equal(tlsrpt_new(&loop, &o, &r, err, sizeof err), 0);
	for (int i = 0; i < n; i++) {
		snprintf(name, sizeof name, "d%d.example", i);
		struct tlsrpt_eval e = { .domain = name, .type = TLSRPT_NONE, .success = 1 };
		tlsrpt_count(r, &e);
	}
	struct tlsrpt_eval again = { .domain = "d0.example", .type = TLSRPT_NONE, .success = 1 };
	tlsrpt_count(r, &again);
	capture_start();
	free_and_drain(&loop, r);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	/* one period directory, a directory with a partial per kept domain */
	char spool[500], pdir[900], ddir[1000], first[300] = "";
	snprintf(spool, sizeof spool, "%s/spool", dir);
	assert_int_equal(dir_entries(spool, first, sizeof first), 1);
	snprintf(pdir, sizeof pdir, "%s/%s", spool, first);
	int kept = dir_entries(pdir, NULL, 0);
	int want = n < DOMAINS_EDGE ? n : DOMAINS_EDGE;
	if (kept != want)
		print_message("%d domains counted: %d written (want %d)\n", n, kept, want);
	assert_int_equal(kept, want);
	for (int i = 0; i < n; i++) {
		snprintf(ddir, sizeof ddir, "%s/d%d.example", pdir, i);
		int parts = count_files(ddir, "", ".json", NULL, 0);
		if (parts != (i < DOMAINS_EDGE ? 1 : 0))
			fail_msg("d%d.example: %d partials", i, parts);
	}
	snprintf(ddir, sizeof ddir, "%s/d0.example", pdir);
	assert_int_equal(count_files(ddir, "", ".json", first, sizeof first), 1);
	char path[1400];
	snprintf(path, sizeof path, "%s/%s", ddir, first);
	uint64_t ok, failed;
	read_counts(path, &ok, &failed, NULL, 0);
	assert_int_equal(ok, 2);
	if (n <= DOMAINS_EDGE)
		assert_int_equal(log_count("event=tlsrpt_spool", "action=dropped", NULL), 0);
	else
		assert_int_equal(log_count("event=tlsrpt_spool", "action=dropped", "domains=1 ",
					   "evaluations=0", NULL), 1);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

static void test_domains_max_edge(void **state)
{
	(void)state;
	domains_run(DOMAINS_EDGE);
	domains_run(DOMAINS_EDGE + 1);
}

/* TLSRPT_REPORT_MAX on the way back from the spool: a finished period's partial of exactly
 * 16777216 octets is read and merged into the report; one of 16777217 is set aside
 * (.bad-NAME, "partial set aside", File too large) and makes no report. */
static int big_read_done(void *arg)
{
	const char *dir = arg;
	return count_files(dir, "!atmax.example!", ".json", NULL, 0) > 0 &&
	       log_count("event=tlsrpt ", "domain=atmax.example", NULL) > 0 &&
	       log_count("event=tlsrpt_spool", "domain=overmax.example", "partial set aside",
			 NULL) > 0;
}

static void test_live_report_max_read_back(void **state)
{
	(void)state;
	char dir[400], pdir[700], ddir[900], path[1000];
	live_dir("bigread", dir, sizeof dir);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t begin = ts.tv_sec - ts.tv_sec % INTERVAL - 4 * INTERVAL, end = begin + INTERVAL;
	snprintf(pdir, sizeof pdir, "%s/spool/%" PRId64 "-%" PRId64, dir, begin, end);
	static const struct { const char *domain, *file; size_t size; } parts[] = {
		{ "atmax.example", "x.example-1-a.json", REPORT_EDGE },
		{ "overmax.example", "x.example-1-b.json", REPORT_EDGE + 1 },
	};
	for (size_t i = 0; i < 2; i++) {
		snprintf(ddir, sizeof ddir, "mkdir -p '%s/%s'", pdir, parts[i].domain);
		assert_int_equal(system(ddir), 0);
		snprintf(path, sizeof path, "%s/%s/%s", pdir, parts[i].domain, parts[i].file);
		char *text = padded_report(parts[i].domain, begin, end, 5, parts[i].size);
		FILE *f = fopen(path, "w");
		assert_non_null(f);
		assert_int_equal(fwrite(text, 1, parts[i].size, f), parts[i].size);
		assert_int_equal(fclose(f), 0);
		free(text);
	}
	uv_loop_t loop;
	uv_loop_init(&loop);
	capture_start();
	struct tlsrpt *r = make(&loop, dir, "m.example", 0);
	int met = run_until(&loop, big_read_done, dir, WAIT_MS);
	free_and_drain(&loop, r);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	if (!met)
		print_message("atmax report %d, overmax set aside %d\n",
			      count_files(dir, "!atmax.example!", ".json", NULL, 0),
			      log_count("event=tlsrpt_spool", "domain=overmax.example", NULL));
	assert_true(met);
	char name[600];
	snprintf(name, sizeof name, "%s/m.example!atmax.example!%" PRId64 "!%" PRId64 ".json", dir,
		 begin, end);
	uint64_t ok, failed;
	read_counts(name, &ok, &failed, NULL, 0);
	assert_int_equal(ok, 5);
	assert_int_equal(count_files(dir, "!overmax.example!", ".json", NULL, 0), 0);
	snprintf(ddir, sizeof ddir, "%s/overmax.example", pdir);
	assert_int_equal(count_files(ddir, ".bad-x.example-1-b", ".json", NULL, 0), 1);
	assert_int_equal(count_files(ddir, "", ".json", NULL, 0), 0);
	assert_int_equal(log_count("event=tlsrpt_spool", "domain=overmax.example",
				   "partial set aside", "File too large", NULL), 1);
	assert_int_equal(log_count("domain=atmax.example", "set aside", NULL), 0);
}

struct report_wait {
	const char *dir, *domain;
};

static int report_there(void *arg)
{
	const struct report_wait *w = arg;
	char sub[300];
	snprintf(sub, sizeof sub, "!%s!", w->domain);
	return count_files(w->dir, sub, ".json", NULL, 0) > 0 &&
	       log_count("event=tlsrpt ", w->domain, NULL) > 0;
}

/* One instance, evaluations from two threads: the report of the period has the RFC name,
 * exact counts, a .gz of the same text; the spool is done; one log line, result=written
 * (the domain publishes no TLSRPT record). */
static void test_live_report(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400], name[300], path[800], gz[900];
	live_dir("one", dir, sizeof dir);
	capture_start();
	struct tlsrpt *r = make(&loop, dir, "proxy.example", 0);
	int64_t begin = align_period(&loop);
	struct counter_arg a = { r, "norpt.example", 500, 100 }, b = a;
	pthread_t t1, t2;
	pthread_create(&t1, NULL, counter, &a);
	pthread_create(&t2, NULL, counter, &b);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	struct report_wait w = { dir, "norpt.example" };
	int met = run_until(&loop, report_there, &w, WAIT_MS);
	free_and_drain(&loop, r);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_true(met);
	snprintf(name, sizeof name, "proxy.example!norpt.example!%" PRId64 "!%" PRId64 ".json",
		 begin, begin + INTERVAL);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	snprintf(gz, sizeof gz, "%s.gz", path);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(stat(gz, &st), 0);
	assert_int_equal(count_files(dir, "!norpt.example!", ".json", NULL, 0), 1);
	uint64_t ok, failed;
	read_counts(path, &ok, &failed, NULL, 0);
	assert_int_equal(ok, 1000);
	assert_int_equal(failed, 200);
	char *text = slurp(path, NULL);
	assert_non_null(strstr(text, "\"failed-session-count\": 200"));
	char range[200], s[32], e[32];
	tlsrpt_format_time(begin, s, sizeof s);
	tlsrpt_format_time(begin + INTERVAL, e, sizeof e);
	snprintf(range, sizeof range, "\"start-datetime\": \"%s\",\n    \"end-datetime\": \"%s\"",
		 s, e);
	assert_non_null(strstr(text, range));
	assert_non_null(strstr(text, "\"organization-name\": \"Example Org\""));
	free(text);
	assert_true(json_valid(path));
	gunzip_equals(gz, path);
	/* the spool: done, no partial left */
	char pdir[700];
	snprintf(pdir, sizeof pdir, "%s/spool/%" PRId64 "-%" PRId64 "/norpt.example", dir, begin,
		 begin + INTERVAL);
	assert_int_equal(count_files(pdir, "", ".json", NULL, 0), 0);
	snprintf(path, sizeof path, "%s/done", pdir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(log_count("event=tlsrpt ", "domain=norpt.example", NULL), 1);
	assert_int_equal(log_count("event=tlsrpt ", "domain=norpt.example", "sessions_ok=1000",
				   "sessions_failed=200", "result=written",
				   "no TLSRPT record at _smtp._tls.norpt.example", NULL), 1);
}

/* Two replicas sharing a directory (each holding a merge lock 300 ms): exactly one report
 * per domain and period, with the counts of both; one log line. */
static void test_live_replicas(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400], first[300], path[800];
	live_dir("replicas", dir, sizeof dir);
	capture_start();
	struct tlsrpt *a = make(&loop, dir, "a.example", 300);
	struct tlsrpt *b = make(&loop, dir, "b.example", 300);
	int64_t begin = align_period(&loop);
	count_n(a, "shared.example", 3, 0);
	count_n(b, "shared.example", 4, 1);
	count_n(a, "only-a.example", 2, 0);
	struct report_wait w = { dir, "shared.example" }, w2 = { dir, "only-a.example" };
	int met = run_until(&loop, report_there, &w, WAIT_MS);
	met = met && run_until(&loop, report_there, &w2, WAIT_MS);
	run_until(&loop, NULL, NULL, 1000); /* the other replica's merge is over by then */
	free_and_drain(&loop, a);
	free_and_drain(&loop, b);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_true(met);
	assert_int_equal(count_files(dir, "!shared.example!", ".json", first, sizeof first), 1);
	assert_int_equal(count_files(dir, "!shared.example!", ".json.gz", NULL, 0), 1);
	char want_a[300], want_b[300];
	snprintf(want_a, sizeof want_a, "a.example!shared.example!%" PRId64 "!%" PRId64 ".json",
		 begin, begin + INTERVAL);
	snprintf(want_b, sizeof want_b, "b.example!shared.example!%" PRId64 "!%" PRId64 ".json",
		 begin, begin + INTERVAL);
	assert_true(strcmp(first, want_a) == 0 || strcmp(first, want_b) == 0);
	snprintf(path, sizeof path, "%s/%s", dir, first);
	uint64_t ok, failed;
	read_counts(path, &ok, &failed, NULL, 0);
	assert_int_equal(ok, 7);
	assert_int_equal(failed, 1);
	assert_int_equal(count_files(dir, "!only-a.example!", ".json", NULL, 0), 1);
	assert_int_equal(log_count("event=tlsrpt ", "domain=shared.example", NULL), 1);
	assert_int_equal(log_count("event=tlsrpt ", "domain=shared.example", "sessions_ok=7",
				   "sessions_failed=1", NULL), 1);
	assert_int_equal(log_count("event=tlsrpt ", "domain=only-a.example", NULL), 1);
	char pdir[800];
	snprintf(pdir, sizeof pdir, "%s/spool/%" PRId64 "-%" PRId64 "/shared.example", dir, begin,
		 begin + INTERVAL);
	assert_int_equal(count_files(pdir, "", ".json", NULL, 0), 0);
}

static int two_reports(void *arg)
{
	(void)arg;
	return log_count("event=tlsrpt ", "domain=restart.example", NULL) == 2;
}

/* A replica freed mid-period leaves its counts in the spool; the other one merges them
 * into the period's one report. */
static void test_live_freed_mid_period(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400], first[300], path[800], pdir[800];
	live_dir("freed", dir, sizeof dir);
	capture_start();
	struct tlsrpt *a = make(&loop, dir, "a.example", 0);
	struct tlsrpt *b = make(&loop, dir, "b.example", 0);
	int64_t begin = align_period(&loop);
	count_n(a, "half.example", 2, 1);
	free_and_drain(&loop, a); /* mid-period */
	snprintf(pdir, sizeof pdir, "%s/spool/%" PRId64 "-%" PRId64 "/half.example", dir, begin,
		 begin + INTERVAL);
	int partial = count_files(pdir, "a.example-", ".json", NULL, 0);
	count_n(b, "half.example", 3, 0);
	struct report_wait w = { dir, "half.example" };
	int met = run_until(&loop, report_there, &w, WAIT_MS);
	free_and_drain(&loop, b);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_int_equal(partial, 1);
	assert_true(met);
	assert_int_equal(count_files(dir, "!half.example!", ".json", first, sizeof first), 1);
	assert_non_null(strstr(first, "b.example!half.example!"));
	snprintf(path, sizeof path, "%s/%s", dir, first);
	uint64_t ok, failed;
	read_counts(path, &ok, &failed, NULL, 0);
	assert_int_equal(ok, 5);
	assert_int_equal(failed, 1);
	assert_int_equal(count_files(pdir, "", ".json", NULL, 0), 0);
}

/* A process stopped mid-period, nothing running at the period's end: the next start
 * merges its counts; then a late partial for that period (after the done marker) is
 * reported separately, with a unique-id suffix, at the next start. */
static void test_live_restart_and_late(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400], path[900], pdir[700], first[300];
	live_dir("restart", dir, sizeof dir);
	capture_start();
	struct tlsrpt *a = make(&loop, dir, "a.example", 0);
	int64_t begin = align_period(&loop);
	count_n(a, "restart.example", 4, 0);
	free_and_drain(&loop, a);
	snprintf(pdir, sizeof pdir, "%s/spool/%" PRId64 "-%" PRId64 "/restart.example", dir, begin,
		 begin + INTERVAL);
	int partial = count_files(pdir, "", ".json", NULL, 0);
	/* past the period's end and its grace time, nothing runs */
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	run_until(&loop, NULL, NULL,
		  (begin + INTERVAL) * 1000 + GRACE_MS + 300 -
			  ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000));
	int early = count_files(dir, "!restart.example!", ".json", NULL, 0);
	struct tlsrpt *c = make(&loop, dir, "c.example", 0);
	struct report_wait w = { dir, "restart.example" };
	int met = run_until(&loop, report_there, &w, WAIT_MS);
	free_and_drain(&loop, c);
	/* a late partial: 9 sessions of the same period, after the done marker */
	struct tlsrpt_domain d;
	tlsrpt_domain_init(&d, "restart.example");
	struct tlsrpt_eval e = { .domain = "restart.example", .type = TLSRPT_NONE, .success = 1 };
	for (int i = 0; i < 9; i++)
		tlsrpt_domain_add(&d, &e);
	struct tlsrpt_report_meta m = { "Late", "postmaster@late.example", "x@late.example", begin,
					begin + INTERVAL };
	char *json;
	size_t len;
	assert_int_equal(tlsrpt_report_json(&m, &d, &json, &len), 0);
	tlsrpt_domain_free(&d);
	snprintf(path, sizeof path, "%s/late.example-1-late.json", pdir);
	spit(path, json);
	free(json);
	snprintf(path, sizeof path, "%s/broken-1-x.json", pdir); /* set aside, never merged */
	spit(path, "{\"not\": \"a report\"}");
	struct tlsrpt *dd = make(&loop, dir, "d.example", 0);
	int met2 = run_until(&loop, two_reports, NULL, WAIT_MS);
	free_and_drain(&loop, dd);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_int_equal(partial, 1);
	assert_int_equal(early, 0);
	assert_true(met);
	assert_true(met2);
	/* two reports: the period's (4 sessions) and the late one's (9, unique-id suffix) */
	assert_int_equal(count_files(dir, "!restart.example!", ".json", NULL, 0), 2);
	char name[300];
	snprintf(name, sizeof name, "c.example!restart.example!%" PRId64 "!%" PRId64 ".json", begin,
		 begin + INTERVAL);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	uint64_t ok, failed;
	read_counts(path, &ok, &failed, NULL, 0);
	assert_int_equal(ok, 4);
	snprintf(name, sizeof name, "d.example!restart.example!%" PRId64 "!%" PRId64 "!", begin,
		 begin + INTERVAL);
	assert_int_equal(count_files(dir, name, ".json", first, sizeof first), 1);
	/* SUBMITTER!DOMAIN!BEGIN!END!UNIQUE.json, UNIQUE: letters and digits */
	const char *uid = first + strlen(name);
	assert_int_equal(strspn(uid, "0123456789abcdef"), 16);
	assert_string_equal(uid + 16, ".json");
	snprintf(path, sizeof path, "%s/%s", dir, first);
	read_counts(path, &ok, &failed, NULL, 0);
	assert_int_equal(ok, 9);
	assert_int_equal(count_files(pdir, "", ".json", NULL, 0), 0);
	assert_int_equal(count_files(pdir, ".bad-broken", ".json", NULL, 0), 1);
	assert_int_equal(log_count("event=tlsrpt_spool", "partial set aside", NULL), 1);
}

/* ---- submission */

static const char https_py[] =
	"import http.server, os, ssl, sys, threading\n"
	"log_path, ready, cert, key, store = sys.argv[1:6]\n"
	"lock = threading.Lock()\n"
	"n = [0]\n"
	"class H(http.server.BaseHTTPRequestHandler):\n"
	"    protocol_version = 'HTTP/1.1'\n"
	"    def log_message(self, *a):\n"
	"        pass\n"
	"    def do_POST(self):\n"
	"        body = self.rfile.read(int(self.headers.get('Content-Length', '0')))\n"
	"        with lock:\n"
	"            n[0] += 1\n"
	"            k = n[0]\n"
	"        path = os.path.join(store, 'post-%d.bin' % k)\n"
	"        with open(path + '.tmp', 'wb') as f:\n"
	"            f.write(body)\n"
	"        os.rename(path + '.tmp', path)\n"
	"        with lock, open(log_path, 'a') as f:\n"
	"            f.write('%d %s type=%s host=%s len=%d\\n' % (k, self.path,\n"
	"                self.headers.get('Content-Type'), self.headers.get('Host'), len(body)))\n"
	"        self.send_response(500 if self.path == '/fail' else 202)\n"
	"        self.send_header('Content-Length', '0')\n"
	"        self.end_headers()\n"
	"ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
	"ctx.load_cert_chain(cert, key)\n"
	"srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
	"srv.daemon_threads = True\n"
	"srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n"
	"with open(ready + '.tmp', 'w') as f:\n"
	"    f.write('%d\\n' % srv.server_address[1])\n"
	"os.rename(ready + '.tmp', ready)\n"
	"srv.serve_forever()\n";

/* Forks argv with stdout/stderr into errf; waits for the port in ready. */
static pid_t spawn(char *const argv[], const char *ready, const char *errf, int *port)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	int64_t until = now_ms() + 15000;
	struct stat st;
	while (stat(ready, &st) != 0) {
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid || now_ms() > until) {
			kill(pid, SIGTERM);
			waitpid(pid, NULL, 0);
			return -1;
		}
		usleep(10000);
	}
	char *t = slurp(ready, NULL);
	*port = t ? atoi(t) : 0;
	free(t);
	return *port > 0 ? pid : -1;
}

static void stop_child(pid_t *pid)
{
	if (*pid > 0) {
		kill(*pid, SIGTERM);
		waitpid(*pid, NULL, 0);
		*pid = -1;
	}
}

static int group_setup(void **state)
{
	(void)state;
	log_setup(LOG_INFO, 0);
	if (tls_global_init() != 0 || fixture_setup("tlsrpt") != 0)
		return -1;
	L.sink_pid = L.https_pid = L.wrong_pid = -1;
	struct stat st;
	if (!have_certs || stat("/usr/bin/python3", &st) != 0) {
		snprintf(L.why, sizeof L.why, "no certificates or no /usr/bin/python3");
		return 0;
	}
	snprintf(L.ca, sizeof L.ca, "%s/ca.pem", certdir);
	/* the SMTP relay */
	char ready[400], errf[400];
	snprintf(L.sink_store, sizeof L.sink_store, "%s/sink", tmpdir);
	snprintf(ready, sizeof ready, "%s/sink.ready", tmpdir);
	snprintf(errf, sizeof errf, "%s/sink.err", tmpdir);
	char *sink_argv[] = { "/usr/bin/python3", "tests/integration/tools/smtp_sink.py", "--ready",
			      ready, "--store", L.sink_store, "--listen", "127.0.0.1:0", NULL };
	L.sink_pid = spawn(sink_argv, ready, errf, &L.sink_port);
	if (L.sink_pid < 0) {
		snprintf(L.why, sizeof L.why, "smtp_sink.py did not start (see %s)", errf);
		return 0;
	}
	/* the HTTPS server */
	char script[400], cert[700], key[700];
	snprintf(script, sizeof script, "%s/https.py", tmpdir);
	spit(script, https_py);
	snprintf(L.https_store, sizeof L.https_store, "%s/posts", tmpdir);
	mkdir(L.https_store, 0700);
	snprintf(L.https_log, sizeof L.https_log, "%s/posts.log", tmpdir);
	snprintf(ready, sizeof ready, "%s/https.ready", tmpdir);
	snprintf(errf, sizeof errf, "%s/https.err", tmpdir);
	snprintf(cert, sizeof cert, "%s/server.pem", certdir);
	snprintf(key, sizeof key, "%s/server.key", certdir);
	char *https_argv[] = { "/usr/bin/python3", script, L.https_log, ready, cert, key,
			       L.https_store, NULL };
	L.https_pid = spawn(https_argv, ready, errf, &L.https_port);
	if (L.https_pid < 0) {
		snprintf(L.why, sizeof L.why, "the HTTPS server did not start (see %s)", errf);
		return 0;
	}
	/* one more with a certificate for another name (wrong.example) */
	char wlog[400], wstore[400];
	snprintf(wlog, sizeof wlog, "%s/wrong.log", tmpdir);
	snprintf(wstore, sizeof wstore, "%s/wrong", tmpdir);
	mkdir(wstore, 0700);
	snprintf(ready, sizeof ready, "%s/wrong.ready", tmpdir);
	snprintf(errf, sizeof errf, "%s/wrong.err", tmpdir);
	snprintf(cert, sizeof cert, "%s/wrongname.pem", certdir);
	snprintf(key, sizeof key, "%s/wrongname.key", certdir);
	char *wrong_argv[] = { "/usr/bin/python3", script, wlog, ready, cert, key, wstore, NULL };
	L.wrong_pid = spawn(wrong_argv, ready, errf, &L.wrong_port);
	if (L.wrong_pid < 0) {
		snprintf(L.why, sizeof L.why, "the second HTTPS server did not start (see %s)", errf);
		return 0;
	}
	/* DNS: the _smtp._tls records */
	char body[400], zone[1500], env[400], cmd[2000];
	snprintf(body, sizeof body, "%s/zone.body", tmpdir);
	snprintf(zone, sizeof zone,
		 "_smtp._tls.rpt IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@rpt.example,\" "
		 "\"https://localhost:%d/tlsrpt\"\n"
		 "_smtp._tls.rpt IN TXT \"v=spf1 -all\"\n"
		 "_smtp._tls.fail IN TXT \"v=TLSRPTv1; rua=https://localhost:%d/fail\"\n"
		 "_smtp._tls.broken IN TXT \"v=TLSRPTv1; rua=ftp://x.example/\"\n"
		 "_smtp._tls.badcert IN TXT \"v=TLSRPTv1; rua=https://localhost:%d/tlsrpt\"\n",
		 L.https_port, L.https_port, L.wrong_port);
	spit(body, zone);
	snprintf(L.dns_dir, sizeof L.dns_dir, "%s/dns", tmpdir);
	snprintf(env, sizeof env, "%s/dns.env", tmpdir);
	snprintf(errf, sizeof errf, "%s/dns.err", tmpdir);
	snprintf(cmd, sizeof cmd,
		 "bash tests/integration/dns_lib.sh start '%s' example. '%s' unsigned %ld >'%s' 2>'%s'",
		 L.dns_dir, body, (long)getpid(), env, errf);
	if (system(cmd) != 0) {
		snprintf(L.why, sizeof L.why, "dns_lib.sh start failed (see %s)", errf);
		return 0;
	}
	char *e = slurp(env, NULL);
	for (char *line = e ? strtok(e, "\n") : NULL; line; line = strtok(NULL, "\n")) {
		if (!strncmp(line, "DNS_RESOLVER=", 13))
			snprintf(L.resolver, sizeof L.resolver, "%s", line + 13);
		else if (!strncmp(line, "DNS_PID=", 8))
			L.dns_pid = atol(line + 8);
	}
	free(e);
	if (!L.resolver[0] || L.dns_pid <= 0) {
		snprintf(L.why, sizeof L.why, "dns_lib.sh start printed no DNS_RESOLVER/PID");
		return 0;
	}
	L.ok = 1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	stop_child(&L.sink_pid);
	stop_child(&L.https_pid);
	stop_child(&L.wrong_pid);
	if (L.dns_pid > 0) {
		char cmd[600];
		snprintf(cmd, sizeof cmd, "bash tests/integration/dns_lib.sh stop '%s'", L.dns_dir);
		if (system(cmd) != 0)
			kill((pid_t)L.dns_pid, SIGTERM);
	}
	char cmd[200]; /* test_domains_max_edge's spools, left there when it failed */
	snprintf(cmd, sizeof cmd, "rm -rf /dev/shm/stp-unit-tlsrpt-%ld-*", (long)getpid());
	if (system(cmd) != 0)
		return -1;
	return fixture_teardown();
}

static void need_servers(void)
{
	if (!L.ok)
		fail_msg("no test servers: %s", L.why);
}

/* The value of header name in the header block of msg, unfolded (CRLF before WSP
 * removed), in out; 0 when absent. */
static int header(const char *msg, const char *name, char *out, size_t cap)
{
	const char *end = strstr(msg, "\r\n\r\n");
	size_t nl = strlen(name);
	for (const char *l = msg; l && l < end; l = strstr(l, "\r\n") ? strstr(l, "\r\n") + 2 : NULL) {
		if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
			const char *v = l + nl + 1;
			while (*v == ' ')
				v++;
			size_t o = 0;
			while (*v && o + 1 < cap) {
				if (v[0] == '\r' && v[1] == '\n') {
					if (v[2] != ' ' && v[2] != '\t')
						break;
					v += 2;
					continue;
				}
				out[o++] = *v++;
			}
			out[o] = '\0';
			return 1;
		}
	}
	return 0;
}

static size_t b64_decode(const char *in, size_t n, uint8_t *out)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		const char *p = in[i] ? strchr(tab, in[i]) : NULL;
		if (!p)
			continue; /* CRLF, '=' */
		acc = acc << 6 | (uint32_t)(p - tab);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	return o;
}

static int sink_msg(void *arg)
{
	char path[400];
	snprintf(path, sizeof path, "%s/msg-1.json", L.sink_store);
	struct stat st;
	return stat(path, &st) == 0 && report_there(arg);
}

/* mailto: through the relay and https: POSTs for one domain's report; a 500 from an
 * https: rua is result=failed; an unusable record is result=written. */
static void test_live_submit(void **state)
{
	(void)state;
	need_servers();
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400], name[300], path[800], gzname[400];
	live_dir("submit", dir, sizeof dir);
	capture_start();
	struct tlsrpt *r = make(&loop, dir, "proxy.example", 0);
	int64_t begin = align_period(&loop);
	count_n(r, "rpt.example", 5, 2);
	count_n(r, "fail.example", 1, 0);
	count_n(r, "broken.example", 1, 0);
	count_n(r, "badcert.example", 1, 0);
	struct report_wait w = { dir, "rpt.example" };
	int met = run_until(&loop, sink_msg, &w, WAIT_MS);
	struct report_wait w2 = { dir, "fail.example" }, w3 = { dir, "broken.example" };
	met = met && run_until(&loop, report_there, &w2, WAIT_MS);
	met = met && run_until(&loop, report_there, &w3, WAIT_MS);
	struct report_wait w4 = { dir, "badcert.example" };
	met = met && run_until(&loop, report_there, &w4, WAIT_MS);
	free_and_drain(&loop, r);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_true(met);
	snprintf(name, sizeof name, "proxy.example!rpt.example!%" PRId64 "!%" PRId64 ".json", begin,
		 begin + INTERVAL);
	snprintf(gzname, sizeof gzname, "%s.gz", name);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	char report_id[200];
	uint64_t ok, failed;
	read_counts(path, &ok, &failed, report_id, sizeof report_id);
	assert_int_equal(ok, 5);
	assert_int_equal(failed, 2);
	/* the message: envelope, header fields, structure, the attachment */
	char env[400];
	snprintf(env, sizeof env, "%s/msg-1.json", L.sink_store);
	char *envelope = slurp(env, NULL);
	assert_non_null(envelope);
	assert_non_null(strstr(envelope, "\"mail_from\": \"postmaster@proxy.example\""));
	assert_non_null(strstr(envelope, "\"rcpt_tos\": [\"tlsrpt@rpt.example\"]"));
	assert_non_null(strstr(envelope, "\"helo\": \"proxy.example\""));
	free(envelope);
	char eml[400], v[1000], want[600];
	snprintf(eml, sizeof eml, "%s/msg-1.eml", L.sink_store);
	char *msg = slurp(eml, NULL);
	assert_non_null(msg);
	assert_true(header(msg, "Subject", v, sizeof v));
	snprintf(want, sizeof want, "Report Domain: rpt.example Submitter: proxy.example "
				    "Report-ID: <%s>", report_id);
	assert_string_equal(v, want);
	assert_true(header(msg, "TLS-Report-Domain", v, sizeof v));
	assert_string_equal(v, "rpt.example");
	assert_true(header(msg, "TLS-Report-Submitter", v, sizeof v));
	assert_string_equal(v, "proxy.example");
	assert_true(header(msg, "From", v, sizeof v));
	assert_string_equal(v, "postmaster@proxy.example");
	assert_true(header(msg, "To", v, sizeof v));
	assert_string_equal(v, "tlsrpt@rpt.example");
	assert_true(header(msg, "Date", v, sizeof v));
	assert_true(header(msg, "Message-ID", v, sizeof v));
	assert_true(header(msg, "MIME-Version", v, sizeof v));
	assert_true(header(msg, "Content-Type", v, sizeof v));
	assert_non_null(strstr(v, "multipart/report; report-type=\"tlsrpt\";"));
	char *bq = strstr(v, "boundary=\""), bnd[80];
	assert_non_null(bq);
	bq += 10;
	snprintf(bnd, sizeof bnd, "%.*s", (int)strcspn(bq, "\""), bq);
	char delim[120];
	snprintf(delim, sizeof delim, "\r\n--%s\r\n", bnd);
	char *part = strstr(msg, delim);
	assert_non_null(part); /* the text part */
	part = strstr(part + 1, delim);
	assert_non_null(part); /* the report */
	part += strlen(delim);
	assert_true(header(part, "Content-Type", v, sizeof v));
	assert_string_equal(v, "application/tlsrpt+gzip");
	assert_true(header(part, "Content-Transfer-Encoding", v, sizeof v));
	assert_string_equal(v, "base64");
	assert_true(header(part, "Content-Disposition", v, sizeof v));
	snprintf(want, sizeof want, "attachment; filename=\"%s\"", gzname);
	assert_string_equal(v, want);
	char *data = strstr(part, "\r\n\r\n") + 4;
	char closing[120];
	snprintf(closing, sizeof closing, "--%s--\r\n", bnd);
	char *dend = strstr(data, closing);
	assert_non_null(dend);
	uint8_t *gzbuf = malloc((size_t)(dend - data));
	size_t glen = b64_decode(data, (size_t)(dend - data), gzbuf);
	char gzpath[800];
	snprintf(gzpath, sizeof gzpath, "%s/attachment.gz", tmpdir);
	FILE *f = fopen(gzpath, "wb");
	fwrite(gzbuf, 1, glen, f);
	fclose(f);
	free(gzbuf);
	gunzip_equals(gzpath, path);
	free(msg);
	/* Python's MIME parser agrees on the structure */
	char cmd[4000];
	snprintf(cmd, sizeof cmd,
		 "/usr/bin/python3 -c 'import email, gzip, sys\n"
		 "m = email.message_from_binary_file(open(sys.argv[1], \"rb\"))\n"
		 "assert m.get_content_type() == \"multipart/report\", m.get_content_type()\n"
		 "assert m.get_param(\"report-type\") == \"tlsrpt\"\n"
		 "p = m.get_payload()\n"
		 "assert len(p) == 2 and p[0].get_content_type() == \"text/plain\"\n"
		 "assert p[1].get_content_type() == \"application/tlsrpt+gzip\"\n"
		 "assert p[1].get_filename() == sys.argv[3], p[1].get_filename()\n"
		 "assert gzip.decompress(p[1].get_payload(decode=True)) == open(sys.argv[2], \"rb\").read()\n"
		 "' '%s' '%s' '%s'",
		 eml, path, gzname);
	assert_int_equal(system(cmd), 0);
	/* the POSTs: /tlsrpt (202: sent) and /fail (500: failed), gzipped reports */
	char *posts = slurp(L.https_log, NULL);
	assert_non_null(posts);
	char line[300];
	snprintf(line, sizeof line, " /tlsrpt type=application/tlsrpt+gzip host=localhost:%d len=",
		 L.https_port);
	assert_non_null(strstr(posts, line));
	assert_non_null(strstr(posts, " /fail type=application/tlsrpt+gzip"));
	int idx = 0;
	for (char *l = strtok(posts, "\n"); l; l = strtok(NULL, "\n"))
		if (strstr(l, " /tlsrpt "))
			idx = atoi(l);
	free(posts);
	assert_true(idx > 0);
	char body[500];
	snprintf(body, sizeof body, "%s/post-%d.bin", L.https_store, idx);
	gunzip_equals(body, path);
	/* the log lines */
	assert_int_equal(log_count("event=tlsrpt ", "domain=rpt.example", "result=sent",
				   "rua=mailto:tlsrpt@rpt.example,https://localhost:", "sessions_ok=5",
				   "sessions_failed=2", NULL), 1);
	assert_int_equal(log_count("event=tlsrpt ", "domain=fail.example", "result=failed",
				   "HTTP 500", NULL), 1);
	assert_int_equal(log_count("event=tlsrpt ", "domain=broken.example", "result=written",
				   "none of the 1 rua URIs", NULL), 1);
	/* a certificate for another name: no request is sent */
	assert_int_equal(log_count("event=tlsrpt ", "domain=badcert.example", "result=failed",
				   "certificate-host-mismatch", NULL), 1);
	char wlog[400];
	snprintf(wlog, sizeof wlog, "%s/wrong.log", tmpdir);
	assert_null(slurp(wlog, NULL));
}

/* The relay refuses connections: the mailto: rua fails (result=failed, why in the
 * detail), the https: one is still sent; without a relay, mailto: is skipped. */
static void test_live_relay_down(void **state)
{
	(void)state;
	need_servers();
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400], dir2[400], relay[64];
	live_dir("relaydown", dir, sizeof dir);
	live_dir("norelay", dir2, sizeof dir2);
	int port = free_port();
	snprintf(relay, sizeof relay, "127.0.0.1:%d", port);
	capture_start();
	struct tlsrpt_opts o = { .dir = dir, .submitter = "proxy.example", .interval_s = INTERVAL,
				 .resolver = L.resolver, .ca = L.ca, .relay = relay,
				 .timeout_ms = 5000, .grace_ms = GRACE_MS };
	struct tlsrpt *r, *r2;
	char err[300];
	assert_int_equal(tlsrpt_new(&loop, &o, &r, err, sizeof err), 0);
	o.dir = dir2;
	o.relay = NULL;
	assert_int_equal(tlsrpt_new(&loop, &o, &r2, err, sizeof err), 0);
	align_period(&loop);
	count_n(r, "rpt.example", 1, 0);
	count_n(r2, "rpt.example", 2, 0);
	struct report_wait w = { dir, "rpt.example" }, w2 = { dir2, "rpt.example" };
	int met = run_until(&loop, report_there, &w, WAIT_MS);
	met = met && run_until(&loop, report_there, &w2, WAIT_MS);
	free_and_drain(&loop, r);
	free_and_drain(&loop, r2);
	capture_stop();
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_true(met);
	char refused[200];
	snprintf(refused, sizeof refused,
		 "mailto:tlsrpt@rpt.example: failed: relay: connect 127.0.0.1 port %d: "
		 "Connection refused; https://localhost:", port);
	assert_int_equal(log_count("event=tlsrpt ", "domain=rpt.example", "sessions_ok=1",
				   "result=failed", refused, "/tlsrpt: sent (HTTP 202)", NULL), 1);
	assert_int_equal(log_count("event=tlsrpt ", "domain=rpt.example", "sessions_ok=2",
				   "result=sent", "mailto:tlsrpt@rpt.example: not sent (no tlsrpt_relay)",
				   NULL), 1);
}

/* tlsrpt_new refuses bad options with a message. */
static void test_new_errors(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	char dir[400], file[500];
	live_dir("opts", dir, sizeof dir);
	snprintf(file, sizeof file, "%s/file", tmpdir);
	spit(file, "x");
	struct {
		struct tlsrpt_opts o;
		const char *err;
	} cases[] = {
		{ { .submitter = "p.example" }, "tlsrpt_dir" },
		{ { .dir = dir }, "submitter" },
		{ { .dir = dir, .submitter = "p/x" }, "submitter" },
		{ { .dir = dir, .submitter = "p.example", .contact = "a b@c" }, "contact" },
		{ { .dir = dir, .submitter = "p.example", .contact = "nobody" }, "contact" },
		{ { .dir = dir, .submitter = "p.example", .relay = "nohostport" }, "tlsrpt_relay" },
		{ { .dir = dir, .submitter = "p.example", .resolver = "dns.example" }, "resolver" },
		{ { .dir = dir, .submitter = "p.example", .ca = "/nonexistent/ca.pem" }, "ca" },
		{ { .dir = dir, .submitter = "p.example", .trust_anchor = "/nonexistent" },
		  "trust anchor" },
		{ { .dir = file, .submitter = "p.example" }, "tlsrpt_dir" },
		{ { .dir = dir, .submitter = "p.example", .helo = "bad helo" }, "helo" },
		{ { .dir = dir, .submitter = "p.example", .interval_s = 400 * 86400ULL },
		  "interval" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct tlsrpt *r = (struct tlsrpt *)1;
		char err[300] = "";
		int rc = tlsrpt_new(&loop, &cases[i].o, &r, err, sizeof err);
		if (rc != -EINVAL || r != NULL || !strstr(err, cases[i].err))
			print_message("[%zu] rc %d, err \"%s\"\n", i, rc, err);
		assert_int_equal(rc, -EINVAL);
		assert_null(r);
		assert_non_null(strstr(err, cases[i].err));
	}
	tlsrpt_free(NULL);
	tlsrpt_count(NULL, NULL);
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_txt),
		cmocka_unit_test(test_rua_max_edge),
		cmocka_unit_test(test_json_golden),
		cmocka_unit_test(test_json_read_back),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_parse_report),
		cmocka_unit_test(test_report_max_edge),
		cmocka_unit_test(test_report_id),
		cmocka_unit_test(test_new_errors),
		cmocka_unit_test(test_count_threads),
		cmocka_unit_test(test_domains_max_edge),
		cmocka_unit_test(test_live_report_max_read_back),
		cmocka_unit_test(test_live_report),
		cmocka_unit_test(test_live_replicas),
		cmocka_unit_test(test_live_freed_mid_period),
		cmocka_unit_test(test_live_restart_and_late),
		cmocka_unit_test(test_live_submit),
		cmocka_unit_test(test_live_relay_down),
	};
	return cmocka_run_group_tests_name("tlsrpt", tests, group_setup, group_teardown);
}
