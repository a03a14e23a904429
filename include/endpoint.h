/* endpoint.h - one side of a session: a TCP handle, an optional TLS layer, write
 * accounting for backpressure, and a plaintext read/write API.
 *
 * Contract: the owner (session.c) receives plaintext through the callbacks in struct
 * ep_ops and writes plaintext with ep_write(). Writes made before the side is ready (not
 * connected, or TLS handshake not finished) are held and sent once it is; ep_pending()
 * counts every byte not yet handed to the kernel, for the owner's watermarks. Every read
 * is delivered to the owner before the next one, so an endpoint never holds plaintext the
 * owner has not seen: the STARTTLS boundary for bytes read before ep_start_tls() is the
 * protocol module's (kit_starttls in proto_kit.h). Functions return 0 or a negative
 * errno. */
#ifndef STP_ENDPOINT_H
#define STP_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"

struct tls_ctx;
struct tls_conn;
struct tls_session;
struct endpoint;

struct ep_ops {
	/* Plaintext arrived. */
	void (*on_data)(struct endpoint *ep, const uint8_t *data, size_t len);
	/* The peer finished sending (FIN, or close_notify). */
	void (*on_eof)(struct endpoint *ep);
	/* The TLS handshake finished (0) or failed (<0). Runs before any byte held for this
	 * side is sent, so the owner can refuse an unverified peer by closing. */
	void (*on_tls)(struct endpoint *ep, int status);
	/* A fatal error: reset, TLS error, write failure. what is a static string. */
	void (*on_error)(struct endpoint *ep, const char *what, int uv_err);
	/* Everything queued so far reached the kernel (for watermarks and close-after-flush). */
	void (*on_drain)(struct endpoint *ep);
	/* The handle is closed; the endpoint may be freed with its owner. */
	void (*on_closed)(struct endpoint *ep);
};

struct endpoint {
	uv_tcp_t tcp;
	uv_shutdown_t shutdown_req;
	const struct ep_ops *ops;
	void *owner;
	uint8_t *readbuf;   /* shared per loop, EP_LOOP_BUF bytes (see there) */
	struct tls_conn *tls;
	struct buf held;  /* plaintext written before the side was ready */
	size_t queued;        /* bytes in uv_write requests not yet completed */
	uint64_t bytes_read, bytes_written; /* plaintext */
	unsigned open : 1;      /* handle initialised, must be closed */
	unsigned connected : 1; /* TCP is up */
	unsigned reading : 1;   /* uv_read_start is active */
	unsigned paused : 1;    /* owner asked us not to deliver */
	unsigned eof : 1;       /* peer finished sending */
	unsigned shut : 1;      /* we sent FIN (and close_notify) */
	unsigned shut_done : 1; /* shutdown completed */
	unsigned closing : 1;
	unsigned failed : 1;
	unsigned tls_ready : 1;
	unsigned in_delivery : 1;
	unsigned flushing_held : 1;
};

/* One read(2) at most, and one delivery of decrypted records at most: 256 KiB, so that a
 * peer's burst (64 KiB of plaintext is 65.6 KiB of records) is one read, not two; a
 * quarter of the system calls of 64 KiB reads, 6-12% less CPU per GiB (bench/RESULTS.md).
 * One buffer per worker loop. */
#define EP_READ_SIZE 262144
/* The loop's shared buffer: plaintext delivered to owners in the first EP_READ_SIZE bytes;
 * a TLS side's ciphertext read into the second half and decrypted from there in place
 * (tls_conn_lend: no copy into the connection's input buffer). */
#define EP_LOOP_BUF (2 * EP_READ_SIZE)

/* Initialise on loop; the TCP handle is open afterwards (ep_close must follow). */
int ep_init(struct endpoint *ep, uv_loop_t *loop, const struct ep_ops *ops, void *owner,
	    uint8_t *readbuf);
/* The TCP connection is up (accepted, or connect completed): start reading. */
void ep_connected(struct endpoint *ep);
/* Begin TLS on this side now; later reads/writes go through it. server_name: SNI
 * (client side). -ENOMEM. */
int ep_start_tls(struct endpoint *ep, struct tls_ctx *ctx, const char *server_name);
/* The same for a client side that offers session (may be NULL) for resumption; the server
 * may refuse it (a full handshake follows). The endpoint does not keep session. */
int ep_start_tls_resume(struct endpoint *ep, struct tls_ctx *ctx, const char *server_name,
			struct tls_session *session);
/* The same on a side whose first bytes, already read (and seen by the owner only to tell
 * TLS from plaintext), are the start of the peer's handshake: they are TLS's input. */
int ep_start_tls_with(struct endpoint *ep, struct tls_ctx *ctx, const uint8_t *data,
		      size_t len);
/* 0, or -EPIPE (the side is closing or failed), -ENOMEM, or the write's error (the side
 * has failed: on_error follows or has run). */
int ep_write(struct endpoint *ep, const void *data, size_t len);
/* Bytes for the socket as they are, outside TLS and ahead of everything written after
 * them (a PROXY protocol header): on a side whose TCP connection is up and that nothing
 * was written to yet. 0, -EPIPE, -ENOMEM, or the write's error (on_error has run). */
int ep_write_raw(struct endpoint *ep, const void *data, size_t len);
/* Drops what was written before the side was ready: the owner rejected the peer. */
void ep_discard_held(struct endpoint *ep);
/* Bytes written but not yet accepted by the kernel. */
size_t ep_pending(const struct endpoint *ep);
void ep_pause(struct endpoint *ep);
void ep_resume(struct endpoint *ep);
/* Half-close: after every queued byte, send close_notify (TLS) and FIN. */
void ep_shutdown(struct endpoint *ep);
/* Close the handle now; queued writes are dropped. on_closed follows. */
void ep_close(struct endpoint *ep);

#endif
