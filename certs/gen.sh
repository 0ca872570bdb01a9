#!/usr/bin/env bash
# Regenerates the DEVELOPMENT certificate pair in this folder. Never use it in production:
# the private keys are public (they are committed to the repository).
#   dev-ca.pem           a throw-away CA (trusted by the tests and the demo)
#   localhost.pem        leaf for localhost / 127.0.0.1 / ::1, signed by dev-ca, followed by dev-ca
#   localhost.key        its private key (PKCS#8)
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
  -subj "/CN=xmpp-veil development CA (DO NOT TRUST)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$tmp/ca.key" -out dev-ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout "$tmp/leaf.key" -out "$tmp/leaf.csr"
cat > "$tmp/ext.cnf" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$tmp/leaf.csr" -CA dev-ca.pem -CAkey "$tmp/ca.key" -CAcreateserial -CAserial "$tmp/ca.srl" \
  -days 36500 -extfile "$tmp/ext.cnf" -out "$tmp/leaf.pem"
cat "$tmp/leaf.pem" dev-ca.pem > localhost.pem
openssl pkcs8 -topk8 -nocrypt -in "$tmp/leaf.key" -out localhost.key
echo "wrote dev-ca.pem localhost.pem localhost.key (development only)"
