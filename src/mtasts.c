/* mtasts.c - MTA-STS (RFC 8461) TXT records and policy files (see mtasts.h). */
#include "mtasts.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static int is_wsp(int c)
{
	return c == ' ' || c == '\t';
}

static int is_alnum(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

size_t sts_ext_name_len(const char *s, size_t n)
{
	size_t i = 0;
	if (n == 0 || !is_alnum((unsigned char)s[0]))
		return 0;
	for (i = 1; i < n && i < 32; i++) {
		int c = (unsigned char)s[i];
		if (!is_alnum(c) && c != '_' && c != '-' && c != '.')
			break;
	}
	return i;
}

int sts_ext_char(int c)
{
	return c >= 0x21 && c <= 0x7e && c != ';' && c != '=';
}

/* r starts with tag followed by ";" (spaces or tabs before it) or is exactly tag. */
static int starts_with_tag(const char *r, size_t n, const char *tag)
{
	size_t k = strlen(tag);
	if (!r || n < k || memcmp(r, tag, k) != 0)
		return 0;
	size_t i = k;
	while (i < n && is_wsp((unsigned char)r[i]))
		i++;
	return i == n ? i == k : r[i] == ';';
}

int sts_pick_record(const char *const *records, const size_t *lens, size_t n, const char *tag,
		    size_t max, const char **rec, size_t *len, char *err, size_t errlen)
{
	size_t found = 0;
	*rec = NULL;
	*len = 0;
	for (size_t i = 0; i < n; i++)
		if (starts_with_tag(records[i], lens[i], tag)) {
			*rec = records[i];
			*len = lens[i];
			found++;
		}
	if (found == 0)
		return -ENOENT;
	if (found > 1) {
		snprintf(err, errlen, "%zu TXT records start with %s (one is allowed)", found, tag);
		return -EINVAL;
	}
	if (*len > max) {
		snprintf(err, errlen, "TXT record of %zu octets (at most %zu)", *len, max);
		return -EINVAL;
	}
	return 0;
}

int sts_parse_txt(const char *const *records, const size_t *lens, size_t n, char *id,
		  char *err, size_t errlen)
{
	const char *r;
	size_t len;
	err[0] = '\0';
	id[0] = '\0';
	int rc = sts_pick_record(records, lens, n, "v=STSv1", STS_TXT_MAX, &r, &len, err, errlen);
	if (rc < 0)
		return rc;
	size_t i = 7; /* after "v=STSv1" */
	for (;;) {
		while (i < len && is_wsp((unsigned char)r[i]))
			i++;
		if (i == len)
			break;
		if (r[i] != ';') {
			snprintf(err, errlen, "TXT record: \";\" expected at offset %zu", i);
			return -EINVAL;
		}
		i++;
		while (i < len && is_wsp((unsigned char)r[i]))
			i++;
		if (i == len)
			break; /* a trailing delimiter */
		size_t k = sts_ext_name_len(r + i, len - i);
		if (k == 0 || i + k >= len || r[i + k] != '=') {
			snprintf(err, errlen, "TXT record: a field name= expected at offset %zu", i);
			return -EINVAL;
		}
		int is_id = k == 2 && memcmp(r + i, "id", 2) == 0;
		i += k + 1;
		size_t v = i;
		while (i < len && (is_id ? is_alnum((unsigned char)r[i])
					 : sts_ext_char((unsigned char)r[i])))
			i++;
		if (i == v || (is_id && i - v > STS_ID_MAX)) {
			snprintf(err, errlen, is_id ? "TXT record: id must be 1 to 32 letters or digits"
						    : "TXT record: empty or invalid field value at offset %zu",
				 v);
			return -EINVAL;
		}
		if (is_id && !id[0]) { /* a repeated field keeps its first value */
			memcpy(id, r + v, i - v);
			id[i - v] = '\0';
		}
	}
	if (!id[0]) {
		snprintf(err, errlen, "TXT record without id=");
		return -EINVAL;
	}
	return 0;
}

/* A host name pattern: ["*."] labels of letters, digits, "-" and "_" (1 to 63 each), at
 * most STS_NAME_MAX in all, at least two labels after a wildcard. Copied in lower case. */
static int mx_pattern(const char *v, size_t n, char *out)
{
	size_t i = 0, labels = 0;
	if (n > STS_NAME_MAX || n == 0)
		return -1;
	if (n >= 2 && v[0] == '*' && v[1] == '.')
		i = 2;
	size_t start = i;
	while (i <= n) {
		size_t l = i;
		while (i < n && v[i] != '.') {
			int c = (unsigned char)v[i];
			if (!is_alnum(c) && c != '-' && c != '_')
				return -1;
			i++;
		}
		if (i - l == 0 || i - l > 63)
			return -1;
		labels++;
		if (i == n)
			break;
		i++; /* the dot */
	}
	if (start == 2 && labels < 2)
		return -1;
	for (i = 0; i < n; i++)
		out[i] = (char)tolower((unsigned char)v[i]);
	out[n] = '\0';
	return 0;
}

int sts_parse_policy(const char *text, size_t len, struct sts_policy *out, char *err,
		     size_t errlen)
{
	memset(out, 0, sizeof(*out));
	err[0] = '\0';
	if (len > STS_POLICY_MAX) {
		snprintf(err, errlen, "policy of %zu octets (at most %d)", len, STS_POLICY_MAX);
		goto bad;
	}
	if (memchr(text, '\0', len)) {
		snprintf(err, errlen, "policy contains a NUL octet");
		goto bad;
	}
	int have_version = 0, have_mode = 0, have_age = 0, line = 0;
	size_t i = 0;
	while (i < len) {
		line++;
		const char *nl = memchr(text + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - text) : len, b = e;
		if (b > i && text[b - 1] == '\r')
			b--;
		while (b > i && is_wsp((unsigned char)text[b - 1]))
			b--;
		const char *s = text + i;
		size_t n = b - i;
		i = e + 1;
		if (n == 0)
			continue; /* a blank line */
		size_t k = sts_ext_name_len(s, n);
		if (k == 0 || k >= n || s[k] != ':') {
			snprintf(err, errlen, "line %d: \"key: value\" expected", line);
			goto bad;
		}
		size_t v = k + 1;
		while (v < n && is_wsp((unsigned char)s[v]))
			v++;
		const char *val = s + v;
		size_t vn = n - v;
		for (size_t j = 0; j < vn; j++)
			if (!sts_ext_char((unsigned char)val[j]) && val[j] != '=') {
				snprintf(err, errlen, "line %d: invalid character in the value", line);
				goto bad;
			}
		if (vn == 0) {
			snprintf(err, errlen, "line %d: empty value", line);
			goto bad;
		}
#define KEY(name) (k == sizeof(name) - 1 && memcmp(s, name, k) == 0)
		if (KEY("version")) {
			if (have_version++)
				continue;
			if (vn != 5 || memcmp(val, "STSv1", 5) != 0) {
				snprintf(err, errlen, "line %d: version must be STSv1", line);
				goto bad;
			}
		} else if (KEY("mode")) {
			if (have_mode++)
				continue;
			if (vn == 7 && !memcmp(val, "enforce", 7))
				out->mode = STS_MODE_ENFORCE;
			else if (vn == 7 && !memcmp(val, "testing", 7))
				out->mode = STS_MODE_TESTING;
			else if (vn == 4 && !memcmp(val, "none", 4))
				out->mode = STS_MODE_NONE;
			else {
				snprintf(err, errlen, "line %d: mode must be enforce, testing or none",
					 line);
				goto bad;
			}
		} else if (KEY("max_age")) {
			if (have_age++)
				continue;
			uint64_t a = 0;
			size_t j;
			for (j = 0; j < vn && j < 11 && val[j] >= '0' && val[j] <= '9'; j++)
				a = a * 10 + (uint64_t)(val[j] - '0');
			if (j != vn || vn > 10) {
				snprintf(err, errlen, "line %d: max_age must be 1 to 10 digits", line);
				goto bad;
			}
			out->max_age = (uint32_t)(a > STS_MAX_AGE_MAX ? STS_MAX_AGE_MAX : a);
		} else if (KEY("mx")) {
			if (out->nmx == STS_MX_MAX) {
				snprintf(err, errlen, "line %d: more than %d mx patterns", line,
					 STS_MX_MAX);
				goto bad;
			}
			if (mx_pattern(val, vn, out->mx[out->nmx]) < 0) {
				snprintf(err, errlen, "line %d: mx must be a host name or *.host name",
					 line);
				goto bad;
			}
			out->nmx++;
		}
#undef KEY
		/* other keys: extensions, ignored */
	}
	const char *missing = !have_version ? "version"
			      : !have_mode  ? "mode"
			      : !have_age   ? "max_age"
			      : out->mode != STS_MODE_NONE && out->nmx == 0 ? "mx"
									: NULL;
	if (missing) {
		snprintf(err, errlen, "policy without %s", missing);
		goto bad;
	}
	return 0;
bad:
	memset(out, 0, sizeof(*out)); /* nothing of an invalid policy is kept */
	return -EINVAL;
}

int sts_mx_match(const struct sts_policy *p, const char *host)
{
	char h[STS_NAME_MAX + 2];
	size_t n = strlen(host);
	if (n && host[n - 1] == '.')
		n--;
	if (n == 0 || n > STS_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		h[i] = (char)tolower((unsigned char)host[i]);
	h[n] = '\0';
	for (size_t i = 0; i < p->nmx; i++) {
		const char *m = p->mx[i];
		if (m[0] == '*' && m[1] == '.') {
			const char *dot = strchr(h, '.');
			if (dot && dot > h && strcmp(dot + 1, m + 2) == 0)
				return 1;
		} else if (strcmp(h, m) == 0) {
			return 1;
		}
	}
	return 0;
}

const char *sts_mode_name(enum sts_mode m)
{
	switch (m) {
	case STS_MODE_ENFORCE: return "enforce";
	case STS_MODE_TESTING: return "testing";
	default: return "none";
	}
}
