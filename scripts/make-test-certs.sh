#!/usr/bin/env bash
# Regenerates the TLS test certificates in tests/data/tls/ (tests/net_tls.rs),
# with the openssl command-line tool. TEST-ONLY: their private keys are
# public, in this repository.
#
#   ca.pem                     the test CA (its key is thrown away)
#   server.pem, server.key     signed by it, for localhost and 127.0.0.1
#   client.pem, client.key     signed by it, a client's (mutual TLS)
#   other-ca.pem               an unrelated CA, trusted by no server here
#   other-client.pem, .key     signed by the unrelated CA
#
# Every certificate is valid for 100 years from the day it was made. EC P-256
# keys (PKCS#8). Usage: scripts/make-test-certs.sh [OUT_DIR]
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
out=${1:-tests/data/tls}
days=36500
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME CN: a self-signed CA certificate $work/NAME.pem, key $work/NAME.key.
ca() {
    key "$work/$1.key"
    openssl req -x509 -new -key "$work/$1.key" -days "$days" -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$work/$1.pem"
}

# leaf NAME CA CN EXTENSIONS: $work/NAME.pem and .key, signed by $work/CA.
leaf() {
    key "$work/$1.key"
    openssl req -new -key "$work/$1.key" -subj "/CN=$3" -out "$work/$1.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "$4" >"$work/$1.ext"
    openssl x509 -req -in "$work/$1.csr" -CA "$work/$2.pem" -CAkey "$work/$2.key" \
        -CAcreateserial -days "$days" -sha256 -extfile "$work/$1.ext" -out "$work/$1.pem" 2>/dev/null
}

ca ca "shmpool test CA"
ca other-ca "shmpool unrelated test CA"
leaf server ca localhost "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf client ca shmpool-test-client "extendedKeyUsage=clientAuth"
leaf other-client other-ca shmpool-other-client "extendedKeyUsage=clientAuth"

openssl verify -CAfile "$work/ca.pem" "$work/server.pem" "$work/client.pem" >/dev/null
openssl verify -CAfile "$work/other-ca.pem" "$work/other-client.pem" >/dev/null

cp "$work/ca.pem" "$work/other-ca.pem" "$out/"
for name in server client other-client; do
    cp "$work/$name.pem" "$work/$name.key" "$out/"
done
echo "wrote $out: ca.pem other-ca.pem server.{pem,key} client.{pem,key} other-client.{pem,key}"
