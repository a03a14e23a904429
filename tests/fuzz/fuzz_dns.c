/* fuzz_dns.c - libFuzzer harness for the DNS parsers (dns.h).
 *
 * Byte 0 picks the parser (mod 4), byte 1 is a parameter, the rest is the input:
 * 0 dns_parse_mx, 1 dns_parse_txt (output capacity: byte 1, 0 meaning none), 2
 * dns_parse_tlsa, 3 dns_parse_reply (a whole packet; byte 1 picks the type asked: A, MX,
 * TXT, AAAA, TLSA). The input is copied to a buffer of its exact size, so ASan sees any
 * read past it. Besides memory safety (ASan/UBSan) it checks the contract. MX: 0 with a
 * host of at most 253 characters, lower case LDH labels that re-encode (with the
 * preference) to the input, ignoring case; else -EINVAL. TXT: 0 with the full length and
 * the text equal to an independent concatenation of the strings, cut like snprintf; else
 * -EINVAL exactly when the strings do not fill the input. TLSA: 0 with the fields, the
 * real length and the data's first octets, exactly when the input has 4 octets or more.
 * Reply: 0 or -EINVAL; records only with DNS_OK, at most DNS_RR_MAX; MX sorted by
 * preference with valid hosts; TXT buffers NUL-terminated at txt_len <= DNS_TXT_MAX;
 * addresses of the family asked; a NUL-terminated canonical name; nothing left after
 * dns_result_release. */
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "fuzz_util.h"

static struct dns_result res;

