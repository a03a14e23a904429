/* test_dns.c - the DNS resolver (dns.h): the rdata parsers and the reply parser table by
 * table, then live lookups on a uv loop against a private NSD serving a DNSSEC-signed
 * "example." zone (started by tests/integration/dns_lib.sh from the group setup; a server
 * that does not start fails every live test, it never skips them): data and SECURE with
 * the zone's trust anchor, INSECURE without one, BOGUS for an RRset whose RRSIG was
 * corrupted and for a wrong anchor, NXDOMAIN and NODATA, CNAMEs, TXT concatenation and
 * truncation (over TCP), TLSA, the null MX; a forwarder that never answers (DNS_TIMEOUT);
 * callbacks never from inside dns_query; dns_cancel and dns_free before the answer and
 * from inside callbacks. Every loop ends with nothing left on it (uv_loop_close == 0).
 * Nothing sleeps: waits run the loop until their condition, with a deadline. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "dns.h"
#include "unit_net.h"
#include "unit_zone.h"

#define WAIT_MS 10000

static char tmpdir[256]; /* the group's temp directory (no certificates needed) */

/* ---- rdata parsers ----------------------------------------------------------------- */

struct mx_case {
	const char *name;
	const char *rdata;
	size_t len;
	int rc;
	uint16_t pref;
	const char *host;
};

#define R(s) s, sizeof(s) - 1

static void test_parse_mx(void **state)
{
	(void)state;
	static char long_name[300], label63[80], label64[80], too_long[300];
	/* long_name: 253 characters, 63.63.63.61 (wire 255 with the root); too_long: 254 */
	size_t o = 0;
	const int labs[] = { 63, 63, 63, 61 };
	long_name[o++] = 0;
	long_name[o++] = 10;
	for (int l = 0; l < 4; l++) {
		long_name[o++] = (char)labs[l];
		memset(long_name + o, 'a', (size_t)labs[l]);
		o += (size_t)labs[l];
	}
	long_name[o++] = 0;
	size_t long_len = o;
	o = 0;
	too_long[o++] = 0;
	too_long[o++] = 1;
	for (int l = 0; l < 4; l++) {
		int n = l < 3 ? 63 : 62;
		too_long[o++] = (char)n;
		memset(too_long + o, 'b', (size_t)n);
		o += (size_t)n;
	}
	too_long[o++] = 0;
	size_t too_long_len = o;
	label63[0] = 0, label63[1] = 5, label63[2] = 63;
	memset(label63 + 3, 'c', 63);
	memcpy(label63 + 66, "\x07" "example" "\x00", 9);
	label64[0] = 0, label64[1] = 5, label64[2] = 64;
	memset(label64 + 3, 'c', 64);
	memcpy(label64 + 67, "\x07" "example" "\x00", 9);

	const struct mx_case cases[] = {
		{ "plain", R("\x00\x0a\x03mx1\x07" "example\x00"), 0, 10, "mx1.example" },
		{ "upper case folded", R("\x01\x00\x03MX1\x07" "ExAmPlE\x00"), 0, 256, "mx1.example" },
		{ "null MX", R("\x00\x00\x00"), 0, 0, "" },
		{ "digits and inner hyphen", R("\xff\xff\x05" "a-1-b\x02" "x9\x00"), 0, 65535, "a-1-b.x9" },
		{ "IDN A-label", R("\x00\x01\x0d" "xn--bcher-kva\x02" "ch\x00"), 0, 1, "xn--bcher-kva.ch" },
		{ "label of 63", label63, 66 + 9, 0, 5, NULL },
		{ "name of 253", long_name, long_len, 0, 10, NULL },
		{ "empty", R(""), -EINVAL, 0, NULL },
		{ "preference only", R("\x00\x0a"), -EINVAL, 0, NULL },
		{ "one octet", R("\x00"), -EINVAL, 0, NULL },
		{ "no root label", R("\x00\x0a\x03mx1"), -EINVAL, 0, NULL },
		{ "label past the end", R("\x00\x0a\x09mx1\x00"), -EINVAL, 0, NULL },
		{ "octets after the name", R("\x00\x0a\x03mx1\x00\x00"), -EINVAL, 0, NULL },
		{ "null MX with more", R("\x00\x00\x00\x03mx1\x00"), -EINVAL, 0, NULL },
		{ "compression pointer", R("\x00\x0a\x03mx1\xc0\x0c"), -EINVAL, 0, NULL },
		{ "extended label type", R("\x00\x0a\x41mx1\x00"), -EINVAL, 0, NULL },
		{ "label of 64", label64, 67 + 9, -EINVAL, 0, NULL },
		{ "name of 254", too_long, too_long_len, -EINVAL, 0, NULL },
		{ "underscore", R("\x00\x0a\x04mx_1\x00"), -EINVAL, 0, NULL },
		{ "space", R("\x00\x0a\x04mx 1\x00"), -EINVAL, 0, NULL },
		{ "dot inside a label", R("\x00\x0a\x05mx1.x\x00"), -EINVAL, 0, NULL },
		{ "NUL inside a label", R("\x00\x0a\x04mx\x00" "1\x00"), -EINVAL, 0, NULL },
		{ "8-bit octet", R("\x00\x0a\x03m\xe9x\x00"), -EINVAL, 0, NULL },
		{ "leading hyphen", R("\x00\x0a\x04-mx1\x00"), -EINVAL, 0, NULL },
		{ "trailing hyphen", R("\x00\x0a\x04mx1-\x00"), -EINVAL, 0, NULL },
		{ "empty label inside", R("\x00\x0a\x03mx1\x00\x03" "abc\x00"), -EINVAL, 0, NULL },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct mx_case *c = &cases[i];
		struct dns_mx mx;
		memset(&mx, 0x55, sizeof mx);
		int rc = dns_parse_mx((const uint8_t *)c->rdata, c->len, &mx);
		int ok = rc == c->rc;
		if (ok && rc == 0) {
			ok = mx.pref == c->pref && memchr(mx.host, 0, sizeof mx.host);
			if (ok && c->host)
				ok = strcmp(mx.host, c->host) == 0;
		}
		if (!ok) {
			print_message("[%s] rc %d (want %d), pref %u, host \"%.60s\"\n", c->name, rc,
				      c->rc, mx.pref, rc == 0 ? mx.host : "");
			failures++;
		}
	}
	struct dns_mx mx;
	assert_int_equal(dns_parse_mx((const uint8_t *)long_name, long_len, &mx), 0);
	assert_int_equal(strlen(mx.host), 253);
	assert_int_equal(dns_parse_mx((const uint8_t *)label63, 66 + 9, &mx), 0);
	assert_int_equal(strlen(mx.host), 63 + 8);
	assert_int_equal(dns_parse_mx(NULL, 5, &mx), -EINVAL);
	assert_int_equal(failures, 0);
}

