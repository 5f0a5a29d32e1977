# Makefile: the whole neuroshard build in one non-recursive graph.
#
#   make            build neuroshardd, neuroctl, the tests and the benchmarks into $(BUILD)/
#   make run        install missing packages, build, create a wallet if none, start a node
#                   (ARGS="--bootstrap HOST:PORT ..." passes flags to neuroshardd)
#   make test       install missing packages, then every test, twice: a normal build and one under
#                   AddressSanitizer + UBSan (build-asan/)
#   make bench      benchmarks; rewrites docs/benchmarks.md
#   make experiments  the DiLoCo experiments (netsim --diloco all) into docs/experiments/
#   make fuzz       libFuzzer targets for every parser, FUZZ_SECONDS each
#   make install    PREFIX=/usr/local DESTDIR=
#   make format / format-check / clean
#
# Every library comes through pkg-config. The phases that install packages first (run, test)
# call make again, so that pkg-config is asked only once the packages exist.

BUILD   ?= build
SAN     ?= 0
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
FUZZ_SECONDS ?= 20
V       ?= 0
ifeq ($(V),1)
Q :=
else
Q := @
endif
WORDLIST ?= /usr/lib/python3/dist-packages/mnemonic/wordlist/english.txt

PKGS := libuv libsodium libsecp256k1 sqlite3 libprotobuf-c libmicrohttpd jansson inih \
        libsystemd icu-uc libcurl openblas libzstd

ifeq ($(filter clean format format-check deps,$(MAKECMDGOALS)),)
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
endif

CSTD     := -std=c11 -D_GNU_SOURCE
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wno-missing-field-initializers
OPT      := -O2 -g
ifeq ($(SAN),1)
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
            -fno-sanitize-recover=undefined
endif
CPPFLAGS := -Iinclude -Itests/unit -I$(BUILD)/gen -DNS_BUILD_DIR='"$(BUILD)"'
EXTRA_CFLAGS ?=
CFLAGS   := $(CSTD) $(OPT) $(WARN) $(PKG_CFLAGS) $(EXTRA_CFLAGS) -MMD -MP
LDFLAGS  := $(filter -fsanitize%,$(OPT)) -pthread
LDLIBS   := $(PKG_LIBS) -lm

# ---- sources ------------------------------------------------------------------------------

PROTOS    := $(wildcard proto/*.proto)
GEN_C     := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS)) $(BUILD)/gen/bip39_english.c
GEN_H     := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.h,$(PROTOS))
LIB_SRC   := $(wildcard src/base/*.c src/crypto/*.c src/wire/*.c src/link/*.c src/dht/*.c \
             src/ledger/*.c src/swarm/*.c src/data/*.c src/ckpt/*.c src/exec/*.c \
             src/ponw/*.c src/quorum/*.c src/pipeline/*.c src/sync/*.c)
NODE_SRC  := $(filter-out src/node/main.c,$(wildcard src/node/*.c))
CLI_SRC   := $(wildcard src/cli/*.c)
NETSIM_SRC := $(wildcard netsim/*.c)
TEST_SUPPORT_SRC := $(wildcard tests/unit/support/*.c)
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
BENCH_SRC := $(wildcard bench/bench_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIB_OBJ   := $(call obj,$(LIB_SRC)) $(patsubst %.c,%.o,$(GEN_C))
NODE_OBJ  := $(call obj,$(NODE_SRC))
LIB       := $(BUILD)/libneuroshard.a
NODE_LIB  := $(BUILD)/libneuroshard-node.a
DAEMON    := $(BUILD)/neuroshardd
CTL       := $(BUILD)/neuroctl
NETSIM    := $(if $(NETSIM_SRC),$(BUILD)/netsim)
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all run test check unit integration bench fuzz install format format-check clean deps \
        reference experiments
.DEFAULT_GOAL := all
.SECONDARY:
.DELETE_ON_ERROR:

all: $(DAEMON) $(CTL) $(NETSIM) $(UNIT_BIN) $(BENCH_BIN)

# ---- generated code -----------------------------------------------------------------------

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	@echo "  PROTOC  $<"
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

$(BUILD)/gen/bip39_english.c: scripts/gen-wordlist.sh
	@mkdir -p $(BUILD)/gen
	@echo "  GEN     $@"
	$(Q)scripts/gen-wordlist.sh $(WORDLIST) $@

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# ---- objects, libraries, programs ---------------------------------------------------------

$(BUILD)/obj/%.o: %.c | $(GEN_H)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@rm -f $@
	$(Q)ar rcs $@ $^

$(NODE_LIB): $(NODE_OBJ)
	@rm -f $@
	$(Q)ar rcs $@ $^

$(DAEMON): $(call obj,src/node/main.c) $(NODE_LIB) $(LIB)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(CTL): $(call obj,$(CLI_SRC)) $(LIB)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/netsim: $(call obj,$(NETSIM_SRC)) $(LIB)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(call obj,$(TEST_SUPPORT_SRC)) $(NODE_LIB) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(shell pkg-config --libs cmocka 2>/dev/null)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ---- phases -------------------------------------------------------------------------------

deps:
	@scripts/install-deps.sh

run: deps
	@$(MAKE) --no-print-directory $(DAEMON) $(CTL)
	@scripts/run-node.sh $(BUILD) $(ARGS)

test: deps
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory check
	@echo "== again under AddressSanitizer + UBSan (build-asan/) =="
	@$(MAKE) --no-print-directory check BUILD=build-asan SAN=1
	@echo "== make test: all passed =="

check: unit integration

unit: $(UNIT_BIN)
	@scripts/run-unit.sh $(UNIT_BIN)

integration: $(DAEMON) $(CTL) $(NETSIM)
	@scripts/run-integration.sh $(BUILD)

bench: deps
	@$(MAKE) --no-print-directory $(BENCH_BIN) $(DAEMON) $(CTL) $(NETSIM)
	@scripts/bench.sh $(BUILD)

fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

experiments: deps
	@$(MAKE) --no-print-directory $(BUILD)/netsim
	@scripts/experiments.sh $(BUILD)

# PyTorch reference tensors for tests/unit/test_exec.c (needs python3-torch; not part of test)
reference:
	/usr/bin/python3 tests/reference/make_reference.py tests/reference/tiny.nsref

install: $(DAEMON) $(CTL)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR)
	install -m 0755 $(DAEMON) $(CTL) $(DESTDIR)$(BINDIR)/
	sed 's|@BINDIR@|$(BINDIR)|g' systemd/neuroshard.service.in > $(DESTDIR)$(UNITDIR)/neuroshard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/neuroshard.service
	install -m 0644 systemd/neuroshard.sysusers $(DESTDIR)$(SYSUSERSDIR)/neuroshard.conf

FORMAT_FILES = $(shell find src include tests bench netsim -name '*.[ch]' 2>/dev/null)

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	@clang-format --dry-run -Werror $(FORMAT_FILES) && echo "format-check: ok"

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
