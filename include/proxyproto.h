/* proxyproto.h - the HAProxy PROXY protocol, versions 1 (text) and 2 (binary): a header
 * parsed from the bytes a connection starts with, and headers built for an upstream.
 *
 * Contract: pure functions, no I/O: bytes in, a result out. Every length is bounded: a v1
 * line is at most PP_V1_MAX bytes (CRLF included), a v2 header at most PP_V2_HDR +
 * PP_V2_BLOCK_MAX bytes, so a caller never keeps more than PP_HEADER_MAX bytes. The parser
 * is a function of the bytes received so far (the caller keeps them and calls again with
 * more): for a valid header every proper prefix answers -EAGAIN, and for any input, once a
 * prefix answers an error, every longer input answers the same error. Errors come with a
 * short, static reason (one line) for the log. */
#ifndef STP_PROXYPROTO_H
#define STP_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PP_V1_MAX 107          /* "PROXY TCP6 " + 2 x 39 + 2 x 5 + 3 spaces + CRLF */
#define PP_V2_HDR 16           /* signature, version and command, family, length */
#define PP_V2_BLOCK_MAX 4096   /* addresses and TLVs: a longer v2 header is refused */
#define PP_HEADER_MAX (PP_V2_HDR + PP_V2_BLOCK_MAX)

enum pp_version { PP_V1 = 1, PP_V2 = 2 };

struct pp_result {
	int version;   /* PP_V1 or PP_V2: the header found */
	int has_addr;  /* src and dst hold the real connection's addresses (AF_INET or
			  AF_INET6, both the same family); 0: v1 UNKNOWN, v2 LOCAL or v2
			  AF_UNSPEC: the connection's own addresses apply */
	int local;     /* v2 command LOCAL (a health check by the proxy itself) */
	struct sockaddr_storage src, dst;
};

/* Parses the header a connection starts with: data holds the len bytes received so far,
 * version the version the route expects. Returns the header's length (> 0, the bytes
 * after it are the connection's own) with *out filled; -EAGAIN when the bytes so far
 * are a valid start and more are needed; -EINVAL with *reason (static, e.g. "not a PROXY
 * v2 header", "PROXY v1 header where v2 is expected", "v1 line too long", "bad address",
 * "unsupported family") when they cannot start a valid header of that version.
 * v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" with single spaces, addresses in the
 * family's inet_pton form, decimal ports 0..65535 without a leading zero; or "PROXY
 * UNKNOWN" and anything printable up to CRLF. v2: command LOCAL, or PROXY with
 * AF_INET/AF_INET6 over STREAM (AF_UNSPEC: no address; AF_UNIX and DGRAM are refused),
 * a block of at most PP_V2_BLOCK_MAX bytes whose TLVs after the addresses must fill it
 * exactly (their contents are skipped). */
int pp_parse(enum pp_version version, const uint8_t *data, size_t len, struct pp_result *out,
	     const char **reason);

/* Build a header for a connection from src to dst into buf (cap bytes). When src and dst
 * are both IPv4 or both IPv6 (an IPv4-mapped IPv6 address counts as IPv4), the header
 * carries them (v1 TCP4/TCP6, v2 PROXY over STREAM); otherwise (NULL, another family,
 * mixed families) it carries none: v1 "PROXY UNKNOWN\r\n", v2 LOCAL. Returns the length,
 * or -ENOBUFS when cap is too small (PP_V1_MAX and 16 + 36 bytes are always enough). */
int pp_build_v1(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *buf,
		size_t cap);
int pp_build_v2(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *buf,
		size_t cap);

/* "v1" or "v2". */
const char *pp_version_name(enum pp_version v);

#endif
