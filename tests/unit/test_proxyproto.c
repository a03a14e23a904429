/* test_proxyproto.c - the PROXY protocol (proxyproto.h) table by table: valid v1 and v2
 * headers of both families (whole, split at every point, one byte at a time, followed by
 * the connection's own bytes), each malformed case with its reason (and the same answer for
 * every prefix and split), and build -> parse round trips. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "proxyproto.h"

/* a literal with its length (binary headers hold NUL bytes) */
#define B(s) (const uint8_t *)(s), sizeof(s) - 1
#define SIG "\r\n\r\n\0\r\nQUIT\n"

/* ---- the caller's side: bytes arrive in pieces, kept until the header is complete ----- */

struct outcome {
	int rc; /* the header's length, or -EINVAL; -EAGAIN: the input ended first */
	const char *reason;
	struct pp_result res;
	size_t fed; /* bytes handed to the parser when it answered */
};

/* Feeds data in pieces (cuts: the piece ends, ascending, 0-terminated; NULL: whole, or
 * one byte at a time with bytewise), the way a session does: the bytes so far kept,
 * parsed again after each piece, stopping at the first answer that is not -EAGAIN. */
static struct outcome feed(enum pp_version v, const uint8_t *d, size_t len, const size_t *cuts,
			   int bytewise)
{
	struct outcome o = { -EAGAIN, NULL, { 0 }, 0 };
	size_t have = 0, ci = 0;
	while (have < len) {
		size_t next = len;
		if (bytewise)
			next = have + 1;
		else if (cuts && cuts[ci])
			next = cuts[ci++];
		have = next;
		o.rc = pp_parse(v, d, have, &o.res, &o.reason);
		o.fed = have;
		if (o.rc != -EAGAIN)
			break;
	}
	return o;
}

static void text_of(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
		port = ntohs(a->sin_port);
		snprintf(buf, len, "%s:%u", host, port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
		port = ntohs(a->sin6_port);
		snprintf(buf, len, "[%s]:%u", host, port);
	} else {
		snprintf(buf, len, "none");
	}
}

/* ---- valid headers ----------------------------------------------------------------- */

struct valid_case {
	const char *name;
	enum pp_version v;
	const uint8_t *d;
	size_t len;
	int has_addr, local;
	const char *src, *dst; /* "none" without an address */
};

#define V2_4 SIG "\x21\x11\x00\x0c" "\x7f\x00\x00\x02" "\x7f\x00\x00\x01" "\x30\x39" "\x00\x19"
#define V6_SRC "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07"
#define V6_DST "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"

static const struct valid_case valid[] = {
	{ "v1 TCP4", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 12345 25\r\n"), 1, 0,
	  "127.0.0.2:12345", "127.0.0.1:25" },
	{ "v1 TCP6", PP_V1, B("PROXY TCP6 2001:db8::7 ::1 65535 0\r\n"), 1, 0, "[2001:db8::7]:65535",
	  "[::1]:0" },
	{ "v1 TCP6 full length", PP_V1,
	  B("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n"),
	  1, 0, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
	  "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535" },
	{ "v1 TCP6 upper case, IPv4-mapped", PP_V1, B("PROXY TCP6 ::FFFF:192.0.2.1 2001:DB8::1 1 2\r\n"),
	  1, 0, "[::ffff:192.0.2.1]:1", "[2001:db8::1]:2" },
	{ "v1 UNKNOWN", PP_V1, B("PROXY UNKNOWN\r\n"), 0, 0, "none", "none" },
	{ "v1 UNKNOWN with addresses (ignored)", PP_V1,
	  B("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:fffe 65535 65535\r\n"), 0, 0, "none", "none" },
	{ "v1 UNKNOWN at 107 bytes", PP_V1,
	  B("PROXY UNKNOWN xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"),
	  0, 0, "none", "none" },
	{ "v2 PROXY TCP4", PP_V2, B(V2_4), 1, 0, "127.0.0.2:12345", "127.0.0.1:25" },
	{ "v2 PROXY TCP6", PP_V2,
	  B(SIG "\x21\x21\x00\x24" V6_SRC V6_DST "\xff\xff" "\x00\x01"), 1, 0,
	  "[2001:db8::7]:65535", "[::1]:1" },
	{ "v2 PROXY TCP4 with TLVs", PP_V2,
	  B(SIG "\x21\x11\x00\x1b" "\x0a\x00\x00\x01" "\x0a\x00\x00\x02" "\x00\x50" "\x01\xbb"
		"\x01\x00\x02" "h2" "\x04\x00\x00" "\x03\x00\x04" "abcd"),
	  1, 0, "10.0.0.1:80", "10.0.0.2:443" },
	{ "v2 LOCAL", PP_V2, B(SIG "\x20\x00\x00\x00"), 0, 1, "none", "none" },
	{ "v2 LOCAL with a block (discarded)", PP_V2,
	  B(SIG "\x20\x11\x00\x0c" "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c"), 0, 1, "none",
	  "none" },
	{ "v2 PROXY AF_UNSPEC", PP_V2, B(SIG "\x21\x00\x00\x03" "xyz"), 0, 0, "none", "none" },
};