static int host_ok(const char *h)
{
	size_t n = strlen(h), label = 0;
	if (n > 253)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = h[i];
		if (c == '.') {
			if (label == 0 || h[i - 1] == '-')
				return 0;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
			if ((label == 0 && c == '-') || ++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return n == 0 || (label > 0 && h[n - 1] != '-');
}

static void check_mx(const uint8_t *in, size_t len)
{
	struct dns_mx mx;
	int rc = dns_parse_mx(in, len, &mx);
	if (rc != 0) {
		CHECK(rc == -EINVAL, "rc %d", rc);
		return;
	}
	CHECK(memchr(mx.host, 0, sizeof mx.host) != NULL, "host not terminated");
	CHECK(host_ok(mx.host), "host \"%s\"", mx.host);
	/* Re-encode: the preference and the name's labels, the root last. */
	uint8_t wire[2 + 256];
	size_t o = 0;
	wire[o++] = (uint8_t)(mx.pref >> 8);
	wire[o++] = (uint8_t)mx.pref;
	const char *p = mx.host;
	while (*p) {
		const char *dot = strchr(p, '.');
		size_t l = dot ? (size_t)(dot - p) : strlen(p);
		wire[o++] = (uint8_t)l;
		memcpy(wire + o, p, l);
		o += l;
		p += l + (dot ? 1 : 0);
	}
	wire[o++] = 0;
	CHECK(o == len, "re-encoded %zu octets of %zu", o, len);
	for (size_t i = 0; i < len; i++) {
		uint8_t a = in[i], b = wire[i];
		if (i >= 2 && a >= 'A' && a <= 'Z')
			a = (uint8_t)(a + 32);
		CHECK(a == b, "octet %zu differs", i);
	}
}

static void check_txt(const uint8_t *in, size_t len, size_t cap)
{
	/* The model: walk the strings. */
	static char want[65536];
	size_t total = 0, i = 0;
	int ok = len > 0;
	while (ok && i < len) {
		size_t c = in[i++];
		if (c > len - i) {
			ok = 0;
			break;
		}
		memcpy(want + total, in + i, c);
		total += c;
		i += c;
	}
	char *out = cap ? malloc(cap) : NULL;
	CHECK(!cap || out, "malloc");
	size_t outlen = 0;
	int rc = dns_parse_txt(in, len, out, cap, &outlen);
	if (!ok) {
		CHECK(rc == -EINVAL, "rc %d for a malformed record", rc);
	} else {
		CHECK(rc == 0, "rc %d for a well-formed record", rc);
		CHECK(outlen == total, "outlen %zu, want %zu", outlen, total);
		if (cap) {
			size_t k = total < cap - 1 ? total : cap - 1;
			CHECK(memcmp(out, want, k) == 0 && out[k] == '\0', "text differs (%zu)", k);
		}
	}
	free(out);
}

static void check_tlsa(const uint8_t *in, size_t len)
{
	struct dns_tlsa t;
	int rc = dns_parse_tlsa(in, len, &t);
	if (len < 4) {
		CHECK(rc == -EINVAL, "rc %d for %zu octets", rc, len);
		return;
	}
	CHECK(rc == 0, "rc %d", rc);
	CHECK(t.usage == in[0] && t.selector == in[1] && t.mtype == in[2], "fields");
	CHECK(t.len == len - 3, "len %u of %zu", t.len, len - 3);
	size_t k = len - 3 < DNS_TLSA_DATA_MAX ? len - 3 : DNS_TLSA_DATA_MAX;
	CHECK(memcmp(t.data, in + 3, k) == 0, "data");
}

static void check_reply(const uint8_t *in, size_t len, int type)
{
	int rc = dns_parse_reply(in, len, type, &res);
	CHECK(rc == 0 || rc == -EINVAL, "rc %d", rc);
	CHECK(rc == 0 || res.status == DNS_ERROR, "rc %d with status %d", rc, res.status);
	CHECK(res.status >= DNS_OK && res.status <= DNS_ERROR && res.status != DNS_TIMEOUT,
	      "status %d", res.status);
	CHECK(res.n <= DNS_RR_MAX, "n %zu", res.n);
	CHECK(res.status == DNS_OK ? res.n > 0 : res.n == 0, "status %s with n %zu",
	      dns_status_name(res.status), res.n);
	CHECK(res.rrtype == type, "rrtype %d", res.rrtype);
	CHECK(memchr(res.canonical, 0, sizeof res.canonical) != NULL, "canonical not terminated");
	for (size_t i = 0; i < res.n; i++) {
		switch (type) {
		case DNS_T_MX:
			CHECK(host_ok(res.u.mx[i].host), "mx host \"%s\"", res.u.mx[i].host);
			CHECK(i == 0 || res.u.mx[i - 1].pref <= res.u.mx[i].pref, "MX not sorted");
			break;
		case DNS_T_TXT:
			CHECK(res.txt[i] != NULL, "txt[%zu] NULL", i);
			CHECK(res.txt_len[i] <= DNS_TXT_MAX, "txt_len %zu", res.txt_len[i]);
			CHECK(res.txt[i][res.txt_len[i]] == '\0', "txt[%zu] not terminated", i);
			CHECK(!res.txt_trunc[i] || res.txt_len[i] == DNS_TXT_MAX, "trunc flag");
			break;
		case DNS_T_A:
			CHECK(res.u.addr[i].ss_family == AF_INET, "family %d", res.u.addr[i].ss_family);
			break;
		case DNS_T_AAAA:
			CHECK(res.u.addr[i].ss_family == AF_INET6, "family %d", res.u.addr[i].ss_family);
			break;
		case DNS_T_TLSA:
			CHECK(res.u.tlsa[i].len >= 1, "tlsa len 0");
			break;
		}
	}
	if (type != DNS_T_TXT || res.status != DNS_OK)
		for (size_t i = 0; i < DNS_RR_MAX; i++)
			CHECK(res.txt[i] == NULL, "txt[%zu] set for %s", i, dns_status_name(res.status));
	dns_result_release(&res);
	CHECK(res.n == 0, "n after release");
	for (size_t i = 0; i < DNS_RR_MAX; i++)
		CHECK(res.txt[i] == NULL, "txt[%zu] after release", i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	static const int types[] = { DNS_T_A, DNS_T_MX, DNS_T_TXT, DNS_T_AAAA, DNS_T_TLSA };
	size_t len = size - 2;
	uint8_t *in = malloc(len ? len : 1);
	if (!in)
		return 0;
	memcpy(in, data + 2, len);
	switch (data[0] & 3) {
	case 0:
		check_mx(in, len);
		break;
	case 1:
		check_txt(in, len, data[1]);
		break;
	case 2:
		check_tlsa(in, len);
		break;
	case 3:
		check_reply(in, len, types[data[1] % 5]);
		break;
	}
	free(in);
	return 0;
}
