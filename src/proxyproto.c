/* proxyproto.c - the PROXY protocol, v1 and v2 (see proxyproto.h). */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const uint8_t v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
				    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
static const char v1_sig[] = "PROXY ";
#define V1_SIG_LEN 6

/* v2 byte 12: version 2 in the high nibble, the command in the low one */
#define V2_LOCAL 0x0
#define V2_PROXY 0x1
/* v2 byte 13: the address family in the high nibble, the transport in the low one */
#define V2_AF_UNSPEC 0x0
#define V2_AF_INET 0x1
#define V2_AF_INET6 0x2
#define V2_AF_UNIX 0x3
#define V2_STREAM 0x1
#define V2_DGRAM 0x2
#define V2_INET_LEN 12  /* two IPv4 addresses, two ports */
#define V2_INET6_LEN 36 /* two IPv6 addresses, two ports */

const char *pp_version_name(enum pp_version v)
{
	return v == PP_V2 ? "v2" : "v1";
}

/* 1: the input starts with the n bytes of lit; 0: what it has matches so far (more is
 * needed to tell); -1: it does not. */
static int starts(const uint8_t *d, size_t len, const void *lit, size_t n)
{
	size_t k = len < n ? len : n;
	if (memcmp(d, lit, k) != 0)
		return -1;
	return k == n ? 1 : 0;
}

/* The input does not start with the expected version's signature: the other version's
 * (a reason naming both), or neither. -EAGAIN while it may still be the other's. */
static int wrong_start(enum pp_version want, const uint8_t *d, size_t len, const char **reason)
{
	int other = want == PP_V1 ? starts(d, len, v2_sig, sizeof(v2_sig))
				  : starts(d, len, v1_sig, V1_SIG_LEN);
	if (other == 0)
		return -EAGAIN;
	if (other == 1)
		*reason = want == PP_V1 ? "PROXY v2 header where v1 is expected"
					: "PROXY v1 header where v2 is expected";
	else
		*reason = want == PP_V1 ? "not a PROXY v1 header" : "not a PROXY v2 header";
	return -EINVAL;
}

/* ---- v1 ------------------------------------------------------------------------------ */

/* Reads the line left to right; every decision depends only on the bytes before the
 * cursor, so a prefix of an input never answers another error than the whole input. */
struct cur {
	const uint8_t *d;
	size_t len, pos;
};

/* The byte at the cursor (0..255), -EAGAIN when it has not arrived, -EINVAL past the
 * limit of a v1 line. */
static int peek(const struct cur *c, const char **reason)
{
	if (c->pos >= PP_V1_MAX) {
		*reason = "v1 line too long";
		return -EINVAL;
	}
	if (c->pos >= c->len)
		return -EAGAIN;
	return c->d[c->pos];
}

static int is_digit(int b)
{
	return b >= '0' && b <= '9';
}

static int is_v4_char(int b)
{
	return is_digit(b) || b == '.';
}

static int is_v6_char(int b)
{
	return is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F') || b == ':' ||
	       b == '.';
}

static int is_token_char(int b)
{
	return (b >= 'A' && b <= 'Z') || is_digit(b);
}

/* A field of 1 to max bytes of class ok(), ended by the byte term (consumed), into out
 * (max + 1 bytes, NUL-terminated). 0, -EAGAIN, or -EINVAL with *reason = why (or the
 * line's limit). */
static int field(struct cur *c, int term, size_t max, int (*ok)(int), char *out,
		 const char *why, const char **reason)
{
	size_t n = 0;
	for (;;) {
		int b = peek(c, reason);
		if (b < 0)
			return b;
		c->pos++;
		if (b == term && n > 0) {
			out[n] = '\0';
			return 0;
		}
		if (n == max || !ok(b)) {
			*reason = why;
			return -EINVAL;
		}
		out[n++] = (char)b;
	}
}