static int check_valid(const struct valid_case *c, const struct outcome *o, size_t want_len,
		       const char *how)
{
	char src[80], dst[80];
	text_of(&o->res.src, src, sizeof src);
	text_of(&o->res.dst, dst, sizeof dst);
	if (o->rc != (int)want_len || o->res.version != (int)c->v ||
	    o->res.has_addr != c->has_addr || o->res.local != c->local ||
	    (c->has_addr && (strcmp(src, c->src) || strcmp(dst, c->dst)))) {
		print_message("[%s, %s] rc %d (want %zu) reason \"%s\" version %d has_addr %d local %d "
			      "src %s dst %s\n",
			      c->name, how, o->rc, want_len, o->reason ? o->reason : "", o->res.version,
			      o->res.has_addr, o->res.local, src, dst);
		return 1;
	}
	return 0;
}

static void test_valid(void **state)
{
	(void)state;
	int failures = 0;
	const char tail[] = "\x16\x03\x01 EHLO after the header\r\n";
	for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
		const struct valid_case *c = &valid[i];
		struct outcome o = feed(c->v, c->d, c->len, NULL, 0);
		failures += check_valid(c, &o, c->len, "whole");
		o = feed(c->v, c->d, c->len, NULL, 1);
		failures += check_valid(c, &o, c->len, "byte by byte");
		/* every proper prefix needs more */
		for (size_t k = 0; k < c->len; k++) {
			struct pp_result r;
			const char *why;
			int rc = pp_parse(c->v, c->d, k, &r, &why);
			if (rc != -EAGAIN) {
				print_message("[%s] prefix of %zu: rc %d (%s)\n", c->name, k, rc,
					      why ? why : "");
				failures++;
			}
		}
		/* split in two at every point */
		for (size_t k = 1; k < c->len; k++) {
			size_t cuts[] = { k, 0 };
			char how[40];
			snprintf(how, sizeof how, "split at %zu", k);
			o = feed(c->v, c->d, c->len, cuts, 0);
			failures += check_valid(c, &o, c->len, how);
		}
		/* the connection's own bytes after the header, in the same piece or one byte
		 * after it: the header's length, the rest untouched */
		uint8_t buf[PP_HEADER_MAX + sizeof tail];
		memcpy(buf, c->d, c->len);
		memcpy(buf + c->len, tail, sizeof tail - 1);
		o = feed(c->v, buf, c->len + sizeof tail - 1, NULL, 0);
		failures += check_valid(c, &o, c->len, "with bytes after it");
		o = feed(c->v, buf, c->len + sizeof tail - 1, NULL, 1);
		failures += check_valid(c, &o, c->len, "byte by byte with bytes after it");
		if (o.fed != c->len) {
			print_message("[%s] byte by byte: answered after %zu bytes (want %zu)\n",
				      c->name, o.fed, c->len);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* ---- malformed headers ------------------------------------------------------------- */

struct bad_case {
	const char *name;
	enum pp_version v;
	const uint8_t *d;
	size_t len;
	const char *reason;
	size_t decided; /* the error comes once this many bytes are in (0: at the end) */
};

static const struct bad_case bad[] = {
	/* what is not a PROXY header at all */
	{ "SMTP command on v1", PP_V1, B("EHLO client.example\r\n"), "not a PROXY v1 header", 1 },
	{ "SMTP command on v2", PP_V2, B("EHLO client.example\r\n"), "not a PROXY v2 header", 1 },
	{ "TLS ClientHello on v2", PP_V2, B("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
	  "not a PROXY v2 header", 1 },
	{ "garbage on v1", PP_V1, B("\x00\x01\x02\x03garbage"), "not a PROXY v1 header", 1 },
	{ "lower case proxy", PP_V1, B("proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n"), "not a PROXY v1 header",
	  1 },
	{ "PROXY without space", PP_V1, B("PROXYTCP4 1.2.3.4 1.2.3.5 1 2\r\n"),
	  "not a PROXY v1 header", 6 },
	{ "v2 signature broken at its end", PP_V2, B("\r\n\r\n\0\r\nQUIT\r\x21\x11\x00\x00"),
	  "not a PROXY v2 header", 12 },
	/* the other version */
	{ "v1 header on a v2 route", PP_V2, B("PROXY TCP4 127.0.0.2 127.0.0.1 12345 25\r\n"),
	  "PROXY v1 header where v2 is expected", 6 },
	{ "v2 header on a v1 route", PP_V1, B(V2_4), "PROXY v2 header where v1 is expected", 12 },
	/* v1 */
	{ "v1 line too long", PP_V1,
	  B("PROXY UNKNOWN xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"),
	  "v1 line too long", 107 },
	{ "v1 without CRLF", PP_V1,
	  B("PROXY TCP4 127.0.0.2 127.0.0.1 12345 25\nEHLO x\nEHLO x\nEHLO x\nEHLO x\nEHLO x\n"),
	  "bad port", 40 },
	{ "v1 LF only after UNKNOWN", PP_V1,
	  B("PROXY UNKNOWN\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"),
	  "malformed v1 line", 14 },
	{ "v1 CR without LF", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 12345 25\rX"),
	  "malformed v1 line", 0 },
	{ "v1 TCP5", PP_V1, B("PROXY TCP5 127.0.0.2 127.0.0.1 12345 25\r\n"), "unsupported family",
	  11 },
	{ "v1 UDP4", PP_V1, B("PROXY UDP4 127.0.0.2 127.0.0.1 12345 25\r\n"), "unsupported family",
	  11 },
	{ "v1 lower case family", PP_V1, B("PROXY tcp4 127.0.0.2 127.0.0.1 12345 25\r\n"),
	  "unsupported family", 7 },
	{ "v1 family too long", PP_V1, B("PROXY UNKNOWNX\r\n"), "unsupported family", 14 },
	{ "v1 empty family", PP_V1, B("PROXY  TCP4 127.0.0.2 127.0.0.1 1 2\r\n"),
	  "unsupported family", 7 },
	{ "v1 TCP4 then CRLF", PP_V1, B("PROXY TCP4\r\n"), "malformed v1 line", 11 },
	{ "v1 two spaces", PP_V1, B("PROXY TCP4  127.0.0.2 127.0.0.1 12345 25\r\n"), "bad address",
	  12 },
	{ "v1 IPv6 on TCP4", PP_V1, B("PROXY TCP4 ::1 ::1 12345 25\r\n"), "bad address", 12 },
	{ "v1 IPv4 on TCP6", PP_V1, B("PROXY TCP6 127.0.0.2 127.0.0.1 12345 25\r\n"), "bad address",
	  21 },
	{ "v1 octet 256", PP_V1, B("PROXY TCP4 127.0.0.256 127.0.0.1 12345 25\r\n"), "bad address",
	  23 },
	{ "v1 leading zero octet", PP_V1, B("PROXY TCP4 127.0.0.02 127.0.0.1 12345 25\r\n"),
	  "bad address", 22 },
	{ "v1 three octets", PP_V1, B("PROXY TCP4 127.0.1 127.0.0.1 12345 25\r\n"), "bad address",
	  19 },
	{ "v1 IPv4 too long", PP_V1, B("PROXY TCP4 1111.2222.3333.4444 127.0.0.1 1 2\r\n"),
	  "bad address", 27 },
	{ "v1 bad destination", PP_V1, B("PROXY TCP4 127.0.0.2 localhost 12345 25\r\n"),
	  "bad address", 22 },
	{ "v1 two colons twice", PP_V1, B("PROXY TCP6 1::2::3 ::1 1 2\r\n"), "bad address", 19 },
	{ "v1 port 65536", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 65536 25\r\n"), "bad port", 37 },
	{ "v1 port of six digits", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 123456 25\r\n"),
	  "bad port", 37 },
	{ "v1 port with a leading zero", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 012345 25\r\n"),
	  "bad port", 37 },
	{ "v1 port 00", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 00 25\r\n"), "bad port", 34 },
	{ "v1 signed port", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 +1 25\r\n"), "bad port", 32 },
	{ "v1 negative port", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 12345 -25\r\n"), "bad port",
	  38 },
	{ "v1 port with junk", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 12345 25x\r\n"), "bad port",
	  40 },
	{ "v1 missing port", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 12345\r\n"), "bad port", 37 },
	{ "v1 space before CRLF", PP_V1, B("PROXY TCP4 127.0.0.2 127.0.0.1 12345 25 \r\n"),
	  "bad port", 40 },
	{ "v1 control byte after UNKNOWN", PP_V1, B("PROXY UNKNOWN \x01\r\n"), "malformed v1 line",
	  15 },
	/* v2 */
	{ "v2 version 1", PP_V2, B(SIG "\x11\x11\x00\x0c" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19"),
	  "unsupported v2 version", 16 },
	{ "v2 version 3", PP_V2, B(SIG "\x31\x11\x00\x00"), "unsupported v2 version", 16 },
	{ "v2 command 2", PP_V2, B(SIG "\x22\x11\x00\x0c" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19"),
	  "unsupported v2 command", 16 },
	{ "v2 too long", PP_V2, B(SIG "\x21\x11\x10\x01"), "v2 header too long", 16 },
	{ "v2 longest length", PP_V2, B(SIG "\x20\x00\xff\xff"), "v2 header too long", 16 },
	{ "v2 AF_UNIX", PP_V2, B(SIG "\x21\x31\x00\xd8"), "unsupported family (AF_UNIX)", 16 },
	{ "v2 family 4", PP_V2, B(SIG "\x21\x41\x00\x0c"), "unsupported family", 16 },
	{ "v2 UDP4", PP_V2, B(SIG "\x21\x12\x00\x0c" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19"),
	  "unsupported transport (DGRAM)", 16 },
	{ "v2 INET without transport", PP_V2,
	  B(SIG "\x21\x10\x00\x0c" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19"),
	  "unsupported transport", 16 },
	{ "v2 UNSPEC over DGRAM", PP_V2, B(SIG "\x21\x02\x00\x00"), "unsupported transport (DGRAM)",
	  16 },
	{ "v2 INET block too short", PP_V2, B(SIG "\x21\x11\x00\x0b" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00"),
	  "bad address", 16 },
	{ "v2 INET6 with an INET block", PP_V2,
	  B(SIG "\x21\x21\x00\x0c" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19"), "bad address",
	  16 },
	{ "v2 TLV header cut", PP_V2,
	  B(SIG "\x21\x11\x00\x0e" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19" "\x01\x00"),
	  "bad v2 TLV", 0 },
	{ "v2 TLV longer than the block", PP_V2,
	  B(SIG "\x21\x11\x00\x10" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19" "\x01\x00\x02" "h"),
	  "bad v2 TLV", 0 },
	{ "v2 second TLV cut", PP_V2,
	  B(SIG "\x21\x11\x00\x14" "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19" "\x01\x00\x01" "h" "\x02\x00\x05" "x"),
	  "bad v2 TLV", 0 },
};

static void test_malformed(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const struct bad_case *c = &bad[i];
		size_t decided = c->decided ? c->decided : c->len;
		/* each prefix: more needed before the decisive byte, the error from it on */
		for (size_t k = 0; k <= c->len; k++) {
			struct pp_result r;
			const char *why = NULL;
			int rc = pp_parse(c->v, c->d, k, &r, &why);
			int want = k < decided ? -EAGAIN : -EINVAL;
			if (rc != want || (rc == -EINVAL && (!why || strcmp(why, c->reason)))) {
				print_message("[%s] %zu of %zu bytes: rc %d (want %d) reason \"%s\" "
					      "(want \"%s\")\n",
					      c->name, k, c->len, rc, want, why ? why : "", c->reason);
				failures++;
				break;
			}
		}
		/* the caller's way: whole, byte by byte, split at every point */
		struct outcome o[3];
		o[0] = feed(c->v, c->d, c->len, NULL, 0);
		o[1] = feed(c->v, c->d, c->len, NULL, 1);
		for (size_t k = 1; k <= c->len; k++) {
			size_t cuts[] = { k, 0 };
			o[2] = feed(c->v, c->d, c->len, cuts, 0);
			for (int j = 0; j < 3; j++)
				if (o[j].rc != -EINVAL || !o[j].reason || strcmp(o[j].reason, c->reason)) {
					print_message("[%s] feed %d (split at %zu): rc %d reason \"%s\"\n",
						      c->name, j, k, o[j].rc,
						      o[j].reason ? o[j].reason : "");
					failures++;
					k = c->len;
					break;
				}
		}
		if (o[1].fed != decided) {
			print_message("[%s] byte by byte: refused after %zu bytes (want %zu)\n",
				      c->name, o[1].fed, decided);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* The v2 block bound: addresses and TLVs of exactly PP_V2_BLOCK_MAX octets are taken
 * (PP_HEADER_MAX in all, whole or byte by byte), one octet more is refused once the
 * length field is in. The block is a TCP4 address pair and one NOOP TLV filling the rest. */
static void test_v2_block_edge(void **state)
{
	(void)state;
	static const struct {
		size_t blen;
		int ok;
	} t[] = {
		{ PP_V2_BLOCK_MAX - 1, 1 },
		{ PP_V2_BLOCK_MAX, 1 },
		{ PP_V2_BLOCK_MAX + 1, 0 },
	};
	static uint8_t buf[PP_HEADER_MAX + 16];
	int failures = 0;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		size_t blen = t[i].blen, len = PP_V2_HDR + blen, tlv = blen - 12 - 3;
		memset(buf, 0, sizeof buf);
		memcpy(buf, SIG "\x21\x11", 14);
		buf[14] = (uint8_t)(blen >> 8);
		buf[15] = (uint8_t)blen;
		memcpy(buf + 16, "\x7f\x00\x00\x02\x7f\x00\x00\x01\x30\x39\x00\x19", 12);
		buf[28] = 0x04; /* PP2_TYPE_NOOP */
		buf[29] = (uint8_t)(tlv >> 8);
		buf[30] = (uint8_t)tlv;
		for (int bytewise = 0; bytewise <= 1; bytewise++) {
			struct outcome o = feed(PP_V2, buf, len, NULL, bytewise);
			char src[80];
			text_of(&o.res.src, src, sizeof src);
			size_t decided = bytewise ? PP_V2_HDR : len;
			int good = t[i].ok ? o.rc == (int)len && !strcmp(src, "127.0.0.2:12345")
					   : o.rc == -EINVAL && o.fed == decided &&
						     !strcmp(o.reason, "v2 header too long");
			if (!good) {
				print_message("[block %zu, %s] rc %d after %zu bytes (%s), src %s\n",
					      blen, bytewise ? "byte by byte" : "whole", o.rc,
					      o.fed, o.reason ? o.reason : "", src);
				failures++;
			}
		}
	}
	assert_int_equal(PP_HEADER_MAX, PP_V2_HDR + PP_V2_BLOCK_MAX);
	assert_int_equal(failures, 0);
}

/* ---- builders and round trips ------------------------------------------------------- */

static struct sockaddr_storage sa(const char *ip, unsigned port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	if (!ip)
		return ss;
	struct sockaddr_in *a4 = (struct sockaddr_in *)(void *)&ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)(void *)&ss;
	if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
	} else if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
	} else {
		ss.ss_family = AF_UNIX;
	}
	return ss;
}

struct build_case {
	const char *name;
	const char *src_ip;
	unsigned sport;
	const char *dst_ip;
	unsigned dport;
	const char *v1;          /* the line pp_build_v1 writes */
	const char *src, *dst;   /* after parsing ("none": no address) */
};

static const struct build_case builds[] = {
	{ "IPv4", "127.0.0.2", 40000, "127.0.0.1", 25, "PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n",
	  "127.0.0.2:40000", "127.0.0.1:25" },
	{ "IPv6", "2001:db8::7", 65535, "::1", 0, "PROXY TCP6 2001:db8::7 ::1 65535 0\r\n",
	  "[2001:db8::7]:65535", "[::1]:0" },
	{ "IPv6, longest", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
	  "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
	  "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
	  "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
	  "[fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535" },
	{ "IPv4-mapped both", "::ffff:192.0.2.1", 1, "::ffff:192.0.2.2", 2,
	  "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "192.0.2.1:1", "192.0.2.2:2" },
	{ "IPv4-mapped and IPv4", "::ffff:192.0.2.1", 1, "192.0.2.2", 2,
	  "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "192.0.2.1:1", "192.0.2.2:2" },
	{ "mixed families", "192.0.2.1", 1, "2001:db8::1", 2, "PROXY UNKNOWN\r\n", "none", "none" },
	{ "no source", NULL, 0, "192.0.2.2", 2, "PROXY UNKNOWN\r\n", "none", "none" },
	{ "unix source", "/run/x.sock", 0, "192.0.2.2", 2, "PROXY UNKNOWN\r\n", "none", "none" },
};

static void test_build_round_trip(void **state)
{
	(void)state;
	int failures = 0;
	for (size_t i = 0; i < sizeof builds / sizeof builds[0]; i++) {
		const struct build_case *c = &builds[i];
		struct sockaddr_storage s = sa(c->src_ip, c->sport), d = sa(c->dst_ip, c->dport);
		const struct sockaddr *sp = c->src_ip ? (const struct sockaddr *)&s : NULL;
		for (int v = PP_V1; v <= PP_V2; v++) {
			uint8_t buf[PP_HEADER_MAX];
			int n = v == PP_V1 ? pp_build_v1(sp, (const struct sockaddr *)&d, buf, sizeof buf)
					   : pp_build_v2(sp, (const struct sockaddr *)&d, buf, sizeof buf);
			if (n <= 0) {
				print_message("[%s v%d] build: %d\n", c->name, v, n);
				failures++;
				continue;
			}
			if (v == PP_V1 && ((size_t)n != strlen(c->v1) || memcmp(buf, c->v1, (size_t)n))) {
				print_message("[%s] v1 line \"%.*s\" (want \"%s\")\n", c->name, n,
					      (const char *)buf, c->v1);
				failures++;
			}
			struct pp_result r;
			const char *why;
			int rc = pp_parse(v, buf, (size_t)n, &r, &why);
			char src[80], dst[80];
			text_of(&r.src, src, sizeof src);
			text_of(&r.dst, dst, sizeof dst);
			int none = !strcmp(c->src, "none");
			if (rc != n || r.has_addr == none || (!none && (strcmp(src, c->src) || strcmp(dst, c->dst))) ||
			    (v == PP_V2 && r.local != none)) {
				print_message("[%s v%d] parse: rc %d of %d (%s), has_addr %d local %d, %s -> %s\n",
					      c->name, v, rc, n, rc < 0 ? why : "", r.has_addr, r.local,
					      src, dst);
				failures++;
			}
			/* a buffer one byte short is refused, never overrun */
			uint8_t small[PP_HEADER_MAX];
			memset(small, 0xAA, sizeof small);
			int m = v == PP_V1 ? pp_build_v1(sp, (const struct sockaddr *)&d, small, (size_t)n - 1)
					   : pp_build_v2(sp, (const struct sockaddr *)&d, small, (size_t)n - 1);
			if (m != -ENOBUFS || small[n - 1] != 0xAA) {
				print_message("[%s v%d] cap %d: %d\n", c->name, v, n - 1, m);
				failures++;
			}
		}
	}
	assert_int_equal(failures, 0);
}

/* The v2 bytes on the wire: haproxy's send-proxy-v2 layout for TCP over IPv4. */
static void test_build_v2_bytes(void **state)
{
	(void)state;
	struct sockaddr_storage s = sa("127.0.0.2", 12345), d = sa("127.0.0.1", 25);
	uint8_t buf[64];
	int n = pp_build_v2((const struct sockaddr *)&s, (const struct sockaddr *)&d, buf, sizeof buf);
	static const uint8_t want[] = V2_4;
	assert_int_equal(n, sizeof want - 1);
	assert_memory_equal(buf, want, sizeof want - 1);
	n = pp_build_v2(NULL, NULL, buf, sizeof buf);
	static const uint8_t local[] = SIG "\x20\x00\x00\x00";
	assert_int_equal(n, sizeof local - 1);
	assert_memory_equal(buf, local, sizeof local - 1);
	assert_string_equal(pp_version_name(PP_V1), "v1");
	assert_string_equal(pp_version_name(PP_V2), "v2");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_v2_block_edge),
		cmocka_unit_test(test_build_round_trip),
		cmocka_unit_test(test_build_v2_bytes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