struct txt_case {
	const char *name;
	const char *rdata;
	size_t len;
	int rc;
	const char *text; /* rc 0 */
	size_t text_len;
};

static void test_parse_txt(void **state)
{
	(void)state;
	const struct txt_case cases[] = {
		{ "one string", R("\x05hello"), 0, R("hello") },
		{ "strings concatenated", R("\x08v=STSv1;\x0b id=abc123;"), 0, R("v=STSv1; id=abc123;") },
		{ "empty string", R("\x00"), 0, R("") },
		{ "empty strings around", R("\x00\x03" "abc\x00"), 0, R("abc") },
		{ "NUL octet kept", R("\x03" "a\x00" "b"), 0, R("a\0b") },
		{ "255 octets", NULL, 0, 0, NULL, 255 },
		{ "no rdata", R(""), -EINVAL, NULL, 0 },
		{ "length past the end", R("\x05" "abc"), -EINVAL, NULL, 0 },
		{ "second length past the end", R("\x03" "abc\x02" "x"), -EINVAL, NULL, 0 },
		{ "length octet alone at the end", R("\x03" "abc\x01"), -EINVAL, NULL, 0 },
	};
	uint8_t max[256];
	max[0] = 255;
	memset(max + 1, 'z', 255);
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct txt_case *c = &cases[i];
		const uint8_t *rd = c->rdata ? (const uint8_t *)c->rdata : max;
		size_t len = c->rdata ? c->len : sizeof max;
		char out[300];
		size_t outlen = 12345;
		int rc = dns_parse_txt(rd, len, out, sizeof out, &outlen);
		int ok = rc == c->rc;
		if (ok && rc == 0) {
			ok = outlen == c->text_len && out[outlen] == '\0' &&
			     (!c->text || memcmp(out, c->text, outlen) == 0) &&
			     (c->text || (out[0] == 'z' && out[254] == 'z'));
		}
		if (!ok) {
			print_message("[%s] rc %d (want %d), outlen %zu\n", c->name, rc, c->rc, outlen);
			failures++;
		}
	}
	assert_int_equal(failures, 0);

	/* Cut like snprintf: cap - 1 octets and a NUL, the full length reported. */
	char small[5];
	size_t outlen;
	assert_int_equal(dns_parse_txt((const uint8_t *)"\x04" "abcd\x03" "efg", 9, small,
				       sizeof small, &outlen), 0);
	assert_int_equal(outlen, 7);
	assert_string_equal(small, "abcd");
	assert_int_equal(dns_parse_txt((const uint8_t *)"\x02" "ab\x03" "efg", 7, small,
				       sizeof small, &outlen), 0);
	assert_string_equal(small, "abef");
	assert_int_equal(dns_parse_txt((const uint8_t *)"\x02" "ab", 3, NULL, 0, &outlen), 0);
	assert_int_equal(outlen, 2);
	/* A malformed record is refused whatever the cap. */
	assert_int_equal(dns_parse_txt((const uint8_t *)"\x02" "ab\x09" "efg", 7, small, 3, &outlen),
			 -EINVAL);
}

static void test_parse_tlsa(void **state)
{
	(void)state;
	uint8_t rd[3 + 100];
	rd[0] = 3, rd[1] = 1, rd[2] = 1;
	for (int i = 0; i < 100; i++)
		rd[3 + i] = (uint8_t)i;
	struct dns_tlsa t;
	assert_int_equal(dns_parse_tlsa(rd, 3 + 32, &t), 0);
	assert_int_equal(t.usage, 3);
	assert_int_equal(t.selector, 1);
	assert_int_equal(t.mtype, 1);
	assert_int_equal(t.len, 32);
	assert_memory_equal(t.data, rd + 3, 32);
	assert_int_equal(dns_parse_tlsa(rd, 3 + 64, &t), 0); /* SHA-512 */
	assert_int_equal(t.len, 64);
	assert_memory_equal(t.data, rd + 3, 64);
	/* Longer data: the real length, the first 64 octets (the record is unusable). */
	assert_int_equal(dns_parse_tlsa(rd, 3 + 100, &t), 0);
	assert_int_equal(t.len, 100);
	assert_memory_equal(t.data, rd + 3, 64);
	assert_int_equal(dns_parse_tlsa(rd, 4, &t), 0);
	assert_int_equal(t.len, 1);
	for (size_t len = 0; len < 4; len++)
		assert_int_equal(dns_parse_tlsa(rd, len, &t), -EINVAL);
	assert_int_equal(dns_parse_tlsa(NULL, 40, &t), -EINVAL);
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(dns_status_name(DNS_OK), "ok");
	assert_string_equal(dns_status_name(DNS_NXDOMAIN), "nxdomain");
	assert_string_equal(dns_status_name(DNS_NODATA), "nodata");
	assert_string_equal(dns_status_name(DNS_SERVFAIL), "servfail");
	assert_string_equal(dns_status_name(DNS_TIMEOUT), "timeout");
	assert_string_equal(dns_status_name(DNS_ERROR), "error");
	assert_string_equal(dns_security_name(DNS_INSECURE), "insecure");
	assert_string_equal(dns_security_name(DNS_SECURE), "secure");
	assert_string_equal(dns_security_name(DNS_BOGUS), "bogus");
}

/* ---- reply packets ------------------------------------------------------------------- */

struct pkt {
	uint8_t b[8192];
	size_t n;
};

static void put(struct pkt *p, const void *d, size_t n)
{
	assert_true(p->n + n <= sizeof p->b);
	memcpy(p->b + p->n, d, n);
	p->n += n;
}
static void put16(struct pkt *p, unsigned v)
{
	uint8_t b[2] = { (uint8_t)(v >> 8), (uint8_t)v };
	put(p, b, 2);
}
static void put32(struct pkt *p, uint32_t v)
{
	put16(p, v >> 16);
	put16(p, v & 0xffff);
}
/* "a.b" as labels, then a pointer to ptr (> 0) or the root (0). */
static void put_name(struct pkt *p, const char *name, unsigned ptr)
{
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t n = dot ? (size_t)(dot - name) : strlen(name);
		uint8_t l = (uint8_t)n;
		put(p, &l, 1);
		put(p, name, n);
		name += n + (dot ? 1 : 0);
	}
	if (ptr)
		put16(p, 0xC000 | ptr);
	else
		put(p, "", 1);
}
static void hdr(struct pkt *p, unsigned rcode, unsigned an, unsigned ns)
{
	p->n = 0;
	put16(p, 0);
	put16(p, 0x8180 | rcode);
	put16(p, 1);
	put16(p, an);
	put16(p, ns);
	put16(p, 0);
}
/* type, class IN, ttl, rdlength at the returned offset (patched by rdlen_end). */
static size_t rr_head(struct pkt *p, unsigned type, uint32_t ttl)
{
	put16(p, type);
	put16(p, 1);
	put32(p, ttl);
	size_t at = p->n;
	put16(p, 0);
	return at;
}
static void rdlen_end(struct pkt *p, size_t at)
{
	size_t len = p->n - at - 2;
	p->b[at] = (uint8_t)(len >> 8);
	p->b[at + 1] = (uint8_t)len;
}

