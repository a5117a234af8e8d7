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
    cargo test --release

# Durable ingest against the machine's own limits (10 s per scenario; `just bench --quick`).
bench *ARGS:
    cargo bench --bench ingest -- {{ARGS}}

# Replay goodput over loopback and a tc-shaped 10 Mbit/s link between namespaces (root).
bench-replay *ARGS:
    bash benches/replay-goodput.sh {{ARGS}}

# SIGKILL trials under load, many more than the default suite runs.
torture trials="100":
    HALLRELAY_KILL_TRIALS={{trials}} cargo test --release --test durability sigkill -- --nocapture
