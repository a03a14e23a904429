/* fuzz_tlsrpt.c - libFuzzer harness for the TLSRPT parsers and the JSON report writer
 * (tlsrpt.h).
 *
 * Byte 0 picks what runs (byte 0 % 3):
 * 0: tlsrpt_parse_txt on the rest split at '\n' into up to 4 records. 0 with 1 to 8 URIs,
 *    each NUL-terminated, at most 511 octets, "mailto:" or "https://", without a raw
 *    ",", "!", ";", space or control character; -ENOENT; or -EINVAL with a one-line error.
 * 1: the writer: the rest split at '\n' into strings (domain, result type, addresses, host
 *    names, free text, organization, contact, report-id, policy strings) that go through
 *    tlsrpt_domain_add (byte 0's upper bits choose policy types and outcomes) and
 *    tlsrpt_report_json. The output must be valid JSON (RFC 8259, checked by an
 *    independent validator here, UTF-8 included) whatever the bytes, and read back by
 *    tlsrpt_report_parse to the same counts, written again byte for byte the same.
 * 2: tlsrpt_report_parse on the rest: 0 or -EINVAL with a one-line error (nothing kept);
 *    what it accepts is written as valid JSON that reads back to the same report. */
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlsrpt.h"
#include "fuzz_util.h"

/* ---- an independent strict JSON validator (RFC 8259, UTF-8) */

struct v {
	const unsigned char *s;
	size_t n, i;
};

static int v_value(struct v *p, int depth);

static void v_ws(struct v *p)
{
	while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
			       p->s[p->i] == '\r'))
		p->i++;
}

/* One UTF-8 character by decoding: its code point must need exactly its length and not be
 * a surrogate or above U+10FFFF. */