static void test_parse_reply(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_result r;
	size_t at;

	/* MX with compressed names, sorted; an RRSIG in between is ignored; smallest TTL. */
	hdr(&p, 0, 3, 0);
	put_name(&p, "example", 0); /* at 12 */
	put16(&p, 15), put16(&p, 1);
	put_name(&p, "", 12);
	at = rr_head(&p, 15, 100);
	put16(&p, 20);
	put_name(&p, "MX2", 12);
	rdlen_end(&p, at);
	put_name(&p, "", 12);
	at = rr_head(&p, 46, 7);
	put(&p, "\x00\x0f\x0d\x01", 4);
	rdlen_end(&p, at);
	put_name(&p, "", 12);
	at = rr_head(&p, 15, 50);
	put16(&p, 10);
	put_name(&p, "mx1", 12);
	rdlen_end(&p, at);
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_MX, &r), 0);
	assert_int_equal(r.status, DNS_OK);
	assert_int_equal(r.n, 2);
	assert_int_equal(r.u.mx[0].pref, 10);
	assert_string_equal(r.u.mx[0].host, "mx1.example");
	assert_int_equal(r.u.mx[1].pref, 20);
	assert_string_equal(r.u.mx[1].host, "mx2.example");
	assert_int_equal(r.ttl, 50);
	assert_string_equal(r.canonical, "");
	dns_result_release(&r);

	/* A CNAME chain; an A record of another name is not taken. */
	hdr(&p, 0, 4, 0);
	put_name(&p, "www.example", 0); /* "example" at 16 */
	put16(&p, 1), put16(&p, 1);
	put_name(&p, "", 12);
	at = rr_head(&p, 5, 300);
	size_t alias = p.n;
	put_name(&p, "Alias", 16);
	rdlen_end(&p, at);
	put_name(&p, "other", 16);
	at = rr_head(&p, 1, 300);
	put(&p, "\x09\x09\x09\x09", 4);
	rdlen_end(&p, at);
	put_name(&p, "", (unsigned)alias);
	at = rr_head(&p, 5, 40);
	put_name(&p, "final", 16);
	rdlen_end(&p, at);
	put_name(&p, "FINAL.example", 0);
	at = rr_head(&p, 1, 200);
	put(&p, "\x01\x02\x03\x04", 4);
	rdlen_end(&p, at);
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), 0);
	assert_int_equal(r.status, DNS_OK);
	assert_int_equal(r.n, 1);
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&r.u.addr[0];
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x01020304);
	assert_int_equal(sin->sin_port, 0);
	assert_string_equal(r.canonical, "final.example");
	assert_int_equal(r.ttl, 40);
	dns_result_release(&r);

	/* A CNAME loop. */
	hdr(&p, 0, 2, 0);
	put_name(&p, "a.example", 0); /* "example" at 14 */
	put16(&p, 1), put16(&p, 1);
	put_name(&p, "", 12);
	at = rr_head(&p, 5, 1);
	size_t b = p.n;
	put_name(&p, "b", 14);
	rdlen_end(&p, at);
	put_name(&p, "", (unsigned)b);
	at = rr_head(&p, 5, 1);
	put_name(&p, "", 12);
	rdlen_end(&p, at);
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), -EINVAL);
	assert_int_equal(r.status, DNS_ERROR);
	assert_int_equal(r.n, 0);
	dns_result_release(&r);

	/* NXDOMAIN: the negative TTL is min(SOA TTL, MINIMUM). */
	hdr(&p, 3, 0, 1);
	put_name(&p, "nope.example", 0); /* "example" at 17 */
	put16(&p, 1), put16(&p, 1);
	put_name(&p, "", 17);
	at = rr_head(&p, 6, 600);
	put_name(&p, "ns", 17);
	put_name(&p, "hostmaster", 17);
	put32(&p, 1), put32(&p, 3600), put32(&p, 600), put32(&p, 86400), put32(&p, 60);
	rdlen_end(&p, at);
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), 0);
	assert_int_equal(r.status, DNS_NXDOMAIN);
	assert_int_equal(r.n, 0);
	assert_int_equal(r.ttl, 60);
	dns_result_release(&r);
	/* ... the same with rcode 0 is NODATA. */
	p.b[3] = 0x80;
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), 0);
	assert_int_equal(r.status, DNS_NODATA);
	assert_int_equal(r.ttl, 60);
	dns_result_release(&r);
	/* ... SERVFAIL. */
	p.b[3] = 0x82;
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), 0);
	assert_int_equal(r.status, DNS_SERVFAIL);
	dns_result_release(&r);

	/* Only malformed records of the type: DNS_ERROR. */
	hdr(&p, 0, 1, 0);
	put_name(&p, "x.example", 0);
	put16(&p, 1), put16(&p, 1);
	put_name(&p, "", 12);
	at = rr_head(&p, 1, 1);
	put(&p, "\x01\x02\x03\x04\x05", 5);
	rdlen_end(&p, at);
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), 0);
	assert_int_equal(r.status, DNS_ERROR);
	assert_int_equal(r.n, 0);
	dns_result_release(&r);
	/* ... rdlength past the end of the packet. */
	p.b[p.n - 6] = 0x10;
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), -EINVAL);
	dns_result_release(&r);

	/* Names: a pointer to itself, a pointer forward, a truncated header. */
	hdr(&p, 0, 0, 0);
	put16(&p, 0xC000 | 12);
	put16(&p, 1), put16(&p, 1);
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), -EINVAL);
	dns_result_release(&r);
	hdr(&p, 0, 0, 0);
	put16(&p, 0xC000 | 14);
	put(&p, "\x00\x00\x01\x00\x01", 5);
	assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), -EINVAL);
	dns_result_release(&r);
	assert_int_equal(dns_parse_reply(p.b, 11, DNS_T_A, &r), -EINVAL);
	assert_int_equal(r.status, DNS_ERROR);
	dns_result_release(&r);
}

/* ---- live lookups ---------------------------------------------------------------------- */