/* The byte at the cursor must be b (consumed). */
static int expect(struct cur *c, int b, const char *why, const char **reason)
{
	int got = peek(c, reason);
	if (got < 0)
		return got;
	if (got != b) {
		*reason = why;
		return -EINVAL;
	}
	c->pos++;
	return 0;
}

/* A decimal port 0..65535: no sign, no leading zero. */
static int port_value(const char *s, uint16_t *out)
{
	if (s[0] == '0' && s[1] != '\0')
		return -EINVAL;
	unsigned long v = 0;
	for (const char *p = s; *p; p++)
		v = v * 10 + (unsigned long)(*p - '0');
	if (v > 65535)
		return -EINVAL;
	*out = (uint16_t)v;
	return 0;
}

static void set_addr(struct sockaddr_storage *ss, int family, const void *addr, uint16_t port)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)(void *)ss;
		a->sin_family = AF_INET;
		memcpy(&a->sin_addr, addr, 4);
		a->sin_port = htons(port);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)(void *)ss;
		a->sin6_family = AF_INET6;
		memcpy(&a->sin6_addr, addr, 16);
		a->sin6_port = htons(port);
	}
}

static int parse_v1(const uint8_t *d, size_t len, struct pp_result *out, const char **reason)
{
	const char *bad_line = "malformed v1 line";
	struct cur c = { d, len, V1_SIG_LEN };
	char tok[8];
	size_t n = 0;
	int b, rc;
	/* TCP4, TCP6 or UNKNOWN, then a space (or, after UNKNOWN, the line's end) */
	for (;;) {
		if ((b = peek(&c, reason)) < 0)
			return b;
		c.pos++;
		if ((b == ' ' || b == '\r') && n > 0)
			break;
		if (n == sizeof(tok) - 1 || !is_token_char(b)) {
			*reason = b < 0x20 || b > 0x7e ? bad_line : "unsupported family";
			return -EINVAL;
		}
		tok[n++] = (char)b;
	}
	tok[n] = '\0';
	int family = !strcmp(tok, "TCP4") ? AF_INET : !strcmp(tok, "TCP6") ? AF_INET6 : 0;
	if (!family && strcmp(tok, "UNKNOWN") != 0) {
		*reason = "unsupported family";
		return -EINVAL;
	}
	if (!family) {
		/* UNKNOWN: whatever follows up to CRLF is ignored (printable ASCII only) */
		while (b != '\r') {
			if ((b = peek(&c, reason)) < 0)
				return b;
			c.pos++;
			if (b != '\r' && (b < 0x20 || b > 0x7e)) {
				*reason = bad_line;
				return -EINVAL;
			}
		}
		if ((rc = expect(&c, '\n', bad_line, reason)) < 0)
			return rc;
		memset(out, 0, sizeof(*out));
		out->version = PP_V1;
		return (int)c.pos;
	}
	if (b != ' ') {
		*reason = bad_line;
		return -EINVAL;
	}
	char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN], sport[6], dport[6];
	size_t amax = family == AF_INET ? 15 : INET6_ADDRSTRLEN - 1;
	int (*ach)(int) = family == AF_INET ? is_v4_char : is_v6_char;
	uint8_t a_src[16], a_dst[16];
	if ((rc = field(&c, ' ', amax, ach, src, "bad address", reason)) < 0)
		return rc;
	if (inet_pton(family, src, a_src) != 1) {
		*reason = "bad address";
		return -EINVAL;
	}
	if ((rc = field(&c, ' ', amax, ach, dst, "bad address", reason)) < 0)
		return rc;
	if (inet_pton(family, dst, a_dst) != 1) {
		*reason = "bad address";
		return -EINVAL;
	}
	uint16_t ps, pd;
	if ((rc = field(&c, ' ', 5, is_digit, sport, "bad port", reason)) < 0)
		return rc;
	if (port_value(sport, &ps) < 0) {
		*reason = "bad port";
		return -EINVAL;
	}
	if ((rc = field(&c, '\r', 5, is_digit, dport, "bad port", reason)) < 0)
		return rc;
	if (port_value(dport, &pd) < 0) {
		*reason = "bad port";
		return -EINVAL;
	}
	if ((rc = expect(&c, '\n', bad_line, reason)) < 0)
		return rc;
	memset(out, 0, sizeof(*out));
	out->version = PP_V1;
	out->has_addr = 1;
	set_addr(&out->src, family, a_src, ps);
	set_addr(&out->dst, family, a_dst, pd);
	return (int)c.pos;
}

