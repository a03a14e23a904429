/* mtasts.h - MTA-STS (RFC 8461) records and policies: parsing and MX matching.
 *
 * Contract: pure functions, no I/O. Fetching the TXT record and the policy file, caching
 * and enforcement belong to their callers. Inputs are bounded: a TXT record of at most
 * STS_TXT_MAX octets, a policy file of at most STS_POLICY_MAX octets; anything longer is
 * refused. Errors come back as one line of text (no newline) for the log. */
#ifndef STP_MTASTS_H
#define STP_MTASTS_H

#include <stddef.h>
#include <stdint.h>

#define STS_TXT_MAX 1024      /* one _mta-sts TXT record, its strings concatenated */
#define STS_POLICY_MAX 65536  /* RFC 8461 §3.3: senders SHOULD limit the body, e.g. 64 KiB */
#define STS_ID_MAX 32         /* id = 1*32(ALPHA / DIGIT) */
#define STS_MAX_AGE_MAX 31557600
#define STS_MX_MAX 64         /* mx patterns kept from one policy */
#define STS_NAME_MAX 253

enum sts_mode { STS_MODE_NONE, STS_MODE_TESTING, STS_MODE_ENFORCE };

struct sts_policy {
	enum sts_mode mode;
	uint32_t max_age; /* seconds, at most STS_MAX_AGE_MAX */
	size_t nmx;
	char mx[STS_MX_MAX][STS_NAME_MAX + 1]; /* lower case; "*.example.net" or "mx.example.net" */
};

/* The TXT records found at _mta-sts.DOMAIN (each with its strings concatenated): records
 * that do not start with "v=STSv1;" (or are exactly "v=STSv1") are not MTA-STS records and
 * are skipped; exactly one must remain and be valid (RFC 8461 §3.1). 0 with its id copied
 * to id (NUL-terminated, STS_ID_MAX + 1 bytes); -ENOENT when none remains (the domain has
 * no policy); -EINVAL when several remain or the one is invalid (err says why: the domain
 * has no usable policy either, and the caller reports it). */
int sts_parse_txt(const char *const *records, const size_t *lens, size_t n, char *id,
		  char *err, size_t errlen);

/* A policy file's body (RFC 8461 §3.2): "key: value" lines ending in CRLF or LF. version
 * must be STSv1; mode enforce, testing or none; max_age 0..31557600; mx patterns (at least
 * one unless mode is none; each a host name, or "*." and a host name). Unknown keys are
 * ignored; a key other than mx given twice keeps its first value. 0, or -EINVAL with err
 * naming the line and the problem (the caller reports sts-policy-invalid). */
int sts_parse_policy(const char *text, size_t len, struct sts_policy *out, char *err,
		     size_t errlen);

/* 1 when host (an MX host name, trailing dot allowed, any case) matches one of the
 * policy's mx patterns: exactly, or "*.example.net" matching one more leftmost label
 * ("mx1.example.net", not "example.net" nor "a.b.example.net"); else 0. */
int sts_mx_match(const struct sts_policy *p, const char *host);

const char *sts_mode_name(enum sts_mode m);

/* The extension grammar MTA-STS (RFC 8461 §3.1) and TLSRPT (RFC 8460 §3) share:
 * sts_ext_name_len: the length of the name at s, (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" /
 * "-" / "."), 0 when s does not start one; sts_ext_char: c may stand in a value
 * (%x21-3A / %x3C / %x3E-7E). */
size_t sts_ext_name_len(const char *s, size_t n);
int sts_ext_char(int c);
/* The one record among TXT records (NULL entries skipped) that starts with tag ("v=STSv1",
 * "v=TLSRPTv1") followed by ";" (spaces or tabs before it) or the end: the rule RFC 8461
 * §3.1 and RFC 8460 §3 share. 0 with *rec and *len; -ENOENT when none does; -EINVAL with
 * err when several do or the one is longer than max octets. */
int sts_pick_record(const char *const *records, const size_t *lens, size_t n, const char *tag,
		    size_t max, const char **rec, size_t *len, char *err, size_t errlen);

#endif