#define SHA256_HEX "8a9b0a2d5f0e4cbb1f0e7ac1b1e8d1c0f2b9f3d4e5a6b7c8d9e0f1a2b3c4d5e6"

static struct {
	int ok;
	struct unit_zone z; /* z.why: why the server did not start */
	char bad_anchor[600];
} L;

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int group_setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/stp-unit-dns-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	char body[600], big[6000], tlsa_long[201];
	for (int i = 0; i < 100; i++) /* octets 0, 1, ..., 99 */
		snprintf(tlsa_long + 2 * i, 3, "%02x", i);
	snprintf(body, sizeof body, "%s/zone.body", tmpdir);
	size_t o = 0;
	for (int i = 0; i < 20; i++) /* 20 strings of 250: a 5000-octet TXT record */
		o += (size_t)snprintf(big + o, sizeof big - o, " \"%0250d\"", i);
	FILE *f = fopen(body, "w");
	if (!f)
		return -1;
	fprintf(f,
		"@ IN MX 20 mx2\n"
		"@ IN MX 10 mx1\n"
		"@ IN MX 30 MX3.EXAMPLE.\n"
		"mx1 IN A 192.0.2.1\n"
		"mx1 IN A 192.0.2.2\n"
		"mx1 IN AAAA 2001:db8::1\n"
		"mx2 IN A 192.0.2.3\n"
		"alias IN CNAME mx1\n"
		"chain IN CNAME alias\n"
		"txt IN TXT \"v=STSv1; \" \"id=20240101T000000;\"\n"
		"txt IN TXT \"hello\" \" \" \"world\"\n"
		"big IN TXT%s\n"
		"_25._tcp.mx1 IN TLSA 3 1 1 " SHA256_HEX "\n"
		"_25._tcp.mx2 IN TLSA 3 0 0 %s\n"
		"nullmx IN MX 0 .\n"
		"bogus IN A 192.0.2.66\n",
		big, tlsa_long);
	fclose(f);
	if (unit_zone_start(&L.z, tmpdir, body, "DNS_BOGUS_NAMES='bogus A'") != 0)
		return 0;
	/* A well-formed anchor for example. that matches no key of the zone. */
	snprintf(L.bad_anchor, sizeof L.bad_anchor, "%s/bad.anchor", tmpdir);
	write_file(L.bad_anchor, "example. IN DS 12345 13 2 "
				 "0000000000000000000000000000000000000000000000000000000000000000\n");
	L.ok = 1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	unit_zone_stop(&L.z);
	char cmd[400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void need_server(void)
{
	if (!L.ok)
		fail_msg("no DNS server: %s", L.z.why);
}

/* What a callback saw. */
struct got {
	int calls;
	int in_query; /* the callback ran while dns_query had not returned */
	int64_t at;
	struct dns_result r; /* txt pointers cleared; the texts are in txt[] */
	char txt[4][DNS_TXT_MAX + 1];
};

static int inside_query;

static void on_result(void *arg, const struct dns_result *r)
{
	struct got *g = arg;
	g->calls++;
	g->in_query = inside_query;
	g->at = now_ms();
	g->r = *r;
	for (size_t i = 0; i < DNS_RR_MAX; i++) {
		if (i < 4 && i < r->n && r->txt[i])
			memcpy(g->txt[i], r->txt[i], r->txt_len[i] + 1);
		g->r.txt[i] = NULL;
	}
}

static struct dns_query *query(struct dns *d, const char *name, int type, struct got *g)
{
	memset(g, 0, sizeof *g);
	inside_query = 1;
	struct dns_query *q = dns_query(d, name, type, on_result, g);
	inside_query = 0;
	if (!q)
		fail_msg("dns_query(%s, %d): NULL, errno %d", name, type, errno);
	return q;
}

static void tick(uv_timer_t *t)
{
	(void)t;
}

/* Runs the loop until *count >= want or ms pass; 1 when reached. */
static int run_until(uv_loop_t *loop, const int *count, int want, int ms)
{
	uv_timer_t guard;
	uv_timer_init(loop, &guard);
	uv_timer_start(&guard, tick, 20, 20);
	int64_t end = now_ms() + ms;
	while (*count < want && now_ms() < end)
		uv_run(loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&guard, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
	return *count >= want;
}

static void wait_for(uv_loop_t *loop, struct got *g, const char *what)
{
	if (!run_until(loop, &g->calls, 1, WAIT_MS))
		fail_msg("%s: no callback within %d ms", what, WAIT_MS);
	assert_int_equal(g->calls, 1);
	assert_int_equal(g->in_query, 0);
}

static struct dns *open_dns(uv_loop_t *loop, const char *resolver, const char *anchor,
			    uint64_t timeout_ms)
{
	assert_int_equal(uv_loop_init(loop), 0);
	struct dns_opts o = { .resolver = resolver, .trust_anchor = anchor,
			      .timeout_ms = timeout_ms };
	struct dns *d = NULL;
	char err[300] = "";
	int rc = dns_new(loop, &o, &d, err, sizeof err);
	if (rc != 0)
		fail_msg("dns_new: %d %s", rc, err);
	return d;
}

/* dns_free, then the loop must empty in one pass (close callbacks) and close. */
static void close_dns(uv_loop_t *loop, struct dns *d)
{
	dns_free(d);
	for (int i = 0; i < 3 && uv_loop_alive(loop); i++)
		uv_run(loop, UV_RUN_NOWAIT);
	assert_false(uv_loop_alive(loop));
	assert_int_equal(uv_loop_close(loop), 0);
}

static void expect(const struct got *g, enum dns_status st, enum dns_security sec, size_t n,
		   const char *what)
{
	if (g->r.status != st || g->r.security != sec || g->r.n != n)
		fail_msg("%s: %s/%s n=%zu (want %s/%s n=%zu) why_bogus \"%s\"", what,
			 dns_status_name(g->r.status), dns_security_name(g->r.security), g->r.n,
			 dns_status_name(st), dns_security_name(sec), n, g->r.why_bogus);
}

/* query + wait_for + expect: one lookup and its outcome. */
static void ask(uv_loop_t *loop, struct dns *d, const char *name, int type, struct got *g,
		enum dns_status st, enum dns_security sec, size_t n, const char *what)
{
	query(d, name, type, g);
	wait_for(loop, g, what);
	expect(g, st, sec, n, what);
}

/* DNS_RR_MAX at its edge: an answer of DNS_RR_MAX A records keeps them all, one more is
 * dropped (the first DNS_RR_MAX kept, in order; the answer is still DNS_OK). */
static void test_rr_max_edge(void **state)
{
	(void)state;
	static const unsigned counts[] = { DNS_RR_MAX - 1, DNS_RR_MAX, DNS_RR_MAX + 1 };
	for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
		struct pkt p;
		struct dns_result r;
		hdr(&p, 0, counts[i], 0);
		put_name(&p, "example", 0); /* at 12 */
		put16(&p, 1), put16(&p, 1);
		for (unsigned k = 0; k < counts[i]; k++) {
			put_name(&p, "", 12);
			size_t at = rr_head(&p, 1, 60);
			put32(&p, 0x0a000001 + k);
			rdlen_end(&p, at);
		}
		assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_A, &r), 0);
		assert_int_equal(r.status, DNS_OK);
		size_t want = counts[i] < DNS_RR_MAX ? counts[i] : DNS_RR_MAX;
		if (r.n != want)
			print_message("%u records: %zu kept, want %zu\n", counts[i], r.n, want);
		assert_int_equal(r.n, want);
		for (size_t k = 0; k < r.n; k++) {
			const struct sockaddr_in *sin = (const struct sockaddr_in *)&r.u.addr[k];
			assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x0a000001 + k);
		}
	}
}