/* ---- v2 ------------------------------------------------------------------------------ */

/* TLVs (type, 16-bit length, value) must fill the rest of the block exactly. */
static int tlvs_ok(const uint8_t *p, size_t len)
{
	size_t i = 0;
	while (i < len) {
		if (len - i < 3)
			return 0;
		size_t n = (size_t)p[i + 1] << 8 | p[i + 2];
		if (len - i - 3 < n)
			return 0;
		i += 3 + n;
	}
	return 1;
}

static int parse_v2(const uint8_t *d, size_t len, struct pp_result *out, const char **reason)
{
	if (len < PP_V2_HDR)
		return -EAGAIN;
	unsigned ver = d[12] >> 4, cmd = d[12] & 0xF, af = d[13] >> 4, tr = d[13] & 0xF;
	size_t blen = (size_t)d[14] << 8 | d[15];
	if (ver != 2) {
		*reason = "unsupported v2 version";
		return -EINVAL;
	}
	if (cmd != V2_LOCAL && cmd != V2_PROXY) {
		*reason = "unsupported v2 command";
		return -EINVAL;
	}
	if (blen > PP_V2_BLOCK_MAX) {
		*reason = "v2 header too long";
		return -EINVAL;
	}
	size_t alen = 0;
	if (cmd == V2_PROXY) {
		if (af == V2_AF_UNIX) {
			*reason = "unsupported family (AF_UNIX)";
			return -EINVAL;
		}
		if (af > V2_AF_UNIX) {
			*reason = "unsupported family";
			return -EINVAL;
		}
		if (tr == V2_DGRAM) {
			*reason = "unsupported transport (DGRAM)";
			return -EINVAL;
		}
		if (tr > V2_DGRAM || (af != V2_AF_UNSPEC && tr != V2_STREAM)) {
			*reason = "unsupported transport";
			return -EINVAL;
		}
		alen = af == V2_AF_INET ? V2_INET_LEN : af == V2_AF_INET6 ? V2_INET6_LEN : 0;
		if (blen < alen) {
			*reason = "bad address";
			return -EINVAL;
		}
	}
	if (len < PP_V2_HDR + blen)
		return -EAGAIN;
	memset(out, 0, sizeof(*out));
	out->version = PP_V2;
	out->local = cmd == V2_LOCAL;
	/* LOCAL, and PROXY over AF_UNSPEC: the block is discarded, the connection's own
	 * addresses apply */
	if (cmd == V2_LOCAL || af == V2_AF_UNSPEC)
		return (int)(PP_V2_HDR + blen);
	const uint8_t *p = d + PP_V2_HDR;
	if (!tlvs_ok(p + alen, blen - alen)) {
		*reason = "bad v2 TLV";
		return -EINVAL;
	}
	int family = af == V2_AF_INET ? AF_INET : AF_INET6;
	size_t al = family == AF_INET ? 4 : 16;
	uint16_t ps = (uint16_t)(p[2 * al] << 8 | p[2 * al + 1]);
	uint16_t pd = (uint16_t)(p[2 * al + 2] << 8 | p[2 * al + 3]);
	out->has_addr = 1;
	set_addr(&out->src, family, p, ps);
	set_addr(&out->dst, family, p + al, pd);
	return (int)(PP_V2_HDR + blen);
}

