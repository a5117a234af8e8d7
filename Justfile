# hallrelay recipes. `cargo install just` to use them; the README's two commands need none.

# The whole story on loopback in under a minute: cloud, box, 25 candidates, an outage.
demo:
    cargo run --release -- demo

# The appliance on this machine, loopback only, no mDNS.
run:
    cargo run --release -- serve --listen 127.0.0.1:8443 --no-mdns

# The README's test command.
test:
    cargo test --release

# The gate CI runs: formatting, lints, tests.
check:
    cargo fmt --all -- --check
    cargo clippy --release --all-targets -- -D warnings
    cargo clippy --manifest-path fuzz/Cargo.toml --bins -- -D warnings
    cargo test --release

# The OpenAPI document's long form: validated, then 200 generated requests per operation
# against a real box and a real cloud with every kind of token (.ci/install-deps installs
# the tools; `cargo test` runs 10 per operation).
openapi:
    /opt/hallrelay-openapi/bin/openapi-spec-validator docs/openapi.yaml
    HALLRELAY_OPENAPI_EXAMPLES=200 cargo test --release --test openapi -- --nocapture

# The Debian package (needs `cargo install cargo-deb`): binary, systemd unit, sysusers entry
# and a commented /etc/hallrelay/hallrelay.toml; checked with dpkg-deb afterwards.
deb:
    cargo build --release
    cargo deb --no-build --strip --output target/debian/
    packaging/check-deb.sh target/debian/hallrelay_$(cargo pkgid | sed 's/.*[#@]//')-1_$(dpkg --print-architecture).deb

# The .deb installed on a Debian system booted with systemd (mmdebstrap + systemd-nspawn,
# ~30 s; root): user, enabled unit, READY=1, health, 0600 secrets, restart after SIGKILL,
# clean stop.
deb-install-test: deb
    bash packaging/install-test.sh target/debian/hallrelay_$(cargo pkgid | sed 's/.*[#@]//')-1_$(dpkg --print-architecture).deb

# The systemd unit: `systemd-analyze verify` and the security exposure (at most 2.0).
unit:
    cargo test --release --test systemd -- --nocapture

# The Raspberry Pi 3/4 SD image: target/image/hallrelay-VERSION-arm64.img.xz (root; see
# image/build.sh for the Debian packages it needs).
image:
    bash image/build.sh

# Boots the image twice under qemu-system-aarch64 -M virt and checks it (image/test.sh).
image-test:
    bash image/test.sh

# The benchmark table against this machine's own limits (~15 min; root for the replay row),
# written to docs/benchmarks.md: ingest at 64/256/1,000 connections, a steady hall, a burst,
# replay through 10 Mbit/s, memory, storage amplification, restart with a million autosaves,
# a console refresh with a million autosaves, restart with an unapplied journal tail.
# `just bench --quick` is CI's short form (not written); `just bench --only 2,8` some rows;
# `just bench --pi --only 1,2,3,4` adds those rows under the Pi-class profile (root; a CPU
# cgroup at 0.8 of a core and +5 ms per sync, docs/performance.md).
bench *ARGS:
    cargo bench --bench bench -- {{ARGS}}

# Replay goodput alone: loopback, a tc-shaped 10 Mbit/s link between namespaces, a capped
# run (root; `just bench` includes it).
bench-replay *ARGS:
    bash benches/replay-goodput.sh {{ARGS}}

# Every fuzz target in turn, `seconds` each, on one core (docs/fuzzing.md; needs cargo-fuzz).
fuzz seconds="300" *TARGETS:
    fuzz/run time {{seconds}} {{TARGETS}}

# Every fuzz target in turn for `runs` executions each: `just fuzz-count 10000000`.
fuzz-count runs="10000000" *TARGETS:
    fuzz/run runs {{runs}} {{TARGETS}}

# The torture suite, long form: 1,000 seeded SIGKILL trials during ingest and replay, 1,000
# emulated power cuts, the I/O-error sweep over every operation, and 10 minutes of uplink
# chaos (`just torture 50 100 120` is CI's short form). Replay a failure with
# HALLRELAY_TORTURE_SEED and HALLRELAY_TORTURE_FROM / HALLRELAY_POWERLOSS_FROM /
# HALLRELAY_SWEEP_CASE (docs/reliability.md).
torture trials="1000" power_cuts="1000" chaos_secs="600":
    HALLRELAY_POWERLOSS_TRIALS={{power_cuts}} HALLRELAY_IO_SWEEP_STRIDE=1 cargo test --release --test powerloss -- --nocapture
    HALLRELAY_TORTURE_KILLS={{trials}} cargo test --release --test torture -- --nocapture
    HALLRELAY_CHAOS_SECS={{chaos_secs}} cargo test --release --test chaos -- --nocapture