/* DNS_TXT_MAX at its edge, the documented 4096 (docs/limits.md; written out, so that moving
 * the constant fails here): a TXT record of 4096 octets (its strings joined) is kept whole
 * and not flagged; one octet more is cut to its first 4096 octets and flagged truncated
 * (the answer is still DNS_OK). */
#define TXT_EDGE 4096
static void test_txt_max_edge(void **state)
{
	(void)state;
	static const size_t lens[] = { TXT_EDGE - 1, TXT_EDGE, TXT_EDGE + 1 };
	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		static struct pkt p;
		struct dns_result r;
		memset(&r, 0, sizeof r);
		hdr(&p, 0, 1, 0);
		put_name(&p, "example", 0); /* at 12 */
		put16(&p, DNS_T_TXT), put16(&p, 1);
		put_name(&p, "", 12);
		size_t at = rr_head(&p, DNS_T_TXT, 60);
		/* strings of up to 255 octets; octet k of the record is 'a' + k % 26 */
		for (size_t k = 0; k < lens[i];) {
			uint8_t n = (uint8_t)(lens[i] - k < 255 ? lens[i] - k : 255);
			put(&p, &n, 1);
			for (uint8_t c = 0; c < n; c++, k++) {
				uint8_t ch = (uint8_t)('a' + k % 26);
				put(&p, &ch, 1);
			}
		}
		rdlen_end(&p, at);
		assert_int_equal(dns_parse_reply(p.b, p.n, DNS_T_TXT, &r), 0);
		assert_int_equal(r.status, DNS_OK);
		assert_int_equal(r.n, 1);
		size_t want = lens[i] < TXT_EDGE ? lens[i] : TXT_EDGE;
		if (r.txt_len[0] != want || r.txt_trunc[0] != (lens[i] > TXT_EDGE))
			print_message("record of %zu: %zu kept (want %zu), truncated %d\n", lens[i],
				      r.txt_len[0], want, r.txt_trunc[0]);
		assert_int_equal(r.txt_len[0], want);
		assert_int_equal(r.txt_trunc[0], lens[i] > TXT_EDGE);
		assert_non_null(r.txt[0]);
		assert_int_equal(r.txt[0][want], '\0');
		for (size_t k = 0; k < want; k++)
			if (r.txt[0][k] != (char)('a' + k % 26))
				fail_msg("record of %zu: octet %zu is 0x%02x", lens[i], k,
					 (unsigned)(uint8_t)r.txt[0][k]);
		dns_result_release(&r);
	}
}

static void test_live_mx(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g;
	ask(&loop, d, "example.", DNS_T_MX, &g, DNS_OK, DNS_SECURE, 3, "MX example.");
	assert_int_equal(g.r.rrtype, DNS_T_MX);
	assert_int_equal(g.r.u.mx[0].pref, 10);
	assert_string_equal(g.r.u.mx[0].host, "mx1.example");
	assert_int_equal(g.r.u.mx[1].pref, 20);
	assert_string_equal(g.r.u.mx[1].host, "mx2.example");
	assert_int_equal(g.r.u.mx[2].pref, 30);
	assert_string_equal(g.r.u.mx[2].host, "mx3.example");
	assert_true(g.r.ttl > 0 && g.r.ttl <= 300);
	assert_string_equal(g.r.why_bogus, "");
	assert_string_equal(g.r.canonical, "");

	ask(&loop, d, "NullMX.Example", DNS_T_MX, &g, DNS_OK, DNS_SECURE, 1, "MX nullmx");
	assert_int_equal(g.r.u.mx[0].pref, 0);
	assert_string_equal(g.r.u.mx[0].host, "");
	close_dns(&loop, d);
}

/* A socket of the caller's that gets the number of an fd libunbound closed keeps working
 * while more queries run: a stale poll handle stopped or closed later acts on the fd number
 * (libuv's uv__platform_invalidate_fd) and removed the socket from epoll (a session's
 * upstream went deaf in the MTA-STS integration test before ev_del closed it at once). */
struct reuse {
	int reads;
	char data[16];
	size_t n;
};

static void reuse_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
	(void)h, (void)sz;
	static char buf[64];
	*b = uv_buf_init(buf, sizeof buf);
}

static void reuse_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
	struct reuse *r = st->data;
	if (n > 0 && r->n + (size_t)n <= sizeof r->data) {
		memcpy(r->data + r->n, b->base, (size_t)n);
		r->n += (size_t)n;
		r->reads++;
	}
}

#define REUSE_ROUNDS 6
#define REUSE_PAIRS 3