int pp_parse(enum pp_version version, const uint8_t *data, size_t len, struct pp_result *out,
	     const char **reason)
{
	*reason = NULL;
	if (version == PP_V1) {
		int r = starts(data, len, v1_sig, V1_SIG_LEN);
		if (r < 0)
			return wrong_start(PP_V1, data, len, reason);
		return r == 0 ? -EAGAIN : parse_v1(data, len, out, reason);
	}
	int r = starts(data, len, v2_sig, sizeof(v2_sig));
	if (r < 0)
		return wrong_start(PP_V2, data, len, reason);
	return r == 0 ? -EAGAIN : parse_v2(data, len, out, reason);
}

/* ---- builders ---------------------------------------------------------------------- */

/* sa as IPv4 or IPv6 (an IPv4-mapped IPv6 address as IPv4) into out: the family, or 0. */
static int normalize(const struct sockaddr *sa, struct sockaddr_storage *out)
{
	memset(out, 0, sizeof(*out));
	if (!sa)
		return 0;
	if (sa->sa_family == AF_INET) {
		memcpy(out, sa, sizeof(struct sockaddr_in));
		return AF_INET;
	}
	if (sa->sa_family != AF_INET6)
		return 0;
	const struct sockaddr_in6 *a = (const void *)sa;
	if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
		set_addr(out, AF_INET, a->sin6_addr.s6_addr + 12, ntohs(a->sin6_port));
		return AF_INET;
	}
	memcpy(out, sa, sizeof(struct sockaddr_in6));
	return AF_INET6;
}

/* Both addresses of one family (src and dst normalized): the family, else 0. */
static int pair(const struct sockaddr *src, const struct sockaddr *dst,
		struct sockaddr_storage *s, struct sockaddr_storage *d)
{
	int fs = normalize(src, s), fd = normalize(dst, d);
	return fs && fs == fd ? fs : 0;
}

static const void *addr_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return &((const struct sockaddr_in *)(const void *)ss)->sin_addr;
	return &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)(const void *)ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)(const void *)ss)->sin6_port);
}

int pp_build_v1(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *buf,
		size_t cap)
{
	struct sockaddr_storage s, d;
	int family = pair(src, dst, &s, &d);
	char line[PP_V1_MAX + 1];
	int n;
	if (!family) {
		n = snprintf(line, sizeof(line), "PROXY UNKNOWN\r\n");
	} else {
		char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
		if (!inet_ntop(family, addr_of(&s), a, sizeof(a)) ||
		    !inet_ntop(family, addr_of(&d), b, sizeof(b)))
			return -EINVAL;
		n = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n",
			     family == AF_INET ? "TCP4" : "TCP6", a, b, port_of(&s), port_of(&d));
	}
	if (n < 0 || (size_t)n >= sizeof(line))
		return -EINVAL;
	if ((size_t)n > cap)
		return -ENOBUFS;
	memcpy(buf, line, (size_t)n);
	return n;
}

int pp_build_v2(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *buf,
		size_t cap)
{
	struct sockaddr_storage s, d;
	int family = pair(src, dst, &s, &d);
	size_t al = family == AF_INET ? 4 : family == AF_INET6 ? 16 : 0;
	size_t blen = al ? 2 * al + 4 : 0;
	if (cap < PP_V2_HDR + blen)
		return -ENOBUFS;
	memcpy(buf, v2_sig, sizeof(v2_sig));
	buf[12] = (uint8_t)(0x20 | (al ? V2_PROXY : V2_LOCAL));
	buf[13] = (uint8_t)(al ? ((family == AF_INET ? V2_AF_INET : V2_AF_INET6) << 4 | V2_STREAM)
			       : 0);
	buf[14] = 0;
	buf[15] = (uint8_t)blen;
	if (al) {
		uint8_t *p = buf + PP_V2_HDR;
		memcpy(p, addr_of(&s), al);
		memcpy(p + al, addr_of(&d), al);
		uint16_t ps = port_of(&s), pd = port_of(&d);
		p[2 * al] = (uint8_t)(ps >> 8);
		p[2 * al + 1] = (uint8_t)ps;
		p[2 * al + 2] = (uint8_t)(pd >> 8);
		p[2 * al + 3] = (uint8_t)pd;
	}
	return (int)(PP_V2_HDR + blen);
}