static int v_utf8(struct v *p)
{
	unsigned c = p->s[p->i], cp, len;
	if (c < 0x80)
		return p->i++, 1;
	if ((c & 0xe0) == 0xc0)
		len = 2, cp = c & 0x1f;
	else if ((c & 0xf0) == 0xe0)
		len = 3, cp = c & 0x0f;
	else if ((c & 0xf8) == 0xf0)
		len = 4, cp = c & 0x07;
	else
		return 0;
	if (p->n - p->i < len)
		return 0;
	for (unsigned k = 1; k < len; k++) {
		unsigned cc = p->s[p->i + k];
		if ((cc & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (cc & 0x3f);
	}
	static const unsigned min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
	if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	p->i += len;
	return 1;
}

static int v_string(struct v *p)
{
	if (p->i >= p->n || p->s[p->i] != '"')
		return 0;
	p->i++;
	while (p->i < p->n) {
		unsigned c = p->s[p->i];
		if (c == '"')
			return p->i++, 1;
		if (c < 0x20)
			return 0;
		if (c == '\\') {
			if (++p->i >= p->n)
				return 0;
			c = p->s[p->i++];
			if (c == 'u') {
				for (int k = 0; k < 4; k++, p->i++)
					if (p->i >= p->n || !strchr("0123456789abcdefABCDEF", p->s[p->i]) ||
					    !p->s[p->i])
						return 0;
			} else if (!strchr("\"\\/bfnrt", (int)c) || !c) {
				return 0;
			}
			continue;
		}
		if (!v_utf8(p))
			return 0;
	}
	return 0;
}

static int v_number(struct v *p)
{
	size_t i = p->i;
	if (i < p->n && p->s[i] == '-')
		i++;
	if (i >= p->n || p->s[i] < '0' || p->s[i] > '9')
		return 0;
	if (p->s[i] == '0')
		i++;
	else
		while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9')
			i++;
	if (i < p->n && p->s[i] == '.') {
		if (++i >= p->n || p->s[i] < '0' || p->s[i] > '9')
			return 0;
		while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9')
			i++;
	}
	if (i < p->n && (p->s[i] == 'e' || p->s[i] == 'E')) {
		i++;
		if (i < p->n && (p->s[i] == '+' || p->s[i] == '-'))
			i++;
		if (i >= p->n || p->s[i] < '0' || p->s[i] > '9')
			return 0;
		while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9')
			i++;
	}
	p->i = i;
	return 1;
}

static int v_value(struct v *p, int depth)
{
	if (depth > 64)
		return 0;
	v_ws(p);
	if (p->i >= p->n)
		return 0;
	unsigned char c = p->s[p->i];
	if (c == '"')
		return v_string(p);
	if (c == '{' || c == '[') {
		unsigned char close = c == '{' ? '}' : ']';
		p->i++;
		v_ws(p);
		if (p->i < p->n && p->s[p->i] == close)
			return p->i++, 1;
		for (;;) {
			if (c == '{') {
				v_ws(p);
				if (!v_string(p))
					return 0;
				v_ws(p);
				if (p->i >= p->n || p->s[p->i++] != ':')
					return 0;
			}
			if (!v_value(p, depth + 1))
				return 0;
			v_ws(p);
			if (p->i >= p->n)
				return 0;
			if (p->s[p->i] == ',') {
				p->i++;
				continue;
			}
			if (p->s[p->i] == close)
				return p->i++, 1;
			return 0;
		}
	}
	if (c == '-' || (c >= '0' && c <= '9'))
		return v_number(p);
	static const char *const lit[] = { "true", "false", "null" };
	for (int k = 0; k < 3; k++) {
		size_t l = strlen(lit[k]);
		if (p->n - p->i >= l && memcmp(p->s + p->i, lit[k], l) == 0)
			return p->i += l, 1;
	}
	return 0;
}

static int json_valid(const char *s, size_t n)
{
	struct v p = { (const unsigned char *)s, n, 0 };
	if (!v_value(&p, 0))
		return 0;
	v_ws(&p);
	return p.i == n;
}

/* ---- the three modes */

static void sums(const struct tlsrpt_domain *d, uint64_t *ok, uint64_t *failed)
{
	*ok = *failed = 0;
	for (size_t i = 0; i < d->npolicies; i++) {
		*ok += d->policies[i].ok;
		*failed += d->policies[i].failed;
	}
}

/* json of d must be valid, read back to the same counts, and be written again the same. */
static void round_trip(const struct tlsrpt_report_meta *m, const struct tlsrpt_domain *d)
{
	char *json = NULL, *again = NULL, err[200];
	size_t len = 0, len2 = 0;
	int rc = tlsrpt_report_json(m, d, &json, &len);
	if (rc == -ENOMEM)
		return;
	CHECK(rc == 0, "tlsrpt_report_json rc %d", rc);
	CHECK(len == strlen(json) && len > 0 && json[len - 1] == '\n', "length %zu", len);
	CHECK(json_valid(json, len), "invalid JSON written:\n%s", json);
	struct tlsrpt_domain back;
	int64_t b, e;
	rc = tlsrpt_report_parse(json, len, &back, &b, &e, err, sizeof err);
	CHECK(rc == 0, "own report not read back (%s):\n%s", err, json);
	CHECK(b == m->begin && e == m->end, "date-range %lld..%lld", (long long)b, (long long)e);
	CHECK(d->npolicies == 0 || strcmp(back.domain, d->domain) == 0, "domain %s", back.domain);
	CHECK(back.npolicies == d->npolicies, "%zu policies, wrote %zu", back.npolicies,
	      d->npolicies);
	uint64_t o1, f1, o2, f2;
	sums(d, &o1, &f1);
	sums(&back, &o2, &f2);
	CHECK(o1 == o2 && f1 == f2, "counts %llu/%llu read back as %llu/%llu",
	      (unsigned long long)o1, (unsigned long long)f1, (unsigned long long)o2,
	      (unsigned long long)f2);
	struct tlsrpt_domain copy = back;
	if (d->npolicies == 0)
		memcpy(copy.domain, d->domain, sizeof copy.domain);
	rc = tlsrpt_report_json(m, &copy, &again, &len2);
	CHECK(rc == 0 || rc == -ENOMEM, "rc %d", rc);
	CHECK(rc != 0 || (len2 == len && memcmp(json, again, len) == 0),
	      "written again differently:\n%s\n---\n%s", json, again);
	free(again);
	free(json);
	tlsrpt_domain_free(&back);
}

static void fuzz_txt(const char *text, size_t len)
{
	const char *rec[4];
	size_t lens[4], n = 0, i = 0;
	while (n < 4 && i <= len) {
		const char *nl = memchr(text + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - text) : len;
		rec[n] = text + i;
		lens[n++] = e - i;
		i = e + 1;
	}
	static char rua[TLSRPT_RUA_MAX][512];
	size_t nrua = 99;
	char err[256];
	memset(rua, 0x55, sizeof rua);
	int rc = tlsrpt_parse_txt(rec, lens, n, rua, &nrua, err, sizeof err);
	if (rc == 0) {
		CHECK(nrua >= 1 && nrua <= TLSRPT_RUA_MAX, "nrua %zu", nrua);
		for (size_t k = 0; k < nrua; k++) {
			const char *u = rua[k];
			CHECK(memchr(u, 0, 512) != NULL, "rua %zu not terminated", k);
			size_t l = strlen(u);
			CHECK(l <= TLSRPT_URI_MAX, "rua of %zu octets", l);
			CHECK(!strncmp(u, "mailto:", 7) || !strncmp(u, "https://", 8), "rua %s", u);
			for (size_t c = 0; c < l; c++)
				CHECK(u[c] > 0x20 && u[c] < 0x7f && !strchr(",!;", u[c]), "rua %s", u);
		}
	} else {
		CHECK(rc == -EINVAL || rc == -ENOENT, "rc %d", rc);
		CHECK(nrua == 0, "nrua %zu after an error", nrua);
		CHECK(rc == -ENOENT || (err[0] && !strchr(err, '\n')), "error \"%s\"", err);
	}
}

static void fuzz_writer(unsigned sel, const char *text, size_t len)
{
	enum { NF = 20 };
	char *f[NF];
	size_t nf = 0, i = 0;
	char *copy = malloc(len + 1);
	memcpy(copy, text, len);
	copy[len] = '\0';
	while (nf < NF && i <= len) {
		char *nl = memchr(copy + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - copy) : len;
		copy[e] = '\0';
		f[nf++] = copy + i;
		i = e + 1;
	}
	for (size_t k = nf; k < NF; k++)
		f[k] = NULL;
	struct tlsrpt_domain d;
	if (tlsrpt_domain_init(&d, f[0] ? f[0] : "") < 0)
		CHECK(tlsrpt_domain_init(&d, "fuzz.example") == 0, "init");
	const char *const *strings = (const char *const *)&f[10];
	for (unsigned k = 0; k < 6; k++) {
		unsigned bits = (sel >> (k % 6)) ^ k;
		struct tlsrpt_eval e = {
			.domain = d.domain,
			.type = (enum tlsrpt_policy)(bits % 3),
			.policy_strings = strings,
			.npolicy_strings = bits % 3 == 2 ? 0 : (bits >> 1) % 8,
			.mx_hosts = (const char *const *)&f[3],
			.nmx_hosts = bits & 4 ? 1 : 0,
			.success = (bits >> 2) & 1,
			.result_type = f[1],
			.sending_ip = bits & 8 ? f[2] : NULL,
			.receiving_mx_hostname = f[3],
			.receiving_ip = f[2],
			.receiving_mx_helo = bits & 16 ? f[4] : NULL,
			.additional_info = f[5],
		};
		/* NULL policy strings stand for "" */
		tlsrpt_domain_add(&d, &e);
	}
	struct tlsrpt_report_meta m = { f[6], f[7], f[8], (int64_t)(sel & 0xffff) * 86400,
					(int64_t)(sel & 0xffff) * 86400 + 86400 };
	round_trip(&m, &d);
	/* merged with itself: counts double, the same policies */
	struct tlsrpt_domain twice;
	tlsrpt_domain_init(&twice, d.domain);
	if (tlsrpt_domain_merge(&twice, &d) == 0 && tlsrpt_domain_merge(&twice, &d) == 0) {
		uint64_t o1, f1, o2, f2;
		sums(&d, &o1, &f1);
		sums(&twice, &o2, &f2);
		CHECK(twice.npolicies == d.npolicies && o2 == 2 * o1 && f2 == 2 * f1,
		      "merge: %zu policies, %llu ok", twice.npolicies, (unsigned long long)o2);
	}
	tlsrpt_domain_free(&twice);
	tlsrpt_domain_free(&d);
	free(copy);
}

static void fuzz_parse(const char *text, size_t len)
{
	struct tlsrpt_domain d;
	int64_t b = 0, e = 0;
	char err[256];
	int rc = tlsrpt_report_parse(text, len, &d, &b, &e, err, sizeof err);
	if (rc != 0) {
		CHECK(rc == -EINVAL || rc == -ENOMEM, "rc %d", rc);
		CHECK(rc == -ENOMEM || (err[0] && !strchr(err, '\n')), "error \"%s\"", err);
		CHECK(d.npolicies == 0 && d.policies == NULL, "policies kept after an error");
		return;
	}
	CHECK(json_valid(text, len), "accepted invalid JSON");
	CHECK(e > b, "date-range %lld..%lld", (long long)b, (long long)e);
	struct tlsrpt_report_meta m = { "org", "postmaster@fuzz.example", "id@fuzz.example", b, e };
	round_trip(&m, &d);
	tlsrpt_domain_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;
	switch (data[0] % 3) {
	case 0: fuzz_txt(text, len); break;
	case 1: fuzz_writer(data[0] / 3u | (len ? (unsigned)(uint8_t)text[0] << 6 : 0), text, len); break;
	default: fuzz_parse(text, len); break;
	}
	return 0;
}