static void test_live_fd_reuse(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	/* no validation: new names must go to the server (a validator answers them from the
	 * zone's NSEC records it has cached: aggressive NSEC) */
	struct dns *d = open_dns(&loop, L.z.resolver, NULL, 0);
	static struct got g;
	static uv_tcp_t tcp[REUSE_ROUNDS * REUSE_PAIRS];
	static struct reuse r[REUSE_ROUNDS * REUSE_PAIRS];
	int peer[REUSE_ROUNDS * REUSE_PAIRS], lfd[REUSE_ROUNDS * REUSE_PAIRS], npairs = 0;
	char name[64];
	memset(r, 0, sizeof r);
	for (int round = 0; round < REUSE_ROUNDS; round++) {
		/* queries (new names: never from the cache): libunbound opens UDP sockets and
		 * closes them */
		for (int k = 0; k < 3; k++) {
			snprintf(name, sizeof name, "reuse-%d-a%d.example", round, k);
			query(d, name, k % 2 ? DNS_T_AAAA : DNS_T_A, &g);
			wait_for(&loop, &g, name);
		}
		/* the lowest free numbers now are the ones it closed: sockets of ours take them
		 * (each client socket made before its listener) */
		for (int k = 0; k < REUSE_PAIRS; k++, npairs++) {
			int cfd = socket(AF_INET, SOCK_STREAM, 0);
			lfd[npairs] = socket(AF_INET, SOCK_STREAM, 0);
			struct sockaddr_in sin = { .sin_family = AF_INET,
						   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
			socklen_t sl = sizeof sin;
			assert_int_equal(bind(lfd[npairs], (struct sockaddr *)&sin, sizeof sin), 0);
			assert_int_equal(listen(lfd[npairs], 1), 0);
			assert_int_equal(getsockname(lfd[npairs], (struct sockaddr *)&sin, &sl), 0);
			assert_int_equal(connect(cfd, (struct sockaddr *)&sin, sizeof sin), 0);
			peer[npairs] = accept(lfd[npairs], NULL, NULL);
			assert_true(peer[npairs] >= 0);
			assert_int_equal(uv_tcp_init(&loop, &tcp[npairs]), 0);
			assert_int_equal(uv_tcp_open(&tcp[npairs], cfd), 0);
			tcp[npairs].data = &r[npairs];
			assert_int_equal(uv_read_start((uv_stream_t *)&tcp[npairs], reuse_alloc,
						       reuse_read), 0);
		}
		uv_run(&loop, UV_RUN_NOWAIT); /* now in epoll */
		/* more queries while our sockets are watched: libunbound reuses its port
		 * structures with new sockets */
		for (int k = 0; k < 4; k++) {
			snprintf(name, sizeof name, "reuse-%d-%d.example", round, k);
			query(d, name, k % 2 ? DNS_T_AAAA : DNS_T_MX, &g);
			wait_for(&loop, &g, name);
		}
		/* every socket of ours still hears its peer */
		for (int k = 0; k < npairs; k++) {
			int before = r[k].reads;
			assert_int_equal(write(peer[k], "p", 1), 1);
			if (!run_until(&loop, &r[k].reads, before + 1, 2000))
				fail_msg("round %d: socket %d (fd %d) no longer receives after DNS "
					 "queries", round, k, tcp[k].io_watcher.fd);
		}
	}
	for (int k = 0; k < npairs; k++) {
		uv_close((uv_handle_t *)&tcp[k], NULL);
		close(peer[k]);
		close(lfd[k]);
	}
	uv_run(&loop, UV_RUN_NOWAIT);
	close_dns(&loop, d);
}

static void test_live_insecure_without_anchor(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, NULL, 0);
	static struct got g;
	ask(&loop, d, "example", DNS_T_MX, &g, DNS_OK, DNS_INSECURE, 3, "MX example without anchor");
	assert_string_equal(g.r.u.mx[0].host, "mx1.example");
	/* Without validation the corrupted RRSIG goes unnoticed: the record is handed out. */
	ask(&loop, d, "bogus.example", DNS_T_A, &g, DNS_OK, DNS_INSECURE, 1, "A bogus.example without anchor");
	close_dns(&loop, d);
}

static void test_live_bogus(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g;
	ask(&loop, d, "bogus.example", DNS_T_A, &g, DNS_SERVFAIL, DNS_BOGUS, 0, "A bogus.example");
	assert_true(strlen(g.r.why_bogus) > 0);
	print_message("why_bogus: %s\n", g.r.why_bogus);
	/* The rest of the zone still validates. */
	ask(&loop, d, "mx2.example", DNS_T_A, &g, DNS_OK, DNS_SECURE, 1, "A mx2.example");
	close_dns(&loop, d);

	/* An anchor that matches no key: everything under it is bogus. */
	d = open_dns(&loop, L.z.resolver, L.bad_anchor, 0);
	ask(&loop, d, "example", DNS_T_MX, &g, DNS_SERVFAIL, DNS_BOGUS, 0, "MX example, wrong anchor");
	assert_true(g.r.why_bogus[0] != '\0');
	close_dns(&loop, d);
}

static void test_live_negative(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g;
	ask(&loop, d, "nope.example", DNS_T_A, &g, DNS_NXDOMAIN, DNS_SECURE, 0, "A nope.example");
	assert_true(g.r.ttl > 0 && g.r.ttl <= 300);
	ask(&loop, d, "mx1.example", DNS_T_MX, &g, DNS_NODATA, DNS_SECURE, 0, "MX mx1.example");
	ask(&loop, d, "_25._tcp.nope.example", DNS_T_TLSA, &g, DNS_NXDOMAIN, DNS_SECURE, 0, "TLSA _25._tcp.nope.example");
	close_dns(&loop, d);
}

static void test_live_addresses(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g;
	ask(&loop, d, "mx1.example", DNS_T_A, &g, DNS_OK, DNS_SECURE, 2, "A mx1.example");
	uint32_t seen = 0;
	for (size_t i = 0; i < 2; i++) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&g.r.u.addr[i];
		assert_int_equal(sin->sin_family, AF_INET);
		assert_int_equal(sin->sin_port, 0);
		seen |= ntohl(sin->sin_addr.s_addr) == 0xC0000201 ? 1 : 0;
		seen |= ntohl(sin->sin_addr.s_addr) == 0xC0000202 ? 2 : 0;
	}
	assert_int_equal(seen, 3);

	ask(&loop, d, "mx1.example", DNS_T_AAAA, &g, DNS_OK, DNS_SECURE, 1, "AAAA mx1.example");
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&g.r.u.addr[0];
	assert_int_equal(sin6->sin6_family, AF_INET6);
	assert_int_equal(sin6->sin6_port, 0);
	struct in6_addr want;
	inet_pton(AF_INET6, "2001:db8::1", &want);
	assert_memory_equal(&sin6->sin6_addr, &want, 16);

	/* Two CNAMEs: the data of the last name, its name as canonical. */
	ask(&loop, d, "Chain.Example.", DNS_T_A, &g, DNS_OK, DNS_SECURE, 2, "A chain.example");
	assert_string_equal(g.r.canonical, "mx1.example");
	close_dns(&loop, d);
}

static void test_live_txt(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g;
	ask(&loop, d, "txt.example", DNS_T_TXT, &g, DNS_OK, DNS_SECURE, 2, "TXT txt.example");
	int sts = g.r.txt_len[0] == 28 ? 0 : 1;
	assert_int_equal(g.r.txt_len[sts], 28);
	assert_string_equal(g.txt[sts], "v=STSv1; id=20240101T000000;");
	assert_int_equal(g.r.txt_len[1 - sts], 11);
	assert_string_equal(g.txt[1 - sts], "hello world");
	assert_int_equal(g.r.txt_trunc[0] | g.r.txt_trunc[1], 0);

	/* 5000 octets: over TCP (truncated over UDP), cut to DNS_TXT_MAX and flagged. */
	ask(&loop, d, "big.example", DNS_T_TXT, &g, DNS_OK, DNS_SECURE, 1, "TXT big.example");
	assert_int_equal(g.r.txt_len[0], DNS_TXT_MAX);
	assert_int_equal(g.r.txt_trunc[0], 1);
	assert_int_equal(strlen(g.txt[0]), DNS_TXT_MAX);
	assert_memory_equal(g.txt[0] + 490, "0000000001", 10); /* the end of string 1 */
	close_dns(&loop, d);
}

