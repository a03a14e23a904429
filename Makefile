# starttls-proxy — see README.md.  make | make test | make demo | make deps | make install
VERSION   := 0.1.0
PREFIX    ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR   ?=
DEPS_DIR  ?= /var/cache/starttls-proxy
BUILD     := build
BIN       := starttls-proxy

# wolfSSL is built from source by scripts/deps.sh; its prefix is recorded in DEPS_DIR.
WOLFSSL_PREFIX ?= $(shell cat $(DEPS_DIR)/wolfssl.current 2>/dev/null)
WOLFSSL_CFLAGS := -I$(WOLFSSL_PREFIX)/include
WOLFSSL_LIBS   := $(WOLFSSL_PREFIX)/lib/libwolfssl.a -lm -lpthread
UV_CFLAGS      := $(shell pkg-config --cflags libuv 2>/dev/null)
UV_LIBS        := $(shell pkg-config --libs libuv 2>/dev/null || echo -luv)
CMOCKA_LIBS    := $(shell pkg-config --libs cmocka 2>/dev/null || echo -lcmocka)

CC       ?= cc
OPT      ?= -O2 -g
WERROR   ?= $(if $(CI),-Werror,)
CFLAGS   ?= $(OPT)
CFLAGS   += -std=gnu11 -Wall -Wextra $(WERROR) -fno-strict-aliasing \
            -Iinclude $(WOLFSSL_CFLAGS) $(UV_CFLAGS) -DSTP_VERSION='"$(VERSION)"' -D_GNU_SOURCE
LDLIBS   := $(UV_LIBS) $(WOLFSSL_LIBS) -lunbound -lz
ifeq ($(SANITIZE),1)
  BUILD  := build-san
  BIN    := build-san/starttls-proxy
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

