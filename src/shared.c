/* shared.c - counters and the per-client table shared by the workers (see shared.h). */
#include "shared.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct client_count {
	struct client_count *next;
	const void *route;
	unsigned n;
	char ip[46];
};

int shared_init(struct stp_shared *sh)
{
	memset(sh, 0, sizeof(*sh));
	if (getrandom(&sh->id_key, sizeof(sh->id_key), 0) != sizeof(sh->id_key))
		sh->id_key = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)time(NULL);
	return uv_mutex_init(&sh->clients_lock);
}

void shared_destroy(struct stp_shared *sh)
{
	for (size_t b = 0; b < sizeof(sh->clients) / sizeof(sh->clients[0]); b++) {
		while (sh->clients[b]) {
			struct client_count *c = sh->clients[b];
			sh->clients[b] = c->next;
			free(c);
		}
	}
	uv_mutex_destroy(&sh->clients_lock);
}

long shared_session_opened(struct stp_shared *sh)
{
	return __atomic_add_fetch(&sh->active, 1, __ATOMIC_RELAXED);
}

void shared_session_closed(struct stp_shared *sh)
{
	__atomic_sub_fetch(&sh->active, 1, __ATOMIC_RELAXED);
}

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

void shared_session_id(struct stp_shared *sh, char out[17])
{
	uint64_t seq = __atomic_add_fetch(&sh->next_id, 1, __ATOMIC_RELAXED);
	snprintf(out, 17, "%016llx", (unsigned long long)mix64(seq ^ sh->id_key));
}

static size_t client_bucket(const struct stp_shared *sh, const void *route, const char *ip)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uintptr_t)route ^ sh->id_key;
	for (const char *p = ip; *p; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ULL;
	return (size_t)(h % (sizeof(sh->clients) / sizeof(sh->clients[0])));
}

unsigned shared_client_acquire(struct stp_shared *sh, const void *route, const char *ip)
{
	size_t b = client_bucket(sh, route, ip);
	unsigned n = 0;
	uv_mutex_lock(&sh->clients_lock);
	struct client_count *c = sh->clients[b];
	while (c && !(c->route == route && strcmp(c->ip, ip) == 0))
		c = c->next;
	if (!c && (c = calloc(1, sizeof(*c)))) {
		c->route = route;
		snprintf(c->ip, sizeof(c->ip), "%s", ip);
		c->next = sh->clients[b];
		sh->clients[b] = c;
	}
	if (c)
		n = ++c->n;
	uv_mutex_unlock(&sh->clients_lock);
	return n;
}

void shared_client_release(struct stp_shared *sh, const void *route, const char *ip)
{
	size_t b = client_bucket(sh, route, ip);
	uv_mutex_lock(&sh->clients_lock);
	for (struct client_count **pp = &sh->clients[b]; *pp; pp = &(*pp)->next) {
		struct client_count *c = *pp;
		if (c->route == route && strcmp(c->ip, ip) == 0) {
			if (--c->n == 0) {
				*pp = c->next;
				free(c);
			}
			break;
		}
	}
	uv_mutex_unlock(&sh->clients_lock);
}