static void test_live_tlsa(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g;
	ask(&loop, d, "_25._tcp.mx1.example", DNS_T_TLSA, &g, DNS_OK, DNS_SECURE, 1, "TLSA _25._tcp.mx1.example");
	const struct dns_tlsa *t = &g.r.u.tlsa[0];
	assert_int_equal(t->usage, 3);
	assert_int_equal(t->selector, 1);
	assert_int_equal(t->mtype, 1);
	assert_int_equal(t->len, 32);
	assert_int_equal(t->data[0], 0x8a);
	assert_int_equal(t->data[31], 0xe6);
	/* 100 octets of data (matching type 0): kept with its length, unusable. */
	ask(&loop, d, "_25._tcp.mx2.example", DNS_T_TLSA, &g, DNS_OK, DNS_SECURE, 1, "TLSA _25._tcp.mx2.example");
	assert_int_equal(g.r.u.tlsa[0].mtype, 0);
	assert_int_equal(g.r.u.tlsa[0].len, 100);
	assert_int_equal(g.r.u.tlsa[0].data[1], 1);
	assert_int_equal(g.r.u.tlsa[0].data[63], 63);
	close_dns(&loop, d);
}

/* libunbound answers .test itself, inside ub_resolve_event: the callback still comes later. */
static void test_live_deferred(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g;
	query(d, "foo.test", DNS_T_A, &g);
	assert_int_equal(g.calls, 0);
	wait_for(&loop, &g, "A foo.test");
	expect(&g, DNS_NXDOMAIN, DNS_INSECURE, 0, "A foo.test");
	/* Answers from the cache as well. */
	query(d, "mx2.example", DNS_T_A, &g);
	wait_for(&loop, &g, "A mx2.example");
	query(d, "mx2.example", DNS_T_A, &g);
	assert_int_equal(g.calls, 0);
	wait_for(&loop, &g, "A mx2.example (cached)");
	expect(&g, DNS_OK, DNS_SECURE, 1, "A mx2.example (cached)");
	close_dns(&loop, d);
}

static void test_timeout(void **state)
{
	(void)state;
	/* A forwarder that never answers: a UDP socket of ours, never read. */
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	socklen_t sl = sizeof sin;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	char resolver[40];
	snprintf(resolver, sizeof resolver, "127.0.0.1:%d", ntohs(sin.sin_port));
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, resolver, NULL, 300);
	static struct got g, g2;
	int64_t t0 = now_ms();
	query(d, "x.example", DNS_T_A, &g);
	query(d, "y.example", DNS_T_MX, &g2);
	wait_for(&loop, &g, "A x.example via a silent forwarder");
	int64_t took = g.at - t0;
	print_message("DNS_TIMEOUT after %lld ms\n", (long long)took);
	expect(&g, DNS_TIMEOUT, DNS_INSECURE, 0, "A x.example via a silent forwarder");
	assert_true(took >= 250 && took < 1000);
	wait_for(&loop, &g2, "MX y.example via a silent forwarder");
	expect(&g2, DNS_TIMEOUT, DNS_INSECURE, 0, "MX y.example via a silent forwarder");
	assert_int_equal(g2.r.rrtype, DNS_T_MX);
	close_dns(&loop, d);
	close(fd);
}

static void test_cancel(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct got g1, g2, g3;
	struct dns_query *q1 = query(d, "mx1.example", DNS_T_AAAA, &g1);
	dns_cancel(q1);
	/* The same question again: libunbound answers both at once; then another one. */
	query(d, "mx1.example", DNS_T_AAAA, &g2);
	wait_for(&loop, &g2, "AAAA mx1.example");
	expect(&g2, DNS_OK, DNS_SECURE, 1, "AAAA mx1.example");
	query(d, "mx2.example", DNS_T_A, &g3);
	wait_for(&loop, &g3, "A mx2.example");
	assert_int_equal(g1.calls, 0);
	/* A query already answered but not delivered yet (from the cache: in the ready list). */
	q1 = query(d, "mx2.example", DNS_T_A, &g1);
	dns_cancel(q1);
	query(d, "mx2.example", DNS_T_A, &g2);
	wait_for(&loop, &g2, "A mx2.example (cached)");
	assert_int_equal(g1.calls, 0);
	dns_cancel(NULL);
	close_dns(&loop, d);
}

/* Two queries answered together: the first callback cancels the other one. */
struct pair {
	struct dns *d;
	struct dns_query *q[2];
	int calls[2];
	int total;
	int free_in_cb;
};

static void pair_cb(struct pair *p, int i)
{
	p->calls[i]++;
	p->total++;
	if (p->free_in_cb)
		dns_free(p->d);
	else
		dns_cancel(p->q[1 - i]);
	dns_cancel(p->q[i]); /* its own, while running: a no-op */
}
static void pair_cb0(void *arg, const struct dns_result *r)
{
	(void)r;
	pair_cb(arg, 0);
}
static void pair_cb1(void *arg, const struct dns_result *r)
{
	(void)r;
	pair_cb(arg, 1);
}

static void test_cancel_in_callback(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct pair p;
	static struct got g;
	memset(&p, 0, sizeof p);
	p.d = d;
	p.q[0] = dns_query(d, "mx2.example", DNS_T_AAAA, pair_cb0, &p);
	p.q[1] = dns_query(d, "mx2.example", DNS_T_AAAA, pair_cb1, &p);
	assert_non_null(p.q[0]);
	assert_non_null(p.q[1]);
	assert_true(run_until(&loop, &p.total, 1, WAIT_MS));
	/* A later answer is the fence: the cancelled one would have come before it. */
	query(d, "mx1.example", DNS_T_A, &g);
	wait_for(&loop, &g, "A mx1.example");
	assert_int_equal(p.total, 1);
	close_dns(&loop, d);
}