SRCS      := $(wildcard src/*.c)
LIB_SRCS  := $(filter-out src/main.c,$(SRCS))
OBJS      := $(SRCS:src/%.c=$(BUILD)/%.o)
LIB_OBJS  := $(LIB_SRCS:src/%.c=$(BUILD)/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
CERTS     := $(BUILD)/test-certs

.PHONY: all deps check-deps test unit-bins demo install clean bench bench-classic fuzz

all: check-deps $(BIN)

check-deps:
	@test -f "$(WOLFSSL_PREFIX)/lib/libwolfssl.a" || { echo "wolfSSL missing: run 'make deps'"; exit 1; }

# Everything the build and the tests need (scripts/deps.sh: no host service is started,
# stopped or replaced); `make demo` installs only what the build needs.
deps:
	@bash scripts/deps.sh test

$(BIN): $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

$(BUILD)/%.o: src/%.c $(wildcard include/*.h) | $(BUILD)
	$(CC) $(CFLAGS) -MMD -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(LIB_OBJS) | $(BUILD)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB_OBJS) $(CMOCKA_LIBS) $(LDLIBS)

# test_alloc_failure: malloc, calloc, realloc and strdup of the linked objects go through
# the test's own __wrap_ functions, which make the Nth allocation fail.
ALLOC_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup
$(BUILD)/tests/test_alloc_failure: tests/unit/test_alloc_failure.c $(wildcard tests/unit/*.h) $(LIB_OBJS) | $(BUILD)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) $(ALLOC_WRAP) -o $@ $< $(LIB_OBJS) $(CMOCKA_LIBS) $(LDLIBS)

$(BUILD):
	@mkdir -p $(BUILD)

$(CERTS)/.complete:
	@bash scripts/gen-test-certs.sh $(CERTS)

unit-bins: $(UNIT_BINS)

# The one command: dependencies (when missing), build, unit and integration tests.
test:
	@bash scripts/deps.sh test
	@$(MAKE) --no-print-directory all unit-bins $(CERTS)/.complete
	@STP_BIN=$(abspath $(BIN)) STP_UNIT_DIR=$(abspath $(BUILD)/tests) \
	  STP_TEST_CERTS=$(abspath $(CERTS)) bash tests/run.sh

demo:
	@bash scripts/deps.sh build
	@$(MAKE) --no-print-directory all
	@bash scripts/demo.sh

# Benchmarks against stunnel and haproxy. `make bench`: the two-leg TLS chain and the machine's
# floor (bench/chain.sh; writes bench/results/chain.md, chain.png, summary.md). `make
# bench-classic`: one proxy at a time, TLS termination and wrap (bench/run.sh; writes
# bench/RESULTS.md). Separate targets: each takes a quarter of an hour or more, and each
# measures best on an otherwise quiet machine.
bench:
	@bash scripts/deps.sh test
	@$(MAKE) --no-print-directory all
	@STP_BIN=$(abspath $(BIN)) bash bench/chain.sh

bench-classic:
	@bash scripts/deps.sh test
	@$(MAKE) --no-print-directory all
	@STP_BIN=$(abspath $(BIN)) bash bench/run.sh

# libFuzzer harnesses for every parser, FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/deps.sh test
	@bash tests/fuzz/run.sh $(FUZZ_SECONDS)

# The container images, built offline by podman (Containerfile, docs/kubernetes.md):
# IMAGE (the proxy) and IMAGE-netinit (the sidecar's init container), tagged VERSION and latest.
PODMAN ?= podman
IMAGE  ?= starttls-proxy
.PHONY: image
image: all
	@command -v $(firstword $(PODMAN)) >/dev/null || { echo "podman missing: run 'make deps'"; exit 1; }
	@bash scripts/mkimage.sh $(BIN) build/image
	$(PODMAN) build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .
	$(PODMAN) build --target netinit --build-arg VERSION=$(VERSION) \
	  -t $(IMAGE)-netinit:$(VERSION) -t $(IMAGE)-netinit:latest .

# The binary, man pages, systemd units (service, socket, sysusers; the transparent drop-in
# with the docs), the documented example of every key, and a configuration that passes -t
# as it is, in SYSCONFDIR/starttls-proxy unless one is there already (never overwritten).
DOCDIR := $(DESTDIR)$(PREFIX)/share/doc/starttls-proxy
install: all
	install -D -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/starttls-proxy
	install -D -m 644 etc/starttls-proxy.conf $(DOCDIR)/starttls-proxy.conf.example
	install -D -m 644 etc/policy.table $(DOCDIR)/policy.table.example
	install -D -m 644 systemd/starttls-proxy-transparent.conf $(DOCDIR)/systemd-transparent.conf
	install -D -m 644 README.md $(DOCDIR)/README.md
	install -D -m 644 LICENSE $(DOCDIR)/LICENSE
	install -D -m 644 CHANGELOG.md $(DOCDIR)/CHANGELOG.md
	for f in docs/*.md; do install -D -m 644 $$f $(DOCDIR)/$$f; done
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' \
	  -e 's|/etc/starttls-proxy/|$(SYSCONFDIR)/starttls-proxy/|g' systemd/starttls-proxy.service \
	  > $(DESTDIR)$(PREFIX)/lib/systemd/system/starttls-proxy.service
	install -m 644 systemd/starttls-proxy.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/
	install -D -m 644 systemd/starttls-proxy.sysusers \
	  $(DESTDIR)$(PREFIX)/lib/sysusers.d/starttls-proxy.conf
	install -d -m 755 $(DESTDIR)$(SYSCONFDIR)/starttls-proxy
	test -e $(DESTDIR)$(SYSCONFDIR)/starttls-proxy/starttls-proxy.conf || \
	  install -m 644 etc/minimal.conf $(DESTDIR)$(SYSCONFDIR)/starttls-proxy/starttls-proxy.conf
	install -D -m 644 man/starttls-proxy.8 $(DESTDIR)$(PREFIX)/share/man/man8/starttls-proxy.8
	install -D -m 644 man/starttls-proxy.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/starttls-proxy.conf.5

clean:
	rm -rf build build-san starttls-proxy

-include $(OBJS:.o=.d)