static void test_free_in_callback(void **state)
{
	(void)state;
	need_server();
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	static struct pair p;
	memset(&p, 0, sizeof p);
	p.d = d;
	p.free_in_cb = 1;
	p.q[0] = dns_query(d, "mx1.example", DNS_T_TXT, pair_cb0, &p);
	p.q[1] = dns_query(d, "mx1.example", DNS_T_TXT, pair_cb1, &p);
	assert_non_null(p.q[0]);
	assert_non_null(p.q[1]);
	assert_true(run_until(&loop, &p.total, 1, WAIT_MS));
	/* dns_free ran in the callback: the loop empties and closes, one callback in all. */
	for (int i = 0; i < 3 && uv_loop_alive(&loop); i++)
		uv_run(&loop, UV_RUN_NOWAIT);
	assert_false(uv_loop_alive(&loop));
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_int_equal(p.total, 1);
}

static void test_free_with_open_queries(void **state)
{
	(void)state;
	need_server();
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	socklen_t sl = sizeof sin;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	char silent[40];
	snprintf(silent, sizeof silent, "127.0.0.1:%d", ntohs(sin.sin_port));

	static struct got g[6];
	uv_loop_t loop;
	struct dns *d = open_dns(&loop, L.z.resolver, L.z.anchor, 0);
	query(d, "example", DNS_T_MX, &g[0]);
	query(d, "txt.example", DNS_T_TXT, &g[1]);
	query(d, "foo.test", DNS_T_A, &g[2]); /* answered at once, not delivered yet */
	/* The other two are on the wire (libunbound sends from inside dns_query). */
	close_dns(&loop, d);
	for (int i = 0; i < 3; i++)
		assert_int_equal(g[i].calls, 0);

	d = open_dns(&loop, silent, NULL, 0);
	query(d, "a.example", DNS_T_A, &g[3]);
	query(d, "b.example", DNS_T_AAAA, &g[4]);
	query(d, "c.example", DNS_T_TLSA, &g[5]);
	close_dns(&loop, d);
	for (int i = 3; i < 6; i++)
		assert_int_equal(g[i].calls, 0);
	close(fd);
}

static void test_bad_arguments(void **state)
{
	(void)state;
	uv_loop_t loop;
	assert_int_equal(uv_loop_init(&loop), 0);
	const char *bad_resolvers[] = { "", "1.2.3", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
					"127.0.0.1:53x", "[::1", "[::1]x", "[::1]:", "mx.example",
					"127.0.0.1:-1", "[127.0.0.1:53" };
	for (size_t i = 0; i < sizeof bad_resolvers / sizeof bad_resolvers[0]; i++) {
		struct dns_opts o = { .resolver = bad_resolvers[i] };
		struct dns *d = (struct dns *)&o;
		char err[200] = "";
		int rc = dns_new(&loop, &o, &d, err, sizeof err);
		if (rc != -EINVAL || d != NULL || !err[0])
			fail_msg("resolver \"%s\": rc %d, err \"%s\"", bad_resolvers[i], rc, err);
	}
	char path[600], err[300];
	struct dns *d;
	snprintf(path, sizeof path, "%s/missing.anchor", tmpdir);
	struct dns_opts o = { .resolver = "127.0.0.1", .trust_anchor = path };
	assert_int_equal(dns_new(&loop, &o, &d, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "missing.anchor"));
	snprintf(path, sizeof path, "%s/garbage.anchor", tmpdir);
	write_file(path, "this is no trust anchor\n");
	o.trust_anchor = path;
	assert_int_equal(dns_new(&loop, &o, &d, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "garbage.anchor"));

	/* Good ones; then names and types dns_query refuses (NULL, EINVAL, no callback). */
	const char *good[] = { "127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:53", "[2001:db8::1]" };
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		struct dns_opts g = { .resolver = good[i], .trust_anchor = "/usr/share/dns/root.key" };
		err[0] = '\0';
		if (dns_new(&loop, &g, &d, err, sizeof err) != 0)
			fail_msg("resolver \"%s\": %s", good[i], err);
		dns_free(d);
	}
	/* No resolver: the nameservers of /etc/resolv.conf (an error when it cannot be read). */
	struct dns_opts sys = { .resolver = NULL };
	int want = access("/etc/resolv.conf", R_OK) == 0 ? 0 : -EINVAL;
	assert_int_equal(dns_new(&loop, &sys, &d, err, sizeof err), want);
	if (want == 0)
		dns_free(d);
	dns_free(NULL);

	struct dns_opts g = { .resolver = "127.0.0.1:9" };
	assert_int_equal(dns_new(&loop, &g, &d, err, sizeof err), 0);
	char label64[80], n253[254], n254[300], n253dot[300];
	snprintf(label64, sizeof label64, "%064d.example", 0);
	for (int i = 0; i < 253; i++)
		n253[i] = i % 2 ? '.' : 'a';
	n253[253] = '\0';
	snprintf(n254, sizeof n254, "b%s", n253);
	snprintf(n253dot, sizeof n253dot, "%s.", n253);
	const char *bad_names[] = { "", ".", "..", "a..b", ".a", "a.b..", "a b", "a/b", "a\\.b",
				    "\xc3\xa9.example", label64, n254, "a*.example", "a.example.." };
	static struct got got;
	memset(&got, 0, sizeof got);
	for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
		errno = 0;
		if (dns_query(d, bad_names[i], DNS_T_A, on_result, &got) != NULL || errno != EINVAL)
			fail_msg("name \"%.40s\" accepted (errno %d)", bad_names[i], errno);
	}
	const int bad_types[] = { 0, 2, 5, 6, 12, 33, 46, 255, -1, 65536 };
	for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++)
		assert_null(dns_query(d, "a.example", bad_types[i], on_result, &got));
	assert_null(dns_query(d, "a.example", DNS_T_A, NULL, &got));
	struct dns_query *q = dns_query(d, n253, DNS_T_A, on_result, &got); /* the longest */
	assert_non_null(q);
	dns_cancel(q);
	q = dns_query(d, n253dot, DNS_T_A, on_result, &got);
	assert_non_null(q);
	dns_cancel(q);
	close_dns(&loop, d);
	assert_int_equal(got.calls, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_mx),
		cmocka_unit_test(test_parse_txt),
		cmocka_unit_test(test_parse_tlsa),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_parse_reply),
		cmocka_unit_test(test_rr_max_edge),
		cmocka_unit_test(test_txt_max_edge),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_live_mx),
		cmocka_unit_test(test_live_fd_reuse),
		cmocka_unit_test(test_live_insecure_without_anchor),
		cmocka_unit_test(test_live_bogus),
		cmocka_unit_test(test_live_negative),
		cmocka_unit_test(test_live_addresses),
		cmocka_unit_test(test_live_txt),
		cmocka_unit_test(test_live_tlsa),
		cmocka_unit_test(test_live_deferred),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_cancel_in_callback),
		cmocka_unit_test(test_free_in_callback),
		cmocka_unit_test(test_free_with_open_queries),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
